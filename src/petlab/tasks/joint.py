"""Several tasks trained jointly: one backbone, one head per task, a weighted sum of their losses.

Each head's loss and metrics use only the images that have its target (every task already ignores the
images without one: border-only masks, NaN boxes), so a batch mixes images with and without a box.
Outputs, targets and what the evaluation keeps are dicts keyed by head; metrics are logged per head
(``val/species/acc``, ``val/head/iou``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchmetrics import Metric
from torchmetrics.wrappers.abstract import WrapperMetric

from petlab.config import real_number
from petlab.errors import PetlabError
from petlab.models import Backbone
from petlab.tasks.base import Task
from petlab.tasks.classification import Classification
from petlab.tasks.head import HeadBox
from petlab.tasks.segmentation import Segmentation

# The heads a joint model can have: the task class and its fixed settings (those of conf/task/NAME.yaml).
HEADS: dict[str, tuple[type[Task], dict[str, Any]]] = {
    "species": (Classification, {"target": "species"}),
    "breed": (Classification, {"target": "breed"}),
    "segmentation": (Segmentation, {"target": "trimap"}),
    "head": (HeadBox, {"target": "box"}),
}
SHARED_KEYS = ("kind", "name", "monitor", "mode")  # a head's spec keys that the joint task sets itself


def data_targets(heads: Sequence[str]) -> list[str]:
    """What the data module must read for ``heads`` (an unknown name is kept, for Joint to refuse)."""
    return [HEADS[head][1]["target"] if head in HEADS else str(head) for head in heads]


class JointHead(nn.Module):
    """The heads of the tasks side by side on one backbone: a dict of outputs, keyed by head."""

    def __init__(self, heads: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.heads = nn.ModuleDict(heads)

    def forward(
        self, features: list[torch.Tensor], pooled: torch.Tensor, size: Sequence[int]
    ) -> dict[str, torch.Tensor]:  # fmt: skip
        return {name: head(features, pooled, size) for name, head in self.heads.items()}


class HeadMetric(WrapperMetric):
    """One head's metric, fed that head's outputs and targets from the joint dicts (its states, and their
    synchronisation across processes, stay the wrapped metric's)."""

    def __init__(self, head: str, metric: Metric) -> None:
        super().__init__()
        self.head, self.metric = head, metric

    def update(self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]) -> None:
        self.metric.update(outputs[self.head], targets[self.head])

    def forward(self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.metric(outputs[self.head], targets[self.head])

    def compute(self) -> torch.Tensor:
        return self.metric.compute()

    def reset(self) -> None:
        super().reset()
        self.metric.reset()


class HeadView:
    """A joint dataset as one head's evaluation sees it: ``paths`` and (image, that head's target) items."""

    def __init__(self, dataset: Any, target: str) -> None:
        self.dataset, self.target, self.paths = dataset, target, dataset.paths

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, Any]:
        image, targets = self.dataset[item]
        return image, targets[self.target]


class PrefixedWriter:
    """A TensorBoard writer whose tags are prefixed by a head's name, so heads' figures do not collide."""

    def __init__(self, writer: Any, prefix: str) -> None:
        self.writer, self.prefix = writer, prefix

    def add_figure(self, tag: str, *args: Any, **kwargs: Any) -> None:
        self.writer.add_figure(f"{self.prefix}/{tag}", *args, **kwargs)

    def add_scalar(self, tag: str, *args: Any, **kwargs: Any) -> None:
        self.writer.add_scalar(f"{self.prefix}/{tag}", *args, **kwargs)

    def add_text(self, tag: str, *args: Any, **kwargs: Any) -> None:
        self.writer.add_text(f"{self.prefix}/{tag}", *args, **kwargs)


