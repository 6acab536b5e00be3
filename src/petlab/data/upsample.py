"""Balancing the training classes: synthetic images made with scikit-image, or a weighted sampler."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image
from skimage import filters, img_as_ubyte
from skimage.transform import rotate
from skimage.util import random_noise

from petlab.data.targets import Target
from petlab.data.transforms import ItemTransform, load_rgb

UPSAMPLING = ("none", "synthetic", "weighted")
Manipulation = Callable[[np.ndarray, np.random.Generator], np.ndarray]

# The notebook's five manipulations; each synthetic image applies a random non-empty subset of at most half.
MANIPULATIONS: tuple[Manipulation, ...] = (
    lambda image, rng: rotate(image, float(rng.integers(0, 360)), mode="wrap"),
    lambda image, rng: random_noise(image, mode="s&p", amount=0.1, rng=int(rng.integers(2**31))),
    lambda image, rng: random_noise(image, mode="gaussian", var=0.01, rng=int(rng.integers(2**31))),
    lambda image, rng: image[::-1, ::-1],
    lambda image, rng: filters.gaussian(image, sigma=1, channel_axis=-1),
)


def shortfall(labels: pd.Series) -> dict[int, int]:
    """How many images each class lacks to match the largest class."""
    counts = labels.value_counts()
    return {int(label): int(counts.max() - count) for label, count in counts.items() if count < counts.max()}


class SyntheticMinority(torch.utils.data.Dataset):
    """New training images for the minority classes, each a manipulated copy of a random training image.

    Item ``k`` depends only on (seed, k): the same images every epoch, in every worker, in every run with
    that seed. Nothing is written to disk; images are shrunk to ``2 x image_size`` first to keep it cheap.
    """

    def __init__(self, paths: pd.Series, labels: pd.Series, target: Target, seed: int, image_size: int,
                 transform: ItemTransform) -> None:  # fmt: skip
        """``paths`` and ``labels`` (class indices of the label ``target``) of the training images."""
        self.seed, self.max_side, self.transform, self.target = seed, 2 * image_size, transform, target
        self.sources: list[tuple[Sequence[str], int]] = []
        for label, missing in sorted(shortfall(labels).items()):
            self.sources += [(paths[labels == label].tolist(), label)] * missing

    def __len__(self) -> int:
        return len(self.sources)

    def image(self, item: int) -> Image.Image:
        rng = np.random.default_rng([self.seed, item])
        paths, _ = self.sources[item]
        picture = load_rgb(paths[rng.integers(len(paths))])
        picture.thumbnail((self.max_side, self.max_side))
        pixels = np.asarray(picture, dtype=np.float64) / 255
        chosen = rng.choice(len(MANIPULATIONS), size=rng.integers(1, len(MANIPULATIONS) // 2 + 1), replace=False)
        for index in chosen:
            pixels = MANIPULATIONS[index](pixels, rng)
        return Image.fromarray(img_as_ubyte(np.clip(pixels, 0, 1)))

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.image(item)), self.target.tensor(self.sources[item][1])
