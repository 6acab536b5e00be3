"""Image loading and the train/eval transform pipelines."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from petlab.data.boxes import centre_crop_affine, transform_boxes
from petlab.data.masks import MASKS, trimap_at
from petlab.errors import PetlabError
from petlab.pictures import open_rgb, resized_pixels

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_rgb(path: str | Path, upright: bool = False) -> Image.Image:
    """:func:`petlab.pictures.open_rgb`, with a file that is not a readable image a PetlabError."""
    try:
        return open_rgb(path, upright)
    except (OSError, Image.DecompressionBombError) as error:
        raise PetlabError(f"cannot read image {path}: {error}") from error


DEFAULT_CROP_MARGIN = 0.15  # data.crop_margin's default, for checkpoints that predate it


def resized_side(image_size: int, margin: float) -> int:
    """The side every image is first resized to: ``image_size`` plus ``margin`` for crops to choose from."""
    return round(image_size * (1 + margin))


class ItemTransform:
    """PIL image (resized to ``side``) or uint8 CHW tensor already at ``side`` (a cached image) -> uint8 CHW tensor.

    With ``crop``, the centre ``crop`` x ``crop`` square is kept: how validation, test and prediction see
    images (with the default 15% margin, the usual 0.87 crop ratio). Without, the whole resized image is
    kept for :class:`~petlab.data.augment.BatchAugmentation` to crop randomly, a batch at a time, on the
    training device. Images stay uint8 until they are batched: the model normalises whole batches (see
    ``PetModule.forward``), which is cheaper than per item and moves 4x fewer bytes between processes.
    Plain slicing rather than torchvision transforms: per item, their bookkeeping costs more than the work.
    """

    def __init__(self, side: int, crop: int | None) -> None:
        if crop is not None and crop > side:
            raise PetlabError(f"a {crop} px crop does not fit in images resized to {side} px")
        self.side, self.crop = side, crop

    def __call__(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        if isinstance(image, Image.Image):
            image = torch.from_numpy(resized_pixels(image, self.side)).permute(2, 0, 1)
        if self.crop is None:
            return image
        start = (self.side - self.crop) // 2
        return image[:, start : start + self.crop, start : start + self.crop]

    def target(self, target: Any) -> Any:
        """An image's target as its transformed image sees it: a label as it is; a head box (four fractions
        of the whole image, NaN for none) as fractions of the crop (see :func:`transform_boxes`); several
        targets by name, each so."""
        if isinstance(target, Mapping):
            return {name: self.target(value) for name, value in target.items()}
        if isinstance(target, int | np.integer):
            return int(target)
        box = torch.tensor(target, dtype=torch.float32)[None]
        return (box if self.crop is None else transform_boxes(box, centre_crop_affine(self.side, self.crop)))[0]


class ImageDataset(torch.utils.data.Dataset):
    """Images from paths, loaded as RGB and transformed, with their ``targets`` (integer labels, head boxes
    as four fractions, or several by name) through ``target_transform`` (``ItemTransform.target`` moves
    boxes with the crop) and, given ``mask_paths``, their trimaps resized (nearest) and cropped as the
    images, (H, W) uint8."""

    def __init__(
        self, paths: Sequence[str], targets: Sequence[Any], transform: Callable[[Any], torch.Tensor],
        mask_paths: Sequence[str] | None = None, target_transform: Callable[[Any], Any] | None = None,
    ) -> None:  # fmt: skip
        self.paths, self.targets = list(paths), list(targets)
        self.transform, self.mask_paths, self.target_transform = transform, mask_paths, target_transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, Any]:
        image = self.transform(load_rgb(self.paths[item]))
        target = self.targets[item] if self.target_transform is None else self.target_transform(self.targets[item])
        if self.mask_paths is None:
            return image, target
        mask = self.transform(torch.from_numpy(trimap_at(self.mask_paths[item], self.transform.side))[None])[0]
        return image, with_mask(target, mask)


def with_mask(target: Any, mask: torch.Tensor) -> Any:
    """An item's target once its trimap is read: the mask itself, or added to several targets by name."""
    return {**target, MASKS: mask} if isinstance(target, Mapping) else mask