class Joint(Task):
    """``heads`` (two or more of :data:`HEADS`) on one backbone; the loss is the sum of each head's loss x
    its weight (``weights``, equal by default). ``options`` sets a head's own keys
    (``task.options.segmentation.classes=trimap``); ``label_classes`` the classes of the label heads
    (from the data); ``target`` (what the data module reads) follows from ``heads``. ``monitor``
    defaults to the summed validation loss, which weighs every head: one head's metric can reach its best
    (species accuracy 1.0) while the others are still learning."""

    kind = "joint"

    def __init__(
        self, name: str, heads: Sequence[str], weights: Sequence[float] | None = None, monitor: str = "val/loss",
        mode: str = "min", options: Mapping[str, Mapping[str, Any]] | None = None,
        label_classes: Mapping[str, Sequence[str]] | None = None, target: Sequence[str] | None = None,
    ) -> None:  # fmt: skip
        heads = list(heads)
        valid = ", ".join(HEADS)
        if len(heads) < 2 or len(set(heads)) != len(heads) or not set(heads) <= set(HEADS):
            raise PetlabError(f"task.heads={heads} must name two or more different heads of: {valid}")
        if target is not None and list(target) != data_targets(heads):
            raise PetlabError(f"task.target={list(target)} is set by task.heads (it reads {data_targets(heads)}): "
                              "leave task.target out")  # fmt: skip
        weights = [1.0] * len(heads) if weights is None else list(weights)
        if len(weights) != len(heads):
            raise PetlabError(f"task.weights has {len(weights)} values for {len(heads)} heads: give one per head")
        self.weights = [real_number(f"task.weights[{i}]", weight, 0) for i, weight in enumerate(weights)]
        if sum(self.weights) == 0:
            raise PetlabError("task.weights are all 0: give at least one head a weight > 0")
        options, label_classes = dict(options or {}), dict(label_classes or {})
        unknown = sorted(set(options) - set(heads))
        if unknown:
            raise PetlabError(f"task.options names {', '.join(unknown)}, which is not in task.heads={heads}")
        for head, settings in options.items():
            if settings.get("target", HEADS[head][1]["target"]) != HEADS[head][1]["target"]:
                raise PetlabError(f"task.options.{head}.target: this head reads "
                                  f"{HEADS[head][1]['target']}; leave it out")  # fmt: skip
        self.tasks: dict[str, Task] = {}
        for head in heads:
            task_class, fixed = HEADS[head]
            settings = {**fixed, **options.get(head, {})}
            if task_class is Classification:
                # The data's classes when training; a checkpoint's own (in options) when loading it.
                settings["class_names"] = label_classes.get(head, settings.get("class_names", ["?", "?"]))
            try:
                self.tasks[head] = task_class(head, **{k: v for k, v in settings.items() if k not in SHARED_KEYS})
            except PetlabError as error:  # the head's own keys are task.options.HEAD.KEY here, not task.KEY
                raise PetlabError(str(error).replace("task.", f"task.options.{head}.")) from error
        self.metric_names = tuple(f"{head}/{metric}" for head, task in self.tasks.items()
                                  for metric in task.metric_names)  # fmt: skip
        super().__init__(name, monitor, mode)
        self.heads = heads
        self.spatial = any(task.spatial for task in self.tasks.values())

    def spec(self) -> dict[str, Any]:
        options = {head: {k: v for k, v in task.spec().items() if k not in SHARED_KEYS}
                   for head, task in self.tasks.items()}  # fmt: skip
        return {**super().spec(), "heads": self.heads, "weights": self.weights, "options": options}

    def label_classes(self) -> dict[str, list[str]]:
        return {target: classes for task in self.tasks.values() for target, classes in task.label_classes().items()}

    def data_options(self) -> dict[str, Any]:
        return {"target": [task.data_options()["target"] for task in self.tasks.values()]}

    def encode_targets(self, targets: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {head: task.encode_targets(targets[task.data_options()["target"]]) for head, task in self.tasks.items()}

    def merged_with_mirror(
        self, outputs: Mapping[str, torch.Tensor], mirrored: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:  # fmt: skip
        return {head: task.merged_with_mirror(outputs[head], mirrored[head]) for head, task in self.tasks.items()}

    def head(self, backbone: Backbone) -> nn.Module:
        return JointHead({head: task.head(backbone) for head, task in self.tasks.items()})

    def loss(self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
        losses = [weight * task.loss(outputs[head], targets[head])
                  for (head, task), weight in zip(self.tasks.items(), self.weights, strict=True)]  # fmt: skip
        return torch.stack(losses).sum()

    def metrics(self, stage: str) -> dict[str, Metric]:
        return {f"{head}/{name}": HeadMetric(head, metric)
                for head, task in self.tasks.items() for name, metric in task.metrics(stage).items()}  # fmt: skip

    def kept_for_evaluation(
        self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:  # fmt: skip
        return {f"{head}/{name}": value for head, task in self.tasks.items()
                for name, value in task.kept_for_evaluation(outputs[head], targets[head]).items()}  # fmt: skip

    def write_evaluation(
        self, output_dir: Path, kept: dict[str, torch.Tensor], dataset: Any, experiment: Any | None, step: int
    ) -> None:  # fmt: skip
        """Each head's evaluation files in ``output_dir/HEAD/``, with its learning curves."""
        from petlab.interpret import learning_curves

        for head, task in self.tasks.items():
            own = {name.partition("/")[2]: value for name, value in kept.items() if name.startswith(f"{head}/")}
            writer = PrefixedWriter(experiment, head) if experiment is not None else None
            view = HeadView(dataset, task.data_options()["target"])
            task.write_evaluation(output_dir / head, own, view, writer, step)
            curves = learning_curves(output_dir / "tensorboard", f"{head}/{task.monitor.partition('/')[2]}")
            if curves is not None:
                curves.savefig(output_dir / head / "learning_curves.png", dpi=110)

    def predictions(
        self, outputs: Mapping[str, torch.Tensor], images: Sequence[Any], top_k: int
    ) -> list[dict[str, Any]]:  # fmt: skip
        answers = {head: task.predictions(outputs[head], images, top_k) for head, task in self.tasks.items()}
        return [{head: answers[head][i] for head in self.tasks} for i in range(len(images))]

    def write_prediction(
        self, outputs: Mapping[str, torch.Tensor], image: Any, output_dir: Path, stem: str
    ) -> dict[str, dict[str, str]]:
        """Each head's files, under its name (beside its answer)."""
        return {head: task.write_prediction(outputs[head], image, output_dir, stem)
                for head, task in self.tasks.items()}  # fmt: skip

    def prediction_table(self, results: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
        headers, rows = ["image"], [[result["image"]] for result in results]
        for head, task in self.tasks.items():
            own = [{"image": result["image"], **result[head]} for result in results]
            head_headers, head_rows = task.prediction_table(own)
            headers += [f"{head}: {header}" for header in head_headers[1:]]
            for row, head_row in zip(rows, head_rows, strict=True):
                row += head_row[1:]
        return headers, rows

    def export_spec(self) -> dict[str, Any]:
        specs = {head: task.export_spec() for head, task in self.tasks.items()}
        return {"kind": self.kind, "output": {head: spec["output"] for head, spec in specs.items()},
                "output_names": [f"{head}_{name}" for head, spec in specs.items() for name in spec["output_names"]],
                "heads": {head: {k: v for k, v in spec.items() if k not in ("output", "output_names")}
                          for head, spec in specs.items()}}  # fmt: skip
