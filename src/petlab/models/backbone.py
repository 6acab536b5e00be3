"""A backbone: a network's feature layers, cut into stages where the resolution changes.

Every task head reads the same two things from it: the feature maps of each stage, with their channels
and strides (for dense heads), and a pooled feature vector (for image-level heads). The stages are also
the layer groups that fine-tuning freezes and that discriminative learning rates scale: what timm's
``feature_info`` and ``group_matcher`` say per architecture, found here by running the network once on a
probe image, so that no code branches on layer names.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from petlab.errors import PetlabError

SUPPORTED = "use a configured model (conf/model) or a torchvision CNN family the README lists as tested"
PROBE_SIZE = 128  # the side of the probe image that measures strides: every stage of a stride-32 net keeps 4 px


@dataclass(frozen=True)
class Stage:
    """One stage's output: its channels and its stride (input pixels per feature-map pixel)."""

    channels: int
    stride: int


class Backbone(nn.Module):
    """``layers`` run in order; the output of the last layer at each resolution is a stage's feature map.

    ``pool`` turns the last feature map into the vector that image-level heads read (``num_features`` long
    at ``image_size``). Containers whose children change resolution more than once are opened up first, so
    that stages fall between layers. The smallest image the backbone takes is its largest stride.
    """

    def __init__(self, name: str, layers: OrderedDict[str, nn.Module], pool: nn.Module, image_size: int) -> None:
        super().__init__()
        try:
            with torch.no_grad(), eval_mode(*layers.values()):
                layers, shapes = _expand_by_resolution(layers)
        except PROBE_FAILURES as error:
            raise _unusable(name, error) from error
        self.name = name
        self.body = nn.Sequential(layers)
        self.pool = pool
        ends = [i for i, (_, stride) in enumerate(shapes) if i == len(shapes) - 1 or shapes[i + 1][1] != stride]
        self.stage_ends = tuple(ends)
        self.stages = [Stage(*shapes[i]) for i in ends]
        self.min_image_size = max(stage.stride for stage in self.stages)
        self.num_features = self.features_at(image_size)

    def features_at(self, image_size: int, key: str = "data.image_size") -> int:
        """The length of the pooled vector of ``image_size`` px images (``key``: the setting that gives them)."""
        if image_size < self.min_image_size:
            raise PetlabError(f"model={self.name} needs {key} >= {self.min_image_size}, got {image_size}")
        try:
            with torch.no_grad(), eval_mode(self):
                return int(self.pooled(torch.zeros(1, 3, image_size, image_size)).shape[1])
        except PROBE_FAILURES as error:
            raise _unusable(self.name, error) from error

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The feature map of every stage, from the highest resolution to the lowest."""
        features = []
        for index, layer in enumerate(self.body):
            images = layer(images)
            if index in self.stage_ends:
                features.append(images)
        return features

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        """The (N, num_features) vector of the last stage."""
        return self.pool(self(images)[-1])

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """The parameters of each stage, stem first; the pooling's parameters (if any) join the last stage."""
        groups, start = [], 0
        for end in self.stage_ends:
            groups.append([p for layer in list(self.body)[start : end + 1] for p in layer.parameters()])
            start = end + 1
        groups[-1] += list(self.pool.parameters())
        return [group for group in groups if group]


# How a network whose layers do not run one after the other (or do not give feature maps) fails a probe.
PROBE_FAILURES = (PetlabError, RuntimeError, ValueError, TypeError, NotImplementedError)


def _unusable(name: str, error: BaseException) -> PetlabError:
    reason = str(error).splitlines()[0][:160]
    return PetlabError(f"model.backbone.name={name} cannot be a backbone: {reason}; {SUPPORTED}")


class eval_mode:
    """Modules in eval mode for a probe (batch-norm statistics stay as they are), then as they were."""

    def __init__(self, *modules: nn.Module) -> None:
        self.modules = modules
        self.training = [module.training for module in modules]

    def __enter__(self) -> None:
        for module in self.modules:
            module.eval()

    def __exit__(self, *exc: object) -> None:
        for module, training in zip(self.modules, self.training, strict=True):
            module.train(training)


def _expand_by_resolution(
    layers: OrderedDict[str, nn.Module],
) -> tuple[OrderedDict[str, nn.Module], list[tuple[int, int]]]:
    """Open up every container that changes the resolution more than once (recursively); return the
    layers and the (channels, stride) after each, measured on a probe image.

    A ResNet's ``layer2`` or a CNN block halves the resolution once and stays one layer; EfficientNet's
    ``features`` and RegNet's ``trunk_output`` hold several stages and are opened up into them.
    """

    def expand(named: OrderedDict[str, nn.Module], images: torch.Tensor) -> torch.Tensor:
        for name, layer in named.items():
            children = OrderedDict((f"{name}_{child}", module) for child, module in layer.named_children())
            if isinstance(layer, nn.Sequential) and len(children) > 1:
                sides, probe = {images.shape[-1]}, images
                for child in children.values():
                    probe = child(probe)
                    sides.add(probe.shape[-1])
                if len(sides) > 2:
                    images = expand(children, images)
                    continue
            images = layer(images)
            if images.ndim != 4 or images.shape[-2] != images.shape[-1]:
                raise PetlabError(
                    f"layer {name} gives {tuple(images.shape)} for a square image, not (N, C, H, W) feature maps"
                )
            expanded[name] = layer
            shapes.append((int(images.shape[1]), round(PROBE_SIZE / images.shape[-1])))
        return images

    expanded: OrderedDict[str, nn.Module] = OrderedDict()
    shapes: list[tuple[int, int]] = []
    expand(layers, torch.zeros(1, 3, PROBE_SIZE, PROBE_SIZE))
    return expanded, shapes
