"""Numbers: one real number per image (regression), from a CSV file of the dataset."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from petlab.data.targets.base import Target
from petlab.errors import PetlabError


class Number(Target):
    """A real number per image, named ``name``. An image without a finite value carries NaN, which a task
    leaves out of its loss and metrics. Numbers mix linearly (MixUp, CutMix). Where the numbers come from is
    the subclass's :meth:`annotate` (see :class:`CsvNumber`)."""

    what = "numbers"
    mixable = True

    def describe(self, values: pd.Series) -> str:
        numbers = pd.to_numeric(values, errors="coerce").dropna()
        if numbers.empty:
            return ""
        return (f"{self.name}: {len(numbers)} images, mean {numbers.mean():.4g}, std {numbers.std():.4g}, "
                f"from {numbers.min():.4g} to {numbers.max():.4g}.")  # fmt: skip

    def stored(self, value: str) -> float:
        return float(value) if value else math.nan

    def tensor(self, stored: float) -> torch.Tensor:
        return torch.tensor(stored, dtype=torch.float32)

    def mixed(self, batch: torch.Tensor, weight: float) -> torch.Tensor:
        return batch * weight + batch.flip(0) * (1 - weight)


class CsvNumber(Number):
    """A number per image read from ``root/file``, a CSV file with a column ``image`` (the image's name
    without its extension, as in ``images/``) and a column ``name``."""

    costly_annotations = False  # one small file, read again each time: no cache to go stale

    def __init__(self, name: str, file: str) -> None:
        super().__init__(name)
        self.file = file

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "file": self.file}

    def missing_from(self, root: Path, layout: str) -> str:
        if not (Path(root) / self.file).is_file():
            return f"there is no {Path(root) / self.file} (a CSV file with columns image and {self.name})"
        return ""

    def annotate(self, root: Path, layout: str, images: pd.DataFrame) -> pd.DataFrame:
        path = Path(root) / str(self.file)
        try:
            table = pd.read_csv(path, dtype={"image": str})
        except (OSError, ValueError) as error:
            raise PetlabError(f"cannot read {path}: {error}") from error
        if not {"image", self.name} <= set(table.columns):
            columns = ", ".join(map(str, table.columns))
            raise PetlabError(f"{path} has the columns {columns}: it needs image and {self.name}")
        numbers = dict(zip(table["image"], pd.to_numeric(table[self.name], errors="coerce"), strict=True))
        found = images["name"].map(numbers).astype(float)
        problems = found.map(lambda value: "" if math.isfinite(value) else f"no {self.name} in {self.file}")
        return pd.DataFrame({"value": found.map(repr).where(problems == "", ""), "problem": problems})
