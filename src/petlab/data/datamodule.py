"""The LightningDataModule for Oxford-IIIT Pet, anything in its layout, and folder-per-class datasets."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from petlab.checks import real_number, whole_number
from petlab.data.augment import BatchAugmentation
from petlab.data.cache import build_cache, cache_path, target_cache_path
from petlab.data.curation import Curation
from petlab.data.download import download_dataset
from petlab.data.frame import Frame, Splitting, build_frame, stored_values
from petlab.data.index import DEFAULT_MAX_IMAGE_PIXELS, allow_image_pixels
from petlab.data.items import CachedImageDataset, ImageDataset, ItemTargets, Targets, by_key, collate
from petlab.data.mixing import BatchMixing
from petlab.data.report import DataReport
from petlab.data.sampling import EpochSampler, class_balanced_weights, epoch_seed
from petlab.data.stats import Unnormalised, channel_stats
from petlab.data.targets import Target
from petlab.data.transforms import DEFAULT_CROP_MARGIN, IMAGENET_MEAN, IMAGENET_STD, ItemTransform, resized_side
from petlab.data.upsample import UPSAMPLING, SyntheticMinority
from petlab.errors import PetlabError

log = logging.getLogger(__name__)

NORMALIZATIONS = ("imagenet", "dataset")


def resolve_num_workers(num_workers: int | str, cached: bool = False) -> int:
    """``"auto"``: none when ``cached`` images feed training on the CPU, else all cores but one (at most 8).

    Reading a batch of decoded images from the cache takes a few milliseconds in the training process;
    on a CPU, a worker process would only compete with the compute threads for the cores (measured:
    the same time per batch fetched, and slower training steps). Decoding JPEGs, or feeding a GPU, needs
    the workers. An int is taken as given.
    """
    if num_workers == "auto":
        if cached and not torch.cuda.is_available():
            return 0
        return max(0, min(8, (os.cpu_count() or 1) - 1))
    if not isinstance(num_workers, int) or num_workers < 0:
        raise PetlabError(f"data.num_workers={num_workers!r} must be 'auto' or a whole number >= 0")
    return num_workers


MIN_IMAGE_SIZE = 16  # the CNN's four poolings need 16 px; models that need more say so themselves


def progressive_sizes(schedule: Mapping[str, Any] | None, image_size: int) -> tuple[int | None, int]:
    """``data.progressive_resize`` ({size, epochs}) checked: the smaller training size and for how many epochs
    (None, 0: off)."""
    size, epochs = (schedule or {}).get("size"), (schedule or {}).get("epochs", 0)
    unknown = sorted(set(schedule or {}) - {"size", "epochs"})
    if unknown:
        raise PetlabError(f"unknown data.progressive_resize option {', '.join(unknown)}: use size, epochs")
    if size is None and not epochs:
        return None, 0
    whole_number("data.progressive_resize.size", size, MIN_IMAGE_SIZE,
                 hint=f" (pixels, smaller than data.image_size={image_size})")  # fmt: skip
    if size >= image_size:
        raise PetlabError(f"data.progressive_resize.size={size} must be smaller than data.image_size={image_size}")
    whole_number("data.progressive_resize.epochs", epochs, 1, hint=" (the epochs trained at the smaller size)")
    return size, epochs


def _choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise PetlabError(f"unknown {name}={value!r}: choose one of {', '.join(choices)}")
    return value


class PetDataModule(L.LightningDataModule):
    """Indexes the dataset, reads the task's ``targets``, splits, balances, normalises and serves loaders.

    ``layout="pets"`` reads the Oxford-IIIT Pet layout and labels images from their file names;
    ``layout="folder"`` reads ``root/[train|val|test/]CLASS/*.jpg`` and labels images by their folder.
    ``targets``: what the task learns (see :class:`petlab.data.targets.Target`): one target (items are
    (image, value)), or several by key for a joint task (items are (image, {key: value})). Label targets
    learn their classes here, from the images used.
    """

    def __init__(
        self,
        root: str | Path,
        targets: Targets | None = None,
        layout: str = "pets",
        image_size: int = 128,
        batch_size: int = 32,
        num_workers: int | str = "auto",
        split: str = "official",
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        folds: int = 0,
        fold: int = 0,
        seed: int = 0,
        upsample: str = "none",
        normalize: str = "imagenet",
        augment: dict[str, Any] | None = None,
        download: bool = False,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        cache_dir: str | Path | None = None,
        cache: bool = True,
        crop_margin: float = DEFAULT_CROP_MARGIN,
        progressive_resize: Mapping[str, Any] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        exclude: str | Path | None = None,
        relabel: str | Path | None = None,
        dedupe: str = "none",
    ) -> None:
        super().__init__()
        if targets is None:
            raise PetlabError("the data module needs the task's targets: build it from a task (python -m petlab)")
        self.targets = targets
        self.single = isinstance(targets, Target)
        self.layout = _choice("data.layout", layout, ("pets", "folder"))
        self.upsample = _choice("data.upsample", upsample, UPSAMPLING)
        self.normalize = _choice("data.normalize", normalize, NORMALIZATIONS)
        whole_number("data.image_size", image_size, MIN_IMAGE_SIZE, hint=" (pixels; 128 is the default)")
        whole_number("data.batch_size", batch_size, 1)
        allow_image_pixels(max_image_pixels)
        self.max_image_pixels = max_image_pixels
        if download and layout != "pets":
            raise PetlabError("data.download=true fetches Oxford-IIIT Pet; it needs data.layout=pets")
        if upsample != "none" and not (self.single and self.targets.stratifies):
            what = f"task.target={self.targets.name}" if self.single else "a joint task (several targets)"
            raise PetlabError(f"data.upsample={upsample} balances the classes of one label; {what} is not one: set "
                              "data.upsample=none")  # fmt: skip
        self.root = Path(root).expanduser()
        self.curation = Curation.from_options(exclude, relabel, dedupe)
        self.image_size, self.batch_size = image_size, batch_size
        self.num_workers = resolve_num_workers(num_workers, cached=bool(cache) and cache_dir is not None)
        self.splitting = Splitting(split, val_fraction, test_fraction, seed, folds, fold)
        self.seed = seed
        self.augment = dict(augment or {})
        self.download = download
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        if real_number("data.crop_margin", crop_margin, 0.0) > 1:
            raise PetlabError(f"data.crop_margin={crop_margin} must be between 0 and 1 (0.15: 15% larger)")
        self.crop_margin, self.side = crop_margin, resized_side(image_size, crop_margin)
        self.cache = bool(cache) and self.cache_dir is not None
        self.batch_augmentation = BatchAugmentation.from_config(image_size, self.augment)
        # Mixing draws from the same generator, so it is reseeded with the rest of the augmentation.
        self.mixing = BatchMixing(self.augment.get("mixup", 0.0), self.augment.get("cutmix", 0.0),
                                  self.augment.get("mix_switch", 0.5), self.batch_augmentation.generator)  # fmt: skip
        unmixable = [target for target in by_key(targets).values() if not target.mixable]
        if self.mixing.active and unmixable:
            raise PetlabError(f"data.augment.mixup and data.augment.cutmix mix the targets of a batch, and "
                              f"{unmixable[0].what} ({unmixable[0].name}) cannot be mixed: set both to 0")  # fmt: skip
        whole = [target for target in by_key(targets).values() if target.whole_image]
        if whole and (crop_margin > 0 or self.batch_augmentation.changes_view):
            raise PetlabError(f"{whole[0].name} is a value of the whole image, which crops and rotations change: set "
                              "data.crop_margin=0 data.augment.crop_scale=[1.0,1.0] data.augment.rotation=0 "
                              "data.augment.policy=none")  # fmt: skip
        self.early_size, self.early_epochs = progressive_sizes(progressive_resize, image_size)
        self.early_train: Dataset | None = None
        self.store: Path | None = None
        self.target_stores: dict[str, Path] = {}
        self.frame: pd.DataFrame | None = None
        self.report: DataReport | None = None
        self.class_names: list[str] = []  # the classes the splits are stratified by (the data report's rows)
        # Explicit statistics (a checkpoint's, when evaluating) take precedence over ``normalize``.
        self.fixed_stats = mean is not None and std is not None
        self.mean = list(mean) if self.fixed_stats else list(IMAGENET_MEAN)
        self.std = list(std) if self.fixed_stats else list(IMAGENET_STD)
        self.datasets: dict[str, Dataset] = {}

    @property
    def keyed_targets(self) -> dict[str, Target]:
        return by_key(self.targets)

    def prepare_data(self) -> None:
        if self.download:
            download_dataset(self.root)

    def setup(self, stage: str | None = None) -> None:
        if self.frame is not None:  # the entry point sets up early to learn the classes
            return
        built = self.read_frame()
        frame, fingerprint = built.frame, built.fingerprint
        self.class_names = sorted(frame["label"].unique())
        if self.cache:
            self.store, self.target_stores = self._caches(frame, self.side, fingerprint)
        frame["cache_row"] = range(len(frame))
        self.frame = frame
        train = frame[frame["split"] == "train"]
        if self.normalize == "dataset" and not self.fixed_stats:
            source = "cache" if self.store else "files"
            key = "\0".join([fingerprint, source, str(self.image_size), str(self.side), *train["path"]])
            transform = Unnormalised(self.image_size, self.side)
            images = self._dataset(train, transform, with_targets=False)
            self.mean, self.std = channel_stats(images, self.num_workers, self.cache_dir, key)
            log.info(f"Dataset mean {self.mean}, std {self.std} (training split, {self.image_size} px)")
        # Training images get their own set (augmented, with the synthetic ones); the other splits the centre crop.
        self.datasets = {name: self._dataset(part, self._transform(train=False))
                         for name, part in frame.groupby("split") if name != "train"}  # fmt: skip
        self.datasets["train"], synthetic = self._training_set(train, self.image_size, self.side)
        if self.early_size:
            early_side = resized_side(self.early_size, self.crop_margin)
            stores = self._caches(frame, early_side, fingerprint) if self.cache else (None, {})
            self.early_train, _ = self._training_set(train, self.early_size, early_side, stores)
        notes = built.notes
        if self.upsample != "none":
            notes.append(f"data.upsample={self.upsample}: training classes balanced to the largest class.")
        self.report = DataReport.build(frame, built.skipped, synthetic, notes, built.lacking)
        log.info(self.report.text())

    def read_frame(self) -> Frame:
        """The images this data would use, with their targets' values and splits (see :func:`build_frame`)."""
        return build_frame(self.root, self.layout, self.keyed_targets, self.single, self.splitting, self.cache_dir,
                           self.max_image_pixels, self.curation)  # fmt: skip

    def _transform(self, train: bool, size: int | None = None, side: int | None = None) -> ItemTransform:
        """Images resized to ``side`` and centre-cropped to ``size`` (by default the data's own); augmented
        training images stay whole until BatchAugmentation crops them on the device."""
        crop = None if train and self.batch_augmentation.active else size or self.image_size
        return ItemTransform(side or self.side, crop)

    def _caches(self, frame: pd.DataFrame, side: int, fingerprint: str) -> tuple[Path, dict[str, Path]]:
        """The decoded-image cache of ``frame``'s images at ``side``, and beside it the caches of the per-pixel
        targets, by key."""
        paths = frame["path"].tolist()
        store, seconds = build_cache(paths, side, cache_path(self.cache_dir, paths, side, fingerprint))
        if seconds:
            log.info(f"Decoded-image cache built in {seconds:.1f} s: {store} "
                     f"({store.stat().st_size / 2**20:.0f} MB)")  # fmt: skip
        stores = {}
        for key, values in stored_values(frame, self._per_pixel_keys()).items():
            target = self.keyed_targets[key]
            stores[key], _ = build_cache(values, side, target_cache_path(store, target.name),
                                         partial(target.decode, side=side), target.what)  # fmt: skip
        return store, stores

    def _per_pixel_keys(self) -> list[str]:
        return [key for key, target in self.keyed_targets.items() if target.per_pixel]

    def _training_set(
        self, train: pd.DataFrame, size: int, side: int, stores: tuple[Path | None, dict[str, Path]] | None = None
    ) -> tuple[Dataset, dict[str, int]]:  # fmt: skip
        """The training images at ``size`` (from ``stores``, by default the data's caches), with the synthetic
        minority images when upsampling; and how many of those each class got."""
        dataset = self._dataset(train, self._transform(True, size, side), stores=stores)
        if self.upsample != "synthetic":
            return dataset, {}
        extra = SyntheticMinority(
            train["path"], train["stored/"], self.targets, self.seed, size, self._transform(True, size, side)
        )
        added = pd.Series([self.targets.class_names[label] for _, label in extra.sources]).value_counts()
        return ConcatDataset([dataset, extra]), added.to_dict()

    def _dataset(
        self, part: pd.DataFrame, transform: Any, with_targets: bool = True,
        stores: tuple[Path | None, dict[str, Path]] | None = None,
    ) -> Dataset:  # fmt: skip
        """The images of ``part`` with their targets as the ``transform``ed image sees them (an
        :class:`ItemTransform`), from the decoded-image cache when there is one (``stores``: the images' and
        the per-pixel targets', by default the data's), else decoded from files. Without ``with_targets``
        (for statistics) items carry no target."""
        store, target_stores = stores or (self.store, self.target_stores)
        targets = self.targets if with_targets else None
        values = stored_values(part, by_key(targets))
        if store is not None:
            item_targets = ItemTargets(targets, values, target_stores, part["cache_row"].tolist())
            rows = part["cache_row"].tolist()
            return CachedImageDataset(store, rows, item_targets, transform, part["path"].tolist())
        return ImageDataset(part["path"].tolist(), ItemTargets(targets, values), transform)

    @property
    def has_test(self) -> bool:
        return "test" in self.datasets

    def loader(self, split: str, sampler: EpochSampler | None = None, dataset: Dataset | None = None) -> DataLoader:
        """A loader over one split (train, val or test; or ``dataset``), in order unless a sampler is given."""
        return DataLoader(
            dataset or self.datasets[split],
            batch_size=self.batch_size,
            collate_fn=partial(collate, self.targets),
            sampler=sampler,
            generator=sampler.loader_generator if sampler else None,
            num_workers=self.num_workers,
            # Persistent on GPU only, where worker start-up would show. The default per-epoch reload
            # (trainer.reload_dataloaders_every_n_epochs=1, which makes resume exact) still replaces them
            # each epoch; set it to 0 to keep them for the whole run, at the price of exact resume.
            persistent_workers=self.num_workers > 0 and torch.cuda.is_available(),
            pin_memory=torch.cuda.is_available(),
        )

    def training_size(self, epoch: int) -> int:
        """The side of the training images in ``epoch`` (smaller in the first epochs with progressive resizing)."""
        return self.early_size if self.early_size and epoch < self.early_epochs else self.image_size

    def train_dataloader(self) -> DataLoader:
        weights = None
        if self.upsample == "weighted":
            weights = class_balanced_weights(self.frame.loc[self.frame["split"] == "train", "stored/"].tolist())
        trainer = getattr(self, "trainer", None)
        epoch = trainer.current_epoch if trainer else 0
        size = self.training_size(epoch)
        dataset = self.datasets["train"] if size == self.image_size else self.early_train
        sampler = EpochSampler(len(dataset), self.seed, epoch, weights=weights, loader_generator=torch.Generator())
        # Ranks see different images, so they draw different augmentations too.
        self.batch_augmentation.reseed(epoch_seed(self.seed, epoch, trainer.global_rank if trainer else 0))
        self.batch_augmentation.image_size = size
        return self.loader("train", sampler, dataset)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Training batches, now on the training device, get their random augmentation here."""
        trainer = getattr(self, "trainer", None)
        # The model summary's example input passes here too: a bare tensor, not a training batch.
        if trainer is None or not trainer.training or torch.is_tensor(batch):
            return batch
        images, targets = batch
        if self.batch_augmentation.active:
            images, targets = self.batch_augmentation(images, targets, self.targets)
        if self.mixing.active:
            images, targets = self.mixing(images, targets, self.targets)
        return images, targets
