"""What every ``python -m petlab...`` entry point shares: one-line errors for user mistakes."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from petlab.errors import PetlabError
from petlab.sweep import mark_failed

log = logging.getLogger("petlab")
Result = TypeVar("Result")
# User errors of the jobs of a multirun run in this process, reported when the sweep ends.
failed_jobs: list[str] = []


def user_error(error: BaseException | None) -> PetlabError | None:
    """The PetlabError behind ``error`` (Hydra wraps errors raised while instantiating), if there is one."""
    while error is not None:
        if isinstance(error, PetlabError):
            return error
        error = error.__cause__ or error.__context__
    return None


def route_lightning_logs_through_hydra() -> None:
    """Lightning adds its own console handler; Hydra's root handlers (console and run log) suffice."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).handlers.clear()
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "litlogger" not in record.getMessage() and "litmodels" not in record.getMessage()
    )  # advertisements, not information


def require(cfg: DictConfig, *keys: str) -> None:
    for key in keys:
        if OmegaConf.is_missing(cfg, key):
            raise PetlabError(f"{key} is required: add {key}=... to the command line")


def user_facing(job: Callable[[DictConfig], Result]) -> Callable[[DictConfig], Result]:
    """Run a Hydra job so that a PetlabError prints one line and exits 2 instead of a traceback.

    In a multirun the job is marked failed (job_status.json, read by petlab.report) and the sweep goes on;
    :func:`exit_if_jobs_failed` then ends the sweep with status 2.
    """

    @functools.wraps(job)
    def wrapper(cfg: DictConfig) -> Any:
        route_lightning_logs_through_hydra()
        try:
            return job(cfg)
        except Exception as error:
            problem = user_error(error)
            if problem is None:
                raise
            log.error(f"error: {problem}")
            if not logging.getLogger().hasHandlers() or log.disabled:  # commands that switch logging off
                print(f"error: {problem}", file=sys.stderr)
            if HydraConfig.get().mode == RunMode.MULTIRUN:
                output_dir = Path(HydraConfig.get().runtime.output_dir)
                mark_failed(output_dir, str(problem))
                failed_jobs.append(f"job {HydraConfig.get().job.num} ({output_dir}): {problem}")
                return None
            raise SystemExit(2) from None

    return wrapper


def exit_if_jobs_failed() -> None:
    """After a multirun: list the jobs that failed on a user error and exit 2 if there were any."""
    if failed_jobs:
        print(f"error: {len(failed_jobs)} job(s) of the sweep failed:", file=sys.stderr)
        for line in failed_jobs:
            print(f"  {line}", file=sys.stderr)
        sys.exit(2)
