"""Shared fixtures: a tiny generated dataset and the real configs composed with Hydra's compose()."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from hashlib import sha1
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from petlab.config import config_dir
from petlab.data.sample import generate_sample
from petlab.resolvers import register_resolvers
from servers import postgres_url, slurm_cluster  # noqa: F401  (fixtures: a PostgreSQL server, a SLURM cluster)

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
        cfg = compose("train", overrides=[*base, *overrides])
        OmegaConf.resolve(cfg.task)  # a joint task's tasks are composed while the config path is known
        return cfg


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


@pytest.fixture(scope="session")
def segmentation_run(sample_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch segmentation run of the custom CNN on the tiny dataset."""
    return train_once(sample_root, tmp_path_factory, ["task=segmentation", "model=cnn", "trainer.max_epochs=1"])


@pytest.fixture(scope="session")
def joint_run(sample_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 1-epoch joint run (species, breed, segmentation, head) of the CNN: every kind of answer."""
    overrides = ["task=joint", "model=cnn", "trainer.max_epochs=1", "trainer.limit_train_batches=4"]
    return train_once(sample_root, tmp_path_factory, overrides)


def synthetic_pets(root: Path, count: int, draw: Callable[[Path, str, np.random.Generator], None],
                   trainval_share: float = 1.0) -> Path:  # fmt: skip
    """A pets-layout dataset of ``count`` images, cats (Bengal) and dogs (beagle) in turn: ``draw(root, name,
    rng)`` writes each image and its annotations; the first ``trainval_share`` are trainval, the rest test."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for index in range(count):
        name = f"{'Bengal' if index % 2 else 'beagle'}_{index + 1}"
        draw(root, name, rng)
        lines.append(f"{name} 1 {1 if index % 2 else 2} 1")
    cut = round(count * trainval_share)
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / "trainval.txt").write_text("\n".join(lines[:cut]) + "\n")
    if cut < count:
        (root / "annotations" / "test.txt").write_text("\n".join(lines[cut:]) + "\n")
    return root


def targets_named(names: str | Sequence[str]) -> Any:
    """The target a name gives (species, breed: labels; trimap: masks; box: head boxes), or several by name."""
    from petlab.data.targets import Box, Label, Mask

    if not isinstance(names, str):
        return {name: targets_named(name) for name in names}
    return {"trimap": Mask, "box": Box}.get(names, Label)(names)


def tiny_data(root: Path, tmp_path: Path, target: str | Sequence[str], **options: Any) -> Any:
    """A data module on ``root`` for ``target`` (see :func:`targets_named`) at 32 px, split at random (half
    train), set up."""
    from petlab.data.datamodule import PetDataModule

    options = {"image_size": 32, "batch_size": 8, "num_workers": 0, "split": "random", "val_fraction": 0.25,
               "test_fraction": 0.25, "cache_dir": tmp_path / "cache", **options}  # fmt: skip
    module = PetDataModule(root, targets=targets_named(target), **options)
    module.setup("fit")
    return module


def run_module(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m module args`` in ``cwd`` (which is also PETLAB_ROOT), its output captured."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PETLAB_ROOT": str(cwd)}, timeout=600)  # fmt: skip


def train_once(sample_root: Path, tmp_path_factory: pytest.TempPathFactory, overrides: Sequence[str]) -> Path:
    """A finished run with ``overrides`` on the tiny dataset (its run directory), for a module's tests to share."""
    from petlab.train import train

    run_dir = tmp_path_factory.mktemp("run") / "run"
    train(compose_config(sample_root, run_dir, overrides))
    return run_dir


def exported_outputs(run_dir: Path, file_format: str, tmp_path: Path) -> tuple[Any, list[np.ndarray], list, dict]:
    """Export a run's best checkpoint; the checkpoint, the exported model's outputs for random images at its
    input size, the checkpoint's own outputs for them (a list: one per head of a joint model) and the sidecar."""
    import torch

    from petlab.checkpoint import load_checkpoint
    from petlab.export import export

    checkpoint = load_checkpoint(json.loads((run_dir / "metrics.json").read_text())["best_checkpoint"])
    output = export(checkpoint, file_format, tmp_path / f"model.{file_format}")
    images = torch.rand(2, 3, checkpoint.side, checkpoint.side)
    with torch.no_grad():
        expected = checkpoint.model(images)
        if file_format == "torchscript":
            actual = torch.jit.load(str(output))(images)
            actual = [value.numpy() for value in (actual if isinstance(actual, tuple) else [actual])]
        else:
            import onnxruntime

            actual = onnxruntime.InferenceSession(str(output)).run(None, {"images": images.numpy()})
    expected = [value.numpy() for value in (expected.values() if isinstance(expected, dict) else [expected])]
    return checkpoint, actual, expected, json.loads(output.with_suffix(output.suffix + ".json").read_text())


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
