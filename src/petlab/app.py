"""``python -m petlab.app ckpt_path=FILE``: a web page to try a trained model (needs the ``app`` extra).

Anyone who opens it drops or picks photos and sees the model's answers, computed by ``petlab.predict``'s
own code (same checkpoint loading, preprocessing and precision), so the page and the command line agree.
It listens on 127.0.0.1 unless ``host=`` says otherwise, and makes a public share link only with
``share=true``.
"""

from __future__ import annotations

import errno
import re
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, ListConfig

from petlab.checks import switch, whole_number
from petlab.cli import one_line_config_errors, plugins, require, user_facing
from petlab.config import config_dir
from petlab.errors import PetlabError, user_error
from petlab.resolvers import register_resolvers

register_resolvers()
FILE_SIZE = re.compile(r"^[1-9]\d*\s*(b|kb|mb|gb)$", re.IGNORECASE)  # what Gradio's max_file_size reads


def answer_images(
    checkpoint: Any, paths: Sequence[str], pictures_dir: Path, top_k: int = 3, tta: bool = False,
    precision: str = "auto", batch_size: int = 32,
) -> list[dict[str, Any]]:  # fmt: skip
    """``petlab.predict``'s answers for ``paths``; the pictures it draws go to a new folder in ``pictures_dir``
    (see :func:`petlab.pictures.answers_folder`)."""
    # Imported here: torch and the models load only once the options are checked (errors answer at once).
    from petlab.pictures import answers_folder
    from petlab.prediction import predict_files

    output_dir = answers_folder(pictures_dir) if checkpoint.task.answerer().draws() else None
    files = [Path(path) for path in paths]
    return list(predict_files(checkpoint, files, top_k, batch_size, precision, output_dir, tta))


