"""A box per image: where the pet's head is, in the photo's pixels."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from petlab.answers.base import Answer, Answerer
from petlab.pictures import drawn, save_whole


class BoxInPixels(Answerer):
    """``{"box": [x0, y0, x1, y1]}`` in the photo's pixels from a box as fractions of the image the network
    saw (the whole photo, resized); with an output folder, ``drawn``: the photo with the box in red."""

    picture_keys = ("drawn",)

    def answer(self, outputs: Any, image: Any, top_k: int, output_dir: Path | None = None, stem: str = "") -> Answer:
        scale = (image.width, image.height, image.width, image.height)
        fractions = np.clip(np.asarray(outputs, dtype=np.float32), 0, 1)
        answer: Answer = {"box": [round(float(value) * size, 1) for value, size in zip(fractions, scale, strict=True)]}
        if output_dir is not None:
            path = output_dir / f"{stem}_box.png"
            save_whole(drawn(image, answer["box"]), path)
            answer["drawn"] = str(path)
        return answer

    def summary(self, answer: Answer) -> tuple[str, str]:
        x0, y0, x1, y1 = answer["box"]
        return f"head at ({x0:g}, {y0:g})-({x1:g}, {y1:g}) px", "red box in the picture"

    def table(self, answers: Sequence[Answer]) -> tuple[list[str], list[list[str]]]:
        rows = [[", ".join(f"{value:g}" for value in a["box"]), a.get("drawn", "")] for a in answers]
        return ["head box x0, y0, x1, y1 (px)", "drawn"], rows
