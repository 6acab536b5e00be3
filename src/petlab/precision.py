"""Numeric precision and memory format: bfloat16 autocast and channels-last on CPUs that run them fast.

``trainer.precision=auto`` (the default) is ``bf16-mixed`` when training runs on a CPU with bfloat16
matrix instructions (AMX, or AVX512-BF16), which roughly doubles convolution throughput, and ``32-true``
elsewhere; ``model.channels_last=auto`` follows the same test on CPU (and is always on for GPUs). Any
explicit value overrides them. Weights stay fp32 (autocast changes only the dtype of the computation), and
losses and metrics are computed from fp32 logits.
"""

from __future__ import annotations

from functools import cache

import torch

AUTO = "auto"
# torch's own CPU feature detection (cpuinfo); absent in builds that predate it, where bf16 is not chosen.
BF16_FEATURES = {"_is_amx_tile_supported": "AMX", "_is_avx512_bf16_supported": "AVX512-BF16"}


@cache
def cpu_bf16_features() -> tuple[str, ...]:
    """The bfloat16 matrix instruction sets of this CPU, as torch detects them (empty: none)."""
    return tuple(name for probe, name in BF16_FEATURES.items() if getattr(torch.cpu, probe, lambda: False)())


def cpu_has_fast_bf16() -> bool:
    return bool(cpu_bf16_features())


def runs_on_cpu(accelerator: str) -> bool:
    """Whether a Trainer with this ``accelerator`` setting computes on the CPU."""
    if accelerator == AUTO:
        return not torch.cuda.is_available() and not torch.backends.mps.is_available()
    return accelerator == "cpu"


def resolve_precision(precision: str | int, accelerator: str = AUTO) -> str | int:
    """``auto``: ``bf16-mixed`` on a CPU with fast bfloat16, else ``32-true``; other values as given."""
    if precision != AUTO:
        return precision
    return "bf16-mixed" if runs_on_cpu(accelerator) and cpu_has_fast_bf16() else "32-true"


def uses_channels_last(channels_last: bool | str, device_type: str) -> bool:
    """``auto``: on GPUs, and on CPUs with fast bfloat16 (where oneDNN's convolutions prefer it)."""
    if channels_last == AUTO:
        return device_type == "cuda" or (device_type == "cpu" and cpu_has_fast_bf16())
    return bool(channels_last)


def autocast(device_type: str, precision: str | int) -> torch.autocast:
    """The autocast context of a Lightning precision setting, for code that runs a model without a Trainer."""
    dtype = torch.bfloat16 if str(precision).startswith("bf16") else torch.float16
    return torch.autocast(device_type, dtype=dtype, enabled=str(precision).endswith("-mixed"))
