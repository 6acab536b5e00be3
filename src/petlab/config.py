"""Where petlab's configs and files live, and the OmegaConf resolvers its configs use."""

from __future__ import annotations

import os
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from petlab.errors import PetlabError

CHECKOUT_DIR = Path(__file__).resolve().parents[2]  # src/petlab/config.py -> the checkout


def project_root() -> Path:
    """Where data/, outputs/ and .cache/ live: PETLAB_ROOT if set, else the petlab checkout."""
    if os.environ.get("PETLAB_ROOT"):
        return Path(os.environ["PETLAB_ROOT"]).expanduser().resolve()
    return CHECKOUT_DIR if (CHECKOUT_DIR / "conf").is_dir() else Path.cwd()


def config_dir() -> Path:
    """PETLAB_CONFIG_DIR if set, else the checkout's ``conf/``."""
    return Path(os.environ.get("PETLAB_CONFIG_DIR") or CHECKOUT_DIR / "conf").resolve()


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


def existing_dir(path: str) -> str:
    """``path``, created if missing: for files opened before any job exists (Optuna's SQLite storage)."""
    Path(path).mkdir(parents=True, exist_ok=True)
    return path


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("petlab_root", lambda: str(project_root()), replace=True)
    OmegaConf.register_new_resolver("run_id", run_id, replace=True)
    OmegaConf.register_new_resolver("existing_dir", existing_dir, replace=True)


def flatten(config: DictConfig | dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a/b": 1}``; lists become strings so every value is a scalar."""
    container = OmegaConf.to_container(config, resolve=True) if isinstance(config, DictConfig) else config
    flat: dict[str, Any] = {}
    for key, value in container.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}/"))
        else:
            flat[name] = value if isinstance(value, (int, float, str, bool)) or value is None else str(value)
    return flat


def whole_number(name: str, value: Any, minimum: int, maximum: int | None = None, hint: str = "") -> int:
    """``value`` if it is a whole number in [minimum, maximum]; else a PetlabError naming the key and the range."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (maximum and value > maximum):
        valid = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        raise PetlabError(f"{name}={value!r} is not valid: it must be a whole number {valid}{hint}")
    return value
