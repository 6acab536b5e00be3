"""The hand-made CNN of the user's notebook: four conv blocks, then a two-layer classifier."""

from __future__ import annotations

import itertools
from pathlib import Path

from torch import nn

from petlab.errors import PetlabError
from petlab.models.weights import load_state_dict_file

WIDTHS = (64, 128, 256, 512)


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


def build_cnn(
    num_classes: int,
    image_size: int,
    hidden: int = 512,
    dropout: float = 0.5,
    pretrained: bool = False,
    weights_path: str | Path | None = None,
) -> nn.Sequential:
    """Conv-BN-ReLU-MaxPool x4, Flatten, Linear(hidden), ReLU, Dropout, Linear(classes).

    The flattened size is computed from ``image_size`` (each block halves the side), which keeps the
    notebook's design exactly at 128 px (512 x 8 x 8 features) and makes it work at any size >= 16 px.
    There are no ImageNet weights for it; ``weights_path`` loads a state dict of this same network.
    """
    if pretrained:
        raise PetlabError("model=cnn has no ImageNet weights: set model.pretrained=false")
    side = image_size // 2 ** len(WIDTHS)
    if side < 1:
        raise PetlabError(f"model=cnn needs data.image_size >= {2 ** len(WIDTHS)}, got {image_size}")
    channels = (3, *WIDTHS)
    model = nn.Sequential(
        *(_block(c_in, c_out) for c_in, c_out in itertools.pairwise(channels)),
        nn.Flatten(),
        nn.Linear(WIDTHS[-1] * side * side, hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )
    if weights_path:
        load_state_dict_file(model, weights_path, "cnn")
    return model
