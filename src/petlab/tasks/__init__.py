"""Tasks: each module of this package implements :class:`petlab.tasks.base.Task` for one task; a task of
the user's own lives in their package and is named by its config's ``_target_``."""

from petlab.tasks.base import Task, from_spec
from petlab.tasks.classification import Classification
from petlab.tasks.head_box import HeadBox
from petlab.tasks.joint import Joint
from petlab.tasks.segmentation import Segmentation

__all__ = ["Classification", "HeadBox", "Joint", "Segmentation", "Task", "from_spec"]
