"""Automatic augmentation policies (TrivialAugment, RandAugment) on whole batches on the training device.

Each image draws its own operations from the fourteen of TrivialAugment's wide search space and a
magnitude for each. The geometric ones (shear, translate, rotate) are returned as one affine map per
image, which :class:`petlab.data.augment.BatchAugmentation` folds into its crop and flip: a single
resampling for all of them, which moves masks and boxes with the image. The photometric ones run after,
each on the images that drew it, with per-image strengths. Every draw comes from the caller's generator,
so the policy is reseeded with the rest of the batch augmentation and resume stays exact.

``trivial`` (Müller & Hutter, 2021): one operation per image, its magnitude uniform over the range.
``randaugment`` (Cubuk et al., 2020): two operations per image at magnitude 9 of 30.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms.v2.functional import equalize

from petlab.errors import PetlabError

GEOMETRIC = ("shear_x", "shear_y", "translate_x", "translate_y", "rotate")
PHOTOMETRIC = ("identity", "brightness", "color", "contrast", "sharpness", "posterize", "solarize", "autocontrast",
               "equalize")  # fmt: skip
OPERATIONS = GEOMETRIC + PHOTOMETRIC
GREY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale
# PIL's ImageFilter.SMOOTH kernel, which the sharpness enhancement blends away from.
SMOOTH = ((1.0, 1.0, 1.0), (1.0, 5.0, 1.0), (1.0, 1.0, 1.0))


@dataclass(frozen=True)
class Policy:
    """The strongest value of each operation (at magnitude 1) and how many operations an image gets.
    ``magnitude``: the fixed fraction of the range (RandAugment), or None for one drawn per operation."""

    operations_per_image: int
    magnitude: float | None
    shear: float  # x += shear * y, in the image's [-1, 1] coordinates
    translate: float  # a fraction of the side
    rotate: float  # degrees
    enhance: float  # brightness, colour, contrast and sharpness factors 1 +- enhance
    posterize_bits: int  # the fewest bits kept


# The ranges of torchvision's TrivialAugmentWide and RandAugment (translation: 32 of 224 px, 150 of 331 px).
POLICIES = {
    "trivial": Policy(1, None, shear=0.99, translate=32 / 224, rotate=135.0, enhance=0.99, posterize_bits=2),
    "randaugment": Policy(2, 9 / 30, shear=0.3, translate=150 / 331, rotate=30.0, enhance=0.9, posterize_bits=4),
}
CHOICES = ("none", *POLICIES)


def check_policy(name: str) -> Policy | None:
    if name not in CHOICES:
        raise PetlabError(f"data.augment.policy={name} is not a policy: choose {', '.join(CHOICES)}")
    return POLICIES.get(name)


@dataclass
class PolicyDraw:
    """What a batch drew: an operation and a signed magnitude in [-1, 1] per image and slot, (N, slots)."""

    operations: torch.Tensor
    magnitudes: torch.Tensor

    def strength(self, operation: str) -> torch.Tensor:
        """Each image's signed magnitude for ``operation`` (0 where it was not drawn), summed over slots."""
        chosen = self.operations == OPERATIONS.index(operation)
        return (self.magnitudes * chosen).sum(dim=1)

    def drew(self, operation: str) -> torch.Tensor:
        return (self.operations == OPERATIONS.index(operation)).any(dim=1)


def draw(policy: Policy, count: int, generator: torch.Generator) -> PolicyDraw:
    shape = (count, policy.operations_per_image)
    operations = torch.randint(len(OPERATIONS), shape, generator=generator)
    if policy.magnitude is None:
        magnitudes = torch.randint(31, shape, generator=generator) / 30
    else:
        magnitudes = torch.full(shape, policy.magnitude)
    signs = torch.where(torch.rand(shape, generator=generator) < 0.5, -1.0, 1.0)
    return PolicyDraw(operations, magnitudes * signs)


