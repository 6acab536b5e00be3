"""A Hydra callback that keeps every job's status and the sweep's summary up to date."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from petlab.jobs import mark_failed

log = logging.getLogger(__name__)


class SweepSummary(Callback):
    """After each job: record its status; in a multirun, rewrite SWEEP_DIR/report.{csv,md,png}.

    Hydra's sweepers stop at the end of a batch in which a job failed, before ``on_multirun_end``, so the
    summary is rebuilt after every job: it is always there and says which jobs failed.
    """

    def __init__(self, metric: str | None = None) -> None:
        self.metric = metric  # None: what the runs' task monitors (see petlab.report.rankings)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        output_dir = Path(config.hydra.runtime.output_dir)
        if job_return.status == JobStatus.FAILED:
            error = job_return._return_value
            mark_failed(output_dir, f"{type(error).__name__}: {error}".splitlines()[0])
        if config.hydra.mode and str(config.hydra.mode).endswith("MULTIRUN"):
            self._summarise(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._summarise(Path(config.hydra.sweep.dir))

    def _summarise(self, sweep_dir: Path) -> None:
        # Imported here: Hydra loads this callback for every run, and only a sweep's end needs the report.
        from petlab.errors import PetlabError
        from petlab.report import collect_runs, write_report

        try:
            runs = collect_runs([sweep_dir])
            write_report(runs, sweep_dir, self.metric)
        except PetlabError as error:  # e.g. the first job failed before writing its config
            log.warning(f"sweep summary not written: {error}")
