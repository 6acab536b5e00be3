"""Classification: one class per image, from a label target (``species``, ``breed``, a folder's classes).

Its evaluation: a per-class CSV, the confusion matrix, the most confused pairs (fastai's
``most_confused``), grids of the top losses and of sample predictions, and the learning curves.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score
from torchmetrics.functional.classification import multiclass_confusion_matrix

from petlab.answers.classification import TopClasses
from petlab.checks import real_number, whole_number
from petlab.data.report import markdown_table
from petlab.data.targets import Label
from petlab.data.targets.label import NO_LABEL
from petlab.interpret import Evaluation, image_grid, thumbnail
from petlab.models import Backbone
from petlab.tasks.base import Task, mean_probabilities, target_of


class ClassificationHead(nn.Sequential):
    """The notebook's classifier on the pooled features: Linear(hidden), ReLU, Dropout, Linear(classes)."""

    def __init__(self, in_features: int, num_classes: int, hidden: int, dropout: float) -> None:
        super().__init__(
            nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
        )

    def forward(self, features: list[torch.Tensor], pooled: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return super().forward(pooled)


class Classification(Task):
    """Class logits (N, classes) for the label ``target`` (a column of the index, or a :class:`Label`);
    cross-entropy with ``label_smoothing``; images without a label count nowhere."""

    metric_modes: ClassVar[dict[str, str]] = {"acc": "max", "f1_macro": "max"}
    test_only = ("f1_macro",)

    def __init__(
        self, name: str, target: str | Label, hidden: int = 512, dropout: float = 0.5,
        label_smoothing: float = 0.0, monitor: str = "val/acc", mode: str | None = None,
    ) -> None:  # fmt: skip
        super().__init__(name, monitor, mode)
        self.target: Label = target_of(name, target, Label)  # type: ignore[assignment]
        self.hidden = whole_number("task.hidden", hidden, 1)
        self.dropout = real_number("task.dropout", dropout, 0, below=1)
        self.label_smoothing = real_number("task.label_smoothing", label_smoothing, 0, below=1)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=self.label_smoothing, ignore_index=NO_LABEL)

    @property
    def class_names(self) -> list[str]:
        return self.target.class_names

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "target": self.target.spec(), "hidden": self.hidden, "dropout": self.dropout,
                "label_smoothing": self.label_smoothing}  # fmt: skip

    def targets(self) -> Label:
        return self.target

    def measured_targets(self, targets: torch.Tensor) -> torch.Tensor:
        # MixUp and CutMix give class probabilities (N, classes): accuracy counts the dominant label.
        return targets.argmax(dim=1) if targets.is_floating_point() else targets

    def merged_with_mirror(self, outputs: torch.Tensor, mirrored: torch.Tensor) -> torch.Tensor:
        return mean_probabilities(outputs, mirrored)

    def build_head(self, backbone: Backbone) -> nn.Module:
        return ClassificationHead(backbone.num_features, len(self.class_names), self.hidden, self.dropout)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if not targets.is_floating_point() and not (targets != NO_LABEL).any():
            return outputs.sum() * 0  # no image of the batch has a label: nothing to learn, and no NaN
        return self.criterion(outputs, targets)

    def metrics(self, stage: str) -> dict[str, Metric]:
        classes = len(self.class_names)
        metrics: dict[str, Metric] = {"acc": MulticlassAccuracy(classes, average="micro", ignore_index=NO_LABEL)}
        if stage == "test":
            metrics["f1_macro"] = MulticlassF1Score(classes, average="macro", ignore_index=NO_LABEL)
        return metrics

    def kept_for_evaluation(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"probabilities": outputs.softmax(dim=1), "targets": targets}

    def label_probabilities(self, kept: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        return kept["probabilities"], kept["targets"], self.class_names

    def write_evaluation(self, evaluation: Evaluation, kept: dict[str, torch.Tensor], dataset: Any) -> None:
        labelled = kept["targets"] != NO_LABEL
        paths = [path for path, keep in zip(dataset.paths, labelled.tolist(), strict=False) if keep]
        write_classification_evaluation(evaluation, kept["probabilities"][labelled], kept["targets"][labelled],
                                        paths, self.class_names)  # fmt: skip

    @property
    def question(self) -> str:
        return f"which {self.target.name}?"

    def answerer(self) -> TopClasses:
        return TopClasses(self.class_names)

    def export_spec(self) -> dict[str, Any]:
        return {"class_names": self.class_names, "output": "logits, shape (N, classes)", "output_names": ["logits"]}


def confusion(probabilities: torch.Tensor, targets: torch.Tensor, num_classes: int) -> np.ndarray:
    """Counts with true classes as rows and predicted classes as columns (torchmetrics)."""
    return multiclass_confusion_matrix(probabilities, targets, num_classes).numpy()


def per_class_table(matrix: np.ndarray, class_names: Sequence[str]) -> pd.DataFrame:
    """Support, accuracy (recall), precision and F1 of every class, from the confusion matrix."""
    hits = np.diag(matrix).astype(float)
    support, claimed = matrix.sum(axis=1), matrix.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall, precision = hits / support, hits / claimed
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    table = {"class": class_names, "support": support, "accuracy": recall, "precision": precision, "f1": f1}
    return pd.DataFrame(table).round(4)


def most_confused(matrix: np.ndarray, class_names: Sequence[str], min_count: int = 1) -> pd.DataFrame:
    """Off-diagonal (true, predicted) pairs by count, most frequent first."""
    pairs = [
        {"true": class_names[t], "predicted": class_names[p], "count": int(matrix[t, p])}
        for t in range(len(class_names)) for p in range(len(class_names))
        if t != p and matrix[t, p] >= min_count
    ]  # fmt: skip
    return pd.DataFrame(pairs, columns=["true", "predicted", "count"]).sort_values(
        "count", ascending=False, kind="stable"
    )


def confusion_figure(matrix: np.ndarray, class_names: Sequence[str]) -> Figure:
    size = max(4.0, 0.32 * len(class_names) + 2.5)
    figure = Figure(figsize=(size + 1, size))
    axes = figure.subplots()
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046)
    ticks = range(len(class_names))
    font = 10 if len(class_names) <= 10 else 7
    axes.set_xticks(ticks, labels=class_names, rotation=90, fontsize=font)
    axes.set_yticks(ticks, labels=class_names, fontsize=font)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    if len(class_names) <= 12:
        for (row, column), count in np.ndenumerate(matrix):
            colour = "white" if count > matrix.max() / 2 else "black"
            axes.text(column, row, str(count), ha="center", va="center", color=colour, fontsize=font)
    axes.set_title("Confusion matrix (test)")
    figure.tight_layout()
    return figure


