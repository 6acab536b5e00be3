"""A search's worker: takes trials from the study as it frees up and runs each as an ordinary petlab run.

``python -m petlab.search.worker SEARCH_DIR INDEX``, one per local process or SLURM job. Workers never wait for
each other: each asks the study for its next trial as soon as its last one ends, until the search has its
number of trials. A trial runs in a child process (``python -m petlab ... hydra.run.dir=SEARCH_DIR/NNN_...``):
a crash or a user error in it fails that trial only, and the child dies with its worker.
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import submitit
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import fail_stale_trials

from petlab.config import FIXED_KEYS_VARIABLE, RUN_ID_VARIABLE, sweep_label
from petlab.hparams import comparable, write_session
from petlab.jobs import mark_failed, run_status
from petlab.search.space import override_value, overrides, search_space
from petlab.search.study import ERROR, RUN_DIR, SURPLUS, SearchSettings, build_sampler, finished, open_study, tally

log = logging.getLogger("petlab.search")


class TrialFailed(Exception):
    """A trial's run failed: recorded as a failed trial, and the search goes on."""


class TrialLost(Exception):
    """A trial that ended without a result of its own (its run was killed, or it was one trial too many): not
    counted towards the search's number of trials."""


def sample(trial: optuna.Trial, settings: SearchSettings) -> dict[str, object]:
    """The trial's values of the search space (a retried trial gets its predecessor's)."""
    values = {}
    for key, space in search_space(settings.space).items():
        if isinstance(space, CategoricalDistribution):
            values[key] = trial.suggest_categorical(key, space.choices)
        elif isinstance(space, IntDistribution):
            values[key] = trial.suggest_int(key, space.low, space.high, step=space.step, log=space.log)
        elif isinstance(space, FloatDistribution):
            values[key] = trial.suggest_float(key, space.low, space.high, step=space.step, log=space.log)
    return values


def trial_command(settings: SearchSettings, values: dict[str, object], run_dir: Path, more: list[str]) -> list[str]:
    """The command line of a trial's run: the search's fixed overrides, the trial's values, where it writes."""
    config_dir = ["--config-dir", settings.config_dir] if settings.config_dir else []
    return [sys.executable, "-m", "petlab", *config_dir, *settings.fixed, *overrides(values),
            f"hydra.run.dir={override_value(str(run_dir))}", *more]  # fmt: skip


try:  # loaded before any fork: the child between fork and exec (with the heartbeat thread about) only calls it
    PRCTL = ctypes.CDLL("libc.so.6", use_errno=True).prctl
except OSError:  # not Linux: a trial outlives its killed worker, and is retried all the same
    PRCTL = None


def _die_with_parent() -> None:
    """In the trial's process: receive SIGKILL when the worker dies, so a killed worker leaves no orphan."""
    if PRCTL is not None:
        PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run_trial(trial: optuna.Trial, settings: SearchSettings) -> float:
    """Run one trial to its end; its value, or TrialPruned / TrialFailed / TrialLost."""
    earlier = [t for t in trial.study.get_trials(deepcopy=False) if t.number < trial.number]
    if finished(tally(earlier)) + tally(earlier)["running"] >= settings.n_trials:
        # Another worker took the last trial at the same moment: this one is not run, and not counted.
        trial.set_user_attr(SURPLUS, True)
        raise TrialLost("the search already has its number of trials")
    try:
        return _run(trial, settings)
    except (optuna.TrialPruned, TrialFailed, TrialLost):
        raise
    except Exception as error:  # the worker's own trouble (a full disk, an unreadable file): this trial fails
        trial.set_user_attr(ERROR, f"{type(error).__name__}: {error}")
        raise TrialFailed(str(error)) from error


def _run(trial: optuna.Trial, settings: SearchSettings) -> float:
    values = sample(trial, settings)
    # The folder's name shows the values to three digits (the run's config has them in full).
    short = [f"{key.rsplit('.', 1)[-1]}={f'{value:.3g}' if isinstance(value, float) else value}"
             for key, value in values.items()]  # fmt: skip
    label = sweep_label(short) or "trial"
    run_dir = Path(settings.directory) / f"{trial.number:03d}_{label}"
    run_dir.mkdir(parents=True)
    trial.set_user_attr(RUN_DIR, str(run_dir))
    log.info(f"trial {trial.number}: {' '.join(overrides(values))}")
    reporting = [f"trial.search_dir={override_value(settings.directory)}", f"trial.number={trial.number}"]
    if settings.folds < 2:
        return _run_once(trial, settings, values, run_dir, reporting)
    # Cross-validated: the value is the mean over the folds. The first fold reports to the study, so that
    # the pruner compares the trials' first folds epoch by epoch; the other folds run once it was not pruned.
    scores = []
    for fold in range(settings.folds):
        folds = [f"data.folds={settings.folds}", f"data.fold={fold}"]
        fold_dir = run_dir / f"fold-{fold}"
        fold_dir.mkdir()
        scores.append(_run_once(trial, settings, values, fold_dir, folds + (reporting if fold == 0 else [])))
    return sum(scores) / len(scores)


