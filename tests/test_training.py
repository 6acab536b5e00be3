"""Models from weights files, fine-tuning, the LR finder, experiments, reproducibility and resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from petlab.cli import user_error
from petlab.config import config_options
from petlab.data.targets import Label
from petlab.module import PetModule
from petlab.tasks import Classification
from petlab.train import train

EXPERIMENTS = config_options("experiment")
BACKBONES = config_options("model")
VOLATILE = {"seconds", "best_checkpoint"}


def module(backbone: str = "resnet34", image_size: int = 32, **options) -> PetModule:
    task = Classification("species", Label("species", ["cat", "dog"]))
    return PetModule({"name": backbone, "pretrained": False}, task, image_size, [0.5] * 3, [0.25] * 3, **options)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_discriminative_learning_rates_grow_from_stem_to_head_without_decay_on_norms_and_biases(backbone: str):
    model = module(backbone, backbone_lr_factor=0.01)
    groups = model.parameter_groups(lr=1e-3)
    rates = sorted({group["lr"] for group in groups})
    assert len(rates) == len(model.backbone.stages) + 1  # each stage, then the head
    assert rates[0] == pytest.approx(1e-5) and rates[-1] == pytest.approx(1e-3)
    assert [group["lr"] for group in groups] == sorted(group["lr"] for group in groups)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    exempt = [p for group in groups if group.get("weight_decay") == 0.0 for p in group["params"]]
    assert exempt and all(p.ndim == 1 for p in exempt)  # norm weights and biases
    assert all(p.ndim > 1 for group in groups if "weight_decay" not in group for p in group["params"])
    assert "weight_decay" not in module(backbone, norm_bias_weight_decay=None).parameter_groups(lr=1e-3)[0]


@pytest.mark.parametrize("backbone", BACKBONES)
def test_frozen_epochs_train_only_the_head(backbone: str):
    L.seed_everything(0)
    model = module(backbone, freeze_epochs=1)
    backbone_before = [p.clone() for p in model.backbone.parameters()]
    head_before = [p.clone() for p in model.head.parameters()]
    images = torch.randn(16, 3, 32, 32)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, torch.arange(16) % 2), batch_size=8)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")  # fmt: skip
    trainer.fit(model, train_dataloaders=loader)
    assert all(torch.equal(a, b) for a, b in zip(model.backbone.parameters(), backbone_before, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(model.head.parameters(), head_before, strict=True))
    model.set_backbone_trainable(True)
    assert all(p.requires_grad for p in model.parameters())


def test_freeze_epochs_must_leave_epochs_to_fine_tune(make_cfg):
    cfg = make_cfg(["model=cnn", "model.freeze_epochs=3", "trainer.max_epochs=3"])
    with pytest.raises(Exception) as raised:
        train(cfg)
    assert "freeze_epochs" in str(user_error(raised.value))
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


def test_the_lr_finder_saves_its_plot_and_sets_the_learning_rate(make_cfg):
    cfg = make_cfg(["model=cnn", "tune.lr_find=true", "tune.num_training=20", "tune.early_stop_threshold=null",
                    "data.batch_size=4", "trainer.max_epochs=1", "trainer.limit_val_batches=2",
                    "callbacks.model_checkpoint=null"])  # fmt: skip
    metrics = train(cfg)
    assert (Path(cfg.paths.output_dir) / "lr_find.png").stat().st_size > 1000
    assert 1e-6 <= metrics["lr_find/suggestion"] <= 1.0


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_config_runs(make_cfg, experiment: str):
    cfg = make_cfg([f"experiment={experiment}", "trainer.fast_dev_run=true", "data.image_size=32",
                    "data.batch_size=8", "model.backbone.pretrained=false"])  # fmt: skip
    metrics = train(cfg)
    highest = float("inf") if metrics["monitor"].endswith("loss") else 1  # recipe_joint monitors its summed loss
    assert 0 <= metrics[metrics["monitor"]] <= highest


def test_the_notebook_experiments_train_without_augmentation_on_whole_images(make_cfg):
    for experiment in (name for name in EXPERIMENTS if name.startswith("notebook")):
        data = make_cfg([f"experiment={experiment}"]).data
        assert data.augment is None and data.crop_margin == 0, experiment


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("scheduler", ["cosine", "none"])
def test_optimizers_and_schedulers_from_configs(make_cfg, optimizer: str, scheduler: str):
    cfg = make_cfg(["model=cnn", f"optimizer={optimizer}", f"scheduler={scheduler}", "trainer.fast_dev_run=true",
                    "task.label_smoothing=0.1"])  # fmt: skip
    metrics = train(cfg)
    highest = float("inf") if metrics["monitor"].endswith("loss") else 1  # recipe_joint monitors its summed loss
    assert 0 <= metrics[metrics["monitor"]] <= highest


def stable(metrics: dict) -> dict:
    return {key: value for key, value in metrics.items() if key not in VOLATILE}


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_the_same_config_and_seed_give_identical_metrics(make_cfg, tmp_path: Path, precision: str):
    overrides = ["model=cnn", "seed=0", "trainer.max_epochs=2", "trainer.limit_train_batches=4",
                 "data.upsample=synthetic", f"trainer.precision={precision}"]  # fmt: skip
    first = train(make_cfg([*overrides, f"paths.output_dir={tmp_path / 'a'}"]))
    second = train(make_cfg([*overrides, f"paths.output_dir={tmp_path / 'b'}"]))
    assert first["seed"] == 0 and first["precision"] == precision
    assert stable(first) == stable(second)
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["val/acc"] == second["val/acc"]


@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_to_the_same_metrics_also_in_bfloat16(tmp_path: Path, sample_root: Path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "sample-pets").symlink_to(sample_root)
    env = {**os.environ, "PETLAB_ROOT": str(tmp_path)}
    args = [sys.executable, "-m", "petlab", "data=sample", "model=cnn", "data.image_size=32", "data.batch_size=4",
            "data.num_workers=0", "trainer.max_epochs=3", "trainer.accelerator=cpu", "seed=7",
            "trainer.precision=bf16-mixed", "callbacks.early_stopping=null", "callbacks.progress_bar=null"]  # fmt: skip
    subprocess.run([*args, "hydra.run.dir=outputs/whole"], cwd=tmp_path, env=env, check=True, capture_output=True)
    whole = json.loads((tmp_path / "outputs" / "whole" / "metrics.json").read_text())

    run_dir = tmp_path / "outputs" / "runs" / "killed"
    process = subprocess.Popen([*args, f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)  # into the second epoch, after the checkpoint is complete
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run_dir / "metrics.json").exists()

    # A bare resume: the run's own saved config, nothing repeated.
    resumed = subprocess.run([sys.executable, "-m", "petlab", "ckpt_path=last"], cwd=tmp_path, env=env,
                             capture_output=True, text=True)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "outputs" / "runs").iterdir()) == ["killed"]
    again = json.loads((run_dir / "metrics.json").read_text())
    assert stable(again) == stable(whole)
