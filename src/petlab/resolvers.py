"""The OmegaConf resolvers petlab's configs use (``${run_id:}``, ``${task_configs:...}`` ...).

Entry points register them before Hydra composes a config.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import MissingConfigException
from omegaconf import DictConfig, ListConfig, OmegaConf

from petlab.config import config_dir, config_groups_help, evaluated_label, project_root, run_id, sweep_label
from petlab.errors import PetlabError


def plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig | ListConfig) else value


def task_configs(names: Sequence[str], options: Mapping[str, Any] | None = None) -> DictConfig:
    """The config of each task ``conf/task/NAME.yaml`` as a single run of it composes it (with the search path
    of this run: a ``--config-dir`` of the user's included), with ``options[NAME]`` on top: the tasks of
    ``task=joint``."""
    names, options = plain(names), plain(options) or {}
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise PetlabError(f"task.tasks={names} must be a list of two or more tasks of conf/task/, e.g. "
                          "task.tasks=[species,segmentation]")  # fmt: skip
    if not isinstance(options, Mapping):
        raise PetlabError(f"task.options={options} must give each task of task.tasks its keys, e.g. "
                          "task.options.segmentation.classes=trimap")  # fmt: skip
    names = [str(name) for name in names]
    if not all(isinstance(settings, Mapping) for settings in options.values()):
        raise PetlabError(f"task.options={options} must give each task's keys, e.g. task.options.species.dropout=0.2")
    composed = _composed(tuple(names), json.dumps(options, sort_keys=True), *_search_path())
    return OmegaConf.create(json.loads(composed))


def _search_path() -> tuple[str, tuple[str, ...]]:
    """The config search path of the running Hydra app ("" before one, e.g. in tests), and the folders a
    run's ``hydra.searchpath=[...]`` added to it (which only that run's own composition saw)."""
    hydra = GlobalHydra.instance()
    if not hydra.is_initialized():
        return "", ()
    added = tuple(HydraConfig.get().searchpath) if HydraConfig.initialized() else ()
    return repr(hydra.config_loader().get_sources()), added


@lru_cache(maxsize=64)
def _composed(names: tuple[str, ...], options: str, search_path: str, added: tuple[str, ...] = ()) -> str:
    def each() -> dict[str, Any]:
        configs = {}
        for name in names:
            if name == "joint":
                raise PetlabError("task.tasks cannot hold joint itself: list the tasks to train together")
            try:
                searched = [f"hydra.searchpath=[{','.join(added)}]"] if added else []
                # A group option (not the task's file as the primary config), so that the added folders count.
                config = compose(config_name="train", overrides=[*searched, f"task={name}"]).task
            except MissingConfigException as error:
                raise PetlabError(f"task.tasks names {name}, and there is no task/{name}.yaml in the config path: "
                                  "choose one of conf/task/ (or of your own --config-dir)") from error  # fmt: skip
            configs[name] = {**OmegaConf.to_container(config, resolve=True), **json.loads(options).get(name, {})}
        return configs

    if search_path:
        return json.dumps(each())
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return json.dumps(each())


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("petlab_root", lambda: str(project_root()), replace=True)
    OmegaConf.register_new_resolver("run_id", run_id, replace=True)
    OmegaConf.register_new_resolver("sweep_label", sweep_label, replace=True)
    OmegaConf.register_new_resolver("evaluated_label", evaluated_label, replace=True)
    OmegaConf.register_new_resolver("config_groups_help", config_groups_help, replace=True)
    OmegaConf.register_new_resolver("task_configs", task_configs, replace=True)