def _run_once(
    trial: optuna.Trial, settings: SearchSettings, values: dict[str, object], run_dir: Path, more: list[str]
) -> float:
    """Run one run of a trial: its value, or TrialPruned / TrialFailed / TrialLost."""
    # The trial is a single run of its own: it must not take the sweep's run id or fixed keys.
    environment = {k: v for k, v in os.environ.items() if k not in (RUN_ID_VARIABLE, FIXED_KEYS_VARIABLE)}
    with open(run_dir / "console.log", "w") as console:
        process = subprocess.Popen(trial_command(settings, values, run_dir, more), stdout=console,
                                   stderr=subprocess.STDOUT, env=environment, preexec_fn=_die_with_parent)  # fmt: skip
        try:
            code = process.wait()
        except BaseException:  # the worker is being stopped: so is its trial
            process.kill()
            raise
    status, error = run_status(run_dir)
    if status == "incomplete" and (code < 0 or code in (128 + signal.SIGKILL, 128 + signal.SIGTERM)):
        # Killed from outside (the job cancelled or preempted, out of memory): not the values' fault.
        mark_failed(run_dir, f"its run was killed (exit status {code}); a new trial replaces it")
        raise TrialLost(f"its run was killed (exit status {code})")
    if status == "pruned":
        raise optuna.TrialPruned(error)
    if status == "completed":
        metrics = json.loads((run_dir / "metrics.json").read_text())
        value = metrics.get(settings.metric)
        if isinstance(value, int | float) and math.isfinite(value):
            return float(value)
        if isinstance(value, int | float):
            error = f"its run recorded {settings.metric}={value}: it diverged (lower the learning rate)"
        else:
            error = f"its run recorded no {settings.metric} (optimized_metric): set it to a metric of the task"
    error = error or _last_error(run_dir / "console.log") or f"its run exited with status {code}"
    trial.set_user_attr(ERROR, error)
    mark_failed(run_dir, error)
    show_failure_in_tensorboard(run_dir, values)
    raise TrialFailed(error)


def show_failure_in_tensorboard(run_dir: Path, values: dict[str, object]) -> None:
    """List a failed trial in TensorBoard's HParams tab beside the others: its values, and status failed."""
    write_session(run_dir / "tensorboard", {"Run": run_dir.name, **comparable(values), "status": "failed"}, {})


def _last_error(console: Path) -> str:
    """The run's own last line of complaint, from what it printed."""
    lines = [line.strip() for line in console.read_text(errors="replace").splitlines() if line.strip()]
    complaints = [line for line in lines if "error" in line.lower()]
    return (complaints or lines or [""])[-1][:300]


def run_worker(search_dir: str | Path, index: int) -> dict[str, int]:
    """Take and run trials until the search has ``n_trials`` that ended (completed, pruned or failed)."""
    settings = SearchSettings.load(search_dir)
    study = open_study(settings)
    # Each worker, and each start of a resumed search, draws from a stream of its own: a restarted seeded
    # sampler would otherwise propose the values of trials already run.
    study.sampler = build_sampler(settings, settings.seed + 7919 * index + len(study.get_trials(deepcopy=False)))
    while True:
        counts = tally(study.get_trials(deepcopy=False))
        if finished(counts) >= settings.n_trials:
            return counts
        if counts["failed"] > settings.max_failure_rate * settings.n_trials:
            log.error(f"worker {index}: {counts['failed']} trials failed, more than search.max_failure_rate="
                      f"{settings.max_failure_rate} of {settings.n_trials}: stopping")  # fmt: skip
            return counts
        if finished(counts) + counts["running"] >= settings.n_trials and not counts["waiting"]:
            # The last trials are running elsewhere: wait for them, and retry them if their worker died.
            fail_stale_trials(study)
            time.sleep(min(5, settings.heartbeat_seconds))
            continue
        study.optimize(lambda trial: run_trial(trial, settings), n_trials=1, catch=(TrialFailed, TrialLost))


class SlurmWorker(submitit.helpers.Checkpointable):
    """A worker as a SLURM job: requeued when preempted or out of time, and resumed by taking trials again."""

    def __call__(self, search_dir: str, index: int) -> dict[str, int]:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
        return run_worker(search_dir, index)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    search_dir, index = sys.argv[1], int(sys.argv[2])
    counts = run_worker(search_dir, index)
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
