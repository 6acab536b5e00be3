"""What a task is to petlab: the one interface that every task implements.

A task says which targets it reads (see :class:`petlab.data.targets.Target`), builds its head on a
backbone, computes its loss and per-stage torchmetrics with each metric's direction, names the metric to
monitor, writes its evaluation files, answers new images and says how its answers look (in
``petlab.predict``'s table, on the web page and in an exported page). The LightningModule, the entry points,
the page, export, bench, sweeps and reports only talk to this interface, so a new task is a class and a
config file, in petlab or in a package of the user's own (see the README, "Add a task").
"""

from __future__ import annotations

import importlib
import inspect
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue
from torch import nn
from torchmetrics import Metric

from petlab.answers import Answerer
from petlab.data.targets import Target, class_path
from petlab.errors import PetlabError, first_line, user_error
from petlab.interpret import Evaluation
from petlab.models import Backbone

MODES = ("max", "min")
# What a task's head returns: one tensor, or for several tasks trained jointly one per task, by name.
Outputs = torch.Tensor | dict[str, torch.Tensor]


def fp32(outputs: Outputs) -> Outputs:
    """Outputs in fp32 (under bf16/fp16 autocast they come out in low precision)."""
    if isinstance(outputs, dict):
        return {name: value.float() for name, value in outputs.items()}
    return outputs.float()


