"""Training: compose the config, build data, model and trainer from ``_target_``s, fit, test, record."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig

from petlab.config import flatten
from petlab.data.datamodule import PetDataModule
from petlab.errors import PetlabError
from petlab.module import PetClassifier

log = logging.getLogger(__name__)


def _scalar_metrics(trainer: L.Trainer) -> dict[str, float]:
    return {
        name: round(float(value), 6)
        for name, value in trainer.callback_metrics.items()
        if isinstance(value, torch.Tensor) and value.numel() == 1
    }


def build(cfg: DictConfig) -> tuple[PetDataModule, PetClassifier, L.Trainer]:
    """Instantiate the data module (set up, so the classes are known), the module and the trainer."""
    datamodule: PetDataModule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("fit")
    model: PetClassifier = instantiate(
        cfg.model,
        class_names=datamodule.class_names,
        mean=list(datamodule.mean),
        std=list(datamodule.std),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        _convert_="all",
    )
    # A group entry set to null (callbacks.early_stopping=null) switches that object off.
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    return datamodule, model, trainer


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train (and test) as ``cfg`` says; returns the metrics also written to RUN_DIR/metrics.json."""
    started = time.perf_counter()
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    datamodule, model, trainer = build(cfg)
    params = model.parameter_counts()
    log.info(f"{cfg.model.arch}: {params['total']:,} parameters ({params['trainable']:,} trainable)")
    for logger in trainer.loggers:
        logger.log_hyperparams({**flatten(cfg), "params/total": params["total"]})

    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics: dict[str, Any] = _scalar_metrics(trainer)
    checkpoint = next((cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)), None)
    best_path = checkpoint.best_model_path if checkpoint else ""
    if cfg.get("test") and datamodule.has_test:
        trainer.test(model, datamodule=datamodule, ckpt_path=best_path or None, weights_only=False)
        metrics.update({k: v for k, v in _scalar_metrics(trainer).items() if k.startswith("test/")})
    metrics.update({
        "task": cfg.task.name, "model": cfg.model.arch, "seed": cfg.get("seed"),
        "best_epoch": model.best_epoch, "epochs": trainer.current_epoch,
        "params_total": params["total"], "params_trainable": params["trainable"],
        "best_checkpoint": best_path, "seconds": round(time.perf_counter() - started, 1),
    })  # fmt: skip
    if trainer.is_global_zero:
        output_dir = Path(cfg.paths.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        log.info(f"Run directory: {output_dir}  (metrics.json, checkpoints/, tensorboard/)")
    return metrics


def user_error(error: BaseException) -> PetlabError | None:
    """The PetlabError behind ``error`` (Hydra wraps errors raised while instantiating), if there is one."""
    while error is not None:
        if isinstance(error, PetlabError):
            return error
        error = error.__cause__ or error.__context__
    return None
