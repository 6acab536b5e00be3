"""A pandas index of an Oxford-IIIT Pet style dataset: one row per file in ``images/``.

Labels come from file names (the dataset's own rule); ``annotations/list.txt`` is only cross-checked.
Every image is opened once while indexing, so unreadable files are found before training, never mid-epoch.
What a target needs of its own annotation files is read by the target (see ``petlab.data.targets``).
The index is cached outside the dataset directory and rebuilt when any file in it changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError

from petlab.checks import whole_number
from petlab.data.labels import SPECIES, breed_of, species_of
from petlab.errors import PetlabError
from petlab.files import remove_stale_partials, write_text_atomic
from petlab.parallel import parallel_map

log = logging.getLogger(__name__)

INDEX_COLUMNS = ["path", "name", "species", "breed", "label", "official_split", "width", "height", "mode",
                 "readable", "problem"]  # fmt: skip
INDEX_VERSION = 6
# PIL's own decompression-bomb limit (it refuses images over twice its MAX_IMAGE_PIXELS); data.max_image_pixels.
DEFAULT_MAX_IMAGE_PIXELS = 2 * 89_478_485


@dataclass(frozen=True)
class Annotations:
    """What ``annotations/`` says: species per listed image, and the official split of each image."""

    species: dict[str, str]
    split: dict[str, str]
    problems: list[str]


def missing_dataset_message(root: Path) -> str:
    return (
        f"no dataset at {root} (looked for {root / 'images'}): put Oxford-IIIT Pet there "
        "(images/ and annotations/), run with data.download=true to fetch it, "
        "or try petlab on generated data with data=sample"
    )


def _read_rows(path: Path, problems: list[str]) -> list[list[str]]:
    rows = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 4 or not all(field.isdigit() for field in fields[1:]):
            problems.append(f"{path.name}:{number}: malformed line {line.strip()!r} ignored")
            continue
        rows.append(fields)
    return rows


def read_annotations(root: Path) -> Annotations:
    """Parse ``list.txt``, ``trainval.txt`` and ``test.txt`` when they exist; malformed lines are reported."""
    folder = root / "annotations"
    problems: list[str] = []
    species: dict[str, str] = {}
    split: dict[str, str] = {}
    if (folder / "list.txt").is_file():
        for name, _class_id, species_id, _breed_id in _read_rows(folder / "list.txt", problems):
            species[name] = SPECIES[int(species_id) - 1] if species_id in ("1", "2") else "?"
    for split_name in ("trainval", "test"):
        if (folder / f"{split_name}.txt").is_file():
            for fields in _read_rows(folder / f"{split_name}.txt", problems):
                split[fields[0]] = split_name
    return Annotations(species, split, problems)


def allow_image_pixels(limit: int) -> None:
    """Let PIL decode images of up to ``limit`` pixels in this process (and the workers it forks).

    PIL guards against decompression bombs with a process-wide limit; petlab skips larger images while
    indexing (see :func:`inspect_image`), so nothing larger ever reaches the decoder.
    """
    Image.MAX_IMAGE_PIXELS = whole_number("data.max_image_pixels", limit, 1)


def inspect_image(path: Path, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[int, int, str, str]:
    """Width, height, mode and problem ("" when the file decodes) of one image file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # reported below, as a skipped file
            image = Image.open(path)
        with image:
            width, height, mode = image.width, image.height, image.mode
            if width * height > max_pixels:
                size = f"{width}x{height} is {width * height:,} pixels, over data.max_image_pixels={max_pixels}"
                return width, height, mode, f"too large: {size} (a decompression-bomb guard); raise it to use it"
            image.draft("RGB", (64, 64))  # JPEG decodes at reduced scale: catches corrupt data, fast
            image.load()
        return width, height, mode, ""
    except Image.DecompressionBombError as error:  # over PIL's own limit, before the size is known here
        return 0, 0, "", f"too large: {error} Raise data.max_image_pixels to use this image"
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        return 0, 0, "", f"cannot decode: {error}"


