"""The real configs, composed with Hydra, train every task x backbone pair on generated data."""

import json
from pathlib import Path

import pytest
from hydra.utils import instantiate
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import snapshot
from petlab.cli import user_error
from petlab.config import config_options
from petlab.errors import PetlabError
from petlab.tasks.base import build_task
from petlab.train import train

PAIRS = [(task, model) for task in config_options("task") for model in config_options("model")]


@pytest.mark.parametrize(("task", "model"), PAIRS)
def test_fast_dev_run_for_every_task_and_backbone_at_the_smallest_size(make_cfg, task: str, model: str):
    size = 16 if model == "cnn" else 32
    cfg = make_cfg([f"task={task}", f"model={model}", "trainer.fast_dev_run=true", "model.backbone.pretrained=false",
                    f"data.image_size={size}"])  # fmt: skip
    metrics = train(cfg)
    monitored = metrics["monitor"]  # val/acc for classification, val/miou segmentation, val/loss joint
    highest = float("inf") if monitored.endswith("loss") else 1.0
    assert 0.0 <= metrics[monitored] <= highest and 0.0 <= metrics[monitored.replace("val/", "test/")] <= highest
    written = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert written[monitored] == metrics[monitored] and written["task"] == task and written["model"] == model


def test_a_short_run_writes_checkpoints_events_and_metrics(make_cfg):
    cfg = make_cfg(["model=cnn", "trainer.max_epochs=2", "trainer.limit_train_batches=3"])
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    assert {p.name for p in (run / "checkpoints").iterdir()} >= {"last.ckpt"}
    assert Path(metrics["best_checkpoint"]).is_file()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert metrics["epochs"] == 2 and metrics["best_epoch"] in (0, 1)
    assert set(metrics) >= {"val/acc", "val/loss", "val/acc_best", "train/loss", "test/acc"}


def test_species_learns_well_above_the_majority_class_and_keeps_its_best_epoch(make_cfg):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = make_cfg(["model=cnn", "trainer.max_epochs=3", "callbacks.early_stopping=null"])
    metrics = train(cfg)
    # Two thirds of the test images are dogs: always answering dog scores 0.68; measured 0.90 after 3 epochs.
    assert metrics["test/acc"] > 0.8, metrics
    accuracies = [event.value for event in EventAccumulator(str(Path(cfg.paths.output_dir) / "tensorboard")).Reload()
                  .Scalars("val/acc")]  # fmt: skip
    assert metrics["best_epoch"] == accuracies.index(max(accuracies)) and metrics["directions"]["val/acc"] == "max"


def test_breed_classes_are_the_breeds_present(make_cfg):
    cfg = make_cfg(["task=breed"])
    datamodule = instantiate(cfg.data, targets=build_task(cfg.task).targets(), _convert_="all")
    datamodule.setup("fit")
    assert len(datamodule.class_names) == 37 and datamodule.class_names[0] == "Abyssinian"


def test_a_missing_dataset_says_where_it_looked_and_what_to_do(make_cfg, tmp_path: Path):
    cfg = make_cfg(["model=cnn", f"data.root={tmp_path / 'nowhere'}"])
    with pytest.raises(Exception) as raised:
        train(cfg)
    problem = user_error(raised.value)
    assert isinstance(problem, PetlabError)
    assert str(tmp_path / "nowhere") in str(problem) and "data=sample" in str(problem)


def test_a_run_reports_the_data_and_never_touches_the_dataset(make_cfg, flawed_root: Path):
    before = snapshot(flawed_root)
    cfg = make_cfg([
        "model=cnn", f"data.root={flawed_root}", "data.upsample=synthetic", "data.normalize=dataset",
        "trainer.max_epochs=1", "trainer.limit_train_batches=2",
    ])  # fmt: skip
    train(cfg)
    assert snapshot(flawed_root) == before
    run = Path(cfg.paths.output_dir)
    report = (run / "data_report.md").read_text()
    assert "Bengal_105" in report and "| cat |" in report and "synthetic" in report
    assert (run / "data_counts.csv").is_file() and (run / "data_skipped.csv").is_file()
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "tensors": 0}).Reload()
    assert "data/images_per_class" in events.Tags()["images"]
    assert any(tag.startswith("data/report") for tag in events.Tags()["tensors"])