def geometric_affine(policy: Policy, drawn: PolicyDraw) -> torch.Tensor:
    """(N, 3, 3) maps from the output image's [-1, 1] coordinates to those before the geometric operations
    (a random sign makes each map as likely as its inverse, so the maps are drawn directly)."""
    count = len(drawn.operations)
    eye = torch.eye(3).repeat(count, 1, 1)
    shear, translate = eye.clone(), eye.clone()
    shear[:, 0, 1] = drawn.strength("shear_x") * policy.shear
    shear[:, 1, 0] = drawn.strength("shear_y") * policy.shear
    translate[:, 0, 2] = drawn.strength("translate_x") * policy.translate * 2
    translate[:, 1, 2] = drawn.strength("translate_y") * policy.translate * 2
    angle = (drawn.strength("rotate") * policy.rotate).deg2rad()
    rotate = eye.clone()
    rotate[:, 0, 0], rotate[:, 0, 1] = angle.cos(), -angle.sin()
    rotate[:, 1, 0], rotate[:, 1, 1] = angle.sin(), angle.cos()
    return translate @ rotate @ shear


def blend(pixels: torch.Tensor, other: torch.Tensor | float, factor: torch.Tensor) -> torch.Tensor:
    """``factor x pixels + (1 - factor) x other`` per image, clamped to [0, 1] (how PIL's enhancers work),
    in place on ``pixels``: a fresh tensor in every caller, so no copy is made."""
    return pixels.sub_(other).mul_(factor.view(-1, 1, 1, 1)).add_(other).clamp_(0, 1)


def grey(pixels: torch.Tensor) -> torch.Tensor:
    weights = torch.tensor(GREY_WEIGHTS, device=pixels.device).view(1, 3, 1, 1)
    return (pixels * weights).sum(dim=1, keepdim=True)


def smoothed(pixels: torch.Tensor) -> torch.Tensor:
    """PIL's SMOOTH filter inside, the border pixels kept (as PIL's sharpness enhancement does)."""
    kernel = torch.tensor(SMOOTH, device=pixels.device) / 13
    filtered = F.conv2d(pixels, kernel.expand(3, 1, 3, 3).contiguous(), groups=3)
    result = pixels.clone()
    result[..., 1:-1, 1:-1] = filtered
    return result


def posterized(pixels: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    levels = (pixels * 255).round().to(torch.int32)
    mask = (256 - 2 ** (8 - bits)).to(torch.int32).view(-1, 1, 1, 1)
    return (levels & mask).float() / 255


def autocontrasted(pixels: torch.Tensor) -> torch.Tensor:
    low = pixels.amin(dim=(2, 3), keepdim=True)
    high = pixels.amax(dim=(2, 3), keepdim=True)
    spread = high - low
    return torch.where(spread > 0, (pixels - low) / spread.clamp(min=1e-6), pixels)


def equalized(pixels: torch.Tensor) -> torch.Tensor:
    return equalize((pixels * 255).round().to(torch.uint8)).float() / 255


def photometric(policy: Policy, pixels: torch.Tensor, drawn: PolicyDraw) -> torch.Tensor:
    """The drawn colour operations on float images in [0, 1], each on the images that drew it."""
    strength = policy.enhance
    operations: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
        "brightness": lambda x, m: blend(x, 0.0, 1 + m * strength),
        "color": lambda x, m: blend(x, grey(x), 1 + m * strength),
        "contrast": lambda x, m: blend(x, grey(x).mean(dim=(2, 3), keepdim=True), 1 + m * strength),
        "sharpness": lambda x, m: blend(x, smoothed(x), 1 + m * strength),
        "posterize": lambda x, m: posterized(x, 8 - (m.abs() * (8 - policy.posterize_bits)).round()),
        "solarize": lambda x, m: torch.where(x >= (1 - m.abs()).view(-1, 1, 1, 1), 1 - x, x),
        "autocontrast": lambda x, m: autocontrasted(x),
        "equalize": lambda x, m: equalized(x),
    }
    for slot in range(drawn.operations.shape[1]):
        for name, operation in operations.items():
            rows = (drawn.operations[:, slot] == OPERATIONS.index(name)).nonzero()[:, 0]
            if len(rows):
                magnitudes = drawn.magnitudes[rows, slot].to(pixels.device)
                pixels[rows.to(pixels.device)] = operation(pixels[rows.to(pixels.device)], magnitudes)
    return pixels
