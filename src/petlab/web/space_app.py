"""A petlab model's page without petlab: ``python app.py``, or a hosting space that runs ``app.py``.

``petlab.export format=space`` writes this file as ``app.py`` beside the exported network (``model.onnx``,
run by ONNX Runtime; ``model.onnx.json`` says how to prepare images and what the outputs mean) and petlab's
own ``page.py`` and ``pictures.py``, so the page looks, reads images and draws answers as
``python -m petlab.app`` does. ``GRADIO_SERVER_NAME`` and ``GRADIO_SERVER_PORT`` choose where it listens
(127.0.0.1:7860 by default; hosting spaces set them).
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
from pictures import answers_folder, drawn, open_rgb, overlay, resized_pixels
from PIL import Image

HERE = Path(__file__).resolve().parent


def softmax(logits: np.ndarray, axis: int) -> np.ndarray:
    exponentials = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return exponentials / exponentials.sum(axis=axis, keepdims=True)


def bilinear_positions(size: int, source_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each of ``size`` output positions, the two source positions and the second's weight, as torch's
    bilinear ``interpolate`` (``align_corners=False``, no antialiasing) reads them."""
    source = np.maximum((np.arange(size) + 0.5) * (source_size / size) - 0.5, 0)
    low = np.minimum(source.astype(np.int64), source_size - 1)
    return low, np.minimum(low + 1, source_size - 1), source - low


def full_size_classes(logits: np.ndarray, width: int, height: int) -> np.ndarray:
    """The class of every pixel of a ``width`` x ``height`` image from its (classes, h, w) logits, resized
    as petlab resizes them (torch's bilinear interpolation), then the best class per pixel."""
    top, bottom, down = bilinear_positions(height, logits.shape[1])
    left, right, across = bilinear_positions(width, logits.shape[2])
    rows = logits[:, top] * (1 - down[:, None]) + logits[:, bottom] * down[:, None]
    return (rows[:, :, left] * (1 - across) + rows[:, :, right] * across).argmax(axis=0)


class ExportedModel:
    """The exported network and its sidecar: image files in, ``petlab.predict``'s answers out."""

    def __init__(self, folder: Path) -> None:
        self.spec = json.loads((folder / "model.onnx.json").read_text())
        self.session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        self.heads = self.spec["heads"] if self.spec["kind"] == "joint" else {"": self.spec}

    def pixels(self, image: Image.Image) -> np.ndarray:
        """An image as the network takes it: resized to ``side``, its centre ``input_size`` square, in [0, 1]."""
        side, size = self.spec["side"], self.spec["input_size"]
        start = (side - size) // 2
        square = resized_pixels(image, side)[start : start + size, start : start + size]
        return square.transpose(2, 0, 1).astype(np.float32) / 255

    def answer(self, outputs: dict[str, np.ndarray], image: Image.Image, output_dir: Path, stem: str,
               top_k: int) -> dict[str, Any]:  # fmt: skip
        """One image's answer: one head's, or every head's by name."""
        answers = {}
        for (head, spec), output in zip(self.heads.items(), outputs.values(), strict=True):
            prefix = f"{stem}_{head}" if head else stem
            if spec["kind"] == "classification":
                probabilities = softmax(output.astype(np.float32), axis=0)
                best = np.argsort(-probabilities, kind="stable")[:top_k]
                top = [
                    {"class": spec["class_names"][i], "probability": round(float(probabilities[i]), 4)} for i in best
                ]
                answers[head] = {"top": top}
            elif spec["kind"] == "segmentation":
                classes = full_size_classes(output, image.width, image.height)
                values = np.array([spec["trimap_values"][name] for name in spec["class_names"]], dtype=np.uint8)
                mask, picture = output_dir / f"{prefix}_mask.png", output_dir / f"{prefix}_overlay.png"
                Image.fromarray(values[classes]).save(mask)
                overlay(np.asarray(image), classes, spec["class_names"]).save(picture)
                pet = float((classes == spec["class_names"].index("pet")).mean())
                answers[head] = {"pet_fraction": round(pet, 4), "mask": str(mask), "overlay": str(picture)}
            else:  # a head box, as fractions of the image
                scale = (image.width, image.height, image.width, image.height)
                box = [round(float(value) * size, 1) for value, size in zip(np.clip(output, 0, 1), scale, strict=True)]
                picture = output_dir / f"{prefix}_box.png"
                drawn(image, box).save(picture)
                answers[head] = {"box": box, "drawn": str(picture)}
        return answers.get("", answers)  # a single head's answer as it is

    def answer_images(self, paths: list[str], output_dir: Path, top_k: int) -> list[dict[str, Any]]:
        output_dir.mkdir(parents=True, exist_ok=True)
        results = []
        for index, path in enumerate(paths):
            try:
                image = open_rgb(path, upright=True)
            except (OSError, Image.DecompressionBombError):
                results.append({"image": path, "error": "not a readable image: skipped"})
                continue
            outputs = self.session.run(None, {"images": self.pixels(image)[None]})
            named = {name: value[0] for name, value in zip(self.spec["output_names"], outputs, strict=True)}
            stem = f"{index}_{Path(path).stem}"
            results.append({"image": path, **self.answer(named, image, output_dir, stem, top_k)})
        return results


def main() -> None:
    model = ExportedModel(HERE)
    page_spec = model.spec["page"]
    examples = sorted(str(path) for path in (HERE / "examples").glob("*") if path.is_file())
    host, port = os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), int(os.environ.get("GRADIO_SERVER_PORT", "7860"))
    with tempfile.TemporaryDirectory(prefix="petlab-space-") as pictures_dir:

        def answer(paths: list[str]) -> list[dict[str, Any]]:
            return model.answer_images(paths, answers_folder(Path(pictures_dir)), page_spec["top_k"])

        page = build_page(answer, page_spec["title"], page_spec["description"], examples, page_spec["top_k"])
        try:
            launch(page, host, port, allowed_paths=[pictures_dir])
        except OSError as error:  # Gradio's "Cannot find empty port": the port is taken
            sys.exit(f"error: cannot listen on {host}:{port} ({error}): set GRADIO_SERVER_PORT to another port")


if __name__ == "__main__":
    main()
