from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from petlab.data.labels import ALL_BREEDS
from petlab.data.sample import generate_sample, main


def test_layout_matches_the_release(sample_root: Path):
    images = sorted(p.name for p in (sample_root / "images").iterdir())
    assert len(images) == 37 * 6
    assert "Abyssinian_1.jpg" in images and "yorkshire_terrier_6.jpg" in images
    lines = (sample_root / "annotations" / "list.txt").read_text().splitlines()
    assert [line.startswith("#") for line in lines[:7]] == [True] * 6 + [False]
    assert "Bengal_1 6 1 2" in lines
    assert "american_bulldog_2 2 2 1" in lines
    trainval = (sample_root / "annotations" / "trainval.txt").read_text().split("\n")
    test = (sample_root / "annotations" / "test.txt").read_text().split("\n")
    assert set(trainval).isdisjoint(set(test) - {""})
    assert len(lines) - 6 == len([t for t in trainval + test if t])


def test_about_twice_as_many_dogs_as_cats(sample_root: Path):
    names = [p.name for p in (sample_root / "images").iterdir()]
    cats = sum(name[0].isupper() for name in names)
    assert 1.8 < (len(names) - cats) / cats < 2.3


def test_generation_is_deterministic_and_sized(tmp_path: Path):
    first = generate_sample(tmp_path / "a", per_breed=2, size=40, seed=3)
    second = generate_sample(tmp_path / "b", per_breed=2, size=40, seed=3)
    for breed in ALL_BREEDS:
        a = (first / "images" / f"{breed}_2.jpg").read_bytes()
        assert a == (second / "images" / f"{breed}_2.jpg").read_bytes()
    assert Image.open(first / "images" / "Persian_1.jpg").size == (40, 40)


def test_an_existing_directory_is_never_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture):
    target = tmp_path / "pets"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        main(["--root", str(target), "--per-breed", "2"])
    assert exit_info.value.code == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pets-")]  # no staging left behind


def test_every_image_has_a_release_style_trimap_and_trainval_images_a_head_box(sample_root: Path):
    annotations = sample_root / "annotations"
    names = sorted(p.stem for p in (sample_root / "images").iterdir())
    assert sorted(p.stem for p in (annotations / "trimaps").iterdir()) == names
    trimap = Image.open(annotations / "trimaps" / "Bengal_1.png")
    assert trimap.mode == "L" and trimap.size == Image.open(sample_root / "images" / "Bengal_1.jpg").size
    values, counts = np.unique(np.asarray(trimap), return_counts=True)
    assert values.tolist() == [1, 2, 3] and counts.min() > 0
    trainval = [line.split()[0] for line in (annotations / "trainval.txt").read_text().split("\n") if line]
    assert sorted(p.stem for p in (annotations / "xmls").iterdir()) == sorted(trainval)
    root = ElementTree.parse(annotations / "xmls" / "Bengal_1.xml").getroot()
    box = {tag: int(root.find(f"object/bndbox/{tag}").text) for tag in ("xmin", "ymin", "xmax", "ymax")}
    assert root.find("object/name").text == "cat" and root.find("size/width").text == "32"
    # Every pet pixel (1) of the trimap lies inside the box (1-based, inclusive corners).
    pet = np.argwhere(np.asarray(trimap) == 1)
    assert box["xmin"] - 1 <= pet[:, 1].min() and pet[:, 1].max() <= box["xmax"] - 1
    assert box["ymin"] - 1 <= pet[:, 0].min() and pet[:, 0].max() <= box["ymax"] - 1


def test_the_trimaps_uncertain_band_is_the_outline_widened_by_a_32nd_of_the_side_each_way():
    from petlab.data.sample import draw_pet, trimap

    _, silhouette = draw_pet("Bengal", 1, 96, seed=0)
    reach = 96 // 32  # the band's half width
    pet = np.pad(np.asarray(silhouette) > 0, reach)
    windows = np.lib.stride_tricks.sliding_window_view(pet, (2 * reach + 1, 2 * reach + 1))
    everywhere, anywhere = windows.all(axis=(-1, -2)), windows.any(axis=(-1, -2))
    labels = np.asarray(trimap(silhouette))
    assert (labels == 1).tolist() == everywhere.tolist() and (labels == 2).tolist() == (~anywhere).tolist()
    assert 0 < (labels == 3).sum() < 0.2 * labels.size
    # A pet cut by the photo's edge: the band follows the edge as PIL's square rank filters do.
    cut = Image.new("L", (96, 64), 0)
    ImageDraw.Draw(cut).ellipse([-30, 10, 50, 90], fill=255)
    width = 2 * (96 // 32) + 1
    inside = np.asarray(cut.filter(ImageFilter.MinFilter(width))) > 0
    around = np.asarray(cut.filter(ImageFilter.MaxFilter(width))) > 0
    labels = np.asarray(trimap(cut))
    assert (labels == 1).tolist() == inside.tolist() and (labels == 2).tolist() == (~around).tolist()
