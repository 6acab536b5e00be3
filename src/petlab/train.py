"""Training: compose the config, build data, model and trainer from ``_target_``s, fit, test, record."""

from __future__ import annotations

import json
import logging
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.tuner import Tuner
from omegaconf import DictConfig, OmegaConf

from petlab.checkpoint import read_checkpoint
from petlab.config import flatten, whole_number
from petlab.data.datamodule import PetDataModule
from petlab.errors import PetlabError, first_line
from petlab.interpret import write_evaluation
from petlab.module import PetClassifier
from petlab.precision import AUTO, cpu_bf16_features, resolve_precision, uses_channels_last
from petlab.resume import check_resume

log = logging.getLogger(__name__)


def scalar_metrics(trainer: L.Trainer) -> dict[str, float]:
    return {
        name: round(float(value), 6)
        for name, value in trainer.callback_metrics.items()
        if isinstance(value, torch.Tensor) and value.numel() == 1
    }


def build_object(config: DictConfig, key: str, **arguments: Any) -> Any:
    """Instantiate a library object (trainer, callback, logger); a value it refuses is a one-line error."""
    try:
        return instantiate(config, **arguments)
    except InstantiationException as error:
        reason = first_line(error.__cause__ or error)
        raise PetlabError(f"{key} cannot be built from the config ({reason}): check the {key}.* values") from error


def build(cfg: DictConfig, resuming: bool = False) -> tuple[PetDataModule, PetClassifier, L.Trainer]:
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
        # A resumed run's weights come from its checkpoint: no download, no weights file.
        **({"pretrained": False, "weights_path": None} if resuming else {}),
        _convert_="all",
    )
    callbacks, loggers = build_group(cfg, "callbacks"), build_group(cfg, "logger")
    return datamodule, model, build_trainer(cfg.trainer, callbacks=callbacks, logger=loggers or False)


def build_group(cfg: DictConfig, group: str) -> list[Any]:
    """The objects of a config group such as callbacks or logger; an entry set to null is switched off."""
    entries = (cfg.get(group) or {}).items()
    return [build_object(entry, f"{group}.{name}") for name, entry in entries if entry is not None]


def build_trainer(config: DictConfig, **arguments: Any) -> L.Trainer:
    """The Lightning Trainer of ``config``, with ``precision: auto`` resolved for the device it runs on."""
    precision = resolve_precision(config.get("precision", AUTO), config.get("accelerator", AUTO))
    return build_object(config, "trainer", precision=precision, **arguments)


# Keys that Lightning or the module would only trip over mid-run, with their smallest valid value.
WHOLE_NUMBERS = {"trainer.max_epochs": -1, "trainer.min_epochs": 0, "model.freeze_epochs": 0}


def check_config(cfg: DictConfig) -> dict[str, Any] | None:
    """Refuse values that would fail deep inside Lightning or torch, before anything is built or written.

    Returns what the checkpoint to resume from was trained with, if there is one (read safely, once checked).
    """
    if cfg.get("seed") is not None:
        whole_number("seed", cfg.seed, 0, 2**32 - 1)
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
    check_optimizer(cfg)
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
    model = OmegaConf.to_container(cfg.model, resolve=True)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    check_resume(settings, {**model, "task": cfg.task.name, "image_size": data.get("image_size")}, data, cfg.ckpt_path)
    return settings


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
    resumed = check_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    datamodule, model, trainer = build(cfg, resuming=resumed is not None)
    if resumed is not None:
        check_resume(resumed, dict(model.hparams), OmegaConf.to_container(cfg.data, resolve=True), cfg.ckpt_path)
    if trainer.is_global_zero and datamodule.report is not None:
        datamodule.report.save(output_dir)
        if (experiment := tensorboard_writer(trainer)) is not None:
            datamodule.report.log_to(experiment)
    suggested_lr = find_learning_rate(cfg, model, datamodule, trainer) if cfg.get("tune", {}).get("lr_find") else None
    params = model.parameter_counts()
    log.info(f"{cfg.model.arch}: {params['total']:,} parameters ({params['trainable']:,} trainable); "
             f"{describe_numerics(trainer, model)}")  # fmt: skip
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
        **numerics(trainer, model),
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


def numerics(trainer: L.Trainer, model: PetClassifier) -> dict[str, str]:
    """Which precision and memory format the training device runs (``auto`` resolved)."""
    device = trainer.strategy.root_device.type
    channels_last = uses_channels_last(model.channels_last, device)
    return {"precision": str(trainer.precision), "memory_format": "channels_last" if channels_last else "contiguous"}


def describe_numerics(trainer: L.Trainer, model: PetClassifier) -> str:
    """The precision and memory format, and for a CPU what decided them, for the run log."""
    chosen = numerics(trainer, model)
    text = f"precision {chosen['precision']}, {chosen['memory_format']}"
    if trainer.strategy.root_device.type != "cpu":
        return text
    features = cpu_bf16_features()
    return text + (f" (CPU with {' and '.join(features)})" if features else " (CPU without bfloat16 instructions)")


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
