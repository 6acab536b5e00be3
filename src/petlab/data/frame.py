"""The frame of a run's images: which images of the index are used, their targets' values and their splits.

A plain function of the index and the targets (see :class:`petlab.data.targets.Target`): it names no kind
of target. One target: images without a usable value are skipped and listed. Several (a joint task): every
readable image is kept, and those without a target's value carry what its kind gives a missing one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from petlab.data.curation import Curation
from petlab.data.index import build_index, split_folders
from petlab.data.splits import assign_splits
from petlab.data.targets import Target, class_path
from petlab.errors import PetlabError
from petlab.files import remove_stale_partials, write_text_atomic

log = logging.getLogger(__name__)

STRATA = "label"  # the frame's column the splits are stratified by, and the data report counts


@dataclass
class Splitting:
    """``data.split`` and its settings (see :func:`petlab.data.splits.assign_splits`)."""

    split: str = "official"
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0
    folds: int = 0
    fold: int = 0


@dataclass
class Frame:
    """The used images (``frame``: the index's columns, ``split``, :data:`STRATA`, and per target key
    ``stored/KEY`` and ``problem/KEY``), the files skipped and why, and notes for the data report."""

    frame: pd.DataFrame
    skipped: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    fingerprint: str = ""
    #: A joint task's images kept without one of their targets (name, problem: which task and why).
    lacking: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["name", "problem"]))


def stored_column(key: str) -> str:
    return f"stored/{key}"


def reader(key: str, target: Target, single: bool) -> str:
    """Who reads ``target``, for messages: ``task.target=NAME``, or the task of a joint model's ``task.tasks``."""
    return f"task.target={target.name}" if single else f"the {key} task of task.tasks (it reads {target.name})"


def annotations(target: Target, root: Path, layout: str, images: pd.DataFrame, cache_dir: Path | None,
                fingerprint: str) -> pd.DataFrame:  # fmt: skip
    """``target.annotate`` of the readable ``images``, cached with the index's ``fingerprint`` when reading
    them opens files (the same files and the same target give the same answer)."""
    if cache_dir is None or not target.costly_annotations:
        return target.annotate(root, layout, images)
    key = json.dumps([class_path(type(target)), target.reading_spec(), str(root), layout, fingerprint], default=str)
    cached = Path(cache_dir) / "index" / f"{hashlib.sha1(key.encode()).hexdigest()[:16]}-{target.name}.csv"
    if cached.is_file():
        found = pd.read_csv(cached, keep_default_na=False, dtype=str)
        if list(found["name"]) == list(images["name"]):
            return found[["value", "problem"]].set_axis(images.index)
    result = target.annotate(root, layout, images)
    cached.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(cached.parent)
    write_text_atomic(cached, result.assign(name=images["name"].to_numpy()).to_csv(index=False))
    return result


def strata(frame: pd.DataFrame, targets: dict[str, Target], layout: str) -> pd.Series:
    """What the splits are stratified by: the label of a single label target; else the species (pets layout)
    or the class folder (folder layout), so that every split keeps the balance of the data."""
    if len(targets) == 1:
        ((key, target),) = targets.items()
        if target.stratifies:
            return frame[f"value/{key}"]
    return frame["species" if layout == "pets" else "label"]


def carved_targets(frame: pd.DataFrame, targets: dict[str, Target], split: str) -> list[Target]:
    """The targets that no official test image has (the release's head boxes: trainval only): their test
    split is carved from the trainval images instead, as the annotations present decide."""
    test = frame["official_split"] == "test"
    if split != "official" or not test.any():
        return []
    return [target for key, target in targets.items() if (frame.loc[test, f"problem/{key}"] != "").all()]


def official_test_notes(frame: pd.DataFrame, targets: dict[str, Target], carved: list[Target], split: str) -> list[str]:
    """Which official test images a target's test split has, for the targets an image may lack (boxes, masks):
    as the annotations present decide, never as a release is assumed to be."""
    test = frame["split"] == "test"
    if split != "official" or not test.any():
        return []
    notes = []
    for key, target in targets.items():
        if target.stratifies or target in carved:
            continue
        having = int((frame.loc[test, f"problem/{key}"] == "").sum())
        whole = "all" if having == int(test.sum()) else f"{having} of the {int(test.sum())}"
        notes.append(f"The test split for {target.what} is the official test images that have them ({whole}).")
    return notes


def refuse_repeated_targets(targets: dict[str, Target], root: Path, layout: str) -> None:
    """Refuse a joint task two of whose targets read the same thing of the dataset (species and breed of a
    folder dataset, whose one label is the class folder): its heads would learn one thing twice."""
    readers: dict[tuple[type, str], str] = {}
    for key, target in targets.items():
        source = target.source(layout)
        if source and (type(target), source) in readers:
            raise PetlabError(f"task.tasks {readers[type(target), source]} and {key} both read {source} of {root}: "
                              "keep one of them")  # fmt: skip
        readers[type(target), source] = key


