"""Hyperparameter searches as users start them: Optuna studies in a journal file or PostgreSQL, workers that
pull trials as they free up (local processes and SLURM jobs), pruning, killed workers and resumed searches."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from petlab.__main__ import is_search
from petlab.config import config_dir
from petlab.errors import PetlabError
from petlab.report import collect_runs
from petlab.search.space import distribution, override_value
from petlab.search.study import JOURNAL_FILE, SearchSettings, open_study, tally

TINY = [
    "data=sample", "model=cnn", "data.image_size=32", "data.batch_size=16", "data.num_workers=0",
    "trainer.limit_train_batches=2", "trainer.limit_val_batches=2", "trainer.accelerator=cpu",
    "callbacks.progress_bar=null", "callbacks.early_stopping=null", "test=false",
]  # fmt: skip
SEARCH = ["-m", "hparams_search=optuna", *TINY]


@pytest.fixture
def project(tmp_path: Path, sample_root: Path) -> Path:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "sample-pets").symlink_to(sample_root)
    return tmp_path


def environment(project: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "PETLAB_ROOT": str(project), **extra}


def search(project: Path, *args: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "petlab", *SEARCH, *args], cwd=project, capture_output=True,
                          text=True, timeout=900, env=environment(project, **extra))  # fmt: skip


def the_search(project: Path) -> Path:
    (directory,) = (project / "outputs" / "searches").iterdir()
    return directory


def study_of(directory: Path) -> optuna.Study:
    return open_study(SearchSettings.load(directory))


def test_search_spaces_read_as_hydra_sweeps_become_optuna_distributions():
    assert distribution("optimizer.lr", "tag(log, interval(1e-4, 1e-2))") == FloatDistribution(1e-4, 1e-2, log=True)
    assert distribution("task.dropout", "interval(0.0, 0.5)") == FloatDistribution(0.0, 0.5)
    assert distribution("trainer.max_epochs", "int(interval(2, 8))") == IntDistribution(2, 8)
    assert distribution("data.batch_size", "choice(16, 32)") == CategoricalDistribution([16, 32])
    assert distribution("model", "cnn,resnet34") == CategoricalDistribution(["cnn", "resnet34"])
    assert distribution("data.image_size", "range(32, 65, 16)") == IntDistribution(32, 64, step=16)
    for wrong in ("interval(0.1", "0.5", "tag(linear, interval(0, 1))", "choice([1, 2], [3])"):
        with pytest.raises(PetlabError, match=r"search\.params: task\.dropout="):
            distribution("task.dropout", wrong)
    # A trial's value goes back to its run as an override that Hydra reads as the same value.
    for value in (0.00123, 1e-7, 32, "resnet34", "a b,c", True, None):
        override = OverridesParser.create().parse_override(f"key={override_value(value)}")
        assert override.value() == value


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["search.pruner=sometimes"], "search.pruner=sometimes is not known: choose one of median, asha"),
        (["search.sampler=grid"], "search.sampler=grid is not known: choose one of tpe, random"),
        (["search.pruner=median", "search.pruner_options.warmup=2"], "search.pruner_options={'warmup': 2} do not"),
        (["optimizer.lr=interval(1e-4"], "optimizer.lr=interval(1e-4 does not parse"),
        (["optimizer.momentum_of_doom=interval(0.1, 0.9)"], "search.params names a key the config lacks"),
        (["search.workers=0"], "search.workers=0 is not valid: it must be a whole number >= 1"),
        (["search.storage=postgresql://petlab@127.0.0.1:9/petlab"], "search.storage=postgresql://petlab@127.0.0.1:9"),
        (["hydra.sweeper.n_trials=3"], "hydra.sweeper.n_trials=3 belonged to the old Optuna sweeper"),
    ],
)
def test_a_wrong_search_is_one_line_before_any_trial(project: Path, arguments: list[str], message: str, monkeypatch):
    from petlab.search.run import prepare

    monkeypatch.setenv("PETLAB_ROOT", str(project))
    with pytest.raises(PetlabError) as raised:
        prepare([*SEARCH, *arguments])
    assert message in str(raised.value) and "\n" not in str(raised.value)
    assert not (project / "outputs").exists()  # nothing was started or left behind


def test_the_same_command_finds_its_search_again_and_another_starts_anew(project: Path, monkeypatch):
    from petlab.search.run import prepare

    monkeypatch.setenv("PETLAB_ROOT", str(project))
    base = ["hparams_search=optuna", "data=sample"]
    first, _ = prepare([*base, "model=cnn,resnet34", "seed=3", "trainer.max_epochs=choice(1,2)"])
    again, _ = prepare(["-m", "trainer.max_epochs=choice(1,2)", "seed=3", *base, "model=cnn,resnet34"])
    assert again.directory == first.directory and again.study_name == Path(first.directory).name
    assert set(first.space) == {"optimizer.lr", "optimizer.weight_decay", "task.dropout", "task.label_smoothing",
                                "data.batch_size", "model", "trainer.max_epochs"}  # fmt: skip
    other, _ = prepare([*base, "model=cnn,resnet34", "seed=3", "data.batch_size=32", "search.n_trials=3"])
    assert other.directory != first.directory
    assert "data.batch_size" not in other.space and "data.batch_size=32" in other.fixed  # fixed: not searched
    assert "search." not in " ".join(other.fixed).replace("hparams_search=", "")
    # A trial composes the search file: what it sets besides search.* is the trials' budget.
    recipe, _ = prepare(["hparams_search=scratch_recipe", "data=sample"])
    assert "hparams_search=scratch_recipe" in recipe.fixed and not is_search([*recipe.fixed, "data.fold=1"])
    assert is_search(["-m", *recipe.fixed])
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        composed = compose("train", overrides=recipe.fixed)
    assert composed.trainer.max_epochs == 15 and composed.test is False
    with pytest.raises(PetlabError, match="both fixes and searches model"):
        prepare([*base, "model=cnn", "model=cnn,resnet34"])


def test_a_wrong_search_exits_2_with_one_line(project: Path):
    result = search(project, "search.workers=0")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: search.workers=0 is not valid: it must be a whole number >= 1"
    ]


@pytest.mark.slow
def test_a_trial_that_falls_behind_is_pruned_and_keeps_what_it_wrote(project: Path, tmp_path: Path):
    """A trial's run reports each validation to its study; behind every earlier trial, the median pruner stops
    it: the run ends as a run (checkpoints, metrics.json, no test), marked pruned for the report and HParams."""
    directory = tmp_path / "search"
    directory.mkdir()
    settings = SearchSettings(str(directory), "petlab", "maximize", "val/acc_best", "val/acc", n_trials=3,
                              space={"task.dropout": "interval(0.0, 0.5)"}, fixed=[], pruner="median",
                              pruner_options={"n_startup_trials": 1})  # fmt: skip
    settings.save()
    study = open_study(settings)
    study.add_trial(optuna.create_trial(value=1.0, params={"task.dropout": 0.1},
                                        distributions={"task.dropout": FloatDistribution(0.0, 0.5)},
                                        intermediate_values={1: 1.0, 2: 1.0, 3: 1.0}))  # fmt: skip
    trial = study.ask({"task.dropout": FloatDistribution(0.0, 0.5)})
    run_dir = directory / "001_trial"
    result = subprocess.run(
        [sys.executable, "-m", "petlab", *TINY, "test=true", "trainer.max_epochs=3", f"hydra.run.dir={run_dir}",
         f"trial.search_dir={directory}", f"trial.number={trial.number}"],
        cwd=project, capture_output=True, text=True, timeout=600, env=environment(project),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run_dir / "job_status.json").read_text()) == {"status": "pruned",
                                                                     "error": "pruned after epoch 1 of 3"}  # fmt: skip
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and "val/acc_best" in metrics and "test/acc" not in metrics
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    reported = study.trials[trial.number].intermediate_values
    assert list(reported) == [1] and reported[1] < 1.0  # what was reported is what the pruner judged
    runs = collect_runs([run_dir])
    assert list(runs["status"]) == ["pruned"] and runs["val/acc_best"].notna().all()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard" / "hparams"), size_guidance={"tensors": 0}).Reload()
    hparams = events.summary_metadata["_hparams_/session_start_info"].plugin_data.content
    assert b"status" in hparams and b"pruned" in hparams  # the HParams tab shows the trial's status


@pytest.mark.slow
def test_failed_trials_are_recorded_with_their_error_and_the_search_says_so(project: Path):
    result = search(project, "trainer.max_epochs=1", "search.n_trials=2", "search.max_failure_rate=1.0",
                    "seed=choice(-1, -2)")  # fmt: skip
    assert result.returncode == 2
    assert "error: 2 trial(s) failed:" in result.stderr
    assert "seed=-1 is not valid: it must be a whole number from 0 to 4294967295" in result.stderr
    directory = the_search(project)
    runs = collect_runs([directory])
    assert list(runs["status"]) == ["failed", "failed"] and runs["error"].str.contains("from 0 to").all()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for run in directory.glob("00*"):
        events = EventAccumulator(str(run / "tensorboard" / "hparams")).Reload()
        hparams = events.summary_metadata["_hparams_/session_start_info"].plugin_data.content
        assert b"failed" in hparams  # listed in the HParams tab with its status


def wait_for(condition, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.5)


@pytest.mark.slow
def test_two_workers_share_a_search_survive_a_killed_worker_and_a_killed_search(project: Path):
    """Two workers on one journal file: a worker killed with SIGKILL mid-trial loses that trial (retried with its
    values), the search as a whole killed and started again with the same command finishes; no trial is run
    twice, every trial has its own run directory, and the results, report and plots are written."""
    arguments = [*SEARCH, "trainer.max_epochs=3", "search.n_trials=5", "search.workers=2",
                 "search.heartbeat_seconds=2", "search.pruner=none"]  # fmt: skip
    command = [sys.executable, "-m", "petlab", *arguments]
    first = subprocess.Popen(command, cwd=project, env=environment(project), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
    searches = project / "outputs" / "searches"
    wait_for(lambda: searches.is_dir() and len(list(the_search(project).glob("*/.hydra"))) == 2)  # both busy
    directory = the_search(project)
    workers = subprocess.run(["pgrep", "-f", f"petlab.search.worker {directory} 0"], capture_output=True, text=True)
    os.kill(int(workers.stdout.split()[0]), signal.SIGKILL)  # worker 0, in the middle of its first trial
    wait_for(lambda: tally(study_of(directory).get_trials())["completed"] >= 2)
    os.killpg(first.pid, signal.SIGKILL)  # the whole search: its command, the other worker, its trial
    first.wait()

    second = subprocess.run(command, cwd=project, env=environment(project), capture_output=True, text=True,
                            timeout=900)  # fmt: skip
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "search: 5/5 trials ended (5 completed, 0 pruned, 0 failed), 0 running" in second.stdout
    trials = study_of(directory).get_trials()
    counts = tally(trials)
    assert counts["completed"] == 5 and counts["running"] == 0 and counts["lost"] >= 1
    retried = [t for t in trials if t.system_attrs.get("failed_trial") is not None]
    assert retried  # a lost trial ran again with its own values
    for trial in retried:
        assert trial.params == trials[trial.system_attrs["failed_trial"]].params
    completed = [t for t in trials if t.state == TrialState.COMPLETE]
    # No values were run twice to the end (a restarted seeded sampler would have repeated the first ones).
    assert len({json.dumps(t.params, sort_keys=True) for t in completed}) == 5
    run_dirs = [Path(t.user_attrs["run_dir"]) for t in trials]
    assert len(set(run_dirs)) == len(trials) and all(d.parent == directory for d in run_dirs)
    assert all((Path(t.user_attrs["run_dir"]) / "metrics.json").is_file() for t in completed)

    best = yaml.safe_load((directory / "optimization_results.yaml").read_text())
    assert best["best_value"] == max(t.value for t in completed) and best["trials"]["completed"] == 5
    assert {p.name for p in (directory / "plots").iterdir()} >= {"optimization_history.png",
                                                                "intermediate_values.png"}  # fmt: skip
    report = pd.read_csv(directory / "report.csv")
    assert (report["status"] == "completed").sum() == 5
    assert set(report["status"]) <= {"completed", "failed"}  # lost trials say why in their folders
    assert (directory / JOURNAL_FILE).is_file() and not list(directory.rglob("*.partial"))


@pytest.mark.slow
def test_a_cross_validated_search_stored_in_postgresql_with_two_workers(project: Path, postgres_url: str):
    result = search(project, "trainer.max_epochs=2", "search.n_trials=2", "search.workers=2", "search.folds=2",
                    "search.pruner=none", f"search.storage='{postgres_url}'")  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "storage postgresql://postgres@/petlab" in result.stdout
    directory = the_search(project)
    study = optuna.load_study(study_name=directory.name, storage=postgres_url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert not (directory / JOURNAL_FILE).exists()
    for trial in study.trials:  # each trial is a 2-fold cross-validation, valued by the mean of its folds
        folds = [json.loads((Path(trial.user_attrs["run_dir"]) / f"fold-{k}" / "metrics.json").read_text())
                 for k in (0, 1)]  # fmt: skip
        assert trial.value == pytest.approx(sum(f["val/acc_best"] for f in folds) / 2)
        assert list(trial.intermediate_values) == [1, 2]  # the first fold reported its epochs
    runs = collect_runs([directory])
    assert len(runs) == 4 and set(runs["data.fold"].astype(int)) == {0, 1}


@pytest.mark.slow
def test_slurm_runs_a_search_with_two_worker_jobs_and_a_plain_sweep(project: Path, slurm_cluster: dict[str, str]):
    jobs = ["search.slurm.cpus_per_task=1", "search.slurm.gpus_per_node=0", "search.slurm.mem_gb=1",
            "search.slurm.timeout_min=10"]  # fmt: skip
    result = search(project, "trainer.max_epochs=2", "search.n_trials=3", "search.workers=2",
                    "search.launcher=slurm", *jobs, **slurm_cluster)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 SLURM worker job(s) submitted" in result.stdout
    directory = the_search(project)
    assert tally(study_of(directory).get_trials())["completed"] == 3
    assert len(list((directory / "workers" / "slurm").glob("*_result.pkl"))) == 2  # both jobs took trials

    sweep = subprocess.run(
        [sys.executable, "-m", "petlab", "-m", "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=0",
         "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=10", "seed=1,2",
         "trainer.max_epochs=1", *TINY],
        cwd=project, capture_output=True, text=True, timeout=600, env=environment(project, **slurm_cluster),
    )  # fmt: skip
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    assert "sacct" not in sweep.stdout + sweep.stderr  # a cluster without accounting is not an error
    (multirun,) = (project / "outputs" / "multiruns").iterdir()
    assert list(collect_runs([multirun])["status"]) == ["completed", "completed"]
