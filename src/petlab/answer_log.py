"""Answers for many images: each process appends its own as they come, and they are merged in the input's
order at the end, with memory that stays flat whatever the number of images.

While ``petlab.predict`` runs, every process writes a part, ``OUTPUT.parts/<rank>-<pid>-<ns>.jsonl``, one
line ``[position, picture stem, result]`` per image, a batch at a time, after the batch's pictures are whole
on disk. A run that is killed leaves its parts (the last line perhaps cut short, which is ignored); the
next run with ``resume=true`` skips the images they answered, writes parts of its own, and the merge
(``heapq.merge`` of parts that are each in input order) writes ``OUTPUT`` under a temporary name, renames
it into place and removes the parts. An answer is never written twice.
"""

from __future__ import annotations

import bisect
import csv
import heapq
import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from petlab.errors import PetlabError
from petlab.files import partial_path, remove_stale_partials

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv"}
Record = tuple[int, str, dict[str, Any]]  # position in the input, picture stem ("" without pictures), result


def output_format(output_file: Path) -> str:
    try:
        return FORMATS[output_file.suffix.lower()]
    except KeyError:
        raise PetlabError(f"output_file={output_file} is not .jsonl or .csv: name the file with one of those suffixes "
                          "(JSON lines, or a table)") from None  # fmt: skip


def parts_dir(output_file: Path) -> Path:
    return output_file.with_name(f"{output_file.name}.parts")


class PartWriter:
    """One process's part: appended a batch at a time and flushed, so a kill loses at most the current batch."""

    def __init__(self, folder: Path, rank: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{rank:04d}-{os.getpid()}-{time.time_ns()}.jsonl"
        self._file: TextIO | None = self.path.open("a", encoding="utf-8")

    def write(self, records: Iterable[Record]) -> None:
        """Append ``records``, which come in input order (see ``petlab.prediction.answer_batch``)."""
        assert self._file is not None, "the part is closed"
        self._file.write("".join(json.dumps(list(record)) + "\n" for record in records))
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_part(path: Path) -> Iterator[Record]:
    """A part's records, without a last line that a kill cut short."""
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            try:
                position, stem, result = json.loads(line)
            except ValueError:
                continue
            yield position, stem, result


def read_output(output_file: Path, positions: dict[str, int]) -> Iterator[Record]:
    """The records of a finished output file; an image that is no longer in the input keeps its place first."""
    with output_file.open(encoding="utf-8", newline="") as lines:
        rows = csv.DictReader(lines) if output_format(output_file) == "csv" else map(json.loads, lines)
        for row in rows:
            yield positions.get(row["image"], -1), "", row


def answered(output_file: Path) -> tuple[set[str], set[str]]:
    """The images the output file and its parts hold answers for, and the picture stems these used."""
    images: set[str] = set()
    stems: set[str] = set()
    for _, stem, result in records_of(output_file, {}):
        images.add(result["image"])
        if stem:
            stems.add(stem)
    return images, stems


def records_of(output_file: Path, positions: dict[str, int]) -> Iterator[Record]:
    """Every record of the output file and its parts, merged in input order (and each image once)."""
    sources: list[Iterable[Record]] = [read_part(path) for path in sorted(parts_dir(output_file).glob("*.jsonl"))]
    if output_file.is_file():
        sources.append(read_output(output_file, positions))
    last = None
    for record in heapq.merge(*sources, key=lambda record: record[0]):
        if record[0] >= 0 and record[0] == last:
            continue
        last = record[0]
        yield record


def flattened(result: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A result as one table row: nested keys joined with ``/`` (``top/0/class``)."""
    row: dict[str, Any] = {}
    items = result.items() if isinstance(result, dict) else enumerate(result)
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, dict | list):
            row.update(flattened(value, f"{name}/"))
        else:
            row[name] = value
    return row


@dataclass
class Merged:
    """What :func:`write_merged` wrote: answers, and how many of them (the first few named) are unreadable files."""

    count: int = 0
    unreadable_count: int = 0
    unreadable: list[str] = field(default_factory=list)

    def add(self, result: dict[str, Any]) -> None:
        self.count += 1
        if result.get("error"):
            self.unreadable_count += 1
            if len(self.unreadable) < 20:
                self.unreadable.append(result["image"])


def write_merged(output_file: Path, positions: dict[str, int]) -> Merged:
    """Merge the parts (and a finished earlier output file) into ``output_file``, atomically; the parts go."""
    csv_file = output_format(output_file) == "csv"
    columns: dict[str, None] = {"image": None}
    if csv_file:  # a first pass for the columns: every key any row has, in the order they appear
        for _, _, result in records_of(output_file, positions):
            columns.update(dict.fromkeys(flattened(result)))
    output_file.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(output_file.parent)
    temporary, merged = partial_path(output_file), Merged()
    with temporary.open("w", encoding="utf-8", newline="") as handle:
        table = csv.DictWriter(handle, list(columns), restval="") if csv_file else None
        if table is not None:
            table.writeheader()
        for _, _, result in records_of(output_file, positions):
            if table is not None:
                table.writerow(flattened(result))
            else:
                handle.write(json.dumps(result) + "\n")
            merged.add(result)
    os.replace(temporary, output_file)
    shutil.rmtree(parts_dir(output_file), ignore_errors=True)
    return merged


def picture_stems(files: Sequence[Path], skip: set[str], taken: set[str], existing: Sequence[str]) -> dict[int, str]:
    """A picture stem for each file (by position) not in ``skip``: its name's stem, or ``stem_2``, ``stem_3``
    ... when another file of the input, a stem in ``taken``, or a picture in ``existing`` (the output
    folder's names, listed once) has it. Linear in the files, whatever the folder holds."""
    existing = sorted(existing)

    def pictured(stem: str) -> bool:  # a name in the folder starts with "stem_"
        at = bisect.bisect_left(existing, f"{stem}_")
        return at < len(existing) and existing[at].startswith(f"{stem}_")

    stems, used, last_number = {}, set(taken), {}
    for position, path in enumerate(files):
        if str(path) in skip:
            continue
        number = last_number.get(path.stem, 1)  # a million photos called cat.jpg: no search from cat_2 again
        candidate = path.stem if number == 1 else f"{path.stem}_{number}"
        while candidate in used or pictured(candidate):
            number += 1
            candidate = f"{path.stem}_{number}"
        used.add(candidate)
        stems[position], last_number[path.stem] = candidate, number
    return stems
