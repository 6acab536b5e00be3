"""Training: compose the config, build data, model and trainer from ``_target_``s, fit, test, record."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.tuner import Tuner
from omegaconf import DictConfig, OmegaConf, open_dict

from petlab.data.datamodule import PetDataModule
from petlab.errors import PetlabError
from petlab.files import write_text_atomic
from petlab.hparams import hparams_of, write_session
from petlab.interpret import Evaluation
from petlab.jobs import mark_pruned
from petlab.module import PetModule
from petlab.preflight import check_config
from petlab.resume import check_resume
from petlab.tasks import Task
from petlab.tasks.base import build_task
from petlab.trainer import (
    build_group,
    build_trainer,
    describe_numerics,
    logged_scalars,
    numerics,
    plain_summaries_off_a_terminal,
    scalar_metrics,
    tensorboard_writer,
)  # fmt: skip

log = logging.getLogger(__name__)


def build(
    cfg: DictConfig, resuming: bool = False, extra_callbacks: tuple[L.Callback, ...] = ()
) -> tuple[PetDataModule, PetModule, L.Trainer]:
    """Instantiate the task, the data module reading its targets (set up, so a label's classes are known), the
    module and the trainer (with the config's callbacks and ``extra_callbacks``)."""
    task = build_task(cfg.task)
    with open_dict(cfg):  # callbacks monitor in the direction the task's metric declares (task.mode)
        cfg.task.mode = task.mode
    datamodule: PetDataModule = instantiate(cfg.data, targets=task.targets(), _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("fit")
    backbone = OmegaConf.to_container(cfg.model.backbone, resolve=True)
    if resuming:  # a resumed run's weights come from its checkpoint: no download, no weights file
        backbone.update(pretrained=False, weights_path=None)
    model: PetModule = instantiate(
        cfg.model,
        backbone=backbone,
        task=task,
        mean=list(datamodule.mean),
        std=list(datamodule.std),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        _convert_="all",
    )
    if datamodule.early_size:  # the head reads the same features at the smaller size
        early = model.backbone.features_at(datamodule.early_size, "data.progressive_resize.size")
        if early != model.backbone.num_features:
            raise PetlabError(
                f"data.progressive_resize needs features of one length at every size, but model="
                f"{cfg.model.backbone.name} with model.pool={cfg.model.get('pool')} gives {early} at "
                f"{datamodule.early_size} px and {model.backbone.num_features} at {datamodule.image_size} px: "
                "set model.pool=avg"
            )
    callbacks = plain_summaries_off_a_terminal([*build_group(cfg, "callbacks"), *extra_callbacks])
    loggers = build_group(cfg, "logger")
    return datamodule, model, build_trainer(cfg.trainer, callbacks=callbacks, logger=loggers or False)


def find_learning_rate(
    cfg: DictConfig, model: PetModule, datamodule: PetDataModule, trainer: L.Trainer
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


def config_sha(cfg: DictConfig) -> str:
    """What identifies a run's configuration: all of it as composed (interpolations unresolved, so that what
    derives from the run's folder does not count), but ``paths`` and the checkpoint it resumed from."""
    content = OmegaConf.to_container(cfg, resolve=False)
    for key in ("paths", "ckpt_path"):
        content.pop(key, None)
    return hashlib.sha1(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def rerun_sweep_job(cfg: DictConfig, identity: str) -> dict[str, Any] | None:
    """A job of a sweep started again into its folder: a completed one (its metrics.json, of this config:
    ``identity``, see :func:`config_sha`) is not trained again, its metrics are returned; one that was killed
    resumes from its own last checkpoint (never training anew beside it, which wrote ``-v1`` checkpoints and
    mixed two runs in one folder)."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN or cfg.get("ckpt_path"):
        return None
    if (cfg.get("trial") or {}).get("number") is not None:  # a search's trials are the search's to rerun
        return None
    output_dir = Path(cfg.paths.output_dir)
    try:
        done = json.loads((output_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        done = None
    if isinstance(done, dict):
        if done.get("config_sha", identity) != identity:
            raise PetlabError(f"{output_dir} holds a completed run of another configuration: start the sweep in "
                              "another folder (hydra.sweep.dir=...) rather than over it")  # fmt: skip
        log.info(f"{output_dir} was completed by an earlier start of this sweep: not trained again")
        return done
    last = output_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        log.info(f"{output_dir} was stopped before it ended: resuming it from {last}")
        with open_dict(cfg):
            cfg.ckpt_path = str(last)
    return None


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train (and test) as ``cfg`` says; returns the metrics also written to RUN_DIR/metrics.json."""
    started = time.perf_counter()
    identity = config_sha(cfg)
    if (done := rerun_sweep_job(cfg, identity)) is not None:
        return done
    resumed = check_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    reporter = trial_reporter(cfg)
    datamodule, model, trainer = build(
        cfg, resuming=resumed is not None, extra_callbacks=(reporter,) if reporter else ()
    )
    if resumed is not None:
        check_resume(resumed, dict(model.hparams), OmegaConf.to_container(cfg.data, resolve=True), cfg.ckpt_path)
        if resumed["stopped_early_after"] is not None:
            # Lightning restores early stopping's counters, not its decision: the run had ended, and a resume
            # (killed while writing its final files) must train nothing more.
            trainer.fit_loop.max_epochs = resumed["stopped_early_after"]
    if trainer.is_global_zero and datamodule.report is not None:
        datamodule.report.save(output_dir)
        if (experiment := tensorboard_writer(trainer)) is not None:
            datamodule.report.log_to(experiment)
    suggested_lr = find_learning_rate(cfg, model, datamodule, trainer) if cfg.get("tune", {}).get("lr_find") else None
    params = model.parameter_counts()
    log.info(f"{cfg.model.backbone.name} with task {cfg.task.name}'s output layers: {params['total']:,} parameters "
             f"({params['trainable']:,} trainable); {describe_numerics(trainer, model)}")  # fmt: skip
    model.data_config = OmegaConf.to_container(cfg.data, resolve=True)

    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    for stopper in (cb for cb in trainer.callbacks if isinstance(cb, EarlyStopping) and cb.stopped_epoch):
        log.info(
            f"Early stopping: {stopper.monitor} did not improve on {float(stopper.best_score):.4f} for "
            f"{stopper.patience} validations, so training stopped after {trainer.current_epoch} of "
            f"trainer.max_epochs={trainer.max_epochs} epochs (set callbacks.early_stopping.patience, or "
            "callbacks.early_stopping=null to train them all)"
        )
    metrics: dict[str, Any] = scalar_metrics(trainer)
    if model.task.monitor not in metrics:
        # A resume with no epoch left to train (the run was killed while writing its final files): its
        # training and validation figures are the ones it logged.
        metrics.update(logged_scalars(output_dir / "tensorboard", ("train/", "val/")))
    checkpoint = next((cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint) and cb.monitor), None)
    best_path = checkpoint.best_model_path if checkpoint else ""
    pruned_after = reporter.pruned_after if reporter else None
    if cfg.get("test") and datamodule.has_test and pruned_after is None:  # a pruned trial is not worth testing
        model.tta = cfg.get("test_tta", False)
        trainer.test(model, datamodule=datamodule, ckpt_path=best_path or None, weights_only=False)
        metrics.update({k: v for k, v in scalar_metrics(trainer).items() if k.startswith("test/")})
        metrics["tta"] = model.tta
        if trainer.is_global_zero:
            evaluation = Evaluation(output_dir, tensorboard_writer(trainer), trainer.global_step,
                                    output_dir / "tensorboard")  # fmt: skip
            model.task.write_evaluation(evaluation, model.test_outputs, datamodule.datasets["test"])
    metrics.update({
        "task": cfg.task.name, "model": cfg.model.backbone.name, "seed": cfg.get("seed"),
        "monitor": model.task.monitor, "monitor_mode": model.task.mode, "directions": model.task.directions(),
        "best_epoch": model.best_epoch, "epochs": trainer.current_epoch,
        "params_total": params["total"], "params_trainable": params["trainable"],
        **numerics(trainer, model),
        "best_checkpoint": best_path, "seconds": round(time.perf_counter() - started, 1),
    })  # fmt: skip
    metrics["config_sha"] = identity
    if datamodule.curation.files:  # which audit decisions (data.exclude, data.relabel) made this result
        metrics["data_files"] = datamodule.curation.files
    if suggested_lr is not None:
        metrics["lr_find/suggestion"] = suggested_lr
    # Learning rates and the last batch's loss say nothing about the result.
    metrics = {k: v for k, v in metrics.items() if not k.startswith("lr-") and k != "train/batch_loss"}
    if trainer.is_global_zero:
        status = None if reporter is None else "completed" if pruned_after is None else "pruned"
        log_hparams(trainer, metrics, cfg, model.task, status)
        if pruned_after is not None:
            mark_pruned(output_dir, f"pruned after epoch {pruned_after} of {cfg.trainer.max_epochs}")
        write_text_atomic(output_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        log.info(f"Run directory: {output_dir}  (metrics.json, checkpoints/, tensorboard/)")
    return metrics


def trial_reporter(cfg: DictConfig) -> L.Callback | None:
    """For a run that is a trial of a search (``trial.number`` set by the search's worker): the callback that
    reports to the study and prunes."""
    trial = cfg.get("trial") or {}
    if trial.get("number") is None:
        return None
    # Imported here: Optuna is the sweep extra's, and only a search's trials need it.
    from petlab.search.pruning import ReportToTrial

    return ReportToTrial(trial.search_dir, trial.number)


def log_hparams(
    trainer: L.Trainer, metrics: dict[str, Any], cfg: DictConfig, task: Task, status: str | None = None
) -> None:
    """Log the compared hyperparameters once, with the task's best monitored metric and the test metrics,
    so that TensorBoard's HParams tab ranks runs; a search's trial adds its ``status`` (completed, pruned)."""
    names = [task.best_metric, *(name for name in metrics if name.startswith("test/"))]
    values = {f"hp/{name}": metrics[name] for name in names if name in metrics}
    params = hparams_of(cfg, Path(cfg.paths.output_dir).name)
    if status is not None:
        params["status"] = status
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            write_session(Path(logger.log_dir), params, values, trainer.global_step)
