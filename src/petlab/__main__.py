"""``python -m petlab [overrides]``: train one configuration, or a sweep with ``-m``."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from petlab.cli import exit_if_jobs_failed, user_facing
from petlab.config import config_dir, project_root, register_resolvers, share_run_id
from petlab.errors import PetlabError

register_resolvers()


def latest_checkpoint(runs_dir: Path) -> Path:
    """``last.ckpt`` of the most recently written run under ``runs_dir``."""
    candidates = sorted(runs_dir.glob("*/checkpoints/last.ckpt"), key=lambda path: path.stat().st_mtime)
    if not candidates:
        raise PetlabError(f"ckpt_path=last: no run in {runs_dir} has checkpoints/last.ckpt to resume from")
    return candidates[-1]


def resume_arguments(argv: list[str]) -> list[str]:
    """Make ``ckpt_path=last`` (or a run's checkpoint) continue that run in its own directory.

    Hydra fixes the run directory before the job starts, so the checkpoint is resolved here, from the
    command line, and ``hydra.run.dir`` is pointed at the run that holds it.
    """
    values = [arg.split("=", 1)[1] for arg in argv if arg.startswith("ckpt_path=")]
    if not values or not values[-1] or values[-1] == "null" or {"-m", "--multirun"} & set(argv):
        return argv
    log_dirs = [arg.split("=", 1)[1] for arg in argv if arg.startswith("paths.log_dir=")]
    runs_dir = Path(log_dirs[-1] if log_dirs else project_root() / "outputs") / "runs"
    checkpoint = latest_checkpoint(runs_dir) if values[-1] == "last" else Path(values[-1]).expanduser().resolve()
    if not checkpoint.is_file():
        raise PetlabError(f"ckpt_path={values[-1]} does not exist: give a checkpoint file or ckpt_path=last")
    arguments = [arg for arg in argv if not arg.startswith("ckpt_path=")] + [f"ckpt_path={checkpoint}"]
    if checkpoint.parent.name == "checkpoints" and not any(a.startswith("hydra.run.dir=") for a in argv):
        arguments.append(f"hydra.run.dir={checkpoint.parent.parent}")
    return arguments


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
@user_facing
def train_job(cfg: DictConfig) -> float | None:
    # Imported here so that `--help` and `--cfg` answer without loading torch.
    from petlab.train import train

    return train(cfg).get(cfg.get("optimized_metric"))


def main() -> None:
    try:
        sys.argv[1:] = resume_arguments(sys.argv[1:])
    except PetlabError as error:
        sys.exit(f"error: {error}")
    if {"-m", "--multirun"} & set(sys.argv[1:]) or any(a.startswith("hparams_search=") for a in sys.argv[1:]):
        share_run_id()
    train_job()
    exit_if_jobs_failed()


if __name__ == "__main__":
    main()
