"""The web page (petlab.app) and the folder petlab.export format=space writes: answers, bad input, a client,
a fresh environment and a real browser."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import run_module as petlab

gradio = pytest.importorskip("gradio", reason="the page needs the app extra: pip install -e '.[app]'")

from petlab.app import answer_images, example_images, page_results  # noqa: E402
from petlab.checkpoint import load_checkpoint  # noqa: E402
from petlab.web.page import build_page, launch, shown  # noqa: E402

TIMEOUT_S = 120  # every server a test starts is stopped by then


def page_answers(checkpoint: Any, paths: list[str], pictures: Path, **options: Any) -> list[dict[str, Any]]:
    """What the page of ``checkpoint`` is given for ``paths``: petlab.predict's answers as the task shows them."""
    return page_results(checkpoint.task.answerer(), answer_images(checkpoint, paths, pictures, **options))


def best_checkpoint(run_dir: Path) -> str:
    return json.loads((run_dir / "metrics.json").read_text())["best_checkpoint"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serving(answer: Any, examples: Sequence[str] = (), max_file_size: str = "10mb", show_classes: bool = True) -> Any:
    """The page for ``answer`` on a free port of 127.0.0.1 (its address), closed when the block ends."""
    page = build_page(answer, "petlab test", "a test page", examples, top_k=3, show_classes=show_classes)
    url = launch(page, "127.0.0.1", free_port(), max_file_size=max_file_size, block=False)
    try:
        yield url
    finally:
        page.close()


def bounded(call: Any, *args: Any) -> Any:
    """``call(*args)``, failing the test instead of hanging past TIMEOUT_S."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(call, *args).result(timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def photos(sample_root: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Three sample photos and a text file named like a photo."""
    folder = tmp_path_factory.mktemp("uploads")
    (folder / "notes.jpg").write_text("not an image")
    names = ["Abyssinian_1.jpg", "beagle_2.jpg", "Bengal_3.jpg"]
    return [str(sample_root / "images" / name) for name in names] + [str(folder / "notes.jpg")]


def predicted(ckpt_path: str, images: list[str], cwd: Path, *options: str) -> list[dict[str, Any]]:
    result = petlab("petlab.predict", f"ckpt_path={ckpt_path}", f"images=[{','.join(images)}]", "output=json",
                    "precision=32-true", *options, cwd=cwd)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def test_the_pages_answers_are_petlab_predicts(trained_run: Path, photos: list[str], tmp_path: Path):
    checkpoint = load_checkpoint(best_checkpoint(trained_run))
    answers = answer_images(checkpoint, photos, tmp_path, top_k=3, precision="32-true")
    assert answers == predicted(best_checkpoint(trained_run), photos, tmp_path)
    page = shown(page_results(checkpoint.task.answerer(), answers))
    top = answers[0]["top"]
    assert page.label == {entry["class"]: entry["probability"] for entry in top}
    assert page.headers == ["image", "answer", "details"]  # one task: no task column
    assert [row[0] for row in page.rows] == ["Abyssinian_1.jpg", "beagle_2.jpg", "Bengal_3.jpg"]
    assert page.rows[0][1] == f"{top[0]['class']} {top[0]['probability']:.1%}" and len(page.pictures) == 3
    assert page.note == "**notes.jpg**: not a readable image: skipped"


def test_a_file_that_is_not_an_image_gets_a_message_on_the_page(trained_run: Path, photos: list[str], tmp_path: Path):
    checkpoint = load_checkpoint(best_checkpoint(trained_run))
    page = shown(page_answers(checkpoint, photos[-1:], tmp_path))
    assert page.label is None and page.pictures == [] and page.rows == []
    assert "notes.jpg**: not a readable image" in page.note and "Upload photos" in page.note


def test_a_joint_models_page_shows_every_tasks_answer(joint_run: Path, photos: list[str], tmp_path: Path):
    checkpoint = load_checkpoint(best_checkpoint(joint_run))
    page = shown(page_answers(checkpoint, photos[:2], tmp_path, precision="32-true"))
    rows = page.rows
    assert page.headers == ["image", "task", "answer", "details"]
    assert [row[1] for row in rows[:4]] == ["species", "breed", "segmentation", "head_box"]
    assert set(page.label) <= {"cat", "dog"} and checkpoint.task.answerer().gives_probabilities()
    assert rows[2][2].startswith("pet: ") and rows[3][2].startswith("head at (")
    drawn = [Path(path).name for path, _ in page.pictures]
    assert len(drawn) == 4 and drawn[0].endswith("_overlay.jpg") and drawn[1].endswith("_box.png")
    assert all(Path(path).parent.parent == tmp_path for path, _ in page.pictures)  # a folder per request


def test_a_segmentation_models_page_has_no_panel_of_classes(segmentation_run: Path, photos: list[str],
                                                           tmp_path: Path):  # fmt: skip
    checkpoint = load_checkpoint(best_checkpoint(segmentation_run))
    page = shown(page_answers(checkpoint, photos[:1], tmp_path))
    assert page.label is None and page.headers == ["image", "answer", "details"]
    assert not checkpoint.task.answerer().gives_probabilities()
    assert page.rows[0][1].startswith("pet: ") and page.pictures[0][0].endswith("_overlay.jpg")


def test_examples_come_from_the_checkpoints_test_split_a_class_at_a_time(trained_run: Path, tmp_path: Path):
    checkpoint = load_checkpoint(best_checkpoint(trained_run))
    examples = example_images(checkpoint, 4, tmp_path / "no-sample")
    breeds = {Path(path).stem.rsplit("_", 1)[0] for path in examples}
    assert len(examples) == 4 and len(breeds) == 4 and all(Path(path).is_file() for path in examples)
    checkpoint.data_config = {**checkpoint.data_config, "root": str(tmp_path / "moved")}
    assert example_images(checkpoint, 4, tmp_path / "no-sample") == []  # neither the dataset nor the sample


def test_the_client_gets_the_pages_answers_from_a_running_server(trained_run: Path, photos: list[str],
                                                                 tmp_path: Path):  # fmt: skip
    from gradio_client import Client, handle_file

    checkpoint = load_checkpoint(best_checkpoint(trained_run))
    expected = shown(page_answers(checkpoint, photos[:2], tmp_path, precision="32-true"))

    def answer(paths: list[str]) -> list[dict[str, Any]]:
        return page_answers(checkpoint, paths, tmp_path, precision="32-true")

    with serving(answer) as url:
        client = bounded(Client, url)
        label, pictures, table, note = bounded(lambda: client.predict([handle_file(p) for p in photos[:2]],
                                                                      api_name="/predict"))  # fmt: skip
    assert label["label"] == max(expected.label, key=expected.label.get)
    assert table["headers"] == expected.headers and table["data"] == expected.rows
    assert note == "" and len(pictures) == 2


def test_a_slow_answer_does_not_hold_up_another_request(photos: list[str]):
    """The first request's answer waits until the second one has been answered: a page answering one request
    at a time would never answer the second, and the first would fail."""
    from gradio_client import Client, handle_file

    slow_started, other_answered = threading.Event(), threading.Event()

    def answer(paths: list[str]) -> list[dict[str, Any]]:
        if Path(paths[0]).name == Path(photos[0]).name:
            slow_started.set()
            if not other_answered.wait(30):
                raise RuntimeError("the other request was not answered while this one worked")
        else:
            other_answered.set()
        view = {"task": "", "answer": Path(paths[0]).name, "details": "", "pictures": [], "probabilities": None}
        return [{"image": paths[0], "views": [view]}]

    with serving(answer) as url:
        client = bounded(Client, url)
        slow = client.submit([handle_file(photos[0])], api_name="/predict")
        assert slow_started.wait(TIMEOUT_S)
        other = client.submit([handle_file(photos[1])], api_name="/predict")
        assert bounded(other.result)[2]["data"][0][1] == Path(photos[1]).name
        assert bounded(slow.result)[2]["data"][0][1] == Path(photos[0]).name


def test_an_upload_over_the_size_limit_is_refused(photos: list[str]):
    from gradio_client import Client, handle_file

    calls = []
    with serving(calls.append, max_file_size="100b") as url:
        client = bounded(Client, url)
        with pytest.raises(Exception, match=r"(?i)size|large"):
            bounded(lambda: client.predict([handle_file(photos[0])], api_name="/predict"))
    assert calls == []  # the model never saw it


@pytest.mark.parametrize("problem", ["missing", "foreign"])
def test_a_bad_checkpoint_is_one_line_and_exit_2_before_any_server(problem: str, tmp_path: Path):
    path = tmp_path / "model.ckpt"
    if problem == "foreign":
        path.write_bytes(b"\x80\x02not a checkpoint")
    result = petlab("petlab.app", f"ckpt_path={path}", f"port={free_port()}", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "ckpt_path=" in result.stderr
    assert "Running on" not in result.stdout + result.stderr


@pytest.mark.parametrize(("option", "named"), [("max_file_size=1.5mb", "max_file_size=1.5mb is not a size"),
                                               ("host=null", "host=None is not an address"),
                                               ("examples=[nowhere.jpg]", "in examples=[...]")])  # fmt: skip
def test_a_wrong_option_is_one_line_and_exit_2(trained_run: Path, tmp_path: Path, option: str, named: str):
    result = petlab("petlab.app", f"ckpt_path={best_checkpoint(trained_run)}", f"port={free_port()}", option,
                    cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and named in result.stderr, result.stderr


def test_a_port_in_use_is_named_with_how_to_choose_another(trained_run: Path, tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = petlab("petlab.app", f"ckpt_path={best_checkpoint(trained_run)}", f"port={port}", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert f"port {port} on 127.0.0.1 is in use" in result.stderr and "port=" in result.stderr


@pytest.mark.slow
def test_the_exported_folder_runs_the_page_from_a_fresh_environment(trained_run: Path, photos: list[str],
                                                                     tmp_path: Path):  # fmt: skip
    """The folder's own requirements.txt in a new virtual environment (no petlab), its app.py serving, and
    a client's answers equal the checkpoint's to 3 decimals."""
    from gradio_client import Client, handle_file

    folder = tmp_path / "space"
    result = petlab("petlab.export", f"ckpt_path={best_checkpoint(trained_run)}", "format=space",
                    f"output={folder}", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert {"app.py", "page.py", "petlab", "model.onnx", "model.onnx.json", "requirements.txt",
            "README.md", "examples"} <= {path.name for path in folder.iterdir()}  # fmt: skip
    assert sorted(path.name for path in (folder / "petlab").iterdir()) == ["__init__.py", "answers", "pictures.py"]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=TIMEOUT_S)
    python = str(venv / "bin" / "python")
    install = subprocess.run([python, "-m", "pip", "install", "--quiet", "-r", str(folder / "requirements.txt")],
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    assert install.returncode == 0, install.stderr[-2000:]
    # Only the answers' code comes along: nothing of petlab that needs torch.
    assert subprocess.run([python, "-c", "import petlab.train"], cwd=folder, capture_output=True).returncode != 0
    port = free_port()
    environment = {**os.environ, "GRADIO_SERVER_PORT": str(port), "PYTHONPATH": ""}
    server = subprocess.Popen([python, "app.py"], cwd=folder, env=environment, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        client = bounded(connect, Client, f"http://127.0.0.1:{port}/", server)
        answers = bounded(lambda: client.predict([handle_file(p) for p in photos[:3]], api_name="/predict"))
    finally:
        server.terminate()
        server.wait(timeout=30)
    checkpoint = load_checkpoint(best_checkpoint(trained_run))
    expected_rows = shown(page_answers(checkpoint, photos[:3], tmp_path, precision="32-true")).rows
    rows = answers[2]["data"]
    assert [row[0] for row in rows] == [row[0] for row in expected_rows]
    for row, expected in zip(rows, expected_rows, strict=True):
        (name, score), (expected_name, expected_score) = (row[1].rsplit(" ", 1), expected[1].rsplit(" ", 1))
        assert name == expected_name and abs(float(score[:-1]) - float(expected_score[:-1])) <= 0.1


def connect(client_class: Any, url: str, server: subprocess.Popen) -> Any:
    """A client of the server at ``url`` once it answers (the server's output if it died first)."""
    while True:
        if server.poll() is not None:
            raise AssertionError(f"the page's server stopped: {server.stdout.read()[-2000:]}")
        try:
            return client_class(url, verbose=False)
        except Exception:  # not listening yet
            time.sleep(1)


def in_browser(url: str, photo: str, screenshot: Path, read: Any) -> Any:
    """``read(page)`` once headless Chromium (Debian's package; .ci/run installs it) has uploaded ``photo`` on
    the page at ``url`` and its answer is shown; a screenshot is saved."""
    browser_path = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser_path is None:
        pytest.skip("no chromium on this machine: apt-get install chromium (.ci/run does where it can)")
    playwright = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright (dev extra)")
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url, timeout=60_000)
            page.locator("input[type=file]").first.set_input_files(photo)
            page.locator("#pictures img").first.wait_for(timeout=60_000)
            page.wait_for_timeout(500)  # the gallery's pictures finish loading
            page.screenshot(path=str(screenshot), full_page=True)
            return read(page)
        finally:
            browser.close()


@pytest.mark.slow
def test_a_browser_uploads_a_photo_and_reads_the_top_class(trained_run: Path, photos: list[str], tmp_path: Path):
    checkpoint = load_checkpoint(best_checkpoint(trained_run))
    (expected,) = answer_images(checkpoint, photos[:1], tmp_path)

    def answer(paths: list[str]) -> list[dict[str, Any]]:
        return page_answers(checkpoint, paths, tmp_path)

    def read(page: Any) -> str:
        return page.locator("#top-classes h2").inner_text()

    with serving(answer, photos[1:3]) as url:
        top_class = bounded(in_browser, url, photos[0], tmp_path / "page.png", read)
    assert top_class == expected["top"][0]["class"]
    assert (tmp_path / "page.png").stat().st_size > 10_000


@pytest.mark.slow
def test_a_browser_shows_a_segmentation_answer_whole_without_classes(segmentation_run: Path, photos: list[str],
                                                                     tmp_path: Path):  # fmt: skip
    checkpoint = load_checkpoint(best_checkpoint(segmentation_run))

    def answer(paths: list[str]) -> list[dict[str, Any]]:
        return page_answers(checkpoint, paths, tmp_path)

    def read(page: Any) -> tuple[Any, ...]:
        headers = [cell.inner_text().strip() for cell in page.locator("#answers thead th").all()]
        gallery, picture = page.locator("#pictures").bounding_box(), page.locator("#pictures img").first.bounding_box()
        return page.locator("#top-classes").is_visible(), headers, gallery, picture

    with serving(answer, show_classes=checkpoint.task.answerer().gives_probabilities()) as url:
        classes_shown, headers, gallery, picture = bounded(in_browser, url, photos[0], tmp_path / "page.png", read)
    assert not classes_shown and [header for header in headers if header] == ["image", "answer", "details"]
    assert picture["y"] + picture["height"] <= gallery["y"] + gallery["height"]  # whole, not cut at the bottom
    assert picture["width"] <= gallery["width"] / 2


def test_the_exported_pages_model_answers_every_task_like_the_checkpoint(joint_run: Path, photos: list[str],
                                                                          tmp_path: Path, monkeypatch):  # fmt: skip
    """The exported folder's own code (app.py, page.py, the answers' code), run here on a joint model: the same
    classes, pet area and head box as the checkpoint's answers, and the file that is not an image skipped."""
    from petlab.export import export_space

    checkpoint = load_checkpoint(best_checkpoint(joint_run))
    folder = export_space(checkpoint, tmp_path / "space", photos[:1], top_k=3)
    monkeypatch.syspath_prepend(str(folder))
    for name in ("app", "page"):  # the folder's modules, not petlab's of the same names
        monkeypatch.delitem(sys.modules, name, raising=False)
    import app

    exported = app.ExportedModel(folder).answer_images(photos[:2] + photos[-1:], tmp_path / "exported", 3)
    expected = answer_images(checkpoint, photos[:2] + photos[-1:], tmp_path, precision="32-true")
    assert exported[-1] == expected[-1] == {"image": photos[-1], "error": "not a readable image: skipped"}
    assert (folder / "petlab" / "answers" / "joint.py").is_file() and (folder / "petlab" / "pictures.py").is_file()
    for answer, wanted in zip([result["answer"] for result in exported[:2]], expected[:2], strict=True):
        for head in ("species", "breed"):
            classes = [entry["class"] for entry in answer[head]["top"]]
            assert classes == [entry["class"] for entry in wanted[head]["top"]]
        assert abs(answer["segmentation"]["pet_fraction"] - wanted["segmentation"]["pet_fraction"]) <= 0.01
        boxes = zip(answer["head_box"]["box"], wanted["head_box"]["box"], strict=True)
        assert max(abs(a - b) for a, b in boxes) <= 0.5
        assert Path(answer["segmentation"]["overlay"]).is_file() and Path(answer["head_box"]["drawn"]).is_file()
    assert [path.name for path in (folder / "examples").iterdir()] == ["01_Abyssinian_1.jpg"]
    header = yaml.safe_load((folder / "README.md").read_text().split("---")[1])  # the Space's config
    assert header["title"] == "petlab: every task's answer" and header["app_file"] == "app.py"
    assert header["sdk"] == "gradio" and header["sdk_version"] == gradio.__version__