LAYOUTS = ("pets", "folder")
# The names of split folders in folder datasets (any case): what each becomes.
SPLIT_FOLDER_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                      "test": "test", "testing": "test"}  # fmt: skip
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")


def _fingerprint(files: list[Path], max_pixels: int) -> str:
    digest = hashlib.sha1(f"{INDEX_VERSION}\0{max_pixels}".encode())
    for path in sorted(files):
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _row(path: Path, name: str, problem: str, **labels: str) -> dict:
    """A file's row before its image is inspected (see :func:`_inspected`); ``problem``: why it is not used."""
    row = {"path": str(path), "name": name, "species": "", "breed": "", "label": "", "official_split": ""}
    return {**row, **labels, "width": 0, "height": 0, "mode": "", "readable": not problem, "problem": problem}


def _inspected(rows: list[dict], max_pixels: int) -> pd.DataFrame:
    """``rows`` with every image that has no problem yet opened (on every core) and measured."""
    pending = [row for row in rows if not row["problem"]]
    measured = parallel_map(partial(inspect_image, max_pixels=max_pixels), [Path(row["path"]) for row in pending],
                            "Indexing images", transient=True)  # fmt: skip
    for row, (width, height, mode, problem) in zip(pending, measured, strict=True):
        row.update(width=width, height=height, mode=mode, readable=not problem, problem=problem)
    return pd.DataFrame(rows, columns=INDEX_COLUMNS)


def _scan_pets(root: Path, files: list[Path], max_pixels: int) -> pd.DataFrame:
    annotations = read_annotations(root)
    for problem in annotations.problems:
        log.warning(problem)
    rows = []
    for path in sorted(files):
        name, breed = path.stem, breed_of(path.stem)
        if path.suffix.lower() not in (".jpg", ".jpeg", ".png"):
            rows.append(_row(path, name, f"not an image file ({path.suffix or 'no extension'})"))
            continue
        if breed is None:
            rows.append(_row(path, name, "name is not BREED_NUMBER"))
            continue
        listed = annotations.species.get(name)
        if listed is not None and listed != species_of(name):
            log.warning(f"list.txt says {name} is a {listed}, its name says {species_of(name)}: using the name")
        rows.append(_row(path, name, "", species=species_of(name), breed=breed,
                         official_split=annotations.split.get(name, "")))  # fmt: skip
    present = {row["name"] for row in rows}
    missing = sorted(set(annotations.split) - present)
    if missing:
        log.warning(f"{len(missing)} images named in trainval.txt/test.txt are not in images/, e.g. {missing[0]}")
    unlisted = sorted(present - set(annotations.species)) if annotations.species else []
    if unlisted:
        log.info(f"{len(unlisted)} images have no row in list.txt (labelled from their names), e.g. {unlisted[0]}")
    return _inspected(rows, max_pixels)


def split_folders(root: Path) -> dict[str, str]:
    """The top-level folders of a folder dataset that hold a split, and which: ``{"validation": "val", ...}``.

    A split folder holds class folders; a folder of images named like a split (a class ``train/`` beside
    ``bus/`` and ``car/``) is a class.
    """
    return {
        entry.name: SPLIT_FOLDER_NAMES[entry.name.lower()]
        for entry in sorted(os.scandir(root), key=lambda entry: entry.name)
        if entry.is_dir()
        and entry.name.lower() in SPLIT_FOLDER_NAMES
        and any(child.is_dir() for child in os.scandir(entry.path))
    }


