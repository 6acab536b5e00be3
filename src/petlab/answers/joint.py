"""Several tasks' answers for one image: one per task, by name."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from petlab.answers.base import Answer, Answerer


class EveryTask(Answerer):
    """``{TASK: answer}`` from ``answerers`` by task name; outputs are a dict by task name (an exported
    model's arrays in the answerers' order)."""

    def __init__(self, answerers: Mapping[str, Answerer]) -> None:
        self.answerers = dict(answerers)

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "answerers": {name: answerer.spec() for name, answerer in self.answerers.items()}}

    def modules(self) -> set[str]:
        return {type(self).__module__}.union(*(answerer.modules() for answerer in self.answerers.values()))

    def uses_photo(self) -> bool:
        return any(answerer.uses_photo() for answerer in self.answerers.values())

    def photo_side(self) -> int | None:
        sides = [answerer.photo_side() for answerer in self.answerers.values() if answerer.uses_photo()]
        return None if None in sides or not sides else max(sides)

    def draws(self) -> bool:
        return any(answerer.draws() for answerer in self.answerers.values())

    def gives_probabilities(self) -> bool:
        return any(answerer.gives_probabilities() for answerer in self.answerers.values())

    def from_arrays(self, arrays: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.answerers, arrays, strict=True))

    def answer(self, outputs: Any, image: Any, top_k: int, output_dir: Path | None = None, stem: str = "") -> Answer:
        return {name: answerer.answer(outputs[name], image, top_k, output_dir, f"{stem}_{name}")
                for name, answerer in self.answerers.items()}  # fmt: skip

    def summary(self, answer: Answer) -> tuple[str, str]:
        texts = [f"{name}: {answerer.summary(answer[name])[0]}" for name, answerer in self.answerers.items()]
        return "; ".join(texts), ""

    def table(self, answers: Sequence[Answer]) -> tuple[list[str], list[list[str]]]:
        headers, rows = [], [[] for _ in answers]
        for name, answerer in self.answerers.items():
            own_headers, own_rows = answerer.table([answer[name] for answer in answers])
            headers += [f"{name}: {header}" for header in own_headers]
            for row, own in zip(rows, own_rows, strict=True):
                row += own
        return headers, rows

    def views(self, answer: Answer) -> list[dict[str, Any]]:
        return [{**view, "task": name} for name, answerer in self.answerers.items()
                for view in answerer.views(answer[name])]  # fmt: skip
