"""``python -m petlab -m hparams_search=optuna [overrides]``: start (or resume) a search and follow it.

The command composes the config as a run would, checks the search (space, sampler, pruner, storage,
workers) before any trial starts, writes ``SEARCH_DIR/search.yaml``, starts the workers, prints progress,
and writes the best parameters, the report and Optuna's plots when the workers are done.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from petlab.checks import real_number, whole_number
from petlab.config import config_dir
from petlab.errors import PetlabError, first_line
from petlab.files import write_text_atomic
from petlab.report import collect_runs, write_report
from petlab.resolvers import register_resolvers
from petlab.resume import last_value, split_arguments
from petlab.search.space import is_sweep, search_space
from petlab.search.study import (
    RUN_DIR,
    SETTINGS_FILE,
    SearchSettings,
    build_pruner,
    build_sampler,
    finished,
    open_storage,
    open_study,
    tally,
)  # fmt: skip
from petlab.search.worker import SlurmWorker
from petlab.slurm import use_queue_when_no_accounting
from petlab.tasks.base import build_task

LAUNCHERS = ("local", "slurm")
OPEN_KEYS = ("search.sampler_options.", "search.pruner_options.", "search.slurm.additional_parameters.")
# What the same search may change when it is run again: how it runs, not what it searches.
HOW_IT_RUNS = ("search.n_trials", "search.workers", "search.launcher", "search.slurm", "search.heartbeat_seconds",
               "search.max_retries", "search.max_failure_rate", "hydra.")  # fmt: skip


def config_dir_of(argv: list[str]) -> tuple[str | None, list[str]]:
    """The ``--config-dir`` of the command line, and its overrides (``-m`` dropped: a search is always many runs)."""
    options, overrides = split_arguments(argv)
    user_dir, items = None, iter(options)
    for item in items:
        if item in ("--config-dir", "-cd"):
            user_dir = next(items, None)
        elif item.startswith("--config-dir="):
            user_dir = item.split("=", 1)[1]
        elif item not in ("-m", "--multirun"):
            raise PetlabError(f"{item} is not an option of a search: give overrides (key=value), -m and --config-dir")
    return user_dir, overrides


def _compose(overrides: list[str], user_dir: str | None) -> DictConfig:
    searched = [f"hydra.searchpath=[file://{Path(user_dir).resolve()}]"] if user_dir else []
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return compose(config_name="train", overrides=[*searched, *overrides])
    except HydraException as error:
        raise PetlabError(f"the search's config does not compose: {first_line(error)}") from error


def direction_of(task: DictConfig) -> str:
    """The study's direction: that of the task's monitored metric, as the task declares it."""
    return {"max": "maximize", "min": "minimize"}[build_task(task).mode]


def _first_value(space: optuna.distributions.BaseDistribution) -> Any:
    return space.choices[0] if isinstance(space, optuna.distributions.CategoricalDistribution) else space.low


def prepare(argv: list[str]) -> tuple[SearchSettings, DictConfig]:
    """The search the command line describes, checked; its directory made and its settings written."""
    register_resolvers()
    user_dir, arguments = config_dir_of(argv)
    if old := [item for item in arguments if item.startswith("hydra.sweeper.")]:
        raise PetlabError(f"{old[0]} belonged to the old Optuna sweeper: use search.n_trials, search.workers, "
                          "search.params... (see conf/hparams_search/optuna.yaml)")  # fmt: skip
    # The options are the Optuna classes' own arguments: whichever the user names is added to the empty dict.
    arguments = [f"++{item}" if item.startswith(OPEN_KEYS) else item for item in arguments]
    swept = [item for item in arguments if is_sweep(item)]
    fixed = [item for item in arguments if item not in swept]
    cfg = _compose(fixed, user_dir)
    search = cfg.get("search")
    if search is None:
        raise PetlabError("the chosen hparams_search has no search: node: start from conf/hparams_search/optuna.yaml")
    # A key the command line fixes (data.batch_size=32) is not searched: the user chose its value.
    fixed_keys = {item.lstrip("+~").split("=", 1)[0] for item in fixed}
    # A key set to null in a search file (one that builds on another) is not searched either.
    params = {str(k): str(v) for k, v in (search.get("params") or {}).items()
              if str(k) not in fixed_keys and v is not None}  # fmt: skip
    for key, value in (item.lstrip("+").split("=", 1) for item in swept):
        if key in fixed_keys:
            raise PetlabError(f"the command line both fixes and searches {key}: give {key}= once")
        params[key] = value
    if not params:
        raise PetlabError("the search space is empty: set search.params or give a sweep such as optimizer.lr="
                          "interval(1e-4,1e-2)")  # fmt: skip
    space = search_space(params)
    try:  # every searched key must exist: composing once with a value of each says so before any trial
        _compose([*fixed, *(f"{key}={_first_value(dist)}" for key, dist in space.items())], user_dir)
    except PetlabError as error:
        raise PetlabError(f"search.params names a key the config lacks or a value it refuses ({error}): search "
                          "keys of the composed config (python -m petlab --cfg job)") from error  # fmt: skip
    whole_number("search.workers", search.workers, 1)
    whole_number("search.n_trials", search.n_trials, 1)
    whole_number("search.heartbeat_seconds", search.heartbeat_seconds, 1)
    whole_number("search.max_retries", search.max_retries, 0)
    folds = whole_number("search.folds", search.get("folds", 1), 1)
    if folds > 1 and fixed_keys & {"data.folds", "data.fold"}:
        raise PetlabError("search.folds cross-validates each trial itself: leave data.folds and data.fold out")
    real_number("search.max_failure_rate", search.max_failure_rate, 0.0)
    if search.launcher not in LAUNCHERS:
        raise PetlabError(f"search.launcher={search.launcher} is not known: choose local or slurm")
    # A trial composes the search file too (hparams_search=NAME): what it sets besides search.* (epochs,
    # test=false, ...) is the trials' budget. It runs as a plain run: see petlab.__main__.is_search.
    trial_overrides = [item for item in fixed if not item.lstrip("+~").startswith(("search.", "hydra.sweep."))]
    directory = _directory(cfg, arguments, trial_overrides, params)
    settings = SearchSettings(
        # Searches that share a database server keep apart by their directories' names.
        directory=str(directory), study_name=str(search.study_name or directory.name), direction=direction_of(cfg.task),
        metric=str(cfg.optimized_metric), monitor=str(cfg.task.monitor), n_trials=int(search.n_trials),
        space=params, fixed=trial_overrides, config_dir=str(Path(user_dir).resolve()) if user_dir else None,
        storage=search.storage, sampler=str(search.sampler), pruner=str(search.pruner),
        sampler_options=OmegaConf.to_container(search.sampler_options), seed=int(cfg.seed or 0),
        pruner_options=OmegaConf.to_container(search.pruner_options),
        heartbeat_seconds=int(search.heartbeat_seconds), max_retries=int(search.max_retries),
        max_failure_rate=float(search.max_failure_rate), folds=folds,
    )  # fmt: skip
    build_sampler(settings, settings.seed), build_pruner(settings)
    if (directory / SETTINGS_FILE).is_file():
        before = SearchSettings.load(directory)
        if (before.space, sorted(before.fixed)) != (settings.space, sorted(settings.fixed)):
            raise PetlabError(f"{directory} holds a search of other values or overrides ({before.space}, "
                              f"{before.fixed}): give another search.name or hydra.sweep.dir")  # fmt: skip
    if settings.storage is not None:
        open_storage(settings)  # whether the server answers, before anything is written
    directory.mkdir(parents=True, exist_ok=True)
    open_study(settings)
    settings.save()
    return settings, search


def _directory(cfg: DictConfig, arguments: list[str], fixed: list[str], params: dict[str, str]) -> Path:
    """``hydra.sweep.dir`` if the command line gives one; else outputs/searches/NAME, NAME being search.name or
    made from what defines the search, so that the same command resumes it and another starts anew."""
    if given := last_value(arguments, "hydra.sweep.dir"):
        return Path(given).expanduser().resolve()
    name = cfg.search.name
    if name is None:
        defining = sorted(item for item in arguments if not item.lstrip("+~").startswith(HOW_IT_RUNS))
        digest = hashlib.sha1(json.dumps([defining, params, sorted(fixed)], sort_keys=True).encode()).hexdigest()[:8]
        name = f"{cfg.task.name}_{cfg.model.backbone.name}_{digest}"
    return Path(OmegaConf.select(cfg, "paths.log_dir")) / "searches" / str(name)


def start_workers(settings: SearchSettings, search: DictConfig) -> list[Any]:
    """The workers, as local processes or SLURM jobs; each logs to SEARCH_DIR/workers/."""
    logs = Path(settings.directory) / "workers"
    logs.mkdir(exist_ok=True)
    if search.launcher == "slurm":
        import submitit  # the sweep extra's, only needed here

        use_queue_when_no_accounting()
        executor = submitit.AutoExecutor(folder=logs / "slurm", cluster="slurm")
        slurm = OmegaConf.to_container(search.slurm, resolve=True)
        executor.update_parameters(
            name=f"petlab-search-{Path(settings.directory).name}", timeout_min=slurm["timeout_min"],
            slurm_partition=slurm["partition"], cpus_per_task=slurm["cpus_per_task"],
            gpus_per_node=slurm["gpus_per_node"], mem_gb=slurm["mem_gb"],
            slurm_additional_parameters=slurm.get("additional_parameters") or {},
        )  # fmt: skip
        try:
            with executor.batch():
                jobs = [executor.submit(SlurmWorker(), settings.directory, index) for index in range(search.workers)]
        except Exception as error:  # sbatch's refusal (an unknown partition, resources the nodes lack)
            raise PetlabError(f"SLURM refused the worker jobs ({first_line(error)}): check search.slurm.*") from error
        print(f"search: {len(jobs)} SLURM worker job(s) submitted: {', '.join(job.job_id for job in jobs)}", flush=True)
        return jobs
    processes = []
    for index in range(search.workers):
        with open(logs / f"worker-{index}.log", "a") as output:
            # A session of its own: Ctrl-C stops the search here, which kills the workers (their trials are then
            # retried by the next start), rather than interrupting each worker's trial as a failure.
            processes.append(subprocess.Popen([sys.executable, "-m", "petlab.search.worker", settings.directory,
                                               str(index)], stdout=output, stderr=subprocess.STDOUT,
                                              start_new_session=True))  # fmt: skip
    return processes


def _running(worker: Any) -> bool:
    return worker.poll() is None if isinstance(worker, subprocess.Popen) else not worker.done()


def _stop(worker: Any) -> None:
    if isinstance(worker, subprocess.Popen):
        worker.kill()  # its trial dies with it, and is retried when the search starts again
        worker.wait()
    else:
        worker.cancel(check=False)


def follow(settings: SearchSettings, workers: list[Any], poll_seconds: float = 2.0) -> optuna.Study:
    """Print progress as trials end, keep the results file and the report current, until the workers stop."""
    study, shown = open_study(settings), None
    while True:
        alive = [worker for worker in workers if _running(worker)]
        trials = study.get_trials(deepcopy=False)
        line = progress_line(settings, trials)
        if line != shown:
            print(line, flush=True)
            shown = line
            write_results(settings, study)
        if not alive:
            return study
        time.sleep(poll_seconds)


def progress_line(settings: SearchSettings, trials: list[optuna.trial.FrozenTrial]) -> str:
    counts = tally(trials)
    line = (f"search: {finished(counts)}/{settings.n_trials} trials ended ({counts['completed']} completed, "
            f"{counts['pruned']} pruned, {counts['failed']} failed), {counts['running']} running")  # fmt: skip
    if counts["lost"]:
        line += f", {counts['lost']} lost with their worker (retried or replaced)"
    if best := _best(trials, settings.direction):
        line += f"; best {settings.metric} {best.value:.4f} (trial {best.number})"
    return line


def _best(trials: list[optuna.trial.FrozenTrial], direction: str) -> optuna.trial.FrozenTrial | None:
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]
    pick = max if direction == "maximize" else min
    return pick(done, key=lambda t: t.value) if done else None


def write_results(settings: SearchSettings, study: optuna.Study) -> None:
    """SEARCH_DIR/optimization_results.yaml (the best trial and the tally) and report.{csv,md,png}."""
    trials = study.get_trials(deepcopy=False)
    best = _best(trials, settings.direction)
    results = {"name": settings.study_name, "metric": settings.metric, "direction": settings.direction,
               "trials": tally(trials)}  # fmt: skip
    if best is not None:
        results.update(best_value=best.value, best_params=best.params, best_trial=best.number,
                       best_run=best.user_attrs.get(RUN_DIR))  # fmt: skip
    directory = Path(settings.directory)
    write_text_atomic(directory / "optimization_results.yaml", yaml.safe_dump(results, sort_keys=False))
    with contextlib.suppress(PetlabError):  # no trial has written its config yet
        write_report(collect_runs([directory]), directory, None)


PLOTS = {
    "optimization_history": "plot_optimization_history", "intermediate_values": "plot_intermediate_values",
    "param_importances": "plot_param_importances", "parallel_coordinate": "plot_parallel_coordinate",
}  # fmt: skip


def write_plots(study: optuna.Study, directory: Path) -> list[str]:
    """Optuna's plots as PNGs in SEARCH_DIR/plots/; returns what could not be drawn, and why."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    (directory / "plots").mkdir(exist_ok=True)
    missing = []
    for name, function in PLOTS.items():
        try:
            with warnings.catch_warnings():  # matplotlib's on a parameter that took one value only
                warnings.simplefilter("ignore", UserWarning)
                axes = getattr(optuna_plots, function)(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as error:  # e.g. importances of fewer than 2 trials
            missing.append(f"{name} ({first_line(error)})")
            continue
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).get_figure()
        figure.set_size_inches(9, 5.5)
        figure.tight_layout()
        figure.savefig(directory / "plots" / f"{name}.png", dpi=100)
        plt.close(figure)
    return missing


