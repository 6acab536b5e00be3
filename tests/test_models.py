import pytest
import torch

from petlab.errors import PetlabError
from petlab.models import MODELS, create_model, parameter_counts


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("image_size", [32, 48])
def test_every_model_classifies_at_small_sizes(name: str, image_size: int):
    model = create_model(name, num_classes=37, image_size=image_size).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, image_size, image_size))
    assert logits.shape == (2, 37)
    counts = parameter_counts(model)
    assert counts["total"] == counts["trainable"] > 1_000_000


def test_resnet_head_is_the_notebooks():
    head = create_model("resnet34", num_classes=2, image_size=64).fc
    assert [type(m).__name__ for m in head] == ["Linear", "ReLU", "Dropout", "Linear"]
    assert head[0].out_features == 512 and head[2].p == 0.5 and head[3].out_features == 2


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(PetlabError, match="choose one of cnn, resnet34, resnet50"):
        create_model("vgg", num_classes=2, image_size=64)


@pytest.mark.parametrize(("name", "size"), [("cnn", 8), ("resnet34", 16)])
def test_an_image_size_too_small_is_refused(name: str, size: int):
    with pytest.raises(PetlabError, match="image_size"):
        create_model(name, num_classes=2, image_size=size)
