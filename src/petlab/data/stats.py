"""Exact per-channel mean and standard deviation of a set of images at the working resolution."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from PIL import Image
from rich.progress import track
from torch.utils.data import DataLoader, Dataset

from petlab.data.transforms import ItemTransform
from petlab.files import write_text_atomic


class Unnormalised(ItemTransform):
    """An image (PIL or uint8 tensor) as floats in [0, 1], as validation sees it (resized to ``side``, centre
    ``image_size`` crop)."""

    def __init__(self, image_size: int, side: int) -> None:
        super().__init__(side, crop=image_size)

    def __call__(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        return super().__call__(image).float() / 255


def channel_stats(
    dataset: Dataset, num_workers: int = 0, cache_dir: Path | None = None, key: str = ""
) -> tuple[list[float], list[float]]:
    """Mean and std over every pixel of every image (streaming sums in float64, not a mean of per-image stds).

    ``dataset`` yields images transformed by :class:`Unnormalised`. The result is cached under
    ``cache_dir`` by ``key``, which must identify the images and the resolution.
    """
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    cached = Path(cache_dir) / "stats" / f"{digest}.json" if cache_dir else None
    if cached is not None and cached.is_file():
        stats = json.loads(cached.read_text())
        return stats["mean"], stats["std"]
    loader = DataLoader(dataset, batch_size=64, num_workers=num_workers)
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    count = 0
    for images, _ in track(loader, description="Computing dataset mean/std", transient=True):
        pixels = images.to(torch.float64).transpose(0, 1).reshape(3, -1)
        total += pixels.sum(dim=1)
        squares += (pixels**2).sum(dim=1)
        count += pixels.shape[1]
    mean = total / count
    std = (squares / count - mean**2).clamp_min(0).sqrt()
    result = [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(cached, json.dumps({"mean": result[0], "std": result[1], "images": len(dataset)}))
    return result
