"""``python -m petlab.export ckpt_path=FILE format=torchscript|onnx|space``: a model that runs without petlab.

The exported network normalises its input itself, so a user feeds RGB images scaled to [0, 1] at the
size ``<file>.json`` gives (``input_size``) and gets the task's output (class logits for classification,
per-pixel logits for segmentation); that file also says how to prepare an image and names the classes.
``format=space`` writes a folder with the ONNX model and the page of ``python -m petlab.app`` that runs it,
with the task's answer code (numpy only), ready for a hosting service that serves a Gradio app from a folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from petlab.checks import whole_number
from petlab.cli import one_line_config_errors, plugins, require, user_facing
from petlab.config import config_dir
from petlab.errors import PetlabError
from petlab.files import partial_path, remove_stale_partials, write_text_atomic
from petlab.resolvers import register_resolvers

register_resolvers()
FORMATS = {"torchscript": ".pt", "onnx": ".onnx"}
CHOICES = (*FORMATS, "space")  # space: a folder, see export_space
# What the exported page needs in a fresh environment, at least the versions that exported and tested it
# here (an older onnxruntime may not read the model's opset); the page is written for Gradio 6.
SPACE_REQUIREMENTS = {"gradio": ("6", "7"), "onnxruntime": ("1.18", None), "numpy": ("1.24", None),
                      "pillow": ("10", None)}  # fmt: skip


def _normalised_network(checkpoint: Any) -> Any:
    import torch

    class Exported(torch.nn.Module):
        """The backbone and the head, with the normalisation in front (float images in [0, 1] in)."""

        def __init__(self, backbone: torch.nn.Module, head: torch.nn.Module, mean: list[float], std: list[float]):
            super().__init__()
            self.backbone, self.head = backbone, head
            self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

        def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
            features = self.backbone((images - self.mean) / self.std)
            outputs = self.head(features, self.backbone.pool(features[-1]), images.shape[-2:])
            # A joint model's outputs, one per head, in the order of the sidecar's output_names.
            return tuple(outputs.values()) if isinstance(outputs, dict) else outputs

    model = checkpoint.model
    return Exported(model.backbone, model.head, checkpoint.mean, checkpoint.std).eval()


def default_output(ckpt_path: Path, file_format: str) -> Path:
    run_dir = ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else ckpt_path.parent
    return run_dir / "export" / ("space" if file_format == "space" else f"model{FORMATS[file_format]}")


def space_versions() -> dict[str, tuple[str, str | None]]:
    """What an exported page requires, by package: (the version installed here, or a known minimum; the
    next incompatible major version, where there is one)."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package, (minimum, below) in SPACE_REQUIREMENTS.items():
        with contextlib.suppress(PackageNotFoundError):
            minimum = version(package)
        versions[package] = (minimum, below)
    return versions


