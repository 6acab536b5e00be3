"""Loading a petlab checkpoint safely: tensors and plain types only, never arbitrary pickled code."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from petlab.data.transforms import DEFAULT_CROP_MARGIN, resized_side
from petlab.errors import PetlabError, first_line
from petlab.module import PetClassifier


@dataclass
class Checkpoint:
    """A trained classifier (in eval mode) and what it needs to read new images."""

    model: PetClassifier
    path: Path
    data_config: dict[str, Any] = field(default_factory=dict)

    @property
    def class_names(self) -> list[str]:
        return self.model.class_names

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
    path = Path(path).expanduser()
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


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load a checkpoint written by ``python -m petlab`` as a model in eval mode (see :func:`read_checkpoint`)."""
    path = Path(path).expanduser()
    content = read_checkpoint(path)
    options = dict(content["hyper_parameters"])
    # The weights come from the checkpoint: never download or read the training-time weight source again.
    options.update(pretrained=False, weights_path=None, compile=False)
    model = PetClassifier(**options)
    # A network trained with model.compile=true was saved under torch.compile's wrapper.
    model.load_state_dict(
        {key.replace("net._orig_mod.", "net."): value for key, value in content["state_dict"].items()}
    )
    model.eval()
    data_config = dict(content["petlab"].get("data") or {})
    if "cache_margin" in data_config:  # the name of crop_margin in checkpoints of petlab's first release
        data_config["crop_margin"] = data_config.pop("cache_margin")
    return Checkpoint(model, path, data_config)
