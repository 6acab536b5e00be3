"""``python -m petlab.report SWEEP_DIR [more dirs]``: one table comparing runs, as text, CSV, Markdown, PNG.

A run is any directory holding ``.hydra/config.yaml``: a single run, a job of a multirun, a fold of a
cross-validation. Columns are the overrides that vary between runs, the validation and test metrics, best
epoch, run time, parameter count and status (completed, pruned by a search, failed, incomplete). Runs that
differ only in ``seed`` or ``data.fold`` are replicates: the summary gives their mean and standard deviation. Runs are
ranked by the best value of their task's monitored metric (``val/acc_best`` for classification), in the
task's direction (highest first, or lowest first for a metric the task minimises, such as a loss); runs
that monitor different metrics (species and segmentation runs) are ranked apart, each by its own.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from matplotlib.figure import Figure

from petlab.config import NOT_HYPERPARAMETERS
from petlab.data.report import markdown_table
from petlab.errors import PetlabError
from petlab.files import write_text_atomic
from petlab.jobs import read_run_file as _read
from petlab.jobs import run_status

log = logging.getLogger(__name__)

# Figures of a run besides the val/ and test/ metrics, and which way each is better.
RUN_FIGURES = {"best_epoch": "min", "seconds": "min", "params_total": "min"}
REPLICATE_KEYS = ("seed", "data.fold")
DEFAULT_METRIC = "val/acc_best"  # for runs written before metrics.json named the monitored metric


def is_metric(column: str) -> bool:
    return column.startswith(("val/", "test/")) or column in RUN_FIGURES


def _overrides(run: Path) -> dict[str, str]:
    path = run / ".hydra" / "overrides.yaml"
    items = _read(path, yaml.safe_load) if path.is_file() else []
    pairs = (item.lstrip("+~").split("=", 1) for item in items or [] if "=" in item)
    return {key: value for key, value in pairs if not key.startswith(NOT_HYPERPARAMETERS)}


def _run_row(run: Path, directory: Path, composed: dict[str, Any]) -> dict[str, Any]:
    status, error = run_status(run)
    metrics = {}
    if status in ("completed", "pruned"):  # a pruned trial's metrics are those of its epochs so far
        try:
            metrics = _read(run / "metrics.json", json.loads)
        except ValueError as problem:
            log.warning(f"{run}: {problem}; listed as unreadable")
            status, error = "unreadable", str(problem)
    model = composed["model"]
    return {
        "run": str(run.relative_to(directory.parent)), "status": status, "error": error,
        "task": (composed.get("task") or {}).get("name", ""),
        "model": (model.get("backbone") or {}).get("name") or model.get("arch", ""),  # arch: first-release runs
        "monitor": metrics.get("monitor", "val/acc") + "_best" if metrics else None,
        "monitor_mode": metrics.get("monitor_mode", "max") if metrics else None,
        "directions": metrics.get("directions") or {},
        "overrides": _overrides(run), **{name: value for name, value in metrics.items() if is_metric(name)},
    }  # fmt: skip


def collect_runs(directories: Sequence[str | Path]) -> pd.DataFrame:
    """One row per run found under ``directories``: its varying-able overrides, status and metrics.

    A run whose files cannot be read (a truncated ``metrics.json``, say) is listed as ``unreadable``.
    """
    rows = []
    for directory in map(Path, directories):
        if not directory.is_dir():
            raise PetlabError(f"{directory} is not a directory: give sweep or run directories from outputs/")
        for config in sorted(directory.rglob(".hydra/config.yaml")):
            run = config.parent.parent
            try:
                composed = _read(config, yaml.safe_load) or {}
                if "model" not in composed:  # an evaluation directory, not a training run
                    continue
                rows.append(_run_row(run, directory, composed))
            except ValueError as error:
                log.warning(f"{run}: {error}; listed as unreadable")
                rows.append({"run": str(run.relative_to(directory.parent)), "status": "unreadable", "error": str(error),
                             "task": "", "model": "", "directions": {}, "overrides": {}})  # fmt: skip
    if not rows:
        raise PetlabError(
            f"no petlab runs (directories with .hydra/config.yaml) under {', '.join(map(str, directories))}"
        )
    metrics = sorted({name for row in rows for name in row if is_metric(name) and name not in RUN_FIGURES})
    columns = ["run", "status", "error", "task", "model", "monitor", "monitor_mode", "directions", "overrides",
               *metrics, *RUN_FIGURES]  # fmt: skip
    frame = pd.DataFrame(rows, columns=columns).astype({"best_epoch": "Int64", "params_total": "Int64"})
    overrides = pd.DataFrame(list(frame.pop("overrides")), index=frame.index).fillna("")
    # task=/model= choices are already the task and model columns.
    varying = [c for c in overrides.columns
               if c not in frame.columns and (overrides[c].nunique() > 1 or c in REPLICATE_KEYS)]  # fmt: skip
    return pd.concat([frame[["run", "status"]], overrides[sorted(varying)], frame.drop(columns=["run", "status"])],
                     axis=1)  # fmt: skip


def rankings(runs: pd.DataFrame, metric: str | None, also: Sequence[str] = ()) -> list[tuple[str, pd.DataFrame]]:
    """(metric, summary) for each group of runs ranked together: all of them by ``metric``, or, without
    one, the runs monitoring each metric by its best value (runs of species and of segmentation, say,
    are ranked apart, each by its own task's metric). Each summary also gives the metrics ``also`` names."""
    if metric:
        return [(metric, summarise(runs, metric, also))]
    monitored = sorted(set(runs["monitor"].dropna())) or [DEFAULT_METRIC]
    if len(monitored) == 1:
        return [(monitored[0], summarise(runs, monitored[0], also))]
    return [(name, summarise(runs[runs["monitor"] == name], name, also)) for name in monitored]


def lower_is_better(runs: pd.DataFrame, metric: str) -> bool:
    """Whether ``metric`` ranks lowest first, as the runs' tasks declared it (``metrics.json``'s
    ``directions``; a best value, ``val/acc_best``, goes the way of its metric). Runs written before petlab
    recorded directions give it for their monitored metric only; any other is ranked highest first, with a
    warning."""
    if metric in RUN_FIGURES:
        return RUN_FIGURES[metric] == "min"
    declared = {directions[metric.removesuffix("_best")] for directions in runs["directions"]
                if isinstance(directions, dict) and metric.removesuffix("_best") in directions}  # fmt: skip
    declared |= set(runs.loc[runs["monitor"] == metric, "monitor_mode"].dropna())
    if len(declared) > 1:
        raise PetlabError(f"the runs disagree on whether {metric} is better higher or lower: rank runs of one task")
    if not declared:
        log.warning(f"these runs do not say whether {metric} is better higher or lower (they predate petlab "
                    "recording it): ranked highest first")  # fmt: skip
    return declared == {"min"}


def summarise(runs: pd.DataFrame, metric: str, also: Sequence[str] = ()) -> pd.DataFrame:
    """Mean, standard deviation and count of ``metric`` per configuration (replicates pooled), best first;
    with the mean and standard deviation of the metrics ``also`` names beside it."""
    ignored = ("run", "status", "error", "monitor", "monitor_mode", "directions", *REPLICATE_KEYS)
    keys = [c for c in runs.columns if not is_metric(c) and c not in ignored]
    shown = [metric, *(name for name in also if name != metric and name in runs.columns)]
    columns = [*keys, "runs", *(f"{name} {stat}" for name in shown for stat in ("mean", "std"))]
    done = runs[runs["status"] == "completed"]
    if done.empty or metric not in done.columns:
        return pd.DataFrame(columns=columns)
    grouped = done.groupby(keys, dropna=False)
    table = grouped[metric].count().rename("runs").to_frame()
    for name in shown:
        table[f"{name} mean"], table[f"{name} std"] = grouped[name].mean(), grouped[name].std()
    # A metric these runs do not have (another task's) would only add empty columns.
    empty = [f"{name} {stat}" for name in shown[1:] if table[f"{name} mean"].isna().all() for stat in ("mean", "std")]
    table = table.reset_index()[columns].drop(columns=empty)
    return table.sort_values(f"{metric} mean", ascending=lower_is_better(runs, metric)).round(4)


def bar_labels(summary: pd.DataFrame, metric: str) -> list[str]:
    """A summary row's configuration in a few characters: its values, numbers to 3 significant digits."""
    keys = [c for c in summary.columns if c not in ("runs", f"{metric} mean", f"{metric} std")]
    return [" ".join(f"{value:.3g}" if isinstance(value, float) else f"{value}" for value in row)
            for row in summary[keys].itertuples(index=False)]  # fmt: skip


def chart(sections: Sequence[tuple[str, pd.DataFrame]]) -> Figure:
    """Bars of each summary, best configuration on top."""
    heights = [max(2.0, 0.45 * len(summary) + 1.0) for _, summary in sections]
    labels = {metric: bar_labels(summary, metric) for metric, summary in sections}
    longest = max((len(label) for found in labels.values() for label in found), default=0)
    # Wide enough for the labels (a search's rows name every searched value), within reason.
    figure = Figure(figsize=(min(24.0, 5 + 0.075 * longest), sum(heights) + 0.4))
    for axes, (metric, summary) in zip(figure.subplots(len(sections), 1, squeeze=False, height_ratios=heights)[:, 0],
                                       sections, strict=True):  # fmt: skip
        axes.barh(labels[metric], summary[f"{metric} mean"], xerr=summary[f"{metric} std"].fillna(0), color="tab:blue")
        axes.invert_yaxis()
        axes.set_xlabel(f"{metric} (mean ± std over seeds/folds)")
    figure.tight_layout()
    return figure


def missing(runs: pd.DataFrame, metric: str) -> str:
    """Why a summary by ``metric`` is empty, in words."""
    completed = runs[runs["status"] == "completed"]
    if completed.empty:
        return f"No run completed ({len(runs)} runs: {', '.join(sorted(set(runs['status'])))}): nothing to rank."
    have = sorted(column for column in completed.columns if is_metric(column) and completed[column].notna().any())
    return (f"None of the {len(completed)} completed runs records {metric} in its metrics.json; rank them by one "
            f"they have with --metric ({', '.join(have) or 'they have none'}).")  # fmt: skip


def write_report(
    runs: pd.DataFrame, output_dir: Path, metric: str | None, also: Sequence[str] = ()
) -> list[tuple[str, pd.DataFrame]]:  # fmt: skip
    """Write report.csv (every run), report.md (summaries and runs) and report.png; return the summaries
    (see :func:`rankings`)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    sections = rankings(runs, metric, also)
    runs = runs.drop(columns=["monitor", "monitor_mode", "directions"])
    write_text_atomic(output_dir / "report.csv", runs.to_csv(index=False))
    markdown = []
    for name, summary in sections:
        overview = markdown_table(summary.set_index(summary.columns[0])) if len(summary) else missing(runs, name)
        markdown += [f"## Summary: {name}", overview]
    markdown += ["## Runs", markdown_table(runs.set_index("run"))]
    write_text_atomic(output_dir / "report.md", "\n\n".join(markdown) + "\n")
    charted = [(name, summary) for name, summary in sections if len(summary)]
    if charted:
        chart(charted).savefig(output_dir / "report.png", dpi=110)
    return sections


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m petlab.report", description=__doc__.splitlines()[0])
    parser.add_argument("directories", nargs="+", help="sweep or run directories (e.g. outputs/multiruns/ID)")
    parser.add_argument(
        "--metric",
        help="the metric to rank and chart (default: the best value of the runs' "
        "monitored metric, val/acc_best for classification)",
    )
    parser.add_argument(
        "--also",
        default="",
        help="more metrics to give the mean and std of per configuration, comma-separated "
        "(e.g. test/acc,test/species/acc to compare a task alone with the same head of a joint model)",
    )
    parser.add_argument("--output", type=Path, help="where to write report.csv/md/png (default: the first directory)")
    args = parser.parse_args(argv)
    also = [name for name in args.also.split(",") if name]
    try:
        runs = collect_runs(args.directories)
        known = [column for column in runs.columns if is_metric(column)]
        for name in ([args.metric] if args.metric else []) + also:
            if (runs["status"] == "completed").any() and name not in known:
                raise PetlabError(f"unknown metric {name}: these runs have {', '.join(known)}")
        output = args.output or Path(args.directories[0])
        sections = write_report(runs, output, args.metric, also)
    except PetlabError as error:
        parser.exit(2, f"error: {error}\n")
    tasks = sorted(set(runs["task"]) - {""})
    if len(sections) > 1:
        print(f"note: runs of {', '.join(tasks)} monitor different metrics: each is ranked by its own")
    elif len(tasks) > 1:
        print(f"warning: runs of different tasks ({', '.join(tasks)}) are listed apart; compare within a task")
    # As wide as the terminal (120 columns in a log): the columns that do not fit come in further blocks.
    width = shutil.get_terminal_size((120, 24)).columns
    shown = runs.drop(columns=["error", "monitor", "monitor_mode", "directions"])
    folders = {str(Path(run).parent) for run in shown["run"]}
    if len(folders) == 1 and (folder := folders.pop()) != ".":
        print(f"Runs in {folder}:")
        shown["run"] = [Path(run).name for run in shown["run"]]
    with pd.option_context("display.max_colwidth", 40):
        print(shown.to_string(index=False, line_width=width))
        for metric, summary in sections:
            print(f"\nBy configuration ({metric}):")
            print(summary.to_string(index=False, line_width=width) if len(summary) else missing(runs, metric))
    counts = runs["status"].value_counts().to_dict()
    print(f"\n{len(runs)} runs ({', '.join(f'{n} {s}' for s, n in counts.items())}); report in {output}/report.*")


if __name__ == "__main__":
    main()
