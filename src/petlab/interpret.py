"""Figures of an evaluation that know no task: grids of pictures, histograms, learning curves, and saving
figures as PNG files and to TensorBoard. Each task writes its own evaluation with these (see
``Task.write_evaluation``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from PIL import Image

from petlab.data.transforms import load_rgb


def image_grid(pictures: Sequence[Image.Image], titles: Sequence[str], colours: Sequence[str], title: str) -> Figure:
    """Up to four pictures a row, each with its title in its colour."""
    columns = min(4, max(1, len(pictures)))
    rows = max(1, math.ceil(len(pictures) / columns))
    figure = Figure(figsize=(3.2 * columns, 3.4 * rows))
    for i, axes in enumerate(figure.subplots(rows, columns, squeeze=False).flat):
        axes.axis("off")
        if i < len(pictures):
            axes.imshow(pictures[i])
            axes.set_title(titles[i], fontsize=8, color=colours[i])
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def thumbnail(path: str) -> Image.Image:
    picture = load_rgb(path)
    picture.thumbnail((256, 256))
    return picture


def learning_curves(tensorboard_dir: Path, metric: str) -> Figure | None:
    """Train vs validation loss and ``metric`` per epoch, read back from the run's TensorBoard events."""
    # Imported here: the event reader is slow to import, and only an evaluation needs it.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not tensorboard_dir.is_dir():
        return None
    events = EventAccumulator(str(tensorboard_dir)).Reload()
    tags = set(events.Tags()["scalars"])
    if not {"train/loss", "val/loss"} <= tags:
        return None
    figure = Figure(figsize=(10, 4))
    for axes, name in zip(figure.subplots(1, 2), ("loss", metric), strict=True):
        for stage in ("train", "val"):
            if f"{stage}/{name}" in tags:
                points = {s.step: s.value for s in events.Scalars(f"{stage}/{name}")}  # a resume may repeat steps
                axes.plot(list(points), list(points.values()), marker="o", label=stage)
        axes.set_xlabel("step")
        axes.set_title(name)
        axes.legend()
    figure.tight_layout()
    return figure


@dataclass
class Evaluation:
    """Where an evaluation goes: files in ``output_dir``, figures, scalars and text to a TensorBoard writer
    (``experiment``, if any) at ``step``, learning curves read back from the run's ``tensorboard_dir``. Within
    a joint task, each task's evaluation goes to a folder and TensorBoard tags of its ``prefix``."""

    output_dir: Path
    experiment: Any | None = None
    step: int = 0
    tensorboard_dir: Path | None = None
    prefix: str = ""

    def within(self, name: str) -> Evaluation:
        """The evaluation of one task of a joint model, in its own folder."""
        return replace(self, output_dir=self.output_dir / name, prefix=f"{self.prefix}{name}/")

    def tag(self, tag: str) -> str:
        stage, _, rest = tag.partition("/")
        return f"{stage}/{self.prefix}{rest}"

    def save_figures(self, figures: dict[str, Figure], metric: str) -> None:
        """``figures`` and the learning curves of the validation ``metric`` (its name without ``val/``) as
        PNG files, and to TensorBoard's Images tab."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        curves = learning_curves(self.tensorboard_dir, f"{self.prefix}{metric}") if self.tensorboard_dir else None
        if curves is not None:
            figures = {**figures, "learning_curves": curves}
        for name, figure in figures.items():
            figure.savefig(self.output_dir / f"{name}.png", dpi=110)
            if self.experiment is not None:
                self.experiment.add_figure(self.tag(f"evaluation/{name}"), figure, global_step=self.step)

    def scalar(self, tag: str, value: float) -> None:
        if self.experiment is not None:
            self.experiment.add_scalar(self.tag(tag), value, global_step=self.step)

    def text(self, tag: str, text: str) -> None:
        if self.experiment is not None:
            self.experiment.add_text(self.tag(tag), text, global_step=self.step)

    def table(self, name: str, frame: Any, **options: Any) -> None:
        """``frame`` as ``name`` (a CSV file in the output folder)."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        frame.to_csv(self.output_dir / name, **options)


def histogram(values: torch.Tensor, label: str, title: str, value_range: tuple[float, float] | None = (0, 1)) -> Figure:
    """How the test images' ``values`` are spread, with their mean."""
    figure = Figure(figsize=(6, 3.5))
    axes = figure.subplots()
    axes.hist(values.numpy(), bins=20, range=value_range, color="tab:blue")
    axes.set_xlabel(label)
    axes.set_ylabel("images")
    axes.set_title(f"{title} (mean {float(values.mean()):.3f})")
    figure.tight_layout()
    return figure
