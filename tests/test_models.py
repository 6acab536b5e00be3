"""Backbones: every configured one by name, its stages and pooled features, weights files and bad input."""

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from torchvision import models

from petlab.config import config_options
from petlab.errors import PetlabError
from petlab.models import create_backbone

BACKBONES = config_options("model")  # conf/model/NAME.yaml sets backbone.name=NAME
MIN_IMAGE_SIZE = {"cnn": 16}  # the others: 32, five stride-2 steps


def test_the_model_configs_cover_the_backbones_the_readme_lists():
    assert BACKBONES == ["cnn", "convnext_tiny", "efficientnet_b0", "mobilenet_v3_large", "resnet34", "resnet50"]


@pytest.mark.parametrize("name", BACKBONES)
def test_every_backbone_gives_stage_maps_and_pooled_features_at_its_smallest_size(name: str):
    size = MIN_IMAGE_SIZE.get(name, 32)
    backbone = create_backbone(name, image_size=size).eval()
    assert backbone.min_image_size == size
    with torch.no_grad():
        features = backbone(torch.randn(2, 3, size, size))
        pooled = backbone.pool(features[-1])
    strides = [stage.stride for stage in backbone.stages]
    assert strides == sorted(set(strides)) and strides[-1] == size and len(strides) >= 4
    for feature, stage in zip(features, backbone.stages, strict=True):
        assert feature.shape == (2, stage.channels, size // stage.stride, size // stage.stride)
    assert pooled.shape == (2, backbone.num_features)
    groups = backbone.layer_groups()
    assert len(groups) == len(backbone.stages)
    assert sum(len(group) for group in groups) == len(list(backbone.parameters()))
    with pytest.raises(PetlabError, match=f"needs data.image_size >= {size}"):
        create_backbone(name, image_size=size - 1)


# torchvision families beyond the configured ones that the README lists as working without a config change.
TESTED_FAMILIES = ["resnext50_32x4d", "efficientnet_v2_s", "mobilenet_v2", "regnet_y_400mf", "shufflenet_v2_x0_5",
                   "mnasnet0_5"]  # fmt: skip


@pytest.mark.parametrize("name", TESTED_FAMILIES)
def test_other_torchvision_cnns_are_split_into_stages_that_compute_the_network(name: str):
    backbone = create_backbone(name, image_size=64)  # the split is checked against the network when built
    assert [stage.stride for stage in backbone.stages][-1] == 32 and len(backbone.layer_groups()) >= 4


@pytest.mark.parametrize(
    ("name", "reason"),
    [("densenet121", "its forward does more than run its layers"), ("vit_b_16", "no avgpool/fc/classifier/head"),
     ("swin_t", r"not \(N, C, H, W\) feature maps"), ("alexnet", "mat1 and mat2"),
     ("squeezenet1_0", "no final Linear")],
)  # fmt: skip
def test_networks_that_cannot_be_cut_into_stages_are_refused_by_name(name: str, reason: str):
    with pytest.raises(PetlabError, match=f"model.backbone.name={name} cannot be a backbone: .*{reason}"):
        create_backbone(name, image_size=64)


def test_a_resnet_is_cut_into_its_stem_and_four_stages():
    backbone = create_backbone("resnet34", image_size=64)
    assert [(stage.channels, stage.stride) for stage in backbone.stages] == [
        (64, 2), (64, 4), (128, 8), (256, 16), (512, 32)
    ]  # fmt: skip
    assert backbone.num_features == 512


def test_the_cnn_flattens_as_the_notebook_did():
    backbone = create_backbone("cnn", image_size=128)
    assert backbone.num_features == 512 * 8 * 8
    assert [stage.stride for stage in backbone.stages] == [2, 4, 8, 16]


def test_an_unknown_backbone_says_what_exists():
    with pytest.raises(
        PetlabError,
        match=r"unknown backbone .vgg99.: choose cnn or a torchvision classification model \(configured: cnn, ",
    ):
        create_backbone("vgg99", image_size=64)


@pytest.mark.parametrize("name", ["resnet34", "efficientnet_b0"])
def test_weights_path_loads_a_torchvision_state_dict(tmp_path: Path, name: str):
    reference = models.get_model(name, weights=None)
    torch.save(reference.state_dict(), tmp_path / f"{name}.pth")
    backbone = create_backbone(name, image_size=64, weights_path=tmp_path / f"{name}.pth")
    loaded = dict(backbone.body.named_parameters())
    original = dict(reference.named_parameters())
    assert len(loaded) > 50
    # EfficientNet's features are opened up into stages: features.3.0.block... is features_3.0.block...
    assert all(torch.equal(value, original[key.replace("features_", "features.")]) for key, value in loaded.items())


def test_weights_of_another_architecture_are_named_as_the_mismatch(tmp_path: Path):
    torch.save(models.resnet50(weights=None).state_dict(), tmp_path / "resnet50.pth")
    with pytest.raises(
        PetlabError,
        match=r"is not a resnet34 state dict \('layer1.0.conv3.weight' is not in resnet34; 0 missing, 102 unexpected",
    ):
        create_backbone("resnet34", image_size=64, weights_path=tmp_path / "resnet50.pth")
    with pytest.raises(PetlabError, match="does not exist"):
        create_backbone("resnet34", image_size=64, weights_path=tmp_path / "missing.pth")


def test_the_cnn_reloads_its_own_blocks_and_has_no_imagenet_weights(tmp_path: Path):
    trained = create_backbone("cnn", image_size=32)
    torch.save({**trained.body.state_dict(), "5.weight": torch.zeros(3)}, tmp_path / "cnn.pth")  # a head is ignored
    reloaded = create_backbone("cnn", image_size=32, weights_path=tmp_path / "cnn.pth")
    pairs = zip(trained.state_dict().values(), reloaded.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    torch.save(create_backbone("resnet34", image_size=32).body.state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(PetlabError, match="not a cnn state dict"):
        create_backbone("cnn", image_size=32, weights_path=tmp_path / "resnet.pth")
    with pytest.raises(PetlabError, match="no ImageNet weights"):
        create_backbone("cnn", image_size=32, pretrained=True)


@pytest.mark.parametrize("name", ["resnet50", "convnext_tiny"])
def test_pretrained_without_a_network_names_both_alternatives(monkeypatch: pytest.MonkeyPatch, name: str):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(PetlabError) as raised:
        create_backbone(name, image_size=64, pretrained=True)
    message = str(raised.value)
    assert "model.backbone.weights_path=FILE" in message and "model.backbone.pretrained=false" in message
    assert models.get_model_weights(name).DEFAULT.url in message


def test_pretrained_weights_are_torchvisions_default_loaded_into_the_backbone(monkeypatch: pytest.MonkeyPatch):
    reference = models.get_model("mobilenet_v3_large", weights=None)
    asked = []

    def download(url: str, *args, **kwargs) -> dict:
        asked.append(url)
        return reference.state_dict()

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", download)
    backbone = create_backbone("mobilenet_v3_large", image_size=64, pretrained=True)
    assert asked == [models.get_model_weights("mobilenet_v3_large").DEFAULT.url]
    original = dict(reference.named_parameters())
    assert all(torch.equal(value, original[key.replace("features_", "features.")])
               for key, value in backbone.body.named_parameters())  # fmt: skip
    # The classifier's Linear(960, 1280) before the last Linear is kept, pretrained, after the pooling.
    assert torch.equal(backbone.pool[2].weight, reference.classifier[0].weight)
