"""Image loading and the train/eval transform pipelines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from petlab.errors import PetlabError
from petlab.pictures import open_rgb, resized_pixels

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_rgb(path: str | Path, upright: bool = False, at_least: int | None = None) -> Image.Image:
    """:func:`petlab.pictures.open_rgb`, with a file that is not a readable image a PetlabError."""
    try:
        return open_rgb(path, upright, at_least)
    except (OSError, Image.DecompressionBombError) as error:
        raise PetlabError(f"cannot read image {path}: {error}") from error


def decoded_pixels(path: str | Path, side: int, upright: bool = False) -> np.ndarray:
    """A file's image resized to ``side`` x ``side`` (decoded at the smallest JPEG scale that keeps ``side``):
    what the cache stores, and what uncached datasets and predictions read, so that all three agree."""
    return resized_pixels(load_rgb(path, upright, at_least=side), side)


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
