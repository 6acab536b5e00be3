"""Shared fixtures: a tiny generated dataset and the real configs composed with Hydra's compose()."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from petlab.config import config_dir, register_resolvers
from petlab.data.sample import generate_sample

REAL_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "oxford-pets-sample"


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """37 breeds x 6 images of 32 px: every breed keeps one validation image under the official split."""
    return generate_sample(tmp_path_factory.mktemp("data") / "sample-pets", per_breed=6, size=32, seed=0)


@pytest.fixture
def make_cfg(sample_root: Path, tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose conf/train.yaml with overrides, pointed at the tiny dataset and a temporary run directory."""
    register_resolvers()

    def _compose(overrides: Sequence[str] = ()) -> DictConfig:
        base = [
            "data=sample",
            f"data.root={sample_root}",
            "data.image_size=32",
            "data.batch_size=8",
            "data.num_workers=0",
            f"paths.output_dir={tmp_path / 'run'}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            "trainer.accelerator=cpu",
            "trainer.enable_progress_bar=false",
            "callbacks.progress_bar=null",
            "callbacks.model_summary=null",
        ]
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return compose("train", overrides=[*base, *overrides])

    return _compose
