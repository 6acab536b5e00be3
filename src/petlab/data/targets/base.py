"""What a target is to petlab: one kind of thing to learn about each image.

A target owns everything that depends on its kind, as fastai's blocks and torchvision's ``tv_tensors`` do:
what the index records for it and why an image cannot use it (reading and checking its annotation files),
the value an item carries and what an image without one gets, whether it is cached with the decoded
images, how a centre crop and each geometric augmentation move it, whether and how MixUp and CutMix mix
it, and how items are collated into a batch. The data module, the cache, the item transforms, the batch
augmentation, label mixing and the data report only talk to this interface: a new kind of target is one
subclass, in petlab or in a package of the user's own.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from petlab.errors import PetlabError


def class_path(cls: type) -> str:
    """``module.Class``: how specs and configs name a class."""
    return f"{cls.__module__}.{cls.__qualname__}"


class Target(ABC):
    """One kind of target, read for images of a dataset under ``name`` (the index's, the cache's and the
    messages' name for it: ``species``, ``trimap``, ``box``)."""

    #: What the dataset's files hold, for messages ("trimaps", "head boxes").
    what: ClassVar[str]
    #: Per-pixel targets (masks) are decoded at the images' pixel grid, cached beside them and resampled
    #: pixel by pixel; the others are a few numbers per image, kept in the frame.
    per_pixel: ClassVar[bool] = False
    #: Reading the annotations opens a file per image: the data module caches what ``annotate`` returns.
    costly_annotations: ClassVar[bool] = True
    #: Whether MixUp and CutMix can mix it (see :meth:`mixed`).
    mixable: ClassVar[bool] = False
    #: Whether the splits can be stratified by it (a label's classes).
    stratifies: ClassVar[bool] = False
    #: A value of the whole image as it is (the share of it that is the pet): a crop or a rotation would
    #: change it, and it cannot be moved with them, so the data module refuses them.
    whole_image: ClassVar[bool] = False

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise PetlabError(f"a target needs a name, not {name!r}")
        self.name = name

    def spec(self) -> dict[str, Any]:
        """Plain values that rebuild this target, with its class (saved in checkpoints)."""
        return {"class": class_path(type(self)), "name": self.name}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Target:
        return cls(**{key: value for key, value in spec.items() if key != "class"})

    def same_reading(self, other: Target) -> bool:
        """Whether ``other`` reads the same values (its spec without what :meth:`fit` learns)."""
        return type(self) is type(other) and self.reading_spec() == other.reading_spec()

    def reading_spec(self) -> dict[str, Any]:
        """What decides the values the annotations give: the cache key of :meth:`annotate`'s result."""
        return self.spec()

    # What the dataset has ---------------------------------------------------------------------------

    def source(self, layout: str) -> str:
        """What of a dataset in ``layout`` the values are read from, in words (the class folder), so that a joint
        task of two targets of one kind reading the same is refused; "" where no two can."""
        return ""

    def missing_from(self, root: Path, layout: str) -> str:
        """Why the dataset at ``root`` (``layout``: pets or folder) has none of these targets at all, and
        what to use instead; "" when it may have them."""
        return ""

    @abstractmethod
    def annotate(self, root: Path, layout: str, images: pd.DataFrame) -> pd.DataFrame:
        """For the readable images of the index (its rows: path, name, species, breed, label,
        official_split, width, height ...), a frame with the same index and two text columns: ``value``,
        what the index keeps of the image's target, and ``problem``, why the image cannot use it ("" when
        it can)."""

    def fit(self, values: pd.Series) -> None:
        """Learn what the used images' values say (a label's classes); check them against what is fixed."""
        return

    def describe(self, values: pd.Series) -> str:
        """A line for the data report on the values of the images used ("" for none)."""
        return ""

    # Items -------------------------------------------------------------------------------------------

    @abstractmethod
    def stored(self, value: str) -> Any:
        """What an item is built from, from the index's ``value`` ("" for an image without one)."""

    def decode(self, stored: Any, side: int) -> np.ndarray:
        """A per-pixel target at ``side`` x ``side`` (what the cache keeps); per-pixel targets only."""
        raise NotImplementedError(f"{type(self).__name__} is not a per-pixel target")

    @abstractmethod
    def tensor(self, stored: Any) -> torch.Tensor:
        """An item's target as a tensor, from :meth:`stored`'s value (or for per-pixel targets the array
        :meth:`decode` gave)."""

    def cropped(self, value: torch.Tensor, side: int, crop: int | None) -> torch.Tensor:
        """The target of an image resized to ``side`` once the centre ``crop`` square is kept (``None``:
        the whole image). Image-level targets stay as they are."""
        return value

    def moved(self, batch: torch.Tensor, theta: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """A batch of targets after the affine ``theta`` (N, 2, 3), output to input coordinates in
        [-1, 1], that the augmentation samples the images on ``grid`` with (a crop, flip, rotation).
        Targets that do not depend on where things are (a label) stay as they are."""
        return batch

    def mixed(self, batch: torch.Tensor, weight: float) -> torch.Tensor:
        """The targets of a batch mixed with the batch reversed: ``weight`` of each image's own and
        ``1 - weight`` of its partner's (MixUp and CutMix). Only for :attr:`mixable` targets."""
        raise PetlabError(f"{self.what} cannot be mixed")

    def collate(self, values: Sequence[torch.Tensor]) -> torch.Tensor:
        """A batch from items' targets."""
        return torch.stack(list(values))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"
