"""Tasks' answers for new images, with numpy and Pillow only (see :mod:`petlab.answers.base`)."""

from petlab.answers.base import Answer, Answerer, answerer_from_spec, decoded_side

__all__ = ["Answer", "Answerer", "answerer_from_spec", "decoded_side"]
