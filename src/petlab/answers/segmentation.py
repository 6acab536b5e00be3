"""The class of every pixel: the share of the photo that is the pet, a mask file and an overlay."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from petlab.answers.base import Answer, Answerer
from petlab.pictures import full_size, overlay, save_whole

WORKING_SIDE = 1024  # the longest side a photo's classes are computed at (see PetArea.answer)


def bilinear_positions(size: int, source_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each of ``size`` output positions, the two source positions and the second's weight, as torch's
    bilinear ``interpolate`` (``align_corners=False``, no antialiasing) reads them."""
    source = np.maximum((np.arange(size) + 0.5) * (source_size / size) - 0.5, 0)
    low = np.minimum(source.astype(np.int64), source_size - 1)
    return low, np.minimum(low + 1, source_size - 1), (source - low).astype(np.float32)


def full_size_classes(logits: np.ndarray, width: int, height: int) -> np.ndarray:
    """The class of every pixel of a ``width`` x ``height`` image from its (classes, h, w) logits, resized as
    torch's bilinear interpolation resizes them, then the best class per pixel."""
    logits = np.asarray(logits, dtype=np.float32)
    top, bottom, down = bilinear_positions(height, logits.shape[1])
    left, right, across = bilinear_positions(width, logits.shape[2])
    rows = logits[:, top] * (1 - down[:, None]) + logits[:, bottom] * down[:, None]
    return (rows[:, :, left] * (1 - across) + rows[:, :, right] * across).argmax(axis=0)


class PetArea(Answerer):
    """``{"pet_fraction"}``, the share of the photo's pixels of class ``pet``, from per-pixel logits of
    ``class_names``; with an output folder, ``mask`` (a PNG of the release's trimap values, ``trimap_values``
    per class) and ``overlay`` (the photo with the pet tinted)."""

    picture_keys = ("overlay",)

    def __init__(self, class_names: Sequence[str], trimap_values: dict[str, int]) -> None:
        self.class_names, self.trimap_values = list(class_names), dict(trimap_values)

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "class_names": self.class_names, "trimap_values": self.trimap_values}

    def photo_side(self) -> int:
        return WORKING_SIDE

    def answer(self, outputs: Any, image: Any, top_k: int, output_dir: Path | None = None, stem: str = "") -> Answer:
        # A photo larger than WORKING_SIDE gets its classes at that size (the model saw far fewer pixels), its
        # mask scaled up pixel by pixel to the photo's size, and an overlay at the working size, from a JPEG
        # decoded at a reduced scale: seconds and gigabytes less for a 6000 x 6000 photo, the same answer for
        # a photo of usual size.
        width, height = full_size(image)
        scale = min(1.0, WORKING_SIDE / max(width, height))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        classes = full_size_classes(outputs, *size)
        answer: Answer = {"pet_fraction": round(float((classes == self.class_names.index("pet")).mean()), 4)}
        if output_dir is not None:
            values = np.array([self.trimap_values[name] for name in self.class_names], dtype=np.uint8)[classes]
            # The overlay is a photo: a JPEG, written 10-20x faster than a PNG of it.
            mask, picture = output_dir / f"{stem}_mask.png", output_dir / f"{stem}_overlay.jpg"
            save_whole(Image.fromarray(values, mode="L").resize((width, height), Image.NEAREST), mask)
            photo = image.convert("RGB")
            if photo.size != size:
                photo = photo.reduce(max(1, photo.width // size[0] // 2)).resize(size, Image.BILINEAR)
            save_whole(overlay(np.asarray(photo), classes, self.class_names), picture)
            answer.update(mask=str(mask), overlay=str(picture))
        return answer

    def summary(self, answer: Answer) -> tuple[str, str]:
        return f"pet: {answer['pet_fraction']:.1%} of the image", "tinted in the picture"

    def table(self, answers: Sequence[Answer]) -> tuple[list[str], list[list[str]]]:
        return ["pet area", "mask"], [[f"{a['pet_fraction']:.1%}", a.get("mask", "")] for a in answers]
