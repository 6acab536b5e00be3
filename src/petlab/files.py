"""Writing files that other processes may be writing or reading at the same moment."""

from __future__ import annotations

import os
import re
import shutil
import socket
from pathlib import Path

PARTIAL_NAME = re.compile(r"\.(?P<name>.+)\.(?P<host>[^.]+)\.(?P<pid>\d+)\.partial")


def _host() -> str:
    return socket.gethostname().replace(".", "-")


def partial_path(path: Path) -> Path:
    """A private name beside ``path`` for this process to write to before renaming it into place.

    The name holds the host and process id, so that :func:`remove_stale_partials` can tell a build that
    was interrupted from one that is still running.
    """
    return path.with_name(f".{path.name}.{_host()}.{os.getpid()}.partial")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_partials(directory: Path) -> list[Path]:
    """Delete the partial files in ``directory`` of processes of this host that no longer run.

    An interrupted cache build leaves one (as large as the cache); one that another process is still
    writing, or that a process on another host of a shared file system wrote, is left alone.
    """
    removed = []
    for partial in Path(directory).glob(".*.partial"):
        named = PARTIAL_NAME.fullmatch(partial.name)
        if named and named["host"] == _host() and not _running(int(named["pid"])):
            if partial.is_dir():  # a folder built whole before its rename (an exported space)
                shutil.rmtree(partial, ignore_errors=True)
            else:
                partial.unlink(missing_ok=True)
            removed.append(partial)
    return removed


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new file, never a half-written one.

    Parallel jobs (a joblib sweep, DDP ranks) build the same cache files at once: each writes its own
    partial file, and the last rename wins with identical content.
    """
    partial = partial_path(path)
    partial.write_text(text)
    os.replace(partial, path)
