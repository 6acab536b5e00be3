"""The LightningDataModule for Oxford-IIIT Pet, anything in its layout, and folder-per-class datasets."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import pandas as pd
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from petlab.config import whole_number
from petlab.data.augment import BatchAugmentation
from petlab.data.boxes import parse_box
from petlab.data.cache import CachedImageDataset, build_cache, cache_path, mask_cache_path
from petlab.data.download import download_dataset
from petlab.data.index import DEFAULT_MAX_IMAGE_PIXELS, allow_image_pixels, build_index, split_folders
from petlab.data.masks import MASKS, trimap_at, trimap_path
from petlab.data.mixing import LabelMixing
from petlab.data.report import DataReport
from petlab.data.sampling import EpochSampler, class_balanced_weights, epoch_seed
from petlab.data.splits import assign_splits
from petlab.data.stats import channel_stats, unnormalised
from petlab.data.transforms import (
    DEFAULT_CROP_MARGIN,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageDataset,
    ItemTransform,
    resized_side,
)
from petlab.data.upsample import UPSAMPLING, SyntheticMinority
from petlab.errors import PetlabError

log = logging.getLogger(__name__)

LABELS = ("species", "breed")  # the label columns of the pets layout
BOXES = "box"  # head boxes: annotations/xmls (see petlab.data.boxes)
TARGETS = (*LABELS, MASKS, BOXES)


class Annotation(NamedTuple):
    """A target the release annotates in files of its own, under ``annotations/``."""

    folder: str
    suffix: str
    column: str  # the index column saying why an image's cannot be used ("" when it can)
    task: str  # the task that reads it
    what: str  # what the files hold, for messages


ANNOTATED = {
    MASKS: Annotation("trimaps", "png", "trimap", "segmentation", "trimaps"),
    BOXES: Annotation("xmls", "xml", "box_problem", "head", "head boxes"),
}
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


def warn_skipped(skipped: pd.DataFrame) -> None:
    """One warning per reason: files skipped for the same reason (a whole stray folder) share one line."""
    for problem, names in skipped.groupby("problem", sort=False)["name"]:
        more = ", ..." if len(names) > 3 else ""
        files = names.iloc[0] if len(names) == 1 else f"{len(names)} files ({', '.join(names.iloc[:3])}{more})"
        log.warning(f"skipping {files}: {problem}")


def split_folder_note(root: Path) -> str:
    """Which folder of a folder dataset became which split, for the data report."""
    folders = split_folders(root)
    mapping = ", ".join(f"{name}/ -> {split}" for name, split in folders.items())
    if "val" in folders.values():
        return f"Split folders: {mapping}."
    return f"Split folders: {mapping}; no val/, valid/ or validation/ folder, so validation is carved from train."


class PetDataModule(L.LightningDataModule):
    """Indexes the dataset, labels it by ``target``, splits, balances, normalises and serves loaders.

    ``layout="pets"`` reads the Oxford-IIIT Pet layout and labels images from their file names;
    ``layout="folder"`` reads ``root/[train|val|test/]CLASS/*.jpg`` and labels images by their folder.
    ``target``: a label column (species, breed; an integer class per image) or ``trimap`` (the release's
    per-pixel trimap of each image, the images without a usable one left out; splits stratified by species).
    """

    def __init__(
        self,
        root: str | Path,
        target: str = "species",
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
    ) -> None:
        super().__init__()
        # One target (items: image, target), or several for a joint task (items: image, {target: value}).
        self.targets = [target] if isinstance(target, str) else list(target)
        for name in self.targets:
            _choice("task.target", name, TARGETS)
        self.target, self.joint = self.targets[0], len(self.targets) > 1
        if self.joint and layout != "pets":
            raise PetlabError("task=joint reads the species and breed from file names and the release's "
                              "annotations: it needs data.layout=pets (an Oxford-IIIT Pet copy)")  # fmt: skip
        self.layout = _choice("data.layout", layout, ("pets", "folder"))
        self.upsample = _choice("data.upsample", upsample, UPSAMPLING)
        self.normalize = _choice("data.normalize", normalize, NORMALIZATIONS)
        whole_number("data.image_size", image_size, MIN_IMAGE_SIZE, hint=" (pixels; 128 is the default)")
        whole_number("data.batch_size", batch_size, 1)
        allow_image_pixels(max_image_pixels)
        self.max_image_pixels = max_image_pixels
        if download and layout != "pets":
            raise PetlabError("data.download=true fetches Oxford-IIIT Pet; it needs data.layout=pets")
        if (self.joint or self.target in ANNOTATED) and upsample != "none":
            task = "joint" if self.joint else ANNOTATED[self.target].task
            raise PetlabError(f"data.upsample={upsample} balances the classes of one label; task={task} needs "
                              "data.upsample=none")  # fmt: skip
        self.root = Path(root).expanduser()
        self.image_size, self.batch_size = image_size, batch_size
        self.num_workers = resolve_num_workers(num_workers, cached=bool(cache) and cache_dir is not None)
        self.split, self.val_fraction, self.test_fraction = split, val_fraction, test_fraction
        self.folds, self.fold = folds, fold
        self.seed = seed
        self.augment = dict(augment or {})
        self.download = download
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        if not 0 <= crop_margin <= 1:
            raise PetlabError(f"data.crop_margin={crop_margin} must be between 0 and 1 (0.15: 15% larger)")
        self.crop_margin, self.side = crop_margin, resized_side(image_size, crop_margin)
        self.cache = bool(cache) and self.cache_dir is not None
        self.batch_augmentation = BatchAugmentation.from_config(image_size, self.augment)
        # Label mixing draws from the same generator, so it is reseeded with the rest of the augmentation.
        self.mixing = LabelMixing(self.augment.get("mixup", 0.0), self.augment.get("cutmix", 0.0),
                                  self.augment.get("mix_switch", 0.5), self.batch_augmentation.generator)  # fmt: skip
        if self.mixing.active and (self.joint or self.target not in LABELS):
            task = "joint" if self.joint else ANNOTATED[self.target].task
            raise PetlabError(f"data.augment.mixup and data.augment.cutmix mix the labels of a classification task; "
                              f"task={task} does not support them: set both to 0")  # fmt: skip
        self.early_size, self.early_epochs = progressive_sizes(progressive_resize, image_size)
        self.early_train: Dataset | None = None
        self.store: Path | None = None
        self.mask_store: Path | None = None
        self.frame: pd.DataFrame | None = None
        self.report: DataReport | None = None
        self.class_names: list[str] = []
        self.label_classes: dict[str, list[str]] = {}  # the classes of each label target
        # Explicit statistics (a checkpoint's, when evaluating) take precedence over ``normalize``.
        self.fixed_stats = mean is not None and std is not None
        self.mean = list(mean) if self.fixed_stats else list(IMAGENET_MEAN)
        self.std = list(std) if self.fixed_stats else list(IMAGENET_STD)
        self.datasets: dict[str, Dataset] = {}

    def prepare_data(self) -> None:
        if self.download:
            download_dataset(self.root)

    def setup(self, stage: str | None = None) -> None:
        if self.frame is not None:  # the entry point sets up early to learn the classes
            return
        annotated = [ANNOTATED[target] for target in self.targets if target in ANNOTATED]
        index = build_index(self.root, self.cache_dir, self.layout, self.max_image_pixels)
        for annotation in annotated:
            self._require_annotations(annotation)
        frame = index[index["readable"]].copy()
        skipped = index.loc[~index["readable"], ["name", "problem"]]
        if not self.joint:  # a joint model keeps such images for its other heads (see the notes below)
            for annotation in annotated:
                unusable = frame[frame[annotation.column] != ""]
                reasons = f"not used for {annotation.task}: " + unusable[annotation.column]
                skipped = pd.concat([skipped, unusable[["name"]].assign(problem=reasons)])
                frame = frame[frame[annotation.column] == ""].copy()
        warn_skipped(skipped)
        if frame.empty:
            usable = f" with usable {annotated[0].what}" if annotated else ""
            raise PetlabError(f"no readable images in {self.root}{usable}")
        if self.layout == "pets":  # several targets, and annotated ones, are split by species
            frame["label"] = frame["species" if annotated or self.joint else self.target]
        self.class_names = sorted(frame["label"].unique())
        if len(self.class_names) < 2 and not annotated:
            raise PetlabError(f"{self.root} has only one class ({self.class_names[0]}); a classifier needs two")
        frame["target"] = frame["label"].map({name: i for i, name in enumerate(self.class_names)})
        self.label_classes = (
            {target: sorted(frame[target].unique()) for target in self.targets if target in LABELS}
            if self.joint else {} if annotated else {self.target: self.class_names}
        )  # fmt: skip
        if BOXES in self.targets:
            frame["box_target"] = frame["box"].map(parse_box)
        if self.joint:
            columns = zip(*(self._column(key, frame) for key in self.item_keys), strict=True)
            frame["target"] = [dict(zip(self.item_keys, values, strict=True)) for values in columns]
        elif self.target == BOXES:
            frame["target"] = frame["box_target"]
        # The release has head boxes for trainval images only: the official test split would be empty.
        carve_test = BOXES in self.targets and self.split == "official"
        frame["split"] = assign_splits(
            frame, "label", self.split, self.val_fraction, self.test_fraction, self.seed, self.folds, self.fold,
            carve_test=carve_test,
        )  # fmt: skip
        unused = int((frame["split"] == "").sum())
        frame = frame[frame["split"] != ""]
        if (frame["split"] == "train").sum() == 0 or (frame["split"] == "val").sum() == 0:
            raise PetlabError(f"{self.root} has too few images for a train and a validation split")
        fingerprint = index.attrs.get("fingerprint", "")
        if self.cache:
            self.store, self.mask_store = self._caches(frame, self.side, fingerprint)
        frame["cache_row"] = range(len(frame))
        self.frame = frame
        train = frame[frame["split"] == "train"]
        if self.normalize == "dataset" and not self.fixed_stats:
            source = "cache" if self.store else "files"
            key = "\0".join([fingerprint, source, str(self.image_size), str(self.side), *train["path"]])
            transform = unnormalised(self.image_size, self.side)
            images = self._dataset(train, transform, with_targets=False)
            self.mean, self.std = channel_stats(images, self.num_workers, self.cache_dir, key)
            log.info(f"Dataset mean {self.mean}, std {self.std} (training split, {self.image_size} px)")
        # Training images get their own set (augmented, with the synthetic ones); the other splits the centre crop.
        self.datasets = {name: self._dataset(part, self._transform(train=False))
                         for name, part in frame.groupby("split") if name != "train"}  # fmt: skip
        self.datasets["train"], synthetic = self._training_set(train, self.image_size, self.side)
        if self.early_size:
            early_side = resized_side(self.early_size, self.crop_margin)
            stores = self._caches(frame, early_side, fingerprint) if self.cache else (None, None)
            self.early_train, _ = self._training_set(train, self.early_size, early_side, stores)
        notes = [f"{unused} images are in no split of data.split={self.split} and are not used."] if unused else []
        if carve_test:
            boxed = "" if self.joint else "boxed "
            notes.append(f"The official test images have no head boxes: the test split is "
                         f"data.test_fraction={self.test_fraction} of the {boxed}trainval images, by species, "
                         f"seed {self.seed}.")  # fmt: skip
        for annotation in annotated if self.joint else ():
            missing = int((frame[annotation.column] != "").sum())
            if missing:
                notes.append(f"{missing} of the {len(frame)} images have no usable {annotation.what}: the "
                             f"{annotation.task} head learns and is measured without them.")  # fmt: skip
        if self.layout == "folder" and self.split == "official":
            notes.append(split_folder_note(self.root))
        if self.upsample != "none":
            notes.append(f"data.upsample={self.upsample}: training classes balanced to the largest class.")
        self.report = DataReport.build(frame, skipped, synthetic, notes)
        log.info(self.report.text())

    def _transform(self, train: bool, size: int | None = None, side: int | None = None) -> ItemTransform:
        """Images resized to ``side`` and centre-cropped to ``size`` (by default the data's own); augmented
        training images stay whole until BatchAugmentation crops them on the device."""
        crop = None if train and self.batch_augmentation.active else size or self.image_size
        return ItemTransform(side or self.side, crop)

    def _caches(self, frame: pd.DataFrame, side: int, fingerprint: str) -> tuple[Path, Path | None]:
        """The decoded-image cache of ``frame``'s images at ``side``, and of their trimaps if the task reads them."""
        target = cache_path(self.cache_dir, frame["path"].tolist(), side, fingerprint)
        store, seconds = build_cache(frame["path"].tolist(), side, target)
        if seconds:
            log.info(f"Decoded-image cache built in {seconds:.1f} s: {store} "
                     f"({store.stat().st_size / 2**20:.0f} MB)")  # fmt: skip
        if MASKS not in self.targets:
            return store, None
        masks, _ = build_cache(self._trimap_paths(frame), side, mask_cache_path(store),
                               lambda path: trimap_at(path, side), "trimaps")  # fmt: skip
        return store, masks

    def _training_set(
        self, train: pd.DataFrame, size: int, side: int, stores: tuple[Path | None, Path | None] | None = None
    ) -> tuple[Dataset, dict[str, int]]:  # fmt: skip
        """The training images at ``size`` (from ``stores``, by default the data's caches), with the synthetic
        minority images when upsampling; and how many of those each class got."""
        dataset = self._dataset(train, self._transform(True, size, side), stores=stores)
        if self.upsample != "synthetic":
            return dataset, {}
        extra = SyntheticMinority(train, self.seed, size, self._transform(True, size, side))
        added = pd.Series([self.class_names[t] for _, t in extra.sources]).value_counts().to_dict()
        return ConcatDataset([dataset, extra]), added

    def _require_annotations(self, annotation: Annotation) -> None:
        folder = self.root / "annotations" / annotation.folder
        if self.layout != "pets" or not folder.is_dir() or not any(folder.glob(f"*.{annotation.suffix}")):
            # A joint model names the head to leave out; a single task, the dataset to use instead.
            which = f"task=joint with {annotation.task} in task.heads" if self.joint else f"task={annotation.task}"
            instead = f" or leave {annotation.task} out of task.heads" if self.joint else ""
            raise PetlabError(
                f"{which} needs the release's {annotation.what}, and there are none at {folder}: use an Oxford-IIIT "
                f"Pet copy with annotations/{annotation.folder}/ (data=oxford_pet, or data=sample){instead}"
            )

    @property
    def item_keys(self) -> list[str]:
        """The targets of an item that the frame holds (trimaps come from their own files or cache)."""
        return [target for target in self.targets if target != MASKS]

    def _column(self, target: str, frame: pd.DataFrame) -> list[Any]:
        """Every row's value of one target: a class index of a label, or a box (NaN where none)."""
        if target == BOXES:
            return frame["box_target"].tolist()
        classes = {name: i for i, name in enumerate(self.label_classes[target])}
        return frame[target].map(classes).tolist()

    def _trimap_paths(self, part: pd.DataFrame) -> list[str]:
        """The trimap file of each row ("" where it has no usable one: its mask is all 0, counted nowhere)."""
        return [str(trimap_path(self.root, name)) if problem == "" else ""
                for name, problem in zip(part["name"], part["trimap"], strict=True)]  # fmt: skip

    def _dataset(
        self, part: pd.DataFrame, transform: Any, with_targets: bool = True,
        stores: tuple[Path | None, Path | None] | None = None,
    ) -> Dataset:  # fmt: skip
        """The images of ``part`` with their targets as the ``transform``ed image sees them (an
        :class:`ItemTransform`: the trimaps cropped, the boxes moved), from the decoded-image cache when there
        is one (``stores``: images and trimaps, by default the data's), else decoded from files. Without
        ``with_targets`` (for statistics) the targets are as stored."""
        masks = with_targets and MASKS in self.targets
        target_transform = transform.target if with_targets else None
        store, mask_store = stores or (self.store, self.mask_store)
        if store is not None:
            return CachedImageDataset(store, part["cache_row"].tolist(), part["target"].tolist(), transform,
                                      part["path"].tolist(), mask_store if masks else None,
                                      target_transform)  # fmt: skip
        mask_paths = self._trimap_paths(part) if masks else None
        return ImageDataset(part["path"].tolist(), part["target"].tolist(), transform, mask_paths, target_transform)

    def task_arguments(self) -> dict[str, Any]:
        """What the task is built with from the data: the class names of a label (nothing for annotations),
        or for several targets the classes of each label among them."""
        if self.joint:
            return {"label_classes": self.label_classes}
        return {} if self.target in ANNOTATED else {"class_names": self.class_names}

    @property
    def has_test(self) -> bool:
        return "test" in self.datasets

    def loader(self, split: str, sampler: EpochSampler | None = None, dataset: Dataset | None = None) -> DataLoader:
        """A loader over one split (train, val or test; or ``dataset``), in order unless a sampler is given."""
        return DataLoader(
            dataset or self.datasets[split],
            batch_size=self.batch_size,
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
            weights = class_balanced_weights(self.frame.loc[self.frame["split"] == "train", "target"].tolist())
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
            images, targets = self.batch_augmentation(images, targets)
        if self.mixing.active:
            images, targets = self.mixing(images, targets, len(self.class_names))
        return images, targets
