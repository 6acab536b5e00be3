"""A task of one's own, outside petlab: ``examples/pet_share`` (a new kind of target, the share of the photo
that is the pet, and its regression task) trains alone and as a joint task with species, evaluates,
predicts, answers on the page and in an exported page, and resumes, with no edit to petlab."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import compose_config, synthetic_pets
from petlab.checkpoint import load_checkpoint
from petlab.errors import PetlabError, user_error
from petlab.tasks.base import build_task

CHECKOUT = Path(__file__).resolve().parents[1]
EXAMPLE = CHECKOUT / "examples" / "pet_share"
EPOCHS = 10
SIZE = 40


def draw_disc(root: Path, name: str, rng: np.random.Generator) -> None:
    """A pet that is a disc of random size (red for a cat, blue for a dog) on a noisy background, and its
    trimap: the share of the photo that is the pet is anywhere from 3% to 50%."""
    radius = rng.uniform(4, 16)
    centre = rng.uniform(radius + 1, SIZE - radius - 1, size=2)
    rows, columns = np.mgrid[:SIZE, :SIZE]
    distance = np.hypot(rows - centre[0], columns - centre[1])
    trimap = np.where(distance <= radius - 1, 1, np.where(distance <= radius, 3, 2)).astype(np.uint8)
    pixels = rng.integers(60, 200, size=(SIZE, SIZE, 3)).astype(np.uint8)
    pixels[trimap != 2] = (220, 40, 40) if name[0].isupper() else (40, 40, 220)
    Image.fromarray(pixels).save(root / "images" / f"{name}.jpg", quality=95)
    (root / "annotations" / "trimaps").mkdir(parents=True, exist_ok=True)
    Image.fromarray(trimap, mode="L").save(root / "annotations" / "trimaps" / f"{name}.png")


@pytest.fixture(scope="module")
def discs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 photos of a planted signal: how much of each is the pet is plain to see, and varies widely."""
    return synthetic_pets(tmp_path_factory.mktemp("discs") / "pets", 120, draw_disc, trainval_share=0.8)


def petlab(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m module args`` with the example's package importable, as after ``pip install -e``."""
    path = os.pathsep.join(filter(None, [str(EXAMPLE), os.environ.get("PYTHONPATH")]))
    environment = {**os.environ, "PETLAB_ROOT": str(cwd), "PYTHONPATH": path}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                          env=environment, timeout=600)  # fmt: skip


def settings(root: Path, search: str = "--config-dir") -> list[str]:
    """A run on ``root`` with the example's configs found by ``--config-dir`` or ``hydra.searchpath``."""
    found = ["--config-dir", str(EXAMPLE / "conf")] if search == "--config-dir" else [
        f"hydra.searchpath=[file://{EXAMPLE / 'conf'}]"]  # fmt: skip
    return [*found, "experiment=pet_share", "data=sample", f"data.root={root}",
            "data.image_size=32", "data.batch_size=16", "data.num_workers=0", "model=cnn", "model.pool=avg",
            "trainer.accelerator=cpu", "callbacks.progress_bar=null", "callbacks.model_summary=null",
            "callbacks.early_stopping=null", "optimizer.lr=3e-3"]  # fmt: skip


def composed(root: Path, run_dir: Path, *overrides: str) -> Any:
    """The run's config as ``--config-dir examples/pet_share/conf`` composes it, for runs in this process."""
    return compose_config(root, run_dir, [f"hydra.searchpath=[file://{EXAMPLE / 'conf'}]", "experiment=pet_share",
                                          "model=cnn", "model.pool=avg", "callbacks.early_stopping=null",
                                          "optimizer.lr=3e-3", *overrides])  # fmt: skip


