"""What every ``python -m petlab...`` entry point shares: one-line errors for user mistakes."""

from __future__ import annotations

import functools
import logging
import os
import shutil
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from hydra.core.hydra_config import HydraConfig
from hydra.errors import (
    CompactHydraException,
    ConfigCompositionException,
    MissingConfigException,
    OverrideParseException,
    SearchPathException,
)
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from petlab.errors import PetlabError, user_error
from petlab.jobs import mark_failed
from petlab.resume import RECORD_PREFIX

log = logging.getLogger("petlab")
Result = TypeVar("Result")
# User errors of the jobs of a multirun run in this process, reported when the sweep ends.
failed_jobs: list[str] = []


# Lightning's start-up chatter: kept in the run's log file, left off the console.
CHATTER = ("GPU available", "TPU available", "HPU available", "Trainer already configured",
           "Loading `train_dataloader`", "`Trainer.fit` stopped", "Loaded model weights", "Seed set to",
           "Using bfloat16 Automatic Mixed Precision", "Using 16bit Automatic Mixed Precision",
           "Restoring states from the checkpoint path", "Restored all states from the checkpoint")  # fmt: skip


def console_filter(record: logging.LogRecord) -> bool:
    """Whether a log record reaches the console: not library chatter (it still reaches the log file)."""
    if record.name.startswith("tensorboard") and record.levelno < logging.WARNING:
        return False  # the event-file reader's "Directory watcher advancing" lines
    message = record.getMessage()
    if "litlogger" in message or "litmodels" in message:
        return False  # advertisements, not information
    return not (record.name.startswith("lightning") and record.levelno == logging.INFO and message.startswith(CHATTER))


def quiet_console() -> None:
    """One console line per message, without library noise: the data report, progress, metrics and results.

    Lightning and torchmetrics add console handlers of their own when imported, which printed every line
    twice beside Hydra's; they are imported here first so that removing those handlers sticks.
    """
    import lightning.pytorch  # noqa: F401
    import torchmetrics  # noqa: F401

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "torchmetrics"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler and console_filter not in handler.filters:
            handler.addFilter(console_filter)
    # Nothing a user can act on: Lightning's own use of a torch API that torch deprecated, and its model
    # summary sizing weights in bits under mixed precision (weights stay fp32).
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)")
    warnings.filterwarnings("ignore", message="Precision .* is not supported by the model summary")
    # Lightning guessing at a SLURM job on a machine that merely has srun (petlab's SLURM launchers set up
    # their jobs themselves), and at a logging interval longer than a small dataset's epoch (logged at its end).
    warnings.filterwarnings("ignore", message="The `srun` command is available on your system but is not used")
    warnings.filterwarnings("ignore", message="The number of training batches .* is smaller than the logging interval")


def plugins(cfg: DictConfig) -> list[str]:
    """The packages (``plugins=[...]``) whose task and target classes a checkpoint may name, besides petlab's."""
    value = cfg.get("plugins") or []
    names = [value] if isinstance(value, str) else list(value)
    if not all(isinstance(name, str) and name.isidentifier() for name in names):
        raise PetlabError(f"plugins={names} must name Python packages, e.g. plugins=[my_tasks]")
    return names


def require(cfg: DictConfig, *keys: str) -> None:
    for key in keys:
        if OmegaConf.is_missing(cfg, key):
            raise PetlabError(f"{key} is required: add {key}=... to the command line")


def discard_failed_start(problem: str) -> None:
    """Leave no trace of a single run that failed before it trained, or mark the run failed.

    A run that stopped on a user error before writing anything of its own (Hydra's ``.hydra/`` and the log
    are all there is) is removed; a failed resume removes only its own record (``.hydra/resume-ID``). A run
    that wrote more gets a ``job_status.json`` that says it failed, which ``petlab.report`` shows.
    """
    hydra = HydraConfig.get()
    output_dir = Path(hydra.runtime.output_dir)
    record = output_dir / str(hydra.output_subdir)
    if not hydra.output_subdir or not (record / "config.yaml").is_file():
        return
    started = (record / "config.yaml").stat().st_mtime  # Hydra wrote it as the job started
    log_file = output_dir / f"{hydra.job.name}.log"
    written = [path for path in output_dir.rglob("*") if path.is_file() and path != log_file
               and ".hydra" not in path.relative_to(output_dir).parts and path.stat().st_mtime >= started]  # fmt: skip
    if written:
        mark_failed(output_dir, problem)
    elif record.parent.name == ".hydra" and record.name.startswith(RECORD_PREFIX):  # a resume's own record
        shutil.rmtree(record)
    elif record == output_dir / ".hydra" and {path.name for path in output_dir.iterdir()} <= {".hydra", log_file.name}:
        shutil.rmtree(record)
        log_file.unlink(missing_ok=True)
        output_dir.rmdir()  # only ever empty by now: never removes anything else


