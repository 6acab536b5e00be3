"""`python -m petlab` as a user runs it: from another directory, with bad input, and as a multirun."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

COMMON = [
    "data=sample", "data.image_size=32", "data.batch_size=16", "data.num_workers=0",
    "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2", "trainer.accelerator=cpu",
]  # fmt: skip


def petlab(*args: str, cwd: Path, root: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PETLAB_ROOT": str(root or cwd), "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, "-m", "petlab", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_help_and_composed_config_work_from_any_directory(tmp_path: Path):
    shown = petlab("--help", cwd=tmp_path)
    assert shown.returncode == 0 and "model: cnn, resnet34, resnet50" in shown.stdout
    composed = petlab("--cfg", "job", "task=breed", cwd=tmp_path)
    assert composed.returncode == 0 and "name: breed" in composed.stdout


def test_unknown_model_lists_the_valid_ones(tmp_path: Path):
    result = petlab("model=vgg", cwd=tmp_path)
    assert result.returncode != 0
    assert "Available options in 'model'" in result.stderr and "resnet50" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_dataset_is_one_line_without_traceback(tmp_path: Path):
    result = petlab("model=cnn", cwd=tmp_path)
    assert result.returncode == 2
    output = result.stdout + result.stderr
    assert "no dataset at" in output and "data=sample" in output and "Traceback" not in output


@pytest.mark.slow
def test_a_two_job_multirun_gets_two_directories(tmp_path: Path, sample_root: Path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "sample-pets").symlink_to(sample_root)
    result = petlab("-m", "task=species,breed", "model=cnn", *COMMON, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    sweeps = list((tmp_path / "outputs" / "multiruns").iterdir())
    assert len(sweeps) == 1
    jobs = sorted(p for p in sweeps[0].iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1"]
    tasks = set()
    for job in jobs:
        metrics = json.loads((job / "metrics.json").read_text())
        tasks.add(metrics["task"])
        assert (job / ".hydra" / "config.yaml").is_file()
        assert list((job / "tensorboard").glob("events.out.tfevents.*"))
        assert (job / "checkpoints" / "last.ckpt").is_file()
    assert tasks == {"species", "breed"}


@pytest.mark.slow
def test_two_runs_started_together_never_share_a_directory(tmp_path: Path, sample_root: Path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "sample-pets").symlink_to(sample_root)
    env = {**os.environ, "PETLAB_ROOT": str(tmp_path)}
    command = [sys.executable, "-m", "petlab", "model=cnn", *COMMON, "callbacks=none", "test=false"]
    runs = [
        subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    for run in runs:
        assert run.wait(timeout=600) == 0, run.stderr.read().decode()[-2000:]
    directories = list((tmp_path / "outputs" / "runs").iterdir())
    assert len(directories) == 2
    assert all((d / "metrics.json").is_file() for d in directories)
