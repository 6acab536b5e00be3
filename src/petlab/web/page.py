"""The page where anyone drops photos of pets and sees a model's answers (Gradio).

``python -m petlab.app`` serves it for a checkpoint; ``petlab.export format=space`` copies this file into
the exported folder, whose ``app.py`` serves it for the ONNX model without petlab. Both give it a function
from image files to what to show of each, one per file: ``{"image", "error"}``, or ``{"image", "views":
[...]}`` with the views the task's answerer gives (``Answerer.views``: per task, the answer in words, its
details, the pictures that show it and its class probabilities). It knows no task. Keep it free of petlab
imports.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

# Set before Gradio is imported: a page for a model never reports usage to Gradio's servers.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr

Result = dict[str, Any]


class Shown(NamedTuple):
    """What the page shows for a request (see :func:`shown`)."""

    label: dict[str, float] | None  # the first image's classes and their probabilities
    pictures: list[tuple[str, str]]  # (path, caption)
    headers: list[str]
    rows: list[list[str]]
    note: str  # the files that could not be read


def shown(results: Sequence[Result]) -> Shown:
    """What the page shows for ``results``: the first image's classes with their probabilities, the pictures
    with captions (the photo itself, or the pictures of its answers), the table of every answer (with a task
    column for a model of several tasks), and a note on the files that could not be read."""
    label, pictures, rows, problems = None, [], [], []
    several = any(view["task"] for result in results for view in result.get("views", ()))
    for result in results:
        name = Path(result["image"]).name
        if "error" in result:
            problems.append(f"**{name}**: {result['error']}")
            continue
        captions, drawn = [], []
        for view in result["views"]:
            rows.append([name, view["task"], view["answer"], view["details"]] if several else
                        [name, view["answer"], view["details"]])  # fmt: skip
            captions.append(f"{view['task']}: {view['answer']}" if view["task"] else view["answer"])
            drawn += view["pictures"]
            if label is None and view["probabilities"]:
                label = dict(view["probabilities"])
        caption = f"{name}: " + "; ".join(captions)
        pictures += [(path, caption) for path in drawn] or [(result["image"], caption)]
    if problems and not rows:
        problems.append("Upload photos (JPEG, PNG, GIF, WebP, BMP...) to see the model's answer.")
    headers = ["image", "task", "answer", "details"] if several else ["image", "answer", "details"]
    return Shown(label, pictures, headers, rows, "\n\n".join(problems))


def build_page(
    answer_images: Callable[[list[str]], list[Result]], title: str, description: str,
    examples: Sequence[str] = (), top_k: int = 3, show_classes: bool = True,
) -> gr.Blocks:  # fmt: skip
    """The page: an upload box for one or more images (with ``examples`` to click), the first image's
    top-k classes (with ``show_classes``: for a model whose answers have classes), the pictures and a table
    of every answer (see :func:`shown`). Its ``predict`` API answers the same."""

    def respond(files: list[str] | None) -> tuple[Any, ...]:
        page = shown(answer_images([str(path) for path in files]) if files else [])
        return page.label, page.pictures, {"headers": page.headers, "data": page.rows}, page.note

    # Uploads and shown pictures leave Gradio's cache after an hour, so that a page up for weeks keeps its disk.
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 3600)) as page:
        gr.Markdown(f"# {title}\n{description}")
        with gr.Row():
            with gr.Column():
                files = gr.File(label="Photos of pets (one or more)", file_count="multiple", type="filepath")
                if examples:
                    gr.Examples([[[path]] for path in examples], inputs=files, label="Or try one of these")
            with gr.Column():
                label = gr.Label(label="First image: top classes", num_top_classes=top_k, elem_id="top-classes",
                                 visible=show_classes)  # fmt: skip
                note = gr.Markdown(label="problems", elem_id="problems")
                # fit_columns off: a single picture keeps a third of the width, whole, rather than filling
                # the gallery and being cut to its height.
                pictures = gr.Gallery(label="Answers", columns=3, height=360, object_fit="contain",
                                      fit_columns=False, elem_id="pictures")  # fmt: skip
        table = gr.Dataframe(headers=["image", "answer", "details"], label="Every answer", interactive=False,
                             elem_id="answers")  # fmt: skip
        files.change(respond, inputs=files, outputs=[label, pictures, table, note], api_name="predict")
    return page


def launch(
    page: gr.Blocks, host: str, port: int, share: bool = False, max_file_size: str = "10mb",
    allowed_paths: Sequence[str] = (), block: bool = True, concurrency: int = 4,
) -> str:  # fmt: skip
    """Serve ``page`` on ``host:port`` (a public share link only with ``share``), refusing uploads larger
    than ``max_file_size``, answering up to ``concurrency`` requests at once, until Ctrl+C; ``block=False``
    returns the page's address at once (for tests)."""
    # Gradio answers one request of an event at a time by default: one large photo would hold every visitor.
    page.queue(default_concurrency_limit=concurrency)
    _, url, share_url = page.launch(
        server_name=host, server_port=port, share=share, max_file_size=max_file_size,
        allowed_paths=list(allowed_paths), prevent_thread_lock=True, show_error=False, ssr_mode=False,
        footer_links=["api"], quiet=True,
    )  # fmt: skip
    if block:
        public = f", and publicly on {share_url}" if share_url else ""
        print(f"The page is on {url}{public} (Ctrl+C stops it)", file=sys.stderr, flush=True)
        # A service manager's or timeout's SIGTERM stops it as Ctrl+C does: the server closes, temporary files go.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        page.block_thread()
    return url
