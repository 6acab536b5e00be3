"""Segmentation: the class of every pixel, from a per-pixel target (the release's trimaps; the notebook's
fourth task).

``classes=foreground``: pet vs background, the trimap's border band ignored by the loss and the metrics
(as torchvision's segmentation reference does with its ignore index); ``classes=trimap``: pet,
background and border. Pixels that the augmentation brings in from outside the image are ignored too.
The head is a feature pyramid (``torchvision.ops.FeaturePyramidNetwork``) on the backbone's stages. Its
evaluation: per-class and per-image IoU, overlays of the true and predicted masks, an IoU histogram.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassJaccardIndex
from torchvision.ops import FeaturePyramidNetwork

from petlab.answers.segmentation import PetArea
from petlab.checks import real_number, whole_number
from petlab.data.report import markdown_table
from petlab.data.targets import Mask
from petlab.data.targets.mask import BACKGROUND, BORDER, OUTSIDE, PET
from petlab.errors import PetlabError
from petlab.interpret import Evaluation, histogram
from petlab.models import Backbone, Stage
from petlab.pictures import overlay
from petlab.tasks.base import Task, mean_probabilities, target_of

IGNORE = 255  # the target of pixels no loss or metric counts
# Per choice of task.classes: the class names, and the class of each raw trimap value (0 outside, 1-3).
CLASSES = {
    "foreground": (["background", "pet"], {OUTSIDE: IGNORE, PET: 1, BACKGROUND: 0, BORDER: IGNORE}),
    "trimap": (["pet", "background", "border"], {OUTSIDE: IGNORE, PET: 0, BACKGROUND: 1, BORDER: 2}),
}
# The release's trimap value of each class, for mask files that predict writes.
TRIMAP_VALUE = {"pet": PET, "background": BACKGROUND, "border": BORDER}


class SegmentationHead(nn.Module):
    """A feature pyramid on the backbone's stages of stride 4 and coarser (the stride-2 stem adds memory,
    not accuracy), then a 3x3 conv block and a 1x1 classifier on its finest map, upsampled bilinearly
    to the input size: per-pixel logits (N, classes, H, W)."""

    def __init__(self, stages: Sequence[Stage], num_classes: int, channels: int) -> None:
        super().__init__()
        self.levels = [i for i, stage in enumerate(stages) if stage.stride >= 4] or list(range(len(stages)))
        self.pyramid = FeaturePyramidNetwork([stages[i].channels for i in self.levels], channels)
        self.classifier = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, num_classes, 1),
        )  # fmt: skip

    def forward(self, features: list[torch.Tensor], pooled: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        maps = self.pyramid(OrderedDict((str(i), features[i]) for i in self.levels))
        logits = self.classifier(next(iter(maps.values())))
        return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1 - the mean over classes of the soft Dice coefficient, on the pixels that count."""
    valid = (targets != IGNORE).unsqueeze(1)
    probabilities = logits.softmax(dim=1) * valid
    one_hot = F.one_hot(targets.masked_fill(targets == IGNORE, 0), logits.shape[1]).permute(0, 3, 1, 2) * valid
    dims = (0, 2, 3)
    overlap = (probabilities * one_hot).sum(dims)
    total = probabilities.sum(dims) + one_hot.sum(dims)
    return 1 - ((2 * overlap + 1) / (total + 1)).mean()


