"""Trimaps: the release's per-pixel masks of the animal, ``annotations/trimaps/NAME.png``.

One byte per pixel: 1 the pet, 2 the background, 3 the border (the uncertain band around the animal).
petlab keeps these raw values through the cache, the crops and the augmentation, with one more:
:data:`OUTSIDE` (0) for pixels that the augmentation brings in from outside the image, which no task
counts. A task maps the raw values to its classes (see ``petlab.tasks.segmentation``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

MASKS = "trimap"  # the target name of per-pixel masks (task.target, and their key in a joint item)
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
    """A trimap resized to ``side`` x ``side`` by nearest neighbour (no value is invented between classes)."""
    return np.array(Image.fromarray(values).resize((side, side), Image.NEAREST))


def trimap_at(path: str, side: int) -> np.ndarray:
    """The trimap at ``path`` resized to ``side`` x ``side``; all :data:`OUTSIDE` (counted nowhere) for no
    path, an image that has no usable trimap."""
    return resized_mask(read_trimap(path), side) if path else np.zeros((side, side), dtype=np.uint8)
