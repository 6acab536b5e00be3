"""Outliers: blank or nearly blank pictures, extreme shapes, and pictures unlike the rest of the data.

"Unlike" is measured on 8 x 8 colour thumbnails: the mean distance to an image's nearest neighbours, over
the median of that distance in the data (and within its class). That finds pictures of another kind (a
drawing, a screenshot, a photo of something else in other colours) and blank ones; it cannot tell a dog
from a car of the same colours, which a network trained on pets would (the label-error section's models).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from petlab.data.signatures import Signature

NEIGHBOURS = 5
BLANK_SPREAD = 0.03  # grey levels' standard deviation (0-1) below which a picture is nearly blank
EXTREME_ASPECT = 3.0  # long side over short side
COLUMNS = ["name", "split", "label", "score", "reasons", "unlike_data", "unlike_class", "spread", "aspect", "width",
           "height", "path"]  # fmt: skip


def unusable(table: pd.DataFrame) -> pd.Series:
    """Which of ``outlier_scores``' rows cannot be trained on whatever their label: nearly blank, or of an
    extreme shape (those only unlike the others are for a person to look at)."""
    return (table["spread"] < BLANK_SPREAD) | (table["aspect"] > EXTREME_ASPECT)


def neighbour_distance(points: np.ndarray, neighbours: int = NEIGHBOURS, block: int = 1024) -> np.ndarray:
    """Each point's mean Euclidean distance to its ``neighbours`` nearest other points (0 for a lone point)."""
    if len(points) < 2:
        return np.zeros(len(points))
    count = min(neighbours, len(points) - 1)
    squares = (points**2).sum(axis=1)
    result = np.empty(len(points))
    for start in range(0, len(points), block):
        part = points[start : start + block]
        distances = squares[start : start + block, None] + squares[None, :] - 2 * part @ points.T
        distances[np.arange(len(part)), np.arange(start, start + len(part))] = np.inf
        nearest = np.partition(np.maximum(distances, 0), count - 1, axis=1)[:, :count]
        result[start : start + len(part)] = np.sqrt(nearest).mean(axis=1)
    return result


def outlier_scores(frame: pd.DataFrame, found: Sequence[Signature], ratio: float) -> pd.DataFrame:
    """Every image of ``frame`` (rows described by ``found``) with its score, highest first: ``unlike_data`` and
    ``unlike_class`` (its neighbour distance over the median one), ``spread`` and ``aspect``; ``reasons`` says
    why it is flagged ("" when it is not): nearly blank, extreme aspect ratio, or unlike more than ``ratio``."""
    table = frame.reset_index(drop=True).copy()
    thumbnails = np.stack([signature.thumbnail for signature in found]).astype(np.float64)
    overall = neighbour_distance(thumbnails)
    table["unlike_data"] = overall / max(np.median(overall), 1e-9)
    table["unlike_class"] = 1.0
    for _, members in table.groupby("label"):
        within = neighbour_distance(thumbnails[members.index])
        table.loc[members.index, "unlike_class"] = within / max(np.median(within), 1e-9)
    table["spread"] = [signature.spread for signature in found]
    table["aspect"] = np.maximum(table["width"], table["height"]) / np.maximum(
        np.minimum(table["width"], table["height"]), 1
    )
    reasons = []
    for row in table.itertuples():
        found_reasons = []
        if row.spread < BLANK_SPREAD:
            found_reasons.append(f"nearly blank (grey spread {row.spread:.3f})")
        if row.aspect > EXTREME_ASPECT:
            found_reasons.append(f"extreme aspect ratio {row.aspect:.1f}:1")
        if row.unlike_data > ratio:
            found_reasons.append(f"unlike the data ({row.unlike_data:.1f}x the usual distance)")
        elif row.unlike_class > ratio:
            found_reasons.append(f"unlike its class ({row.unlike_class:.1f}x the usual distance)")
        reasons.append("; ".join(found_reasons))
    table["reasons"] = reasons
    blank = (BLANK_SPREAD - table["spread"]).clip(lower=0) * 100
    table["score"] = (
        np.maximum(table["unlike_data"], table["unlike_class"]) + blank + (table["aspect"] > EXTREME_ASPECT)
    )
    return table.sort_values("score", ascending=False)[COLUMNS].reset_index(drop=True)
