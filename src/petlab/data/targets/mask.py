"""Masks: the release's per-pixel trimaps of the animal, ``annotations/trimaps/NAME.png``.

One byte per pixel: 1 the pet, 2 the background, 3 the border (the uncertain band around the animal).
petlab keeps these raw values through the cache, the crops and the augmentation, with one more:
:data:`OUTSIDE` (0) for pixels that the augmentation brings in from outside the image, which no task
counts. A task maps the raw values to its classes (see ``petlab.tasks.segmentation``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from petlab.data.targets.base import Target

OUTSIDE, PET, BACKGROUND, BORDER = 0, 1, 2, 3
TRIMAP_VALUES = (PET, BACKGROUND, BORDER)


def trimap_path(root: Path, name: str) -> Path:
    return Path(root) / "annotations" / "trimaps" / f"{name}.png"


def read_trimap(path: str | Path) -> np.ndarray:
    """The (H, W) uint8 values of a trimap file."""
    with Image.open(path) as image:
        if image.mode not in ("L", "P"):
            raise ValueError(f"it is a {image.mode} image: a trimap has one channel of values 1-3")
        return np.asarray(image, dtype=np.uint8)


def trimap_problem(path: Path, width: int, height: int) -> str:
    """Why the trimap at ``path`` cannot be used for a ``width`` x ``height`` image ("" if it can)."""
    if not path.is_file():
        return "no trimap"
    try:
        values = read_trimap(path)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        return f"trimap cannot be read: {str(error).splitlines()[0][:120]}"
    if values.shape != (height, width):
        return f"trimap is {values.shape[1]}x{values.shape[0]}, its image {width}x{height}"
    found = set(np.unique(values).tolist())
    if not found <= set(TRIMAP_VALUES):
        return f"trimap has values {sorted(found - set(TRIMAP_VALUES))} outside 1-3"
    return ""


def resized_mask(values: np.ndarray, side: int) -> np.ndarray:
    """A mask resized to ``side`` x ``side`` by nearest neighbour (no value is invented between classes)."""
    return np.array(Image.fromarray(values).resize((side, side), Image.NEAREST))


class Mask(Target):
    """The release's trimap of each image, (H, W) uint8 raw values; an image without a usable one is all
    :data:`OUTSIDE`, which no task counts."""

    what = "trimaps"
    per_pixel = True

    def __init__(self, name: str = "trimap") -> None:
        super().__init__(name)

    def missing_from(self, root: Path, layout: str) -> str:
        folder = Path(root) / "annotations" / "trimaps"
        if layout != "pets" or not folder.is_dir() or not any(folder.glob("*.png")):
            return (f"it needs the release's trimaps, and there are none at {folder}: use an Oxford-IIIT Pet copy "
                    "with annotations/trimaps/ (data=oxford_pet, or data=sample)")  # fmt: skip
        return ""

    def annotate(self, root: Path, layout: str, images: pd.DataFrame) -> pd.DataFrame:
        paths = [trimap_path(root, name) for name in images["name"]]
        problems = [trimap_problem(path, width, height)
                    for path, width, height in zip(paths, images["width"], images["height"], strict=True)]  # fmt: skip
        return pd.DataFrame({"value": [str(path) for path in paths], "problem": problems}, index=images.index)

    def stored(self, value: str) -> str:
        return value

    def decode(self, stored: str, side: int) -> np.ndarray:
        return resized_mask(read_trimap(stored), side) if stored else np.zeros((side, side), dtype=np.uint8)

    def tensor(self, stored: Any) -> torch.Tensor:
        return torch.from_numpy(np.array(stored, dtype=np.uint8))

    def cropped(self, value: torch.Tensor, side: int, crop: int | None) -> torch.Tensor:
        if crop is None:
            return value
        start = (side - crop) // 2
        return value[start : start + crop, start : start + crop]

    def moved(self, batch: torch.Tensor, theta: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """Resampled by nearest neighbour; pixels from outside the image are :data:`OUTSIDE`."""
        resampled = F.grid_sample(batch[:, None].float(), grid, mode="nearest", padding_mode="zeros",
                                  align_corners=False)  # fmt: skip
        return resampled[:, 0].to(torch.uint8)
