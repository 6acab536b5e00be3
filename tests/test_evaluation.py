"""Test-set evaluation, interpretation files, TensorBoard HParams, evaluate, predict and export."""

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torchvision import models

from petlab.checkpoint import load_checkpoint
from petlab.cli import user_error
from petlab.data.labels import ALL_BREEDS
from petlab.data.sample import generate_sample
from petlab.errors import PetlabError
from petlab.export import export
from petlab.train import train


def best_checkpoint(run: Path) -> Path:
    return Path(json.loads((run / "metrics.json").read_text())["best_checkpoint"])


def petlab(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PETLAB_ROOT": str(cwd)}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip


def test_a_run_writes_metrics_and_interpretation_files(trained_run: Path):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert {"val/acc", "val/acc_best", "test/acc", "test/f1_macro", "best_epoch", "seconds"} <= set(metrics)
    assert not [key for key in metrics if key.startswith("lr-")]
    per_class = pd.read_csv(trained_run / "per_class.csv")
    assert len(per_class) == 37 and set(per_class.columns) >= {"class", "support", "accuracy", "f1"}
    assert per_class["support"].sum() == 37 * 3  # the official test split: 3 of 6 images per breed
    confusion = pd.read_csv(trained_run / "confusion_matrix.csv", index_col=0)
    assert confusion.shape == (37, 37) and int(np.trace(confusion)) == round(metrics["test/acc"] * 111)
    most_confused = pd.read_csv(trained_run / "most_confused.csv")
    assert (most_confused["true"] != most_confused["predicted"]).all()
    assert most_confused["count"].is_monotonic_decreasing
    for figure in ("confusion_matrix", "top_losses", "sample_predictions", "learning_curves"):
        assert (trained_run / f"{figure}.png").stat().st_size > 5000, figure


def test_tensorboard_has_the_figures_and_an_hparams_session_with_metrics(trained_run: Path):
    events = EventAccumulator(str(trained_run / "tensorboard"), size_guidance={"images": 0, "tensors": 0}).Reload()
    images = set(events.Tags()["images"])
    assert {"evaluation/confusion_matrix", "evaluation/top_losses", "evaluation/learning_curves"} <= images
    assert "test/acc_per_class/Bengal" in set(events.Tags()["scalars"])
    session = EventAccumulator(str(trained_run / "tensorboard" / "hparams"), size_guidance={"tensors": 0}).Reload()
    assert {"hp/val/acc_best", "hp/test/acc", "hp/test/f1_macro", "hp/test/loss"} == set(session.Tags()["scalars"])
    plugin = session.PluginTagToContent("hparams")
    # No experiment summary: TensorBoard would take one run's columns for every run.
    assert "_hparams_/session_start_info" in plugin and "_hparams_/experiment" not in plugin
    started = plugin["_hparams_/session_start_info"].decode(errors="ignore")
    # What a person compares, under the headline names and flattened; not every path and _target_.
    assert all(name in started for name in ("Task", "Backbone", "LR", "Seed", "Run", "data.image_size",
                                            "trainer.max_epochs", "data.augment.hflip"))  # fmt: skip
    assert "paths." not in started and "_target_" not in started and "cache_dir" not in started
    assert "{" not in started  # no setting printed as a dict


def test_evaluate_reproduces_the_test_metrics_in_a_new_directory(trained_run: Path, tmp_path: Path):
    checkpoint = best_checkpoint(trained_run)
    before = sorted(p.name for p in trained_run.iterdir())
    result = petlab("petlab.evaluate", f"ckpt_path={checkpoint}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (evaluation,) = (tmp_path / "outputs" / "evaluations").iterdir()
    metrics = json.loads((evaluation / "metrics.json").read_text())
    trained = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["test/acc"] == pytest.approx(trained["test/acc"], abs=1e-6)
    assert (evaluation / "confusion_matrix.png").is_file() and (evaluation / "per_class.csv").is_file()
    assert sorted(p.name for p in trained_run.iterdir()) == before


def test_evaluate_refuses_a_dataset_with_other_classes(trained_run: Path, tmp_path: Path):
    source = generate_sample(tmp_path / "pets", per_breed=4, size=32)
    for animal in ("Bengal", "pug"):
        (tmp_path / "other" / animal).mkdir(parents=True)
        for path in (source / "images").glob(f"{animal}_*.jpg"):
            (tmp_path / "other" / animal / path.name).write_bytes(path.read_bytes())
    result = petlab("petlab.evaluate", f"ckpt_path={best_checkpoint(trained_run)}", "data=folder",
                    f"data.root={tmp_path / 'other'}", "data.split=random", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2
    assert "differ from the model's" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_predict_prints_json_lines_and_skips_what_is_not_an_image(trained_run: Path, sample_root: Path, tmp_path):
    folder = tmp_path / "new"
    folder.mkdir()
    for name in ("Bengal_1.jpg", "pug_2.jpg"):
        (folder / name).write_bytes((sample_root / "images" / name).read_bytes())
    (folder / "readme.txt").write_text("not an image")
    extra = sample_root / "images" / "Persian_3.jpg"
    result = petlab("petlab.predict", f"ckpt_path={best_checkpoint(trained_run)}", f"images=[{folder},{extra}]",
                    "output=json", "top_k=2", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(line["image"]).name for line in lines] == ["Bengal_1.jpg", "pug_2.jpg", "readme.txt",
                                                            "Persian_3.jpg"]  # fmt: skip
    assert "error" in lines[2] and "readme.txt" in result.stderr
    classes = set(load_checkpoint(best_checkpoint(trained_run)).class_names)
    for line in lines[:2] + lines[3:]:
        assert len(line["top"]) == 2 and {t["class"] for t in line["top"]} <= classes
        assert line["top"][0]["probability"] >= line["top"][1]["probability"]
    table = petlab("petlab.predict", f"ckpt_path={best_checkpoint(trained_run)}", f"images={extra}", cwd=tmp_path)
    assert table.returncode == 0 and "Persian_3" in table.stdout
    assert not (tmp_path / "outputs").exists()  # prediction writes nothing


@pytest.mark.parametrize("file_format", ["torchscript", "onnx"])
def test_an_exported_model_gives_the_checkpoints_outputs(trained_run: Path, tmp_path: Path, file_format: str):
    checkpoint = load_checkpoint(best_checkpoint(trained_run))
    output = export(checkpoint, file_format, tmp_path / f"model.{file_format}")
    images = torch.rand(3, 3, checkpoint.image_size, checkpoint.image_size)
    with torch.no_grad():
        expected = checkpoint.model(images).numpy()  # the module normalises [0, 1] images itself
    if file_format == "torchscript":
        exported = torch.jit.load(str(output))(images).detach().numpy()
    else:
        import onnxruntime

        exported = onnxruntime.InferenceSession(str(output)).run(None, {"images": images.numpy()})[0]
    np.testing.assert_allclose(exported, expected, atol=1e-4)
    spec = json.loads(output.with_suffix(output.suffix + ".json").read_text())
    assert spec["class_names"] == checkpoint.class_names and spec["image_size"] == 32


def test_export_never_overwrites(trained_run: Path, tmp_path: Path):
    target = tmp_path / "model.pt"
    target.write_text("keep me")
    result = petlab("petlab.export", f"ckpt_path={best_checkpoint(trained_run)}", f"output={target}", cwd=tmp_path)
    assert result.returncode == 2 and "already exists" in result.stderr and target.read_text() == "keep me"


@pytest.mark.slow
def test_what_a_killed_export_left_never_blocks_or_passes_for_a_result(trained_run: Path, tmp_path: Path):
    import socket

    host = socket.gethostname().replace(".", "-")
    exports = tmp_path / "export"
    exports.mkdir()
    # A torchscript export killed while writing (a dead process's partial file), and a space folder left empty
    # by an earlier petlab killed at its start.
    (exports / f".model.pt.{host}.999999999.partial").write_bytes(b"half a model")
    (exports / "space").mkdir()
    checkpoint = f"ckpt_path={best_checkpoint(trained_run)}"
    done = petlab("petlab.export", checkpoint, "format=torchscript", f"output={exports / 'model.pt'}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert torch.jit.load(exports / "model.pt") is not None and json.loads((exports / "model.pt.json").read_text())
    assert not list(exports.glob(".*.partial"))
    done = petlab("petlab.export", checkpoint, "format=space", f"output={exports / 'space'}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert {"model.onnx", "model.onnx.json", "app.py", "README.md"} <= {
        path.name for path in (exports / "space").iterdir()
    }
    assert not list(exports.glob(".*.partial"))
    again = petlab("petlab.export", checkpoint, "format=space", f"output={exports / 'space'}", cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr  # a whole export is never overwritten


def test_checkpoints_tell_predict_the_evaluation_crop_also_those_of_the_first_release(trained_run, tmp_path):
    current = load_checkpoint(best_checkpoint(trained_run))
    content = torch.load(best_checkpoint(trained_run), weights_only=True)
    content["petlab"]["data"]["cache_margin"] = content["petlab"]["data"].pop("crop_margin")  # its old name
    torch.save(content, tmp_path / "first_release.ckpt")
    assert load_checkpoint(tmp_path / "first_release.ckpt").side == current.side == round(32 * 1.15)


def test_files_that_are_not_petlab_checkpoints_are_refused(tmp_path: Path):
    (tmp_path / "garbage.ckpt").write_bytes(b"\\x80\\x04not really")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.ckpt")
    with pytest.raises(PetlabError, match="not a loadable petlab checkpoint"):
        load_checkpoint(tmp_path / "garbage.ckpt")
    with pytest.raises(PetlabError, match="not a petlab checkpoint"):
        load_checkpoint(tmp_path / "plain.ckpt")
    with pytest.raises(PetlabError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.ckpt")


def test_predict_on_nothing_but_non_images_is_an_error(trained_run: Path, tmp_path: Path):
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    result = petlab("petlab.predict", f"ckpt_path={best_checkpoint(trained_run)}", f"images=[{tmp_path}]", cwd=tmp_path)
    assert result.returncode == 2 and "none of the 2 files" in result.stderr and "Traceback" not in result.stderr


def first_release_checkpoint(
    path: Path, arch: str, class_names: list[str], image_size: int, root: Path
) -> torch.nn.Module:
    """Write a checkpoint as petlab's first release did (one PetClassifier: flat hyperparameters, the whole
    network under ``net.``, format 1) and return that network, built here as the first release built it."""
    if arch == "cnn":
        widths, side, nn = (3, 64, 128, 256, 512), image_size // 16, torch.nn
        blocks = [nn.Sequential(nn.Conv2d(a, b, 3, 1, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(), nn.MaxPool2d(2))
                  for a, b in itertools.pairwise(widths)]  # fmt: skip
        network = nn.Sequential(*blocks, nn.Flatten(), nn.Linear(512 * side * side, 512), nn.ReLU(), nn.Dropout(0.5),
                                nn.Linear(512, len(class_names)))  # fmt: skip
    else:
        network = models.get_model(arch, weights=None)
        network.fc = torch.nn.Sequential(torch.nn.Linear(network.fc.in_features, 512), torch.nn.ReLU(),
                                         torch.nn.Dropout(0.5), torch.nn.Linear(512, len(class_names)))  # fmt: skip
    for parameter in network.parameters():  # away from the initialisation, so a wrong mapping shows
        parameter.data.normal_(0, 0.05)
    hparams = {"arch": arch, "task": "breed", "class_names": class_names, "image_size": image_size,
               "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "pretrained": False, "weights_path": None,
               "hidden": 512, "dropout": 0.5, "label_smoothing": 0.0, "freeze_epochs": 0,
               "backbone_lr_factor": 1.0, "channels_last": "auto", "compile": False}  # fmt: skip
    state = {f"net.{key}": value for key, value in network.state_dict().items()}
    state |= {"val_acc_best": torch.tensor(0.75), "best_epoch_buffer": torch.tensor(3)}
    data = {
        "_target_": "petlab.data.PetDataModule",
        "root": str(root),
        "task": "breed",
        "image_size": image_size,
        "batch_size": 8,
        "num_workers": 0,
        "split": "official",
        "seed": 0,
        "cache_margin": 0.15,
        "cache": False,
    }
    torch.save({"state_dict": state, "hyper_parameters": hparams, "epoch": 4,
                "petlab": {"format": 1, "data": data}}, path)  # fmt: skip
    return network.eval()


@pytest.mark.parametrize("arch", ["cnn", "resnet34"])
def test_first_release_checkpoints_evaluate_predict_export_and_refuse_to_resume(make_cfg, sample_root: Path,
                                                                                tmp_path: Path, arch: str):  # fmt: skip
    path = tmp_path / f"{arch}.ckpt"
    breeds = sorted(ALL_BREEDS)
    network = first_release_checkpoint(path, arch, breeds, image_size=32, root=sample_root)
    checkpoint = load_checkpoint(path)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = network((images / 255 - mean) / std)
        np.testing.assert_allclose(checkpoint.model(images).numpy(), expected.numpy(), atol=1e-5)
    assert checkpoint.class_names == breeds and checkpoint.task.name == "breed"
    assert checkpoint.model.best_epoch == 3 and checkpoint.side == round(32 * 1.15)
    exported = export(checkpoint, "torchscript", tmp_path / "model.pt")
    with torch.no_grad():
        np.testing.assert_allclose(torch.jit.load(str(exported))(images / 255).numpy(), expected.numpy(), atol=1e-4)
    with pytest.raises(Exception) as raised:
        train(make_cfg(["task=breed", f"model={arch}", f"ckpt_path={path}"]))
    message = str(user_error(raised.value))
    assert "written by an earlier petlab" in message and "not resumed" in message and "\n" not in message
    content = torch.load(path, weights_only=True)
    content["petlab"]["format"] = 99
    torch.save(content, tmp_path / "future.ckpt")
    with pytest.raises(PetlabError, match=r"written by a newer petlab \(checkpoint format 99"):
        load_checkpoint(tmp_path / "future.ckpt")
    if arch == "cnn":  # evaluate on the data config it carries, as written by the first release
        evaluated = petlab("petlab.evaluate", f"ckpt_path={path}", cwd=tmp_path)
        assert evaluated.returncode == 0, evaluated.stderr[-2000:]
        (metrics,) = (tmp_path / "outputs" / "evaluations").glob("*/metrics.json")
        assert json.loads(metrics.read_text())["images"] > 0


def as_format_2(spec: dict) -> dict:
    """A format-3 task spec as petlab wrote it before tasks and targets were named by class (format 2)."""
    kind = {"Classification": "classification", "Segmentation": "segmentation", "HeadBox": "head",
            "Joint": "joint"}[spec["class"].rsplit(".", 1)[1]]  # fmt: skip
    old = {"kind": kind, **{key: value for key, value in spec.items() if key not in ("class", "target", "configs")}}
    if kind == "joint":
        heads = [{"head_box": "head"}.get(name, name) for name in old.pop("tasks")]
        configs = {{"head_box": "head"}.get(name, name): config for name, config in spec["configs"].items()}
        old["heads"] = heads
        old["options"] = {head: {k: v for k, v in as_format_2(config).items() if k not in ("kind", "name", "monitor",
                                                                                            "mode")}
                          for head, config in configs.items()}  # fmt: skip
        return old
    old["target"] = spec["target"]["name"]
    if kind == "classification":
        old["class_names"] = spec["target"]["classes"]
    return old


@pytest.mark.parametrize("run", ["trained_run", "joint_run"])
def test_checkpoints_of_the_previous_format_load_and_answer_as_before(request, run: str, tmp_path: Path):
    run_dir = request.getfixturevalue(run)
    path = Path(best_checkpoint(run_dir))
    content = torch.load(path, weights_only=False)
    content["petlab"]["format"] = 2
    content["hyper_parameters"]["task"] = as_format_2(content["hyper_parameters"]["task"])
    content["state_dict"] = {key.replace("head.tasks.head_box.", "head.heads.head.").replace("head.tasks.",
                                                                                             "head.heads."): value
                             for key, value in content["state_dict"].items()}  # fmt: skip
    torch.save(content, tmp_path / "format2.ckpt")
    old, new = load_checkpoint(tmp_path / "format2.ckpt"), load_checkpoint(path)
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        before, after = old.model(images), new.model(images)
    before = before if isinstance(before, dict) else {"": before}
    after = after if isinstance(after, dict) else {"": after}
    assert [name.replace("head", "head_box") if name == "head" else name for name in before] == list(after)
    for value, wanted in zip(before.values(), after.values(), strict=True):
        assert torch.allclose(value, wanted)
    assert old.class_names == new.class_names
