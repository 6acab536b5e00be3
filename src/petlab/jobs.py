"""A run's status, from its files: the one place that writes and reads ``job_status.json``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

JOB_STATUS = "job_status.json"  # in a run's directory, when it failed


def mark_failed(output_dir: Path, error: str) -> None:
    """Record in a run's directory that it failed, and why: reports list it."""
    (output_dir / JOB_STATUS).write_text(json.dumps({"status": "failed", "error": error}) + "\n")


def read_run_file(path: Path, parse: Callable[[str], Any]) -> Any:
    """The parsed content of a run file; ValueError says which file is unreadable (truncated, not UTF-8, ...)."""
    try:
        return parse(path.read_text())
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise ValueError(f"{path.name} is unreadable ({type(error).__name__})") from error


def run_status(run: Path) -> tuple[str, str]:
    """completed (it wrote metrics.json), failed (with its error) or incomplete (running, or killed)."""
    if (run / "metrics.json").is_file():
        return "completed", ""
    marker = run / JOB_STATUS
    if marker.is_file():
        status = read_run_file(marker, json.loads)
        return status.get("status", "failed"), status.get("error", "")
    return "incomplete", ""