def _misplaced(parts: tuple[str, ...], splits: dict[str, str]) -> str:
    """Why a file of a folder dataset has no place; the same words for every file of one folder."""
    folders = "/".join(parts[:-1])
    if not splits:
        return "not in a CLASS/ folder" if len(parts) == 1 else f"in {folders}/: classes are the top-level folders"
    if len(parts) == 1:
        return "not in a SPLIT/CLASS/ folder"
    if parts[0] not in splits:
        names = ", ".join(sorted(SPLIT_FOLDER_NAMES))
        return f"in {parts[0]}/, which is not a split folder ({names}): not used"
    if len(parts) == 2:
        return f"directly in {parts[0]}/, not in {parts[0]}/CLASS/"
    return f"in {folders}/: classes are the folders directly under {parts[0]}/"


def _scan_folder(root: Path, files: list[Path], max_pixels: int) -> pd.DataFrame:
    splits = split_folders(root)
    # Without a validation folder, validation is carved out of the training folder.
    train_split = "train" if "val" in splits.values() else "trainval"
    rows = []
    for path in sorted(files):
        parts = path.relative_to(root).parts
        if splits and len(parts) == 3 and parts[0] in splits:
            split = train_split if splits[parts[0]] == "train" else splits[parts[0]]
            label = parts[1]
        elif not splits and len(parts) == 2:
            split, label = "", parts[0]
        else:
            rows.append(_row(path, path.stem, _misplaced(parts, splits)))
            continue
        problem = "" if path.suffix.lower() in IMAGE_SUFFIXES else f"not an image file ({path.suffix})"
        rows.append(_row(path, path.stem, problem, label=label, official_split=split))
    return _inspected(rows, max_pixels)


def build_index(
    root: Path, cache_dir: Path | None = None, layout: str = "pets", max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> pd.DataFrame:
    """Index a dataset (cached under ``cache_dir`` when given, never inside ``root``).

    ``layout="pets"``: ``root/images/BREED_N.jpg`` and ``root/annotations/`` as released.
    ``layout="folder"``: ``root/SPLIT/CLASS/*.jpg`` (SPLIT is one of :data:`SPLIT_FOLDER_NAMES`) or
    ``root/CLASS/*.jpg``. Images over ``max_pixels`` are skipped. ``frame.attrs["fingerprint"]`` identifies
    the files indexed.
    """
    if layout not in LAYOUTS:
        raise PetlabError(f"unknown data.layout={layout!r}: choose one of {', '.join(LAYOUTS)}")
    root = Path(root).expanduser().resolve()
    images = root / "images" if layout == "pets" else root
    if not images.is_dir():
        raise PetlabError(missing_dataset_message(root) if layout == "pets" else f"no dataset folder at {root}")
    if layout == "pets":
        files = [Path(e.path) for e in os.scandir(images) if e.is_file()]
        # Every annotation file: the targets' annotations are cached with the index's fingerprint.
        fingerprinted = files + [path for path in (root / "annotations").rglob("*") if path.is_file()]
    else:
        files = [p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")]
        fingerprinted = files
    if not files:
        raise PetlabError(f"{images} is empty: it should hold the dataset's images")
    fingerprint = _fingerprint(fingerprinted, max_pixels)
    cached = None
    if cache_dir is not None:
        cached = Path(cache_dir) / "index" / hashlib.sha1(f"{layout}:{root}".encode()).hexdigest()[:16]
        meta = cached.with_suffix(".json")
        if meta.is_file() and json.loads(meta.read_text()).get("fingerprint") == fingerprint:
            frame = pd.read_csv(cached.with_suffix(".csv"), keep_default_na=False, dtype={"name": str})
            frame = frame.astype({"readable": bool})
            frame.attrs["fingerprint"] = fingerprint
            return frame
    scan = _scan_pets if layout == "pets" else _scan_folder
    frame = scan(root, files, max_pixels)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(cached.parent)
        write_text_atomic(cached.with_suffix(".csv"), frame.to_csv(index=False))
        write_text_atomic(cached.with_suffix(".json"), json.dumps({"root": str(root), "fingerprint": fingerprint}))
    frame.attrs["fingerprint"] = fingerprint
    return frame
