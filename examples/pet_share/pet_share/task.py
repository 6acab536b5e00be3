"""The task: regress the share of the photo that is the pet, a number per image (see ``pet_share.target``).

A small MLP on the backbone's pooled features gives a logit whose sigmoid is the share; the loss is the
smooth L1 distance to the true share over the images that have one; the metrics are the mean absolute
error (lower is better) and the share of images within 0.05 of the truth (higher is better).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn
from torchmetrics import Metric

from pet_share.answers import ShareAnswer
from pet_share.target import PetShare
from petlab.checks import whole_number
from petlab.interpret import Evaluation, histogram
from petlab.models import Backbone
from petlab.tasks import Task
from petlab.tasks.base import target_of


class ShareHead(nn.Module):
    """Linear(hidden), ReLU, Linear(1) on the pooled features: one logit per image."""

    def __init__(self, in_features: int, hidden: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))

    def forward(self, features: list[torch.Tensor], pooled: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return self.layers(pooled)[:, 0]


class Within(Metric):
    """Over the images that have a share: the mean absolute error, or with ``tolerance`` the fraction of
    images whose predicted share is within it."""

    full_state_update = False

    def __init__(self, tolerance: float | None = None) -> None:
        super().__init__()
        self.tolerance = tolerance
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        known = targets.isfinite()
        errors = (outputs[known].sigmoid() - targets[known]).abs()
        self.total += errors.sum() if self.tolerance is None else (errors <= self.tolerance).float().sum()
        self.count += known.sum()

    def compute(self) -> torch.Tensor:
        return self.total / self.count.clamp_min(1)


class PetShareRegression(Task):
    """The share of the photo that is the pet (a :class:`PetShare`), from the whole image."""

    metric_modes: ClassVar[dict[str, str]] = {"mae": "min", "within5": "max"}
    spatial = True  # predict shows it the whole photo: the share is the whole photo's

    def __init__(
        self, name: str, target: str | PetShare = "pet_share", hidden: int = 128, monitor: str = "val/mae",
        mode: str | None = None,
    ) -> None:  # fmt: skip
        super().__init__(name, monitor, mode)
        self.target: PetShare = target_of(name, target, PetShare, "pet_share")  # type: ignore[assignment]
        self.hidden = whole_number("task.hidden", hidden, 1)

    @property
    def question(self) -> str:
        return "how much of the photo is the pet?"

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "target": self.target.spec(), "hidden": self.hidden}

    def targets(self) -> PetShare:
        return self.target

    def merged_with_mirror(self, outputs: torch.Tensor, mirrored: torch.Tensor) -> torch.Tensor:
        return (outputs + mirrored) / 2  # a mirror shows as much pet

    def build_head(self, backbone: Backbone) -> nn.Module:
        return ShareHead(backbone.num_features, self.hidden)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        known = targets.isfinite()
        if not known.any():  # no image of the batch has a share: nothing to learn, and no NaN
            return outputs.sum() * 0
        return F.smooth_l1_loss(outputs[known].sigmoid(), targets[known], beta=0.05)

    def metrics(self, stage: str) -> dict[str, Metric]:
        return {"mae": Within(), "within5": Within(0.05)}

    def kept_for_evaluation(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"predicted": outputs.sigmoid(), "true": targets}

    def write_evaluation(self, evaluation: Evaluation, kept: dict[str, torch.Tensor], dataset: Any) -> None:
        """``per_image.csv`` (true and predicted share, error), a scatter of predicted against true shares
        and a histogram of the errors, with the learning curves."""
        predicted, true = kept["predicted"], kept["true"]
        known = true.isfinite()
        names = [Path(path).name for path in dataset.paths[: len(true)]]
        table = pd.DataFrame({"image": names, "true": true.numpy().round(4), "predicted": predicted.numpy().round(4)})
        evaluation.table("per_image.csv", table.assign(error=(table["predicted"] - table["true"]).abs()), index=False)
        scatter = Figure(figsize=(4.5, 4.5))
        axes = scatter.subplots()
        axes.scatter(true[known].numpy(), predicted[known].numpy(), s=8)
        axes.plot([0, 1], [0, 1], color="grey", linewidth=1)
        axes.set_xlabel("true share")
        axes.set_ylabel("predicted share")
        axes.set_title("Pet share (test)")
        errors = (predicted[known] - true[known]).abs()
        figures = {"shares": scatter, "error_histogram": histogram(errors, "absolute error", "Test images by error",
                                                                   (0, 0.5))}  # fmt: skip
        evaluation.save_figures(figures, "mae")

    def answerer(self) -> ShareAnswer:
        return ShareAnswer()

    def export_spec(self) -> dict[str, Any]:
        return {
            "output": "a logit per image, shape (N,): its sigmoid is the share of the image that is the pet",
            "output_names": ["share"],
        }
