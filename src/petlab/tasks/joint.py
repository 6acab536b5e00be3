"""Several tasks trained jointly: one backbone, one head per task, a weighted sum of their losses.

The tasks are those of ``conf/task/NAME.yaml`` (petlab's, or a package's of the user's own given with
``--config-dir``), composed as a single run of each would be. Each task's loss and metrics use only the
images that have its target (every task already ignores the images without one: border-only masks, NaN
boxes), so a batch mixes images with and without a box. Outputs, targets and what the evaluation keeps are
dicts keyed by task; metrics are logged per task (``val/species/acc``, ``val/head_box/iou``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torchmetrics import Metric
from torchmetrics.wrappers.abstract import WrapperMetric

from petlab.answers.joint import EveryTask
from petlab.checks import real_number
from petlab.data.targets import Target
from petlab.errors import PetlabError
from petlab.interpret import Evaluation
from petlab.models import Backbone
from petlab.tasks.base import Task, build_task


class JointHead(nn.Module):
    """The heads of the tasks side by side on one backbone: a dict of outputs, keyed by task."""

    def __init__(self, heads: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.tasks = nn.ModuleDict(heads)

    def forward(
        self, features: list[torch.Tensor], pooled: torch.Tensor, size: Sequence[int]
    ) -> dict[str, torch.Tensor]:  # fmt: skip
        return {name: head(features, pooled, size) for name, head in self.tasks.items()}


class TaskMetric(WrapperMetric):
    """One task's metric, fed that task's outputs and targets from the joint dicts (its states, and their
    synchronisation across processes, stay the wrapped metric's)."""

    def __init__(self, task: str, metric: Metric) -> None:
        super().__init__()
        self.task, self.metric = task, metric

    def update(self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]) -> None:
        self.metric.update(outputs[self.task], targets[self.task])

    def forward(self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.metric(outputs[self.task], targets[self.task])

    def compute(self) -> torch.Tensor:
        return self.metric.compute()

    def reset(self) -> None:
        super().reset()
        self.metric.reset()


class TaskView:
    """A joint dataset as one task's evaluation sees it: ``paths`` and (image, that task's target) items."""

    def __init__(self, dataset: Any, task: str) -> None:
        self.dataset, self.task, self.paths = dataset, task, dataset.paths

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, Any]:
        image, targets = self.dataset[item]
        return image, targets[self.task]


def built_task(name: str, config: Task | Mapping[str, Any]) -> Task:
    """One task of a joint model: built from its config (``conf/task/NAME.yaml`` with ``task.options.NAME``
    on top), or already built (from a checkpoint)."""
    if isinstance(config, Task):
        return config
    try:
        return build_task(config)
    except PetlabError as error:  # its own keys are task.options.NAME.KEY here, not task.KEY
        raise PetlabError(str(error).replace("task.", f"task.options.{name}.")) from error


