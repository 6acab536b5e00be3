"""What TensorBoard's HParams tab is given, and what an evaluation's folder is named by."""

from __future__ import annotations

from pathlib import Path

from petlab.config import evaluated_label
from petlab.hparams import HEADLINE, comparable


def test_settings_are_flattened_and_the_headline_sorts_before_every_config_key():
    shown = comparable({"task.name": "breed", "optimizer.lr": 0.001, "data.augment": {"hflip": 0.5,
                        "crop_scale": [0.75, 1.0], "policy": None}, "model.ema": None, "seed": 0})  # fmt: skip
    assert shown == {"Task": "breed", "LR": 0.001, "data.augment.hflip": 0.5, "data.augment.crop_scale": "[0.75, 1.0]",
                     "Seed": 0}  # fmt: skip
    # TensorBoard orders the columns by name (those that differ between runs first) and ticks the first five.
    names = [*HEADLINE.values(), "Run", "data.augment.hflip", "data.batch_size", "model.pool", "optimizer.weight_decay"]
    assert set(sorted(names)[:5]) == {*HEADLINE.values(), "Run"}


def test_an_evaluation_is_named_by_the_task_and_backbone_of_the_run_it_evaluates(tmp_path: Path):
    run = tmp_path / "runs" / "2026-12-05_10-00-00-000000_p1_breed_cnn"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("task:\n  name: breed\nmodel:\n  backbone:\n    name: resnet34\n")
    assert evaluated_label(run / "checkpoints" / "last.ckpt") == "_breed_resnet34"
    assert evaluated_label(tmp_path / "downloaded model.ckpt") == "_downloaded-model"  # no run's record
    assert evaluated_label("") == ""
