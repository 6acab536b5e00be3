"""Exact and near duplicates: groups of images that are one photo, and whether a group leaks across splits."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from petlab.data.curation import SPLIT_RANK
from petlab.data.signatures import Signature, close_pairs, groups_of, photo_distance

COLUMNS = ["group", "name", "split", "label", "kind", "distance", "leak", "conflicting_labels", "keep", "width",
           "height", "path"]  # fmt: skip


def duplicate_groups(frame: pd.DataFrame, found: Sequence[Signature], max_distance: int) -> pd.DataFrame:
    """One row per image that has a copy in ``frame`` (whose rows ``found`` describe, in order): its group
    (numbered from 1, the largest first), ``kind`` exact (the same bytes as another member) or near, its
    ``distance`` in bits to the group's kept image, whether the group crosses splits (``leak``) or carries
    different labels, and ``keep``: the one image of the group a cleaned dataset keeps (the earliest split,
    then the most pixels)."""
    pairs = close_pairs([signature.phashes for signature in found], max_distance)
    table = frame.reset_index(drop=True).assign(
        group=groups_of(len(frame), pairs), digest=[signature.digest for signature in found],
        phashes=[signature.phashes for signature in found],
    )  # fmt: skip
    table = table[table.groupby("group")["group"].transform("size") > 1].copy()
    if table.empty:
        return pd.DataFrame(columns=COLUMNS)
    table["rank"] = table["split"].map(SPLIT_RANK).fillna(len(SPLIT_RANK))
    table = table.sort_values(["group", "rank", "width", "height", "name"], ascending=[True, True, False, False, True])
    table["keep"] = ~table.duplicated("group")
    kept = table.groupby("group")["phashes"].transform("first")
    table["distance"] = [photo_distance(own, first) for own, first in zip(table["phashes"], kept, strict=True)]
    table["kind"] = table.groupby(["group", "digest"])["digest"].transform("size").map(
        lambda size: "exact" if size > 1 else "near"
    )  # fmt: skip
    by_group = table.groupby("group")
    table["leak"] = by_group["split"].transform("nunique") > 1
    table["conflicting_labels"] = by_group["label"].transform("nunique") > 1
    sizes = by_group["group"].transform("size")
    order = table.assign(size=sizes).sort_values(["size", "group"], ascending=[False, True])["group"].unique()
    table["group"] = table["group"].map({group: number for number, group in enumerate(order, start=1)})
    return table.sort_values(["group", "keep"], ascending=[True, False])[COLUMNS].reset_index(drop=True)
