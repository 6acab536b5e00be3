"""What a user decided about the data after an audit, applied to a run without touching the dataset:
``data.exclude`` (a text file of image names to leave out), ``data.relabel`` (a CSV of name, target, label
that replaces given labels) and ``data.dedupe=leaks`` (the copies of one photo in validation or test are
dropped when the photo is in an earlier split). The files' SHA-256 go into the data report and the run's
metrics, so a result says which decisions it was made with.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from petlab.data.signatures import DEFAULT_MAX_DISTANCE, cached_phashes, close_pairs, groups_of
from petlab.data.targets import Target
from petlab.errors import PetlabError

log = logging.getLogger(__name__)

DEDUPE = ("none", "leaks")
SPLIT_RANK = {"train": 0, "val": 1, "test": 2}
RELABEL_COLUMNS = ("name", "target", "label")


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _readable(option: str, path: str | Path) -> Path:
    found = Path(path).expanduser()
    if not found.is_file():
        raise PetlabError(f"{option}={path}: no such file; give the path of the file the audit wrote or you edited")
    return found


@dataclass
class Curation:
    """``data.exclude``, ``data.relabel`` and ``data.dedupe``, checked; ``files``: each given file's path and
    SHA-256 by option, for the record."""

    exclude: Path | None = None
    relabel: Path | None = None
    dedupe: str = "none"
    files: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def from_options(cls, exclude: str | Path | None, relabel: str | Path | None, dedupe: str) -> Curation:
        if dedupe not in DEDUPE:
            raise PetlabError(f"unknown data.dedupe={dedupe!r}: choose one of {', '.join(DEDUPE)}")
        paths = {"data.exclude": exclude and _readable("data.exclude", exclude),
                 "data.relabel": relabel and _readable("data.relabel", relabel)}  # fmt: skip
        files = {option: {"path": str(path.resolve()), "sha256": file_sha256(path)}
                 for option, path in paths.items() if path}  # fmt: skip
        return cls(paths["data.exclude"], paths["data.relabel"], dedupe, files)

    def describe(self, option: str) -> str:
        return f"{option}={self.files[option]['path']} (sha256 {self.files[option]['sha256'][:12]})"

    def excluded_names(self) -> set[str]:
        """The names ``data.exclude`` lists: one per line, ``#`` starts a comment."""
        lines = (line.split("#", 1)[0].strip() for line in self.exclude.read_text(errors="replace").splitlines())
        return {line for line in lines if line}

    def exclude_from(self, index: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
        """``index`` without the excluded images; those images as skipped files; the data report's note."""
        if self.exclude is None:
            return index, index.iloc[:0][["name"]].assign(problem=""), []
        names = self.excluded_names()
        unknown = sorted(names - set(index["name"]))
        if unknown:
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            log.warning(f"data.exclude lists {len(unknown)} files that are not in the dataset, ignored: "
                        f"{', '.join(unknown[:10])}{more}")  # fmt: skip
        dropped = index["name"].isin(names)
        skipped = index.loc[dropped, ["name"]].assign(problem=f"excluded by {self.describe('data.exclude')}")
        note = f"{self.describe('data.exclude')}: {int(dropped.sum())} images excluded"
        return index[~dropped], skipped, [note + (f", {len(unknown)} names not found." if unknown else ".")]

    def relabel_in(self, frame: pd.DataFrame, targets: dict[str, Target]) -> list[str]:
        """Replace the given labels of ``frame`` (its ``value/KEY`` columns) as ``data.relabel`` says; the note."""
        if self.relabel is None:
            return []
        table = pd.read_csv(self.relabel, dtype=str, keep_default_na=False, comment="#")
        if missing := [column for column in RELABEL_COLUMNS if column not in table.columns]:
            raise PetlabError(f"data.relabel={self.relabel} has no {', '.join(missing)} column: it needs "
                              f"{', '.join(RELABEL_COLUMNS)} (the audit's relabel.csv has them)")  # fmt: skip
        labels = {target.name: key for key, target in targets.items() if target.stratifies}
        if unknown := sorted(set(table["target"]) - set(labels)):
            raise PetlabError(
                f"data.relabel={self.relabel} relabels {', '.join(unknown)}, which this task does not learn as "
                f"labels ({', '.join(labels) or 'none'}): remove those rows or change task="
            )
        changed = 0
        for name, rows in table.groupby("target"):
            column = f"value/{labels[name]}"
            known = set(frame[column]) - {""}
            if strange := sorted(set(rows["label"]) - known):
                raise PetlabError(f"data.relabel={self.relabel}: {', '.join(strange)} is not a {name} of this "
                                  f"dataset ({', '.join(sorted(known))})")  # fmt: skip
            new = frame["name"].map(dict(zip(rows["name"], rows["label"], strict=True)))
            replace = new.notna() & (new != frame[column])
            frame.loc[replace, column] = new[replace]
            changed += int(replace.sum())
        return [f"{self.describe('data.relabel')}: {changed} labels changed."]

    def dedupe_leaks(
        self, frame: pd.DataFrame, cache_dir: Path | None = None, fingerprint: str = ""
    ) -> tuple[pd.DataFrame, list[str]]:  # fmt: skip
        """``frame`` without the validation and test copies of photos that an earlier split has (train before
        validation before test), and the note; the pictures' hashes are cached with the index's
        ``fingerprint`` (see :func:`cached_phashes`)."""
        if self.dedupe == "none":
            return frame, []
        hashes = cached_phashes([str(path) for path in frame["path"]], cache_dir, fingerprint)
        pairs = close_pairs(hashes, DEFAULT_MAX_DISTANCE)
        groups = pd.Series(groups_of(len(frame), pairs), index=frame.index)
        rank = frame["split"].map(SPLIT_RANK)
        first = rank.groupby(groups).transform("min")
        drop = rank > first
        counts = frame.loc[drop, "split"].value_counts()
        dropped = ", ".join(f"{counts[split]} from {split}" for split in ("val", "test") if split in counts)
        return frame[~drop].copy(), [f"data.dedupe=leaks: {int(drop.sum())} copies of photos in an earlier split "
                                     f"dropped ({dropped or 'none'})."]  # fmt: skip
