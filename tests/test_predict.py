"""petlab.predict at scale: several processes, DataLoader workers, an answer file streamed in parts and
merged in input order, resuming after a kill, picture names in linear time, and its bad inputs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import run_module
from petlab.answer_log import parts_dir, picture_stems
from petlab.devices import check_devices
from petlab.errors import PetlabError


def checkpoint_of(run: Path) -> str:
    return json.loads((run / "metrics.json").read_text())["best_checkpoint"]


@pytest.fixture(scope="module")
def photos(sample_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny sample's 222 images in two folders (the same names in both) and a file that is not an image."""
    folder = tmp_path_factory.mktemp("photos")
    images = sorted((sample_root / "images").glob("*.jpg"))
    for half, part in (("a", images[::2]), ("b", images[1::2])):
        (folder / half).mkdir()
        for image in part:
            shutil.copy(image, folder / half / image.name)
    shutil.copy(images[0], folder / "b" / images[0].name)  # the same name in both folders
    (folder / "a" / "notes.txt").write_text("not an image")
    return folder


def predict(checkpoint: str, images: Path, *options: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_module("petlab.predict", f"ckpt_path={checkpoint}", f"images={images}", *options, cwd=cwd)


@pytest.mark.slow
def test_one_and_two_processes_with_workers_and_without_give_identical_answer_files(
    trained_run: Path, photos: Path, tmp_path: Path
):
    checkpoint = checkpoint_of(trained_run)
    one = predict(checkpoint, photos, f"output_file={tmp_path / 'one.jsonl'}", "num_workers=0", "batch_size=4",
                  cwd=tmp_path)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    two = predict(checkpoint, photos, f"output_file={tmp_path / 'two.jsonl'}", "num_workers=1", "batch_size=4",
                  "accelerator=cpu", "devices=2", cwd=tmp_path)  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    answers = (tmp_path / "one.jsonl").read_text()
    assert answers == (tmp_path / "two.jsonl").read_text()
    lines = [json.loads(line) for line in answers.splitlines()]
    expected = sorted(str(path) for path in photos.rglob("*") if path.is_file())
    assert [line["image"] for line in lines] == expected  # every file once, in the input's order
    assert [line["error"] for line in lines if "error" in line] == ["not a readable image: skipped"]
    assert "notes.txt: not a readable image" in one.stderr and "Answers for 224 images" in one.stderr
    assert not parts_dir(tmp_path / "one.jsonl").exists() and not parts_dir(tmp_path / "two.jsonl").exists()
    table = predict(checkpoint, photos, f"output_file={tmp_path / 'one.csv'}", "top_k=2", cwd=tmp_path)
    assert table.returncode == 0, table.stderr[-3000:]
    rows = pd.read_csv(tmp_path / "one.csv", keep_default_na=False)
    assert list(rows.columns) == ["image", "top/0/class", "top/0/probability", "top/1/class", "top/1/probability",
                                  "error"]  # fmt: skip
    assert list(rows["image"]) == expected
    assert list(rows["top/0/class"]) == [line["top"][0]["class"] if "top" in line else "" for line in lines]


@pytest.mark.slow
def test_a_run_killed_mid_way_resumes_and_answers_every_image_exactly_once(
    segmentation_run: Path, photos: Path, tmp_path: Path
):
    checkpoint, answers = checkpoint_of(segmentation_run), tmp_path / "answers.jsonl"
    command = [sys.executable, "-m", "petlab.predict", f"ckpt_path={checkpoint}", f"images={photos}",
               f"output_file={answers}", "batch_size=2", "num_workers=0"]  # fmt: skip
    started = subprocess.Popen(command, cwd=tmp_path, env={**os.environ, "PETLAB_ROOT": str(tmp_path)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and started.poll() is None:
        parts = list(parts_dir(answers).glob("*.jsonl"))
        if parts and sum(1 for _ in parts[0].open()) >= 6:
            break
        time.sleep(0.01)
    started.send_signal(signal.SIGKILL)
    started.wait()
    assert not answers.exists(), "the run ended before it was killed: give it more images"
    answered_before = sum(1 for part in parts_dir(answers).glob("*.jsonl") for _ in part.open())
    assert 6 <= answered_before < 224
    refused = run_module(*command[2:], cwd=tmp_path)
    assert refused.returncode == 2 and "resume=true" in refused.stderr and "Traceback" not in refused.stderr
    resumed = run_module(*command[2:], "resume=true", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    images = [json.loads(line)["image"] for line in answers.read_text().splitlines()]
    assert images == sorted(str(path) for path in photos.rglob("*") if path.is_file())  # each once, in order
    pictures = sorted(path.name for path in (tmp_path / "answers-pictures").iterdir())
    assert len(pictures) == 2 * 223 and not [name for name in pictures if name.endswith(".partial")]
    straight = run_module(*command[2:-3], f"output_file={tmp_path / 'straight.jsonl'}", cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr[-3000:]
    same_answers = [{k: v for k, v in json.loads(line).items() if k not in ("mask", "overlay")}
                    for line in (tmp_path / "straight.jsonl").read_text().splitlines()]  # fmt: skip
    assert same_answers == [{k: v for k, v in json.loads(line).items() if k not in ("mask", "overlay")}
                            for line in answers.read_text().splitlines()]  # fmt: skip
    finished = answers.read_bytes()
    again = run_module(*command[2:], "resume=true", cwd=tmp_path)
    assert again.returncode == 0 and answers.read_bytes() == finished  # nothing left to answer, nothing lost


def test_picture_names_take_linear_time_whatever_the_folder_holds(tmp_path: Path):
    # 200,000 photos all called cat.jpg, beside 100,000 pictures of an earlier run: searching the names from
    # cat_2 for each photo, or listing the folder per photo, would take hours; this takes about a second.
    files = [Path(f"folder{number}") / "cat.jpg" for number in range(200_000)]
    existing = [f"cat_{number}_mask.png" for number in range(1, 100_001)]
    started = time.process_time()
    stems = picture_stems(files, set(), {"cat_100001"}, existing)
    assert len(set(stems.values())) == len(files) and stems[0] == "cat_100002"
    assert stems[199_999] == "cat_300001"
    assert time.process_time() - started < 60  # quadratic: about 2 * 10^10 steps


def test_devices_and_outputs_that_cannot_work_are_refused_in_one_line(trained_run: Path, photos: Path, tmp_path):
    with pytest.raises(PetlabError, match=r"accelerator=gpu but torch sees no GPU .* use accelerator=cpu or auto"):
        check_devices("gpu", 1, gpus=0, cores=2)
    with pytest.raises(PetlabError, match=r"devices=3 but this machine has 2 CPU cores: use devices=2 or fewer"):
        check_devices("cpu", 3, gpus=0, cores=2)
    with pytest.raises(PetlabError, match=r"devices=4 but this machine has 2 GPU\(s\)"):
        check_devices("auto", 4, gpus=2, cores=16)
    with pytest.raises(PetlabError, match=r"unknown accelerator=tpu"):
        check_devices("tpu", 1)
    assert check_devices("auto", 2, gpus=2, cores=2) == "cuda" and check_devices("auto", 2, gpus=0, cores=2) == "cpu"
    checkpoint = checkpoint_of(trained_run)
    existing = tmp_path / "answers.jsonl"
    existing.write_text("{}\n")
    for options, message in [
        (["accelerator=gpu"], "accelerator=gpu but torch sees no GPU"),
        (["accelerator=cpu", "devices=64"], "devices=64 but this machine has"),
        ([f"output_file={existing}"], "exists (or an interrupted run's answers for it): continue it with resume=true"),
        (["resume=true"], "resume=true continues a run that wrote an output_file"),
        ([f"output_file={tmp_path / 'answers.txt'}"], "is not .jsonl or .csv"),
        (["accelerator=cpu", "devices=2"], "several processes writes one file: give output_file="),
    ]:
        result = predict(checkpoint, photos, *options, cwd=tmp_path)
        assert result.returncode == 2 and message in result.stderr, (options, result.stderr[-2000:])
        assert "Traceback" not in result.stderr and existing.read_text() == "{}\n"


def test_evaluate_refuses_devices_it_cannot_use(trained_run: Path, tmp_path: Path):
    for options, message in [(["accelerator=gpu"], "accelerator=gpu but torch sees no GPU"),
                             (["accelerator=cpu", "devices=2"], "petlab.evaluate runs on one device")]:  # fmt: skip
        result = run_module("petlab.evaluate", f"ckpt_path={checkpoint_of(trained_run)}", *options, cwd=tmp_path)
        said = result.stdout + result.stderr  # evaluate logs its one line
        assert result.returncode == 2 and message in said and "Traceback" not in said
    assert not (tmp_path / "outputs" / "evaluations").exists() or not any(
        (tmp_path / "outputs" / "evaluations").iterdir()
    )
