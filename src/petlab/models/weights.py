"""Loading a local state dict into a model, with errors that say which file does not fit and why."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from petlab.errors import PetlabError


def load_state_dict_file(
    model: nn.Module, weights_path: str | Path, arch: str, ignore: Callable[[str], bool] = lambda key: False
) -> None:  # fmt: skip
    """Load ``weights_path`` into ``model``; keys for which ``ignore`` is true (a head to replace) are skipped.

    Every other key of the model must be in the file with the same shape; the file is read with
    ``weights_only=True``, so it cannot run code.
    """
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise PetlabError(f"model.backbone.weights_path={path} does not exist: give a file saved with torch.save")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise PetlabError(f"model.backbone.weights_path={path} is not a torch state dict ({error})") from error
    # Some published weight files wrap the state dict: {"state_dict": {...}, "epoch": ...}.
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise PetlabError(f"model.backbone.weights_path={path} holds a {type(state).__name__}, not a state dict")
    expected = {key: value.shape for key, value in model.state_dict().items() if not ignore(key)}
    given = {key: getattr(value, "shape", None) for key, value in state.items() if not ignore(key)}
    missing = [key for key in expected if key not in given]
    unexpected = [key for key in given if key not in expected]
    reshaped = [key for key in expected if key in given and given[key] != expected[key]]
    if missing or unexpected or reshaped:
        if missing:
            first = f"{missing[0]!r} is missing"
        elif unexpected:
            first = f"{unexpected[0]!r} is not in {arch}"
        else:
            first = f"{reshaped[0]!r} has shape {tuple(given[reshaped[0]])}, not {tuple(expected[reshaped[0]])}"
        raise PetlabError(
            f"model.backbone.weights_path={path} is not a {arch} state dict ({first}; {len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(reshaped)} of another shape): use weights of {arch} itself"
        )
    model.load_state_dict({key: value for key, value in state.items() if not ignore(key)}, strict=False)