def export(checkpoint: Any, file_format: str, output: Path, sidecar: dict[str, Any] | None = None) -> Path:
    """Write ``checkpoint``'s network to ``output`` as TorchScript or ONNX, plus ``output.json`` (with the
    ``sidecar`` entries added or replaced)."""
    import torch

    network = _normalised_network(checkpoint)
    # As petlab.predict: a spatial task sees the whole image at the resized side, a classifier its centre crop.
    side, crop = checkpoint.side, checkpoint.image_size
    size = side if checkpoint.task.spatial else crop
    preprocess = (f"resize the whole image to {side}x{side}" if checkpoint.task.spatial
                  else f"resize to {side}x{side}, centre crop {crop}x{crop}")  # fmt: skip
    # The same pixels as petlab.predict only with the same decoding and resampling: say exactly which.
    resize = (f"decode a JPEG at the smallest of Pillow's draft scales (1/2 to 1/8) that keeps both sides at least "
              f"{side} (Image.draft), convert to RGB, then Image.resize(({side}, {side}), Image.BILINEAR): Pillow's "
              "bilinear filter, which antialiases when shrinking (its support widens with the scale)")  # fmt: skip
    example = torch.rand(2, 3, size, size)
    output.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(output.parent)  # what a killed export left
    written = partial_path(output)
    outputs = checkpoint.task.export_spec()
    spec = {"task": checkpoint.task.spec(), "input": f"float RGB in [0, 1], shape (N, 3, {size}, {size})",
            "input_size": size, "side": side, "image_size": crop, "mean": checkpoint.mean, "std": checkpoint.std,
            "preprocess": preprocess, "resize": resize, **outputs, "answerer": checkpoint.task.answerer().spec(),
            "checkpoint": str(checkpoint.path), **(sidecar or {})}  # fmt: skip
    with torch.no_grad():
        if file_format == "torchscript":
            with warnings.catch_warnings():  # torch deprecates TorchScript in favour of torch.export/ONNX
                warnings.simplefilter("ignore", FutureWarning)
                traced = torch.jit.trace(network, example)
                torch.jit.save(traced, str(written), _extra_files={"petlab.json": json.dumps(spec)})
        else:
            try:
                import onnxscript  # noqa: F401  (the exporter needs it; say so plainly if it is missing)
            except ImportError as error:
                raise PetlabError("format=onnx needs the export extra: pip install -e '.[export]'") from error
            batch = torch.export.Dim("batch", min=1)
            program = torch.onnx.export(network, (example,), input_names=["images"],
                                        output_names=outputs["output_names"], dynamic_shapes={"images": {0: batch}},
                                        dynamo=True)  # fmt: skip
            program.save(str(written))
    # The sidecar first, the model last: a model file in place means the export is whole.
    write_text_atomic(output.with_suffix(output.suffix + ".json"), json.dumps(spec, indent=2) + "\n")
    os.replace(written, output)
    return output


