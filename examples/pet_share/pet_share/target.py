"""The target: the share of the photo that is the pet, a number per image computed from its trimap."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from petlab.data.targets import Mask, Number
from petlab.data.targets.mask import PET, read_trimap, trimap_path, trimap_problem


class PetShare(Number):
    """The fraction of an image's pixels that its trimap marks as the pet (1), from 0 to 1. The border band
    counts as not the pet. Images without a usable trimap have no share (and are skipped, or in a joint
    model carry NaN, which the task leaves out)."""

    what = "pet shares (from the trimaps)"
    whole_image = True  # a crop or a rotation changes how much of the image is the pet

    def __init__(self, name: str = "pet_share") -> None:
        super().__init__(name)

    def missing_from(self, root: Path, layout: str) -> str:
        return Mask().missing_from(root, layout)  # the same files, the same reasons

    def annotate(self, root: Path, layout: str, images: pd.DataFrame) -> pd.DataFrame:
        values, problems = [], []
        for name, width, height in zip(images["name"], images["width"], images["height"], strict=True):
            path = trimap_path(root, name)
            problem = trimap_problem(path, width, height)
            values.append("" if problem else repr(float((read_trimap(path) == PET).mean())))
            problems.append(problem)
        return pd.DataFrame({"value": values, "problem": problems}, index=images.index)
