"""Work spread over every core: decoding a dataset's images once (the index, the cache) is the cold start
of every first run, and one process decodes at one core's rate."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

from rich.progress import track

Result = TypeVar("Result")


def core_count() -> int:
    """The cores this process may run on (a SLURM job or a container may allow fewer than the machine has)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parallel_map(
    function: Callable[[Any], Result], items: Iterable[Any], description: str, processes: int | None = None,
    transient: bool = False,
) -> Iterator[Result]:  # fmt: skip
    """``function`` of each item, in the items' order, computed by a pool of ``processes`` (one per core by
    default) with a progress bar. ``function`` and the items must be picklable; on Linux the workers are
    forked, so they start at once with this process's modules and settings (PIL's pixel limit included)."""
    items = list(items)
    processes = min(processes or core_count(), len(items))
    if processes <= 1:
        yield from track(map(function, items), total=len(items), description=description, transient=transient)
        return
    # Chunks big enough to amortise the round trips, small enough to balance the workers to the end.
    chunksize = max(1, min(64, len(items) // (processes * 16)))
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    with ProcessPoolExecutor(processes, mp_context=context) as pool:
        results = pool.map(function, items, chunksize=chunksize)
        yield from track(results, total=len(items), description=description, transient=transient)
