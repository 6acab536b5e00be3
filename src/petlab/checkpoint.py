"""Loading a petlab checkpoint safely: tensors and plain types only, never arbitrary pickled code."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from petlab.data.targets import Box, Label, Mask, class_path
from petlab.data.transforms import DEFAULT_CROP_MARGIN, resized_side
from petlab.errors import PetlabError, first_line
from petlab.module import CHECKPOINT_FORMAT, PetModule
from petlab.tasks import Classification, HeadBox, Joint, Segmentation, Task, from_spec


@dataclass
class Checkpoint:
    """A trained model (in eval mode) and what it needs to read new images."""

    model: PetModule
    path: Path
    data_config: dict[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> Task:
        return self.model.task

    @property
    def class_names(self) -> list[str]:
        """The classes of a classification task (empty for other tasks)."""
        return list(getattr(self.task, "class_names", []))

    @property
    def name(self) -> str:
        """The checkpoint named by its run (``RUN/epoch_003.ckpt``), never by where it lies on this machine."""
        in_run = self.path.parent.name == "checkpoints"
        return f"{self.path.parent.parent.name}/{self.path.name}" if in_run else self.path.name

    @property
    def image_size(self) -> int:
        return int(self.model.hparams.image_size)

    @property
    def side(self) -> int:
        """The side images are resized to before the centre ``image_size`` crop, as in validation."""
        return resized_side(self.image_size, float(self.data_config.get("crop_margin", DEFAULT_CROP_MARGIN)))

    @property
    def mean(self) -> list[float]:
        return list(self.model.hparams.mean)

    @property
    def std(self) -> list[float]:
        return list(self.model.hparams.std)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The content of a checkpoint written by ``python -m petlab`` (``weights_only=True``: no code is executed).

    A missing, truncated, corrupt or foreign file is a PetlabError that says so in one line.
    """
    if not isinstance(path, str | Path) or not str(path):
        raise PetlabError(f"ckpt_path={path!r} is not a file path: give a .ckpt file from a run's checkpoints/ folder")
    path = Path(path).expanduser()
    if path.is_dir():
        raise PetlabError(f"ckpt_path={path} is a folder: give a .ckpt file, e.g. {path}/checkpoints/last.ckpt")
    if not path.is_file():
        raise PetlabError(f"ckpt_path={path} does not exist: give a .ckpt file from a run's checkpoints/ folder")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a garbage file can fail in the unpickler in many ways
        raise PetlabError(
            f"ckpt_path={path} is not a loadable petlab checkpoint (it may be corrupt, or hold code that is "
            f"not loaded for safety): {first_line(error).split('. ')[0]}"
        ) from error
    if not isinstance(content, dict) or "petlab" not in content or "hyper_parameters" not in content:
        raise PetlabError(f"ckpt_path={path} is not a petlab checkpoint: train one with python -m petlab")
    return content


