"""Head localisation: boxes read from the release's xmls, kept aligned through cache, crop and augmentation,
and the head task's loss, metrics, evaluation files, predictions and export."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import REAL_SAMPLE, exported_outputs, synthetic_pets, tiny_data, train_once
from conftest import run_module as petlab
from petlab.data.datamodule import PetDataModule
from petlab.data.sample import head_box_xml
from petlab.data.targets.box import read_head_box, transform_boxes
from petlab.errors import PetlabError
from petlab.tasks import HeadBox


def box_xml(path: Path, size: tuple[int, int], box: tuple[float, float, float, float]) -> None:
    """A Pascal VOC file as the release writes them (1-based inclusive corners)."""
    (xmin, ymin, xmax, ymax), (width, height) = box, size
    path.write_text(
        f"<annotation><size><width>{width}</width><height>{height}</height><depth>3</depth></size><object>"
        f"<name>cat</name><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax>"
        "</bndbox></object></annotation>"
    )


def boxed_dataset(root: Path, count: int = 16, size: tuple[int, int] = (48, 40)) -> Path:
    """Black images (not square: resizing stretches both sides) with a white rectangle where their head box is."""

    def draw(root: Path, name: str, rng: np.random.Generator) -> None:
        pixels = np.zeros((size[1], size[0], 3), dtype=np.uint8)
        left, top = rng.integers(4, 16), rng.integers(4, 12)
        right, bottom = left + rng.integers(12, 26), top + rng.integers(12, 22)
        pixels[top:bottom, left:right] = 255
        Image.fromarray(pixels).save(root / "images" / f"{name}.jpg", format="PNG")
        (root / "annotations" / "xmls").mkdir(parents=True, exist_ok=True)
        box_xml(root / "annotations" / "xmls" / f"{name}.xml", size, (left + 1, top + 1, right, bottom))

    return synthetic_pets(root, count, draw)


def white_box(image: torch.Tensor) -> torch.Tensor:
    """The box around an image's white pixels, as fractions of its size."""
    rows, columns = torch.nonzero(image.float().mean(dim=0) > image.float().max() / 2, as_tuple=True)
    height, width = image.shape[1:]
    return torch.tensor([columns.min() / width, rows.min() / height, (columns.max() + 1) / width,
                         (rows.max() + 1) / height])  # fmt: skip


def box_data(root: Path, tmp_path: Path, **options) -> PetDataModule:
    return tiny_data(root, tmp_path, "box", **{"batch_size": 16, **options})


def test_head_boxes_are_read_as_fractions_and_flawed_ones_explained(tmp_path: Path):
    path = tmp_path / "a.xml"
    box_xml(path, (200, 100), (11, 21, 60, 70))
    assert read_head_box(path, 200, 100) == ((0.05, 0.2, 0.3, 0.7), "")
    assert read_head_box(path, 100, 100)[1] == "head box xml says the image is 200x100, it is 100x100"
    box_xml(path, (200, 100), (11, 21, 10, 70))
    assert "has no area" in read_head_box(path, 200, 100)[1]
    box_xml(path, (200, 100), (11, 21, 260, 70))
    assert "lies outside the 200x100 image" in read_head_box(path, 200, 100)[1]
    path.write_text("<annotation><size>")
    assert read_head_box(path, 200, 100)[1].startswith("head box xml is malformed")
    path.write_text("<annotation><size><width>2</width><height>1</height></size></annotation>")
    assert read_head_box(path, 2, 1)[1].startswith("head box xml is malformed: no <object><bndbox>")
    assert read_head_box(tmp_path / "missing.xml", 2, 1) == (None, "no head box")
    for xmin in ("nan", "inf", "1e999"):
        box_xml(path, (200, 100), (xmin, 21, 60, 70))
        assert read_head_box(path, 200, 100)[1].startswith("head box xml is malformed"), xmin
    box_xml(path, (200, 100), (11, 21, 60, 70))
    path.write_text(path.read_text().replace("</object>", "</object><object><bndbox><xmin>1</xmin></bndbox></object>"))
    assert read_head_box(path, 200, 100)[1] == "2 head boxes (several animals): one box per image is learnt"


def test_the_generated_sample_writes_the_box_it_drew(sample_root: Path):
    for name in ("Bengal_1", "beagle_3"):
        image = Image.open(sample_root / "images" / f"{name}.jpg")
        box, problem = read_head_box(sample_root / "annotations" / "xmls" / f"{name}.xml", *image.size)
        trimap = np.asarray(Image.open(sample_root / "annotations" / "trimaps" / f"{name}.png"))
        rows, columns = np.nonzero(trimap != 2)  # the pet and its border band
        width, height = image.size
        drawn = (columns.min() / width, rows.min() / height, (columns.max() + 1) / width, (rows.max() + 1) / height)
        assert problem == "" and np.allclose(box, drawn, atol=2.5 / width)
    assert "<bndbox>" in head_box_xml("x", "Bengal", Image.new("L", (8, 8), 255))