def build_frame(
    root: Path, layout: str, targets: dict[str, Target], single: bool, splitting: Splitting,
    cache_dir: Path | None = None, max_pixels: int | None = None, curation: Curation | None = None,
) -> Frame:  # fmt: skip
    """Index ``root``, read each target's annotations, keep the usable images, fit the targets (a label's
    classes) and split; see the module's docstring. ``curation``: the images to exclude, the labels to
    replace and the leaked copies to drop (see :mod:`petlab.data.curation`)."""
    curation = curation or Curation()
    for key, target in targets.items():
        if problem := target.missing_from(root, layout):
            instead = "" if single else f", or leave {key} out of task.tasks"
            raise PetlabError(f"{reader(key, target, single)}: {problem}{instead}")
    refuse_repeated_targets(targets, root, layout)
    index = build_index(root, cache_dir, layout, *([max_pixels] if max_pixels else []))
    fingerprint = index.attrs.get("fingerprint", "")
    kept, excluded, notes = curation.exclude_from(index)
    frame = kept[kept["readable"]].copy()
    skipped = pd.concat([kept.loc[~kept["readable"], ["name", "problem"]], excluded])
    for key, target in targets.items():
        found = annotations(target, root, layout, frame, cache_dir, fingerprint)
        frame[f"value/{key}"], frame[f"problem/{key}"] = found["value"], found["problem"]
    notes += curation.relabel_in(frame, targets)
    carved = carved_targets(frame, targets, splitting.split)
    for key, target in targets.items():
        if single:
            unusable = frame[frame[f"problem/{key}"] != ""]
            reasons = f"not used for {reader(key, target, single)}: " + unusable[f"problem/{key}"]
            skipped = pd.concat([skipped, unusable[["name"]].assign(problem=reasons)])
            frame = frame[frame[f"problem/{key}"] == ""].copy()
    if frame.empty:
        usable = " with usable " + ", ".join(target.what for target in targets.values()) if targets else ""
        raise PetlabError(f"no readable images in {root}{usable}")
    frame[STRATA] = strata(frame, targets, layout)
    if frame[STRATA].nunique() < 2 and single and next(iter(targets.values())).stratifies:
        raise PetlabError(f"{root} has only one class ({frame[STRATA].iloc[0]}); a classifier needs two")
    frame["split"] = assign_splits(
        frame, STRATA, splitting.split, splitting.val_fraction, splitting.test_fraction, splitting.seed,
        splitting.folds, splitting.fold, carve_test=bool(carved),
    )  # fmt: skip
    unused = int((frame["split"] == "").sum())
    frame, deduped = curation.dedupe_leaks(frame[frame["split"] != ""].copy(), cache_dir, fingerprint)
    notes += deduped
    if (frame["split"] == "train").sum() == 0 or (frame["split"] == "val").sum() == 0:
        raise PetlabError(f"{root} has too few images for a train and a validation split")
    lacking = pd.DataFrame(columns=["name", "problem"])
    for key, target in targets.items():
        usable = frame[f"problem/{key}"] == ""
        target.fit(frame.loc[usable, f"value/{key}"])
        frame[stored_column(key)] = [target.stored(value) if ok else target.stored("")
                                     for value, ok in zip(frame[f"value/{key}"], usable, strict=True)]  # fmt: skip
        if not single and not usable.all():
            notes.append(
                f"{int((~usable).sum())} of the {len(frame)} images have no usable {target.what}: the {key} task "
                "learns and is measured without them (which and why: data_skipped.csv)."
            )
            without = frame.loc[~usable, ["name"]].assign(
                problem=f"kept without {target.what} for the {key} task: " + frame.loc[~usable, f"problem/{key}"]
            )
            lacking = pd.concat([lacking, without], ignore_index=True)
        if description := target.describe(frame.loc[usable, f"value/{key}"]):
            notes.append(description)
    if unused:
        notes.append(f"{unused} images are in no split of data.split={splitting.split} and are not used.")
    notes += official_test_notes(frame, targets, carved, splitting.split)
    for target in carved:
        notes.append(f"The official test images have no {target.what}: the test split is "
                     f"data.test_fraction={splitting.test_fraction} of the trainval images, by {STRATA}, "
                     f"seed {splitting.seed}.")  # fmt: skip
    if layout == "folder" and splitting.split == "official":
        notes.append(split_folder_note(root))
    warn_skipped(skipped)
    return Frame(frame, skipped, notes, fingerprint, lacking)


def warn_skipped(skipped: pd.DataFrame) -> None:
    """One warning per reason: files skipped for the same reason (a whole stray folder) share one line."""
    for problem, names in skipped.groupby("problem", sort=False)["name"]:
        more = ", ..." if len(names) > 3 else ""
        files = names.iloc[0] if len(names) == 1 else f"{len(names)} files ({', '.join(names.iloc[:3])}{more})"
        log.warning(f"skipping {files}: {problem}")


def split_folder_note(root: Path) -> str:
    """Which folder of a folder dataset became which split, for the data report."""
    folders = split_folders(root)
    mapping = ", ".join(f"{name}/ -> {split}" for name, split in folders.items())
    if "val" in folders.values():
        return f"Split folders: {mapping}."
    return f"Split folders: {mapping}; no val/, valid/ or validation/ folder, so validation is carved from train."


def stored_values(part: pd.DataFrame, keys: Any) -> dict[str, list[Any]]:
    """The stored values of ``part``'s images, by target key."""
    return {key: part[stored_column(key)].tolist() for key in keys}
