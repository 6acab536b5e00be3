"""What TensorBoard's HParams tab compares between runs, and the session each run (or failed trial) writes.

TensorBoard lists the hyperparameters that differ between the runs shown first, then the others, each group
in name order, and ticks the first five. So the headline settings go under short capitalised names, which
sort before every dotted config key: a sweep's varied keys and the headline are what a person sees first.
Nested settings are flattened (``data.augment.hflip``), never one printed dict.

Each run's session is written to its own ``tensorboard/hparams`` folder with its ``hp/*`` metrics only, and
with no experiment summary: TensorBoard then builds the table from every session it finds (a segmentation
run's metrics beside a classifier's) instead of taking one run's list of columns for all.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf

from petlab.config import NOT_HYPERPARAMETERS

# Config key -> the name its column has.
HEADLINE = {"task.name": "Task", "model.backbone.name": "Backbone", "optimizer.lr": "LR", "seed": "Seed"}
# The other settings a person compares (and whatever the command line or a sweep set), not every path.
COMPARED = ("model.backbone.pretrained", "optimizer._target_", "optimizer.weight_decay", "scheduler._target_",
            "data.batch_size", "data.image_size", "trainer.max_epochs", "data.augment", "data.upsample",
            "data.progressive_resize", "model.pool", "model.ema", "test_tta")  # fmt: skip
SESSION_FOLDER = "hparams"


def comparable(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` by config key as the tab shows them: headline keys renamed, nested mappings flattened to
    dotted keys, lists and other values as text, unset ones left out."""
    shown: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            shown.update(comparable({f"{key}.{inner}": item for inner, item in value.items()}))
        elif value is not None:
            shown[HEADLINE.get(key, key)] = value if isinstance(value, int | float | str | bool) else str(value)
    return shown


def hparams_of(cfg: DictConfig, run_name: str) -> dict[str, Any]:
    """The headline and compared settings of ``cfg`` and every key set on the command line (a sweep's varied
    keys among them), a config group chosen on the command line (``model=cnn``) by the option's name, and
    ``Run``: the run folder's name (TensorBoard's own trial id is its path, cut to its first characters)."""
    keys, choices = [*HEADLINE, *COMPARED], {}
    if HydraConfig.initialized():
        choices = HydraConfig.get().runtime.choices
        overridden = (item.lstrip("+~").split("=", 1)[0] for item in HydraConfig.get().overrides.task)
        keys += [key for key in overridden if not key.startswith(NOT_HYPERPARAMETERS) and key not in keys]
    values: dict[str, Any] = {}
    for key in keys:
        if key in choices and choices[key] in (values.get(headline) for headline in HEADLINE):
            continue  # task=breed: the Task column says it already
        value = choices[key] if key in choices else OmegaConf.select(cfg, key, default=None)
        value = OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig | ListConfig) else value
        if key.endswith("._target_") and isinstance(value, str):
            key, value = key.removesuffix("._target_"), value.rsplit(".", 1)[-1]
        values[key] = value
    return {"Run": run_name, **comparable(values)}


def write_session(
    tensorboard_dir: Path, params: Mapping[str, Any], metrics: Mapping[str, float], step: int = 0
) -> None:
    """The HParams session in ``tensorboard_dir/hparams``: ``params`` with ``metrics`` (as scalars at ``step``),
    in place of any earlier one."""
    # Imported here: a search's worker writes a failed trial's session and otherwise does without torch.
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    _, start, end = hparams(dict(params), dict(metrics))
    folder = tensorboard_dir / SESSION_FOLDER
    for earlier in folder.glob("events.out.tfevents.*"):  # a resumed run's earlier session: one row a run
        earlier.unlink()
    with SummaryWriter(str(folder)) as writer:
        writer.file_writer.add_summary(start, step)
        writer.file_writer.add_summary(end, step)
        for name, value in metrics.items():
            writer.add_scalar(name, value, step)