def user_facing(job: Callable[[DictConfig], Result]) -> Callable[[DictConfig], Result]:
    """Run a Hydra job so that a PetlabError prints one line and exits 2 instead of a traceback.

    In a multirun the job is marked failed (job_status.json, read by petlab.report) and the sweep goes on;
    :func:`exit_if_jobs_failed` then ends the sweep with status 2.
    """

    @functools.wraps(job)
    def wrapper(cfg: DictConfig) -> Any:
        quiet_console()
        raising = os.environ.get(FULL_ERROR)
        if FULL_ERROR in users_full_error:  # the job, and the processes it starts, see the user's own setting
            set_full_error(users_full_error[FULL_ERROR])
        try:
            return job(cfg)
        except BrokenPipeError:  # the reader of the output went away (| head): stop as a shell command does
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
            raise SystemExit(141) from None
        except Exception as error:
            problem = user_error(error)
            if problem is None:
                raise
            log.error(f"error: {problem}")
            if not logging.getLogger().hasHandlers() or log.disabled:  # commands that switch logging off
                print(f"error: {problem}", file=sys.stderr)
            trial = (cfg.get("trial") or {}).get("number") is not None  # a search's worker reads why it failed
            if HydraConfig.get().mode == RunMode.MULTIRUN or trial:
                output_dir = Path(HydraConfig.get().runtime.output_dir)
                mark_failed(output_dir, str(problem))
                if trial:
                    raise SystemExit(2) from None
                failed_jobs.append(f"job {HydraConfig.get().job.num} ({output_dir}): {problem}")
                return None
            discard_failed_start(str(problem))
            raise SystemExit(2) from None
        finally:
            set_full_error(raising)

    return wrapper


FULL_ERROR = "HYDRA_FULL_ERROR"
# The user's HYDRA_FULL_ERROR (None: unset) while an entry point of one_line_config_errors runs.
users_full_error: dict[str, str | None] = {}


def set_full_error(value: str | None) -> None:
    """Set HYDRA_FULL_ERROR to ``value``, or unset it for None."""
    if value is None:
        os.environ.pop(FULL_ERROR, None)
    else:
        os.environ[FULL_ERROR] = value


def config_error(error: CompactHydraException) -> str:
    """Hydra's message for a config it could not compose, in one line: for an unknown option of a config
    group, the options there are (Hydra's own list also shows the shared parts, named _*)."""
    if isinstance(error, MissingConfigException) and error.options is not None and error.missing_cfg_file:
        group, _, option = error.missing_cfg_file.rpartition("/")
        options = ", ".join(name for name in error.options if not name.startswith("_"))
        return (f"{group}={option} is not a config of {group}: choose one of {options} (a config of your own: "
                f"--config-dir DIR, the folder of its {group}/NAME.yaml)")  # fmt: skip
    cause = str(error.__cause__) if isinstance(error.__cause__, OmegaConfBaseException) else ""
    lines = [line.strip().rstrip(".") for line in f"{error}\n{cause}".splitlines()]
    details = ("full_key:", "object_type=", "reference_type=", "Set the environment variable")
    said = ". ".join(line for line in lines if line and not line.startswith(details))
    return f"{error.override}: {said}" if isinstance(error, OverrideParseException) else said


def one_line_config_errors(entry: Callable[..., Result]) -> Callable[..., Result]:
    """Run a ``@hydra.main`` entry point so that a config Hydra cannot compose (an unknown option, a key that
    is not there, an override it cannot parse) prints one line and exits 2, instead of Hydra's listing of
    options and search path. With HYDRA_FULL_ERROR set by the user, Hydra reports as it does."""

    @functools.wraps(entry)
    def wrapper(*args: Any, **kwargs: Any) -> Result:
        asked = os.environ.get(FULL_ERROR)
        if asked == "1":
            return entry(*args, **kwargs)
        users_full_error[FULL_ERROR] = asked
        set_full_error("1")  # Hydra raises its errors instead of printing them (jobs run with the user's setting)
        try:
            return entry(*args, **kwargs)
        except (ConfigCompositionException, OverrideParseException, SearchPathException) as error:
            print(f"error: {config_error(error)}", file=sys.stderr)
            raise SystemExit(2) from None
        finally:
            users_full_error.clear()
            set_full_error(asked)

    return wrapper


def exit_if_jobs_failed() -> None:
    """After a multirun: list the jobs that failed on a user error and exit 2 if there were any."""
    if failed_jobs:
        print(f"error: {len(failed_jobs)} job(s) of the sweep failed:", file=sys.stderr)
        for line in failed_jobs:
            print(f"  {line}", file=sys.stderr)
        sys.exit(2)
