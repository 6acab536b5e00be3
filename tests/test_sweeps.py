"""Sweeps as users run them: multiruns with failures, k-fold, the report, launchers (searches: test_search.py)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from petlab.errors import PetlabError
from petlab.report import collect_runs, rankings, summarise

TINY = [
    "data=sample", "model=cnn", "data.image_size=32", "data.batch_size=16", "data.num_workers=0",
    "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2", "trainer.accelerator=cpu", "callbacks.progress_bar=null",
]  # fmt: skip


@pytest.fixture
def project(tmp_path: Path, sample_root: Path) -> Path:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "sample-pets").symlink_to(sample_root)
    return tmp_path


def run(project: Path, *args: str, module: str = "petlab") -> subprocess.CompletedProcess:
    env = {**os.environ, "PETLAB_ROOT": str(project)}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=project, env=env, capture_output=True,
                          text=True, timeout=900)  # fmt: skip


def sweep_dir(project: Path) -> Path:
    (directory,) = (project / "outputs" / "multiruns").iterdir()
    return directory


def test_a_long_sweep_label_ends_between_pairs_and_says_how_many_more(monkeypatch):
    from petlab.config import share_fixed_keys, sweep_label

    monkeypatch.delenv("PETLAB_SWEEP_FIXED_KEYS", raising=False)
    share_fixed_keys([])
    pairs = [f"data.augment.key_{n}=0.{n}23456" for n in range(8)]
    label = sweep_label(pairs)
    shown = label.split("+")
    assert len(label) <= 110 and shown[-1].endswith("-more") and int(shown[-1].split("-")[0]) == 8 - len(shown) + 1
    assert all(part in [p.replace("=", "-") for p in pairs] for part in shown[:-1])


def test_sweep_labels_are_safe_folder_names_and_hydra_values(monkeypatch):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from petlab.config import share_fixed_keys, sweep_label

    monkeypatch.delenv("PETLAB_SWEEP_FIXED_KEYS", raising=False)
    share_fixed_keys(["model=cnn", "task=species,breed", "data.root=/x", "+trainer.x=[1,2]"])
    label = sweep_label(["model=cnn", "task=breed", "data.root=/x", "+data.augment.scale=[0.5,1.0]", "seed=1"])
    assert label == "task-breed+data.augment.scale-0.5-1.0+seed-1"
    override = OverridesParser.create().parse_override(f"ckpt_path=/runs/3_{label}/checkpoints/last.ckpt")
    assert override.value() == f"/runs/3_{label}/checkpoints/last.ckpt"


@pytest.mark.slow
def test_a_sweep_started_again_skips_completed_jobs_and_resumes_a_killed_one(project: Path):
    sweep = project / "outputs" / "multiruns" / "again"
    command = ["-m", "seed=1,2", f"hydra.sweep.dir={sweep}", *TINY, "trainer.max_epochs=2"]
    first = run(project, *command)
    assert first.returncode == 0, first.stderr[-3000:]
    done, killed = sorted(path for path in sweep.iterdir() if path.is_dir())

    def results(job: Path) -> dict[Path, bytes]:  # all but Hydra's record and log of the job's latest start
        return {path: path.read_bytes() for path in job.rglob("*")
                if path.is_file() and ".hydra" not in path.parts and path.suffix != ".log"}  # fmt: skip

    before = results(done)
    whole = json.loads((killed / "metrics.json").read_text())
    (killed / "metrics.json").unlink()  # killed after its last checkpoint, before its final files
    again = run(project, *command)
    assert again.returncode == 0, again.stderr[-3000:]
    assert results(done) == before  # the completed job was not trained again
    completed = json.loads((killed / "metrics.json").read_text())
    assert {key: completed[key] for key in ("val/acc", "val/loss", "test/acc")} == {
        key: whole[key] for key in ("val/acc", "val/loss", "test/acc")
    }
    assert not list(sweep.rglob("*-v1.ckpt"))
    other = run(project, "-m", "seed=1,2", f"hydra.sweep.dir={sweep}", *TINY, "trainer.max_epochs=3")
    assert other.returncode == 2 and "holds a completed run of another configuration" in other.stdout + other.stderr


@pytest.mark.slow
def test_a_four_job_k_fold_sweep_and_its_report(project: Path):
    result = run(project, "-m", "task=species,breed", "data.folds=2", "data.fold=0,1", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = sweep_dir(project)
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == [  # named by what the sweep varies
        "0_task-species+data.fold-0", "1_task-species+data.fold-1",
        "2_task-breed+data.fold-0", "3_task-breed+data.fold-1",
    ]  # fmt: skip
    assert (sweep / "report.md").is_file() and (sweep / "report.png").is_file()  # written by the sweep itself

    report = run(project, str(sweep), module="petlab.report")
    assert report.returncode == 0, report.stderr
    assert "different tasks (breed, species)" in report.stdout and "4 runs (4 completed)" in report.stdout
    # A log's width: the run named by its job folder under the sweep's, the columns that do not fit below.
    assert f"Runs in {sweep.name}:" in report.stdout and "\n0_task-species+data.fold-0 " in report.stdout
    width = int(os.environ.get("COLUMNS", 120))
    table = [
        line for line in report.stdout.splitlines() if line and not line.startswith(("warning", "Runs in", "4 runs"))
    ]
    assert max(len(line) for line in table) <= width, report.stdout
    runs = pd.read_csv(sweep / "report.csv")
    assert len(runs) == 4 and set(runs["data.fold"]) == {0, 1} and set(runs["task"]) == {"species", "breed"}
    summary = summarise(collect_runs([sweep]), "val/acc_best")
    assert list(summary["runs"]) == [2, 2]  # the two folds of each task pooled
    expected = runs.groupby("task")["val/acc_best"].mean().round(4)
    assert dict(zip(summary["task"], summary["val/acc_best mean"], strict=True)) == expected.to_dict()


@pytest.mark.slow
def test_a_failing_job_does_not_stop_the_sweep_and_is_reported(project: Path):
    result = run(project, "-m", "model=cnn,resnet34", *TINY[2:], "data=sample", "data.image_size=24")
    assert result.returncode == 2
    assert "1 job(s) of the sweep failed" in result.stderr and "needs data.image_size >= 32" in result.stderr
    runs = collect_runs([sweep_dir(project)]).set_index("model")
    assert runs.loc["cnn", "status"] == "completed" and runs.loc["resnet34", "status"] == "failed"
    assert "image_size" in runs.loc["resnet34", "error"]


def test_the_report_says_what_is_wrong_with_its_input(tmp_path: Path):
    with pytest.raises(PetlabError, match="no petlab runs"):
        collect_runs([tmp_path])
    half = tmp_path / "sweep" / "0" / ".hydra"
    half.mkdir(parents=True)
    (half / "config.yaml").write_text(
        yaml.safe_dump({"task": {"name": "breed"}, "model": {"backbone": {"name": "cnn"}}})
    )
    (half / "overrides.yaml").write_text(yaml.safe_dump(["model=cnn"]))
    runs = collect_runs([tmp_path / "sweep"])
    assert list(runs["status"]) == ["incomplete"]
    assert summarise(runs, "val/acc_best").empty
    nothing_done = subprocess.run([sys.executable, "-m", "petlab.report", str(tmp_path / "sweep")],
                                  capture_output=True, text=True)  # fmt: skip
    assert nothing_done.returncode == 0 and "1 runs (1 incomplete)" in nothing_done.stdout, nothing_done.stderr
    result = subprocess.run([sys.executable, "-m", "petlab.report", str(tmp_path / "missing")], capture_output=True,
                            text=True)  # fmt: skip
    assert result.returncode == 2 and "is not a directory" in result.stderr


def test_runs_are_ranked_in_the_direction_their_task_monitors(tmp_path: Path):
    for job, loss in enumerate((0.3, 0.1, 0.2)):
        run = tmp_path / "sweep" / str(job)
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "config.yaml").write_text(
            yaml.safe_dump({"task": {"name": "species"}, "model": {"backbone": {"name": "cnn"}}})
        )
        (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"optimizer.lr={job}"]))
        (run / "metrics.json").write_text(json.dumps(
            {"monitor": "val/loss", "monitor_mode": "min", "val/loss_best": loss, "val/acc_best": 1 - loss}
        ))  # fmt: skip
    runs = collect_runs([tmp_path / "sweep"])
    assert list(summarise(runs, "val/loss_best")["optimizer.lr"]) == ["1", "2", "0"]  # lowest loss first
    assert list(summarise(runs, "val/acc_best")["optimizer.lr"]) == ["1", "2", "0"]  # highest accuracy first


def test_runs_of_tasks_that_monitor_different_metrics_are_ranked_apart(tmp_path: Path):
    jobs = [("species", "val/acc", 0.7), ("species", "val/acc", 0.9), ("segmentation", "val/miou", 0.6)]
    for job, (task, monitor, value) in enumerate(jobs):
        run = tmp_path / "sweep" / str(job)
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "config.yaml").write_text(
            yaml.safe_dump({"task": {"name": task}, "model": {"backbone": {"name": "cnn"}}})
        )
        (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"task={task}", f"seed={job}"]))
        (run / "metrics.json").write_text(json.dumps({"monitor": monitor, f"{monitor}_best": value}))
    sections = rankings(collect_runs([tmp_path / "sweep"]), None)
    assert [(metric, list(summary["runs"])) for metric, summary in sections] == [
        ("val/acc_best", [2]), ("val/miou_best", [1])
    ]  # fmt: skip
    assert sections[0][1]["val/acc_best mean"].item() == pytest.approx(0.8)
    runs = collect_runs([tmp_path / "sweep"])
    both = summarise(runs, "val/acc_best", also=["val/miou_best"])
    assert both.set_index("task")["val/miou_best mean"].to_dict() == pytest.approx(
        {"species": math.nan, "segmentation": 0.6}, nan_ok=True
    )
    assert "val/miou_best mean" not in summarise(runs[runs["task"] == "species"], "val/acc_best", ["val/miou_best"])
    result = subprocess.run([sys.executable, "-m", "petlab.report", str(tmp_path / "sweep")], capture_output=True,
                            text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "By configuration (val/miou_best)" in result.stdout and "monitor different metrics" in result.stdout
    assert "## Summary: val/acc_best" in (tmp_path / "sweep" / "report.md").read_text()


def test_a_run_with_a_truncated_metrics_file_is_listed_unreadable_and_the_others_reported(tmp_path: Path):
    for job, metrics in (("0", '{"val/acc_best": 0.75, "test/acc": 0.5}'), ("1", '{"val/acc_best": 0.')):
        hydra = tmp_path / "sweep" / job / ".hydra"
        hydra.mkdir(parents=True)
        (hydra / "config.yaml").write_text(
            yaml.safe_dump({"task": {"name": "breed"}, "model": {"backbone": {"name": "cnn"}}})
        )
        (hydra / "overrides.yaml").write_text(yaml.safe_dump([f"seed={job}"]))
        (hydra.parent / "metrics.json").write_text(metrics)
    result = subprocess.run([sys.executable, "-m", "petlab.report", str(tmp_path / "sweep")], capture_output=True,
                            text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "2 runs (1 completed, 1 unreadable)" in result.stdout and "metrics.json is unreadable" in result.stderr
    runs = pd.read_csv(tmp_path / "sweep" / "report.csv").set_index("seed")
    assert runs.loc[0, "val/acc_best"] == 0.75 and runs.loc[1, "status"] == "unreadable"


def test_runs_without_the_ranked_metric_are_said_so_in_words(tmp_path: Path):
    hydra = tmp_path / "sweep" / "0" / ".hydra"
    hydra.mkdir(parents=True)
    (hydra / "config.yaml").write_text(
        yaml.safe_dump({"task": {"name": "species"}, "model": {"backbone": {"name": "cnn"}}})
    )
    (hydra / "overrides.yaml").write_text(yaml.safe_dump(["seed=0"]))
    (hydra.parent / "metrics.json").write_text(json.dumps({"monitor": "val/acc", "test/acc": 0.9}))
    result = subprocess.run([sys.executable, "-m", "petlab.report", str(tmp_path / "sweep")], capture_output=True,
                            text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (
        "None of the 1 completed runs records val/acc_best" in result.stdout and "Empty DataFrame" not in result.stdout
    )
    assert "--metric (test/acc)" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_launchers_run_the_jobs_in_their_own_processes(project: Path, launcher: str):
    options = ["hydra.launcher.n_jobs=2"] if launcher == "joblib" else ["hydra.launcher.timeout_min=10"]
    result = run(project, "-m", f"hydra/launcher={launcher}", *options, "seed=1,2", "test=false", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = collect_runs([sweep_dir(project)])
    assert list(runs["status"]) == ["completed", "completed"]


@pytest.mark.slow
def test_a_two_process_ddp_fit_on_cpu_writes_one_run(project: Path):
    result = run(project, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "GLOBAL_RANK: 1" in result.stdout + result.stderr  # two processes really trained
    (run_dir,) = (project / "outputs" / "runs").iterdir()
    assert [p.relative_to(project) for p in project.rglob("metrics.json")] == [
        (run_dir / "metrics.json").relative_to(project)
    ]
    assert len(list((run_dir / "checkpoints").glob("last*.ckpt"))) == 1
    metrics = json.loads((run_dir / "metrics.json").read_text())
    confusion = pd.read_csv(run_dir / "confusion_matrix.csv", index_col=0).to_numpy()
    # Two ranks x 2 test batches of 16, gathered in dataset order; test/acc was reduced across ranks.
    assert confusion.sum() == 64
    assert metrics["test/acc"] == pytest.approx(confusion.trace() / confusion.sum(), abs=1e-6)
