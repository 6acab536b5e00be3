"""Learning-rate schedules with one signature, ``(optimizer, total_steps) -> scheduler``, stepped per batch.

Configs give them with ``_partial_: true``; the module fills in ``total_steps`` once the trainer knows it. A
resumed run rebuilds them for its own length, so resuming with more epochs stretches the schedule.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR


def one_cycle(optimizer: Optimizer, total_steps: int, pct_start: float = 0.25) -> LRScheduler:
    """Warm up to each parameter group's configured lr, then anneal to near zero (fastai's default).

    Very short runs warm up over at least two steps: torch's OneCycleLR divides by zero when the warm-up
    is exactly one step long.
    """
    total_steps = max(1, total_steps)
    warmup = max(pct_start, min(0.4, 2 / total_steps))
    peaks = [group["lr"] for group in optimizer.param_groups]
    return ResumableOneCycleLR(optimizer, max_lr=peaks, total_steps=total_steps, pct_start=warmup)


class ResumableOneCycleLR(OneCycleLR):
    """OneCycleLR that keeps the length it was built with when a checkpoint's state is loaded.

    A run resumed with more ``trainer.max_epochs`` then follows the cycle stretched to the new length from
    the step it reached, where torch's own would restore the old length and fail once past it. With an
    unchanged length, resuming is exact.
    """

    def load_state_dict(self, state_dict: dict) -> None:
        planned = self.total_steps, self._schedule_phases
        super().load_state_dict(state_dict)
        self.total_steps, self._schedule_phases = planned


def cosine_with_warmup(optimizer: Optimizer, total_steps: int, warmup_fraction: float = 0.05) -> LRScheduler:
    """Linear warm-up over ``warmup_fraction`` of training, then cosine decay to zero."""
    warmup = max(1, round(warmup_fraction * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return LambdaLR(optimizer, factor)
