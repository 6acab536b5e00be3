"""The page where anyone drops photos of pets and sees a model's answers (Gradio).

``python -m petlab.app`` serves it for a checkpoint; ``petlab.export format=space`` copies this file into
the exported folder, whose ``app.py`` serves it for the ONNX model without petlab. Both give it a function
from image files to answers in ``petlab.predict``'s JSON form, one per file: ``{"image", "top": [{"class",
"probability"}...]}`` (classification), ``{"image", "pet_fraction", "overlay"}`` (segmentation),
``{"image", "box", "drawn"}`` (head box), ``{"image", HEAD: {...}...}`` (one answer per head of a joint
model) or ``{"image", "error"}``. Keep it free of petlab imports.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# Set before Gradio is imported: a page for a model never reports usage to Gradio's servers.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr

Answer = dict[str, Any]
TABLE_HEADERS = ["image", "head", "answer", "details"]
PICTURE_KEYS = ("overlay", "drawn")  # the files a segmentation or head answer is drawn in


def heads(result: Answer) -> dict[str, Answer]:
    """A result's answers by head: ``{"": answer}`` for a single-task model."""
    fields = {key: value for key, value in result.items() if key != "image"}
    if {"top", "pet_fraction", "box"} & fields.keys():
        return {"": fields}
    return fields


def summary(answer: Answer) -> tuple[str, str]:
    """One head's answer in words: the answer and its details."""
    if "top" in answer:
        best, *rest = answer["top"]
        details = ", ".join(f"{other['class']} {other['probability']:.1%}" for other in rest)
        return f"{best['class']} {best['probability']:.1%}", details
    if "pet_fraction" in answer:
        return f"pet: {answer['pet_fraction']:.1%} of the image", "tinted in the picture"
    x0, y0, x1, y1 = answer["box"]
    return f"head at ({x0:g}, {y0:g})-({x1:g}, {y1:g}) px", "red box in the picture"


def shown(results: Sequence[Answer]) -> tuple[dict[str, float] | None, list[tuple[str, str]], list[list[str]], str]:
    """What the page shows for ``results``: the first image's classes with their probabilities (for the
    label), the pictures with captions (the photo itself, or its mask overlay and drawn box), the table of
    every head's answer, and a note on the files that could not be read."""
    label, pictures, rows, problems = None, [], [], []
    for result in results:
        name = Path(result["image"]).name
        if "error" in result:
            problems.append(f"**{name}**: {result['error']}")
            continue
        answers = heads(result)
        captions = []
        for head, answer in answers.items():
            text, details = summary(answer)
            rows.append([name, head or "-", text, details])
            captions.append(f"{head}: {text}" if head else text)
            if label is None and "top" in answer:
                label = {entry["class"]: entry["probability"] for entry in answer["top"]}
        drawn = [answer[key] for answer in answers.values() for key in PICTURE_KEYS if key in answer]
        caption = f"{name}: " + "; ".join(captions)
        pictures += [(path, caption) for path in drawn] or [(result["image"], caption)]
    if problems and not rows:
        problems.append("Upload photos (JPEG, PNG, GIF, WebP, BMP...) to see the model's answer.")
    return label, pictures, rows, "\n\n".join(problems)


def build_page(
    answer_images: Callable[[list[str]], list[Answer]], title: str, description: str,
    examples: Sequence[str] = (), top_k: int = 3,
) -> gr.Blocks:  # fmt: skip
    """The page: an upload box for one or more images (with ``examples`` to click), the first image's
    top-k classes, the pictures and a table of every answer. Its ``predict`` API answers the same."""

    def respond(files: list[str] | None) -> tuple[Any, ...]:
        return shown(answer_images([str(path) for path in files])) if files else (None, [], [], "")

    # Uploads and shown pictures leave Gradio's cache after an hour, so that a page up for weeks keeps its disk.
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 3600)) as page:
        gr.Markdown(f"# {title}\n{description}")
        with gr.Row():
            with gr.Column():
                files = gr.File(label="Photos of pets (one or more)", file_count="multiple", type="filepath")
                if examples:
                    gr.Examples([[[path]] for path in examples], inputs=files, label="Or try one of these")
            with gr.Column():
                label = gr.Label(label="First image: top classes", num_top_classes=top_k, elem_id="top-classes")
                note = gr.Markdown(label="problems", elem_id="problems")
                pictures = gr.Gallery(label="Answers", columns=3, height=360, object_fit="contain", elem_id="pictures")
        table = gr.Dataframe(headers=TABLE_HEADERS, label="Every answer", interactive=False, elem_id="answers")
        files.change(respond, inputs=files, outputs=[label, pictures, table, note], api_name="predict")
    return page


def launch(
    page: gr.Blocks, host: str, port: int, share: bool = False, max_file_size: str = "10mb",
    allowed_paths: Sequence[str] = (), block: bool = True,
) -> str:  # fmt: skip
    """Serve ``page`` on ``host:port`` (a public share link only with ``share``), refusing uploads larger
    than ``max_file_size``, until Ctrl+C; ``block=False`` returns the page's address at once (for tests)."""
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
