"""A run's status, from its files: the one place that writes and reads ``job_status.json``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from petlab.files import write_text_atomic

JOB_STATUS = "job_status.json"  # in a run's directory, when it failed or a search pruned it


def mark_failed(output_dir: Path, error: str) -> None:
    """Record in a run's directory that it failed, and why: reports list it."""
    output_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output_dir / JOB_STATUS, json.dumps({"status": "failed", "error": error}) + "\n")


def mark_pruned(output_dir: Path, reason: str) -> None:
    """Record in a run's directory that a search's pruner stopped it early (its files so far are kept)."""
    write_text_atomic(output_dir / JOB_STATUS, json.dumps({"status": "pruned", "error": reason}) + "\n")


def read_run_file(path: Path, parse: Callable[[str], Any]) -> Any:
    """The parsed content of a run file; ValueError says which file is unreadable (truncated, not UTF-8, ...)."""
    try:
        return parse(path.read_text())
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise ValueError(f"{path.name} is unreadable ({type(error).__name__})") from error


def run_status(run: Path) -> tuple[str, str]:
    """completed (it wrote metrics.json), pruned (a search stopped it early: its metrics so far), failed (with
    its error) or incomplete (running, or killed)."""
    marker = run / JOB_STATUS
    status = read_run_file(marker, json.loads) if marker.is_file() else {}
    if status.get("status") == "pruned":
        return "pruned", status.get("error", "")
    if (run / "metrics.json").is_file():
        return "completed", ""
    if status:
        return status.get("status", "failed"), status.get("error", "")
    return "incomplete", ""
