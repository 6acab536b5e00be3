"""Resuming a run: ``python -m petlab ckpt_path=last|FILE [key=value ...]`` continues it as it was configured.

The run's own saved config (``RUN/.hydra/config.yaml``, or the config of its latest resume) is the primary
config, so nothing has to be repeated; overrides given with the resume are applied on top of it and recorded
in ``RUN/.hydra/resume-ID/``, beside the original, which is never rewritten. Overrides that change what the
checkpoint needs (another model, task, classes or split) are refused by :func:`check_resume`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore

from petlab.config import config_dir, run_id
from petlab.errors import PetlabError, shown
from petlab.resolvers import register_resolvers

RESUME_CONFIG = "petlab_resume"
RECORD_PREFIX = "resume-"
# Options of Hydra's command line that take a value: that value is not an override.
VALUE_OPTIONS = {"--cfg", "-c", "--package", "-p", "--config-name", "-cn", "--config-path", "-cp",
                 "--config-dir", "-cd", "--info", "-i", "--experimental-rerun"}  # fmt: skip


def split_arguments(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Hydra's options (with their values) and the ``key=value`` overrides of a command line."""
    options, overrides, skip = [], [], False
    for arg in argv:
        if skip or arg.startswith("-"):
            options.append(arg)
            skip = not skip and arg in VALUE_OPTIONS
        else:
            overrides.append(arg)
    return options, overrides


def overrides_of(argv: Sequence[str]) -> list[str]:
    """The ``key=value`` overrides of a command line, without Hydra's options and their values."""
    return split_arguments(argv)[1]


def last_value(overrides: Sequence[str], key: str) -> str | None:
    """The value the last override of ``key`` gives, unquoted."""
    values = [item.split("=", 1)[1] for item in overrides if item.split("=", 1)[0] == key]
    if not values:
        return None
    value = values[-1]
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1].replace(f"\\{value[0]}", value[0]).replace("\\\\", "\\")
    return value


def quoted(path: str | Path) -> str:
    """``path`` as a value of Hydra's override grammar, whatever characters it holds."""
    return "'" + str(path).replace("\\", "\\\\").replace("'", "\\'") + "'"


def outputs_dir(overrides: Sequence[str]) -> Path:
    """Where runs are written (``paths.log_dir``), as the configs compose it with the paths overrides given."""
    register_resolvers()
    given = [item for item in overrides if item.lstrip("+").startswith("paths.")]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return Path(compose("train", overrides=given).paths.log_dir).expanduser()


