"""Likely label errors: out-of-sample class probabilities from a k-fold cross-validation (each image
predicted by the model of the fold that did not train on it; a test image by every fold's model, averaged),
then confident learning (Northcutt et al., 2021): a class's threshold is the mean probability the models
give it on images labelled with it; an image is a likely error when another class reaches its threshold
and is the most probable of those that do. Ranked by the probability of the given label, lowest first.

The few lines of confident learning are here rather than cleanlab's, which would add scikit-learn and
its own model-fitting loop for what is, with petlab's folds, a threshold per class.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf

from petlab.checkpoint import checkpoint_datamodule, load_checkpoint
from petlab.errors import PetlabError
from petlab.resume import quoted

log = logging.getLogger(__name__)

COLUMNS = ["rank", "name", "split", "target", "given", "suggested", "p_given", "p_suggested", "path"]


def confident_errors(probabilities: np.ndarray, given: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each image (a row of ``probabilities``, its label in ``given``): whether its label is a likely
    error, and the class confident learning suggests (-1 where no class reaches its threshold)."""
    classes = probabilities.shape[1]
    thresholds = np.array([probabilities[given == label, label].mean() if (given == label).any() else 1.0
                           for label in range(classes)])  # fmt: skip
    above = probabilities >= thresholds
    suggested = np.where(above.any(axis=1), np.where(above, probabilities, -1).argmax(axis=1), -1)
    return (suggested >= 0) & (suggested != given), suggested


def fold_runs(folds_dir: Path, folds: int, overrides: list[str], cwd: Path) -> list[Path]:
    """The run directories of a k-fold cross-validation in ``folds_dir``: the existing ones, or a multirun of
    ``folds`` trainings with the audit's ``overrides`` (``-m data.folds=K data.fold=0..K-1``) written there."""
    if not list(folds_dir.glob("*/metrics.json")):
        whole = f"data.fold={','.join(str(fold) for fold in range(folds))}"
        command = [sys.executable, "-m", "petlab", "-m", *overrides, f"data.folds={folds}", whole, "test=false",
                   f"hydra.sweep.dir={quoted(folds_dir)}"]  # fmt: skip
        log.info(f"Label errors: training {folds} folds into {folds_dir}")
        if subprocess.run(command, cwd=cwd).returncode != 0:
            raise PetlabError(f"the k-fold trainings in {folds_dir} failed (see above): fix the options, or skip this "
                              "section with audit.sections without labels")  # fmt: skip
    runs = sorted(path.parent for path in folds_dir.glob("*/metrics.json"))
    configured = {OmegaConf.load(run / ".hydra" / "config.yaml").data.get("folds", 0) for run in runs}
    if not runs or configured != {len(runs)}:
        raise PetlabError(
            f"{folds_dir} is not a finished k-fold cross-validation (its runs: {len(runs)}, data.folds "
            f"{sorted(configured)}): give audit.folds_dir a -m data.folds=K data.fold=0,...,K-1 sweep"
        )
    return runs


@torch.no_grad()
def fold_probabilities(run: Path) -> tuple[list[str], np.ndarray, np.ndarray, list[str], str]:
    """The best checkpoint of one fold run, on its validation fold and the test split: the images' paths,
    class probabilities, given labels, the class names and the target's name; empty when the task has none."""
    checkpoint = load_checkpoint(json.loads((run / "metrics.json").read_text())["best_checkpoint"])
    model, task = checkpoint.model, checkpoint.task
    datamodule = checkpoint_datamodule(checkpoint)
    datamodule.setup("test")
    paths, probabilities, given, names = [], [], [], []
    for split in ("val", "test"):
        if split not in datamodule.datasets:
            continue
        for images, targets in datamodule.loader(split):
            found = task.label_probabilities(task.kept_for_evaluation(model.outputs(images), targets))
            if found is None:
                raise PetlabError(f"task.name={task.name} learns no single label per image")
            probabilities.append(found[0].numpy())
            given.append(found[1].numpy())
            names = found[2]
        paths += datamodule.datasets[split].paths
    target = next(iter(datamodule.keyed_targets.values())).name
    return paths, np.concatenate(probabilities), np.concatenate(given), names, target


def label_errors(frame: pd.DataFrame, runs: list[Path]) -> tuple[pd.DataFrame, int]:
    """The likely label errors among ``frame``'s images, ranked, and how many images had out-of-sample
    probabilities."""
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    labels: dict[str, int] = {}
    for run in runs:
        paths, probabilities, given, class_names, target = fold_probabilities(run)
        for path, row, label in zip(paths, probabilities, given, strict=True):
            sums[path] = sums.get(path, 0) + row
            counts[path] = counts.get(path, 0) + 1
            labels[path] = int(label)
    known = [path for path in frame["path"] if path in sums and labels[path] >= 0]
    if not known:
        return pd.DataFrame(columns=COLUMNS), 0
    probabilities = np.stack([sums[path] / counts[path] for path in known])
    given = np.array([labels[path] for path in known])
    flagged, suggested = confident_errors(probabilities, given)
    rows = frame.set_index("path").loc[known]
    table = pd.DataFrame({
        "name": rows["name"].to_numpy(), "split": rows["split"].to_numpy(), "target": target,
        "given": [class_names[label] for label in given],
        "suggested": [class_names[label] if label >= 0 else "" for label in suggested],
        "p_given": probabilities[np.arange(len(known)), given],
        "p_suggested": np.where(suggested >= 0, probabilities[np.arange(len(known)), suggested.clip(0)], np.nan),
        "path": known,
    })[flagged]  # fmt: skip
    table = table.sort_values("p_given").reset_index(drop=True)
    table.insert(0, "rank", range(1, len(table) + 1))
    return table[COLUMNS], len(known)
