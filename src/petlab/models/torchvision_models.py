"""Any torchvision classification network as a backbone, from ImageNet weights, a local file or scratch.

torchvision's own API does the work: ``get_model`` builds the network, ``get_model_weights(name).DEFAULT``
names its best ImageNet weights (and their URL for offline use). The network is split generically: the
layers before its pooling are the body; its classifier minus the final Linear (ConvNeXt's LayerNorm,
MobileNetV3's Linear and Hardswish) follows the pooling, so pretrained layers are kept.
"""

from __future__ import annotations

import urllib.error
from collections import OrderedDict
from pathlib import Path

from torch import nn
from torchvision import models

from petlab.errors import PetlabError
from petlab.models.backbone import Backbone
from petlab.models.weights import load_state_dict_file

HEAD_NAMES = ("avgpool", "fc", "classifier", "head")  # where torchvision's networks stop extracting features


def torchvision_names() -> list[str]:
    return models.list_models(module=models)


def default_weights(name: str) -> models.WeightsEnum:
    return models.get_model_weights(name).DEFAULT


def _imagenet_state(name: str) -> dict:
    weights = default_weights(name)
    try:
        return weights.get_state_dict(progress=True)
    except (urllib.error.URLError, OSError, RuntimeError) as error:
        raise PetlabError(
            f"could not download ImageNet weights for {name} ({error.__class__.__name__}: {error}); "
            f"without a network, fetch {weights.url} elsewhere and pass model.backbone.weights_path=FILE, "
            "or train from scratch with model.backbone.pretrained=false"
        ) from error


def _split(network: nn.Module) -> tuple[OrderedDict[str, nn.Module], nn.Sequential, str]:
    """The feature layers, the pooling (with the classifier's layers before its last Linear) and the
    qualified name of that last Linear, which the task's head replaces."""
    children = list(network.named_children())
    cut = next((i for i, (name, _) in enumerate(children) if name in HEAD_NAMES), None)
    if cut is None or cut == 0:
        raise PetlabError(f"{type(network).__name__} has no {'/'.join(HEAD_NAMES)} layer: it cannot be a backbone")
    head = []
    for name, child in children[cut:]:
        head += [(f"{name}.{sub}", module) for sub, module in child.named_children()] or [(name, child)]
    last = max((i for i, (_, module) in enumerate(head) if isinstance(module, nn.Linear)), default=None)
    if last is None:
        raise PetlabError(f"{type(network).__name__} has no final Linear classifier: it cannot be a backbone")
    kept = [module for _, module in head[:last] if not isinstance(module, (nn.Dropout, nn.AdaptiveAvgPool2d))]
    if not any(isinstance(module, nn.Flatten) for module in kept):
        kept.insert(0, nn.Flatten())
    return OrderedDict(children[:cut]), nn.Sequential(nn.AdaptiveAvgPool2d(1), *kept), head[last][0] + "."


def build_torchvision(
    name: str, image_size: int, pretrained: bool = False, weights_path: str | Path | None = None
) -> Backbone:  # fmt: skip
    """torchvision's network ``name`` without its classifier. ``weights_path``: a state dict of the whole
    torchvision network (its ImageNet classifier is ignored), for machines without a network."""
    network = models.get_model(name, weights=None)
    layers, pool, classifier = _split(network)
    # Built (and the image size checked) before any weights are read or downloaded; the backbone holds
    # the network's own layers, so loading the weights into the network loads them into the backbone.
    backbone = Backbone(name, layers, pool, image_size)
    if weights_path:
        load_state_dict_file(network, weights_path, name, ignore=lambda key: key.startswith(classifier))
    elif pretrained:
        network.load_state_dict(_imagenet_state(name))
    return backbone
