"""Datasets of items (image, target): images from files or from the decoded-image cache, with what their
targets give (see :class:`petlab.data.targets.Target`), and how items become batches."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from petlab.data.targets import Target
from petlab.data.transforms import ItemTransform, decoded_pixels

# The targets a data module reads: one (items carry its value), or several by key (items carry a dict).
Targets = Target | Mapping[str, Target]


def by_key(targets: Targets | None) -> dict[str, Target]:
    """Several targets by key; one under the key ""."""
    if targets is None:
        return {}
    return {"": targets} if isinstance(targets, Target) else dict(targets)


class ItemTargets:
    """What the items of a set of images carry besides the image: each target's value for each image
    (``stored``: by key, one per image, as :meth:`Target.stored` gives them), per-pixel ones decoded from
    their files or read from their caches (``caches``: by key, rows ``rows``), then cropped as the image."""

    def __init__(
        self, targets: Targets | None, stored: Mapping[str, Sequence[Any]], caches: Mapping[str, Path] | None = None,
        rows: Sequence[int] = (),
    ) -> None:  # fmt: skip
        self.single = isinstance(targets, Target)
        self.targets = by_key(targets)
        self.stored = {key: list(stored[key]) for key in self.targets}
        self.caches, self.rows = dict(caches or {}), list(rows)
        self._arrays: dict[str, np.ndarray] | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": None}  # workers open their own memory maps

    @property
    def kinds(self) -> Targets | None:
        """The targets as given: one, several by key, or none."""
        if not self.targets:
            return None
        return self.targets[""] if self.single else self.targets

    def __call__(self, position: int, transform: ItemTransform) -> Any:
        if not self.targets:
            return 0  # statistics and benchmarks read images only
        if self._arrays is None:
            self._arrays = {key: np.load(path, mmap_mode="r") for key, path in self.caches.items()}
        values = {}
        for key, target in self.targets.items():
            stored = self.stored[key][position]
            if target.per_pixel:
                stored = (np.array(self._arrays[key][self.rows[position]]) if key in self._arrays
                          else target.decode(stored, transform.side))  # fmt: skip
            values[key] = target.cropped(target.tensor(stored), transform.side, transform.crop)
        return values[""] if self.single else values


def collate(targets: Targets | None, batch: Sequence[tuple[torch.Tensor, Any]]) -> tuple[torch.Tensor, Any]:
    """A batch of items: the images stacked, each target's values as its kind collates them."""
    images = torch.stack([image for image, _ in batch])
    if targets is None:
        return images, default_collate([target for _, target in batch])
    if isinstance(targets, Target):
        return images, targets.collate([value for _, value in batch])
    return images, {key: target.collate([values[key] for _, values in batch]) for key, target in targets.items()}


class ImageDataset(Dataset):
    """Images decoded from ``paths`` and ``transform``ed (an :class:`ItemTransform`), with ``targets``."""

    def __init__(self, paths: Sequence[str], targets: ItemTargets, transform: ItemTransform) -> None:
        self.paths, self.targets, self.transform = list(paths), targets, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, Any]:
        pixels = torch.from_numpy(decoded_pixels(self.paths[item], self.transform.side)).permute(2, 0, 1)
        return self.transform(pixels), self.targets(item, self.transform)


class CachedImageDataset(Dataset):
    """Rows ``indices`` of a decoded-image cache as uint8 CHW tensors, ``transform``ed, with ``targets``.

    The memmap is opened lazily in each process (workers included), never copied into memory.
    """

    def __init__(
        self, store: Path, indices: Sequence[int], targets: ItemTargets, transform: ItemTransform,
        paths: Sequence[str] = (),
    ) -> None:  # fmt: skip
        self.store, self.indices, self.paths = Path(store), list(indices), list(paths)
        self.targets, self.transform = targets, transform
        self._images: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_images": None}  # workers open their own memory maps

    def __getitem__(self, item: int) -> tuple[torch.Tensor, Any]:
        if self._images is None:
            self._images = np.load(self.store, mmap_mode="r")
        pixels = torch.from_numpy(np.array(self._images[self.indices[item]])).permute(2, 0, 1)  # a copy: writable
        return self.transform(pixels), self.targets(item, self.transform)
