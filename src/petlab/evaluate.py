"""``python -m petlab.evaluate ckpt_path=FILE [data overrides]``: evaluate a checkpoint on a dataset.

Writes metrics.json and the evaluation files to a new directory under outputs/evaluations/, never into
the training run.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from petlab.checks import switch
from petlab.cli import one_line_config_errors, plugins, require, user_facing
from petlab.config import config_dir
from petlab.devices import check_devices
from petlab.errors import PetlabError
from petlab.resolvers import register_resolvers

register_resolvers()
log = logging.getLogger(__name__)


def _overrides_data() -> bool:
    return any(item.lstrip("+~").startswith("data") for item in HydraConfig.get().overrides.task)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    # Imported here: torch and the models load only once the options are checked (errors answer at once).
    from lightning.pytorch.callbacks import RichProgressBar

    from petlab.checkpoint import checkpoint_datamodule, load_checkpoint
    from petlab.interpret import Evaluation
    from petlab.trainer import build_group, build_trainer, numerics, scalar_metrics, tensorboard_writer

    require(cfg, "ckpt_path")
    switch("tta", cfg.tta)
    check_devices(cfg.accelerator, cfg.devices)
    if cfg.devices != 1:
        raise PetlabError(f"devices={cfg.devices}: petlab.evaluate runs on one device (its evaluation files need every "
                          "answer in one process); petlab.predict answers on several")  # fmt: skip
    L.seed_everything(cfg.seed, verbose=False)
    checkpoint = load_checkpoint(cfg.ckpt_path, plugins(cfg))
    model, task = checkpoint.model, checkpoint.task
    data_config = cfg.data if _overrides_data() or not checkpoint.data_config else checkpoint.data_config
    datamodule = checkpoint_datamodule(checkpoint, data_config)
    datamodule.setup("test")  # a label target checks that the dataset's classes are the model's
    if cfg.split not in ("val", "test") or cfg.split not in datamodule.datasets:
        raise PetlabError(f"split={cfg.split} is not available here: choose one of val, test")
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    loggers = build_group(cfg, "logger")
    trainer = build_trainer(cfg.trainer, logger=loggers or False, callbacks=[RichProgressBar()])
    model.tta = cfg.tta
    trainer.test(model, dataloaders=datamodule.loader(cfg.split))
    evaluation = Evaluation(output_dir, tensorboard_writer(trainer), 0, output_dir / "tensorboard")
    task.write_evaluation(evaluation, model.test_outputs, datamodule.datasets[cfg.split])
    # Lightning names what trainer.test measures test/...; the files name the split that was measured.
    metrics = {re.sub(r"^test/", f"{cfg.split}/", key): value for key, value in scalar_metrics(trainer).items()}
    images = len(next(iter(model.test_outputs.values()), []))
    metrics.update({"checkpoint": str(checkpoint.path), "split": cfg.split, "dataset": str(datamodule.root),
                    "images": images, "tta": cfg.tta, **numerics(trainer, model)})  # fmt: skip
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    monitored = task.monitor.replace("val/", f"{cfg.split}/", 1)
    log.info(f"Evaluation written to {output_dir}: {monitored} {metrics.get(monitored)}")
    return metrics


@one_line_config_errors
@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="evaluate")
@user_facing
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
