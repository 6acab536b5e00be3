"""Loading a local state dict into a model, with errors that say which file does not fit and why."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from petlab.errors import PetlabError


def load_state_dict_file(model: nn.Module, weights_path: str | Path, arch: str, skip_prefix: str = "") -> None:
    """Load ``weights_path`` into ``model``; keys starting with ``skip_prefix`` (a head to replace) are ignored.

    Every other key of the model must be in the file with the same shape; the file is read with
    ``weights_only=True``, so it cannot run code.
    """
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise PetlabError(f"model.weights_path={path} does not exist: give a file saved with torch.save")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise PetlabError(f"model.weights_path={path} is not a torch state dict ({error})") from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise PetlabError(f"model.weights_path={path} holds a {type(state).__name__}, not a state dict")

    def kept(key: str) -> bool:
        return not (skip_prefix and key.startswith(skip_prefix))

    expected = {key: value.shape for key, value in model.state_dict().items() if kept(key)}
    given = {key: getattr(value, "shape", None) for key, value in state.items() if kept(key)}
    if given != expected:
        raise PetlabError(
            f"model.weights_path={path} is not a {arch} state dict (its keys or shapes differ); "
            f"use weights saved from the same architecture"
        )
    model.load_state_dict({key: value for key, value in state.items() if kept(key)}, strict=not skip_prefix)
