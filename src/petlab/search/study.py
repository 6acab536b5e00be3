"""A search's settings (``SEARCH_DIR/search.yaml``) and the Optuna study they open: storage, sampler, pruner.

The default storage is Optuna's journal file in the search directory, which several processes (and machines
sharing the directory) may write at once; any SQLAlchemy URL (PostgreSQL, MySQL, SQLite) is the other option.
Both keep a heartbeat of each running trial, so that a trial whose worker died (``kill -9``, a lost node) is
marked failed and retried instead of staying RUNNING forever.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.pruners import BasePruner, HyperbandPruner, MedianPruner, NopPruner, SuccessiveHalvingPruner
from optuna.samplers import BaseSampler, GPSampler, QMCSampler, RandomSampler, TPESampler
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from petlab.errors import PetlabError, first_line
from petlab.files import write_text_atomic
from petlab.jobs import mark_failed

# Optuna marks the heartbeat, the journal storage's locks and its matplotlib plots experimental: a warning
# on every use that a user can do nothing about.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

SETTINGS_FILE = "search.yaml"
JOURNAL_FILE = "optuna.journal"
HEARTBEAT = "petlab:heartbeat"
ERROR = "error"  # a trial's user attribute: why its run failed (set by the worker that ran it)
SURPLUS = "surplus"  # a trial's user attribute: started when the search already had its number of trials
RUN_DIR = "run_dir"  # a trial's user attribute: its run directory

SAMPLERS: dict[str, type[BaseSampler]] = {"tpe": TPESampler, "random": RandomSampler, "qmc": QMCSampler,
                                          "gp": GPSampler}  # fmt: skip
PRUNERS: dict[str, type[BasePruner]] = {"median": MedianPruner, "asha": SuccessiveHalvingPruner,
                                        "hyperband": HyperbandPruner, "none": NopPruner}  # fmt: skip


@dataclass
class SearchSettings:
    """What every worker of a search needs, written once by the command that starts it."""

    directory: str
    study_name: str
    direction: str  # maximize | minimize
    metric: str  # what a trial's run returns, optimised (optimized_metric: the monitored metric's best)
    monitor: str  # what a trial reports after each validation, pruned on (task.monitor)
    n_trials: int
    space: dict[str, str]  # config key -> sweep expression
    fixed: list[str]  # the overrides every trial's run gets
    config_dir: str | None = None  # a --config-dir of the user's
    storage: str | None = None  # None: the journal file in the search directory
    sampler: str = "tpe"
    sampler_options: dict[str, Any] = field(default_factory=dict)
    pruner: str = "median"
    pruner_options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    heartbeat_seconds: int = 30
    max_retries: int = 2
    max_failure_rate: float = 0.5
    folds: int = 1  # >1: each trial is a cross-validation of that many folds, scored by their mean

    def save(self) -> None:
        path = Path(self.directory) / SETTINGS_FILE
        write_text_atomic(path, yaml.safe_dump(asdict(self), sort_keys=False))
        path.chmod(0o600)  # the storage URL may hold a database password

    @classmethod
    def load(cls, directory: str | Path) -> SearchSettings:
        return cls(**yaml.safe_load((Path(directory) / SETTINGS_FILE).read_text()))

    @property
    def storage_shown(self) -> str:
        """The storage for messages, without a password."""
        if self.storage is None:
            return str(Path(self.directory) / JOURNAL_FILE)
        try:
            from sqlalchemy.engine import make_url  # with Optuna's RDB storage

            return make_url(self.storage).render_as_string(hide_password=True)
        except Exception:  # not a URL: shown as given, it is what the user typed
            return self.storage


class JournalWithHeartbeat(JournalStorage, optuna.storages._heartbeat.BaseHeartbeat):
    """Optuna's journal file storage with the heartbeat its RDB storage has: the worker running a trial records
    the time every ``interval`` seconds; a RUNNING trial silent for ``grace`` seconds is stale."""

    def __init__(self, path: Path, interval: int, callback: RetryLostTrial | None) -> None:
        super().__init__(JournalFileBackend(str(path)))
        self.interval, self.grace, self.callback = interval, 2 * interval, callback

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, HEARTBEAT, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        running = self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        # A retried trial inherits its predecessor's heartbeat: its own start counts too.
        last = {t._trial_id: max(t.system_attrs.get(HEARTBEAT, 0.0), t.datetime_start.timestamp()) for t in running}
        return [trial_id for trial_id, seen in last.items() if now - seen > self.grace]

    def get_heartbeat_interval(self) -> int:
        return self.interval

    def get_heartbeat_stale_trial_callback(self) -> RetryLostTrial | None:
        return self.callback


class RetryLostTrial:
    """Retry a trial whose worker died: its values again, as a new trial, up to ``max_retry`` times; and say so in
    its run directory. (Optuna's RetryHeartbeatStaleTrialCallback also copies the trial's system attributes,
    among them a pruner's records of the rungs it passed, which the retry has yet to pass.)"""

    def __init__(self, max_retry: int) -> None:
        self.max_retry = max_retry

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        history = [*trial.system_attrs.get("retry_history", []), trial.number]
        retried = len(history) <= self.max_retry
        run_dir = trial.user_attrs.get(RUN_DIR)
        if run_dir and Path(run_dir).is_dir() and not (Path(run_dir) / "metrics.json").is_file():
            then = "the trial is retried" if retried else "retried too often: a new trial replaces it"
            mark_failed(Path(run_dir), f"its worker stopped (killed, or its node was lost); {then}")
        if retried:
            first = trial.system_attrs.get("failed_trial", trial.number)
            study.add_trial(optuna.create_trial(
                state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
                system_attrs={"failed_trial": first, "retry_history": history},
            ))  # fmt: skip


def open_storage(settings: SearchSettings) -> BaseStorage:
    """The search's storage, with heartbeats and the retry of lost trials; a PetlabError if it cannot be opened."""
    retry = RetryLostTrial(max_retry=settings.max_retries)
    if settings.storage is None:
        return JournalWithHeartbeat(Path(settings.directory) / JOURNAL_FILE, settings.heartbeat_seconds, retry)
    try:
        return RDBStorage(
            settings.storage, heartbeat_interval=settings.heartbeat_seconds, heartbeat_stale_trial_callback=retry,
            engine_kwargs=_engine_options(settings.storage),
        )  # fmt: skip
    except Exception as error:  # SQLAlchemy's errors (a bad URL, a server that does not answer, no driver)
        raise PetlabError(f"search.storage={settings.storage_shown} cannot be opened ({first_line(error)}): start "
                          "the database server or correct the URL (null keeps the search in a journal file in its "
                          "directory)") from error  # fmt: skip


def _engine_options(url: str) -> dict[str, Any]:
    # A server that does not answer should fail the check in seconds, not after the driver's long default.
    return {"connect_args": {"connect_timeout": 10}} if url.startswith("postgresql") else {}


def build_sampler(settings: SearchSettings, seed: int) -> BaseSampler:
    """The configured sampler, seeded with ``seed``; a PetlabError for an unknown name or option."""
    return _build("sampler", settings.sampler, SAMPLERS, {"seed": seed, **settings.sampler_options})


def build_pruner(settings: SearchSettings) -> BasePruner:
    """The configured pruner; a PetlabError for an unknown name or option."""
    return _build("pruner", settings.pruner, PRUNERS, dict(settings.pruner_options))


def _build(kind: str, name: str, known: dict[str, type], options: dict[str, Any]) -> Any:
    if name not in known:
        raise PetlabError(f"search.{kind}={name} is not known: choose one of {', '.join(known)}")
    try:
        return known[name](**options)
    except (TypeError, ValueError) as error:
        raise PetlabError(f"search.{kind}_options={options} do not suit search.{kind}={name} "
                          f"({first_line(error)}): see optuna.{kind}s.{known[name].__name__}") from error  # fmt: skip


def open_study(settings: SearchSettings, sampler: BaseSampler | None = None) -> optuna.Study:
    """The search's study (created on first use) with its pruner, and ``sampler`` where trials are drawn."""
    return optuna.create_study(
        storage=open_storage(settings), study_name=settings.study_name, direction=settings.direction,
        sampler=sampler or RandomSampler(), pruner=build_pruner(settings), load_if_exists=True,
    )  # fmt: skip


def lost(trial: FrozenTrial) -> bool:
    """A trial failed because its worker stopped (no error recorded): retried or replaced, not counted."""
    return trial.state == TrialState.FAIL and not trial.user_attrs.get(ERROR)


def tally(trials: list[FrozenTrial]) -> dict[str, int]:
    """How many trials are completed, pruned, failed (their run failed), running, waiting and lost."""
    counts = dict.fromkeys(("completed", "pruned", "failed", "running", "waiting", "lost"), 0)
    names = {TrialState.COMPLETE: "completed", TrialState.PRUNED: "pruned", TrialState.RUNNING: "running",
             TrialState.WAITING: "waiting"}  # fmt: skip
    for trial in trials:
        if trial.user_attrs.get(SURPLUS):
            continue
        counts["lost" if lost(trial) else names.get(trial.state, "failed")] += 1
    return counts


def finished(counts: dict[str, int]) -> int:
    """The trials that count towards ``n_trials``: those that ran to an end of their own."""
    return counts["completed"] + counts["pruned"] + counts["failed"]
