"""The hand-made CNN of the user's notebook: four conv blocks (its four stages), flattened for the head
(the notebook's network) or globally average-pooled."""

from __future__ import annotations

import itertools
from collections import OrderedDict
from pathlib import Path

from torch import nn

from petlab.errors import PetlabError
from petlab.models.backbone import Backbone
from petlab.models.weights import load_state_dict_file

WIDTHS = (64, 128, 256, 512)
# flatten: the notebook's 512 x (side / 16)^2 features, whose first Linear holds most of the parameters at
# large sizes (16.8 M of them at 128 px); avg: 512 features at any size.
POOLS = {"flatten": nn.Flatten, "avg": lambda: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())}


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


def build_cnn(
    image_size: int, pretrained: bool = False, weights_path: str | Path | None = None, pool: str | None = None
) -> Backbone:  # fmt: skip
    """Conv-BN-ReLU-MaxPool x4, then ``pool``: flatten (the default, the notebook's network up to its
    classifier) or avg (global average pooling).

    The flattened size follows ``image_size`` (each block halves the side): 512 x 8 x 8 at 128 px, as in
    the notebook. There are no ImageNet weights for it; ``weights_path`` loads a state dict of these
    blocks (keys ``0.*`` to ``3.*``; other keys, such as a classifier's, are ignored).
    """
    if pretrained:
        raise PetlabError("model=cnn has no ImageNet weights: set model.backbone.pretrained=false")
    pool = pool or "flatten"
    if pool not in POOLS:
        raise PetlabError(f"model.pool={pool} is not a pooling of model=cnn: choose {', '.join(POOLS)}")
    channels = (3, *WIDTHS)
    blocks = OrderedDict((str(i), _block(c_in, c_out)) for i, (c_in, c_out) in enumerate(itertools.pairwise(channels)))
    backbone = Backbone("cnn", blocks, POOLS[pool](), image_size)  # the image size checked before reading weights
    if weights_path:
        load_state_dict_file(
            nn.Sequential(blocks), weights_path, "cnn", ignore=lambda key: key.split(".")[0] not in blocks
        )
    return backbone
