"""What a trained classifier gets right and wrong: the files and figures of an evaluation.

Everything is computed from the test split's class probabilities, so training and
``python -m petlab.evaluate`` write the same files: a per-class CSV, the confusion matrix, the most
confused pairs (fastai's ``most_confused``), grids of the top losses and of sample predictions, and the
learning curves read back from the run's TensorBoard events.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from PIL import Image
from torchmetrics.functional.classification import multiclass_confusion_matrix

from petlab.data.report import markdown_table
from petlab.data.transforms import load_rgb


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


def image_grid(pictures: Sequence[Image.Image], titles: Sequence[str], colours: Sequence[str], title: str) -> Figure:
    """Up to four pictures a row, each with its title in its colour."""
    columns = min(4, max(1, len(pictures)))
    rows = max(1, math.ceil(len(pictures) / columns))
    figure = Figure(figsize=(3.2 * columns, 3.4 * rows))
    for i, axes in enumerate(figure.subplots(rows, columns, squeeze=False).flat):
        axes.axis("off")
        if i < len(pictures):
            axes.imshow(pictures[i])
            axes.set_title(titles[i], fontsize=8, color=colours[i])
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def thumbnail(path: str) -> Image.Image:
    picture = load_rgb(path)
    picture.thumbnail((256, 256))
    return picture


def _caption(probabilities: torch.Tensor, target: int, class_names: Sequence[str], loss: float | None) -> str:
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
            [_caption(probabilities[i], int(targets[i]), class_names, float(losses[i]) if with_loss else None)
             for i in indices],
            ["green" if probabilities[i].argmax() == targets[i] else "red" for i in indices],
            "Highest losses (test)" if with_loss else "Sample predictions (test)",
        )  # fmt: skip
    return grids


METRIC_TITLES = {"loss": "loss", "acc": "accuracy", "miou": "mean IoU", "iou": "head box IoU"}


def learning_curves(tensorboard_dir: Path, metric: str = "acc") -> Figure | None:
    """Train vs validation loss and ``metric`` per epoch, read back from the run's TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not tensorboard_dir.is_dir():
        return None
    events = EventAccumulator(str(tensorboard_dir)).Reload()
    tags = set(events.Tags()["scalars"])
    if not {"train/loss", "val/loss"} <= tags:
        return None
    figure = Figure(figsize=(10, 4))
    for axes, name in zip(figure.subplots(1, 2), ("loss", metric), strict=True):
        for stage in ("train", "val"):
            if f"{stage}/{name}" in tags:
                points = {s.step: s.value for s in events.Scalars(f"{stage}/{name}")}  # a resume may repeat steps
                axes.plot(list(points), list(points.values()), marker="o", label=stage)
        axes.set_xlabel("step")
        axes.set_title(METRIC_TITLES.get(name, name))
        axes.legend()
    figure.tight_layout()
    return figure


def write_evaluation(
    output_dir: Path, probabilities: torch.Tensor, targets: torch.Tensor, paths: Sequence[str],
    class_names: Sequence[str], experiment: Any | None = None, step: int = 0,
) -> pd.DataFrame:  # fmt: skip
    """Write the evaluation files to ``output_dir`` (figures and tables also to a TensorBoard writer).

    Returns the per-class table.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = paths[: len(targets)]  # limit_test_batches/fast_dev_run predict only the first (unshuffled) images
    matrix = confusion(probabilities, targets, len(class_names))
    table = per_class_table(matrix, class_names)
    table.to_csv(output_dir / "per_class.csv", index=False)
    pd.DataFrame(matrix, index=class_names, columns=class_names).to_csv(output_dir / "confusion_matrix.csv")
    confused = most_confused(matrix, class_names)
    confused.to_csv(output_dir / "most_confused.csv", index=False)
    figures = {"confusion_matrix": confusion_figure(matrix, class_names),
               **prediction_grids(probabilities, targets, paths, class_names)}  # fmt: skip
    save_figures(output_dir, figures, experiment, step, "acc")
    if experiment is not None:
        for name, accuracy in zip(table["class"], table["accuracy"], strict=True):
            experiment.add_scalar(f"test/acc_per_class/{name}", accuracy, global_step=step)
        experiment.add_text("evaluation/per_class", markdown_table(table.set_index("class")), global_step=step)
        experiment.add_text("evaluation/most_confused", markdown_table(confused.head(20).set_index("true")),
                            global_step=step)  # fmt: skip
    return table


def save_figures(output_dir: Path, figures: dict[str, Figure], experiment: Any | None, step: int, metric: str) -> None:
    """``figures`` and the learning curves of ``metric`` as PNG files, and to TensorBoard's Images tab."""
    curves = learning_curves(output_dir / "tensorboard", metric)
    if curves is not None:
        figures = {**figures, "learning_curves": curves}
    for name, figure in figures.items():
        figure.savefig(output_dir / f"{name}.png", dpi=110)
        if experiment is not None:
            experiment.add_figure(f"evaluation/{name}", figure, global_step=step)