def page_results(answerer: Any, results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the page shows of ``petlab.predict``'s results: each answer's views (see ``Answerer.views``)."""
    return [result if "error" in result else
            {"image": result["image"], "views": answerer.views({k: v for k, v in result.items() if k != "image"})}
            for result in results]  # fmt: skip


def example_images(checkpoint: Any, count: int, sample_root: Path) -> list[str]:
    """Up to ``count`` images of the checkpoint's test split (its validation split when it has none), a
    class at a time; from the generated sample when the checkpoint's dataset is not on this machine."""
    # Imported here: torch and the models load only once the options are checked (errors answer at once).
    from petlab.checkpoint import checkpoint_datamodule

    datamodule = None
    if count and checkpoint.data_config:  # a first-release checkpoint does not say what it was trained on
        try:
            datamodule = checkpoint_datamodule(checkpoint, cache=False)
            datamodule.setup("test")
        except Exception as error:  # the dataset is not here (moved, another machine): use the sample
            if user_error(error) is None:
                raise
            datamodule = None
    if datamodule is None:
        files = sorted((sample_root / "images").glob("*.jpg"))
        return [str(path) for path in files[:: max(1, len(files) // max(count, 1))][:count]]
    frame = datamodule.frame
    split = frame[frame["split"] == ("test" if datamodule.has_test else "val")]
    rank = split.groupby("label").cumcount()
    return list(split.assign(rank=rank).sort_values(["rank", "label"])["path"].head(count).astype(str))


def chosen_examples(checkpoint: Any, cfg: DictConfig) -> list[str]:
    """The images ``cfg.examples`` names: ``auto`` (see :func:`example_images`), or the image files named
    and those in the folders named, or none."""
    # Imported here: torch and the models load only once the options are checked (errors answer at once).
    from petlab.data.index import IMAGE_SUFFIXES
    from petlab.predict import image_files

    whole_number("num_examples", cfg.num_examples, 0)
    if cfg.examples == "auto":
        sample = Path(cfg.paths.data_dir) / "sample-pets"
        examples = example_images(checkpoint, cfg.num_examples, sample)
        if not examples and cfg.num_examples:
            print(f"note: no example images: the dataset at {checkpoint.data_config.get('root')} is not here, and "
                  f"there is no generated sample at {sample} (make sample writes one)", file=sys.stderr)  # fmt: skip
        return examples
    entries = list(cfg.examples) if isinstance(cfg.examples, ListConfig) else [cfg.examples] if cfg.examples else []
    files = []
    for entry in map(str, entries):  # a folder's images, and every file named
        found = image_files([entry], option="examples")
        files += [path for path in found if path.suffix.lower() in IMAGE_SUFFIXES] if Path(entry).is_dir() else found
    return [str(path) for path in files[: cfg.num_examples]]


def check_port(host: str, port: int) -> None:
    """Fail in one line, before the model is served, when ``host:port`` cannot be listened on."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        # As the server binds: a port left in TIME_WAIT by a page stopped a moment ago is free to it.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise PetlabError(f"port {port} on {host} is in use: choose another with port=N "
                                  f"(e.g. port={port + 1})") from error  # fmt: skip
            if error.errno == errno.EACCES:
                raise PetlabError(f"port {port} needs administrator rights: choose one from 1024 up, "
                                  "e.g. port=7860") from error  # fmt: skip
            raise PetlabError(f"cannot listen on {host}:{port} ({error.strerror}): choose another host=, "
                              "e.g. host=127.0.0.1 for this machine only") from error  # fmt: skip


def check_options(cfg: DictConfig) -> None:
    # Imported here: torch and the models load only once the options are checked (errors answer at once).
    from petlab.predict import check_answer_options

    check_answer_options(cfg)
    if not isinstance(cfg.host, str) or not cfg.host:
        raise PetlabError(f"host={cfg.host} is not an address: give one such as 127.0.0.1 or 0.0.0.0")
    whole_number("port", cfg.port, 1, 65535)
    whole_number("concurrency", cfg.concurrency, 1)
    if not FILE_SIZE.match(str(cfg.max_file_size)):
        raise PetlabError(f"max_file_size={cfg.max_file_size} is not a size: give a whole number (from 1) of b, "
                          "kb, mb or gb, such as 10mb or 500kb")  # fmt: skip
    switch("share", cfg.share)


def page_text(checkpoint: Any) -> tuple[str, str]:
    """The page's title and the line under it: what the model answers, and where it comes from."""
    task, names = checkpoint.task, checkpoint.class_names
    question = task.question
    classes = f" ({len(names)} classes: {', '.join(names[:6])}{', ...' if len(names) > 6 else ''})" if names else ""
    backbone = checkpoint.model.hparams.backbone.get("name", "")
    description = (f"Drop or pick one or more photos of cats and dogs. A {backbone} trained by petlab{classes}, "
                   f"{checkpoint.image_size} px, from `{checkpoint.name}`.")  # fmt: skip
    return f"petlab: {question}", description


@one_line_config_errors
@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="app")
@user_facing
def main(cfg: DictConfig) -> None:
    require(cfg, "ckpt_path")
    check_options(cfg)
    try:
        from petlab.web.page import build_page, launch
    except ImportError as error:
        raise PetlabError(f"the page needs the app extra ({error.name} is missing): pip install -e '.[app]'") from error
    from petlab.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(cfg.ckpt_path, plugins(cfg))
    check_port(cfg.host, cfg.port)
    examples = chosen_examples(checkpoint, cfg)
    title, description = page_text(checkpoint)
    with tempfile.TemporaryDirectory(prefix="petlab-app-") as pictures_dir:

        def answer(paths: list[str]) -> list[dict[str, Any]]:
            results = answer_images(checkpoint, paths, Path(pictures_dir), cfg.top_k, cfg.tta, cfg.precision)
            return page_results(checkpoint.task.answerer(), results)

        page = build_page(answer, title, description, examples, cfg.top_k,
                          show_classes=checkpoint.task.answerer().gives_probabilities())  # fmt: skip
        print(f"Serving {checkpoint.path} ({len(examples)} example image{'' if len(examples) == 1 else 's'})",
              file=sys.stderr)  # fmt: skip
        launch(page, cfg.host, cfg.port, cfg.share, str(cfg.max_file_size), [pictures_dir, *examples],
               concurrency=cfg.concurrency)  # fmt: skip


if __name__ == "__main__":
    main()
