"""A pandas index of an Oxford-IIIT Pet style dataset: one row per file in ``images/``.

Labels come from file names (the dataset's own rule); ``annotations/list.txt`` is only cross-checked.
Every image is opened once while indexing, so unreadable files are found before training, never mid-epoch.
The index is cached outside the dataset directory and rebuilt when any file in it changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError
from rich.progress import track

from petlab.data.labels import SPECIES, breed_of, species_of
from petlab.errors import PetlabError

log = logging.getLogger(__name__)

INDEX_COLUMNS = ["path", "name", "species", "breed", "official_split", "width", "height", "mode", "readable",
                 "problem"]  # fmt: skip
INDEX_VERSION = 1


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


def inspect_image(path: Path) -> tuple[int, int, str, str]:
    """Width, height, mode and problem ("" when the file decodes) of one image file."""
    try:
        with Image.open(path) as image:
            width, height, mode = image.width, image.height, image.mode
            image.draft("RGB", (64, 64))  # JPEG decodes at reduced scale: catches corrupt data, fast
            image.load()
        return width, height, mode, ""
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        return 0, 0, "", f"cannot decode: {error}"


def _fingerprint(files: list[os.DirEntry], annotations: Path) -> str:
    digest = hashlib.sha1(str(INDEX_VERSION).encode())
    extra = sorted(annotations.glob("*.txt")) if annotations.is_dir() else []
    for entry in sorted(files, key=lambda e: e.name):
        stat = entry.stat()
        digest.update(f"{entry.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    for path in extra:
        stat = path.stat()
        digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _scan(root: Path, files: list[os.DirEntry]) -> pd.DataFrame:
    annotations = read_annotations(root)
    for problem in annotations.problems:
        log.warning(problem)
    rows = []
    for entry in track(sorted(files, key=lambda e: e.name), description="Indexing images", transient=True):
        path = Path(entry.path)
        name, suffix = path.stem, path.suffix.lower()
        breed = breed_of(name)
        if suffix not in (".jpg", ".jpeg", ".png"):
            width, height, mode, problem = 0, 0, "", f"not an image file ({suffix or 'no extension'})"
        elif breed is None:
            width, height, mode, problem = 0, 0, "", "name is not BREED_NUMBER"
        else:
            width, height, mode, problem = inspect_image(path)
        listed = annotations.species.get(name)
        if breed is not None and listed is not None and listed != species_of(name) and not problem:
            log.warning(
                f"list.txt says {name} is a {listed}, its name says {species_of(name)}: using the name"
            )
        rows.append({
            "path": str(path), "name": name, "species": species_of(name) if breed else "",
            "breed": breed or "", "official_split": annotations.split.get(name, ""),
            "width": width, "height": height, "mode": mode, "readable": not problem, "problem": problem,
        })  # fmt: skip
    missing = sorted(set(annotations.split) - {row["name"] for row in rows})
    if missing:
        log.warning(
            f"{len(missing)} images named in trainval.txt/test.txt are not in images/, e.g. {missing[0]}"
        )
    return pd.DataFrame(rows, columns=INDEX_COLUMNS)


def build_index(root: Path, cache_dir: Path | None = None) -> pd.DataFrame:
    """Index ``root/images`` (cached under ``cache_dir`` when given, never inside ``root``)."""
    root = Path(root).expanduser().resolve()
    images = root / "images"
    if not images.is_dir():
        raise PetlabError(missing_dataset_message(root))
    files = [entry for entry in os.scandir(images) if entry.is_file()]
    if not files:
        raise PetlabError(f"{images} is empty: it should hold the dataset's BREED_NUMBER.jpg files")
    fingerprint = _fingerprint(files, root / "annotations")
    cached = None
    if cache_dir is not None:
        cached = Path(cache_dir) / "index" / hashlib.sha1(str(root).encode()).hexdigest()[:16]
        meta = cached.with_suffix(".json")
        if meta.is_file() and json.loads(meta.read_text()).get("fingerprint") == fingerprint:
            frame = pd.read_csv(cached.with_suffix(".csv"), keep_default_na=False)
            return frame.astype({"readable": bool})
    frame = _scan(root, files)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(cached.with_suffix(".csv.tmp"), index=False)
        os.replace(cached.with_suffix(".csv.tmp"), cached.with_suffix(".csv"))
        cached.with_suffix(".json").write_text(json.dumps({"root": str(root), "fingerprint": fingerprint}))
    return frame