class Segmentation(Task):
    """Per-pixel logits (N, classes, H, W) for the trimaps (a :class:`Mask`); cross-entropy x ``ce_weight``
    + Dice x ``dice_weight``; mean IoU, Dice and pixel accuracy over the pixels that count."""

    metric_modes: ClassVar[dict[str, str]] = {"miou": "max", "dice": "max", "pixel_acc": "max"}
    spatial = True

    def __init__(
        self, name: str, target: str | Mask = "trimap", classes: str = "foreground", decoder_channels: int = 128,
        ce_weight: float = 1.0, dice_weight: float = 1.0, monitor: str = "val/miou", mode: str | None = None,
    ) -> None:  # fmt: skip
        super().__init__(name, monitor, mode)
        if classes not in CLASSES:
            raise PetlabError(f"task.classes={classes} is not known: choose {' or '.join(CLASSES)}")
        self.target: Mask = target_of(name, target, Mask, "trimap")  # type: ignore[assignment]
        decoder_channels = whole_number("task.decoder_channels", decoder_channels, 1)
        ce_weight = real_number("task.ce_weight", ce_weight, 0)
        dice_weight = real_number("task.dice_weight", dice_weight, 0)
        if ce_weight + dice_weight == 0:
            raise PetlabError("task.ce_weight and task.dice_weight are both 0: give at least one a weight > 0")
        self.classes, self.decoder_channels = classes, decoder_channels
        self.ce_weight, self.dice_weight = ce_weight, dice_weight
        self.class_names, mapping = CLASSES[classes]
        self.lookup = torch.tensor([mapping[value] for value in range(4)], dtype=torch.long)

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "target": self.target.spec(), "classes": self.classes,
                "decoder_channels": self.decoder_channels, "ce_weight": self.ce_weight,
                "dice_weight": self.dice_weight}  # fmt: skip

    def targets(self) -> Mask:
        return self.target

    def encode_targets(self, targets: torch.Tensor) -> torch.Tensor:
        """Raw trimap values (N, H, W) -> class indices, IGNORE where no class counts."""
        return self.lookup.to(targets.device)[targets.long()]

    def merged_with_mirror(self, outputs: torch.Tensor, mirrored: torch.Tensor) -> torch.Tensor:
        return mean_probabilities(outputs, mirrored.flip(-1))

    def build_head(self, backbone: Backbone) -> nn.Module:
        return SegmentationHead(backbone.stages, len(self.class_names), self.decoder_channels)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if not (targets != IGNORE).any():  # a batch of border only: nothing to learn, and no NaN
            return outputs.sum() * 0
        loss = outputs.new_zeros(())
        if self.ce_weight:
            loss = loss + self.ce_weight * F.cross_entropy(outputs, targets, ignore_index=IGNORE)
        if self.dice_weight:
            loss = loss + self.dice_weight * dice_loss(outputs, targets)
        return loss

    def metrics(self, stage: str) -> dict[str, Metric]:
        classes = len(self.class_names)
        return {
            "miou": MulticlassJaccardIndex(classes, average="macro", ignore_index=IGNORE),
            "dice": MulticlassF1Score(classes, average="macro", ignore_index=IGNORE),
            "pixel_acc": MulticlassAccuracy(classes, average="micro", ignore_index=IGNORE),
        }

    def kept_for_evaluation(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        predictions = outputs.argmax(dim=1)
        return {
            "predictions": predictions.to(torch.uint8),
            "confusion": confusions(predictions, targets, len(self.class_names)),
        }

    def write_evaluation(self, evaluation: Evaluation, kept: dict[str, torch.Tensor], dataset: Any) -> None:
        write_segmentation_evaluation(self, evaluation, kept, dataset)

    @property
    def question(self) -> str:
        return "where is the pet?"

    def answerer(self) -> PetArea:
        return PetArea(self.class_names, {name: TRIMAP_VALUE[name] for name in self.class_names})

    def export_spec(self) -> dict[str, Any]:
        return {"class_names": self.class_names,
                "output": "per-pixel logits, shape (N, classes, H, W): resize them to the image's size bilinearly "
                          "without antialiasing, as torch.nn.functional.interpolate(mode='bilinear', "
                          "align_corners=False) does, then take the best class of each pixel",
                "output_names": ["logits"],
                "trimap_values": {name: TRIMAP_VALUE[name] for name in self.class_names}}  # fmt: skip


def confusions(predictions: torch.Tensor, targets: torch.Tensor, classes: int) -> torch.Tensor:
    """Per image, the (classes, classes) counts of (true, predicted) over the pixels that count."""
    valid = targets != IGNORE
    codes = torch.where(valid, targets * classes + predictions, classes * classes)  # ignored: one bin past the end
    offsets = torch.arange(len(codes), device=codes.device).view(-1, 1, 1) * (classes * classes + 1)
    counts = torch.bincount((codes + offsets).flatten(), minlength=len(codes) * (classes * classes + 1))
    return counts.view(len(codes), -1)[:, : classes * classes].view(-1, classes, classes)


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


def write_segmentation_evaluation(
    task: Segmentation, evaluation: Evaluation, kept: dict[str, torch.Tensor], dataset: Any, count: int = 6,
    seed: int = 0,
) -> pd.DataFrame:  # fmt: skip
    """Per-class IoU table, image / true / predicted overlays (random and worst IoU), a histogram of the
    images' IoU and the learning curves; returns the table."""
    predictions, confusion_counts = kept["predictions"], kept["confusion"]
    table = iou_table(confusion_counts.sum(dim=0).numpy(), task.class_names)
    evaluation.table("per_class_iou.csv", table, index=False)
    ious, class_ious = image_ious(confusion_counts)
    names = [Path(p).name for p in dataset.paths[: len(ious)]]
    pet_iou = class_ious[:, task.class_names.index("pet")].numpy().round(4)
    per_image = pd.DataFrame({"image": names, "iou": ious.numpy().round(4), "pet_iou": pet_iou})
    evaluation.table("per_image_iou.csv", per_image, index=False)
    counted = ious.isfinite().nonzero().flatten()
    worst = counted[ious[counted].argsort()[:count]].tolist()
    chosen = np.random.default_rng(seed).choice(len(counted), size=min(count, len(counted)), replace=False)
    figures = {
        "sample_predictions": mask_grid(task, dataset, predictions, ious, counted[chosen].tolist(),
                                        "Sample predictions (test)"),
        "worst_iou": mask_grid(task, dataset, predictions, ious, worst, "Lowest IoU (test)"),
        "iou_histogram": histogram(ious[counted], "mean IoU of the image", "Test images by IoU"),
    }  # fmt: skip
    evaluation.save_figures(figures, "miou")
    for name, iou in zip(table["class"], table["iou"], strict=True):
        evaluation.scalar(f"test/iou_per_class/{name}", iou)
    evaluation.text("evaluation/per_class_iou", markdown_table(table.set_index("class")))
    return table
