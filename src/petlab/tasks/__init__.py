"""Tasks by kind: each module of this package implements :class:`petlab.tasks.base.Task` for one kind of target."""

from __future__ import annotations

from typing import Any

from petlab.errors import PetlabError
from petlab.tasks.base import Task
from petlab.tasks.classification import Classification
from petlab.tasks.head import HeadBox
from petlab.tasks.joint import Joint
from petlab.tasks.segmentation import Segmentation

__all__ = ["KINDS", "Classification", "HeadBox", "Joint", "Segmentation", "Task", "task_from_spec"]

KINDS: dict[str, type[Task]] = {
    "classification": Classification,
    "segmentation": Segmentation,
    "head": HeadBox,
    "joint": Joint,
}


def task_from_spec(spec: dict[str, Any]) -> Task:
    """The task a checkpoint was trained for, from :meth:`Task.spec`."""
    options = dict(spec)
    kind = options.pop("kind", None)
    if kind not in KINDS:
        raise PetlabError(f"this checkpoint's task kind {kind!r} is unknown to this petlab: choose {', '.join(KINDS)}")
    return KINDS[kind](**options)
