"""Any torchvision classification network as a backbone, from ImageNet weights, a local file or scratch.

torchvision's own API does the work: ``get_model`` builds the network, ``get_model_weights(name).DEFAULT``
names its best ImageNet weights (and their URL for offline use). The network is split generically: the
layers before its pooling are the body; its classifier minus the final Linear (ConvNeXt's LayerNorm,
MobileNetV3's Linear and Hardswish) follows the pooling, so pretrained layers are kept. The split is
checked on a probe image (the body, the pooling and the final Linear must compute what the network
does): a network whose ``forward`` does more than run its children in order (DenseNet's last ReLU, a
ViT's patch reshaping) is refused by name rather than trained wrong.
"""

from __future__ import annotations

import urllib.error
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn
from torchvision import models

from petlab.errors import PetlabError
from petlab.models.backbone import PROBE_SIZE, SUPPORTED, Backbone, eval_mode
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


def _split(name: str, network: nn.Module) -> tuple[OrderedDict[str, nn.Module], nn.Sequential, str]:
    """The feature layers, the pooling (with the classifier's layers before its last Linear) and the
    qualified name of that last Linear, which the task's head replaces."""
    children = list(network.named_children())
    cut = next((i for i, (child, _) in enumerate(children) if child in HEAD_NAMES), None)
    if cut is None or cut == 0:
        raise PetlabError(
            f"model.backbone.name={name} cannot be a backbone: it has no {'/'.join(HEAD_NAMES)} layer; {SUPPORTED}"
        )
    head = []
    for child, module in children[cut:]:
        head += [(f"{child}.{sub}", layer) for sub, layer in module.named_children()] or [(child, module)]
    last = max((i for i, (_, module) in enumerate(head) if isinstance(module, nn.Linear)), default=None)
    if last is None:
        raise PetlabError(f"model.backbone.name={name} cannot be a backbone: it has no final Linear; {SUPPORTED}")
    kept = [module for _, module in head[:last] if not isinstance(module, (nn.Dropout, nn.AdaptiveAvgPool2d))]
    if not any(isinstance(module, nn.Flatten) for module in kept):
        kept.insert(0, nn.Flatten())
    return OrderedDict(children[:cut]), nn.Sequential(nn.AdaptiveAvgPool2d(1), *kept), head[last][0] + "."


def _check_split(name: str, network: nn.Module, backbone: Backbone, classifier: nn.Module) -> None:
    """Raise unless the backbone's pooled features through ``classifier`` are the network's own output."""
    probe = torch.rand(2, 3, PROBE_SIZE, PROBE_SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), eval_mode(network):
        expected, split = network(probe), classifier(backbone.pooled(probe))
    if split.shape != expected.shape or not torch.allclose(split, expected, rtol=1e-3, atol=1e-4):
        raise PetlabError(
            f"model.backbone.name={name} cannot be a backbone: its forward does more than run its layers in order, "
            f"so petlab cannot cut it into stages; {SUPPORTED}"
        )


def build_torchvision(
    name: str, image_size: int, pretrained: bool = False, weights_path: str | Path | None = None,
    pool: str | None = None,
) -> Backbone:  # fmt: skip
    """torchvision's network ``name`` without its classifier, with its own global average pooling.
    ``weights_path``: a state dict of the whole torchvision network (its ImageNet classifier is ignored), for
    machines without a network."""
    if pool not in (None, "avg"):
        raise PetlabError(f"model.pool={pool}: model={name} has its own global average pooling, model.pool=avg "
                          "(flatten is an option of model=cnn)")  # fmt: skip
    network = models.get_model(name, weights=None)
    layers, pool, classifier = _split(name, network)
    # Built (and the image size checked) before any weights are read or downloaded; the backbone holds
    # the network's own layers, so loading the weights into the network loads them into the backbone.
    backbone = Backbone(name, layers, pool, image_size)
    _check_split(name, network, backbone, network.get_submodule(classifier.rstrip(".")))
    if weights_path:
        load_state_dict_file(network, weights_path, name, ignore=lambda key: key.startswith(classifier))
    elif pretrained:
        network.load_state_dict(_imagenet_state(name))
    return backbone