def caption(probabilities: torch.Tensor, target: int, class_names: Sequence[str], loss: float | None) -> str:
    predicted = int(probabilities.argmax())
    text = f"true {class_names[target]}\npred {class_names[predicted]} ({probabilities[predicted]:.2f})"
    return text + (f"\nloss {loss:.2f}, p(true) {probabilities[target]:.2f}" if loss is not None else "")


def prediction_grids(
    probabilities: torch.Tensor, targets: torch.Tensor, paths: Sequence[str], class_names: Sequence[str],
    count: int = 12, seed: int = 0,
) -> dict[str, Figure]:  # fmt: skip
    """The ``count`` highest-loss test images, and ``count`` random ones, with true and predicted labels."""
    losses = -torch.log(probabilities[torch.arange(len(targets)), targets].clamp_min(1e-12))
    worst = losses.argsort(descending=True)[:count].tolist()
    sample = np.random.default_rng(seed).choice(len(paths), size=min(count, len(paths)), replace=False).tolist()
    grids = {}
    for name, indices, with_loss in (("top_losses", worst, True), ("sample_predictions", sample, False)):
        grids[name] = image_grid(
            [thumbnail(paths[i]) for i in indices],
            [caption(probabilities[i], int(targets[i]), class_names, float(losses[i]) if with_loss else None)
             for i in indices],
            ["green" if probabilities[i].argmax() == targets[i] else "red" for i in indices],
            "Highest losses (test)" if with_loss else "Sample predictions (test)",
        )  # fmt: skip
    return grids


def write_classification_evaluation(
    evaluation: Evaluation, probabilities: torch.Tensor, targets: torch.Tensor, paths: Sequence[str],
    class_names: Sequence[str],
) -> pd.DataFrame:  # fmt: skip
    """Write the evaluation files of class ``probabilities`` against ``targets`` (and figures and tables to
    TensorBoard); returns the per-class table."""
    paths = paths[: len(targets)]  # limit_test_batches/fast_dev_run predict only the first (unshuffled) images
    matrix = confusion(probabilities, targets, len(class_names))
    table = per_class_table(matrix, class_names)
    evaluation.table("per_class.csv", table, index=False)
    evaluation.table("confusion_matrix.csv", pd.DataFrame(matrix, index=class_names, columns=class_names))
    confused = most_confused(matrix, class_names)
    evaluation.table("most_confused.csv", confused, index=False)
    figures = {"confusion_matrix": confusion_figure(matrix, class_names),
               **prediction_grids(probabilities, targets, paths, class_names)}  # fmt: skip
    evaluation.save_figures(figures, "acc")
    for name, accuracy in zip(table["class"], table["accuracy"], strict=True):
        evaluation.scalar(f"test/acc_per_class/{name}", accuracy)
    evaluation.text("evaluation/per_class", markdown_table(table.set_index("class")))
    evaluation.text("evaluation/most_confused", markdown_table(confused.head(20).set_index("true")))
    return table
