"""The LightningModule: a backbone plus a task's head, trained with the task's loss and metrics."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric

from petlab.averaging import ExponentialMovingAverage, check_decay
from petlab.errors import PetlabError
from petlab.models import create_backbone, parameter_counts
from petlab.optim import parameter_groups
from petlab.precision import uses_channels_last
from petlab.tasks import Task
from petlab.tasks.base import Outputs, fp32

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]
STAGES = ("train", "val", "test")
# 1: petlab's first release, one classifier before backbones and tasks; 2: tasks named by kind, joint heads
# under head.heads; 3: tasks and targets named by class (see petlab.checkpoint for the upgrades).
CHECKPOINT_FORMAT = 3


def metric_key(stage: str, name: str) -> str:
    """The ModuleDict key of a stage's metric (no "." or "/" in module names)."""
    return f"{stage}_{name.replace('/', '-')}"


def normalize_batch(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(images - mean) / std`` for floats in [0, 1]; uint8 images (0-255) are scaled in the same pass.

    For uint8 it is one multiply-add in place on the float copy: on a CPU this step costs as much per
    image as a resize, and it runs in the training process, not in the dataloader workers.
    """
    if images.dtype == torch.uint8:
        return images.float().mul_(1 / (255 * std)).add_(-mean / std)
    return (images - mean) / std


class PetModule(L.LightningModule):
    """``backbone`` (``{"name", "pretrained", "weights_path"}``, see :func:`create_backbone`, pooled with
    ``pool``) with ``task``'s head.

    The backbone, the task's spec, the image size and the normalisation are saved as hyperparameters, so a
    checkpoint carries everything needed to predict on new images. Fine-tuning as fastai's ``fine_tune``:
    the head alone for ``freeze_epochs``, then everything, with learning rates growing geometrically from
    lr x ``backbone_lr_factor`` at the stem to lr at the head. Weight decay on normalisation layers and
    biases is ``norm_bias_weight_decay`` (torchvision's recipes use 0; null: the optimizer's own). ``ema``:
    the decay of an exponential moving average of the weights, which validation, checkpoints and prediction
    use (see :mod:`petlab.averaging`); ``tta``: test with test-time augmentation (the image and its mirror).
    """

    def __init__(
        self, backbone: dict[str, Any], task: Task, image_size: int, mean: Sequence[float], std: Sequence[float],
        freeze_epochs: int = 0, backbone_lr_factor: float = 1.0, norm_bias_weight_decay: float | None = 0.0,
        channels_last: bool | str = "auto", compile: bool = False, ema: float | None = None, pool: str | None = None,
        optimizer: OptimizerFactory | None = None, scheduler: SchedulerFactory | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        if freeze_epochs < 0 or not 0 < backbone_lr_factor <= 1:
            raise PetlabError(
                f"model.freeze_epochs={freeze_epochs} must be >= 0 and model.backbone_lr_factor="
                f"{backbone_lr_factor} in (0, 1]"
            )
        check_decay(ema)
        # Logged once, with the run's metrics, by the entry point (so TensorBoard's HParams tab ranks runs).
        self.save_hyperparameters(ignore=["task", "optimizer", "scheduler"], logger=False)
        self.hparams["task"] = task.spec()
        self.task = task
        self.backbone = create_backbone(image_size=image_size, pool=pool, **backbone)
        self.head = task.build_head(self.backbone)
        if compile:
            # In place: the module stays a Backbone, and its parameter names (and checkpoints) do not change.
            self.backbone.compile()
        # An input for the model summary, which then shows each layer's output size and the FLOPs.
        self.example_input_array = torch.zeros(1, 3, image_size, image_size, dtype=torch.uint8)
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.freeze_epochs, self.backbone_lr_factor = freeze_epochs, backbone_lr_factor
        self.norm_bias_weight_decay = norm_bias_weight_decay
        self.channels_last, self.ema, self.tta = channels_last, ema, False
        self.averaging: ExponentialMovingAverage | None = None  # the fit's weight average, when model.ema is set
        # The resolved data config of the training run, saved in checkpoints so that evaluation can
        # rebuild the same splits (set by the entry point).
        self.data_config: dict[str, Any] = {}
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        # Keyed "train_acc", not "train/acc": a ModuleDict key may not shadow nn.Module.train; a joint
        # task's "species/acc" becomes "train_species-acc" (see metric_key).
        self.stage_metrics = nn.ModuleDict()
        self.logged_names: dict[str, tuple[str, str]] = {}  # key -> (stage, metric name)
        for stage in STAGES:
            for name, metric in {"loss": MeanMetric(), **task.metrics(stage)}.items():
                self.stage_metrics[metric_key(stage, name)] = metric
                self.logged_names[metric_key(stage, name)] = (stage, name)
        self.kept: list[dict[str, torch.Tensor]] = []
        self.test_outputs: dict[str, torch.Tensor] = {}
        # Saved with the checkpoint's petlab metadata, so that a resumed run remembers its best epoch (not
        # buffers: a moving average of the weights would average them too).
        self.monitor_best = float("-inf") if task.mode == "max" else float("inf")
        self.best_epoch = -1

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (0-255) or float images in [0, 1] -> the network's normalised input."""
        return normalize_batch(images, self.mean, self.std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The task's outputs for uint8 images (0-255) or float images in [0, 1], shape (N, 3, H, W)."""
        features = self.backbone(self.normalize(images))
        return self.head(features, self.backbone.pool(features[-1]), images.shape[-2:])

    def outputs(self, images: torch.Tensor, tta: bool = False) -> Outputs:
        """The fp32 outputs for ``images``; with ``tta``, merged with those for their horizontal mirrors."""
        # Under bf16/fp16 autocast the outputs come out in low precision: the loss and metrics use fp32.
        outputs = fp32(self(images))
        return self.task.merged_with_mirror(outputs, fp32(self(images.flip(-1)))) if tta else outputs

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> Outputs | None:
        """The fp32 outputs for a batch of new photos (see :func:`petlab.data.photos.collate_photos`), with
        test-time augmentation when ``tta`` is set; None when none of its photos could be read."""
        images = batch["pixels"]
        if not len(images):
            return None
        if self.uses_channels_last():
            images = images.contiguous(memory_format=torch.channels_last)
        return self.outputs(images, self.tta)

    def parameter_counts(self) -> dict[str, int]:
        return parameter_counts(self)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """The backbone's stages, stem first, then the head: what freezing and discriminative lrs act on."""
        return [*self.backbone.layer_groups(), list(self.head.parameters())]

    def set_backbone_trainable(self, trainable: bool) -> None:
        self.backbone.requires_grad_(trainable)

    def uses_channels_last(self) -> bool:
        return uses_channels_last(self.channels_last, self.device.type)

    def setup(self, stage: str) -> None:
        # Here, before the strategy moves and wraps the network: DDP lays out its gradient buckets as the
        # parameters are then, and warns (and slows down) if they change format afterwards.
        if uses_channels_last(self.channels_last, self.trainer.strategy.root_device.type):
            self.to(memory_format=torch.channels_last)

    def on_train_epoch_start(self) -> None:
        self.set_backbone_trainable(self.current_epoch >= self.freeze_epochs)

    def configure_callbacks(self) -> list[L.Callback]:
        if self.ema is None or self.trainer.state.fn != "fit":
            return []
        self.averaging = ExponentialMovingAverage(self.ema)
        return [self.averaging]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # A weights-only save (the best epoch's) skips the callbacks' hooks, so the averaged weights that
        # validation measured must be put in here.
        weights_only = "optimizer_states" not in checkpoint
        if weights_only and self.averaging is not None and (averaged := self.averaging.averaged_weights()) is not None:
            checkpoint["state_dict"] = averaged
        # What petlab.predict/evaluate check to recognise a petlab checkpoint (plain types only).
        checkpoint["petlab"] = {"format": CHECKPOINT_FORMAT, "data": self.data_config,
                                "monitor_best": self.monitor_best, "best_epoch": self.best_epoch}  # fmt: skip

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.restore_best(checkpoint["state_dict"], checkpoint.get("petlab") or {})

    def restore_best(self, state: dict[str, Any], petlab: dict[str, Any]) -> None:
        """The best monitored value and its epoch from a checkpoint's petlab metadata, or from the buffers of
        ``state`` that held them before (removed from it, so that the weights load strictly)."""
        best, epoch = state.pop("monitor_best", None), state.pop("best_epoch_buffer", None)
        self.monitor_best = float(petlab.get("monitor_best", self.monitor_best if best is None else best))
        self.best_epoch = int(petlab.get("best_epoch", self.best_epoch if epoch is None else epoch))

    def on_train_start(self) -> None:
        # The sanity check ran validation already; its batches must not count.
        for name, metric in self.stage_metrics.items():
            if name.startswith("val_"):
                metric.reset()

    def _step(
        self, batch: tuple[torch.Tensor, torch.Tensor], stage: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        """The loss, the fp32 outputs and the targets as the task encodes them."""
        images, targets = batch
        if self.uses_channels_last():
            images = images.contiguous(memory_format=torch.channels_last)
        outputs = self.outputs(images, tta=self.tta and stage == "test")
        targets = self.task.encode_targets(targets)
        loss = self.task.loss(outputs, targets)
        measured = self.task.measured_targets(targets)
        for key, metric in self.stage_metrics.items():
            metric_stage, metric_name = self.logged_names[key]
            if metric_stage != stage:
                continue
            # Updated only: logged with on_epoch, Lightning computes each once an epoch, not per batch.
            if metric_name == "loss":
                metric.update(loss, weight=len(images))
            else:
                metric.update(outputs, measured)
            shown = metric_name == "loss" or metric_name in self.task.metric_names  # test-only extras: files only
            self.log(f"{stage}/{metric_name}", metric, on_step=False, on_epoch=True, prog_bar=shown)
        if stage == "train":
            self.log("train/batch_loss", loss, on_step=True, on_epoch=False)
        return loss, outputs, targets

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")[0]

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        value = self.stage_metrics[metric_key("val", self.task.monitor.partition("/")[2])].compute()
        if (value > self.monitor_best) if self.task.mode == "max" else (value < self.monitor_best):
            # best_epoch: 0-based, -1 before any
            self.monitor_best, self.best_epoch = float(value), self.current_epoch
        self.log(self.task.best_metric, self.monitor_best, prog_bar=True)

    def on_test_epoch_start(self) -> None:
        self.kept.clear()

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        _, outputs, targets = self._step(batch, "test")
        kept = self.task.kept_for_evaluation(outputs, targets)
        self.kept.append({name: value.detach() for name, value in kept.items()})

    def on_test_epoch_end(self) -> None:
        names = self.kept[0].keys() if self.kept else ()
        kept = {name: torch.cat([batch[name] for batch in self.kept]) for name in names}
        if self.trainer.world_size > 1:
            # A DistributedSampler deals image i to rank i % world_size (padding the end): gather every
            # rank's share (a collective, so every rank calls it) and interleave back into dataset order.
            size = len(self.trainer.test_dataloaders.dataset)
            kept = {name: self.all_gather(value).transpose(0, 1).flatten(0, 1)[:size] for name, value in kept.items()}
        self.test_outputs = {name: value.cpu() for name, value in kept.items()}

    def parameter_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimizer groups of the layer groups (see :func:`petlab.optim.parameter_groups`)."""
        return parameter_groups(self, self.layer_groups(), lr, self.backbone_lr_factor, self.norm_bias_weight_decay)

    def configure_optimizers(self) -> dict[str, Any]:
        factory = self.optimizer_factory or torch.optim.AdamW
        optimizer = factory(params=self.parameter_groups(getattr(factory, "keywords", {}).get("lr", 1e-3)))
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self.scheduler_factory(optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
