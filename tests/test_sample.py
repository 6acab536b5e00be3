from pathlib import Path

import pytest
from PIL import Image

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
