"""A petlab model's page without petlab: ``python app.py``, or a hosting space that runs ``app.py``.

``petlab.export format=space`` writes this file as ``app.py`` beside the exported network (``model.onnx``,
run by ONNX Runtime; ``model.onnx.json`` says how to prepare images and what the outputs mean), petlab's own
``page.py``, and a ``petlab/`` folder with only ``pictures.py`` and the ``answers`` package (numpy and
Pillow only; with the module of a task's answerer of the user's own, if any), so the page looks, reads
images and answers as ``python -m petlab.app`` does. ``GRADIO_SERVER_NAME`` and ``GRADIO_SERVER_PORT``
choose where it listens (127.0.0.1:7860 by default; hosting spaces set them).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
from page import build_page, launch
from PIL import Image

from petlab.answers import answerer_from_spec, decoded_side
from petlab.pictures import answers_folder, open_photo, resized_pixels

HERE = Path(__file__).resolve().parent


class ExportedModel:
    """The exported network, its sidecar and its task's answerer: image files in, what the page shows out."""

    def __init__(self, folder: Path) -> None:
        self.spec = json.loads((folder / "model.onnx.json").read_text())
        self.session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        self.answerer = answerer_from_spec(self.spec["answerer"])

    def pixels(self, image: Image.Image) -> np.ndarray:
        """An image as the network takes it: resized to ``side``, its centre ``input_size`` square, in [0, 1]."""
        side, size = self.spec["side"], self.spec["input_size"]
        start = (side - size) // 2
        square = resized_pixels(image, side)[start : start + size, start : start + size]
        return square.transpose(2, 0, 1).astype(np.float32) / 255

    def answer_images(self, paths: list[str], output_dir: Path, top_k: int) -> list[dict[str, Any]]:
        """``petlab.predict``'s answers for ``paths``, as the page shows them (see ``page.shown``)."""
        output_dir.mkdir(parents=True, exist_ok=True)
        photo_side = decoded_side(self.answerer, self.spec["side"])
        results = []
        for index, path in enumerate(paths):
            try:
                for_network, image = open_photo(path, self.spec["side"], photo_side)
            except (OSError, Image.DecompressionBombError):
                results.append({"image": path, "error": "not a readable image: skipped"})
                continue
            arrays = self.session.run(None, {"images": self.pixels(for_network)[None]})
            outputs = self.answerer.from_arrays([array[0] for array in arrays])
            answer = self.answerer.answer(outputs, image, top_k, output_dir, f"{index}_{Path(path).stem}")
            results.append({"image": path, "answer": answer, "views": self.answerer.views(answer)})
        return results


def main() -> None:
    model = ExportedModel(HERE)
    page_spec = model.spec["page"]
    examples = sorted(str(path) for path in (HERE / "examples").glob("*") if path.is_file())
    host, port = os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), int(os.environ.get("GRADIO_SERVER_PORT", "7860"))
    with tempfile.TemporaryDirectory(prefix="petlab-space-") as pictures_dir:

        def answer(paths: list[str]) -> list[dict[str, Any]]:
            return model.answer_images(paths, answers_folder(Path(pictures_dir)), page_spec["top_k"])

        page = build_page(answer, page_spec["title"], page_spec["description"], examples, page_spec["top_k"],
                          show_classes=model.answerer.gives_probabilities())  # fmt: skip
        try:
            launch(page, host, port, allowed_paths=[pictures_dir])
        except OSError as error:  # Gradio's "Cannot find empty port": the port is taken
            sys.exit(f"error: cannot listen on {host}:{port} ({error}): set GRADIO_SERVER_PORT to another port")


if __name__ == "__main__":
    main()
