"""Kinds of target: what a task learns about each image (see :class:`petlab.data.targets.base.Target`)."""

from petlab.data.targets.base import Target, class_path
from petlab.data.targets.box import Box
from petlab.data.targets.label import Label
from petlab.data.targets.mask import Mask
from petlab.data.targets.number import CsvNumber, Number

__all__ = ["Box", "CsvNumber", "Label", "Mask", "Number", "Target", "class_path"]
