"""Segmentation: trimaps read, cached, cropped and augmented with their images; loss, metrics, training,
evaluation files, predict and export."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import REAL_SAMPLE, compose_config, exported_outputs, synthetic_pets, tiny_data
from conftest import run_module as petlab
from petlab.data.datamodule import PetDataModule
from petlab.data.targets import Mask
from petlab.data.targets.mask import BACKGROUND, BORDER, OUTSIDE, PET
from petlab.errors import PetlabError
from petlab.tasks import Segmentation
from petlab.tasks.segmentation import IGNORE, confusions

# Each trimap value drawn in its own pure colour, so that an image says what its mask must be.
COLOUR_OF = {PET: (255, 0, 0), BACKGROUND: (0, 0, 255), BORDER: (0, 255, 0)}


def coloured_dataset(root: Path, count: int = 12, size: int = 40) -> Path:
    """Pets-layout images whose colour is their trimap's value (a square pet with a 3 px border band),
    lossless PNGs under .jpg names, as the release has some."""

    def draw(root: Path, name: str, rng: np.random.Generator) -> None:
        trimap = np.full((size, size + 8), BACKGROUND, dtype=np.uint8)  # not square: resizing must stretch both
        top, left = rng.integers(2, 12, size=2)
        trimap[top : top + 22, left : left + 26] = BORDER
        trimap[top + 3 : top + 19, left + 3 : left + 23] = PET
        pixels = np.zeros((*trimap.shape, 3), dtype=np.uint8)
        for value, colour in COLOUR_OF.items():
            pixels[trimap == value] = colour
        Image.fromarray(pixels).save(root / "images" / f"{name}.jpg", format="PNG")
        (root / "annotations" / "trimaps").mkdir(parents=True, exist_ok=True)
        Image.fromarray(trimap, mode="L").save(root / "annotations" / "trimaps" / f"{name}.png")

    return synthetic_pets(root, count, draw, trainval_share=0.75)


def colour_agreement(images: torch.Tensor, masks: torch.Tensor) -> float:
    """The fraction of pixels whose colour is that of their mask value (black for outside the image)."""
    pixels = (images.float() / (255 if images.dtype == torch.uint8 else 1)).permute(0, 2, 3, 1)
    expected = torch.zeros_like(pixels)
    for value, colour in COLOUR_OF.items():
        expected[masks == value] = torch.tensor(colour, dtype=torch.float32) / 255
    assert set(masks.unique().tolist()) <= {OUTSIDE, PET, BACKGROUND, BORDER}
    return float(((pixels - expected).abs().amax(dim=-1) < 0.5).float().mean())


def segmentation_data(root: Path, tmp_path: Path, **options) -> PetDataModule:
    return tiny_data(root, tmp_path, "trimap", **options)


@pytest.mark.parametrize("cache", [True, False])
def test_masks_stay_aligned_with_their_images_through_cache_crop_and_every_augmentation(tmp_path: Path, cache: bool):
    root = coloured_dataset(tmp_path / "pets")
    augment = {"crop_scale": [0.4, 1.0], "hflip": 0.5, "rotation": 30, "color_jitter": 0.0}
    module = segmentation_data(root, tmp_path, cache=cache, augment=augment, seed=1)
    images, masks = next(iter(module.val_dataloader()))  # the centre crop, as test and evaluation
    assert images.shape[1:] == (3, 32, 32) and masks.shape[1:] == (32, 32) and masks.dtype == torch.uint8
    assert colour_agreement(images, masks) > 0.97  # only pixels on a class boundary may blend
    module.trainer = SimpleNamespace(training=True, current_epoch=0, global_rank=0)
    images, masks = module.on_after_batch_transfer(next(iter(module.train_dataloader())), 0)
    assert images.shape[1:] == (3, 32, 32) and masks.shape[1:] == (32, 32)
    assert colour_agreement(images, masks) > 0.95
    assert (masks == OUTSIDE).any()  # rotations bring in pixels from outside the image, marked as such


def test_colour_jitter_changes_images_only():
    from petlab.data.augment import BatchAugmentation

    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    masks = torch.randint(0, 4, (4, 32, 32), dtype=torch.uint8)
    jittered, moved = BatchAugmentation(32, color_jitter=0.5)(images, masks, Mask())
    assert torch.equal(moved, masks) and not torch.allclose(jittered, images / 255)


def test_ignored_pixels_never_count_in_the_loss_or_the_metrics():
    task = Segmentation("segmentation")  # foreground: the border band is ignored
    raw = torch.tensor([[[PET, BORDER], [BACKGROUND, OUTSIDE]]], dtype=torch.uint8)
    targets = task.encode_targets(raw)
    assert targets.tolist() == [[[1, IGNORE], [0, IGNORE]]]
    logits = torch.randn(1, 2, 2, 2)
    changed = logits.clone()
    changed[:, :, 0, 1] = torch.tensor([50.0, -50.0])  # confidently wrong, on ignored pixels only
    changed[:, :, 1, 1] = torch.tensor([-50.0, 50.0])
    assert torch.allclose(task.loss(logits, targets), task.loss(changed, targets))
    for name, metric in task.metrics("val").items():
        assert torch.allclose(metric(logits, targets), metric(changed, targets)), name
    assert confusions(logits.argmax(1), targets, 2).sum() == 2
    assert task.loss(logits, torch.full_like(targets, IGNORE)).item() == 0  # nothing to learn: no NaN
    three = Segmentation("segmentation", classes="trimap")
    assert three.encode_targets(raw).tolist() == [[[0, 2], [1, IGNORE]]]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"decoder_channels": 2.5}, r"task\.decoder_channels=2\.5 is not valid: it must be a whole number"),
        ({"dice_weight": "abc"}, r"task\.dice_weight='abc' is not valid: it must be a number >= 0"),
        ({"ce_weight": -1}, r"task\.ce_weight=-1 is not valid"),
        ({"ce_weight": 0, "dice_weight": 0}, r"both 0"),
        ({"classes": "pets"}, r"task\.classes=pets is not known: choose foreground or trimap"),
    ],
)
def test_each_wrong_segmentation_setting_is_named(settings: dict, message: str):
    with pytest.raises(PetlabError, match=message):
        Segmentation("segmentation", **settings)


def test_a_segmentation_task_on_a_label_column_is_one_clear_line(sample_root: Path, tmp_path: Path):
    from petlab.preflight import check_task

    with pytest.raises(PetlabError, match=r"task\.target=species: task=segmentation reads trimaps"):
        check_task(compose_config(sample_root, tmp_path / "run", ["task=segmentation", "task.target=species"]))


def test_unusable_trimaps_are_left_out_and_listed_and_no_trimaps_is_one_line(tmp_path: Path):
    root = coloured_dataset(tmp_path / "pets", count=16)
    trimaps = root / "annotations" / "trimaps"
    (trimaps / "beagle_1.png").unlink()
    Image.fromarray(np.full((40, 48), 7, dtype=np.uint8), mode="L").save(trimaps / "Bengal_2.png")
    Image.fromarray(np.full((20, 20), 1, dtype=np.uint8), mode="L").save(trimaps / "beagle_3.png")
    (trimaps / "Bengal_4.png").write_bytes(b"not a png")
    Image.new("RGB", (48, 40)).save(trimaps / "beagle_5.png")
    before = sorted(p.name for p in root.rglob("*"))
    module = segmentation_data(root, tmp_path)
    assert len(module.frame) == 11 and module.target_stores[""] is not None
    problems = dict(zip(module.report.skipped["name"], module.report.skipped["problem"], strict=True))
    assert problems["beagle_1"] == "not used for task.target=trimap: no trimap"
    assert "values [7] outside 1-3" in problems["Bengal_2"] and "20x20, its image 48x40" in problems["beagle_3"]
    assert "cannot be read" in problems["Bengal_4"] and "RGB image" in problems["beagle_5"]
    assert sorted(p.name for p in root.rglob("*")) == before  # nothing written into the dataset
    for folder in (trimaps, root / "annotations"):
        for path in folder.glob("*.png"):
            path.unlink()
    with pytest.raises(PetlabError, match=r"task\.target=trimap: it needs the release's trimaps, .* at .*trimaps"):
        segmentation_data(root, tmp_path)  # an empty trimaps folder
    trimaps.rmdir()
    with pytest.raises(PetlabError, match=r"task\.target=trimap: it needs the release's trimaps, .* at .*trimaps"):
        segmentation_data(root, tmp_path)
    with pytest.raises(PetlabError, match=r"data\.upsample=none"):
        PetDataModule(root, targets=Mask(), upsample="synthetic")


@pytest.mark.skipif(not REAL_SAMPLE.is_dir(), reason="the shared real sample is not beside this checkout")
def test_the_real_samples_trimaps_are_read_with_their_values(tmp_path: Path):
    module = segmentation_data(REAL_SAMPLE, tmp_path, split="official", val_fraction=0.15, test_fraction=0.15)
    assert not module.report.skipped["problem"].str.contains("segmentation").any()  # all 600 trimaps usable
    masks = np.load(module.target_stores[""])
    assert masks.shape == (len(module.frame), module.side, module.side)
    assert set(np.unique(masks)) == {PET, BACKGROUND, BORDER}


def test_a_segmentation_run_writes_its_evaluation_files(segmentation_run: Path):
    metrics = json.loads((segmentation_run / "metrics.json").read_text())
    # Calling every pixel background scores about 0.41 here; one epoch measured 0.87.
    assert metrics["monitor"] == "val/miou" and metrics["test/miou"] > 0.7, metrics
    table = pd.read_csv(segmentation_run / "per_class_iou.csv")
    assert list(table["class"]) == ["background", "pet"] and table["pixels"].min() > 0
    per_image = pd.read_csv(segmentation_run / "per_image_iou.csv")
    assert len(per_image) == 111 and per_image["pet_iou"].between(0, 1).all()  # the official test split
    for figure in ("sample_predictions", "worst_iou", "iou_histogram", "learning_curves"):
        assert (segmentation_run / f"{figure}.png").stat().st_size > 5000, figure


def test_evaluate_reproduces_a_segmentation_runs_test_metrics(segmentation_run: Path, tmp_path: Path):
    trained = json.loads((segmentation_run / "metrics.json").read_text())
    result = petlab("petlab.evaluate", f"ckpt_path={trained['best_checkpoint']}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    (evaluation,) = (tmp_path / "outputs" / "evaluations").iterdir()
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert metrics["test/miou"] == pytest.approx(trained["test/miou"], abs=1e-4)
    assert (evaluation / "per_class_iou.csv").is_file() and (evaluation / "worst_iou.png").is_file()


def test_predict_writes_release_style_masks_and_overlays(segmentation_run: Path, sample_root: Path, tmp_path: Path):
    checkpoint = json.loads((segmentation_run / "metrics.json").read_text())["best_checkpoint"]
    images = [sample_root / "images" / "Bengal_1.jpg", sample_root / "images" / "beagle_2.jpg"]
    output = tmp_path / "masks"
    result = petlab("petlab.predict", f"ckpt_path={checkpoint}", f"images=[{images[0]},{images[1]}]",
                    "output=json", f"output_dir={output}", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    answers = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(answers) == 2
    for answer, image in zip(answers, images, strict=True):
        mask = Image.open(answer["mask"])
        assert mask.mode == "L" and mask.size == Image.open(image).size
        assert set(np.unique(np.asarray(mask))) <= {PET, BACKGROUND}
        assert Image.open(answer["overlay"]).size == mask.size and 0 <= answer["pet_fraction"] <= 1
    assert sorted(p.name for p in output.iterdir()) == [
        "Bengal_1_mask.png", "Bengal_1_overlay.jpg", "beagle_2_mask.png", "beagle_2_overlay.jpg"
    ]  # fmt: skip
    assert "Pictures of the answers written to" in result.stderr  # stdout stays JSON lines only
    before = {path: path.read_bytes() for path in output.iterdir()}
    again = petlab("petlab.predict", f"ckpt_path={checkpoint}", f"images=[{images[0]}]", f"output_dir={output}",
                   cwd=tmp_path)  # fmt: skip
    assert again.returncode == 2 and "already holds pictures" in again.stderr  # two runs' pictures never mix
    assert {path: path.read_bytes() for path in output.iterdir()} == before
    not_a_folder = tmp_path / "file.txt"
    not_a_folder.write_text("x")
    refused = petlab("petlab.predict", f"ckpt_path={checkpoint}", f"images=[{images[0]}]",
                     f"output_dir={not_a_folder / 'masks'}", cwd=tmp_path)  # fmt: skip
    assert refused.returncode == 2 and "cannot create output_dir=" in refused.stderr
    assert "Traceback" not in refused.stderr and not_a_folder.read_text() == "x"


@pytest.mark.parametrize("file_format", ["torchscript", "onnx"])
def test_an_exported_segmentation_model_gives_the_checkpoints_logits(segmentation_run: Path, tmp_path: Path,
                                                                       file_format: str):  # fmt: skip
    checkpoint, (actual,), (expected,), sidecar = exported_outputs(segmentation_run, file_format, tmp_path)
    assert actual.shape == (2, 2, checkpoint.side, checkpoint.side)
    np.testing.assert_allclose(actual, expected, atol=1e-4)
    assert "per-pixel logits" in sidecar["output"] and sidecar["trimap_values"] == {"background": 2, "pet": 1}
    assert sidecar["input_size"] == checkpoint.side and "whole image" in sidecar["preprocess"]
    assert "Image.BILINEAR" in sidecar["resize"] and "Image.draft" in sidecar["resize"]
    assert "align_corners=False" in sidecar["output"]


def test_a_huge_photos_mask_is_computed_at_the_working_size_and_scaled_up_whole(tmp_path: Path):
    from petlab.answers.segmentation import WORKING_SIDE, PetArea

    answerer = PetArea(["background", "pet", "border"], {"background": 2, "pet": 1, "border": 3})
    logits = np.zeros((3, 8, 8), dtype=np.float32)
    logits[1, :, :4] = 5  # the left half is the pet
    photo = Image.new("RGB", (6000, 3000), (90, 120, 200))
    answer = answerer.answer(logits, photo, 3, tmp_path, "huge")
    mask = np.asarray(Image.open(answer["mask"]))
    assert mask.shape == (3000, 6000) and set(np.unique(mask)) == {1, 2}  # the photo's size, trimap values
    # Bilinear logits put the edge half a logit column right of the middle: 4.5 of 8 columns.
    assert answer["pet_fraction"] == pytest.approx(4.5 / 8, abs=0.01) and (mask == 1).mean() == pytest.approx(
        answer["pet_fraction"], abs=0.01
    )
    assert max(Image.open(answer["overlay"]).size) == WORKING_SIDE
    small = answerer.answer(logits, Image.new("RGB", (400, 300)), 3, tmp_path, "small")
    assert Image.open(small["overlay"]).size == (400, 300)  # a usual photo: at its own size


def test_a_huge_jpeg_is_decoded_at_a_reduced_scale_and_answered_at_its_own_size(tmp_path: Path):
    from petlab.answers import decoded_side
    from petlab.answers.segmentation import WORKING_SIDE, PetArea
    from petlab.pictures import full_size, open_rgb

    answerer = PetArea(["background", "pet", "border"], {"background": 2, "pet": 1, "border": 3})
    exif = Image.Exif()
    exif[0x0112] = 6  # taken on its side: shown a quarter turn
    Image.new("RGB", (6000, 3000), (90, 120, 200)).save(tmp_path / "huge.jpg", exif=exif)
    side = decoded_side(answerer, 224)
    assert side == WORKING_SIDE
    photo = open_rgb(tmp_path / "huge.jpg", upright=True, at_least=side)
    assert photo.size == (1500, 3000) and full_size(photo) == (3000, 6000)  # half the scale, upright
    logits = np.zeros((3, 8, 8), dtype=np.float32)
    logits[1, :4] = 5  # the top half is the pet
    answer = answerer.answer(logits, photo, 3, tmp_path, "huge")
    assert np.asarray(Image.open(answer["mask"])).shape == (6000, 3000)  # the photo's own size
    assert Image.open(answer["overlay"]).size == (512, 1024)
    assert full_size(open_rgb(tmp_path / "huge.jpg")) == (6000, 3000)  # as stored
