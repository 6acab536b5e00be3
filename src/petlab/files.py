"""Writing files that other processes may be writing or reading at the same moment."""

from __future__ import annotations

import os
from pathlib import Path


def partial_path(path: Path) -> Path:
    """A private name beside ``path`` for this process to write to before renaming it into place."""
    return path.with_name(f".{path.name}.{os.getpid()}.partial")


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new file, never a half-written one.

    Parallel jobs (a joblib sweep, DDP ranks) build the same cache files at once: each writes its own
    partial file, and the last rename wins with identical content.
    """
    partial = partial_path(path)
    partial.write_text(text)
    os.replace(partial, path)
