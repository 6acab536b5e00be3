"""What the optimiser is given: parameter groups (discriminative learning rates, no weight decay on
normalisation layers and biases), and learning-rate schedules with one signature,
``(optimizer, total_steps) -> scheduler``, stepped per batch.

Configs give schedules with ``_partial_: true``; the module fills in ``total_steps`` once the trainer knows
it. A resumed run rebuilds them for its own length, so resuming with more epochs stretches the schedule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

NORMALIZATION_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def norm_and_bias_parameters(network: nn.Module) -> list[nn.Parameter]:
    """The parameters of normalisation layers, and every bias."""
    found = []
    for module in network.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if isinstance(module, NORMALIZATION_LAYERS) or name == "bias":
                found.append(parameter)
    return found


def parameter_groups(
    network: nn.Module, layer_groups: Sequence[Sequence[nn.Parameter]], lr: float, lr_factor: float = 1.0,
    norm_bias_weight_decay: float | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Optimizer groups of ``network``: one per layer group (stem first, head last), with learning rates
    growing geometrically from lr x ``lr_factor`` at the stem to lr at the head (all equal when the factor
    is 1); each split in two when normalisation layers and biases get their own weight decay
    (``norm_bias_weight_decay``; None: the optimizer's own)."""
    steps = max(1, len(layer_groups) - 1)
    no_decay = {id(p) for p in norm_and_bias_parameters(network)} if norm_bias_weight_decay is not None else set()
    result = []
    for i, params in enumerate(layer_groups):
        group_lr = lr * lr_factor ** ((steps - i) / steps)
        decayed = [p for p in params if id(p) not in no_decay]
        exempt = [p for p in params if id(p) in no_decay]
        result += [{"params": decayed, "lr": group_lr}] if decayed else []
        result += [{"params": exempt, "lr": group_lr, "weight_decay": norm_bias_weight_decay}] if exempt else []
    return result


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
