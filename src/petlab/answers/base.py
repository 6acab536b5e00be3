"""What a task's answer for a new image is, computed with numpy from the network's outputs.

``petlab.predict``, the web page and the page of an exported model (which has neither torch nor petlab)
share this code: ``petlab.export format=space`` copies this package and ``petlab/pictures.py`` beside the
model, and the module that defines a task's answerer. Keep such modules free of every import but numpy,
Pillow, :mod:`petlab.answers` and :mod:`petlab.pictures`.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

Answer = dict[str, Any]


class Answerer(ABC):
    """One task's answers for new images. An answer is a JSON-ready dict; the pictures it draws (given an
    output folder) are named in it by the keys :attr:`picture_keys`."""

    #: The keys of an answer that name pictures to show (the page shows these rather than the photo).
    picture_keys: ClassVar[tuple[str, ...]] = ()

    def spec(self) -> dict[str, Any]:
        """Its class and the plain values that rebuild it (see :func:`answerer_from_spec`)."""
        return {"class": f"{type(self).__module__}.{type(self).__qualname__}"}

    def modules(self) -> set[str]:
        """The modules that define it (an exported page copies them)."""
        return {type(self).__module__}

    def uses_photo(self) -> bool:
        """Whether :meth:`answer` reads the photo (its size, its pixels): else it is given None, and a large
        JPEG is decoded only at the scale the model needs."""
        return True

    def photo_side(self) -> int | None:
        """The side that both of the photo's sides keep, at least, for :meth:`answer` to read its pixels (None:
        the photo as large as it is): a larger JPEG is decoded at a reduced scale that keeps it, the photo's
        own size given by :func:`petlab.pictures.full_size`."""
        return None

    def draws(self) -> bool:
        """Whether its answers come with pictures (given an output folder)."""
        return bool(self.picture_keys)

    def from_arrays(self, arrays: Sequence[np.ndarray]) -> Any:
        """One image's outputs from an exported model's output arrays for it, in their order."""
        return arrays[0]

    @abstractmethod
    def answer(self, outputs: Any, image: Any, top_k: int, output_dir: Path | None = None, stem: str = "") -> Answer:
        """The answer for one image from its fp32 ``outputs`` (``image``: the original PIL image, for answers
        measured at its size); with ``output_dir``, the pictures that show it are written there as
        ``stem_*.png`` and named in the answer."""

    @abstractmethod
    def summary(self, answer: Answer) -> tuple[str, str]:
        """The answer in words, and details."""

    def table(self, answers: Sequence[Answer]) -> tuple[list[str], list[list[str]]]:
        """Headers and rows (the image's name left out) of ``petlab.predict``'s table."""
        return ["answer", "details"], [list(self.summary(answer)) for answer in answers]

    def probabilities(self, answer: Answer) -> dict[str, float] | None:
        """Classes and their probabilities, for the page's label (None when the answer has none)."""
        return None

    def gives_probabilities(self) -> bool:
        """Whether its answers have class probabilities (the page has a panel for them only then): an
        answerer that defines :meth:`probabilities` does."""
        return type(self).probabilities is not Answerer.probabilities

    def views(self, answer: Answer) -> list[dict[str, Any]]:
        """What the page shows of ``answer``: one row per task (``task`` "" for a single task), each with the
        answer in words, its details, the pictures that show it and its class probabilities."""
        text, details = self.summary(answer)
        pictures = [answer[key] for key in self.picture_keys if key in answer]
        return [{"task": "", "answer": text, "details": details, "pictures": pictures,
                 "probabilities": self.probabilities(answer)}]  # fmt: skip


def decoded_side(answerer: Answerer, model_side: int) -> int | None:
    """The side a large JPEG is decoded keeping, at least (see :func:`petlab.pictures.open_rgb`), for
    ``answerer``'s answers beside a network that reads ``model_side``: None to decode the photo whole."""
    if not answerer.uses_photo():
        return model_side
    photo_side = answerer.photo_side()
    return None if photo_side is None else max(model_side, photo_side)


def answerer_from_spec(spec: dict[str, Any]) -> Answerer:
    """The answerer of an exported model's sidecar (its own export: the modules are the folder's)."""
    module_name, _, name = spec["class"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), name)
    arguments = {key: built(value) for key, value in spec.items() if key != "class"}
    return cls(**arguments)


def built(value: Any) -> Any:
    """A spec's value with the answerers inside it (a joint model's, by task) rebuilt."""
    if isinstance(value, dict) and "class" in value:
        return answerer_from_spec(value)
    if isinstance(value, dict):
        return {key: built(item) for key, item in value.items()}
    return value
