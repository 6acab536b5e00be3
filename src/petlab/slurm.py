"""Job states for submitit on a SLURM cluster that keeps no accounting database.

submitit asks ``sacct`` for the state of its jobs. Where the cluster has no accounting storage (a single
machine, a small lab cluster), every poll fails with a warning, printed three times by the loggers of
submitit and Hydra, and a job that died without a result file is never seen to end. Where ``sacct`` does
not answer, the watcher below reads the queue (``squeue``) instead: a job that left the queue has ended.
"""

from __future__ import annotations

import getpass
import subprocess
from functools import cache
from typing import Any

SACCT_FIELDS = "JobID|State|NodeList"


@cache
def accounting_answers() -> bool:
    """Whether ``sacct`` works on this cluster (it exits 1 when accounting storage is disabled)."""
    try:
        return subprocess.run(["sacct", "-n", "-X", "-j", "1"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def use_queue_when_no_accounting() -> None:
    """Give submitit's SLURM jobs a watcher that falls back to ``squeue``; a no-op without submitit."""
    try:
        from submitit.slurm import slurm
    except ImportError:  # the sweep extra is not installed: no SLURM launcher either
        return

    class QueueWatcher(slurm.SlurmInfoWatcher):
        def _make_command(self) -> list[str] | None:
            command = super()._make_command()
            if command is None or accounting_answers():
                return command
            self._asked = self._registered - self._finished
            # All of this user's jobs: asking for a job that has left the queue by id is an error.
            return ["squeue", "-h", "-u", getpass.getuser(), "-o", "%i|%T|%N"]

        def read_info(self, string: bytes | str) -> dict[str, dict[str, Any]]:
            if accounting_answers():
                return super().read_info(string)
            text = string.decode() if isinstance(string, bytes) else string
            queued = super().read_info(f"{SACCT_FIELDS}\n{text}")
            # Whatever else the queue says (configuring, suspended, held), a job still in it has not ended.
            queued = {job: {**info, "State": "PENDING" if info["State"] == "PENDING" else "RUNNING"}
                      for job, info in queued.items()}  # fmt: skip
            # Whether it succeeded is what its result file says.
            ended = {job: {"JobID": job, "State": "ENDED"} for job in getattr(self, "_asked", ()) - set(queued)}
            return {**queued, **ended}

    # submitit's SLURM jobs share one watcher, a class attribute: the place it offers for another.
    if type(slurm.SlurmJob.watcher).__name__ != QueueWatcher.__name__:
        slurm.SlurmJob.watcher = QueueWatcher(delay_s=600)
