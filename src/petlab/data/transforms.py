"""Image loading and the train/eval transform pipelines."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms import v2

from petlab.errors import PetlabError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_rgb(path: str | Path) -> Image.Image:
    """Open any image the dataset holds (JPEG, PNG, GIF; grey, palette, RGBA, CMYK) as 3-channel RGB."""
    try:
        with Image.open(path) as image:
            image.seek(0)  # first frame of a GIF
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                # Transparent pixels keep arbitrary colours underneath: composite on white instead.
                rgba = image.convert("RGBA")
                canvas = Image.new("RGB", rgba.size, (255, 255, 255))
                canvas.paste(rgba, mask=rgba.getchannel("A"))
                return canvas
            return image.convert("RGB")
    except OSError as error:
        raise PetlabError(f"cannot read image {path}: {error}") from error


def build_transform(
    image_size: int,
    train: bool,
    crop_scale: Sequence[float] = (1.0, 1.0),
    hflip: float = 0.0,
    rotation: float = 0.0,
    color_jitter: float = 0.0,
) -> v2.Compose:
    """PIL image or uint8 tensor -> uint8 CHW tensor at ``image_size``; augmentation only when ``train``.

    Images stay uint8 until they are batched: the model normalises whole batches (see
    ``PetClassifier.forward``), which is cheaper than per item and moves 4x fewer bytes between processes.
    """
    steps: list[torch.nn.Module] = [v2.ToImage()]
    if train and tuple(crop_scale) != (1.0, 1.0):
        steps.append(v2.RandomResizedCrop(image_size, scale=tuple(crop_scale), antialias=True))
    else:
        steps.append(v2.Resize((image_size, image_size), antialias=True))
    if train and hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    if train and rotation > 0:
        steps.append(v2.RandomRotation(rotation))
    if train and color_jitter > 0:
        steps.append(v2.ColorJitter(color_jitter, color_jitter, color_jitter))
    return v2.Compose(steps)


class ImageDataset(torch.utils.data.Dataset):
    """Images from paths with integer targets, loaded as RGB and transformed."""

    def __init__(self, paths: Sequence[str], targets: Sequence[int], transform: v2.Compose) -> None:
        self.paths = list(paths)
        self.targets = [int(t) for t in targets]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int]:
        return self.transform(load_rgb(self.paths[item])), self.targets[item]
