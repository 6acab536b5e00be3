"""torchvision ResNets with the notebook's classifier head, from ImageNet weights, a local file or scratch."""

from __future__ import annotations

import urllib.error
from pathlib import Path

from torch import nn
from torchvision import models

from petlab.errors import PetlabError
from petlab.models.weights import load_state_dict_file

WEIGHTS = {
    "resnet34": models.ResNet34_Weights.IMAGENET1K_V1,
    "resnet50": models.ResNet50_Weights.IMAGENET1K_V2,
}
MIN_IMAGE_SIZE = 32  # five stride-2 stages: below this the last stage sees less than one pixel


def _imagenet_backbone(arch: str) -> nn.Module:
    weights = WEIGHTS[arch]
    try:
        return getattr(models, arch)(weights=weights)
    except (urllib.error.URLError, OSError, RuntimeError) as error:
        raise PetlabError(
            f"could not download ImageNet weights for {arch} ({error.__class__.__name__}: {error}); "
            f"without a network, fetch {weights.url} elsewhere and pass model.weights_path=FILE, "
            "or train from scratch with model.pretrained=false"
        ) from error


def build_resnet(
    arch: str,
    num_classes: int,
    image_size: int,
    pretrained: bool = False,
    weights_path: str | Path | None = None,
    hidden: int = 512,
    dropout: float = 0.5,
) -> nn.Module:
    """A torchvision ``arch`` whose ``fc`` is Linear(hidden), ReLU, Dropout, Linear(classes)."""
    if image_size < MIN_IMAGE_SIZE:
        raise PetlabError(f"model={arch} needs data.image_size >= {MIN_IMAGE_SIZE}, got {image_size}")
    if weights_path:
        backbone = getattr(models, arch)(weights=None)
        # The ImageNet classifier ("fc.") does not fit our head; everything else must match exactly.
        load_state_dict_file(backbone, weights_path, arch, skip_prefix="fc.")
    elif pretrained:
        backbone = _imagenet_backbone(arch)
    else:
        backbone = getattr(models, arch)(weights=None)
    backbone.fc = nn.Sequential(
        nn.Linear(backbone.fc.in_features, hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )
    return backbone
