"""Segmentation: the class of every pixel, from the release's trimaps (the notebook's fourth task).

``classes=foreground``: pet vs background, the trimap's border band ignored by the loss and the metrics
(as torchvision's segmentation reference does with its ignore index); ``classes=trimap``: pet,
background and border. Pixels that the augmentation brings in from outside the image are ignored too.
The head is a feature pyramid (``torchvision.ops.FeaturePyramidNetwork``) on the backbone's stages.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassJaccardIndex
from torchvision.ops import FeaturePyramidNetwork

from petlab.config import real_number, whole_number
from petlab.data.masks import BACKGROUND, BORDER, OUTSIDE, PET
from petlab.errors import PetlabError
from petlab.models import Backbone, Stage
from petlab.pictures import overlay
from petlab.tasks.base import Task, mean_probabilities

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
    """Per-pixel logits (N, classes, H, W) for the trimaps; cross-entropy x ``ce_weight`` + Dice x
    ``dice_weight``; mean IoU, Dice and pixel accuracy over the pixels that count."""

    kind = "segmentation"
    metric_names = ("miou", "dice", "pixel_acc")
    spatial = True

    def __init__(
        self, name: str, target: str = "trimap", classes: str = "foreground", decoder_channels: int = 128,
        ce_weight: float = 1.0, dice_weight: float = 1.0, monitor: str = "val/miou", mode: str = "max",
    ) -> None:  # fmt: skip
        super().__init__(name, monitor, mode)
        if classes not in CLASSES:
            raise PetlabError(f"task.classes={classes} is not known: choose {' or '.join(CLASSES)}")
        if target != "trimap":
            raise PetlabError(f"task.target={target}: segmentation reads the trimaps, task.target=trimap")
        decoder_channels = whole_number("task.decoder_channels", decoder_channels, 1)
        ce_weight = real_number("task.ce_weight", ce_weight, 0)
        dice_weight = real_number("task.dice_weight", dice_weight, 0)
        if ce_weight + dice_weight == 0:
            raise PetlabError("task.ce_weight and task.dice_weight are both 0: give at least one a weight > 0")
        self.target, self.classes, self.decoder_channels = target, classes, decoder_channels
        self.ce_weight, self.dice_weight = ce_weight, dice_weight
        self.class_names, mapping = CLASSES[classes]
        self.lookup = torch.tensor([mapping[value] for value in range(4)], dtype=torch.long)

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "target": self.target, "classes": self.classes,
                "decoder_channels": self.decoder_channels, "ce_weight": self.ce_weight,
                "dice_weight": self.dice_weight}  # fmt: skip

    def data_options(self) -> dict[str, Any]:
        return {"target": self.target}

    def encode_targets(self, targets: torch.Tensor) -> torch.Tensor:
        """Raw trimap values (N, H, W) -> class indices, IGNORE where no class counts."""
        return self.lookup.to(targets.device)[targets.long()]

    def merged_with_mirror(self, outputs: torch.Tensor, mirrored: torch.Tensor) -> torch.Tensor:
        return mean_probabilities(outputs, mirrored.flip(-1))

    def head(self, backbone: Backbone) -> nn.Module:
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

    def write_evaluation(
        self, output_dir: Path, kept: dict[str, torch.Tensor], dataset: Any, experiment: Any | None, step: int
    ) -> None:  # fmt: skip
        from petlab.interpret import write_segmentation_evaluation

        write_segmentation_evaluation(self, output_dir, kept, dataset, experiment, step)

    def full_size_classes(self, outputs: torch.Tensor, image: Image.Image) -> np.ndarray:
        """The class of every pixel of the original ``image`` from its fp32 logits (classes, h, w)."""
        logits = F.interpolate(outputs[None].float(), size=(image.height, image.width), mode="bilinear")
        return logits[0].argmax(dim=0).numpy()

    def predictions(self, outputs: torch.Tensor, images: Sequence[Any], top_k: int) -> list[dict[str, Any]]:
        pet = self.class_names.index("pet")
        pairs = zip(outputs, images, strict=True)
        return [{"pet_fraction": round(float((self.full_size_classes(row, image) == pet).mean()), 4)}
                for row, image in pairs]  # fmt: skip

    def write_prediction(
        self, outputs: torch.Tensor, image: Image.Image, output_dir: Path, stem: str
    ) -> dict[str, str]:
        """The mask PNG (the release's values: 1 pet, 2 background, 3 border) at the image's own size,
        and the image with the pet overlaid; returns their paths."""
        classes = self.full_size_classes(outputs, image)
        values = np.array([TRIMAP_VALUE[name] for name in self.class_names], dtype=np.uint8)[classes]
        mask_path, overlay_path = output_dir / f"{stem}_mask.png", output_dir / f"{stem}_overlay.png"
        Image.fromarray(values, mode="L").save(mask_path)
        overlay(np.asarray(image.convert("RGB")), classes, self.class_names).save(overlay_path)
        return {"mask": str(mask_path), "overlay": str(overlay_path)}

    def prediction_table(self, results: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
        rows = [[r["image"], f"{r['pet_fraction']:.1%}", r.get("mask", "")] for r in results]
        return ["image", "pet area", "mask"], rows

    def export_spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "class_names": self.class_names,
                "output": "per-pixel logits, shape (N, classes, H, W): resize them to the image's size",
                "output_names": ["logits"],
                "trimap_values": {name: TRIMAP_VALUE[name] for name in self.class_names}}  # fmt: skip


def confusions(predictions: torch.Tensor, targets: torch.Tensor, classes: int) -> torch.Tensor:
    """Per image, the (classes, classes) counts of (true, predicted) over the pixels that count."""
    valid = targets != IGNORE
    codes = torch.where(valid, targets * classes + predictions, classes * classes)  # ignored: one bin past the end
    offsets = torch.arange(len(codes), device=codes.device).view(-1, 1, 1) * (classes * classes + 1)
    counts = torch.bincount((codes + offsets).flatten(), minlength=len(codes) * (classes * classes + 1))
    return counts.view(len(codes), -1)[:, : classes * classes].view(-1, classes, classes)