def mean_probabilities(outputs: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """The log of the mean of two sets of class probabilities (dimension 1) from their logits: logits
    themselves, whose softmax is that mean."""
    return ((outputs.softmax(dim=1) + others.softmax(dim=1)) / 2).log()


class Task(ABC):
    """A task named ``name`` (the configuration's name, ``species``); ``monitor`` is the validation metric
    that selects checkpoints, stops early and ranks sweeps, and ``mode`` its direction, which each metric
    declares (:attr:`metric_modes`): given, it must agree."""

    #: The metrics that :meth:`metrics` returns besides the loss, and whether each is better higher (max) or
    #: lower (min); the loss is always better lower. Those in :attr:`test_only` are measured on the test
    #: split only; the others at every stage, and any of them can be monitored.
    metric_modes: ClassVar[dict[str, str]]
    test_only: ClassVar[tuple[str, ...]] = ()
    #: A spatial task answers where things are (every pixel's class, a box): petlab.predict shows it the
    #: whole image at the validation scale (not the centre crop, which could cut off what it looks for).
    spatial: ClassVar[bool] = False

    def __init__(self, name: str, monitor: str, mode: str | None = None) -> None:
        modes = {**{name: mode for name, mode in self.metric_modes.items() if name not in self.test_only},
                 "loss": "min"}  # fmt: skip
        stage, _, metric = str(monitor).partition("/")
        if stage != "val" or metric not in modes:
            valid = ", ".join(f"val/{metric}" for metric in modes)
            raise PetlabError(f"task.monitor={monitor} is not a metric of task={name}: choose {valid}")
        declared = modes[metric]
        if mode is not None and mode not in MODES:
            raise PetlabError(f"task.mode={mode} must be max or min (or left out: {monitor} says {declared})")
        if mode is not None and mode != declared:
            better = "higher" if declared == "max" else "lower"
            raise PetlabError(f"task.mode={mode}, but {monitor} is better {better}: leave task.mode out "
                              f"(or set task.mode={declared})")  # fmt: skip
        self.name, self.monitor, self.mode = name, monitor, declared

    @property
    def metric_names(self) -> tuple[str, ...]:
        """The metrics measured at every stage (shown on the progress bar)."""
        return tuple(name for name in self.metric_modes if name not in self.test_only)

    def directions(self) -> dict[str, str]:
        """Every metric the task logs (``val/acc``, ``test/f1_macro``) and whether it is better higher (max) or
        lower (min): what reports rank by, never guessed from a name."""
        modes = {**self.metric_modes, "loss": "min"}
        return {f"{stage}/{name}": mode for stage in ("train", "val", "test") for name, mode in modes.items()
                if stage == "test" or name not in self.test_only}  # fmt: skip

    @property
    def question(self) -> str:
        """What the task answers, as the page's title puts it ("which breed?")."""
        return self.name

    @property
    def best_metric(self) -> str:
        """The best monitored value so far (``val/acc_best``): what sweeps optimise and reports rank."""
        return f"{self.monitor}_best"

    def spec(self) -> dict[str, Any]:
        """Plain values that rebuild this task, with its class (saved in checkpoints; targets and other tasks
        inside as their own specs): see :func:`from_spec`."""
        return {"class": class_path(type(self)), "name": self.name, "monitor": self.monitor, "mode": self.mode}

    @abstractmethod
    def targets(self) -> Target | dict[str, Target]:
        """What the data module reads for this task: one target, or several by key."""

    def encode_targets(self, targets: Any) -> Any:
        """The batch's targets as the loss and the metrics take them (the data's own by default)."""
        return targets

    def measured_targets(self, targets: Any) -> Any:
        """Encoded targets as the metrics take them (the same by default; mixed soft labels -> the dominant)."""
        return targets

    @abstractmethod
    def merged_with_mirror(self, outputs: Outputs, mirrored: Outputs) -> Outputs:
        """Test-time augmentation: fp32 ``outputs`` for images merged with ``mirrored``, the outputs for their
        horizontal mirrors (mapped back to the unmirrored image first), in the same form."""

    @abstractmethod
    def build_head(self, backbone: Backbone) -> nn.Module:
        """The task's layers on ``backbone``; called as ``head(feature_maps, pooled, image_size)`` with the
        stage feature maps, the pooled vector and the input's (height, width)."""

    @abstractmethod
    def loss(self, outputs: Outputs, targets: Any) -> torch.Tensor:
        """The training loss of fp32 ``outputs`` against ``targets``."""

    @abstractmethod
    def metrics(self, stage: str) -> dict[str, Metric]:
        """Fresh torchmetrics for ``stage`` (train, val, test), keyed by name, updated with (outputs, targets):
        those of :attr:`metric_modes`, the :attr:`test_only` ones for the test stage only."""

    @abstractmethod
    def kept_for_evaluation(self, outputs: Outputs, targets: Any) -> dict[str, torch.Tensor]:
        """What of a test batch the evaluation files need, per image along dimension 0."""

    @abstractmethod
    def write_evaluation(self, evaluation: Evaluation, kept: dict[str, torch.Tensor], dataset: Any) -> None:
        """Write the evaluation files and figures (see :class:`petlab.interpret.Evaluation`) from the kept test
        outputs; ``dataset`` is the evaluated split (``dataset.paths``, ``dataset[i]`` = (image, target))."""

    def label_probabilities(self, kept: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, list[str]] | None:
        """For the audit's label errors: the class probabilities (N, classes) and given labels (N; a negative
        one for an image without) in :meth:`kept_for_evaluation`'s ``kept``, and the class names. None (the
        default): the task learns no single label per image, and the audit skips that section saying so."""
        return None

    # Answers for new images: computed with numpy from the network's outputs, so that petlab.predict, the
    # page and an exported page (which has no torch) give the same answers from the same code.

    @abstractmethod
    def answerer(self) -> Answerer:
        """What turns the network's outputs for an image into the task's answer (see
        :class:`petlab.answers.Answerer`)."""

    @abstractmethod
    def export_spec(self) -> dict[str, Any]:
        """What an exported model outputs, for its JSON sidecar: ``output`` describes each output in words and
        ``output_names`` names them in order."""


def target_of(task: str, value: Any, kind: type[Target], default: str | None = None) -> Target:
    """The target a task's ``task.target`` gives: a ``kind`` object (a config's ``_target_``, a checkpoint's
    spec), or a name: any for a label column (``default`` None), else the kind's usual name."""
    if isinstance(value, Target):
        if not isinstance(value, kind):
            raise PetlabError(f"task.target: task={task} learns {kind.what}, and {type(value).__name__} gives "
                              f"{value.what}: give a {kind.__name__} (or a subclass of it)")  # fmt: skip
        return value
    if isinstance(value, str) and value and (default is None or value == default):
        return kind(value)
    raise PetlabError(f"task.target={value}: task={task} reads {kind.what} (task.target={default}), or a "
                      f"{kind.__name__} class of your own given with _target_")  # fmt: skip


def trusted_class(path: str, trusted: Sequence[str] = ()) -> type[Task] | type[Target]:
    """The task or target class ``module.Name`` that a checkpoint names, imported only from petlab or from the
    packages in ``trusted`` (what the user configured): a checkpoint from elsewhere cannot make petlab import
    a module of its choosing."""
    module_name, _, name = str(path).rpartition(".")
    package = module_name.split(".")[0]
    if package != "petlab" and package not in trusted:
        raise PetlabError(
            f"this checkpoint was trained with {path}, from the package {package}, which is not petlab's: if you "
            f"trust it, add plugins=[{package}] (petlab imports no code a checkpoint names unless told to)"
        )
    try:
        found = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as error:
        raise PetlabError(f"{path}, which this checkpoint was trained with, cannot be imported ({error}): "
                          f"install the package {package}, or put it on PYTHONPATH") from error  # fmt: skip
    if not (isinstance(found, type) and issubclass(found, (Task, Target))):
        raise PetlabError(f"{path} is not a petlab task or target: this checkpoint cannot be used")
    return found


def from_spec(spec: Mapping[str, Any], trusted: Sequence[str] = ()) -> Any:
    """The task (or target) a spec describes (see :meth:`Task.spec`), with the tasks and targets inside it."""
    if not isinstance(spec, Mapping) or "class" not in spec:
        raise PetlabError(f"not a task or target spec: {spec!r}")
    cls = trusted_class(spec["class"], trusted)
    arguments = {key: built(value, trusted) for key, value in spec.items() if key != "class"}
    return cls(**arguments)


def built(value: Any, trusted: Sequence[str]) -> Any:
    if isinstance(value, Mapping) and "class" in value:
        return from_spec(value, trusted)
    if isinstance(value, Mapping):
        return {key: built(item, trusted) for key, item in value.items()}
    return value


def build_task(config: Any) -> Task:
    """The task that ``config`` (a run's ``task``: its ``_target_`` and settings) describes. A class that
    cannot be imported, a missing key or a setting the task refuses is a one-line PetlabError."""
    try:
        config = OmegaConf.to_container(config, resolve=True, throw_on_missing=True) if isinstance(
            config, DictConfig) else dict(config)  # fmt: skip
    except MissingMandatoryValue as error:
        raise PetlabError(f"task.{error.full_key.removeprefix('task.')} is required: set it in the task's config "
                          "or on the command line") from error  # fmt: skip
    name, target = config.get("name", "?"), config.get("_target_")
    if not target:
        raise PetlabError(f"task={name} has no _target_: choose a task of conf/task, or name your task's class "
                          "with task._target_=package.module.Class")  # fmt: skip
    try:
        task_class = get_class(target)
    except (ImportError, ValueError, AttributeError) as error:
        raise PetlabError(f"task._target_={target} cannot be imported ({first_line(error)}): install its package "
                          "or put it on PYTHONPATH") from error  # fmt: skip
    if not (isinstance(task_class, type) and issubclass(task_class, Task)):
        raise PetlabError(f"task._target_={target} is not a petlab task (a subclass of petlab.tasks.Task)")
    accepted = inspect.signature(task_class.__init__).parameters
    if not any(parameter.kind is parameter.VAR_KEYWORD for parameter in accepted.values()):
        unknown = sorted(key for key in config if not key.startswith("_") and key not in accepted)
        if unknown:
            keys = ", ".join(f"task.{key}" for key in unknown)
            settings = ", ".join(key for key in accepted if key not in ("self", "name"))
            raise PetlabError(f"task={name} has no setting {keys}: its settings are {settings}")
    try:
        return instantiate(config, _convert_="all")
    except InstantiationException as error:
        raise user_error(error) or PetlabError(
            f"task={name} does not take these settings ({first_line(error.__cause__ or error)}): see its config in "
            "conf/task for its keys"
        ) from error