def trained(root: Path, run_dir: Path, *overrides: str, search: str = "--config-dir") -> dict[str, Any]:
    result = petlab("petlab", *settings(root, search), f"hydra.run.dir={run_dir}", *overrides, cwd=run_dir.parent)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def share_run(discs_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("own") / "share"
    trained(discs_root, run_dir, "task=pet_share", f"trainer.max_epochs={EPOCHS}")
    return run_dir


@pytest.fixture(scope="module")
def shares(discs_root: Path) -> pd.Series:
    """The true share of every photo, by name, as the example's target computes it."""
    sys.path.insert(0, str(EXAMPLE))
    try:
        from pet_share.target import PetShare

        from petlab.data.index import build_index

        index = build_index(discs_root)
        frame = index[index["readable"]]
        found = PetShare().annotate(discs_root, "pets", frame)
    finally:
        sys.path.remove(str(EXAMPLE))
    return pd.Series(pd.to_numeric(found["value"]).to_numpy(), index=frame["name"].to_numpy())


def test_petlab_names_nothing_of_the_example():
    for path in (CHECKOUT / "src" / "petlab").rglob("*"):
        if path.is_file() and path.suffix in (".py", ".yaml", ".md", ".txt"):
            text = path.read_text()
            assert "pet_share" not in text and "PetShare" not in text, path


def test_the_task_learns_the_share_and_keeps_the_checkpoint_of_least_error(share_run: Path, shares: pd.Series):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    metrics = json.loads((share_run / "metrics.json").read_text())
    assert metrics["monitor"] == "val/mae" and metrics["monitor_mode"] == "min"
    assert metrics["directions"]["val/mae"] == "min" and metrics["directions"]["val/within5"] == "max"
    guess = (shares - shares.mean()).abs().mean()  # the error of always answering the mean share
    assert metrics["val/mae_best"] < 0.4 * guess and metrics["test/mae"] < 0.4 * guess, (metrics, guess)
    events = EventAccumulator(str(share_run / "tensorboard")).Reload()
    errors = [event.value for event in events.Scalars("val/mae")]
    assert len(errors) == EPOCHS and metrics["best_epoch"] == errors.index(min(errors))  # the least, not the most
    assert Path(metrics["best_checkpoint"]).name == f"epoch_{metrics['best_epoch']:03d}.ckpt"
    per_image = pd.read_csv(share_run / "per_image.csv")
    assert len(per_image) > 0 and (share_run / "shares.png").is_file() and (share_run / "learning_curves.png").is_file()


def test_it_trains_as_a_joint_task_with_species(discs_root: Path, shares: pd.Series, tmp_path: Path):
    # hydra.searchpath, the other way to add a config folder; the share's loss is small beside
    # cross-entropy's: weighed up, both tasks learn in the same epochs.
    metrics = trained(discs_root, tmp_path / "joint", "task=joint", "task.tasks=[species,pet_share]",
                      "task.weights=[1,10]", f"trainer.max_epochs={EPOCHS}", search="hydra.searchpath")  # fmt: skip
    guess = (shares - shares.mean()).abs().mean()
    assert metrics["test/pet_share/mae"] < 0.4 * guess and metrics["test/species/acc"] > 0.9, metrics
    assert metrics["directions"]["val/pet_share/mae"] == "min"
    assert (tmp_path / "joint" / "pet_share" / "per_image.csv").is_file()


def test_a_checkpoint_of_it_loads_only_with_the_package_named(share_run: Path, tmp_path: Path):
    checkpoint = json.loads((share_run / "metrics.json").read_text())["best_checkpoint"]
    with pytest.raises(PetlabError, match=r"pet_share\.task\.PetShareRegression, from the package pet_share, .* "
                                          r"add plugins=\[pet_share\]"):  # fmt: skip
        load_checkpoint(checkpoint)  # nothing of the package is imported unless named
    evaluated = petlab("petlab.evaluate", f"ckpt_path={checkpoint}", "plugins=[pet_share]", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    (output,) = (tmp_path / "outputs" / "evaluations").iterdir()
    trained_metrics = json.loads((share_run / "metrics.json").read_text())
    assert json.loads((output / "metrics.json").read_text())["test/mae"] == pytest.approx(trained_metrics["test/mae"])


def test_predict_answers_each_photos_share(share_run: Path, discs_root: Path, shares: pd.Series, tmp_path: Path):
    checkpoint = json.loads((share_run / "metrics.json").read_text())["best_checkpoint"]
    names = ["beagle_97", "Bengal_98", "beagle_99", "Bengal_100"]  # test photos
    images = ",".join(str(discs_root / "images" / f"{name}.jpg") for name in names)
    result = petlab("petlab.predict", f"ckpt_path={checkpoint}", "plugins=[pet_share]", f"images=[{images}]",
                    "output=json", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    answers = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    errors = [abs(answer["pet_share"] - shares[name]) for answer, name in zip(answers, names, strict=True)]
    assert len(answers) == 4 and max(errors) < 0.08, errors


def test_the_page_and_an_exported_page_answer_with_its_own_code(share_run: Path, discs_root: Path, tmp_path: Path,
                                                                monkeypatch):  # fmt: skip
    pytest.importorskip("gradio", reason="the page needs the app extra: pip install -e '.[app]'")
    from gradio_client import Client, handle_file

    from petlab.app import answer_images, page_results
    from petlab.checkpoint import load_checkpoint
    from petlab.export import export_space
    from test_app import bounded, serving

    monkeypatch.syspath_prepend(str(EXAMPLE))
    checkpoint = load_checkpoint(json.loads((share_run / "metrics.json").read_text())["best_checkpoint"],
                                 plugins=["pet_share"])  # fmt: skip
    photos = [str(discs_root / "images" / name) for name in ("Bengal_98.jpg", "beagle_99.jpg")]
    expected = answer_images(checkpoint, photos, tmp_path, precision="32-true")

    def answer(paths: list[str]) -> list[dict[str, Any]]:
        return page_results(checkpoint.task.answerer(), answer_images(checkpoint, paths, tmp_path))

    with serving(answer) as url:
        client = bounded(Client, url)
        _, _, table, note = bounded(lambda: client.predict([handle_file(p) for p in photos], api_name="/predict"))
    assert note == "" and [row[1] for row in table["data"]] == [
        f"the pet fills {answer['pet_share']:.0%} of the photo" for answer in expected
    ]
    headers, rows = checkpoint.task.answerer().table(expected)  # petlab.predict's table
    assert headers == ["pet share"] and rows[0] == [f"{expected[0]['pet_share']:.1%}"]
    folder = export_space(checkpoint, tmp_path / "space", photos[:1], top_k=3)
    assert (folder / "pet_share" / "answers.py").is_file() and not (folder / "pet_share" / "task.py").exists()
    assert (folder / "pet_share" / "__init__.py").read_text() == ""  # the package's own would import its task
    monkeypatch.syspath_prepend(str(folder))
    for name in ("app", "page"):  # the folder's modules, not petlab's of the same names
        monkeypatch.delitem(sys.modules, name, raising=False)
    import app

    exported = app.ExportedModel(folder).answer_images(photos, tmp_path / "exported", 3)
    for result, wanted in zip(exported, expected, strict=True):
        assert abs(result["answer"]["pet_share"] - wanted["pet_share"]) < 0.005
        assert result["views"][0]["answer"].startswith("the pet fills")


def test_a_run_of_it_resumes(share_run: Path, tmp_path: Path):
    copy = tmp_path / "share"
    subprocess.run(["cp", "-r", str(share_run), str(copy)], check=True)
    result = petlab("petlab", f"ckpt_path={copy / 'checkpoints' / 'last.ckpt'}", f"trainer.max_epochs={EPOCHS + 1}",
                    cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    metrics = json.loads((copy / "metrics.json").read_text())
    assert metrics["epochs"] == EPOCHS + 1 and metrics["task"] == "pet_share"


def test_the_bench_composes_a_joint_task_with_it_as_training_does(monkeypatch):
    from petlab.bench import training_config

    monkeypatch.syspath_prepend(str(EXAMPLE))
    training = training_config("joint", [EXAMPLE / "conf"], ["task.tasks=[species,pet_share]", "experiment=pet_share"])
    assert sorted(build_task(training.task).targets()) == ["pet_share", "species"]
    assert training.data.crop_margin == 0 and training.data.augment.rotation == 0
    with pytest.raises(PetlabError, match=r"--config-dir /nowhere is not a folder"):
        training_config("pet_share", [Path("/nowhere")])


@pytest.mark.slow
def test_the_bench_measures_its_pipelines_with_the_config_folder_given(discs_root: Path, tmp_path: Path):
    bench = ["--quick", "--model", "cnn", "--workers", "0", "--root", str(discs_root), "--json"]
    own = ["--task", "pet_share", "--config-dir", str(EXAMPLE / "conf")]
    whole = petlab("petlab.bench", *bench, *own, cwd=tmp_path)  # the default crops change the share: refused
    assert whole.returncode == 2 and "data.crop_margin=0" in whole.stderr and "\n" not in whole.stderr.strip()
    result = petlab("petlab.bench", *bench, *own, "experiment=pet_share", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["task"] == "pet_share" and figures["b_warm_img_s"] > 0 and figures["d_end_to_end_fp32_img_s"] > 0
    unfound = petlab("petlab.bench", *bench, "--task", "pet_share", cwd=tmp_path)
    problem = unfound.stderr.strip()
    assert unfound.returncode == 2 and "\n" not in problem and "--config-dir" in problem, problem
    assert "choose one of breed, head_box, joint, segmentation, species" in problem, problem
    wrong = petlab("petlab.bench", *bench, *own, "data.nosuch=1", cwd=tmp_path)
    problem = wrong.stderr.strip()
    assert wrong.returncode == 2 and "'data.nosuch'" in problem and "+data.nosuch=1" in problem, problem
    assert "\n" not in problem, problem


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["task=pet_share", "task.target._target_=pet_share.target.Nothing"],
         r"task=pet_share does not take these settings"),
        (["task=pet_share", "task.hidden=???"], r"task\.hidden is required"),
        (["task=pet_share", "task.monitor=val/acc"],
         r"task\.monitor=val/acc is not a metric of task=pet_share: choose val/mae"),
        (["task=pet_share", "task.mode=max"], r"task\.mode=max, but val/mae is better lower"),
        (["task=pet_share", "data.crop_margin=0.15"], r"pet_share is a value of the whole image"),
    ],
)  # fmt: skip
def test_a_wrong_task_or_target_is_one_line(discs_root: Path, tmp_path: Path, monkeypatch, overrides, message):
    from petlab.train import train

    monkeypatch.syspath_prepend(str(EXAMPLE))
    with pytest.raises(Exception) as raised:
        train(composed(discs_root, tmp_path / "run", *overrides, "trainer.max_epochs=1"))
    problem = str(user_error(raised.value))
    assert re.search(message, problem) and "\n" not in problem, problem


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["task=pet_share", "task._target_=pet_share.nowhere.Task"],
         "error: task._target_=pet_share.nowhere.Task cannot be imported"),
        (["task=joint", "task.tasks=[species,pet_share]", "data.layout=folder"],
         "error: the pet_share task of task.tasks (it reads pet_share): it needs the release's trimaps"),
    ],
)  # fmt: skip
def test_on_the_command_line_it_is_one_line_and_exit_2(tmp_path: Path, overrides: list, message: str):
    (tmp_path / "folder" / "bus").mkdir(parents=True)
    result = petlab("petlab", *settings(tmp_path / "folder"), *overrides, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "Traceback" not in output and message in output, output[-3000:]
    assert not (tmp_path / "outputs" / "runs").is_dir() or not any((tmp_path / "outputs" / "runs").iterdir())
