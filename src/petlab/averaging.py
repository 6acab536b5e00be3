"""An exponential moving average of the weights (``model.ema``), on Lightning's weight-averaging callback.

Lightning keeps the average in a :class:`torch.optim.swa_utils.AveragedModel`, validates with it, saves it
as the checkpoint's ``state_dict`` (the raw weights beside it, for resuming; the module puts it into the
best epoch's weights-only checkpoint, which skips callbacks) and leaves it in the module
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
        super().__init__(multi_avg_fn=self.average)

    def average(self, averages: list[torch.Tensor], currents: list[torch.Tensor], updates: torch.Tensor) -> None:
        """Move ``averages`` towards ``currents`` in place (one group of tensors of the same device and dtype)."""
        if not averages[0].is_floating_point():
            torch._foreach_copy_(averages, currents)
            return
        decay = min(self.decay, (1 + float(updates)) / (WARMUP_OFFSET + float(updates)))
        # One fused pass over every tensor (what torch.optim.swa_utils.get_ema_multi_avg_fn does too).
        torch._foreach_lerp_(averages, currents, 1 - decay)

    def averaged_weights(self) -> dict[str, torch.Tensor] | None:
        """The averaged weights under the module's names (None before fitting set the average up)."""
        if self._average_model is None:
            return None
        prefix = "module."
        return {name[len(prefix) :]: value for name, value in self._average_model.state_dict().items()
                if name.startswith(prefix)}  # fmt: skip

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # Testing the best checkpoint after training must keep its averaged weights: Lightning's callback would
        # put the raw ones back into the module, which only resuming a fit needs.
        if trainer.state.fn == "fit":
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
