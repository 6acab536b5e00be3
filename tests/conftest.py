"""Shared fixtures: a tiny generated dataset and the real configs composed with Hydra's compose()."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from hashlib import sha1
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from PIL import Image

from petlab.config import config_dir, register_resolvers
from petlab.data.sample import generate_sample

REAL_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "oxford-pets-sample"


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """37 breeds x 6 images of 32 px: every breed keeps one validation image under the official split."""
    return generate_sample(tmp_path_factory.mktemp("data") / "sample-pets", per_breed=6, size=32, seed=0)


def compose_config(sample_root: Path, run_dir: Path, overrides: Sequence[str] = ()) -> DictConfig:
    """conf/train.yaml with overrides, pointed at the tiny dataset and ``run_dir``."""
    register_resolvers()
    base = [
        "data=sample",
        f"data.root={sample_root}",
        "data.image_size=32",
        "data.batch_size=8",
        "data.num_workers=0",
        f"paths.output_dir={run_dir}",
        f"paths.cache_dir={run_dir.parent / 'cache'}",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        "callbacks.progress_bar=null",
        "callbacks.model_summary=null",
    ]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("train", overrides=[*base, *overrides])


@pytest.fixture
def make_cfg(sample_root: Path, tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose the real configs for a run in a temporary directory."""
    return lambda overrides=(): compose_config(sample_root, tmp_path / "run", overrides)


@pytest.fixture(scope="session")
def trained_run(sample_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-epoch breed run of the CNN (its run directory), shared by the evaluation tests."""
    from petlab.train import train

    run_dir = tmp_path_factory.mktemp("trained") / "run"
    train(compose_config(sample_root, run_dir, ["task=breed", "model=cnn", "trainer.max_epochs=2"]))
    return run_dir


def add_release_flaws(root: Path) -> dict[str, str]:
    """Give a generated dataset the flaws of the real release; returns {file name: what is wrong with it}."""
    images = root / "images"
    source = Image.open(images / "Bengal_1.jpg").convert("RGB")
    source.convert("P").save(images / "Bengal_101.jpg", format="GIF")
    rgba = source.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(images / "Bengal_102.jpg", format="PNG")
    source.convert("L").save(images / "Bengal_103.jpg")
    source.convert("CMYK").save(images / "Bengal_104.jpg")
    (images / "Bengal_105.jpg").write_bytes((images / "Bengal_2.jpg").read_bytes()[:300])  # truncated
    (images / "Bengal_106.jpg").write_bytes(b"\x00not an image at all")
    (images / "Abyssinian_100.mat").write_bytes(b"MATLAB 5.0 MAT-file" + bytes(100))
    annotations = root / "annotations"
    listing = annotations / "list.txt"
    listing.write_text(listing.read_text() + "this line is malformed\nBengal_101 6 1 2\nBengal_102 6 2 2\n")
    with (annotations / "trainval.txt").open("a") as split_file:
        split_file.write("Bengal_101 6 1 2\nBengal_102 6 1 2\nBengal_103 6 1 2\nBengal_104 6 1 2\n")
        split_file.write("Bengal_105 6 1 2\nBengal_106 6 1 2\nBengal_999 6 1 2\n")  # 999 does not exist
    return {
        "Bengal_101": "GIF named .jpg", "Bengal_102": "RGBA PNG named .jpg", "Bengal_103": "grayscale",
        "Bengal_104": "CMYK", "Bengal_105": "truncated", "Bengal_106": "not an image",
        "Abyssinian_100": ".mat file",
    }  # fmt: skip


@pytest.fixture
def flawed_root(tmp_path: Path) -> Path:
    """A fresh small dataset (species task) with every flaw of the release; free to modify."""
    root = generate_sample(tmp_path / "flawed-pets", per_breed=6, size=32, seed=1)
    add_release_flaws(root)
    return root


def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under root with its size, mtime and content hash."""
    return {
        str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns, sha1(path.read_bytes()).hexdigest())
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }
