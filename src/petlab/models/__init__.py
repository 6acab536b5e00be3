"""Models by name: ``create_model("resnet34", num_classes=2, image_size=128)``. Add one with a new entry."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from torch import nn

from petlab.errors import PetlabError
from petlab.models.cnn import build_cnn
from petlab.models.resnet import build_resnet

MODELS: dict[str, Callable[..., nn.Module]] = {
    "cnn": build_cnn,
    "resnet34": partial(build_resnet, "resnet34"),
    "resnet50": partial(build_resnet, "resnet50"),
}


def create_model(name: str, num_classes: int, image_size: int, **options: Any) -> nn.Module:
    """Build model ``name`` for ``num_classes`` classes at ``image_size`` px."""
    if name not in MODELS:
        raise PetlabError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")
    return MODELS[name](num_classes=num_classes, image_size=image_size, **options)


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Total and trainable parameter counts."""
    return {
        "total": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def layer_groups(model: nn.Module) -> list[list[nn.Parameter]]:
    """The model's parameters in groups from the input to the output; the last group is the head.

    ResNets: stem, layer1-4, then ``fc``. The CNN: each conv block, then everything after Flatten. These are
    the units that fine-tuning freezes and that discriminative learning rates scale.
    """
    if isinstance(model, nn.Sequential):  # the CNN: blocks, Flatten, classifier
        children = list(model)
        flatten = next(i for i, child in enumerate(children) if isinstance(child, nn.Flatten))
        stages = [list(child.parameters()) for child in children[:flatten]]
        head = [p for child in children[flatten:] for p in child.parameters()]
    else:
        stem = [*model.conv1.parameters(), *model.bn1.parameters()]
        stages = [stem] + [list(getattr(model, f"layer{i}").parameters()) for i in range(1, 5)]
        head = list(model.fc.parameters())
    return [group for group in stages if group] + [head]
