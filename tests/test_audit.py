"""petlab.audit on generated data with planted faults (copies across splits, flipped labels, a blank picture,
moved head boxes), on a clean set, and the data options that act on it (data.exclude, data.relabel,
data.dedupe)."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import compose_config, run_module
from petlab.audit.labels import confident_errors
from petlab.audit.scoring import score
from petlab.data.curation import Curation
from petlab.data.frame import Splitting, build_frame
from petlab.data.sample import generate_sample
from petlab.data.signatures import close_pairs, signature
from petlab.data.targets.label import Label
from petlab.errors import PetlabError


def snapshot(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): hashlib.sha1(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}  # fmt: skip


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """37 breeds x 10 drawn pets at 64 px, with 11 copies in the other split, 18 flipped species labels, a blank
    picture and 3 head boxes moved off the pet (listed in planted_faults.csv)."""
    return generate_sample(tmp_path_factory.mktemp("planted") / "pets", per_breed=10, size=64, seed=0, faults=True)


@pytest.fixture(scope="module")
def audited(planted: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    """The whole audit of the planted sample, as a user runs it (3 folds of the CNN, 8 epochs each, for the
    label section); its folder, the working directory, and the dataset's files before it."""
    cwd = tmp_path_factory.mktemp("audit")
    before = snapshot(planted)
    done = run_module("petlab.audit", f"data.root={planted}", "model=cnn", "data.image_size=64", "data.batch_size=16",
                      "trainer.max_epochs=8", "callbacks.progress_bar=null", f"hydra.run.dir={cwd / 'audit'}",
                      cwd=cwd)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return cwd / "audit", cwd, before


@pytest.mark.slow
def test_the_audit_finds_the_planted_faults_and_leaves_the_dataset_alone(planted: Path, audited):
    audit_dir, _, before = audited
    found = score(audit_dir, planted / "planted_faults.csv")
    # Measured: copies 11/11 (re-encoded, resized to 75%, cropped 3% a side, brightened), all leaks; 3 pairs of
    # different drawn pets as alike as copies; flipped labels 0.81 precision, 0.94 recall; the rest exact.
    assert found["duplicates"]["recall"] >= 0.9 and found["leaks"]["recall"] >= 0.9, found
    assert found["duplicates"]["precision"] >= 0.6, found
    # Chance would be 18 of 382 images (0.05).
    assert found["labels"]["recall"] >= 0.6 and found["labels"]["precision"] >= 0.5, found
    assert found["annotations"] == {"planted": 3, "flagged": 3, "precision": 1.0, "recall": 1.0}, found
    faults = pd.read_csv(planted / "planted_faults.csv")
    outliers = pd.read_csv(audit_dir / "outliers.csv")
    assert outliers["name"].iloc[0] == faults.loc[faults["kind"] == "blank", "name"].iloc[0]
    assert "nearly blank" in outliers["reasons"].iloc[0]
    labels = pd.read_csv(audit_dir / "labels.csv")
    flipped = set(faults.loc[faults["kind"] == "flipped", "name"])
    assert len(set(labels["name"].head(len(flipped))) & flipped) >= 0.6 * len(flipped)
    assert (labels["given"] != labels["suggested"]).all() and set(labels["suggested"]) <= {"cat", "dog"}
    assert snapshot(planted) == before  # nothing written into the dataset