def newest_training(outputs: Path) -> Path | None:
    """The training run under ``outputs`` (a run, sweep job or trial: its config has an optimizer) that started
    or saved a checkpoint last; evaluations and audits are not training runs. Configs are read newest first,
    until one is a training run's (not all of them, which on a disk of many runs took seconds)."""
    moments = []
    for config in outputs.glob("**/.hydra/config.yaml"):
        last = config.parent.parent / "checkpoints" / "last.ckpt"
        moments.append((max(config.stat().st_mtime, last.stat().st_mtime if last.is_file() else 0.0), config))
    for _, config in sorted(moments, key=lambda moment: moment[0], reverse=True):
        try:
            content = yaml.safe_load(config.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(content, dict) and "optimizer" in content and "audit" not in content:
            return config.parent.parent
    return None


def latest_checkpoint(overrides: Sequence[str]) -> Path:
    """``checkpoints/last.ckpt`` of the run named by ``hydra.run.dir=``, else the newest one under the outputs."""
    run_dir = last_value(overrides, "hydra.run.dir")
    if run_dir is not None:
        candidates = [Path(run_dir).expanduser() / "checkpoints" / "last.ckpt"]
        places = f"{candidates[0]}"
    else:
        outputs = outputs_dir(overrides)
        candidates = list(outputs.glob("**/checkpoints/last.ckpt"))
        places = f"every run and sweep job under {outputs}"
        newest = newest_training(outputs)
        if newest is not None and not (newest / "checkpoints" / "last.ckpt").is_file():
            found = [path for path in candidates if path.is_file()]
            other = max(found, key=lambda path: path.stat().st_mtime).parent.parent if found else None
            instead = f"; the newest run with one is {other} (ckpt_path={other}/checkpoints/last.ckpt)" if other else ""
            raise PetlabError(
                f"ckpt_path=last: the most recent run, {newest}, has no checkpoint (it stopped before its first "
                f"epoch ended), so there is nothing to resume: start it again{instead}"
            )
    found = [path for path in candidates if path.is_file()]
    if not found:
        raise PetlabError(
            f"ckpt_path=last found no checkpoints/last.ckpt (looked at {places}): give the checkpoint's path, "
            "or the run's directory with hydra.run.dir=DIR"
        )
    return max(found, key=lambda path: path.stat().st_mtime).resolve()


def saved_config(run_dir: Path, skipped: str | None = None) -> Path | None:
    """The config a run last ran with: that of its latest resume, else its original one.

    ``skipped`` (a ``hydra.output_subdir``) is the record of the resume being started: a DDP worker process,
    which re-runs its parent's command line, must compose from what the parent composed from.
    """
    records = sorted(path for path in (run_dir / ".hydra").glob(f"{RECORD_PREFIX}*/config.yaml")
                     if skipped is None or path.parent != run_dir / skipped)  # fmt: skip
    original = run_dir / ".hydra" / "config.yaml"
    return records[-1] if records else original if original.is_file() else None


def config_groups() -> set[str]:
    return {path.name for path in config_dir().iterdir() if path.is_dir()}


def resume_arguments(argv: list[str]) -> list[str]:
    """The command line that continues the run of ``ckpt_path`` (``last``: the latest run) in its directory.

    Hydra fixes the run directory and the primary config before the job starts, so both are settled here.
    A checkpoint inside a run directory resumes with that run's saved config; any other checkpoint file
    with the config the command line composes.
    """
    options, overrides = split_arguments(argv)
    value = last_value(overrides, "ckpt_path")
    if value in (None, "", "null") or {"-m", "--multirun"} & set(argv):
        return argv
    checkpoint = latest_checkpoint(overrides) if value == "last" else Path(value).expanduser().resolve()
    if not checkpoint.is_file():
        raise PetlabError(f"ckpt_path={value} does not exist: give a checkpoint file or ckpt_path=last")
    # Options first: Hydra takes the overrides as one list after them.
    arguments = [*options, *(arg for arg in overrides if not arg.startswith("ckpt_path=")),
                 f"ckpt_path={quoted(checkpoint)}"]  # fmt: skip
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None
    target = last_value(overrides, "hydra.run.dir")
    if run_dir is None or (target is not None and Path(target).expanduser().resolve() != run_dir):
        return arguments  # a checkpoint outside a run, or a new run started from one: composed as usual
    config = saved_config(run_dir, last_value(overrides, "hydra.output_subdir"))
    if config is None:
        return arguments
    groups = config_groups() - {"hydra"}
    for item in overrides:
        key = item.lstrip("+~").split("=", 1)[0]
        if key in groups:
            raise PetlabError(
                f"{item}: ckpt_path resumes {run_dir} with the config groups it was trained with; a resume takes "
                "key=value overrides (e.g. trainer.max_epochs=20), or start a new run without ckpt_path"
            )
    content = yaml.safe_load(config.read_text()) or {}
    # The run's config, then petlab's Hydra settings (run directory, logging, callbacks) around it.
    ConfigStore.instance().store(name=RESUME_CONFIG, node={"defaults": [{"hydra": "default"}, "_self_"], **content})
    # The saved config may hold what a "+key=" of the original command added: add or replace it.
    arguments = [f"+{arg}" if arg.startswith("+") and not arg.startswith("++") else arg for arg in arguments]
    # A DDP worker process re-runs this command line as its parent rewrote it: nothing more to add.
    if f"--config-name={RESUME_CONFIG}" not in argv:
        arguments = [f"--config-name={RESUME_CONFIG}", *arguments]
    if target is None:
        arguments.append(f"hydra.run.dir={quoted(run_dir)}")
    if last_value(overrides, "hydra.output_subdir") is None:
        arguments.append(f"hydra.output_subdir=.hydra/{RECORD_PREFIX}{run_id()}")
    return arguments


# What a checkpoint fixes: hyperparameters of the module (paths into its nested hparams), and data
# settings that decide the images of each split (a resume on another split would validate on training images).
FIXED_MODEL = {("backbone", "name"): "model.backbone.name", ("task", "class"): "the task's class (task._target_)",
               ("task", "name"): "task.name", ("task", "target", "class"): "the task.target class",
               ("task", "target", "name"): "task.target", ("task", "target", "classes"): "the classes",
               ("task", "hidden"): "task.hidden", ("task", "monitor"): "task.monitor", ("task", "mode"): "task.mode",
               ("image_size",): "data.image_size", ("mean",): "the normalisation mean",
               ("std",): "the normalisation std",
               ("norm_bias_weight_decay",): "model.norm_bias_weight_decay", ("ema",): "model.ema",
               ("pool",): "model.pool",
               ("task", "decoder_channels"): "task.decoder_channels", ("task", "tasks"): "task.tasks",
               ("task", "configs"): "task.options (the tasks' own settings and classes)"}  # fmt: skip
ABSENT = object()  # a setting the checkpoint (an older one) or the config does not have: not compared
FIXED_DATA = ("layout", "split", "val_fraction", "test_fraction", "folds", "fold", "seed", "crop_margin",
              "progressive_resize")  # fmt: skip


def _shown(value: Any) -> str:
    return shown(list(value)) if isinstance(value, (list, tuple)) else str(value)


def _lookup(settings: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(settings, dict) or key not in settings:
            return ABSENT
        settings = settings[key]
    return settings


def check_resume(checkpoint: dict[str, Any], hparams: dict[str, Any], data: dict[str, Any], path: Path) -> None:
    """Refuse to resume ``checkpoint`` with a module (``hparams``) or data config that differs where it matters.

    Only the settings given are compared, so this can run on the config before the data is set up.
    """
    saved_hparams = checkpoint.get("hyper_parameters", {})
    saved_data = (checkpoint.get("petlab") or {}).get("data") or {}
    differences = [
        (label, saved, given) for path, label in FIXED_MODEL.items()
        if (saved := _lookup(saved_hparams, path)) is not ABSENT and (given := _lookup(hparams, path)) is not ABSENT
        and saved != given
    ] + [
        (f"data.{key}", saved_data[key], data[key]) for key in FIXED_DATA
        if key in saved_data and key in data and saved_data[key] != data[key]
    ]  # fmt: skip
    if differences:
        listed = "; ".join(f"{name} was {_shown(old)}, now {_shown(new)}" for name, old, new in differences)
        raise PetlabError(
            f"ckpt_path={path} cannot continue with other settings ({listed}): resume with the run's own "
            "settings, or start a new run without ckpt_path"
        )
