"""Seeded, stratified assignment of images to train/val/test."""

from __future__ import annotations

import numpy as np
import pandas as pd

from petlab.checks import real_number
from petlab.errors import PetlabError

SPLITS = ("official", "random")


def _split_sizes(size: int, fractions: np.ndarray) -> np.ndarray:
    """Largest-remainder sizes for one class; a split asked for gets at least one image when possible."""
    exact = fractions * size
    sizes = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - sizes), kind="stable")[: size - sizes.sum()]:
        sizes[i] += 1
    if size >= np.count_nonzero(fractions):
        for i in np.flatnonzero((fractions > 0) & (sizes == 0)):
            sizes[i] += 1
            sizes[np.argmax(sizes)] -= 1
    return sizes


def stratified_assign(labels: pd.Series, fractions: dict[str, float], seed: int) -> pd.Series:
    """Give each row one of ``fractions``' names, class by class, in the given proportions.

    Each class is shuffled with the seed and cut by its split sizes, so every split keeps the class
    balance and the same seed always gives the same assignment.
    """
    rng = np.random.default_rng(seed)
    names = list(fractions)
    wanted = np.array([fractions[name] for name in names])
    assigned = pd.Series("", index=labels.index, dtype=object)
    for label in sorted(labels.unique()):
        members = labels.index[labels == label].to_numpy()
        members = members[rng.permutation(len(members))]
        stops = np.cumsum(_split_sizes(len(members), wanted))
        for name, start, stop in zip(names, np.r_[0, stops[:-1]], stops, strict=True):
            assigned[members[start:stop]] = name
    return assigned


def assign_splits(
    index: pd.DataFrame, label_column: str, split: str, val_fraction: float, test_fraction: float, seed: int,
    folds: int = 0, fold: int = 0, carve_test: bool = False,
) -> pd.Series:  # fmt: skip
    """The split ("train", "val", "test" or "" for unused) of every row of ``index``.

    With ``folds=K`` (K >= 2) the images that would be train or validation are cut into K stratified,
    seeded folds instead: fold ``fold`` is validation, the others train; the test split is unchanged.
    ``carve_test``: the official split's test images are not used, and ``test_fraction`` of its
    trainval images are the test split instead (for targets the release gives trainval images only).
    """
    if folds and (folds < 2 or not 0 <= fold < folds):
        raise PetlabError(f"data.folds={folds} data.fold={fold}: need folds >= 2 and 0 <= fold < folds")
    if split not in SPLITS:
        raise PetlabError(f"unknown data.split={split!r}: choose one of {', '.join(SPLITS)}")
    real_number("data.val_fraction", val_fraction, 0.0)
    real_number("data.test_fraction", test_fraction, 0.0)
    if not 0 < val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise PetlabError(
            f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction} must be fractions "
            "in [0, 1) that leave room for training, e.g. 0.15 and 0.15"
        )
    labels = index[label_column]
    if split == "random":
        fractions = {"train": 1 - val_fraction - test_fraction, "val": val_fraction, "test": test_fraction}
        result = stratified_assign(labels, fractions, seed)
    else:
        result = _official(index, labels, val_fraction, test_fraction if carve_test else None, seed)
    if folds:
        pool = result.isin(["train", "val"])
        names = [str(i) for i in range(folds)]
        assigned = stratified_assign(labels[pool], dict.fromkeys(names, 1 / folds), seed)
        result[pool] = assigned.map(lambda name: "val" if name == str(fold) else "train")
    return result


def _official(
    index: pd.DataFrame, labels: pd.Series, val_fraction: float, test_fraction: float | None, seed: int
) -> pd.Series:  # fmt: skip
    """The dataset's own split: trainval (validation, and with a ``test_fraction`` the test split, carved
    out of it), or train/val/test folders."""
    result = pd.Series("", index=index.index, dtype=object)
    official = index["official_split"]
    trainval = official == "trainval"
    if not (trainval | (official == "train")).any():
        raise PetlabError(
            "data.split=official needs the dataset's own split (annotations/trainval.txt, or train/ and "
            "test/ folders); use data.split=random for a dataset without one"
        )
    fractions = {"train": 1 - val_fraction, "val": val_fraction}
    if test_fraction is not None:
        fractions = {"train": 1 - val_fraction - test_fraction, "val": val_fraction, "test": test_fraction}
    result[trainval] = stratified_assign(labels[trainval], fractions, seed)
    for name in ("train", "val") if test_fraction is not None else ("train", "val", "test"):
        result[official == name] = name
    return result
