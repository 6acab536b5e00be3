"""Where petlab's configs and files live, and how runs and sweep jobs are named."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

CHECKOUT_DIR = Path(__file__).resolve().parents[2]  # src/petlab/config.py -> the checkout


def project_root() -> Path:
    """Where data/, outputs/ and .cache/ live: PETLAB_ROOT if set, else the petlab checkout."""
    if os.environ.get("PETLAB_ROOT"):
        return Path(os.environ["PETLAB_ROOT"]).expanduser().resolve()
    return CHECKOUT_DIR if (CHECKOUT_DIR / "conf").is_dir() else Path.cwd()


def config_dir() -> Path:
    """PETLAB_CONFIG_DIR if set, else the checkout's ``conf/``."""
    return Path(os.environ.get("PETLAB_CONFIG_DIR") or CHECKOUT_DIR / "conf").resolve()


def config_options(group: str, extra_dirs: Sequence[Path] = ()) -> list[str]:
    """The options of a config group (``model`` -> cnn, resnet34, ...) in petlab's configs and in config folders
    of the user's (``extra_dirs``, as ``--config-dir`` adds them); files starting with _ are shared parts."""
    folders = [config_dir(), *map(Path, extra_dirs)]
    found = {path.stem for folder in folders for path in (folder / group).glob("*.yaml")}
    return sorted(name for name in found if not name.startswith("_"))


def config_groups_help() -> str:
    """``group: option, option`` per line, for ``--help`` (Hydra's own list shows the shared _ files too)."""
    groups = sorted(
        path.name for path in config_dir().iterdir() if path.is_dir() and path.name not in ("hydra", "local")
    )
    return "\n".join(f"{group}: {', '.join(config_options(group))}" for group in groups)


RUN_ID_VARIABLE = "PETLAB_SWEEP_RUN_ID"


@cache
def run_id() -> str:
    """A name for this run: start time to the microsecond and the process id, so it is unique.

    A sweep exports its id (see :func:`share_run_id`) so that launcher worker processes, which resolve the
    sweep directory again, name the same directory.
    """
    return os.environ.get(RUN_ID_VARIABLE) or f"{datetime.now():%Y-%m-%d_%H-%M-%S-%f}_p{os.getpid()}"


def share_run_id() -> None:
    """Give the processes this one starts (joblib, submitit workers) this process's run id."""
    os.environ[RUN_ID_VARIABLE] = run_id()


# Overrides that say where a run reads and writes or how Hydra runs it, not how the model is trained:
# left out of the hyperparameters and of the report's columns.
NOT_HYPERPARAMETERS = ("hydra.", "paths.", "ckpt_path", "trial.", "hparams_search")

FIXED_KEYS_VARIABLE = "PETLAB_SWEEP_FIXED_KEYS"


def share_fixed_keys(overrides: list[str]) -> None:
    """Tell the jobs of a sweep (here and in launcher processes) which keys the command line's ``overrides``
    set to one value for all of them: the others are what the sweep varies, which :func:`sweep_label` shows."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # Hydra reports a malformed override itself, in its own words
        return
    os.environ[FIXED_KEYS_VARIABLE] = json.dumps([o.key_or_group for o in parsed if not o.is_sweep_override()])


LABEL_LENGTH = 100


def folder_safe(text: str) -> str:
    """``text`` with each run of characters other than letters, digits, ``.``, ``_`` and ``-`` made one ``-``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def evaluated_label(ckpt_path: Any) -> str:
    """What an evaluation's folder name ends with: ``_`` and the task and backbone of the run that wrote
    ``ckpt_path`` (from the run's recorded config), else the checkpoint file's name; "" without one."""
    if not ckpt_path:
        return ""
    path = Path(str(ckpt_path)).expanduser()
    try:
        config = OmegaConf.load(path.parent.parent / ".hydra" / "config.yaml")
        label = f"{config.task.name}_{config.model.backbone.name}"
    except Exception:  # not a run's checkpoint (or its record is gone): the file's own name says enough
        label = path.stem
    label = folder_safe(label)[:LABEL_LENGTH]
    return f"_{label}" if label else ""


def sweep_label(overrides: Any) -> str:
    """A sweep job's overrides minus those every job shares, e.g. ``task-breed+model-cnn``.

    Safe as a folder name and inside a Hydra override (``ckpt_path=.../3_task-breed+model-cnn/...``):
    ``=``, ``,``, brackets, quotes and path separators would each break one or the other.
    """
    fixed = set(json.loads(os.environ.get(FIXED_KEYS_VARIABLE, "[]")))
    varied = [str(item).lstrip("+~") for item in overrides]
    varied = [item for item in varied if item.split("=", 1)[0] not in fixed]
    parts = [folder_safe(item) for item in varied]
    # Whole key-value pairs up to LABEL_LENGTH, then how many more: a name is never cut inside a key.
    label = parts[0][:LABEL_LENGTH] if parts else ""
    kept = 1 if parts else 0
    while kept < len(parts) and len(label) + 1 + len(parts[kept]) <= LABEL_LENGTH:
        label, kept = f"{label}+{parts[kept]}", kept + 1
    return label + (f"+{len(parts) - kept}-more" if kept < len(parts) else "")
