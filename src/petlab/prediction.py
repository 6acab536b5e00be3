"""A checkpoint's answers for new photos: in this process (the page, a few photos), or through Lightning's
``Trainer.predict`` on any accelerator and any number of devices (``petlab.predict``), each process answering
its share and appending it to its own part of the answer log (see :mod:`petlab.answer_log`)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, RichProgressBar
from torch.utils.data import DataLoader

from petlab.answer_log import PartWriter, Record, picture_stems
from petlab.answers import decoded_side
from petlab.answers.base import Answerer
from petlab.checkpoint import Checkpoint
from petlab.data.photos import UNREADABLE, PhotoDataset, collate_photos
from petlab.data.transforms import ItemTransform
from petlab.precision import autocast, resolve_precision, uses_channels_last


def photo_dataset(checkpoint: Checkpoint, files: Sequence[Path], positions: Sequence[int]) -> PhotoDataset:
    """``files`` at ``positions`` as the checkpoint's model sees them (spatial tasks: the whole square)."""
    task = checkpoint.task
    transform = ItemTransform(checkpoint.side, crop=None if task.spatial else checkpoint.image_size)
    answerer = task.answerer()
    return PhotoDataset(files, positions, transform, answerer.uses_photo(), decoded_side(answerer, transform.side))


def item_outputs(outputs: Any, row: int) -> Any:
    """One image's outputs of a batch's as fp32 numpy arrays (one, or one per task of a joint model)."""
    if isinstance(outputs, dict):
        return {name: value[row].float().cpu().numpy() for name, value in outputs.items()}
    return outputs[row].float().cpu().numpy()


def answer_batch(
    answerer: Answerer, outputs: Any, batch: dict[str, Any], files: Sequence[Path], top_k: int,
    output_dir: Path | None, stems: dict[int, str],
) -> list[Record]:  # fmt: skip
    """The records of a batch's photos (see :func:`petlab.data.photos.collate_photos`) from the model's
    ``outputs`` for its readable ones; the pictures they draw are whole in ``output_dir`` when this returns."""
    records: list[Record] = [(position, "", {"image": str(files[position]), "error": UNREADABLE})
                             for position in batch["unreadable"]]  # fmt: skip
    for row, (position, photo) in enumerate(zip(batch["positions"], batch["photos"], strict=True)):
        stem = stems.get(position, "") if output_dir is not None else ""
        answer = answerer.answer(item_outputs(outputs, row), photo, top_k, output_dir if stem else None, stem)
        records.append((position, stem, {"image": str(files[position]), **answer}))
    return sorted(records, key=lambda record: record[0])


class AnswerWriter(BasePredictionWriter):
    """Answers each batch ``Trainer.predict`` computes and appends them to this process's part in
    ``parts``; ``stems`` names the pictures of each position (see :func:`petlab.answer_log.picture_stems`)."""

    def __init__(
        self, answerer: Answerer, files: Sequence[Path], top_k: int, output_dir: Path | None,
        stems: dict[int, str], parts: Path,
    ) -> None:  # fmt: skip
        super().__init__(write_interval="batch")
        self.answerer, self.files, self.top_k = answerer, files, top_k
        self.output_dir, self.stems, self.parts = output_dir, stems, parts
        self.part: PartWriter | None = None
        self.answered = 0

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.part = PartWriter(self.parts, trainer.global_rank)

    def write_on_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: Any, batch_indices: Any,
        batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        assert self.part is not None, "on_predict_start opens the part"
        records = answer_batch(self.answerer, prediction, batch, self.files, self.top_k, self.output_dir, self.stems)
        self.part.write(records)
        self.answered += len(records)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.part is not None:
            self.part.close()


def prediction_trainer(
    accelerator: str, devices: int | str, num_nodes: int, precision: str, several: bool, writer: AnswerWriter
) -> L.Trainer:  # fmt: skip
    """A Trainer that only answers: no logger, checkpoints or summary; DDP when ``several`` processes answer
    (each its own share of the photos, none twice: Lightning's unrepeated sampler for predictions)."""
    # Off a cluster's job, Lightning warns that srun exists; the console is for answers (json), progress
    # and Lightning's notes go to stderr.
    warnings.filterwarnings("ignore", message="The `srun` command is available")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    return L.Trainer(
        accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy="ddp" if several else "auto",
        precision=resolve_precision(precision, accelerator), logger=False, enable_checkpointing=False,
        enable_model_summary=False, callbacks=[writer, RichProgressBar(console_kwargs={"stderr": True})],
    )  # fmt: skip


def loader(dataset: PhotoDataset, batch_size: int, workers: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_photos,
                      persistent_workers=False, prefetch_factor=4 if workers else None)  # fmt: skip


def predict_files(
    checkpoint: Checkpoint, files: Sequence[Path], top_k: int, batch_size: int, precision: str = "auto",
    output_dir: Path | None = None, tta: bool = False, stems: dict[int, str] | None = None,
) -> Iterator[dict[str, Any]]:  # fmt: skip
    """One result per file, in this process on the CPU (the page: a few photos, no start-up cost):
    ``{"image", **the task's answer}`` or ``{"image", "error"}``; pictures named by ``stems`` (by position;
    by default each file's stem, numbered where two files share one) go to ``output_dir``."""
    model, answerer = checkpoint.model, checkpoint.task.answerer()
    if uses_channels_last(model.channels_last, "cpu"):
        model.to(memory_format=torch.channels_last)
    precision = resolve_precision(precision, "cpu")
    model.tta = tta
    stems = stems if stems is not None else picture_stems(files, set(), set(), [])
    batches = loader(photo_dataset(checkpoint, files, range(len(files))), batch_size, workers=0)
    for batch in batches:
        with torch.inference_mode(), autocast("cpu", precision):
            outputs = model.predict_step(batch, 0)
        for _, _, result in answer_batch(answerer, outputs, batch, files, top_k, output_dir, stems):
            yield result
