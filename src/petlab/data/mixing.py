"""MixUp and CutMix of batches on the training device, their targets mixed as their kind says.

A batch is mixed with itself in reverse order, with one mixing weight per batch drawn from
Beta(alpha, alpha) (timm's batch mode): MixUp blends whole images, CutMix pastes a box of the partner
image whose area is the partner's share. The targets are mixed in the same proportions by their kind (see
``Target.mixed``): labels become class probabilities, which cross-entropy takes as they are. The draws
come from the batch augmentation's generator, so resume stays exact (torchvision's MixUp and CutMix draw
from torch's global generator, which dropout shares).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from petlab.data.targets import Target
from petlab.errors import PetlabError


class BatchMixing:
    """MixUp with ``Beta(mixup, mixup)`` weights and CutMix with ``Beta(cutmix, cutmix)`` areas (0: off);
    when both are on, a batch gets CutMix with probability ``switch``."""

    def __init__(self, mixup: float = 0.0, cutmix: float = 0.0, switch: float = 0.5,
                 generator: torch.Generator | None = None) -> None:  # fmt: skip
        for name, alpha in (("mixup", mixup), ("cutmix", cutmix)):
            if not isinstance(alpha, int | float) or alpha < 0:
                raise PetlabError(f"data.augment.{name}={alpha} is a Beta distribution's alpha: give 0 (off) or more "
                                  "(0.2 to 1.0 are usual)")  # fmt: skip
        if not isinstance(switch, int | float) or not 0 <= switch <= 1:
            raise PetlabError(f"data.augment.mix_switch={switch} is a probability: give a value from 0 to 1")
        self.mixup, self.cutmix, self.switch = float(mixup), float(cutmix), float(switch)
        self.generator = generator or torch.Generator().manual_seed(0)

    @property
    def active(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    def _beta(self, alpha: float) -> float:
        seed = int(torch.randint(2**62, (1,), generator=self.generator))
        return float(np.random.default_rng(seed).beta(alpha, alpha))

    def __call__(
        self, images: torch.Tensor, targets: Any, kinds: Target | Mapping[str, Target]
    ) -> tuple[torch.Tensor, Any]:  # fmt: skip
        """Images (N, 3, S, S), uint8 or floats in [0, 1], and their targets (one tensor, or several by key, of
        ``kinds``) -> mixed float images and targets (labels: (N, classes) probabilities that sum to one)."""
        pixels = images.float().div(255) if images.dtype == torch.uint8 else images.clone()
        switched = self.mixup == 0 or float(torch.rand(1, generator=self.generator)) < self.switch
        use_cutmix = self.cutmix > 0 and switched
        weight = self._beta(self.cutmix if use_cutmix else self.mixup)
        partner = pixels.flip(0)
        if use_cutmix:
            weight = self._paste(pixels, partner, weight)
        else:
            pixels = pixels.mul_(weight).add_(partner, alpha=1 - weight)
        if isinstance(kinds, Target):
            return pixels, kinds.mixed(targets, weight)
        return pixels, {key: kind.mixed(targets[key], weight) for key, kind in kinds.items()}

    def _paste(self, pixels: torch.Tensor, partner: torch.Tensor, weight: float) -> float:
        """Paste a box of ``1 - weight`` of the area from ``partner`` (clipped at the borders); return the
        share of the image that is still its own."""
        height, width = pixels.shape[-2:]
        cut_h, cut_w = round(height * (1 - weight) ** 0.5), round(width * (1 - weight) ** 0.5)
        centre_y = int(torch.randint(height, (1,), generator=self.generator))
        centre_x = int(torch.randint(width, (1,), generator=self.generator))
        top, bottom = max(centre_y - cut_h // 2, 0), min(centre_y + cut_h - cut_h // 2, height)
        left, right = max(centre_x - cut_w // 2, 0), min(centre_x + cut_w - cut_w // 2, width)
        pixels[..., top:bottom, left:right] = partner[..., top:bottom, left:right]
        return 1 - (bottom - top) * (right - left) / (height * width)
