"""Training augmentation on whole batches on the training device: random resized crop, flip, rotation, colour.

Per item in dataloader workers, these cost milliseconds per image on the CPU (a resize for the crop,
another for the rotation, three passes for the colour) and starve a GPU. Here a batch of uint8 images
already on the device gets one affine resampling per image (crop, aspect ratio, flip and rotation in a
single ``grid_sample``) and per-image colour factors: a handful of kernels per batch. The random
parameters come from a generator the data module reseeds from (seed, epoch, rank), so a resumed run is
augmented exactly like an uninterrupted one. (kornia does the same on batches, but draws from torch's
global generator, which dropout shares; a dedicated generator keeps resume exact.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from petlab.data.policy import blend, check_policy, draw, geometric_affine, grey, photometric
from petlab.data.targets import Target
from petlab.errors import PetlabError

# A batch's targets: one tensor, several by key, or none; and the kinds of target they are, alike.
Values = torch.Tensor | Mapping[str, torch.Tensor] | None
Kinds = Target | Mapping[str, Target] | None

OPTIONS = ("crop_scale", "hflip", "rotation", "color_jitter", "policy")
# Options of the label mixing that follows (petlab.data.mixing), which needs the classes first.
MIXING_OPTIONS = ("mixup", "cutmix", "mix_switch")
ASPECT_RATIOS = (3 / 4, 4 / 3)  # torchvision's RandomResizedCrop range


class BatchAugmentation:
    """Random crops of ``crop_scale`` of the area at 3/4-4/3 aspect ratios, horizontal flips with
    probability ``hflip``, rotations up to ``rotation`` degrees and brightness, contrast and saturation
    factors in ``1 +- color_jitter``, each drawn per image, then the operations of an automatic augmentation
    ``policy`` (none, trivial, randaugment; see :mod:`petlab.data.policy`); output float images in [0, 1]
    at ``image_size``.
    """

    def __init__(
        self, image_size: int, crop_scale: Sequence[float] = (1.0, 1.0), hflip: float = 0.0, rotation: float = 0.0,
        color_jitter: float = 0.0, policy: str = "none",
    ) -> None:  # fmt: skip
        crop_scale = tuple(float(value) for value in crop_scale)
        if len(crop_scale) != 2 or not 0 < crop_scale[0] <= crop_scale[1] <= 1:
            raise PetlabError(f"data.augment.crop_scale={list(crop_scale)} must be [low, high] with 0 < low <= high "
                              "<= 1 (fractions of the image area, e.g. [0.75, 1.0])")  # fmt: skip
        if not 0 <= hflip <= 1:
            raise PetlabError(f"data.augment.hflip={hflip} is a probability: give a value from 0 to 1")
        if not 0 <= rotation <= 180:
            raise PetlabError(f"data.augment.rotation={rotation} must be from 0 to 180 degrees")
        if not 0 <= color_jitter < 1:
            raise PetlabError(f"data.augment.color_jitter={color_jitter} must be from 0 to below 1 (e.g. 0.1)")
        self.image_size, self.crop_scale, self.hflip = image_size, crop_scale, float(hflip)
        self.rotation, self.color_jitter = float(rotation), float(color_jitter)
        self.policy = check_policy(policy)
        self.generator = torch.Generator().manual_seed(0)

    @classmethod
    def from_config(cls, image_size: int, options: Mapping[str, Any]) -> BatchAugmentation:
        unknown = sorted(set(options) - set(OPTIONS) - set(MIXING_OPTIONS))
        if unknown:
            valid = ", ".join(OPTIONS + MIXING_OPTIONS)
            raise PetlabError(f"unknown data.augment option {', '.join(unknown)}: use {valid}")
        return cls(image_size, **{key: value for key, value in options.items() if key in OPTIONS})

    @property
    def active(self) -> bool:
        return (
            self.crop_scale != (1.0, 1.0) or self.hflip > 0 or self.rotation > 0 or self.color_jitter > 0
            or self.policy is not None
        )  # fmt: skip

    @property
    def changes_view(self) -> bool:
        """Whether it shows an image other than the whole of it (a crop, a rotation, a policy's geometry)."""
        return self.crop_scale != (1.0, 1.0) or self.rotation > 0 or self.policy is not None

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def _uniform(self, count: int, low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(count, generator=self.generator)

    def _affine(self, count: int) -> torch.Tensor:
        """(count, 3, 3) maps from output to input coordinates, both in [-1, 1]: rotation x crop + offset."""
        area = self._uniform(count, *self.crop_scale)
        ratios = (1.0, 1.0) if self.crop_scale == (1.0, 1.0) else ASPECT_RATIOS
        ratio = self._uniform(count, math.log(ratios[0]), math.log(ratios[1])).exp()
        width, height = (area * ratio).sqrt().clamp(max=1), (area / ratio).sqrt().clamp(max=1)
        centre_x = self._uniform(count, -1, 1) * (1 - width)
        centre_y = self._uniform(count, -1, 1) * (1 - height)
        flip = torch.where(torch.rand(count, generator=self.generator) < self.hflip, -1.0, 1.0)
        angle = self._uniform(count, -self.rotation, self.rotation).deg2rad()
        cos, sin = angle.cos(), angle.sin()
        zero, one = torch.zeros(count), torch.ones(count)
        return torch.stack([
            torch.stack([cos * width * flip, -sin * height, centre_x], dim=1),
            torch.stack([sin * width * flip, cos * height, centre_y], dim=1),
            torch.stack([zero, zero, one], dim=1),
        ], dim=1)  # fmt: skip

    def _jitter(self, count: int, device: torch.device) -> torch.Tensor:
        return self._uniform(count, 1 - self.color_jitter, 1 + self.color_jitter).view(count, 1, 1, 1).to(device)

    def __call__(
        self, images: torch.Tensor, targets: Values = None, kinds: Kinds = None
    ) -> tuple[torch.Tensor, Values]:  # fmt: skip
        """uint8 (N, 3, S, S) images, or floats in [0, 1] -> augmented floats (N, 3, image_size, image_size),
        with their ``targets`` moved by the same crop, flip and rotation as their ``kinds`` say (see
        :meth:`Target.moved`); colour touches the images only."""
        count, device = len(images), images.device
        pixels = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
        theta = self._affine(count)
        drawn = draw(self.policy, count, self.generator) if self.policy else None
        if drawn is not None:  # the policy's geometry acts on the cropped image: crop after policy, in one map
            theta = theta @ geometric_affine(self.policy, drawn)
        theta = theta[:, :2].to(device)
        grid = sampling_grid(theta, self.image_size)
        # Pixels rotated in from outside the image are black, as with torchvision's RandomRotation.
        pixels = F.grid_sample(pixels, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if isinstance(kinds, Target):
            targets = kinds.moved(targets, theta, grid)
        elif kinds is not None:
            targets = {key: kind.moved(targets[key], theta, grid) for key, kind in kinds.items()}
        pixels = self._colour(pixels)
        return (pixels if drawn is None else photometric(self.policy, pixels, drawn)), targets

    def _colour(self, pixels: torch.Tensor) -> torch.Tensor:
        count, device = len(pixels), pixels.device
        if self.color_jitter == 0:
            return pixels
        # Brightness blends with black, contrast with the mean grey, saturation with each pixel's grey.
        pixels = blend(pixels, 0.0, self._jitter(count, device))
        pixels = blend(pixels, grey(pixels).mean(dim=(2, 3), keepdim=True), self._jitter(count, device))
        return blend(pixels, grey(pixels), self._jitter(count, device))


def sampling_grid(theta: torch.Tensor, size: int) -> torch.Tensor:
    """``F.affine_grid(theta, (N, C, size, size), align_corners=False)`` as two broadcast multiply-adds.

    On a CPU, affine_grid's batched matrix product with an inner dimension of 3 costs as much as the
    bilinear resampling itself.
    """
    coords = (torch.arange(size, dtype=theta.dtype, device=theta.device) * 2 + 1) / size - 1
    count = len(theta)
    return (
        theta[:, :, 0].view(count, 1, 1, 2) * coords.view(1, 1, size, 1)
        + theta[:, :, 1].view(count, 1, 1, 2) * coords.view(1, size, 1, 1)
        + theta[:, :, 2].view(count, 1, 1, 2)
    )
