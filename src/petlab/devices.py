"""Where a command computes: ``accelerator`` and ``devices``, checked against this machine before anything
starts (one place, so that the CPU tests cover the choice the GPU runs make too)."""

from __future__ import annotations

import torch

from petlab.checks import whole_number
from petlab.errors import PetlabError
from petlab.parallel import core_count

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


def gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_devices(accelerator: str, devices: int | str, gpus: int | None = None, cores: int | None = None) -> str:
    """The device type the command will use (``cpu``, ``cuda`` or ``mps``) once ``accelerator`` and
    ``devices`` (processes on the CPU, GPUs otherwise; ``auto``: every GPU, or one CPU process) fit this
    machine, which has ``gpus`` GPUs and ``cores`` cores (by default as torch and the OS count them)."""
    if accelerator not in ACCELERATORS:
        raise PetlabError(f"unknown accelerator={accelerator}: choose one of {', '.join(ACCELERATORS)}")
    gpus = gpu_count() if gpus is None else gpus
    cores = core_count() if cores is None else cores
    if accelerator == "mps":
        if not torch.backends.mps.is_available():
            raise PetlabError("accelerator=mps but this machine has no Apple GPU: use accelerator=cpu or auto")
        kind, available, unit = "mps", 1, "Apple GPU"
    elif accelerator in ("gpu", "cuda") or (accelerator == "auto" and gpus):
        if not gpus:
            raise PetlabError(f"accelerator={accelerator} but torch sees no GPU on this machine "
                              "(torch.cuda.is_available() is false): use accelerator=cpu or auto")  # fmt: skip
        kind, available, unit = "cuda", gpus, "GPU(s)"
    else:
        kind, available, unit = "cpu", cores, "CPU cores"
    if devices != "auto" and whole_number("devices", devices, 1) > available:
        raise PetlabError(f"devices={devices} but this machine has {available} {unit}: use devices={available} "
                          "or fewer (devices=auto: every GPU, or one CPU process)")  # fmt: skip
    return kind
