"""An exponential moving average of the weights (``model.ema``), on Lightning's weight-averaging callback.

Lightning keeps the average in a :class:`torch.optim.swa_utils.AveragedModel`, validates with it, saves it
as the checkpoint's ``state_dict`` (the raw weights beside it, for resuming) and leaves it in the module
when training ends: validation metrics, the best checkpoint, the test after training, predict, evaluate and
export all see the averaged weights.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging

from petlab.errors import PetlabError

# An average of the first steps alone would hold on to the random initialisation for ~1 / (1 - decay)
# steps: the decay grows as (1 + n) / (10 + n) until it reaches the configured one (timm's and
# TensorFlow's warm-up).
WARMUP_OFFSET = 10


def check_decay(decay: float | None) -> None:
    """Refuse a ``model.ema`` that is not a decay in (0, 1) or null."""
    if decay is not None and (isinstance(decay, bool) or not isinstance(decay, float) or not 0 < decay < 1):
        raise PetlabError(f"model.ema={decay} is the decay of the weights' moving average: give a value "
                          "between 0 and 1 (0.999 is usual), or null for none")  # fmt: skip


class ExponentialMovingAverage(WeightAveraging):
    """The weights averaged with ``decay`` after every optimizer step (buffers too: batch-norm statistics
    follow the averaged weights); integer buffers (batch counters) are copied."""

    def __init__(self, decay: float) -> None:
        self.decay = decay
        super().__init__(avg_fn=self.averaged)

    def averaged(self, average: torch.Tensor, current: torch.Tensor, updates: torch.Tensor) -> torch.Tensor:
        if not average.is_floating_point():
            return current
        decay = min(self.decay, (1 + float(updates)) / (WARMUP_OFFSET + float(updates)))
        return average.lerp(current, 1 - decay)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # Testing the best checkpoint after training must keep its averaged weights: Lightning's callback would
        # put the raw ones back into the module, which only resuming a fit needs.
        if trainer.state.fn == "fit":
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
