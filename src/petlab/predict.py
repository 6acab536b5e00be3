"""``python -m petlab.predict ckpt_path=FILE images=[a.jpg,dir/]``: a checkpoint's answers for new images.

Files that are not images are reported on stderr and skipped; the others are still predicted.
"""

from __future__ import annotations

import contextlib
import glob
import json
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, ListConfig

from petlab.checks import switch, whole_number
from petlab.cli import plugins, require, user_facing
from petlab.config import config_dir
from petlab.errors import PetlabError
from petlab.resolvers import register_resolvers

register_resolvers()
OUTPUTS = ("table", "json")
PRECISIONS = ("auto", "32-true", "bf16-mixed")


def image_files(entries: Sequence[str], option: str = "images") -> list[Path]:
    """The files named, and every file under the folders named, in order (``option``: the key that named them)."""
    files = []
    for entry in entries:
        path = Path(entry).expanduser()
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        elif path.is_file():
            files.append(path)
        else:
            raise PetlabError(f"{entry} does not exist: give image files or folders in {option}=[...]")
    return files


def check_answer_options(cfg: DictConfig) -> None:
    """The options that shape answers, shared by petlab.predict and petlab.app."""
    whole_number("top_k", cfg.top_k, 1)
    if cfg.precision not in PRECISIONS:
        raise PetlabError(f"unknown precision={cfg.precision}: choose {', '.join(PRECISIONS)}")
    switch("tta", cfg.tta)


def predict_files(
    checkpoint: Any, files: Sequence[Path], top_k: int, batch_size: int, precision: str = "auto",
    output_dir: Path | None = None, tta: bool = False,
) -> Iterator[dict[str, Any]]:  # fmt: skip
    """One result per file: ``{"image", **the task's answer}`` (see the task's answerer: for classification
    ``"top": [{"class", "probability"}...]``; for segmentation ``"pet_fraction"`` and, given ``output_dir``,
    the ``"mask"`` and ``"overlay"`` files written there) or ``{"image", "error"}``.

    The model runs on the CPU with the precision and memory format training would use there; with ``tta``
    its answers for each image and its mirror are averaged.
    """
    # Imported here: torch and the models load only once the options are checked (errors answer at once).
    import torch

    from petlab.data.transforms import ItemTransform, load_rgb
    from petlab.precision import autocast, resolve_precision, uses_channels_last

    task, answerer = checkpoint.task, checkpoint.task.answerer()
    transform = ItemTransform(checkpoint.side, crop=None if task.spatial else checkpoint.image_size)
    stems: set[str] = set()
    memory_format = torch.channels_last if uses_channels_last(checkpoint.model.channels_last, "cpu") else None
    if memory_format is not None:
        checkpoint.model.to(memory_format=memory_format)
    precision = resolve_precision(precision, "cpu")
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        originals: dict[int, Any] = {}
        for position, path in enumerate(chunk):
            with contextlib.suppress(PetlabError):  # reported below, in its place among the results
                originals[position] = load_rgb(path, upright=True)
        answers: dict[int, dict[str, Any]] = {}
        if originals:
            batch = torch.stack([transform(image) for image in originals.values()])
            if memory_format is not None:
                batch = batch.contiguous(memory_format=memory_format)
            with torch.inference_mode(), autocast("cpu", precision):
                outputs = checkpoint.model.outputs(batch, tta)
            for row, (position, image) in enumerate(originals.items()):
                stem = chunk[position].stem
                if output_dir is not None:
                    stem = unique_stem(stem, stems, make_output_dir(output_dir))
                answers[position] = answerer.answer(item_outputs(outputs, row), image, top_k, output_dir, stem)
        for position, path in enumerate(chunk):
            if position in answers:
                yield {"image": str(path), **answers[position]}
            else:
                yield {"image": str(path), "error": "not a readable image: skipped"}


def item_outputs(outputs: Any, row: int) -> Any:
    """One image's outputs of a batch's as numpy arrays (one, or one per task of a joint model)."""
    if isinstance(outputs, dict):
        return {name: value[row].numpy() for name, value in outputs.items()}
    return outputs[row].numpy()


def make_output_dir(output_dir: Path) -> Path:
    """``output_dir``, created when the first file is written (a run that writes nothing leaves no folder)."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PetlabError(f"cannot create output_dir={output_dir} ({error.strerror}): choose another folder") from error
    return output_dir


def unique_stem(stem: str, used: set[str], output_dir: Path) -> str:
    """``stem``, or ``stem_2``, ``stem_3`` ... when files of the same name came from other folders or are
    already in ``output_dir`` from an earlier run: nothing written before is replaced."""
    candidate, number = stem, 1
    while candidate in used or any(output_dir.glob(f"{glob.escape(candidate)}_*.png")):
        number += 1
        candidate = f"{stem}_{number}"
    used.add(candidate)
    return candidate


def print_table(answerer: Any, results: Sequence[dict[str, Any]]) -> None:
    # Imported here: only a table needs them.
    from rich.console import Console
    from rich.table import Table

    answered = [result for result in results if "error" not in result]
    headers, rows = answerer.table(answered)
    headers, rows = ["image", *headers], [[result["image"], *row] for result, row in zip(answered, rows, strict=True)]
    table = Table(*headers)
    for row in rows:
        table.add_row(*row)
    # Wide enough that every cell prints whole on one line (a pipe or file gets 80 columns otherwise).
    needed = sum(max(len(cell) for cell in column) + 3 for column in zip(headers, *rows, strict=False)) + 1
    Console(width=max(shutil.get_terminal_size().columns, needed)).print(table)


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="predict")
@user_facing
def main(cfg: DictConfig) -> None:
    # Imported here: torch and the models load only once the options are checked (errors answer at once).
    from petlab.checkpoint import load_checkpoint

    require(cfg, "ckpt_path", "images")
    if cfg.output not in OUTPUTS:
        raise PetlabError(f"unknown output={cfg.output}: choose table or json")
    check_answer_options(cfg)
    entries = list(cfg.images) if isinstance(cfg.images, ListConfig) else [str(cfg.images)]
    checkpoint = load_checkpoint(cfg.ckpt_path, plugins(cfg))
    files = image_files(entries)
    if not files:
        raise PetlabError(f"no files found in {', '.join(entries)}")
    results = []
    output_dir = Path(cfg.output_dir).expanduser() if checkpoint.task.answerer().draws() else None
    for result in predict_files(checkpoint, files, cfg.top_k, cfg.batch_size, cfg.precision, output_dir, cfg.tta):
        if "error" in result:
            print(f"warning: {result['image']}: {result['error']}", file=sys.stderr)
        if cfg.output == "json":
            print(json.dumps(result), flush=True)
        results.append(result)
    if all("error" in result for result in results):
        given = ", ".join(entries)
        problem = (f"{files[0]} is not a readable image" if len(files) == 1
                   else f"none of the {len(files)} files in {given} is a readable image")  # fmt: skip
        raise PetlabError(f"{problem}: nothing to predict")
    if cfg.output == "table":
        print_table(checkpoint.task.answerer(), results)
    if output_dir is not None:
        print(f"Pictures of the answers written to {output_dir}", file=sys.stderr)


if __name__ == "__main__":
    main()
