"""The data report: images per class and split, and the files skipped and why."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

log = logging.getLogger(__name__)

SPLIT_ORDER = ["train", "synthetic", "val", "test"]


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-style Markdown table of ``frame`` with its index as the first column."""
    frame = frame.reset_index()
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


@dataclass
class DataReport:
    """``counts``: images per class (rows) and split (columns); ``skipped``: file name and reason; ``lacking``:
    images a joint task keeps without one of its targets, and why."""

    counts: pd.DataFrame
    skipped: pd.DataFrame
    notes: list[str]
    lacking: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["name", "problem"]))

    @classmethod
    def build(cls, frame: pd.DataFrame, skipped: pd.DataFrame, synthetic: dict[str, int], notes: list[str],
              lacking: pd.DataFrame | None = None):  # fmt: skip
        counts = pd.crosstab(frame["label"], frame["split"])
        if synthetic:
            counts["synthetic"] = pd.Series(synthetic).reindex(counts.index).fillna(0).astype(int)
        counts = counts[[c for c in SPLIT_ORDER if c in counts.columns]]
        counts.loc["total"] = counts.sum()
        counts.index.name = "class"
        lacking = pd.DataFrame(columns=["name", "problem"]) if lacking is None else lacking.reset_index(drop=True)
        return cls(counts, skipped.reset_index(drop=True), notes, lacking)

    def text(self) -> str:
        parts = ["Images per class and split:", self.counts.to_string()]
        if len(self.skipped):
            reasons = self.skipped["problem"].str.split(":").str[0].value_counts()
            parts.append(f"Skipped {len(self.skipped)} files: " + ", ".join(f"{n} {r}" for r, n in reasons.items()))
        return "\n".join(parts + self.notes)

    def markdown(self) -> str:
        parts = ["## Images per class and split", markdown_table(self.counts)]
        if len(self.skipped):
            parts += ["## Skipped files", markdown_table(self.skipped.set_index("name"))]
        if len(self.lacking):
            parts += ["## Images kept without one of their targets", markdown_table(self.lacking.set_index("name"))]
        return "\n\n".join(parts + self.notes) + "\n"

    def figure(self) -> Figure:
        counts = self.counts.drop(index="total")
        # A bare Figure, not pyplot: no global state and no display backend needed.
        figure = Figure(figsize=(8, max(3.0, 0.28 * len(counts) + 1.5)))
        axes = figure.subplots()
        counts.plot.barh(stacked=True, ax=axes, width=0.8)
        axes.invert_yaxis()
        axes.set_xlabel("images")
        axes.set_title("Images per class and split")
        figure.tight_layout()
        return figure

    def save(self, output_dir: Path) -> None:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "data_report.md").write_text(self.markdown())
        self.counts.to_csv(output_dir / "data_counts.csv")
        listed = pd.concat([self.skipped.assign(kept=False), self.lacking.assign(kept=True)], ignore_index=True)
        if len(listed):
            listed.to_csv(output_dir / "data_skipped.csv", index=False)

    def log_to(self, experiment: object) -> None:
        """Log to a TensorBoard SummaryWriter (a TensorBoardLogger's ``experiment``)."""
        experiment.add_text("data/report", self.markdown())
        figure = self.figure()
        experiment.add_figure("data/images_per_class", figure)