def test_boxes_move_exactly_with_flips_and_centre_crops():
    boxes = torch.tensor([[0.1, 0.2, 0.4, 0.6], [math.nan] * 4])
    flip = torch.tensor([[[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    assert torch.allclose(transform_boxes(boxes, flip)[0], torch.tensor([0.6, 0.2, 0.9, 0.6]))
    assert transform_boxes(boxes, flip)[1].isnan().all()  # no box stays no box
    zoom = torch.tensor([[[0.5, 0.0, 0.5], [0.0, 0.5, 0.5]]])  # the bottom-right quarter
    assert transform_boxes(boxes, zoom).isnan().all()  # the box is out of view: no target, not a sliver


@pytest.mark.parametrize("cache", [True, False])
def test_boxes_stay_aligned_with_their_images_through_cache_crop_flip_and_rotation(tmp_path: Path, cache: bool):
    root = boxed_dataset(tmp_path / "pets")
    augment = {"crop_scale": [0.5, 1.0], "hflip": 0.5, "rotation": 25, "color_jitter": 0.0}
    module = box_data(root, tmp_path, cache=cache, augment=augment, seed=3)
    images, boxes = next(iter(module.val_dataloader()))  # the centre crop, as test and evaluation
    assert images.shape[1:] == (3, 32, 32) and boxes.shape[1:] == (4,)
    for image, box in zip(images, boxes, strict=True):
        assert torch.allclose(white_box(image), box, atol=1.5 / 32), (white_box(image), box)
    module.trainer = SimpleNamespace(training=True, current_epoch=0, global_rank=0)
    checked = 0
    for epoch in range(3):
        module.trainer.current_epoch = epoch
        images, boxes = module.on_after_batch_transfer(next(iter(module.train_dataloader())), 0)
        for image, box in zip(images, boxes, strict=True):
            if box.isfinite().all() and (image.mean(dim=0) > 0.5).sum() > 20:
                assert torch.allclose(white_box(image), box, atol=2.5 / 32), (white_box(image), box)
                checked += 1
    assert checked >= 12


def test_images_without_a_box_count_in_no_loss_and_no_metric():
    task = HeadBox("head_box")
    targets = torch.tensor([[0.1, 0.1, 0.5, 0.5], [math.nan] * 4, [0.2, 0.3, 0.9, 0.8]])
    outputs = torch.tensor([[0.1, 0.1, 0.4, 0.5], [0.0, 0.0, 1.0, 1.0], [0.2, 0.3, 0.9, 0.8]])
    changed = outputs.clone()
    changed[1] = torch.tensor([0.5, 0.5, 0.6, 0.6])
    assert torch.allclose(task.loss(outputs, targets), task.loss(changed, targets))
    assert torch.allclose(task.loss(outputs, targets), task.loss(outputs[[0, 2]], targets[[0, 2]]))
    for name, metric in task.metrics("val").items():
        assert torch.allclose(metric(outputs, targets), metric(changed, targets)), name
    assert task.metrics("val")["iou"](outputs, targets).item() == pytest.approx((0.75 + 1) / 2)
    assert task.metrics("val")["iou50"](outputs, targets).item() == 1.0
    assert task.loss(outputs, torch.full_like(targets, math.nan)).item() == 0  # nothing to learn: no NaN
    with pytest.raises(PetlabError, match=r"task\.giou_weight=-1 is not valid"):
        HeadBox("head", giou_weight=-1)


def test_unusable_boxes_are_left_out_and_listed_and_no_xmls_is_one_line(tmp_path: Path):
    root = boxed_dataset(tmp_path / "pets")
    xmls = root / "annotations" / "xmls"
    (xmls / "beagle_1.xml").unlink()
    box_xml(xmls / "Bengal_2.xml", (48, 40), (6, 5, 5, 20))
    box_xml(xmls / "beagle_3.xml", (48, 40), (5, 5, 60, 20))
    (xmls / "Bengal_4.xml").write_text("<annotation>")
    box_xml(xmls / "beagle_5.xml", (64, 64), (5, 5, 20, 20))
    before = sorted(p.name for p in root.rglob("*"))
    module = box_data(root, tmp_path)
    assert len(module.frame) == 11
    problems = dict(zip(module.report.skipped["name"], module.report.skipped["problem"], strict=True))
    assert problems["beagle_1"] == "not used for task.target=box: no head box"
    assert "no area" in problems["Bengal_2"] and "outside" in problems["beagle_3"]
    assert "malformed" in problems["Bengal_4"] and "says the image is 64x64" in problems["beagle_5"]
    assert sorted(p.name for p in root.rglob("*")) == before  # nothing written into the dataset
    for path in xmls.iterdir():
        path.unlink()
    xmls.rmdir()
    with pytest.raises(PetlabError, match=r"task\.target=box: it needs the release's head boxes, .* at .*xmls"):
        box_data(root, tmp_path)
    with pytest.raises(PetlabError, match=r"the box task of task\.tasks \(it reads box\): it needs .* or leave box"):
        tiny_data(root, tmp_path, ["species", "box"])


def test_the_official_split_carves_the_head_test_split_from_boxed_trainval_images(sample_root: Path, tmp_path: Path):
    module = box_data(sample_root, tmp_path, split="official", val_fraction=0.2, test_fraction=0.2)
    counts = module.frame["split"].value_counts()
    assert counts["test"] > 0 and counts["val"] > 0 and counts["train"] > counts["test"]
    trainval = set((sample_root / "annotations" / "trainval.txt").read_text().split()[::4])
    assert set(module.frame["name"]) <= trainval  # the release's test images have no box
    assert set(module.frame.loc[module.frame["split"] == "test", "species"]) == {"cat", "dog"}
    assert any("have no head boxes" in note for note in module.report.notes)


def test_official_test_images_that_have_boxes_are_the_test_split_alone_and_jointly(sample_root: Path, tmp_path: Path):
    root = tmp_path / "boxed"
    shutil.copytree(sample_root, root)
    test_names = (root / "annotations" / "test.txt").read_text().split()[::4]
    for name in test_names:  # a release whose test images have head boxes too
        breed, number = name.rsplit("_", 1)
        source = (root / "annotations" / "xmls" / f"{breed}_{int(number) - 1}.xml").read_text()
        (root / "annotations" / "xmls" / f"{name}.xml").write_text(source.replace(f"{breed}_{int(number) - 1}", name))
    for target in ("box", ["species", "box"]):
        module = tiny_data(root, tmp_path, target, split="official")
        notes = " ".join(module.report.notes)
        assert set(module.frame.loc[module.frame["split"] == "test", "name"]) == set(test_names), target
        assert "have no head boxes" not in notes and "in no split" not in notes, notes
        assert "The test split for head boxes is the official test images that have them (all)." in notes


@pytest.mark.skipif(not REAL_SAMPLE.is_dir(), reason="the shared real sample is not beside this checkout")
def test_the_real_samples_head_boxes_are_read_and_a_photo_of_two_cats_listed(tmp_path: Path):
    module = box_data(REAL_SAMPLE, tmp_path, split="official")
    assert len(module.frame) == 295 and module.frame["value/"].str.len().min() > 0  # of 296 xmls
    problems = dict(zip(module.report.skipped["name"], module.report.skipped["problem"], strict=True))
    assert (
        problems["Bengal_105"]
        == "not used for task.target=box: 2 head boxes (several animals): one box per image is learnt"
    )


@pytest.fixture(scope="module")
def head_run(sample_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_once(sample_root, tmp_path_factory, ["task=head_box", "model=cnn", "trainer.max_epochs=1"])


def test_a_head_run_writes_its_evaluation_files(head_run: Path):
    metrics = json.loads((head_run / "metrics.json").read_text())
    assert metrics["monitor"] == "val/iou" and 0 <= metrics["test/iou"] <= 1 and 0 <= metrics["test/iou50"] <= 1
    per_image = pd.read_csv(head_run / "per_image_iou.csv")
    assert len(per_image) > 0 and per_image["iou"].dropna().between(0, 1).all()
    for figure in ("sample_predictions", "worst_iou", "iou_histogram", "learning_curves"):
        assert (head_run / f"{figure}.png").stat().st_size > 5000, figure


def test_predict_gives_the_box_in_the_photos_pixels_and_draws_it(head_run: Path, sample_root: Path, tmp_path: Path):
    checkpoint = json.loads((head_run / "metrics.json").read_text())["best_checkpoint"]
    image = sample_root / "images" / "Bengal_1.jpg"
    output = tmp_path / "drawn"
    result = petlab("petlab.predict", f"ckpt_path={checkpoint}", f"images=[{image}]", "output=json",
                    f"output_dir={output}", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    (answer,) = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    width, height = Image.open(image).size
    x0, y0, x1, y1 = answer["box"]
    assert 0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height
    assert Image.open(answer["drawn"]).size == (width, height)


@pytest.mark.parametrize("file_format", ["torchscript", "onnx"])
def test_an_exported_head_model_gives_the_checkpoints_boxes(head_run: Path, tmp_path: Path, file_format: str):
    _, (actual,), (expected,), sidecar = exported_outputs(head_run, file_format, tmp_path)
    assert actual.shape == (2, 4)
    np.testing.assert_allclose(actual, expected, atol=1e-4)
    assert "head box" in sidecar["output"] and sidecar["output_names"] == ["box"]
