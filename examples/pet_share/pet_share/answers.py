"""The answer for a new image: how much of it is the pet. numpy only (besides petlab.answers), so that a page
exported with ``petlab.export format=space`` answers with it, without petlab or torch."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from petlab.answers import Answer, Answerer


class ShareAnswer(Answerer):
    """``{"pet_share": s}``: the network's output (a logit) through a sigmoid, the share of the photo that is
    the pet."""

    def answer(self, outputs: Any, image: Any, top_k: int, output_dir: Path | None = None, stem: str = "") -> Answer:
        logit = float(np.asarray(outputs, dtype=np.float32).reshape(()))
        return {"pet_share": round(1 / (1 + np.exp(-logit)), 4)}

    def summary(self, answer: Answer) -> tuple[str, str]:
        return f"the pet fills {answer['pet_share']:.0%} of the photo", "regressed from the whole image"

    def table(self, answers: Sequence[Answer]) -> tuple[list[str], list[list[str]]]:
        return ["pet share"], [[f"{answer['pet_share']:.1%}"] for answer in answers]
