"""The training sampler: every epoch's randomness depends only on (seed, epoch), so resume is exact."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


def epoch_seed(seed: int, epoch: int, *more: int) -> int:
    """A well-mixed 32-bit seed from (seed, epoch, ...): nearby inputs give unrelated streams."""
    return int(np.random.SeedSequence([seed, epoch, *more]).generate_state(1)[0])


class EpochSampler(Sampler[int]):
    """Shuffles the training set, or draws it class-balanced with ``weights``, seeded by (seed, epoch).

    Lightning calls ``set_epoch`` before each epoch. That also reseeds ``loader_generator`` (the
    DataLoader's, from which worker seeds come) and, when iteration starts, Python's, NumPy's and torch's
    global generators (dropout; augmentation has its own generator, reseeded with the loader). Nothing
    then depends on what ran before, so a run resumed from a checkpoint continues exactly as an
    uninterrupted one.
    """

    def __init__(
        self, size: int, seed: int, epoch: int = 0, weights: Sequence[float] | None = None,
        loader_generator: torch.Generator | None = None,
    ) -> None:  # fmt: skip
        self.size, self.seed = size, seed
        self.weights = torch.as_tensor(weights, dtype=torch.double) if weights is not None else None
        self.loader_generator = loader_generator
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.loader_generator is not None:
            self.loader_generator.manual_seed(epoch_seed(self.seed, epoch))

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        seed = epoch_seed(self.seed, self.epoch)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        if self.weights is None:
            order = torch.randperm(self.size, generator=generator)
        else:
            order = torch.multinomial(self.weights, self.size, replacement=True, generator=generator)
        return iter(order.tolist())


def class_balanced_weights(targets: Sequence[int]) -> np.ndarray:
    """Per-image weights that make every class equally likely to be drawn."""
    counts = np.bincount(targets)
    return 1.0 / counts[np.asarray(targets)]
