"""Training: compose the config, build data, model and trainer from ``_target_``s, fit, test, record."""

from __future__ import annotations

import json
import logging
import time
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.tuner import Tuner
from omegaconf import DictConfig, OmegaConf

from petlab.config import flatten
from petlab.data.datamodule import PetDataModule
from petlab.errors import PetlabError
from petlab.interpret import write_evaluation
from petlab.module import PetClassifier

log = logging.getLogger(__name__)


def scalar_metrics(trainer: L.Trainer) -> dict[str, float]:
    return {
        name: round(float(value), 6)
        for name, value in trainer.callback_metrics.items()
        if isinstance(value, torch.Tensor) and value.numel() == 1
    }


def build(cfg: DictConfig) -> tuple[PetDataModule, PetClassifier, L.Trainer]:
    """Instantiate the data module (set up, so the classes are known), the module and the trainer."""
    datamodule: PetDataModule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
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


def check_before_fit(cfg: DictConfig, model: PetClassifier, trainer: L.Trainer) -> None:
    """Impossible combinations, refused before any training starts."""
    if model.freeze_epochs and not trainer.fast_dev_run and model.freeze_epochs >= trainer.max_epochs:
        raise PetlabError(
            f"model.freeze_epochs={model.freeze_epochs} leaves no epoch to train the whole network with "
            f"trainer.max_epochs={trainer.max_epochs}: make freeze_epochs smaller than max_epochs"
        )
    if cfg.get("ckpt_path") and not Path(cfg.ckpt_path).is_file():
        raise PetlabError(f"ckpt_path={cfg.ckpt_path} does not exist: give a checkpoint file or ckpt_path=last")


def find_learning_rate(
    cfg: DictConfig, model: PetClassifier, datamodule: PetDataModule, trainer: L.Trainer
) -> float | None:
    """Run Lightning's LR range test, save its plot in the run directory, optionally adopt its suggestion."""
    finder = Tuner(trainer).lr_find(
        model, datamodule=datamodule, min_lr=cfg.tune.min_lr, max_lr=cfg.tune.max_lr,
        num_training=cfg.tune.num_training, early_stop_threshold=cfg.tune.early_stop_threshold, update_attr=False,
    )  # fmt: skip
    suggestion = finder.suggestion()
    figure = finder.plot(suggest=suggestion is not None)
    figure.savefig(Path(cfg.paths.output_dir) / "lr_find.png", dpi=100)
    if suggestion is None:
        log.warning(
            "The learning-rate finder has too few points for a suggestion (raise tune.num_training, or "
            "set tune.early_stop_threshold=null): keeping optimizer.lr. Plot: lr_find.png"
        )
        return None
    log.info(f"Learning-rate finder suggests {suggestion:.2e} (plot: lr_find.png)")
    if cfg.tune.update_lr and model.optimizer_factory is not None:
        model.optimizer_factory = partial(model.optimizer_factory, lr=suggestion)
    return suggestion


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train (and test) as ``cfg`` says; returns the metrics also written to RUN_DIR/metrics.json."""
    started = time.perf_counter()
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    datamodule, model, trainer = build(cfg)
    if trainer.is_global_zero and datamodule.report is not None:
        datamodule.report.save(output_dir)
        if (experiment := tensorboard_writer(trainer)) is not None:
            datamodule.report.log_to(experiment)
    check_before_fit(cfg, model, trainer)
    suggested_lr = find_learning_rate(cfg, model, datamodule, trainer) if cfg.get("tune", {}).get("lr_find") else None
    params = model.parameter_counts()
    log.info(f"{cfg.model.arch}: {params['total']:,} parameters ({params['trainable']:,} trainable)")
    model.data_config = OmegaConf.to_container(cfg.data, resolve=True)

    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics: dict[str, Any] = scalar_metrics(trainer)
    checkpoint = next((cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)), None)
    best_path = checkpoint.best_model_path if checkpoint else ""
    if cfg.get("test") and datamodule.has_test:
        trainer.test(model, datamodule=datamodule, ckpt_path=best_path or None, weights_only=False)
        metrics.update({k: v for k, v in scalar_metrics(trainer).items() if k.startswith("test/")})
        if trainer.is_global_zero:
            probabilities, targets = model.test_predictions()
            write_evaluation(
                output_dir, probabilities, targets, datamodule.datasets["test"].paths,
                model.class_names, tensorboard_writer(trainer), step=trainer.global_step,
            )  # fmt: skip
    metrics.update({
        "task": cfg.task.name, "model": cfg.model.arch, "seed": cfg.get("seed"),
        "best_epoch": model.best_epoch, "epochs": trainer.current_epoch,
        "params_total": params["total"], "params_trainable": params["trainable"],
        "best_checkpoint": best_path, "seconds": round(time.perf_counter() - started, 1),
    })  # fmt: skip
    if suggested_lr is not None:
        metrics["lr_find/suggestion"] = suggested_lr
    # Learning rates and the last batch's loss say nothing about the result.
    metrics = {k: v for k, v in metrics.items() if not k.startswith("lr-") and k != "train/batch_loss"}
    if trainer.is_global_zero:
        log_hparams(trainer, cfg, metrics)
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        log.info(f"Run directory: {output_dir}  (metrics.json, checkpoints/, tensorboard/)")
    return metrics


def tensorboard_writer(trainer: L.Trainer) -> Any | None:
    """The SummaryWriter of the run's TensorBoard logger, if it has one."""
    return next((lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)


HPARAM_METRICS = {"val/acc_best": "hp/val_acc", "test/acc": "hp/test_acc", "test/f1_macro": "hp/test_f1_macro"}


def log_hparams(trainer: L.Trainer, cfg: DictConfig, metrics: dict[str, Any]) -> None:
    """Log the flattened config once, with the metrics to compare, so TensorBoard's HParams tab ranks runs."""
    values = {hp: metrics[name] for name, hp in HPARAM_METRICS.items() if name in metrics}
    params = {**flatten(cfg), "params/total": metrics["params_total"]}
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(params, metrics=values)