def upgrade_format_1(hparams: dict[str, Any], state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A first-release checkpoint (one ``PetClassifier`` with flat hyperparameters and its network under
    ``net.``) as today's module: the backbone's layers under ``backbone.body.``, the classifier as the head."""
    arch = hparams["arch"]
    task = {"kind": "classification", "name": hparams["task"], "target": hparams["task"],
            "class_names": list(hparams["class_names"]), "hidden": hparams.get("hidden", 512),
            "dropout": hparams.get("dropout", 0.5), "label_smoothing": hparams.get("label_smoothing", 0.0)}  # fmt: skip
    kept = ("image_size", "mean", "std", "freeze_epochs", "backbone_lr_factor", "channels_last")
    upgraded = {"backbone": {"name": arch}, "task": task, **{key: hparams[key] for key in kept if key in hparams}}

    def renamed(key: str) -> str:
        key = key.replace("net._orig_mod.", "net.")
        if key == "val_acc_best":
            return "monitor_best"
        if not key.startswith("net."):
            return key
        first, _, rest = key.removeprefix("net.").partition(".")
        if arch == "cnn" and first.isdigit() and int(first) > 4:  # Flatten was layer 4; the classifier follows
            return f"head.{int(first) - 5}.{rest}"
        if first == "fc":
            return f"head.{rest}"
        return f"backbone.body.{first}.{rest}"

    return upgraded, {renamed(key): value for key, value in state.items()}


# Format 2 named a task by its kind, and a joint model's tasks by the names petlab knew then.
FORMAT_2_KINDS = {"classification": (Classification, Label), "segmentation": (Segmentation, Mask),
                  "head": (HeadBox, Box)}  # fmt: skip
FORMAT_2_JOINT_KINDS = {"species": "classification", "breed": "classification", "segmentation": "segmentation",
                        "head": "head"}  # fmt: skip


def upgrade_format_2_task(spec: dict[str, Any]) -> dict[str, Any]:
    """A format-2 task spec (``kind``, the target's name, a classifier's ``class_names``) named by classes."""
    spec = dict(spec)
    kind = spec.pop("kind")
    if kind == "joint":
        options = spec.pop("options", {})
        configs = {head: upgrade_format_2_task({"kind": FORMAT_2_JOINT_KINDS[head], "name": head, **options[head]})
                   for head in spec["heads"]}  # fmt: skip
        tasks = spec.pop("heads")
        return {"class": class_path(Joint), **spec, "tasks": tasks, "configs": configs}
    task_class, target_class = FORMAT_2_KINDS[kind]
    target = {"class": class_path(target_class), "name": spec.pop("target")}
    if target_class is Label:
        target["classes"] = spec.pop("class_names")
    return {"class": class_path(task_class), **spec, "target": target}


def upgrade_format_2(hparams: dict[str, Any], state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A format-2 checkpoint as format 3: its task named by classes, a joint model's heads under ``head.tasks``."""
    upgraded = {**hparams, "task": upgrade_format_2_task(hparams["task"])}
    return upgraded, {key.replace("head.heads.", "head.tasks.", 1): value for key, value in state.items()}


def load_checkpoint(path: str | Path, plugins: Sequence[str] = ()) -> Checkpoint:
    """Load a checkpoint written by ``python -m petlab`` as a model in eval mode (see :func:`read_checkpoint`).

    Its task and target classes are imported only from petlab and from the packages ``plugins`` names:
    a checkpoint cannot make petlab import code of its own choosing. Checkpoints of earlier formats are
    upgraded as they load.
    """
    content = read_checkpoint(path)
    path = Path(path).expanduser()
    hparams, state = dict(content["hyper_parameters"]), content["state_dict"]
    checkpoint_format = content["petlab"].get("format", 1)
    if checkpoint_format > CHECKPOINT_FORMAT:
        raise PetlabError(
            f"ckpt_path={path} was written by a newer petlab (checkpoint format {checkpoint_format}, this one "
            f"reads up to {CHECKPOINT_FORMAT}): update petlab to use it"
        )
    try:
        if checkpoint_format < 2:
            hparams, state = upgrade_format_1(hparams, state)
        if checkpoint_format < 3:
            hparams, state = upgrade_format_2(hparams, state)
        task = from_spec(hparams.pop("task"), plugins)
        if not isinstance(task, Task):
            raise PetlabError(f"ckpt_path={path} names a target where its task should be: it cannot be used")
        # The weights come from the checkpoint: never download or read the training-time weight source again.
        hparams["backbone"] = {**hparams["backbone"], "pretrained": False, "weights_path": None}
        hparams["compile"] = False
        model = PetModule(task=task, **hparams)
        state = dict(state)
        model.restore_best(state, content["petlab"])
        model.load_state_dict(state)
    except PetlabError as error:
        raise PetlabError(f"ckpt_path={path}: {error}") from error
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise PetlabError(
            f"ckpt_path={path} does not fit this petlab's models ({first_line(error)[:200]}): evaluate it with "
            "the petlab version that trained it"
        ) from error
    model.eval()
    data_config = dict(content["petlab"].get("data") or {})
    # Names of the first release: crop_margin was cache_margin. Targets now come from the task.
    if "cache_margin" in data_config:
        data_config["crop_margin"] = data_config.pop("cache_margin")
    for old in ("task", "target"):
        data_config.pop(old, None)
    return Checkpoint(model, path, data_config)


def checkpoint_datamodule(checkpoint: Checkpoint, data_config: Any = None, **options: Any) -> Any:
    """The data module ``checkpoint`` was trained with (or ``data_config``, any dataset with its classes),
    reading images at its size and normalisation as validation did: no upsampling, no progressive resizing,
    never downloading."""
    if isinstance(data_config, DictConfig):
        data_config = OmegaConf.to_container(data_config, resolve=True)
    data_config = {key: value for key, value in (data_config or checkpoint.data_config).items() if key != "target"}
    return instantiate(
        data_config, targets=checkpoint.task.targets(), image_size=checkpoint.image_size,
        mean=checkpoint.mean, std=checkpoint.std, upsample="none", progressive_resize=None, download=False,
        _convert_="all", **options,
    )  # fmt: skip
