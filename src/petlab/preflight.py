"""Pre-flight checks of a training run: values that would fail deep inside Lightning or torch, and a
resume that could not continue, refused in one line before anything is built, read or written."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from petlab.averaging import check_decay
from petlab.checkpoint import read_checkpoint
from petlab.checks import switch, whole_number
from petlab.errors import PetlabError
from petlab.module import CHECKPOINT_FORMAT
from petlab.resume import check_resume
from petlab.tasks.base import build_task

# Keys that Lightning or the module would only trip over mid-run, with their smallest valid value.
WHOLE_NUMBERS = {"trainer.max_epochs": -1, "trainer.min_epochs": 0, "model.freeze_epochs": 0}


def check_config(cfg: DictConfig) -> dict[str, Any] | None:
    """Refuse values that would fail deep inside Lightning or torch, before anything is built or written.

    Returns what the checkpoint to resume from was trained with, if there is one (read safely, once checked).
    """
    if cfg.get("seed") is not None:
        whole_number("seed", cfg.seed, 0, 2**32 - 1)
    switch("test_tta", cfg.get("test_tta", False))
    check_decay(cfg.model.get("ema"))
    for key, minimum in WHOLE_NUMBERS.items():
        if OmegaConf.select(cfg, key) is not None:
            whole_number(key, OmegaConf.select(cfg, key), minimum)
    freeze_epochs, max_epochs = cfg.model.get("freeze_epochs", 0), cfg.trainer.get("max_epochs")
    limited = max_epochs is not None and max_epochs >= 0  # -1: no limit
    if freeze_epochs and not cfg.trainer.get("fast_dev_run") and limited and freeze_epochs >= max_epochs:
        raise PetlabError(
            f"model.freeze_epochs={freeze_epochs} leaves no epoch to train the whole network with "
            f"trainer.max_epochs={max_epochs}: make freeze_epochs smaller than max_epochs"
        )
    progressive = OmegaConf.select(cfg, "data.progressive_resize.epochs", default=0)
    if progressive and cfg.trainer.get("reload_dataloaders_every_n_epochs") != 1:
        raise PetlabError("data.progressive_resize changes the training loader after its first epochs: set "
                          "trainer.reload_dataloaders_every_n_epochs=1")  # fmt: skip
    check_optimizer(cfg)
    check_task(cfg)
    if not cfg.get("ckpt_path"):
        return None
    if cfg.ckpt_path == "last":
        raise PetlabError(
            "ckpt_path=last is resolved on the command line of a single run (python -m petlab ckpt_path=last); "
            "in a config file or a sweep, give the checkpoint's path"
        )
    # A resumed run writes into its own checkpoint folder on purpose: Lightning's warning says nothing here.
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
    content = read_checkpoint(cfg.ckpt_path)
    settings = {key: content[key] for key in ("hyper_parameters", "petlab")}  # Lightning loads the weights itself
    # What the config alone decides is compared now, before the data is indexed and cached; the classes
    # and normalisation once the data module knows them.
    if content["petlab"].get("format", 1) < CHECKPOINT_FORMAT:
        raise PetlabError(
            f"ckpt_path={cfg.ckpt_path} was written by an earlier petlab (checkpoint format "
            f"{content['petlab'].get('format', 1)}): it can be evaluated, predicted with and exported, but not "
            "resumed; start a new run without ckpt_path"
        )
    if "optimizer_states" not in content:
        raise PetlabError(
            f"ckpt_path={cfg.ckpt_path} holds the weights only (as a run's best epoch is saved), not the training "
            "state a resume needs: resume from the run's checkpoints/last.ckpt, or evaluate, predict or export "
            "with this one"
        )
    model = OmegaConf.to_container(cfg.model, resolve=True)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    # A task's targets and a joint task's tasks are compared once built (their classes come from the data).
    task = {key: value for key, value in OmegaConf.to_container(cfg.task, resolve=True).items()
            if key not in ("target", "configs") and value is not None}  # fmt: skip
    check_resume(settings, {**model, "task": task, "image_size": data.get("image_size")}, data, cfg.ckpt_path)
    refuse_finished_run(content, Path(cfg.ckpt_path), cfg.trainer.get("max_epochs"))
    settings["stopped_early_after"] = trained_epochs(content) if stopped_early(content) else None
    return settings


def trained_epochs(checkpoint: dict[str, Any]) -> int | None:
    """The epochs a Lightning checkpoint's fit loop had trained and validated (None for a checkpoint without its
    loops). last.ckpt is written at the end of each training epoch (after its validation), before the loop
    counts the epoch completed: the processed count is the epochs done."""
    try:
        return int(checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError, ValueError):
        return None


def stopped_early(checkpoint: dict[str, Any]) -> bool:
    return any(name.startswith("EarlyStopping") and (state or {}).get("stopped_epoch", 0) > 0
               for name, state in (checkpoint.get("callbacks") or {}).items())  # fmt: skip


def refuse_finished_run(checkpoint: dict[str, Any], path: Path, max_epochs: int | None) -> None:
    """A run that finished (its ``metrics.json`` written after ``max_epochs`` epochs, or after early stopping) is
    left as it is: resuming it would train nothing and rewrite its results without the validation figures."""
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else None
    epochs = trained_epochs(checkpoint)
    if run_dir is None or not (run_dir / "metrics.json").is_file() or epochs is None:
        return
    limited = max_epochs is not None and max_epochs >= 0
    if stopped_early(checkpoint):
        raise PetlabError(
            f"{run_dir} is finished: early stopping ended it after {epochs} epochs, and nothing was changed; to "
            f"train it on, resume with callbacks.early_stopping=null trainer.max_epochs=N (N > {epochs})"
        )
    if limited and epochs >= max_epochs:
        raise PetlabError(
            f"{run_dir} is finished: it trained its {epochs} epochs (trainer.max_epochs={max_epochs}), and nothing "
            f"was changed; to train it on, resume with a larger trainer.max_epochs (e.g. {epochs + 10})"
        )


def check_optimizer(cfg: DictConfig) -> None:
    """Build the optimizer and scheduler on a stand-in parameter: torch checks their settings on creation."""
    try:
        optimizer = instantiate(cfg.optimizer)(params=[torch.nn.Parameter(torch.zeros(1))])
        if cfg.get("scheduler"):
            instantiate(cfg.scheduler)(optimizer, total_steps=100)
    except (TypeError, ValueError, InstantiationException) as error:
        settings = ", ".join(f"{group}.{key}={value}" for group in ("optimizer", "scheduler")
                             for key, value in (cfg.get(group) or {}).items() if not key.startswith("_"))  # fmt: skip
        raise PetlabError(f"the optimizer or scheduler refuses {settings}: {error}") from error


def check_task(cfg: DictConfig) -> None:
    """Build the task: it checks its settings (monitor, mode, dropout ...) on creation, before any data is read."""
    build_task(cfg.task)