def main(argv: list[str]) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        settings, search = prepare(argv)
    except PetlabError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"search: {settings.directory} ({settings.n_trials} trials, {search.workers} {search.launcher} worker(s), "
          f"storage {settings.storage_shown}, {settings.sampler} sampler, {settings.pruner} pruner)")  # fmt: skip
    try:
        workers = start_workers(settings, search)
    except PetlabError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    try:
        study = follow(settings, workers)
    except KeyboardInterrupt:
        for worker in workers:
            _stop(worker)
        print("search interrupted: run the same command again to resume it", file=sys.stderr)
        sys.exit(130)
    write_results(settings, study)
    missing = write_plots(study, Path(settings.directory))
    trials = study.get_trials(deepcopy=False)
    counts = tally(trials)
    for name in missing:
        print(f"note: plot {name} not drawn")
    print(f"results: {settings.directory}/optimization_results.yaml, report.md, plots/")
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL and t.user_attrs.get("error")]
    if failed:
        print(f"error: {len(failed)} trial(s) failed:", file=sys.stderr)
        for trial in failed:
            print(f"  trial {trial.number} ({trial.user_attrs.get(RUN_DIR)}): {trial.user_attrs['error']}",
                  file=sys.stderr)  # fmt: skip
    if failed or finished(counts) < settings.n_trials:
        if finished(counts) < settings.n_trials:
            print(f"error: the search stopped at {finished(counts)} of {settings.n_trials} trials: see "
                  f"{settings.directory}/workers/", file=sys.stderr)  # fmt: skip
        sys.exit(2)
