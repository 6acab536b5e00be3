"""`python -m petlab` as a user runs it: from another directory, with bad input, and as a multirun."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import run_module
from petlab.cli import user_error
from petlab.errors import PetlabError
from petlab.train import train

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
    assert shown.returncode == 0
    assert "model: cnn, convnext_tiny, efficientnet_b0, mobilenet_v3_large, resnet34, resnet50\n" in shown.stdout
    assert "task: breed, head_box, joint, segmentation, species\n" in shown.stdout and "_base" not in shown.stdout
    composed = petlab("--cfg", "job", "task=breed", cwd=tmp_path)
    assert composed.returncode == 0 and "name: breed" in composed.stdout


def test_an_unknown_option_or_key_is_one_line_that_says_what_to_give(tmp_path: Path, monkeypatch):
    result = petlab("model=vgg", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "model=vgg is not a config of model: choose one of cnn, convnext_tiny," in result.stderr
    assert "resnet50 (a config of your own: --config-dir DIR" in result.stderr and "_base" not in result.stderr
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    key = run_module("petlab.predict", "data.nosuch=1", cwd=tmp_path)
    assert key.returncode == 2 and key.stderr.count("\n") == 1 and "+data.nosuch=1" in key.stderr, key.stderr
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # the user asks for Hydra's whole report: they get it
    full = run_module("petlab", "model=vgg", cwd=tmp_path)
    assert full.returncode == 1 and "MissingConfigException" in full.stderr and "Traceback" in full.stderr


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
    jobs = sorted(p for p in sweeps[0].iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0_task-species", "1_task-breed"]
    tasks = set()
    for job in jobs:
        metrics = json.loads((job / "metrics.json").read_text())
        tasks.add(metrics["task"])
        assert (job / ".hydra" / "config.yaml").is_file()
        assert list((job / "tensorboard").glob("events.out.tfevents.*"))
        assert (job / "checkpoints" / "last.ckpt").is_file()
        # The HParams tab shows a config group chosen on the command line by its option's name.
        events = EventAccumulator(str(job / "tensorboard" / "hparams")).Reload()
        session = events.PluginTagToContent("hparams")["_hparams_/session_start_info"].decode(errors="ignore")
        assert metrics["task"] in session and "_target_" not in session and "ckpt_path" not in session
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


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.max_epochs=abc", "trainer.max_epochs='abc' is not valid: it must be a whole number >= -1"),
        ("seed=abc", "seed='abc' is not valid: it must be a whole number from 0 to 4294967295"),
        ("optimizer.lr=-1", "refuses optimizer.lr=-1"),
        ("data.image_size=-5", "data.image_size=-5 is not valid: it must be a whole number >= 16"),
        ("data.batch_size=0", "data.batch_size=0 is not valid: it must be a whole number >= 1"),
        ("trainer.precision=abc", "trainer cannot be built from the config (Precision 'abc' is invalid"),
    ],
)
def test_wrong_values_are_one_line_errors_naming_the_value_and_the_valid_range(make_cfg, override, message):
    with pytest.raises(Exception) as raised:
        train(make_cfg(["model=cnn", override]))
    problem = user_error(raised.value)
    assert isinstance(problem, PetlabError) and message in str(problem) and "\n" not in str(problem)


def test_a_run_that_fails_on_its_config_leaves_no_directory(tmp_path: Path, sample_root: Path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "sample-pets").symlink_to(sample_root)
    result = petlab(*COMMON, "model=cnn", "trainer.max_epochs=abc", cwd=tmp_path)
    assert result.returncode == 2
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "trainer.max_epochs='abc'" in errors[0] and "Traceback" not in result.stderr
    runs = tmp_path / "outputs" / "runs"
    assert not runs.exists() or not list(runs.iterdir())


@pytest.mark.slow
def test_the_console_shows_the_run_without_library_noise(tmp_path: Path, sample_root: Path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "sample-pets").symlink_to(sample_root)
    result = petlab(*COMMON, "model=cnn", "trainer.log_every_n_steps=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    console = result.stdout + result.stderr
    assert console.count("Images per class and split") == 1 and console.count("Run directory:") == 1
    for noise in ("INFO: ", "Directory watcher", "LeafSpec", "Total FLOPs: 0", "GPU available", "litlogger"):
        assert noise not in console, noise
    (run,) = (tmp_path / "outputs" / "runs").iterdir()
    assert "GPU available" in (run / "__main__.log").read_text()  # kept in the run's log
    lines = console.splitlines()
    header = next(number for number, line in enumerate(lines) if "| Name" in line)
    totals = next(number for number, line in enumerate(lines) if "Trainable params" in line)
    assert totals - header <= 8, "\n".join(lines[header:totals])  # the summary's rows, one line each, not wrapped
