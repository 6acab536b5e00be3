"""Training recipes: MixUp/CutMix, augmentation policies, weight averaging, test-time augmentation,
progressive resizing and the CNN's pooling."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import tiny_data
from petlab.checkpoint import load_checkpoint
from petlab.data.augment import BatchAugmentation
from petlab.data.mixing import BatchMixing
from petlab.data.targets import CsvNumber, Label
from petlab.errors import PetlabError
from petlab.models import create_backbone
from petlab.module import PetModule
from petlab.tasks import Classification, HeadBox, Segmentation
from petlab.train import train


def symmetric_images(count: int, size: int = 32) -> torch.Tensor:
    half = torch.randint(0, 256, (count, 3, size, size // 2), dtype=torch.uint8)
    return torch.cat([half, half.flip(-1)], dim=-1)


@pytest.mark.parametrize(("mixup", "cutmix"), [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mixup_and_cutmix_targets_sum_to_one_and_the_loss_takes_them(mixup: float, cutmix: float):
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    mixing = BatchMixing(mixup, cutmix, generator=torch.Generator().manual_seed(5))
    label = Label("breed", ["a", "b", "c"])
    for _ in range(5):
        mixed, targets = mixing(images, labels, label)
        assert mixed.shape == (8, 3, 16, 16) and mixed.dtype == torch.float32 and 0 <= mixed.min() <= mixed.max() <= 1
        assert targets.shape == (8, 3) and torch.allclose(targets.sum(dim=1), torch.ones(8))
        differ = labels != labels.flip(0)  # an image and its partner (the batch reversed) of other classes
        own, partner = targets[differ, labels[differ]], targets[differ, labels.flip(0)[differ]]
        assert torch.allclose(own + partner, torch.ones(len(own))) and (partner > 0).any()
        task = Classification("breed", label)
        loss = task.loss(torch.randn(8, 3, requires_grad=True), targets)
        loss.backward()
        assert loss.isfinite() and torch.equal(task.measured_targets(targets), targets.argmax(dim=1))
    first, second = (BatchMixing(mixup, cutmix, generator=torch.Generator().manual_seed(6))(images, labels, label)
                     for _ in range(2))  # fmt: skip
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_cutmix_pastes_a_box_whose_area_is_the_partners_share():
    images = torch.cat([torch.zeros(1, 3, 20, 20), torch.ones(1, 3, 20, 20)])
    mixing = BatchMixing(0.0, 1.0, generator=torch.Generator().manual_seed(2))
    mixed, targets = mixing(images, torch.tensor([0, 1]), Label("species", ["a", "b"]))
    assert torch.isclose(mixed[0].mean(), targets[0, 1], atol=1e-6)  # the white pasted into the black image


def test_numbers_mix_in_the_images_proportions():
    images = torch.cat([torch.zeros(1, 3, 20, 20), torch.ones(1, 3, 20, 20)])
    mixing = BatchMixing(1.0, 0.0, generator=torch.Generator().manual_seed(3))
    mixed, numbers = mixing(images, torch.tensor([0.0, 1.0]), CsvNumber("whiteness", "w.csv"))
    assert torch.allclose(mixed.mean(dim=(1, 2, 3)), numbers, atol=1e-6)  # the mix of the two is the mix of theirs


@pytest.mark.parametrize("policy", ["trivial", "randaugment"])
def test_a_policy_draws_per_image_and_the_same_seed_gives_the_same_batch(policy: str):
    same = torch.randint(0, 256, (1, 3, 24, 24), dtype=torch.uint8).expand(16, -1, -1, -1)

    def augmented(seed: int) -> torch.Tensor:
        augmentation = BatchAugmentation(24, policy=policy)
        augmentation.reseed(seed)
        return augmentation(same)[0]

    first = augmented(3)
    assert first.shape == (16, 3, 24, 24) and first.min() >= 0 and first.max() <= 1
    assert len({tuple(image.flatten()[:64].tolist()) for image in first}) > 8  # images draw their own operations
    assert torch.equal(first, augmented(3)) and not torch.equal(first, augmented(4))


def test_the_data_module_mixes_training_batches_only_and_the_same_epoch_the_same_way(sample_root: Path, tmp_path: Path):
    augment = {"hflip": 0.5, "policy": "trivial", "mixup": 0.2, "cutmix": 1.0}
    module = tiny_data(sample_root, tmp_path, "breed", augment=augment, seed=2)
    module.trainer = SimpleNamespace(training=False, current_epoch=0, global_rank=0)
    batch = next(iter(module.val_dataloader()))
    assert module.on_after_batch_transfer(batch, 0) is batch

    def training_batch(epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        module.trainer = SimpleNamespace(training=True, current_epoch=epoch, global_rank=0)
        return module.on_after_batch_transfer(next(iter(module.train_dataloader())), 0)

    images, targets = training_batch(1)
    assert targets.shape == (len(images), 37) and torch.allclose(targets.sum(dim=1), torch.ones(len(images)))
    again = training_batch(1)
    assert torch.equal(images, again[0]) and torch.equal(targets, again[1])
    assert not torch.equal(images, training_batch(2)[0])


@pytest.mark.parametrize(
    ("target", "options", "message"),
    [
        ("trimap", {"augment": {"mixup": 0.2}}, r"trimaps \(trimap\) cannot be mixed: set both to 0"),
        ("box", {"augment": {"cutmix": 1.0}}, r"head boxes \(box\) cannot be mixed: set both to 0"),
        ("species", {"augment": {"mixup": -1}}, "data.augment.mixup=-1"),
        ("species", {"augment": {"mixup": 0.2, "mix_switch": 2}}, "data.augment.mix_switch=2"),
        ("species", {"augment": {"policy": "autoaugment"}}, "data.augment.policy=autoaugment is not a policy"),
        ("species", {"progressive_resize": {"size": 32, "epochs": 1}}, "must be smaller than data.image_size=32"),
        ("species", {"progressive_resize": {"size": 16, "epochs": 0}}, "data.progressive_resize.epochs=0"),
        ("species", {"progressive_resize": {"size": 16, "epoch": 1}}, "unknown data.progressive_resize option epoch"),
    ],
)
def test_impossible_recipe_settings_are_one_line_errors(sample_root: Path, tmp_path: Path, target, options, message):
    with pytest.raises(PetlabError, match=message):
        tiny_data(sample_root, tmp_path, target, **options)


def test_tta_on_a_mirror_symmetric_image_equals_no_tta_and_maps_mirrored_answers_back():
    images = symmetric_images(2)
    torch.manual_seed(0)
    species = Classification("species", Label("species", ["cat", "dog"]))
    classifier = PetModule({"name": "cnn", "pretrained": False}, species, 32, [0.5] * 3, [0.25] * 3, pool="avg").eval()
    with torch.no_grad():
        plain, merged = classifier.outputs(images), classifier.outputs(images, tta=True)
        assert torch.allclose(plain.softmax(dim=1), merged.softmax(dim=1), atol=1e-5)
        # A symmetric picture's mask and box are symmetric once the mirrored answer is flipped back.
        for task in (Segmentation("segmentation"), HeadBox("head_box")):
            model = PetModule({"name": "cnn", "pretrained": False}, task, 32, [0.5] * 3, [0.25] * 3, pool="avg").eval()
            merged = model.outputs(images, tta=True)
            if isinstance(task, HeadBox):
                assert torch.allclose(merged[:, 0], 1 - merged[:, 2], atol=1e-6)
                assert not torch.allclose(model.outputs(images)[:, 0], merged[:, 0])
            else:
                assert torch.allclose(merged, merged.flip(-1), atol=1e-5)


def test_the_cnn_pools_globally_with_far_fewer_parameters():
    flatten, average = (create_backbone("cnn", image_size=128, pool=pool) for pool in ("flatten", "avg"))
    assert flatten.num_features == 512 * 8 * 8 and average.num_features == 512
    assert average.features_at(48) == 512 and flatten.features_at(64) == 512 * 4 * 4
    with pytest.raises(PetlabError, match=r"model.pool=max is not a pooling of model=cnn"):
        create_backbone("cnn", image_size=32, pool="max")
    with pytest.raises(PetlabError, match=r"flatten is an option of model=cnn"):
        create_backbone("resnet18", image_size=32, pool="flatten")


def test_a_flattening_cnn_cannot_resize_progressively(make_cfg):
    with pytest.raises(PetlabError, match=r"set model.pool=avg"):
        train(make_cfg(["model=cnn", "data.progressive_resize.size=16", "data.progressive_resize.epochs=1"]))
    with pytest.raises(PetlabError, match="reload_dataloaders_every_n_epochs=1"):
        train(make_cfg(["model=cnn", "model.pool=avg", "data.progressive_resize.size=16",
                        "data.progressive_resize.epochs=1",
                        "trainer.reload_dataloaders_every_n_epochs=0"]))  # fmt: skip
    with pytest.raises(PetlabError, match=r"model.ema=1\.5"):
        train(make_cfg(["model=cnn", "model.ema=1.5"]))


def test_progressive_resizing_trains_small_then_full_size_with_a_cache_each(sample_root: Path, tmp_path: Path):
    module = tiny_data(sample_root, tmp_path, "species", progressive_resize={"size": 16, "epochs": 2})
    assert [module.training_size(epoch) for epoch in range(4)] == [16, 16, 32, 32]
    assert len(list((tmp_path / "cache" / "images").glob("*px.npy"))) == 2  # one decoded-image cache per size
    for epoch, size in ((1, 16), (2, 32)):
        module.trainer = SimpleNamespace(training=True, current_epoch=epoch, global_rank=0)
        images, _ = module.on_after_batch_transfer(next(iter(module.train_dataloader())), 0)
        assert images.shape[-2:] == (size, size)
    assert next(iter(module.val_dataloader()))[0].shape[-2:] == (32, 32)


RECIPE = ["model=cnn", "model.pool=avg", "model.ema=0.9", "data.augment.policy=trivial", "data.augment.mixup=0.2",
          "data.augment.cutmix=1.0", "data.progressive_resize.size=16", "data.progressive_resize.epochs=1",
          "trainer.limit_train_batches=4", "callbacks.early_stopping=null", "+callbacks.model_checkpoint.save_top_k=-1",
          "seed=3"]  # fmt: skip


def test_the_best_epochs_file_holds_the_averaged_weights_without_the_training_state(make_cfg, tmp_path: Path):
    train(make_cfg([*RECIPE, "trainer.max_epochs=2", f"paths.output_dir={tmp_path}"]))
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    epoch_1 = torch.load(tmp_path / "checkpoints" / "epoch_001.ckpt", map_location="cpu", weights_only=True)
    assert "optimizer_states" in last and "optimizer_states" not in epoch_1
    assert epoch_1["state_dict"].keys() == last["state_dict"].keys()
    assert all(torch.equal(value, last["state_dict"][key]) for key, value in epoch_1["state_dict"].items())
    raw = last["current_model_state"]
    assert any(not torch.equal(epoch_1["state_dict"][key], raw[key]) for key in raw if key.endswith("weight"))


def test_a_recipe_run_saves_averaged_weights_for_prediction_and_resumes_exactly(make_cfg, tmp_path: Path):
    # Every epoch's file with its training state, to resume from the first.
    full = [*RECIPE, "callbacks.model_checkpoint.save_weights_only=false"]
    whole = train(make_cfg([*full, "trainer.max_epochs=3", f"paths.output_dir={tmp_path / 'whole'}"]))
    last = tmp_path / "whole" / "checkpoints" / "last.ckpt"
    content = torch.load(last, map_location="cpu", weights_only=True)
    averaged, raw = content["state_dict"], content["current_model_state"]
    assert any(not torch.equal(averaged[key], raw[key]) for key in raw if key.endswith("weight"))
    model = load_checkpoint(last).model
    assert all(torch.equal(value, averaged[key]) for key, value in model.state_dict().items())

    # From the end of the first epoch, still at the smaller size (the second switches to the full size), in
    # the run's own directory as a resume does (its best checkpoint is known only there).
    epoch_0 = tmp_path / "whole" / "checkpoints" / "epoch_000.ckpt"
    resumed = train(make_cfg([*full, "trainer.max_epochs=3", f"ckpt_path={epoch_0}",
                              f"paths.output_dir={tmp_path / 'whole'}"]))  # fmt: skip
    for key in ("val/acc", "val/loss", "train/loss", "test/acc", "best_epoch"):
        assert resumed[key] == whole[key], key
    assert json.loads((tmp_path / "whole" / "metrics.json").read_text())["tta"] is False