def iou_table(confusion_counts: np.ndarray, class_names: Sequence[str]) -> pd.DataFrame:
    """IoU, Dice and pixel accuracy (recall) of every class from (true, predicted) pixel counts."""
    hits = np.diag(confusion_counts).astype(float)
    support, claimed = confusion_counts.sum(axis=1), confusion_counts.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = hits / (support + claimed - hits)
        dice = 2 * hits / (support + claimed)
        recall = hits / support
    table = {"class": class_names, "pixels": support, "iou": iou, "dice": dice, "pixel_accuracy": recall}
    return pd.DataFrame(table).round(4)


def image_ious(confusion_counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image (N, C, C) -> (N,): the mean IoU over the classes it has or is predicted to have, and each
    class's IoU (N, C; NaN where the class is neither in the image nor predicted)."""
    counts = confusion_counts.double()
    hits = counts.diagonal(dim1=1, dim2=2)
    union = counts.sum(dim=2) + counts.sum(dim=1) - hits
    present = union > 0
    iou = torch.where(present, hits / union.clamp_min(1), 0.0)
    counted = counts.sum(dim=(1, 2)) > 0  # an image without a counted pixel (no trimap) has no IoU
    mean = torch.where(counted, iou.sum(dim=1) / present.sum(dim=1).clamp_min(1), torch.nan)
    return mean, torch.where(present, iou, torch.nan)


def mask_grid(task: Any, dataset: Any, predictions: torch.Tensor, ious: torch.Tensor, indices: Sequence[int],
              title: str) -> Figure:  # fmt: skip
    """One row per image: the image, the true mask and the predicted mask, overlaid (ignored pixels grey)."""
    from petlab.pictures import overlay
    from petlab.tasks.segmentation import IGNORE

    figure = Figure(figsize=(7.5, 2.6 * max(1, len(indices))))
    axes_rows = figure.subplots(max(1, len(indices)), 3, squeeze=False)
    for row, index in zip(axes_rows, indices, strict=False):
        image, raw = dataset[index]
        pixels = image.permute(1, 2, 0).numpy()
        truth = task.encode_targets(raw).numpy()
        shown_truth = np.asarray(overlay(pixels, truth, task.class_names))
        shown_truth = np.where((truth == IGNORE)[..., None], 128, shown_truth).astype(np.uint8)
        panels = (pixels, shown_truth, np.asarray(overlay(pixels, predictions[index].numpy(), task.class_names)))
        labels = (Path(dataset.paths[index]).name, "true", f"predicted (IoU {float(ious[index]):.2f})")
        for axes, panel, label in zip(row, panels, labels, strict=True):
            axes.imshow(panel)
            axes.set_title(label, fontsize=8)
            axes.axis("off")
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def iou_histogram(ious: torch.Tensor, label: str) -> Figure:
    """How the test images' IoU is spread, with its mean."""
    figure = Figure(figsize=(6, 3.5))
    axes = figure.subplots()
    axes.hist(ious.numpy(), bins=20, range=(0, 1), color="tab:blue")
    axes.set_xlabel(label)
    axes.set_ylabel("images")
    axes.set_title(f"Test images by IoU (mean {float(ious.mean()):.3f})")
    figure.tight_layout()
    return figure


def box_grid(dataset: Any, boxes: torch.Tensor, ious: torch.Tensor, indices: Sequence[int], title: str) -> Figure:
    """The images as the network saw them, the true head box in green and the predicted one in red."""
    from petlab.pictures import drawn

    pictures, titles = [], []
    for index in indices:
        image, true = dataset[index]
        picture = Image.fromarray(image.permute(1, 2, 0).numpy()).resize((256, 256))
        pictures.append(drawn(picture, (boxes[index] * 256).tolist(), (true * 256).tolist()))
        titles.append(f"{Path(dataset.paths[index]).name}\nIoU {float(ious[index]):.2f}")
    return image_grid(pictures, titles, ["black"] * len(indices), title)


def write_box_evaluation(
    output_dir: Path, boxes: torch.Tensor, targets: torch.Tensor, dataset: Any, experiment: Any | None = None,
    step: int = 0, count: int = 8, seed: int = 0,
) -> pd.DataFrame:  # fmt: skip
    """Per-image IoU of the predicted head boxes (``per_image_iou.csv``), drawn boxes (random and worst
    IoU), a histogram of the IoU and the learning curves; returns the per-image table. Test images whose
    box the evaluation crop cut off have no IoU (NaN) and are left out of the figures."""
    from petlab.tasks.head import has_box, paired_iou

    output_dir.mkdir(parents=True, exist_ok=True)
    boxed = has_box(targets)
    ious = torch.full((len(targets),), torch.nan, dtype=torch.float64)
    ious[boxed] = paired_iou(boxes[boxed], targets[boxed]).double()
    names = [Path(p).name for p in dataset.paths[: len(ious)]]
    table = pd.DataFrame({"image": names, "iou": ious.numpy().round(4)})
    table.to_csv(output_dir / "per_image_iou.csv", index=False)
    counted = boxed.nonzero().flatten()
    worst = counted[ious[counted].argsort()[:count]].tolist()
    chosen = np.random.default_rng(seed).choice(len(counted), size=min(count, len(counted)), replace=False)
    figures = {
        "sample_predictions": box_grid(dataset, boxes, ious, counted[chosen].tolist(), "Sample predictions (test)"),
        "worst_iou": box_grid(dataset, boxes, ious, worst, "Lowest IoU (test)"),
        "iou_histogram": iou_histogram(ious[counted], "IoU of the predicted head box"),
    }
    save_figures(output_dir, figures, experiment, step, "iou")
    return table


def write_segmentation_evaluation(
    task: Any, output_dir: Path, kept: dict[str, torch.Tensor], dataset: Any, experiment: Any | None = None,
    step: int = 0, count: int = 6, seed: int = 0,
) -> pd.DataFrame:  # fmt: skip
    """Per-class IoU table, image / true / predicted overlays (random and worst IoU), a histogram of the
    images' IoU and the learning curves; returns the table."""
    output_dir.mkdir(parents=True, exist_ok=True)
    predictions, confusion_counts = kept["predictions"], kept["confusion"]
    table = iou_table(confusion_counts.sum(dim=0).numpy(), task.class_names)
    table.to_csv(output_dir / "per_class_iou.csv", index=False)
    ious, class_ious = image_ious(confusion_counts)
    names = [Path(p).name for p in dataset.paths[: len(ious)]]
    pet_iou = class_ious[:, task.class_names.index("pet")].numpy().round(4)
    pd.DataFrame({"image": names, "iou": ious.numpy().round(4), "pet_iou": pet_iou}).to_csv(
        output_dir / "per_image_iou.csv", index=False
    )
    counted = ious.isfinite().nonzero().flatten()
    worst = counted[ious[counted].argsort()[:count]].tolist()
    chosen = np.random.default_rng(seed).choice(len(counted), size=min(count, len(counted)), replace=False)
    figures = {
        "sample_predictions": mask_grid(task, dataset, predictions, ious, counted[chosen].tolist(),
                                        "Sample predictions (test)"),
        "worst_iou": mask_grid(task, dataset, predictions, ious, worst, "Lowest IoU (test)"),
        "iou_histogram": iou_histogram(ious[counted], "mean IoU of the image"),
    }  # fmt: skip
    save_figures(output_dir, figures, experiment, step, "miou")
    if experiment is not None:
        for name, iou in zip(table["class"], table["iou"], strict=True):
            experiment.add_scalar(f"test/iou_per_class/{name}", iou, global_step=step)
        experiment.add_text("evaluation/per_class_iou", markdown_table(table.set_index("class")), global_step=step)
    return table
