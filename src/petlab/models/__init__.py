"""Backbones by name: ``create_backbone("resnet34", image_size=128, pretrained=True)``.

petlab's own networks are registered in ``BUILDERS``; every other name is looked up among torchvision's
classification networks (``torchvision.models.list_models``), so adding one of those takes only a config.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from petlab.config import config_options
from petlab.errors import PetlabError
from petlab.models.backbone import Backbone, Stage
from petlab.models.cnn import build_cnn
from petlab.models.torchvision_models import build_torchvision, torchvision_names

__all__ = ["BUILDERS", "Backbone", "Stage", "create_backbone", "parameter_counts"]

BUILDERS: dict[str, Callable[..., Backbone]] = {"cnn": build_cnn}


def create_backbone(name: str, image_size: int, **options: Any) -> Backbone:
    """Build backbone ``name`` for ``image_size`` px (options: pretrained, weights_path, pool: its pooling
    for image-level heads, None for the network's own)."""
    if name in BUILDERS:
        return BUILDERS[name](image_size=image_size, **options)
    if name in torchvision_names():
        return build_torchvision(name, image_size=image_size, **options)
    raise PetlabError(
        f"unknown backbone {name!r}: choose {', '.join(BUILDERS)} or a torchvision classification model "
        f"(configured: {', '.join(config_options('model'))}; all: torchvision.models.list_models())"
    )


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Total and trainable parameter counts."""
    return {
        "total": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
