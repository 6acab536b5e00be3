"""New photos for a trained model (``petlab.predict``, the page): decoded by DataLoader workers while the
model computes, upright as a photo viewer shows them, resized and centre-cropped as validation sees images."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from petlab.data.transforms import ItemTransform, load_rgb
from petlab.errors import PetlabError
from petlab.pictures import open_photo, resized_pixels

UNREADABLE = "not a readable image: skipped"


class PhotoDataset(Dataset):
    """``files`` at ``positions`` (their places in the whole input) as model inputs, decoded as the training
    cache decodes them (a JPEG at the smallest scale that keeps the model's side). With ``keep_photo`` an item
    carries the photo too, for answers measured or drawn on it, decoded keeping ``photo_side`` (None: whole;
    see :func:`petlab.pictures.open_photo`)."""

    def __init__(
        self, files: Sequence[Path], positions: Sequence[int], transform: ItemTransform, keep_photo: bool,
        photo_side: int | None,
    ) -> None:  # fmt: skip
        self.files, self.positions = list(files), list(positions)
        self.transform, self.keep_photo, self.photo_side = transform, keep_photo, photo_side

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, item: int) -> dict[str, Any]:
        position = self.positions[item]
        side = self.transform.side
        try:
            if self.keep_photo:
                for_network, photo = open_photo(self.files[position], side, self.photo_side)
            else:
                for_network, photo = load_rgb(self.files[position], upright=True, at_least=side), None
        except (OSError, Image.DecompressionBombError, PetlabError):
            return {"position": position, "pixels": None, "photo": None}
        pixels = self.transform(torch.from_numpy(resized_pixels(for_network, side)).permute(2, 0, 1))
        return {"position": position, "pixels": pixels, "photo": photo}


def collate_photos(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A batch: the readable photos' pixels stacked, their positions and photos, and the unreadable ones'
    positions (answered with an error, in their place)."""
    readable = [item for item in items if item["pixels"] is not None]
    pixels = torch.stack([item["pixels"] for item in readable]) if readable else torch.empty(0, dtype=torch.uint8)
    return {"pixels": pixels, "positions": [item["position"] for item in readable],
            "photos": [item["photo"] for item in readable],
            "unreadable": [item["position"] for item in items if item["pixels"] is None]}  # fmt: skip
