"""A decoded-image cache: every image decoded, converted to RGB and resized once into a uint8 memmap.

Decoding a JPEG with PIL costs milliseconds per image per epoch; reading a small uint8 array from a
memory-mapped file costs microseconds and is shared, through the page cache, by every dataloader
worker and every later run. Images are stored square at ``image_size x (1 + data.crop_margin)``, the
size every image is first resized to (see ``petlab.data.transforms.ItemTransform``), so random crops
still have pixels to choose from; an item is then a slice of the store, cropped and augmented on batches.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import track

from petlab.data.transforms import ItemTransform, load_rgb, with_mask
from petlab.files import partial_path, remove_stale_partials, write_text_atomic
from petlab.pictures import resized_pixels

CACHE_FORMAT = 1  # bump when the stored layout changes: old caches are then rebuilt


def cache_path(cache_dir: Path, paths: Sequence[str], side: int, key: str) -> Path:
    """Where the cache for these files at this side lives; ``key`` identifies the files' contents."""
    digest = hashlib.sha1(f"{CACHE_FORMAT}\0{key}\0{side}\0{chr(0).join(paths)}".encode()).hexdigest()[:16]
    return Path(cache_dir) / "images" / f"{digest}-{side}px.npy"


def mask_cache_path(image_cache: Path) -> Path:
    """The trimaps' cache beside the image cache: the same key, so it is invalidated with it."""
    return image_cache.with_name(f"{image_cache.stem}-trimaps.npy")


def build_cache(
    paths: Sequence[str], side: int, target: Path, decode: Callable[[str], np.ndarray] | None = None,
    what: str = "images",
) -> tuple[Path, float]:  # fmt: skip
    """Decode ``paths`` into ``target``, one uint8 array per file, unless a complete one is there.

    ``decode`` gives a file's array at ``side`` (default: the RGB image, (side, side, 3)). The array is
    written to a ``.partial`` file and renamed, then a ``.json`` marker is written: a build that was
    interrupted leaves no marker and is redone. Returns the path and the build time (0 if reused).
    """
    marker = target.with_suffix(".json")
    if target.is_file() and marker.is_file() and json.loads(marker.read_text()).get("images") == len(paths):
        return target, 0.0
    decode = decode or (lambda path: resized_pixels(load_rgb(path), side))
    started = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(target.parent)
    partial = partial_path(target)
    first = decode(paths[0])
    store = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=(len(paths), *first.shape))
    for index, path in enumerate(track(paths, description=f"Caching {len(paths)} {what} at {side} px")):
        store[index] = first if index == 0 else decode(path)
    store.flush()
    del store
    os.replace(partial, target)
    seconds = time.perf_counter() - started
    write_text_atomic(marker, json.dumps({"images": len(paths), "side": side, "seconds": round(seconds, 2)}))
    return target, seconds


class CachedImageDataset(torch.utils.data.Dataset):
    """Rows ``indices`` of a decoded-image cache as uint8 CHW tensors, transformed, with their targets:
    the ``targets`` (integer labels, head boxes, or several by name) through ``target_transform`` (see
    ``ItemTransform.target``), and with a ``masks`` cache the trimap rows, cropped as their images (H, W).

    The memmaps are opened lazily in each process (workers included), never copied into memory.
    """

    def __init__(
        self, store: Path, indices: Sequence[int], targets: Sequence[Any], transform: ItemTransform,
        paths: Sequence[str] = (), masks: Path | None = None, target_transform: Callable[[Any], Any] | None = None,
    ) -> None:  # fmt: skip
        self.store, self.indices, self.paths = Path(store), list(indices), list(paths)
        self.targets = list(targets)
        self.transform, self.masks, self.target_transform = transform, masks, target_transform
        self._arrays: tuple[np.ndarray, np.ndarray | None] | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": None}  # workers open their own memory maps

    def __getitem__(self, item: int) -> tuple[torch.Tensor, Any]:
        if self._arrays is None:
            masks = np.load(self.masks, mmap_mode="r") if self.masks else None
            self._arrays = np.load(self.store, mmap_mode="r"), masks
        images, masks = self._arrays
        row = self.indices[item]
        pixels = torch.from_numpy(np.array(images[row])).permute(2, 0, 1)  # a copy: writable
        target = self.targets[item] if self.target_transform is None else self.target_transform(self.targets[item])
        if masks is None:
            return self.transform(pixels), target
        mask = self.transform(torch.from_numpy(np.array(masks[row]))[None])[0]
        return self.transform(pixels), with_mask(target, mask)
