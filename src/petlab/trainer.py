"""The Lightning Trainer and what it is built with (callbacks, loggers, precision), for train and evaluate."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelSummary, RichModelSummary
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig

from petlab.errors import PetlabError, first_line
from petlab.module import PetModule
from petlab.precision import AUTO, cpu_bf16_features, resolve_precision, uses_channels_last


def scalar_metrics(trainer: L.Trainer) -> dict[str, float]:
    return {
        name: round(float(value), 6)
        for name, value in trainer.callback_metrics.items()
        if isinstance(value, torch.Tensor) and value.numel() == 1
    }


def logged_scalars(directory: Path, prefixes: tuple[str, ...]) -> dict[str, float]:
    """The last value of each scalar whose tag starts with one of ``prefixes`` in the TensorBoard event files
    under ``directory``: what a run logged, for a resume that had nothing left to train."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[str, tuple[float, int, float]] = {}
    for events in sorted(Path(directory).rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags().get("scalars", []):
            if tag.startswith(prefixes):
                last = accumulator.Scalars(tag)[-1]
                if tag not in found or (last.wall_time, last.step) > found[tag][:2]:
                    found[tag] = (last.wall_time, last.step, last.value)
    return {tag: round(float(value), 6) for tag, (_, _, value) in found.items()}


def build_object(config: DictConfig, key: str, **arguments: Any) -> Any:
    """Instantiate a library object (trainer, callback, logger); a value it refuses is a one-line error."""
    try:
        return instantiate(config, **arguments)
    except InstantiationException as error:
        reason = first_line(error.__cause__ or error)
        raise PetlabError(f"{key} cannot be built from the config ({reason}): check the {key}.* values") from error


def build_group(cfg: DictConfig, group: str) -> list[Any]:
    """The objects of a config group such as callbacks or logger; an entry set to null is switched off."""
    entries = (cfg.get(group) or {}).items()
    return [build_object(entry, f"{group}.{name}") for name, entry in entries if entry is not None]


def plain_summaries_off_a_terminal(callbacks: list[Any]) -> list[Any]:
    """``callbacks`` with Rich's model summary replaced by the plain one when the output is not a terminal:
    a log file or a batch job gets Rich's table wrapped to 80 columns (~40 lines for a summary of 3 rows);
    the plain table keeps a row a line."""
    if sys.stdout.isatty():
        return callbacks
    return [ModelSummary(max_depth=callback._max_depth) if isinstance(callback, RichModelSummary) else callback
            for callback in callbacks]  # fmt: skip


def build_trainer(config: DictConfig, **arguments: Any) -> L.Trainer:
    """The Lightning Trainer of ``config``, with ``precision: auto`` resolved for the device it runs on."""
    precision = resolve_precision(config.get("precision", AUTO), config.get("accelerator", AUTO))
    return build_object(config, "trainer", precision=precision, **arguments)


def numerics(trainer: L.Trainer, model: PetModule) -> dict[str, str]:
    """Which precision and memory format the training device runs (``auto`` resolved)."""
    device = trainer.strategy.root_device.type
    channels_last = uses_channels_last(model.channels_last, device)
    return {"precision": str(trainer.precision), "memory_format": "channels_last" if channels_last else "contiguous"}


def describe_numerics(trainer: L.Trainer, model: PetModule) -> str:
    """The precision and memory format, and for a CPU what decided them, for the run log."""
    chosen = numerics(trainer, model)
    text = f"precision {chosen['precision']}, {chosen['memory_format']}"
    if trainer.strategy.root_device.type != "cpu":
        return text
    features = cpu_bf16_features()
    return text + (f" (CPU with {' and '.join(features)})" if features else " (CPU without bfloat16 instructions)")


def tensorboard_writer(trainer: L.Trainer) -> Any | None:
    """The SummaryWriter of the run's TensorBoard logger, if it has one."""
    return next((lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
