"""A class per image: the top classes and their probabilities."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from petlab.answers.base import Answer, Answerer


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    exponentials = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return exponentials / exponentials.sum(axis=axis, keepdims=True)


class TopClasses(Answerer):
    """``{"top": [{"class", "probability"}...]}``, the ``top_k`` most likely of ``class_names`` from logits."""

    def __init__(self, class_names: Sequence[str]) -> None:
        self.class_names = list(class_names)

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "class_names": self.class_names}

    def uses_photo(self) -> bool:
        return False

    def answer(self, outputs: Any, image: Any, top_k: int, output_dir: Path | None = None, stem: str = "") -> Answer:
        probabilities = softmax(np.asarray(outputs, dtype=np.float32))
        best = np.argsort(-probabilities, kind="stable")[: min(top_k, len(self.class_names))]
        return {"top": [{"class": self.class_names[i], "probability": round(float(probabilities[i]), 4)}
                        for i in best]}  # fmt: skip

    def summary(self, answer: Answer) -> tuple[str, str]:
        best, *rest = answer["top"]
        return f"{best['class']} {best['probability']:.1%}", ", ".join(
            f"{other['class']} {other['probability']:.1%}" for other in rest
        )

    def table(self, answers: Sequence[Answer]) -> tuple[list[str], list[list[str]]]:
        rows = []
        for answer in answers:
            best, *rest = answer["top"]
            others = ", ".join(f"{t['class']} {t['probability']:.2f}" for t in rest)
            rows.append([best["class"], f"{best['probability']:.3f}", others])
        return ["prediction", "probability", "then"], rows

    def probabilities(self, answer: Answer) -> dict[str, float]:
        return {entry["class"]: entry["probability"] for entry in answer["top"]}
