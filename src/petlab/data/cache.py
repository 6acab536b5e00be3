"""A decoded-image cache: every image decoded, converted to RGB and resized once into a uint8 memmap.

Decoding a JPEG with PIL costs milliseconds per image per epoch; reading a small uint8 array from a
memory-mapped file costs microseconds and is shared, through the page cache, by every dataloader
worker and every later run. Images are stored square at ``image_size x (1 + data.crop_margin)``, the
size every image is first resized to (see ``petlab.data.transforms.ItemTransform``), so random crops
still have pixels to choose from; an item is then a slice of the store, cropped and augmented on batches.
Per-pixel targets (masks) are cached the same way beside their images (see ``petlab.data.items``).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np

from petlab.data.transforms import decoded_pixels
from petlab.errors import PetlabError
from petlab.files import partial_path, remove_stale_partials, write_text_atomic
from petlab.parallel import parallel_map

# Bump when what is stored changes: old caches are then rebuilt. 2: JPEGs decoded at reduced scale.
CACHE_FORMAT = 2
ROWS_PER_TASK = 32  # images a cache-building worker decodes per task: a progress step, small enough to balance


def cache_path(cache_dir: Path, paths: Sequence[str], side: int, key: str) -> Path:
    """Where the cache for these files at this side lives; ``key`` identifies the files' contents."""
    digest = hashlib.sha1(f"{CACHE_FORMAT}\0{key}\0{side}\0{chr(0).join(paths)}".encode()).hexdigest()[:16]
    return Path(cache_dir) / "images" / f"{digest}-{side}px.npy"


def target_cache_path(image_cache: Path, name: str) -> Path:
    """The cache of a per-pixel target (see ``Target.per_pixel``) beside the image cache: the same key, so it
    is invalidated with it."""
    return image_cache.with_name(f"{image_cache.stem}-{name}.npy")


def build_cache(
    paths: Sequence[str], side: int, target: Path, decode: Callable[[str], np.ndarray] | None = None,
    what: str = "images",
) -> tuple[Path, float]:  # fmt: skip
    """Decode ``paths`` into ``target``, one uint8 array per file, unless a complete one is there.

    ``decode`` gives a file's array at ``side`` (default: the RGB image, (side, side, 3)); every core decodes
    (see :func:`petlab.parallel.parallel_map`), so ``decode`` must be picklable. The array is
    written to a ``.partial`` file and renamed, then a ``.json`` marker is written: a build that was
    interrupted leaves no marker and is redone. Returns the path and the build time (0 if reused).
    """
    marker = target.with_suffix(".json")
    if target.is_file() and marker.is_file() and json.loads(marker.read_text()).get("images") == len(paths):
        return target, 0.0
    decode = decode or partial(decoded_pixels, side=side)
    started = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(target.parent)
    building = partial_path(target)
    first = decode(paths[0])
    store = np.lib.format.open_memmap(building, mode="w+", dtype=np.uint8, shape=(len(paths), *first.shape))
    reserve_disk(building, what)
    store[0] = first
    store.flush()
    del store
    # Each worker writes its rows into the shared file itself: sending every array back to this process
    # would cost as much as decoding it.
    rows = list(enumerate(paths))[1:]
    chunks = [rows[start : start + ROWS_PER_TASK] for start in range(0, len(rows), ROWS_PER_TASK)]
    for _ in parallel_map(partial(decode_rows, building, decode), chunks, f"Caching {len(paths)} {what} at {side} px"):
        pass
    os.replace(building, target)
    seconds = time.perf_counter() - started
    write_text_atomic(marker, json.dumps({"images": len(paths), "side": side, "seconds": round(seconds, 2)}))
    return target, seconds


def decode_rows(store: Path, decode: Callable[[str], np.ndarray], rows: Sequence[tuple[int, str]]) -> int:
    """Decode ``rows`` (index, path) into the memory-mapped ``store``; how many were written."""
    images = np.load(store, mmap_mode="r+")
    for index, path in rows:
        images[index] = decode(path)
    images.flush()
    return len(rows)


def reserve_disk(partial: Path, what: str) -> None:
    """Allocate the memmap's blocks now: a sparse file on a full disk would kill the process with SIGBUS at
    the first page that cannot be written, instead of this one-line error."""
    size = partial.stat().st_size
    try:
        with open(partial, "r+b") as handle:
            os.posix_fallocate(handle.fileno(), 0, size)
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return  # a file system that cannot reserve blocks: write into the sparse file as before
        partial.unlink(missing_ok=True)
        free = shutil.disk_usage(partial.parent).free
        raise PetlabError(
            f"Cannot cache the {what} in {partial.parent}: it needs {size / 2**20:.0f} MiB, "
            f"{free / 2**20:.0f} MiB are free ({error.strerror}); free some space or set "
            "data.cache_dir= to a disk that has it, or data.cache=false"
        ) from None