def copy_answer_code(modules: set[str], folder: Path) -> None:
    """What the exported page answers with, without petlab: a ``petlab/`` folder holding only
    ``pictures.py`` and the ``answers`` package, and each other module of ``modules`` (a task's answerer of
    the user's own) at its import path, its packages empty but for it."""
    package = Path(__file__).parent
    shutil.rmtree(folder / "petlab", ignore_errors=True)  # an earlier export's, when overwriting
    shutil.copytree(package / "answers", folder / "petlab" / "answers", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copyfile(package / "pictures.py", folder / "petlab" / "pictures.py")
    (folder / "petlab" / "__init__.py").write_text("")
    for name in sorted(module for module in modules if not module.startswith("petlab.")):
        parts = name.split(".")
        target = folder.joinpath(*parts[:-1])
        target.mkdir(parents=True, exist_ok=True)
        for depth in range(1, len(parts)):
            init = folder.joinpath(*parts[:depth], "__init__.py")
            if not init.exists():
                init.write_text("")
        shutil.copyfile(sys.modules[name].__file__, target / f"{parts[-1]}.py")


SPACE_PARTS = ("model.onnx", "model.onnx.json", "app.py", "README.md")


def export_space(checkpoint: Any, folder: Path, examples: list[str], top_k: int) -> Path:
    """Write ``folder``: the ONNX model, the page that runs it without petlab (``app.py`` with petlab's
    ``page.py`` and ``pictures.py``), ``examples/``, ``requirements.txt`` and a README on publishing it."""
    from petlab.app import page_text

    final = folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(folder.parent)
    # Built in a private folder and renamed into place whole: a killed export leaves nothing that blocks a rerun.
    folder = partial_path(final)
    folder.mkdir()
    title, description = page_text(checkpoint)
    # Published: the checkpoint named by its run, never by its path on this machine.
    page = {"title": title, "description": description, "top_k": top_k}
    export(checkpoint, "onnx", folder / "model.onnx", {"page": page, "checkpoint": checkpoint.name})
    package = Path(__file__).parent
    shutil.copyfile(package / "web" / "space_app.py", folder / "app.py")
    shutil.copyfile(package / "web" / "page.py", folder / "page.py")
    copy_answer_code(checkpoint.task.answerer().modules(), folder)
    shutil.rmtree(folder / "examples", ignore_errors=True)  # an earlier export's examples, when overwriting
    if examples:
        (folder / "examples").mkdir()
        for index, example in enumerate(examples):
            shutil.copyfile(example, folder / "examples" / f"{index + 1:02d}_{Path(example).name}")
    versions = space_versions()
    (folder / ".gitignore").write_text(".venv/\n__pycache__/\n")  # what running it here adds, never published
    (folder / "requirements.txt").write_text("".join(f"{name}>={minimum}" + (f",<{below}" if below else "") + "\n"
                                                     for name, (minimum, below) in versions.items()))  # fmt: skip
    # The Space's header (YAML): the Gradio it runs is the one the page was tested with here.
    header = {"title": title, "emoji": "🐾", "colorFrom": "indigo", "colorTo": "pink", "sdk": "gradio",
              "sdk_version": versions["gradio"][0], "app_file": "app.py", "pinned": False}  # fmt: skip
    front_matter = "".join(f"{key}: {json.dumps(value, ensure_ascii=False)}\n" for key, value in header.items())
    (folder / "README.md").write_text(
        f"---\n{front_matter}---\n" + SPACE_README.format(title=title, description=description)
    )
    if final.exists():  # overwrite=true, or an incomplete folder of an older petlab: the old one goes
        replaced = partial_path(final.with_name(f"{final.name}-replaced"))
        os.replace(final, replaced)
        os.replace(folder, final)
        shutil.rmtree(replaced)
    else:
        os.replace(folder, final)
    return final


SPACE_README = """
# {title}

{description}

A page made by `petlab.export format=space`: `app.py` runs the exported network (`model.onnx`, with
ONNX Runtime) without petlab; `model.onnx.json` says how images are prepared and names the classes.

## Try it on this machine

```bash
python -m venv /tmp/space-venv           # outside the run's folders, so that it is never uploaded with them
/tmp/space-venv/bin/pip install -r requirements.txt
/tmp/space-venv/bin/python app.py  # http://127.0.0.1:7860 (GRADIO_SERVER_NAME and GRADIO_SERVER_PORT change it)
```

It computes in fp32, as `petlab.predict precision=32-true` does.

## Publish it on Hugging Face Spaces

1. Create a Space with the Gradio SDK at https://huggingface.co/new-space.
2. Upload this folder as it is (its README's header tells the Space to run `app.py`), e.g.
   `hf upload USER/SPACE . --repo-type=space`, or clone the Space's git repository, copy these files in,
   `git lfs track "*.onnx"`, then commit and push.
3. The Space installs `requirements.txt` and serves the page; `examples/` holds the images it offers.
"""


@one_line_config_errors
@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="export")
@user_facing
def main(cfg: DictConfig) -> None:
    # Imported here: torch and the models load only once the options are checked (errors answer at once).
    from petlab.checkpoint import load_checkpoint

    require(cfg, "ckpt_path")
    if cfg.format not in CHOICES:
        raise PetlabError(f"unknown format={cfg.format}: choose one of {', '.join(CHOICES)}")
    if cfg.format == "space":
        whole_number("top_k", cfg.top_k, 1)
    checkpoint = load_checkpoint(cfg.ckpt_path, plugins(cfg))
    output = Path(cfg.output).expanduser() if cfg.output else default_output(checkpoint.path, cfg.format)
    # An export is written whole or not at all; a space folder without its model and page (a killed export of
    # an earlier petlab) is incomplete, and replaced rather than protected.
    complete = output.is_file() if cfg.format != "space" else all((output / name).is_file() for name in SPACE_PARTS)
    if output.exists() and complete and not cfg.overwrite:
        raise PetlabError(f"{output} already exists: choose another output=PATH or set overwrite=true")
    if output.exists() and output.is_dir() != (cfg.format == "space"):
        kind = "a folder" if cfg.format == "space" else "a file"
        raise PetlabError(f"output={output} exists and is not {kind}: choose another output=PATH")
    if cfg.format != "space":
        export(checkpoint, cfg.format, output)
        print(f"Exported {cfg.format} model to {output} (input and output spec in {output.name}.json)", file=sys.stderr)
        return
    from petlab.app import chosen_examples

    export_space(checkpoint, output, chosen_examples(checkpoint, cfg), cfg.top_k)
    print(f"Wrote the page's folder to {output}: see its README.md to run or publish it", file=sys.stderr)


if __name__ == "__main__":
    main()
