"""Head localisation: the box around the animal's head, from the release's ``annotations/xmls`` (the
notebook's third task).

A box is (x0, y0, x1, y1) as fractions of the image the network sees; images without a box (NaN, see
``petlab.data.targets.box``) count in no loss and no metric. The head is a small MLP on the backbone's pooled
features whose sigmoid outputs are the box's centre and size, so every output is a valid box. Its
evaluation: per-image IoU, drawn boxes (random and worst), an IoU histogram.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from PIL import Image
from torch import nn
from torchmetrics import Metric
from torchvision.ops import box_area, generalized_box_iou_loss

from petlab.answers.box import BoxInPixels
from petlab.checks import real_number, whole_number
from petlab.data.targets import Box
from petlab.data.targets.box import has_box
from petlab.errors import PetlabError
from petlab.interpret import Evaluation, histogram, image_grid
from petlab.models import Backbone
from petlab.pictures import drawn
from petlab.tasks.base import Task, target_of


class BoxHead(nn.Module):
    """Linear(hidden), ReLU, Linear(4) on the pooled features -> (x0, y0, x1, y1): sigmoids give the box's
    centre and size, so every output is a valid box, centred in the image at the start. A box may reach
    past the image's edge by up to half its size: clamping it here would stop the gradient of a corner
    there, so it is clipped only where it is read (metrics, predictions)."""

    def __init__(self, in_features: int, hidden: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 4))

    def forward(self, features: list[torch.Tensor], pooled: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        # In fp32: under bf16 autocast a coordinate would only be good to 1/256 of the image.
        centre, extent = self.layers(pooled).float().sigmoid().split(2, dim=1)
        return torch.cat([centre - extent / 2, centre + extent / 2], dim=1)


def paired_iou(predicted: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """The IoU of each predicted box with its own true box, (N, 4) x (N, 4) -> (N,)."""
    predicted, true = predicted.float(), true.float()
    low, high = torch.maximum(predicted[:, :2], true[:, :2]), torch.minimum(predicted[:, 2:], true[:, 2:])
    overlap = (high - low).clamp_min(0).prod(dim=1)
    union = box_area(predicted) + box_area(true) - overlap
    return overlap / union.clamp_min(1e-12)


class BoxIoU(Metric):
    """The mean IoU of predicted and true boxes over the images that have a box; with ``threshold``, the
    fraction of them whose IoU reaches it."""

    full_state_update = False

    def __init__(self, threshold: float | None = None) -> None:
        super().__init__()
        self.threshold = threshold
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        boxed = has_box(targets)
        ious = paired_iou(outputs[boxed].clamp(0, 1), targets[boxed])
        scores = ious if self.threshold is None else (ious >= self.threshold).float()
        self.total += scores.sum()
        self.count += boxed.sum()

    def compute(self) -> torch.Tensor:
        return self.total / self.count.clamp_min(1)


class HeadBox(Task):
    """One box (N, 4) per image, fractions of the input; smooth L1 x ``l1_weight`` + generalised IoU loss
    x ``giou_weight`` over the images that have a box; metrics: mean IoU and the share with IoU >= 0.5."""

    metric_modes: ClassVar[dict[str, str]] = {"iou": "max", "iou50": "max"}
    spatial = True

    def __init__(
        self, name: str, target: str | Box = "box", hidden: int = 256, l1_weight: float = 1.0,
        giou_weight: float = 1.0, monitor: str = "val/iou", mode: str | None = None,
    ) -> None:  # fmt: skip
        super().__init__(name, monitor, mode)
        self.target: Box = target_of(name, target, Box, "box")  # type: ignore[assignment]
        self.hidden = whole_number("task.hidden", hidden, 1)
        self.l1_weight = real_number("task.l1_weight", l1_weight, 0)
        self.giou_weight = real_number("task.giou_weight", giou_weight, 0)
        if self.l1_weight + self.giou_weight == 0:
            raise PetlabError("task.l1_weight and task.giou_weight are both 0: give at least one a weight > 0")

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "target": self.target.spec(), "hidden": self.hidden, "l1_weight": self.l1_weight,
                "giou_weight": self.giou_weight}  # fmt: skip

    def targets(self) -> Box:
        return self.target

    def merged_with_mirror(self, outputs: torch.Tensor, mirrored: torch.Tensor) -> torch.Tensor:
        x0, y0, x1, y1 = mirrored.unbind(dim=1)
        return (outputs + torch.stack([1 - x1, y0, 1 - x0, y1], dim=1)) / 2

    def build_head(self, backbone: Backbone) -> nn.Module:
        return BoxHead(backbone.num_features, self.hidden)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        boxed = has_box(targets)
        if not boxed.any():  # no image of the batch has a box: nothing to learn, and no NaN
            return outputs.sum() * 0
        predicted, true = outputs[boxed], targets[boxed].to(outputs.dtype)
        loss = outputs.new_zeros(())
        if self.l1_weight:
            loss = loss + self.l1_weight * F.smooth_l1_loss(predicted, true, beta=0.05)
        if self.giou_weight:
            loss = loss + self.giou_weight * generalized_box_iou_loss(predicted, true, reduction="mean")
        return loss

    def metrics(self, stage: str) -> dict[str, Metric]:
        return {"iou": BoxIoU(), "iou50": BoxIoU(threshold=0.5)}

    def kept_for_evaluation(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"boxes": outputs.clamp(0, 1), "targets": targets.to(outputs.dtype)}

    def write_evaluation(self, evaluation: Evaluation, kept: dict[str, torch.Tensor], dataset: Any) -> None:
        write_box_evaluation(evaluation, kept["boxes"], kept["targets"], dataset)

    @property
    def question(self) -> str:
        return "where is its head?"

    def answerer(self) -> BoxInPixels:
        return BoxInPixels()

    def export_spec(self) -> dict[str, Any]:
        return {"output": "head box, shape (N, 4): x0, y0, x1, y1 as fractions of the input's width and height "
                          "(clip to [0, 1], then multiply by the image's width and height for pixels)",
                "output_names": ["box"]}  # fmt: skip


def box_grid(dataset: Any, boxes: torch.Tensor, ious: torch.Tensor, indices: Sequence[int], title: str) -> Figure:
    """The images as the network saw them, the true head box in green and the predicted one in red."""
    pictures, titles = [], []
    for index in indices:
        image, true = dataset[index]
        picture = Image.fromarray(image.permute(1, 2, 0).numpy()).resize((256, 256))
        pictures.append(drawn(picture, (boxes[index] * 256).tolist(), (true * 256).tolist()))
        titles.append(f"{Path(dataset.paths[index]).name}\nIoU {float(ious[index]):.2f}")
    return image_grid(pictures, titles, ["black"] * len(indices), title)


def write_box_evaluation(
    evaluation: Evaluation, boxes: torch.Tensor, targets: torch.Tensor, dataset: Any, count: int = 8, seed: int = 0
) -> pd.DataFrame:  # fmt: skip
    """Per-image IoU of the predicted head boxes (``per_image_iou.csv``), drawn boxes (random and worst
    IoU), a histogram of the IoU and the learning curves; returns the per-image table. Test images whose
    box the evaluation crop cut off have no IoU (NaN) and are left out of the figures."""
    boxed = has_box(targets)
    ious = torch.full((len(targets),), torch.nan, dtype=torch.float64)
    ious[boxed] = paired_iou(boxes[boxed], targets[boxed]).double()
    names = [Path(p).name for p in dataset.paths[: len(ious)]]
    table = pd.DataFrame({"image": names, "iou": ious.numpy().round(4)})
    evaluation.table("per_image_iou.csv", table, index=False)
    counted = boxed.nonzero().flatten()
    worst = counted[ious[counted].argsort()[:count]].tolist()
    chosen = np.random.default_rng(seed).choice(len(counted), size=min(count, len(counted)), replace=False)
    figures = {
        "sample_predictions": box_grid(dataset, boxes, ious, counted[chosen].tolist(), "Sample predictions (test)"),
        "worst_iou": box_grid(dataset, boxes, ious, worst, "Lowest IoU (test)"),
        "iou_histogram": histogram(ious[counted], "IoU of the predicted head box", "Test images by IoU"),
    }
    evaluation.save_figures(figures, "iou")
    return table