class Joint(Task):
    """``tasks`` (two or more names of ``conf/task/``) on one backbone, built from ``configs`` (each task's
    composed config, see ``conf/task/joint.yaml``; or built tasks); the loss is the sum of each task's loss x
    its weight (``weights``, equal by default). ``options`` sets a task's own keys
    (``task.options.segmentation.classes=trimap``), applied to its config when it is composed. ``monitor``
    defaults to the summed validation loss, which weighs every task: one task's metric can reach its best
    (species accuracy 1.0) while the others are still learning."""

    def __init__(
        self, name: str, tasks: Sequence[str], configs: Mapping[str, Any], weights: Sequence[float] | None = None,
        monitor: str = "val/loss", mode: str | None = None, options: Mapping[str, Any] | None = None,
    ) -> None:  # fmt: skip
        if isinstance(tasks, str) or not isinstance(tasks, Sequence):
            raise PetlabError(f"task.tasks={tasks} must be a list of two or more tasks of conf/task/, e.g. "
                              "task.tasks=[species,segmentation]")  # fmt: skip
        if weights is not None and (isinstance(weights, str) or not isinstance(weights, Sequence)):
            raise PetlabError(f"task.weights={weights} must be a list of numbers, one per task of task.tasks "
                              f"({len(tasks)}), e.g. task.weights=[{','.join(['1'] * len(tasks))}]")  # fmt: skip
        names = [str(task) for task in tasks]
        if len(names) < 2 or len(set(names)) != len(names):
            raise PetlabError(f"task.tasks={names} must name two or more different tasks of conf/task/")
        unknown = sorted(set(options or {}) - set(names))
        if unknown:
            raise PetlabError(f"task.options names {', '.join(unknown)}, which is not in task.tasks={names}")
        weights = [1.0] * len(names) if weights is None else list(weights)
        if len(weights) != len(names):
            raise PetlabError(f"task.weights has {len(weights)} values for {len(names)} tasks: give one per task")
        self.weights = [real_number(f"task.weights[{i}]", weight, 0) for i, weight in enumerate(weights)]
        if sum(self.weights) == 0:
            raise PetlabError("task.weights are all 0: give at least one task a weight > 0")
        self.tasks = {task: built_task(task, configs[task]) for task in names}
        self.metric_modes = {f"{task}/{metric}": mode for task, built in self.tasks.items()
                             for metric, mode in built.metric_modes.items()}  # fmt: skip
        self.test_only = tuple(f"{task}/{metric}" for task, built in self.tasks.items() for metric in built.test_only)
        super().__init__(name, monitor, mode)
        self.spatial = any(task.spatial for task in self.tasks.values())

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "tasks": list(self.tasks), "weights": self.weights,
                "configs": {name: task.spec() for name, task in self.tasks.items()}}  # fmt: skip

    def targets(self) -> dict[str, Target]:
        found: dict[str, Target] = {}
        for name, task in self.tasks.items():
            target = task.targets()
            if not isinstance(target, Target):
                raise PetlabError(f"task.tasks: {name} is itself a joint task; list its tasks instead")
            found[name] = target
        return found

    def encode_targets(self, targets: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: task.encode_targets(targets[name]) for name, task in self.tasks.items()}

    def measured_targets(self, targets: Mapping[str, Any]) -> dict[str, Any]:
        return {name: task.measured_targets(targets[name]) for name, task in self.tasks.items()}

    def merged_with_mirror(
        self, outputs: Mapping[str, torch.Tensor], mirrored: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:  # fmt: skip
        return {name: task.merged_with_mirror(outputs[name], mirrored[name]) for name, task in self.tasks.items()}

    def build_head(self, backbone: Backbone) -> nn.Module:
        return JointHead({name: task.build_head(backbone) for name, task in self.tasks.items()})

    def loss(self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
        losses = [weight * task.loss(outputs[name], targets[name])
                  for (name, task), weight in zip(self.tasks.items(), self.weights, strict=True)]  # fmt: skip
        return torch.stack(losses).sum()

    def metrics(self, stage: str) -> dict[str, Metric]:
        return {f"{name}/{metric}": TaskMetric(name, value)
                for name, task in self.tasks.items() for metric, value in task.metrics(stage).items()}  # fmt: skip

    def kept_for_evaluation(
        self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:  # fmt: skip
        return {f"{name}/{key}": value for name, task in self.tasks.items()
                for key, value in task.kept_for_evaluation(outputs[name], targets[name]).items()}  # fmt: skip

    def write_evaluation(self, evaluation: Evaluation, kept: dict[str, torch.Tensor], dataset: Any) -> None:
        """Each task's evaluation files in ``output_dir/TASK/``, with its learning curves."""
        for name, task in self.tasks.items():
            own = {key.partition("/")[2]: value for key, value in kept.items() if key.startswith(f"{name}/")}
            task.write_evaluation(evaluation.within(name), own, TaskView(dataset, name))

    @property
    def question(self) -> str:
        return "every task's answer"

    def answerer(self) -> EveryTask:
        return EveryTask({name: task.answerer() for name, task in self.tasks.items()})

    def export_spec(self) -> dict[str, Any]:
        specs = {name: task.export_spec() for name, task in self.tasks.items()}
        return {"output": {name: spec["output"] for name, spec in specs.items()},
                "output_names": [f"{name}_{output}" for name, spec in specs.items() for output in spec["output_names"]],
                "tasks": {name: {key: value for key, value in spec.items() if key not in ("output", "output_names")}
                          for name, spec in specs.items()}}  # fmt: skip