@pytest.mark.slow
def test_the_audit_writes_its_report_sheets_suggestions_and_tensorboard(audited):
    audit_dir, _, _ = audited
    report = (audit_dir / "report.md").read_text()
    # The report opens with the counts of every section.
    head = report.split("## ")[0]
    assert all(f"**{section}**" in head for section in ("duplicates", "labels", "outliers", "annotations"))
    for section in ("duplicates", "labels", "outliers", "annotations"):
        assert (audit_dir / f"{section}.csv").is_file() and (audit_dir / f"{section}.png").is_file()
    assert list((audit_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert len(list((audit_dir / "folds").glob("*/metrics.json"))) == 3
    exclude = (audit_dir / "exclude.txt").read_text().splitlines()
    active = [line for line in exclude if line.strip() and not line.startswith("#")]
    copies = pd.read_csv(audit_dir / "duplicates.csv")
    assert {line.split("#")[0].strip() for line in active} >= set(copies.loc[~copies["keep"], "name"])
    assert any("nearly blank" in line for line in active)  # the planted blank picture: out, not only listed
    relabel = pd.read_csv(audit_dir / "relabel.csv")
    assert list(relabel.columns[:3]) == ["name", "target", "label"] and len(relabel) == len(
        pd.read_csv(audit_dir / "labels.csv")
    )


@pytest.mark.slow
def test_a_run_with_the_audits_files_drops_and_relabels_and_records_them(planted: Path, audited, tmp_path: Path):
    from petlab.train import train

    audit_dir, _, _ = audited
    exclude, relabel = audit_dir / "exclude.txt", audit_dir / "relabel.csv"
    cfg = compose_config(planted, tmp_path / "run", [
        "model=cnn", "trainer.max_epochs=1", "trainer.limit_train_batches=2", f"data.exclude={exclude}",
        f"data.relabel={relabel}", "data.dedupe=leaks",
    ])  # fmt: skip
    metrics = train(cfg)
    recorded = metrics["data_files"]
    assert recorded["data.exclude"]["sha256"] == hashlib.sha256(exclude.read_bytes()).hexdigest()
    assert recorded["data.relabel"]["sha256"] == hashlib.sha256(relabel.read_bytes()).hexdigest()
    report = (tmp_path / "run" / "data_report.md").read_text()
    excluded = sum(1 for line in exclude.read_text().splitlines() if line.strip() and not line.startswith("#"))
    assert f"{excluded} images excluded" in report
    assert f"{len(pd.read_csv(relabel))} labels changed" in report


def test_a_clean_generated_set_reports_no_faults_beyond_the_stated_rate(tmp_path: Path):
    root = generate_sample(tmp_path / "clean", per_breed=10, size=64, seed=0)
    done = run_module("petlab.audit", f"data.root={root}", "audit.sections=[duplicates,outliers,annotations]",
                      f"hydra.run.dir={tmp_path / 'audit'}", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    copies = pd.read_csv(tmp_path / "audit" / "duplicates.csv")
    pairs = 370 * 369 / 2
    # The README's rate for drawn pets (alike by design): at most 5e-5 of the pairs (measured 2-4e-5).
    assert (len(copies) - copies["group"].nunique()) <= 5e-5 * pairs
    assert len(pd.read_csv(tmp_path / "audit" / "outliers.csv")) == 0
    assert len(pd.read_csv(tmp_path / "audit" / "annotations.csv")) == 0
    assert "labels:" not in done.stdout  # only the sections asked for ran


def test_copies_are_near_and_other_photos_far(planted: Path):
    faults = pd.read_csv(planted / "planted_faults.csv")
    copies = faults[faults["kind"] == "copy"]
    hashes = [signature(str(planted / "images" / f"{name}.jpg")).phashes
              for pair in zip(copies["name"], copies["original"], strict=True) for name in pair]  # fmt: skip
    pairs = close_pairs(hashes, 6)
    found = {(first, second) for first, second in zip(pairs["first"], pairs["second"], strict=True)}
    assert {(2 * i, 2 * i + 1) for i in range(len(copies))} <= found


def test_confident_learning_flags_what_the_models_contradict():
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.2, 0.8], [0.95, 0.05], [0.6, 0.4]])
    given = np.array([0, 0, 1, 1, 1, 1])
    flagged, suggested = confident_errors(probabilities, given)
    # Class 0's threshold is 0.85 (its labelled images' mean): image 4 reaches it, image 5 (0.6) does not.
    assert flagged.tolist() == [False, False, False, False, True, False]
    assert suggested[4] == 0


