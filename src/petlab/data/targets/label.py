"""Labels: one class per image, from a column of the index (``species``, ``breed``; a folder dataset's
class folders)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F

from petlab.data.targets.base import Target
from petlab.errors import PetlabError, shown

NO_LABEL = -100  # what an image without a label carries: cross-entropy's and the metrics' ignore index


class Label(Target):
    """The class of each image in the index column ``name`` (in a folder dataset, its class folder,
    whatever the name). ``classes`` are those present in the data unless given (a checkpoint's)."""

    what = "labels"
    costly_annotations = False
    mixable = True
    stratifies = True

    def __init__(self, name: str, classes: Sequence[str] | None = None) -> None:
        super().__init__(name)
        self.classes: list[str] | None = list(classes) if classes is not None else None

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "classes": self.classes}

    def reading_spec(self) -> dict[str, Any]:
        return {key: value for key, value in self.spec().items() if key != "classes"}

    @property
    def class_names(self) -> list[str]:
        if self.classes is None:
            raise PetlabError(f"the {self.name} classes are not known before the data is set up")
        return self.classes

    def column(self, layout: str) -> str:
        return self.name if layout == "pets" else "label"

    def source(self, layout: str) -> str:
        return f"the {self.name} in the file names" if layout == "pets" else "the class folder"

    def missing_from(self, root: Path, layout: str) -> str:
        if layout == "pets" and self.name not in ("species", "breed"):
            return f"the Oxford-IIIT Pet layout labels images by species and breed: task.target={self.name} is not one"
        return ""

    def annotate(self, root: Path, layout: str, images: pd.DataFrame) -> pd.DataFrame:
        values = images[self.column(layout)].astype(str)
        return pd.DataFrame({"value": values, "problem": values.map(lambda v: "" if v else f"no {self.name}")})

    def fit(self, values: pd.Series) -> None:
        found = sorted(set(values) - {""})
        if self.classes is None:
            self.classes = found
        elif found != self.classes:
            raise PetlabError(f"the dataset's {self.name} classes {shown(found)} differ from the model's "
                              f"{shown(self.classes)}: use a dataset with the same classes")  # fmt: skip

    def describe(self, values: pd.Series) -> str:
        return ""  # the data report's table already counts the classes of the split's strata

    def stored(self, value: str) -> int:
        return self.class_names.index(value) if value else NO_LABEL

    def tensor(self, stored: int) -> torch.Tensor:
        return torch.tensor(stored, dtype=torch.long)

    def mixed(self, batch: torch.Tensor, weight: float) -> torch.Tensor:
        """Class probabilities (N, classes) that sum to one: cross-entropy takes them as they are."""
        one_hot = F.one_hot(batch.long(), len(self.class_names)).float()
        return one_hot * weight + one_hot.flip(0) * (1 - weight)
