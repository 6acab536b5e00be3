"""The audit of the data a run with the same options would use: each section's table, contact sheet and
part of ``report.md``, the suggested ``exclude.txt`` and ``relabel.csv``, all in TensorBoard too."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from petlab.audit.annotations import annotation_problems
from petlab.audit.duplicates import duplicate_groups
from petlab.audit.labels import fold_runs, label_errors
from petlab.audit.outliers import outlier_scores, unusable
from petlab.audit.sheets import Tile, contact_sheet, wrapped
from petlab.data.report import markdown_table
from petlab.data.signatures import signatures
from petlab.data.targets import Target
from petlab.errors import PetlabError
from petlab.files import write_text_atomic
from petlab.tasks.base import build_task

log = logging.getLogger(__name__)

SECTIONS = ("duplicates", "labels", "outliers", "annotations")


@dataclass
class Section:
    """One part of the audit: its table (the flagged images), the summary line, a contact sheet's rows, and
    why it was skipped ("" when it ran)."""

    name: str
    title: str
    table: pd.DataFrame = field(default_factory=pd.DataFrame)
    summary: str = ""
    rows: list[list[Tile]] = field(default_factory=list)
    skipped: str = ""


def caption(row: object, *extra: str) -> list[str]:
    return [Path(row.name).name, f"{row.split} · {row.label}", *extra]


def duplicates_section(frame: pd.DataFrame, found: list, max_distance: int, sheet_rows: int) -> Section:
    table = duplicate_groups(frame, found, max_distance)
    groups = table.groupby("group", sort=True)
    leaks = table.loc[table["leak"], "group"].nunique()
    conflicts = table.loc[table["conflicting_labels"], "group"].nunique()
    exact = table.loc[table["kind"] == "exact", "group"].nunique()
    summary = (f"{table['group'].nunique()} groups of copies ({len(table)} images, {exact} groups with byte-identical "
               f"files): {leaks} cross splits (leaks), {conflicts} carry different labels")  # fmt: skip
    rows = [[Tile(row.path, caption(row, "kept" if row.keep else f"copy, {row.distance} bits"),
                  "black" if row.keep else "red") for row in members.itertuples()][:6]
            for _, members in list(groups)[:sheet_rows]]  # fmt: skip
    return Section("duplicates", "Exact and near duplicates (one group per row)", table, summary, rows)


def outliers_section(frame: pd.DataFrame, found: list, ratio: float, sheet_rows: int) -> Section:
    scores = outlier_scores(frame, found, ratio)
    table = scores[scores["reasons"] != ""].reset_index(drop=True)
    summary = f"{len(table)} outliers (blank, extreme shape, or over {ratio}x the usual distance to their neighbours)"
    # The sheet shows the flagged images, then the most atypical of the rest: what "usual" looks like here.
    shown = pd.concat([table, scores[scores["reasons"] == ""]]).head(sheet_rows * 6)
    tiles = [Tile(row.path, caption(row, row.reasons or f"score {row.score:.1f} (not flagged)"),
                  "red" if row.reasons else "black") for row in shown.itertuples()]  # fmt: skip
    return Section("outliers", "Outliers, most atypical first (red: flagged)", table, summary, wrapped(tiles))


def annotations_section(frame: pd.DataFrame, root: Path, layout: str, sheet_rows: int) -> Section:
    section = Section("annotations", "Head boxes and trimaps that disagree or cannot be used")
    if layout != "pets" or not (root / "annotations").is_dir():
        section.skipped = "the dataset has no annotations/ folder of the release (trimaps, head boxes)"
        return section
    checked = annotation_problems(frame, root)
    section.table = checked[checked["problem"] != ""].reset_index(drop=True)
    both = int(checked["box_on_pet"].notna().sum())
    share = f"; median share of the box on the pet {np.nanmedian(checked['box_on_pet']):.2f}" if both else ""
    section.summary = (f"{len(section.table)} images with annotation problems ({both} images have a head box and "
                       f"a trimap{share})")  # fmt: skip
    tiles = [Tile(row.path, caption(row, row.problem), "red") for row in section.table.itertuples()]
    section.rows = wrapped(tiles)[:sheet_rows]
    return section


def labels_section(cfg: DictConfig, frame: pd.DataFrame, targets: Target | dict, output_dir: Path,
                   sheet_rows: int) -> Section:  # fmt: skip
    section = Section("labels", "Likely label errors, most likely first (given -> suggested)")
    if not (isinstance(targets, Target) and targets.stratifies):
        section.skipped = (f"task.name={cfg.task.name} learns no single label per image; audit the labels with "
                           "task=species, task=breed or a folder dataset's classes")  # fmt: skip
        return section
    folds_dir = Path(cfg.audit.folds_dir) if cfg.audit.folds_dir else output_dir / "folds"
    # The folds train with this command's options, less the audit's own and Hydra's.
    own = ("audit.", "hydra.")
    overrides = [item for item in HydraConfig.get().overrides.task if not item.lstrip("+~").startswith(own)]
    runs = fold_runs(folds_dir, cfg.audit.folds, overrides, Path.cwd())
    section.table, known = label_errors(frame, runs)
    section.summary = (f"{len(section.table)} likely label errors among the {known} images with out-of-sample "
                       f"predictions ({len(runs)} folds in {folds_dir})")  # fmt: skip
    tiles = [Tile(row.path, [Path(row.name).name, f"{row.split} · given {row.given}",
                             f"-> {row.suggested} ({row.p_suggested:.2f})"], "red")
             for row in section.table.itertuples()]  # fmt: skip
    section.rows = wrapped(tiles)[:sheet_rows]
    return section


def suggestions(sections: dict[str, Section]) -> tuple[str, pd.DataFrame]:
    """``exclude.txt``: the copies of each duplicate group and the blank or extreme images, active; the other
    outliers commented out, to look at. ``relabel.csv``: every likely label error with its suggestion."""
    lines = [
        "# Images to leave out of training: python -m petlab data.exclude=THIS_FILE ...",
        "# Delete the lines you disagree with; uncomment (remove the leading '# ') those you want out.",
    ]
    duplicates = sections.get("duplicates")
    if duplicates is not None and len(duplicates.table):
        for row in duplicates.table[~duplicates.table["keep"]].itertuples():
            lines.append(f"{row.name}  # copy of group {row.group} ({row.kind}, {row.split})")
    outliers = sections.get("outliers")
    if outliers is not None and len(outliers.table):
        for row, certain in zip(outliers.table.itertuples(), unusable(outliers.table), strict=True):
            lines.append(f"{'' if certain else '# '}{row.name}  # {row.reasons}")
    labels = sections.get("labels")
    relabel = pd.DataFrame(columns=["name", "target", "label", "given", "p_given", "p_suggested"])
    if labels is not None and len(labels.table):
        relabel = labels.table.rename(columns={"suggested": "label"})[list(relabel.columns)]
    return "\n".join(lines) + "\n", relabel


def audit(cfg: DictConfig) -> dict[str, Section]:
    wanted = list(cfg.audit.sections)
    if unknown := sorted(set(wanted) - set(SECTIONS)):
        raise PetlabError(f"unknown audit.sections {', '.join(unknown)}: choose from {', '.join(SECTIONS)}")
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    task = build_task(cfg.task)
    targets = task.targets()
    datamodule = instantiate(cfg.data, targets=targets, _convert_="all")
    datamodule.prepare_data()
    built = datamodule.read_frame()
    frame = built.frame
    found = signatures(frame["path"].tolist()) if {"duplicates", "outliers"} & set(wanted) else []
    rows = cfg.audit.sheet_rows
    sections: dict[str, Section] = {}
    for name in wanted:
        if name == "duplicates":
            sections[name] = duplicates_section(frame, found, cfg.audit.max_distance, rows)
        elif name == "outliers":
            sections[name] = outliers_section(frame, found, cfg.audit.outlier_ratio, rows)
        elif name == "annotations":
            sections[name] = annotations_section(frame, datamodule.root, datamodule.layout, rows)
        else:
            sections[name] = labels_section(cfg, frame, targets, output_dir, rows)
    write_audit(output_dir, sections, frame, datamodule.root)
    return sections


def write_audit(output_dir: Path, sections: dict[str, Section], frame: pd.DataFrame, root: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter  # imported here: the sections need no torch

    output_dir.mkdir(parents=True, exist_ok=True)
    counts = pd.crosstab(frame["label"], frame["split"])
    splits = ", ".join(f"{count} {split}" for split, count in frame["split"].value_counts().items())
    lines = [f"# Audit of {root}", "", f"{len(frame)} images ({splits}).", ""]
    lines += [f"- **{section.name}**: {(section.skipped and 'skipped: ' + section.skipped) or section.summary}"
              for section in sections.values()]  # fmt: skip
    lines += ["", "Acting on it: edit `exclude.txt` and `relabel.csv` here, then train with "
              f"`data.exclude={output_dir / 'exclude.txt'} data.relabel={output_dir / 'relabel.csv'}` "
              "(and `data.dedupe=leaks` to drop leaked copies from validation and test).", "",
              "## Images per class and split", "", markdown_table(counts), ""]  # fmt: skip
    writer = SummaryWriter(str(output_dir / "tensorboard"))
    for section in sections.values():
        lines += [f"## {section.title}", ""]
        if section.skipped:
            lines += [f"Skipped: {section.skipped}.", ""]
            continue
        section.table.to_csv(output_dir / f"{section.name}.csv", index=False)
        lines += [section.summary + f". All of them: `{section.name}.csv`.", ""]
        if section.rows:
            sheet = contact_sheet(section.rows, section.title)
            sheet.save(output_dir / f"{section.name}.png")
            writer.add_image(f"audit/{section.name}", np.asarray(sheet), dataformats="HWC")
            lines += [f"![{section.name}]({section.name}.png)", ""]
        shown = section.table.drop(columns=["path"], errors="ignore").head(30)
        if len(shown):
            lines += [markdown_table(shown.set_index(shown.columns[0])), ""]
    exclude, relabel = suggestions(sections)
    write_text_atomic(output_dir / "exclude.txt", exclude)
    write_text_atomic(output_dir / "relabel.csv", relabel.to_csv(index=False))
    report = "\n".join(lines)
    write_text_atomic(output_dir / "report.md", report)
    writer.add_text("audit/report", report)
    writer.close()
