"""Killed with SIGKILL at a chosen moment and run again, each command finishes its work and loses nothing.

Each test starts the real command in a subprocess, kills its process group once a file shows it has reached
the moment chosen (a checkpoint written, the evaluation files begun, a partial export on disk), then runs
the same command again and checks: every file parses, no other run changed, and the results equal those
of a run that was never killed (same config and seed on CPU). Prediction has its own kill test in
test_predict.py; a search's killed worker, in test_search.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.slow

TINY = [
    "data=sample", "model=cnn", "data.image_size=32", "data.batch_size=16", "data.num_workers=0",
    "trainer.limit_train_batches=2", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2",
    "trainer.accelerator=cpu", "trainer.max_epochs=3", "callbacks.early_stopping=null",
    "callbacks.progress_bar=null", "seed=0",
]  # fmt: skip
# What a run's result is (seconds and paths differ between two runs of one config).
RESULTS = ("val/acc", "val/acc_best", "val/loss", "train/loss", "test/acc", "test/loss", "test/f1_macro",
           "best_epoch", "epochs")  # fmt: skip
TIMEOUT_S = 600


def command(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def finish(project: Path, module: str, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(command(module, *args), cwd=project, env={**os.environ, "PETLAB_ROOT": str(project)},
                            capture_output=True, text=True, timeout=TIMEOUT_S)  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return result


def kill_when(project: Path, reached: Callable[[], bool], module: str, *args: str) -> None:
    """Start the command and SIGKILL its whole process group (dataloader or launcher children too) as soon
    as ``reached()``; fail if it ended first (the moment chosen was never seen)."""
    environment = {**os.environ, "PETLAB_ROOT": str(project)}
    started = subprocess.Popen(command(module, *args), cwd=project, env=environment, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + TIMEOUT_S
    while started.poll() is None and not reached() and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(started.pid, signal.SIGKILL)
    assert started.wait() == -signal.SIGKILL, "the command ended before the moment chosen to kill it"


def digests(folder: Path) -> dict[str, str]:
    return {str(path.relative_to(folder)): hashlib.sha1(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}  # fmt: skip


def check_every_file_parses(folder: Path) -> None:
    """Each file petlab wrote under ``folder`` reads whole; no partial file of a killed process is left."""
    for path in (path for path in folder.rglob("*") if path.is_file()):
        assert not path.name.endswith(".partial"), path
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            [json.loads(line) for line in path.read_text().splitlines()]
        elif path.suffix == ".csv":
            pd.read_csv(path)
        elif path.suffix in (".png", ".jpg"):
            with Image.open(path) as image:
                image.verify()
        elif path.suffix == ".ckpt":
            torch.load(path, map_location="cpu", weights_only=True)
        elif path.suffix == ".onnx":
            onnx = pytest.importorskip("onnx")
            onnx.checker.check_model(onnx.load(str(path)))


def results(run: Path) -> dict[str, float]:
    metrics = json.loads((run / "metrics.json").read_text())
    return {key: pytest.approx(metrics[key], rel=1e-5) if isinstance(metrics[key], float) else metrics[key]
            for key in RESULTS if key in metrics}  # fmt: skip


@pytest.fixture(scope="module")
def project(sample_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("killed")
    (folder / "data").mkdir()
    (folder / "data" / "sample-pets").symlink_to(sample_root)
    return folder


@pytest.fixture(scope="module")
def clean_run(project: Path) -> Path:
    """The run never killed that the others must equal."""
    run = project / "outputs" / "clean"
    finish(project, "petlab", *TINY, f"hydra.run.dir={run}")
    return run


def test_a_training_or_its_resume_killed_mid_way_or_in_the_final_phase_finishes_as_if_never_killed(
    project: Path, clean_run: Path
):
    untouched = digests(clean_run)
    for name, moment in (("mid_way", "checkpoints/last.ckpt"), ("final_phase", "per_class.csv")):
        run = project / "outputs" / name
        kill_when(project, (run / moment).is_file, "petlab", *TINY, f"hydra.run.dir={run}")
        assert not (run / "metrics.json").exists()
        if name == "mid_way":  # the resume killed too, once it has saved an epoch of its own
            last = run / "checkpoints" / "last.ckpt"
            saved = last.stat().st_mtime_ns
            kill_when(project, lambda: last.stat().st_mtime_ns != saved, "petlab", "ckpt_path=last",  # noqa: B023
                      f"hydra.run.dir={run}")  # fmt: skip
            assert not (run / "metrics.json").exists()
        finish(project, "petlab", "ckpt_path=last", f"hydra.run.dir={run}")
        assert results(run) == results(clean_run), name
        check_every_file_parses(run)
    assert digests(clean_run) == untouched  # no command changed a run it was not asked to


def test_a_run_that_stopped_early_and_was_killed_writing_its_files_trains_nothing_more(project: Path):
    # Early stopping that never sees an improvement (min_delta above any accuracy gain): it stops after 2 of 3.
    early = [argument for argument in TINY if argument != "callbacks.early_stopping=null"]
    early += ["callbacks.early_stopping.patience=1", "+callbacks.early_stopping.min_delta=1.0"]
    clean, run = project / "outputs" / "early_clean", project / "outputs" / "early_killed"
    finish(project, "petlab", *early, f"hydra.run.dir={clean}")
    assert json.loads((clean / "metrics.json").read_text())["epochs"] == 2
    kill_when(project, (run / "per_class.csv").is_file, "petlab", *early, f"hydra.run.dir={run}")
    assert not (run / "metrics.json").exists()
    finish(project, "petlab", "ckpt_path=last", f"hydra.run.dir={run}")
    assert results(run) == results(clean)  # not a third epoch
    check_every_file_parses(run)


def test_a_sweep_killed_mid_way_and_started_again_skips_what_completed_and_resumes_the_rest(
    project: Path, clean_run: Path
):
    sweep = project / "outputs" / "sweep"
    arguments = ["-m", *TINY[:-1], "seed=0,1", f"hydra.sweep.dir={sweep}"]
    second = sweep / "1_seed-1"
    kill_when(project, (second / "checkpoints" / "last.ckpt").is_file, "petlab", *arguments)
    first = digests(sweep / "0_seed-0")
    assert not (second / "metrics.json").exists()
    finish(project, "petlab", *arguments)
    again = digests(sweep / "0_seed-0")
    assert again.pop("__main__.log") != first.pop("__main__.log")  # its log says it was not trained again
    assert again == first
    assert results(sweep / "0_seed-0") == results(clean_run)  # the job of the clean run's config
    assert json.loads((second / "metrics.json").read_text())["epochs"] == 3
    assert not list(sweep.rglob("*-v1.ckpt"))
    check_every_file_parses(sweep)


def test_evaluate_and_both_exports_killed_while_writing_finish_when_run_again(project: Path, clean_run: Path):
    checkpoint = json.loads((clean_run / "metrics.json").read_text())["best_checkpoint"]
    untouched = digests(clean_run)
    evaluations = project / "outputs" / "evaluations"

    def evaluation_begun() -> bool:
        return any(path.is_file() for path in evaluations.glob("*/*.csv"))

    evaluate = [f"ckpt_path={checkpoint}", "trainer.limit_test_batches=2"]  # the batches the run was tested on
    kill_when(project, evaluation_begun, "petlab.evaluate", *evaluate)
    (killed,) = evaluations.iterdir()
    assert not (killed / "metrics.json").exists()
    finish(project, "petlab.evaluate", *evaluate)
    (evaluated,) = (folder for folder in evaluations.iterdir() if folder != killed)
    measured = json.loads((evaluated / "metrics.json").read_text())
    for key in ("test/acc", "test/loss", "test/f1_macro"):
        assert measured[key] == pytest.approx(json.loads((clean_run / "metrics.json").read_text())[key], rel=1e-5)
    check_every_file_parses(evaluated)

    # A ResNet34 (its ONNX file 85 MB): long enough to write that the kill lands before the file is whole.
    resnet = project / "outputs" / "resnet34"
    finish(project, "petlab", *TINY, "model=resnet34", "model.backbone.pretrained=false", "trainer.max_epochs=1",
           "test=false", f"hydra.run.dir={resnet}")  # fmt: skip
    export = project / "outputs" / "exports"
    for file_format, output in (("onnx", export / "model.onnx"), ("space", export / "space")):
        arguments = [f"ckpt_path={resnet / 'checkpoints' / 'last.ckpt'}", f"format={file_format}", f"output={output}"]
        kill_when(project, lambda: any(export.glob(f".{output.name}.*.partial")), "petlab.export", *arguments)  # noqa: B023
        assert not output.exists()  # the partial file is private until it is whole
        finish(project, "petlab.export", *arguments)
        assert output.exists() and not list(export.glob("*.partial"))
    assert (export / "model.onnx.json").is_file() and (export / "space" / "app.py").is_file()
    check_every_file_parses(export)
    assert digests(clean_run) == untouched and not list((resnet / "export").glob("*"))
