"""How well an audit found the faults planted in a generated sample (``petlab.data.sample --plant-faults``):
precision and recall per section, for ``petlab.bench --task audit`` and the tests."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def _table(audit_dir: Path, section: str) -> pd.DataFrame:
    path = audit_dir / f"{section}.csv"
    return pd.read_csv(path, dtype={"name": str}, keep_default_na=False) if path.is_file() else pd.DataFrame()


def _rates(found: set[str], planted: set[str]) -> dict[str, float]:
    hits = len(found & planted)
    return {"planted": len(planted), "flagged": len(found), "precision": hits / len(found) if found else 1.0,
            "recall": hits / len(planted) if planted else 1.0}  # fmt: skip


def score(audit_dir: Path, planted_csv: Path) -> dict[str, dict[str, float]]:
    """Per section: planted and flagged counts, precision and recall. Duplicates count pairs (a planted copy
    is found when it shares a group with its original; a flagged pair is a group member with its kept image)
    and ``leaks`` the planted pairs found in a group that crosses splits."""
    planted = pd.read_csv(planted_csv, keep_default_na=False, dtype=str)
    by_kind = {kind: rows for kind, rows in planted.groupby("kind")}
    result = {}
    duplicates = _table(audit_dir, "duplicates")
    if len(duplicates):
        group_of = dict(zip(duplicates["name"], duplicates["group"], strict=True))
        kept = duplicates[duplicates["keep"].astype(str) == "True"].set_index("group")["name"]
        found_pairs = {frozenset((name, kept[group])) for name, group in group_of.items() if kept[group] != name}
        copies = by_kind.get("copy", planted.iloc[:0])
        true_pairs = {frozenset(pair) for pair in zip(copies["name"], copies["original"], strict=True)}
        # A planted pair is found when both share a group (the kept image may be a third member).
        joined = {pair for pair in true_pairs if len({group_of.get(name) for name in pair} - {None}) == 1
                  and all(name in group_of for name in pair)}  # fmt: skip
        members = {name for pair in true_pairs for name in pair}
        right = {pair for pair in found_pairs if pair <= members}
        result["duplicates"] = {"planted": len(true_pairs), "flagged": len(found_pairs),
                                "precision": len(right) / len(found_pairs) if found_pairs else 1.0,
                                "recall": len(joined) / len(true_pairs) if true_pairs else 1.0}  # fmt: skip
        leaking = set(duplicates.loc[duplicates["leak"].astype(str) == "True", "name"])
        result["leaks"] = {"planted": len(true_pairs), "recall": sum(pair <= leaking for pair in joined) /
                           max(len(true_pairs), 1)}  # fmt: skip
    for section, kind in (("labels", "flipped"), ("outliers", "blank"), ("annotations", "annotation")):
        if (audit_dir / f"{section}.csv").is_file():  # the section ran (its table may be empty)
            table = _table(audit_dir, section)
            rows = by_kind.get(kind, planted.iloc[:0])
            result[section] = _rates(set(table["name"]) if len(table) else set(), set(rows["name"]))
    return result
