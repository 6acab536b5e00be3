"""``python -m petlab.predict ckpt_path=FILE images=[a.jpg,dir/]``: a checkpoint's answers for new images.

Through Lightning's ``Trainer.predict`` on the accelerator and devices asked for, photos decoded by
DataLoader workers while the model computes; several processes each answer a share and the answers are
merged in the input's order (see :mod:`petlab.answer_log`). Files that are not images are reported and
skipped; the others are still answered.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, ListConfig

from petlab.answer_log import answered, output_format, parts_dir, picture_stems, records_of, write_merged
from petlab.checks import switch, whole_number
from petlab.cli import one_line_config_errors, plugins, require, user_facing
from petlab.config import config_dir, run_id, share_run_id
from petlab.devices import check_devices, gpu_count
from petlab.errors import PetlabError
from petlab.files import remove_stale_partials
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


def check_output(cfg: DictConfig) -> tuple[Path | None, Path]:
    """The output file (None: the console) and the pictures' folder, once neither would mix this run's
    answers with an earlier run's: both must be new unless ``resume=true`` continues that run."""
    output_file = Path(cfg.output_file).expanduser() if cfg.output_file else None
    if output_file is not None:
        output_format(output_file)
    if not switch("resume", cfg.resume):
        if output_file is not None and (output_file.exists() or parts_dir(output_file).exists()):
            raise PetlabError(f"output_file={output_file} exists (or an interrupted run's answers for it): continue "
                              "it with resume=true, or choose another file")  # fmt: skip
    elif output_file is None:
        raise PetlabError("resume=true continues a run that wrote an output_file: give output_file=ANSWERS.jsonl")
    if cfg.output_dir:
        output_dir = Path(cfg.output_dir).expanduser()
    elif output_file is not None:
        output_dir = output_file.with_name(f"{output_file.stem}-pictures")
    else:
        output_dir = Path(cfg.paths.log_dir) / "predictions" / run_id()
    if not cfg.resume and output_dir.is_dir() and any(os.scandir(output_dir)):
        raise PetlabError(f"output_dir={output_dir} already holds pictures: continue that run with resume=true, "
                          "or choose another folder")  # fmt: skip
    return output_file, output_dir


def several_processes(cfg: DictConfig, device_type: str) -> bool:
    if cfg.devices == "auto":
        return (device_type == "cuda" and gpu_count() > 1) or cfg.num_nodes > 1
    return int(cfg.devices) > 1 or cfg.num_nodes > 1


def report(count: int, unreadable: Sequence[str], unreadable_count: int, files: Sequence[Path],
           entries: Sequence[str]) -> None:  # fmt: skip
    """Refuse a run where no file was an image (nothing could be done); else name the files skipped
    (``unreadable``: the first of ``unreadable_count``)."""
    if count and unreadable_count == count == len(files):
        given = ", ".join(entries)
        problem = (f"{files[0]} is not a readable image" if len(files) == 1
                   else f"none of the {len(files)} files in {given} is a readable image")  # fmt: skip
        raise PetlabError(f"{problem}: nothing to predict")
    for image in unreadable:
        print(f"warning: {image}: not a readable image: skipped", file=sys.stderr)
    if unreadable_count > len(unreadable):
        print(f"warning: {unreadable_count - len(unreadable)} more files are not readable images (their answers "
              "say so)", file=sys.stderr)  # fmt: skip


def answer_files(
    checkpoint: Any, files: Sequence[Path], log_file: Path, output_dir: Path, cfg: DictConfig, several: bool
) -> dict[int, str] | None:  # fmt: skip
    """Answer ``files`` (those ``log_file`` lacks, with ``cfg.resume``) into parts of ``log_file``, with
    pictures in ``output_dir``; ``cfg``: predict.yaml's options. Returns the picture stems by position (empty
    for answers without pictures), or None in a process other than the first."""
    # Imported here: torch and the models load only once the options are checked (errors answer at once).
    from petlab.prediction import AnswerWriter, loader, photo_dataset, prediction_trainer

    answerer = checkpoint.task.answerer()
    done, taken = answered(log_file) if cfg.resume else (set(), set())
    todo = [position for position, path in enumerate(files) if str(path) not in done]
    stems = {}
    if answerer.draws():
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise PetlabError(
                f"cannot create output_dir={output_dir} ({error.strerror}): choose another folder"
            ) from None
        remove_stale_partials(output_dir)  # pictures a killed run was writing
        stems = picture_stems(files, done, taken, [entry.name for entry in os.scandir(output_dir)])
    if not todo:
        return stems
    writer = AnswerWriter(answerer, files, cfg.top_k, output_dir if stems else None, stems, parts_dir(log_file))
    trainer = prediction_trainer(cfg.accelerator, cfg.devices, cfg.num_nodes, cfg.precision, several, writer)
    checkpoint.model.tta = cfg.tta
    dataset = photo_dataset(checkpoint, files, todo)
    trainer.predict(checkpoint.model, loader(dataset, cfg.batch_size, cfg.num_workers), return_predictions=False)
    if several:
        trainer.strategy.barrier()  # every part is whole before the first process merges them
    return stems if trainer.is_global_zero else None


@one_line_config_errors
@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="predict")
@user_facing
def main(cfg: DictConfig) -> None:
    require(cfg, "ckpt_path", "images")
    if cfg.output not in OUTPUTS:
        raise PetlabError(f"unknown output={cfg.output}: choose table or json")
    check_answer_options(cfg)
    whole_number("num_workers", cfg.num_workers, 0)
    whole_number("num_nodes", cfg.num_nodes, 1)
    device_type = check_devices(cfg.accelerator, cfg.devices)
    output_file, output_dir = check_output(cfg)
    several = several_processes(cfg, device_type)
    if several and output_file is None:
        raise PetlabError("answering with several processes writes one file: give output_file=ANSWERS.jsonl (or .csv)")
    entries = list(cfg.images) if isinstance(cfg.images, ListConfig) else [str(cfg.images)]
    files = image_files(entries)
    if not files:
        raise PetlabError(f"no files found in {', '.join(entries)}")
    # Imported here: torch and the models load only once the options are checked (errors answer at once).
    from petlab.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(cfg.ckpt_path, plugins(cfg))
    share_run_id()  # the processes Lightning starts resolve the same default folders
    console = output_file is None
    log_file = output_file or Path(tempfile.mkdtemp(prefix="petlab-answers-")) / "answers.jsonl"
    stems = answer_files(checkpoint, files, log_file, output_dir, cfg, several)
    if stems is None:  # not the first process: that one merges the parts and reports
        return
    answerer = checkpoint.task.answerer()
    positions = {str(path): position for position, path in enumerate(files)}
    if console:
        answers = [result for _, _, result in records_of(log_file, positions)]
        shutil.rmtree(log_file.parent, ignore_errors=True)
        unreadable = [answer["image"] for answer in answers if "error" in answer]
        report(len(answers), unreadable, len(unreadable), files, entries)
        if cfg.output == "json":
            for answer in answers:
                print(json.dumps(answer), flush=True)
        else:
            print_table(answerer, answers)
    else:
        merged = write_merged(log_file, positions)
        report(merged.count, merged.unreadable, merged.unreadable_count, files, entries)
        print(f"Answers for {merged.count} images written to {output_file}", file=sys.stderr)
    if stems:
        print(f"Pictures of the answers written to {output_dir}", file=sys.stderr)


if __name__ == "__main__":
    main()
