"""Several tasks trained jointly: every combination of conf/task trains, each task learns only from the images
that have its target, and predict and export cover every task."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import exported_outputs, targets_named
from conftest import run_module as petlab
from petlab.config import config_options
from petlab.data.datamodule import PetDataModule
from petlab.data.targets import Label
from petlab.errors import PetlabError
from petlab.resolvers import task_configs
from petlab.tasks import Classification, HeadBox, Joint
from petlab.train import train

TASKS = [name for name in config_options("task") if name != "joint"]
PAIRS = list(itertools.combinations(TASKS, 2))


def test_every_task_of_conf_task_is_a_joint_task_with_no_list_in_code():
    assert set(TASKS) == {"species", "breed", "segmentation", "head_box"}
    configs = task_configs(TASKS)
    assert configs["species"]["_target_"] == "petlab.tasks.Classification" and configs["breed"]["target"] == "breed"
    assert configs["head_box"]["_target_"] == "petlab.tasks.HeadBox"


@pytest.mark.parametrize("heads", PAIRS, ids=["+".join(pair) for pair in PAIRS])
def test_every_pair_of_tasks_trains_in_fast_dev_run(make_cfg, heads: tuple[str, str]):
    cfg = make_cfg(["task=joint", f"task.tasks=[{','.join(heads)}]", "model=cnn", "trainer.fast_dev_run=true"])
    metrics = train(cfg)
    assert metrics["monitor"] == "val/loss" and metrics["monitor_mode"] == "min" and metrics["val/loss"] >= 0
    for head in heads:
        assert any(name.startswith(f"test/{head}/") for name in metrics), head
        assert (Path(cfg.paths.output_dir) / head).is_dir(), head


def test_a_joint_batch_mixes_images_with_and_without_a_box(sample_root: Path, tmp_path: Path):
    module = PetDataModule(sample_root, targets=targets_named(["species", "trimap", "box"]), image_size=32,
                           batch_size=64, num_workers=0, split="random", cache_dir=tmp_path / "cache")  # fmt: skip
    module.setup("fit")
    images, targets = next(iter(module.train_dataloader()))
    assert images.shape == (64, 3, 32, 32) and set(targets) == {"species", "trimap", "box"}
    assert targets["trimap"].shape == (64, 32, 32) and targets["species"].dtype == torch.int64
    boxed = targets["box"].isfinite().all(dim=1)
    assert boxed.any() and not boxed.all()  # the release's test half has no head box
    assert module.keyed_targets["species"].classes == ["cat", "dog"]  # learnt from the data


def test_the_joint_loss_is_the_weighted_sum_and_images_without_a_box_add_nothing():
    configs = {"species": Classification("species", Label("species", ["cat", "dog"])), "head": HeadBox("head")}
    task = Joint("joint", ["species", "head"], configs, weights=[0.5, 2.0])
    outputs = {"species": torch.tensor([[2.0, 0.0], [0.0, 1.0]]),
               "head": torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.0, 0.0, 1.0, 1.0]])}  # fmt: skip
    targets = {"species": torch.tensor([0, 1]), "head": torch.tensor([[0.1, 0.1, 0.4, 0.5], [math.nan] * 4])}
    species, head = task.tasks["species"], task.tasks["head"]
    expected = 0.5 * species.loss(outputs["species"], targets["species"]) + 2.0 * head.loss(
        outputs["head"][:1], targets["head"][:1]
    )
    assert torch.allclose(task.loss(outputs, targets), expected)
    changed = {**outputs, "head": outputs["head"].clone()}
    changed["head"][1] = torch.tensor([0.4, 0.4, 0.6, 0.6])  # the box-less image's box output
    assert torch.allclose(task.loss(changed, targets), task.loss(outputs, targets))
    metrics = task.metrics("val")
    assert set(metrics) == {"species/acc", "head/iou", "head/iou50"}
    assert metrics["head/iou"](outputs, targets).item() == pytest.approx(0.75)  # called directly too
    metrics["head/iou"].update(changed, targets)
    assert metrics["head/iou"].compute().item() == pytest.approx(0.75)  # the box-less image counts nowhere


def test_a_joint_task_whose_target_the_dataset_lacks_is_named(tmp_path: Path):
    (tmp_path / "bus").mkdir()
    with pytest.raises(PetlabError, match=r"the box task of task\.tasks \(it reads box\): it needs the release's head "
                                          r"boxes.* or leave box out of task\.tasks"):  # fmt: skip
        PetDataModule(tmp_path, targets=targets_named(["species", "box"]), layout="folder").setup()


@pytest.mark.parametrize(
    ("tasks", "options", "weights", "message"),
    [
        (["species"], {}, None, r"task\.tasks=\['species'\] must name two or more different tasks"),
        (["species", "species"], {}, None, r"two or more different tasks"),
        (["species", "tail"], {}, None, r"task\.tasks names tail, and there is no task/tail\.yaml"),
        (["species", "head_box"], {}, [1.0], r"task\.weights has 1 values for 2 tasks"),
        (["species", "head_box"], {"breed": {}}, None, r"task\.options names breed"),
        (
            ["species", "head_box"],
            {"head_box": {"target": "trimap"}},
            None,
            r"task\.options\.head_box\.target=trimap: task=head_box reads head boxes",
        ),
        (["species", "head_box"], {"head_box": {"hidden": 0}}, None, r"task\.options\.head_box\.hidden=0"),
        (
            ["species", "head_box"],
            {"head_box": {"colour": 1}},
            None,
            r"task=head_box has no setting task\.options\.head_box\.colour: its settings are target",
        ),
    ],
)
def test_wrong_joint_settings_are_one_clear_line(tasks: list, options: dict, weights: list | None, message: str):
    with pytest.raises(PetlabError, match=message):
        Joint("joint", tasks, task_configs(tasks, options), weights=weights, options=options)


def test_a_wrong_task_name_on_the_command_line_is_one_line_and_exit_2(sample_root: Path, tmp_path: Path):
    result = petlab("petlab", "task=joint", "task.tasks=[species,tail]", "data=sample", f"data.root={sample_root}",
                    cwd=tmp_path)  # fmt: skip
    output = result.stdout + result.stderr  # the training log goes to stdout, as the run's other lines
    assert result.returncode == 2 and "no task/tail.yaml" in output and "Traceback" not in output


def test_predict_gives_every_heads_answer_for_each_image(joint_run: Path, sample_root: Path, tmp_path: Path):
    checkpoint = json.loads((joint_run / "metrics.json").read_text())["best_checkpoint"]
    images = [sample_root / "images" / "Bengal_1.jpg", sample_root / "images" / "beagle_2.jpg"]
    result = petlab("petlab.predict", f"ckpt_path={checkpoint}", f"images=[{images[0]},{images[1]}]",
                    "output=json", f"output_dir={tmp_path / 'out'}", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    answers = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(answers) == 2
    for answer in answers:
        assert set(answer) == {"image", "species", "breed", "segmentation", "head_box"}
        assert answer["species"]["top"][0]["class"] in ("cat", "dog") and len(answer["head_box"]["box"]) == 4
        assert Path(answer["segmentation"]["mask"]).is_file() and Path(answer["head_box"]["drawn"]).is_file()
    table = petlab("petlab.predict", f"ckpt_path={checkpoint}", f"images=[{images[0]}]",
                   f"output_dir={tmp_path / 'table'}", cwd=tmp_path)  # fmt: skip
    assert table.returncode == 0 and "species: prediction" in table.stdout and "head_box: head box" in table.stdout


@pytest.mark.parametrize("file_format", ["torchscript", "onnx"])
def test_an_exported_joint_model_gives_one_named_output_per_task(joint_run: Path, tmp_path: Path, file_format: str):
    _, actual, expected, sidecar = exported_outputs(joint_run, file_format, tmp_path)
    assert sidecar["output_names"] == ["species_logits", "breed_logits", "segmentation_logits", "head_box_box"]
    assert len(actual) == len(expected) == 4
    for values, wanted in zip(actual, expected, strict=True):
        np.testing.assert_allclose(values, wanted, atol=1e-4)


def test_a_joint_report_lists_which_images_lost_a_target_and_why(sample_root: Path, tmp_path: Path):
    import shutil

    import pandas as pd

    from conftest import tiny_data

    root = tmp_path / "broken"
    shutil.copytree(sample_root, root)
    trimap = root / "annotations" / "trimaps" / "Bengal_1.png"
    trimap.write_bytes(trimap.read_bytes()[:60])  # truncated
    xml = root / "annotations" / "xmls" / "beagle_1.xml"
    text = xml.read_text()
    start, end = text.index("<object>"), text.index("</object>") + len("</object>")
    xml.write_text(text[:end] + text[start:end] + text[end:])  # two head boxes
    module = tiny_data(root, tmp_path, ["species", "trimap", "box"])
    module.report.save(tmp_path / "run")
    listed = pd.read_csv(tmp_path / "run" / "data_skipped.csv").set_index("name")
    assert (
        listed.loc["Bengal_1", "kept"]
        and "kept without trimaps for the trimap task: trimap cannot be read" in (listed.loc["Bengal_1", "problem"])
    )
    assert "kept without head boxes for the box task: 2 head boxes" in listed.loc["beagle_1", "problem"]
    report = (tmp_path / "run" / "data_report.md").read_text()
    assert "## Images kept without one of their targets" in report and "beagle_1" in report


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("task.tasks=species", "task.tasks=species must be a list of two or more tasks"),
        ("task.weights=abc", "task.weights=abc must be a list of numbers, one per task of task.tasks (4)"),
        ("task.options=abc", "task.options=abc must give each task of task.tasks its keys"),
        ("+task.options.head_box.nosuchkey=1", "task=head_box has no setting task.options.head_box.nosuchkey: its "
         "settings are target, hidden"),
    ],
)  # fmt: skip
def test_a_plain_value_where_a_list_or_mapping_is_expected_names_the_option(
    sample_root: Path, tmp_path: Path, override: str, message: str
):
    from conftest import compose_config
    from petlab.cli import user_error
    from petlab.tasks.base import build_task

    with pytest.raises(Exception) as caught:  # composing resolves task.configs, building checks the rest
        build_task(compose_config(sample_root, tmp_path / "run", ["task=joint", override]).task)
    assert message in str(user_error(caught.value))
