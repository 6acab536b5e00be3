"""The LightningDataModule for Oxford-IIIT Pet (and anything in its layout, such as the generated sample)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import torch
from torch.utils.data import DataLoader

from petlab.data.index import build_index
from petlab.data.splits import assign_splits, split_counts
from petlab.data.transforms import IMAGENET_MEAN, IMAGENET_STD, ImageDataset, build_transform
from petlab.errors import PetlabError

log = logging.getLogger(__name__)

TASKS = ("species", "breed")
NORMALIZATIONS = ("imagenet",)


def resolve_num_workers(num_workers: int | str) -> int:
    """``"auto"`` leaves one core to the training process; an int is taken as given."""
    if num_workers == "auto":
        return max(0, min(8, (os.cpu_count() or 1) - 1))
    if not isinstance(num_workers, int) or num_workers < 0:
        raise PetlabError(f"data.num_workers={num_workers!r} must be 'auto' or a whole number >= 0")
    return num_workers


class PetDataModule(L.LightningDataModule):
    """Indexes the dataset, derives labels for ``task`` from file names, splits, and serves loaders."""

    def __init__(
        self,
        root: str | Path,
        task: str = "species",
        image_size: int = 128,
        batch_size: int = 32,
        num_workers: int | str = "auto",
        split: str = "official",
        val_fraction: float = 0.2,
        test_fraction: float = 0.15,
        seed: int = 0,
        normalize: str = "imagenet",
        augment: dict[str, Any] | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        super().__init__()
        if task not in TASKS:
            raise PetlabError(f"unknown task {task!r}: choose task=species or task=breed")
        if normalize not in NORMALIZATIONS:
            raise PetlabError(
                f"unknown data.normalize={normalize!r}: choose one of {', '.join(NORMALIZATIONS)}"
            )
        if image_size < 16 or batch_size < 1:
            raise PetlabError(f"data.image_size={image_size} and data.batch_size={batch_size} are too small")
        self.root = Path(root).expanduser()
        self.task = task
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = resolve_num_workers(num_workers)
        self.split, self.val_fraction, self.test_fraction = split, val_fraction, test_fraction
        self.seed = seed
        self.normalize = normalize
        self.augment = dict(augment or {})
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.frame: pd.DataFrame | None = None
        self.class_names: list[str] = []
        self.mean: Sequence[float] = IMAGENET_MEAN
        self.std: Sequence[float] = IMAGENET_STD
        self.datasets: dict[str, ImageDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.frame is not None:  # the entry point sets up early to learn the classes
            return
        index = build_index(self.root, self.cache_dir)
        frame = index[index["readable"]].copy()
        for row in index[~index["readable"]].itertuples():
            log.warning(f"skipping {Path(row.path).name}: {row.problem}")
        if frame.empty:
            raise PetlabError(f"no readable BREED_NUMBER.jpg images in {self.root / 'images'}")
        self.class_names = sorted(frame[self.task].unique())
        if len(self.class_names) < 2:
            raise PetlabError(
                f"task={self.task} needs at least two classes, but {self.root} only has {self.class_names}"
            )
        frame["target"] = frame[self.task].map({name: i for i, name in enumerate(self.class_names)})
        frame["split"] = assign_splits(
            frame, self.task, self.split, self.val_fraction, self.test_fraction, self.seed
        )
        frame = frame[frame["split"] != ""]
        if (frame["split"] == "train").sum() == 0 or (frame["split"] == "val").sum() == 0:
            raise PetlabError(f"{self.root} has too few images for a train and a validation split")
        self.frame = frame
        log.info("Images per species and split:\n%s", split_counts(frame, ["species"]).to_string())
        self.datasets = {
            name: ImageDataset(
                part["path"], part["target"],
                build_transform(self.image_size, self.mean, self.std, train=name == "train", **self.augment),
            )
            for name, part in frame.groupby("split")
        }  # fmt: skip

    @property
    def has_test(self) -> bool:
        return "test" in self.datasets

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