def test_exclude_relabel_and_dedupe_apply_without_touching_the_dataset(planted: Path, tmp_path: Path, caplog):
    faults = pd.read_csv(planted / "planted_faults.csv")
    flipped = faults[faults["kind"] == "flipped"]
    exclude = tmp_path / "exclude.txt"
    exclude.write_text("# out\nBengal_1  # a comment\nno_such_image\n")
    relabel = tmp_path / "relabel.csv"
    wanted = {"cat": "dog", "dog": "cat"}
    rows = [(name, "species", wanted["cat" if name[0].isupper() else "dog"]) for name in flipped["name"]]
    pd.DataFrame(rows, columns=["name", "target", "label"]).to_csv(relabel, index=False)
    before = snapshot(planted)
    with caplog.at_level(logging.WARNING):
        built = build_frame(planted, "pets", {"species": Label("species")}, True, Splitting(),
                            curation=Curation.from_options(exclude, relabel, "leaks"))  # fmt: skip
    frame = built.frame.set_index("name")
    assert "Bengal_1" not in frame.index and "no_such_image" in caplog.text
    assert "Bengal_1" in set(built.skipped["name"])
    for name, _, label in rows:
        assert frame.loc[name, "value/species"] == label
    copies = faults[faults["kind"] == "copy"]
    # Each copy sits in the other split: the one in test (or val) is dropped, the train one kept.
    kept = set(frame.index)
    for copy, original in zip(copies["name"], copies["original"], strict=True):
        assert not (copy in kept and original in kept) or frame.loc[[copy, original], "split"].nunique() == 1
    notes = "\n".join(built.notes)
    assert "1 images excluded, 1 names not found" in notes and f"{len(rows)} labels changed" in notes
    assert "data.dedupe=leaks" in notes
    assert snapshot(planted) == before


def test_the_hashes_dedupe_needs_are_computed_once_per_index(planted: Path, tmp_path: Path, monkeypatch):
    import petlab.data.signatures as signatures_module

    paths = sorted(str(path) for path in (planted / "images").glob("*.jpg"))[:6]
    hashed: list[str] = []
    computed = signatures_module.signatures

    def counted(files: list[str]) -> list:
        hashed.extend(files)
        return computed(files)

    monkeypatch.setattr(signatures_module, "signatures", counted)
    first = signatures_module.cached_phashes(paths[:4], tmp_path, "index-1")
    assert first == [signature(path).phashes for path in paths[:4]] and len(hashed) == 4
    assert signatures_module.cached_phashes(paths[:4], tmp_path, "index-1") == first and len(hashed) == 4
    signatures_module.cached_phashes(paths, tmp_path, "index-1")
    assert hashed[4:] == paths[4:]  # only the new files
    signatures_module.cached_phashes(paths[:1], tmp_path, "index-2")  # another index: hashed again
    assert len(hashed) == 7


def test_bad_curation_options_are_one_line_each(planted: Path, tmp_path: Path):
    relabel = tmp_path / "relabel.csv"
    relabel.write_text("name,target,label\nBengal_1,breed,beagle\n")
    with pytest.raises(PetlabError, match="relabels breed, which this task does not learn"):
        build_frame(planted, "pets", {"species": Label("species")}, True, Splitting(),
                    curation=Curation.from_options(None, relabel, "none"))  # fmt: skip
    relabel.write_text("name,target,label\nBengal_1,species,horse\n")
    with pytest.raises(PetlabError, match="horse is not a species"):
        build_frame(planted, "pets", {"species": Label("species")}, True, Splitting(),
                    curation=Curation.from_options(None, relabel, "none"))  # fmt: skip
    relabel.write_text("file,label\nBengal_1,dog\n")
    with pytest.raises(PetlabError, match="has no name, target column"):
        build_frame(planted, "pets", {"species": Label("species")}, True, Splitting(),
                    curation=Curation.from_options(None, relabel, "none"))  # fmt: skip
    with pytest.raises(PetlabError, match=r"unknown data\.dedupe='all'"):
        Curation.from_options(None, None, "all")
    for command, message in [
        ([f"data.root={tmp_path / 'nowhere'}"], "no dataset at"),
        ([f"data.root={planted}", f"data.exclude={tmp_path / 'missing.txt'}"], "data.exclude="),
        ([f"data.root={planted}", "audit.sections=[duplicates,colours]"], "unknown audit.sections colours"),
    ]:
        done = run_module("petlab.audit", *command, cwd=tmp_path)
        output = done.stdout + done.stderr
        assert done.returncode == 2 and message in output and "Traceback" not in output, output
    done = run_module("petlab.audit", f"data.root={planted}", "task=segmentation", "audit.sections=[labels]",
                      cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0 and "labels: skipped: task.name=segmentation learns no single label" in done.stdout


def test_the_bench_times_an_audit_and_scores_the_planted_faults(planted: Path, capsys):
    from petlab.bench import main

    main(["--task", "audit", "--root", str(planted), "--json"])
    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert results["images"] == 382 and results["seconds"] > 0
    assert results["planted"]["leaks"]["recall"] >= 0.9 and results["planted"]["outliers"]["recall"] == 1.0
    assert "labels" not in results["planted"]  # no --epochs: no training
