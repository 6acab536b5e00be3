"""What a task is to petlab: the one interface that every kind of target implements.

A task says which target it reads for an image, builds its head on a backbone, computes its loss and
per-stage torchmetrics, names the metric to monitor, writes its evaluation files, and describes its
predictions and its exported output. The LightningModule, the entry points and the configs only talk to
this interface, so a new task on targets the data module already reads (a label column) is one module
in ``petlab/tasks/`` and one config in ``conf/task/``; a new kind of target also needs the data module to
read it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torchmetrics import Metric

from petlab.errors import PetlabError
from petlab.models import Backbone

MODES = ("max", "min")
# What a task's head returns: one tensor, or for several tasks trained jointly one per head, by name.
Outputs = torch.Tensor | dict[str, torch.Tensor]


def fp32(outputs: Outputs) -> Outputs:
    """Outputs in fp32 (under bf16/fp16 autocast they come out in low precision)."""
    if isinstance(outputs, dict):
        return {name: value.float() for name, value in outputs.items()}
    return outputs.float()


def mean_probabilities(outputs: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """The log of the mean of two sets of class probabilities (dimension 1) from their logits: logits
    themselves, whose softmax is that mean."""
    return ((outputs.softmax(dim=1) + others.softmax(dim=1)) / 2).log()


class Task(ABC):
    """A kind of target. ``name`` is the configuration's name (``species``); ``monitor`` the validation
    metric that selects checkpoints, stops early and ranks sweeps, better when higher (``mode=max``) or
    lower (``min``)."""

    kind: ClassVar[str]
    metric_names: ClassVar[tuple[str, ...]]  # what metrics() returns for validation, besides "loss"
    # A spatial task answers where things are (every pixel's class, a box): petlab.predict shows it the
    # whole image at the validation scale (not the centre crop, which could cut off what it looks for),
    # and writes pictures per image (write_prediction) to an output folder.
    spatial: ClassVar[bool] = False

    def __init__(self, name: str, monitor: str, mode: str) -> None:
        stage, _, metric = monitor.partition("/")
        if stage != "val" or metric not in (*self.metric_names, "loss"):
            valid = ", ".join(f"val/{name}" for name in (*self.metric_names, "loss"))
            raise PetlabError(f"task.monitor={monitor} is not a metric of task={name}: choose {valid}")
        if mode not in MODES:
            raise PetlabError(f"task.mode={mode} must be max or min")
        if metric == "loss" and mode == "max":
            raise PetlabError(f"task.monitor={monitor} is better when lower: set task.mode=min (or leave it out)")
        self.name, self.monitor, self.mode = name, monitor, mode

    @property
    def best_metric(self) -> str:
        """The best monitored value so far (``val/acc_best``): what sweeps optimise and reports rank."""
        return f"{self.monitor}_best"

    def spec(self) -> dict[str, Any]:
        """Plain values that rebuild this task (saved in checkpoints): see :func:`petlab.tasks.task_from_spec`."""
        return {"kind": self.kind, "name": self.name, "monitor": self.monitor, "mode": self.mode}

    def data_options(self) -> dict[str, Any]:
        """What the data module must be given to read this task's targets (see ``conf/data``)."""
        return {}

    def label_classes(self) -> dict[str, list[str]]:
        """The classes this task knows for each label target it reads (none for masks and boxes)."""
        return {}

    def encode_targets(self, targets: torch.Tensor) -> torch.Tensor:
        """The batch's targets as the loss and the metrics take them (the data's own by default)."""
        return targets

    def measured_targets(self, targets: Any) -> Any:
        """Encoded targets as the metrics take them (the same by default; mixed soft labels -> the dominant)."""
        return targets

    @abstractmethod
    def merged_with_mirror(self, outputs: Outputs, mirrored: Outputs) -> Outputs:
        """Test-time augmentation: fp32 ``outputs`` for images merged with ``mirrored``, the outputs for their
        horizontal mirrors (mapped back to the unmirrored image first), in the same form."""

    @abstractmethod
    def head(self, backbone: Backbone) -> nn.Module:
        """The task's layers on ``backbone``; called as ``head(feature_maps, pooled, image_size)`` with the
        stage feature maps, the pooled vector and the input's (height, width)."""

    @abstractmethod
    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The training loss of fp32 ``outputs`` against ``targets``."""

    @abstractmethod
    def metrics(self, stage: str) -> dict[str, Metric]:
        """Fresh torchmetrics for ``stage`` (train, val, test), keyed by name, updated with (outputs, targets)."""

    @abstractmethod
    def kept_for_evaluation(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """What of a test batch the evaluation files need, per image along dimension 0."""

    @abstractmethod
    def write_evaluation(
        self, output_dir: Path, kept: dict[str, torch.Tensor], dataset: Any, experiment: Any | None, step: int
    ) -> None:  # fmt: skip
        """Write the evaluation files (and figures to a TensorBoard writer) from the kept test outputs;
        ``dataset`` is the evaluated split (``dataset.paths``, ``dataset[i]`` = (image, target))."""

    @abstractmethod
    def predictions(self, outputs: torch.Tensor, images: Sequence[Any], top_k: int) -> list[dict[str, Any]]:
        """One JSON-ready answer per image of a batch of fp32 outputs (``images`` the original PIL images,
        for answers measured at their own size)."""

    def write_prediction(self, outputs: Outputs, image: Any, output_dir: Path, stem: str) -> dict[str, Any]:
        """Files for one predicted image (``outputs`` its fp32 outputs, ``image`` the original PIL image);
        returns their paths by name, added to the image's answer (a dict value is merged into the answer's
        entry of that name). Nothing by default: ``output_dir`` is not created."""
        return {}

    @abstractmethod
    def prediction_table(self, results: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
        """Headers and rows of the table ``petlab.predict`` prints for ``results`` (with their ``image``)."""

    @abstractmethod
    def export_spec(self) -> dict[str, Any]:
        """What an exported model outputs, for its JSON sidecar (``output`` describes the tensor)."""
