"""The LightningModule: one image classifier for either task, with per-stage torchmetrics."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from petlab.errors import PetlabError
from petlab.models import create_model, layer_groups, parameter_counts
from petlab.precision import uses_channels_last

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


def normalize_batch(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(images - mean) / std`` for floats in [0, 1]; uint8 images (0-255) are scaled in the same pass.

    For uint8 it is one multiply-add in place on the float copy: on a CPU this step costs as much per
    image as a resize, and it runs in the training process, not in the dataloader workers.
    """
    if images.dtype == torch.uint8:
        return images.float().mul_(1 / (255 * std)).add_(-mean / std)
    return (images - mean) / std


class PetClassifier(L.LightningModule):
    """Classifies images into ``class_names`` with the model ``arch`` built by :func:`create_model`.

    The class names, image size and normalisation are saved as hyperparameters, so a checkpoint carries
    everything needed to predict on new images.
    """

    def __init__(
        self,
        arch: str,
        task: str,
        class_names: Sequence[str],
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        pretrained: bool = False,
        weights_path: str | None = None,
        hidden: int = 512,
        dropout: float = 0.5,
        label_smoothing: float = 0.0,
        freeze_epochs: int = 0,
        backbone_lr_factor: float = 1.0,
        channels_last: bool | str = "auto",
        compile: bool = False,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
    ) -> None:
        super().__init__()
        if freeze_epochs < 0 or not 0 < backbone_lr_factor <= 1:
            raise PetlabError(
                f"model.freeze_epochs={freeze_epochs} must be >= 0 and model.backbone_lr_factor="
                f"{backbone_lr_factor} in (0, 1]"
            )
        # Logged once, with the run's metrics, by the entry point (so TensorBoard's HParams tab ranks runs).
        self.save_hyperparameters(ignore=["optimizer", "scheduler"], logger=False)
        self.class_names = list(class_names)
        self.net = create_model(
            arch, num_classes=len(class_names), image_size=image_size, pretrained=pretrained,
            weights_path=weights_path, hidden=hidden, dropout=dropout,
        )  # fmt: skip
        if compile:
            self.net = torch.compile(self.net)
        # An input for the model summary, which then shows each layer's output size and the FLOPs.
        self.example_input_array = torch.zeros(1, 3, image_size, image_size, dtype=torch.uint8)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.freeze_epochs = freeze_epochs
        self.backbone_lr_factor = backbone_lr_factor
        self.channels_last = channels_last
        # The resolved data config of the training run, saved in checkpoints so that evaluation can
        # rebuild the same splits (set by the entry point).
        self.data_config: dict[str, Any] = {}
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        num_classes = len(class_names)
        # Keyed "train_acc", not "train": a ModuleDict key may not shadow nn.Module.train.
        self.stage_metrics = nn.ModuleDict()
        for stage in ("train", "val", "test"):
            self.stage_metrics[f"{stage}_acc"] = MulticlassAccuracy(num_classes, average="micro")
            self.stage_metrics[f"{stage}_loss"] = MeanMetric()
        self.test_f1_macro = MulticlassF1Score(num_classes, average="macro")
        self.test_probabilities: list[torch.Tensor] = []
        self.test_targets: list[torch.Tensor] = []
        self.test_outputs: tuple[torch.Tensor, torch.Tensor] = (torch.empty(0, num_classes), torch.empty(0))
        # Buffers, not plain attributes, so that a resumed run remembers its best epoch.
        self.register_buffer("val_acc_best", torch.tensor(-1.0))
        self.register_buffer("best_epoch_buffer", torch.tensor(-1))

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (0-255) or float images in [0, 1] -> the network's normalised input."""
        return normalize_batch(images, self.mean, self.std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits of uint8 images (0-255) or float images in [0, 1], shape (N, 3, H, W)."""
        return self.net(self.normalize(images))

    def parameter_counts(self) -> dict[str, int]:
        return parameter_counts(self.net)

    def _groups(self) -> list[list[nn.Parameter]]:
        net = getattr(self.net, "_orig_mod", self.net)  # under torch.compile
        return layer_groups(net)

    def set_backbone_trainable(self, trainable: bool) -> None:
        for group in self._groups()[:-1]:
            for parameter in group:
                parameter.requires_grad_(trainable)

    def uses_channels_last(self) -> bool:
        return uses_channels_last(self.channels_last, self.device.type)

    def setup(self, stage: str) -> None:
        # Here, before the strategy moves and wraps the network: DDP lays out its gradient buckets as the
        # parameters are then, and warns (and slows down) if they change format afterwards.
        if uses_channels_last(self.channels_last, self.trainer.strategy.root_device.type):
            self.to(memory_format=torch.channels_last)

    def on_train_epoch_start(self) -> None:
        # fastai's fine_tune: the head alone for freeze_epochs, then everything (with discriminative lrs).
        self.set_backbone_trainable(self.current_epoch >= self.freeze_epochs)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # What petlab.predict/evaluate check to recognise a petlab checkpoint (plain types only).
        checkpoint["petlab"] = {"format": 1, "data": self.data_config}

    def on_train_start(self) -> None:
        # The sanity check ran validation already; its batches must not count.
        self.stage_metrics["val_acc"].reset()
        self.stage_metrics["val_loss"].reset()

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str, return_logits: bool = False) -> torch.Tensor:
        images, targets = batch
        if self.uses_channels_last():
            images = images.contiguous(memory_format=torch.channels_last)
        # Under bf16/fp16 autocast the logits come out in low precision: the loss and metrics use fp32.
        logits = self(images).float()
        loss = self.criterion(logits, targets)
        mean_loss, accuracy = self.stage_metrics[f"{stage}_loss"], self.stage_metrics[f"{stage}_acc"]
        mean_loss(loss, weight=len(targets))
        accuracy(logits, targets)
        self.log(f"{stage}/loss", mean_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=True)
        if stage == "train":
            self.log("train/batch_loss", loss, on_step=True, on_epoch=False)
        return logits if return_logits else loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        accuracy = self.stage_metrics["val_acc"].compute()
        if accuracy > self.val_acc_best:
            self.val_acc_best.fill_(accuracy)
            self.best_epoch_buffer.fill_(self.current_epoch)
        self.log("val/acc_best", self.val_acc_best, prog_bar=True)

    @property
    def best_epoch(self) -> int:
        """The epoch (0-based) with the highest validation accuracy so far; -1 before any."""
        return int(self.best_epoch_buffer)

    def on_test_epoch_start(self) -> None:
        self.test_probabilities.clear()
        self.test_targets.clear()

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        targets = batch[1]
        logits = self._step(batch, "test", return_logits=True)
        self.test_f1_macro(logits, targets)
        self.test_probabilities.append(logits.softmax(dim=1).detach())
        self.test_targets.append(targets.detach())
        self.log("test/f1_macro", self.test_f1_macro, on_step=False, on_epoch=True)

    def on_test_epoch_end(self) -> None:
        probabilities, targets = torch.cat(self.test_probabilities), torch.cat(self.test_targets)
        if self.trainer.world_size > 1:
            # A DistributedSampler deals image i to rank i % world_size (padding the end): gather every
            # rank's share (a collective, so every rank calls it) and interleave back into dataset order.
            probabilities = self.all_gather(probabilities).transpose(0, 1).reshape(-1, probabilities.shape[1])
            targets = self.all_gather(targets).transpose(0, 1).reshape(-1)
            size = len(self.trainer.test_dataloaders.dataset)
            probabilities, targets = probabilities[:size], targets[:size]
        self.test_outputs = (probabilities.cpu(), targets.cpu())

    def test_predictions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Class probabilities and targets of the last test run (all ranks), in the test loader's order."""
        return self.test_outputs

    def parameter_groups(self, lr: float) -> list[dict[str, Any]]:
        """One optimizer group per layer group; the lr grows geometrically from lr x backbone_lr_factor at
        the input to lr at the head (discriminative learning rates; all equal when the factor is 1)."""
        groups = self._groups()
        steps = max(1, len(groups) - 1)
        return [
            {"params": params, "lr": lr * self.backbone_lr_factor ** ((steps - i) / steps)}
            for i, params in enumerate(groups)
        ]

    def configure_optimizers(self) -> dict[str, Any]:
        factory = self.optimizer_factory or torch.optim.AdamW
        optimizer = factory(params=self.parameter_groups(getattr(factory, "keywords", {}).get("lr", 1e-3)))
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self.scheduler_factory(optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
