"""Classification: one class per image, from a label column of the index (``species`` or ``breed``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from petlab.config import real_number, whole_number
from petlab.models import Backbone
from petlab.tasks.base import Task, mean_probabilities


class ClassificationHead(nn.Sequential):
    """The notebook's classifier on the pooled features: Linear(hidden), ReLU, Dropout, Linear(classes)."""

    def __init__(self, in_features: int, num_classes: int, hidden: int, dropout: float) -> None:
        super().__init__(
            nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
        )

    def forward(self, features: list[torch.Tensor], pooled: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return super().forward(pooled)


class Classification(Task):
    """Class logits (N, classes) for the label column ``target``; cross-entropy with ``label_smoothing``."""

    kind = "classification"
    metric_names = ("acc",)

    def __init__(
        self, name: str, target: str, class_names: Sequence[str], hidden: int = 512, dropout: float = 0.5,
        label_smoothing: float = 0.0, monitor: str = "val/acc", mode: str = "max",
    ) -> None:  # fmt: skip
        super().__init__(name, monitor, mode)
        hidden = whole_number("task.hidden", hidden, 1)
        dropout = real_number("task.dropout", dropout, 0, below=1)
        label_smoothing = real_number("task.label_smoothing", label_smoothing, 0, below=1)
        self.target, self.class_names = target, list(class_names)
        self.hidden, self.dropout, self.label_smoothing = hidden, dropout, label_smoothing
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "target": self.target, "class_names": self.class_names, "hidden": self.hidden,
                "dropout": self.dropout, "label_smoothing": self.label_smoothing}  # fmt: skip

    def label_classes(self) -> dict[str, list[str]]:
        return {self.target: self.class_names}

    def data_options(self) -> dict[str, Any]:
        return {"target": self.target}

    def measured_targets(self, targets: torch.Tensor) -> torch.Tensor:
        # MixUp and CutMix give class probabilities (N, classes): accuracy counts the dominant label.
        return targets.argmax(dim=1) if targets.is_floating_point() else targets

    def merged_with_mirror(self, outputs: torch.Tensor, mirrored: torch.Tensor) -> torch.Tensor:
        return mean_probabilities(outputs, mirrored)

    def head(self, backbone: Backbone) -> nn.Module:
        return ClassificationHead(backbone.num_features, len(self.class_names), self.hidden, self.dropout)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.criterion(outputs, targets)

    def metrics(self, stage: str) -> dict[str, Metric]:
        classes = len(self.class_names)
        metrics: dict[str, Metric] = {"acc": MulticlassAccuracy(classes, average="micro")}
        if stage == "test":
            metrics["f1_macro"] = MulticlassF1Score(classes, average="macro")
        return metrics

    def kept_for_evaluation(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"probabilities": outputs.softmax(dim=1), "targets": targets}

    def write_evaluation(
        self, output_dir: Path, kept: dict[str, torch.Tensor], dataset: Any, experiment: Any | None, step: int
    ) -> None:  # fmt: skip
        from petlab.interpret import write_evaluation

        write_evaluation(output_dir, kept["probabilities"], kept["targets"], dataset.paths, self.class_names,
                         experiment, step)  # fmt: skip

    def predictions(self, outputs: torch.Tensor, images: Sequence[Any], top_k: int) -> list[dict[str, Any]]:
        values, indices = outputs.softmax(dim=1).topk(min(top_k, len(self.class_names)), dim=1)
        rows = zip(values.tolist(), indices.tolist(), strict=True)
        return [{"top": [{"class": self.class_names[i], "probability": round(p, 4)} for p, i in zip(*row, strict=True)]}
                for row in rows]  # fmt: skip

    def prediction_table(self, results: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
        rows = []
        for result in results:
            best, *rest = result["top"]
            others = ", ".join(f"{t['class']} {t['probability']:.2f}" for t in rest)
            rows.append([result["image"], best["class"], f"{best['probability']:.3f}", others])
        return ["image", "prediction", "probability", "then"], rows

    def export_spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "class_names": self.class_names, "output": "logits, shape (N, classes)",
                "output_names": ["logits"]}  # fmt: skip
