"""Resuming a run: its own config, its record kept, harmless overrides applied, the others refused."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from petlab.cli import user_error
from petlab.errors import PetlabError
from petlab.optim import one_cycle
from petlab.resume import check_resume, newest_training, overrides_of
from petlab.train import train

TINY = [
    "data=sample", "model=cnn", "data.image_size=32", "data.batch_size=16", "data.num_workers=0",
    "trainer.limit_train_batches=2", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2",
    "trainer.accelerator=cpu", "callbacks.progress_bar=null",
]  # fmt: skip


def petlab(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PETLAB_ROOT": str(project), "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", "petlab", *args], cwd=project, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip


def digests(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha1(path.read_bytes()).hexdigest() for path in sorted(folder.glob("*.yaml"))}


@pytest.mark.slow
def test_a_bare_resume_continues_the_run_as_configured_and_keeps_its_record(tmp_path: Path, sample_root: Path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "sample-pets").symlink_to(sample_root)
    run = tmp_path / "outputs" / "custom" / "first"  # a custom hydra.run.dir, not under outputs/runs/
    trained = petlab(tmp_path, *TINY, "trainer.max_epochs=1", f"hydra.run.dir={run}")
    assert trained.returncode == 0, trained.stderr[-3000:]
    record = digests(run / ".hydra")

    for order in (["--cfg", "job", "ckpt_path=last"], ["ckpt_path=last", "--cfg", "job"]):
        shown = petlab(tmp_path, *order)
        assert shown.returncode == 0, shown.stderr[-2000:]
        composed = yaml.safe_load(shown.stdout)
        assert composed["model"]["backbone"]["name"] == "cnn" and composed["data"]["image_size"] == 32
        assert composed["ckpt_path"] == str(run / "checkpoints" / "last.ckpt")

    resumed = petlab(tmp_path, "ckpt_path=last", "trainer.max_epochs=2", "+tags_note=resumed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = petlab(tmp_path, "ckpt_path=last", "trainer.max_epochs=2", "+tags_note=resumed", "--cfg", "job")
    assert again.returncode == 0 and "tags_note: resumed" in again.stdout  # the same command again composes
    assert yaml.safe_load((run / "metrics.json").read_text())["epochs"] == 2
    assert digests(run / ".hydra") == record  # the run's own config is never rewritten
    (resume_record,) = (run / ".hydra").glob("resume-*")
    assert "trainer.max_epochs=2" in yaml.safe_load((resume_record / "overrides.yaml").read_text())
    assert yaml.safe_load((resume_record / "config.yaml").read_text())["trainer"]["max_epochs"] == 2

    for refused, words in [("model=resnet34", "config groups"), ("data.image_size=64", "data.image_size was 32")]:
        result = petlab(tmp_path, "ckpt_path=last", refused)
        output = result.stdout + result.stderr
        assert result.returncode == 2 and words in output and "Traceback" not in output, output[-2000:]
    assert len(list((run / ".hydra").glob("resume-*"))) == 1  # a refused resume leaves no record
    assert digests(run / ".hydra") == record

    # The run is finished (2 of its 2 epochs): resuming it again changes nothing and says how to train on.
    results = hashlib.sha1((run / "metrics.json").read_bytes()).hexdigest()
    again = petlab(tmp_path, "ckpt_path=last")
    output = again.stdout + again.stderr
    assert again.returncode == 2 and "is finished: it trained its 2 epochs" in output, output[-2000:]
    assert "trainer.max_epochs" in output and "Traceback" not in output
    assert hashlib.sha1((run / "metrics.json").read_bytes()).hexdigest() == results
    assert len(list((run / ".hydra").glob("resume-*"))) == 1

    nowhere = petlab(tmp_path, "ckpt_path=last", f"hydra.run.dir={tmp_path / 'nowhere'}")
    assert nowhere.returncode == 2 and f"looked at {tmp_path / 'nowhere'}" in nowhere.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "not a loadable petlab checkpoint"), (os.urandom(3000), "not a loadable petlab checkpoint"),
     (None, "not a petlab checkpoint"), ("last", "resolved on the command line of a single run")],
)  # fmt: skip
def test_a_broken_or_foreign_checkpoint_is_a_one_line_error(make_cfg, tmp_path: Path, content, message: str):
    path = tmp_path / "given.ckpt"
    if content == "last":  # as a config file or a sweep would give it, never resolved to a run
        path = "last"
    elif content is None:
        torch.save({"state_dict": {"weight": torch.zeros(2)}}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(Exception) as raised:
        train(make_cfg(["model=cnn", f"ckpt_path={path}"]))
    assert isinstance(user_error(raised.value), PetlabError) and message in str(user_error(raised.value))


def test_a_truncated_checkpoint_of_a_real_run_is_refused(trained_run: Path, make_cfg, tmp_path: Path):
    whole = (trained_run / "checkpoints" / "last.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(Exception) as raised:
        train(make_cfg(["task=breed", "model=cnn", f"ckpt_path={tmp_path / 'cut.ckpt'}"]))
    assert "not a loadable petlab checkpoint" in str(user_error(raised.value))


def test_the_best_epochs_weights_are_refused_for_a_resume(trained_run: Path, make_cfg):
    best = Path(json.loads((trained_run / "metrics.json").read_text())["best_checkpoint"])
    assert "optimizer_states" not in torch.load(best, map_location="cpu", weights_only=True)
    with pytest.raises(Exception) as raised:
        train(make_cfg(["task=breed", "model=cnn", f"ckpt_path={best}"]))
    message = str(user_error(raised.value))
    assert "holds the weights only" in message and "last.ckpt" in message


def test_resuming_with_other_model_or_data_settings_names_each_difference():
    label = {"class": "petlab.data.targets.label.Label", "name": "species"}
    task = {"name": "species", "target": {**label, "classes": ["cat", "dog"]}, "dropout": 0.5}
    checkpoint = {
        "hyper_parameters": {"backbone": {"name": "cnn"}, "task": task, "image_size": 32},
        "petlab": {"data": {"seed": 1, "split": "official", "num_workers": 4}},
    }
    same = {"backbone": {"name": "cnn"}, "task": {**task, "dropout": 0.2}, "image_size": 32}
    check_resume(checkpoint, same, {"seed": 1, "split": "official", "num_workers": 0}, Path("x.ckpt"))
    other = {**same, "backbone": {"name": "resnet34"},
             "task": {**task, "target": {**label, "classes": ["Abyssinian", "Bengal"]}}}  # fmt: skip
    with pytest.raises(PetlabError) as raised:
        check_resume(checkpoint, other, {"seed": 2, "split": "official"}, Path("x.ckpt"))
    message = str(raised.value)
    assert "model.backbone.name was cnn, now resnet34" in message and "the classes was [cat, dog]" in message
    assert "data.seed was 1, now 2" in message and "dropout" not in message and "\n" not in message
    saved = {**checkpoint, "hyper_parameters": {**checkpoint["hyper_parameters"], "norm_bias_weight_decay": None,
                                                "task": {**task, "monitor": "val/acc", "mode": "max"}}}  # fmt: skip
    changed = {**same, "norm_bias_weight_decay": 0.0, "task": {**task, "monitor": "val/loss", "mode": "min"}}
    with pytest.raises(PetlabError) as raised:
        check_resume(saved, changed, {}, Path("x.ckpt"))
    message = str(raised.value)  # an unset setting (null) differs from any value
    assert "task.monitor was val/acc, now val/loss" in message and "task.mode was max, now min" in message
    assert "model.norm_bias_weight_decay was None, now 0.0" in message


def test_the_one_cycle_schedule_resumes_exactly_or_stretched_to_more_steps():
    def optimizer() -> torch.optim.Optimizer:
        return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.1)

    whole = one_cycle(optimizer(), total_steps=10)
    rates = []
    for _ in range(10):
        rates.append(whole.get_last_lr()[0])
        whole.optimizer.step()
        whole.step()
    first = one_cycle(optimizer(), total_steps=10)
    for _ in range(4):
        first.optimizer.step()
        first.step()
    same = one_cycle(optimizer(), total_steps=10)
    same.load_state_dict(first.state_dict())
    assert same.get_last_lr()[0] == pytest.approx(rates[4])
    longer = one_cycle(optimizer(), total_steps=20)
    longer.load_state_dict(first.state_dict())
    reference = one_cycle(optimizer(), total_steps=20)  # the 20-step cycle the resumed run now follows
    for _ in range(4):
        reference.optimizer.step()
        reference.step()
    for _ in range(15):  # past the first schedule's 10 steps: torch's own OneCycleLR raises here
        for schedule in (longer, reference):
            schedule.optimizer.step()
            schedule.step()
        assert longer.get_last_lr()[0] == pytest.approx(reference.get_last_lr()[0])
    assert longer.total_steps == 20


def test_hydra_options_and_their_values_are_not_overrides():
    argv = ["--cfg", "job", "ckpt_path=last", "-m", "--config-dir", "/x", "seed=1", "--package=_global_"]
    assert overrides_of(argv) == ["ckpt_path=last", "seed=1"]


def test_ckpt_path_last_never_resumes_another_run_than_the_most_recent(trained_run: Path, tmp_path: Path):
    import shutil
    import time

    finished = tmp_path / "outputs" / "runs" / "finished"
    shutil.copytree(trained_run, finished)
    (finished / ".hydra").mkdir(exist_ok=True)
    (finished / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"optimizer": {"lr": 0.001}, "seed": 0}))
    (finished / "checkpoints" / "last.ckpt").touch()
    before = {path: path.read_bytes() for path in finished.rglob("*") if path.is_file()}
    time.sleep(0.05)
    killed = tmp_path / "outputs" / "runs" / "killed"  # killed before its first checkpoint
    shutil.copytree(finished / ".hydra", killed / ".hydra")
    (killed / ".hydra" / "config.yaml").touch()
    result = petlab(tmp_path, "ckpt_path=last")
    output = result.stdout + result.stderr
    assert result.returncode == 2 and f"the most recent run, {killed}, has no checkpoint" in output, output[-2000:]
    assert f"the newest run with one is {finished}" in output and "Traceback" not in output
    assert {path: path.read_bytes() for path in finished.rglob("*") if path.is_file()} == before
    assert sorted(path.name for path in killed.iterdir()) == [".hydra"]


def test_a_run_killed_while_writing_its_final_files_completes_them_on_resume(make_cfg, tmp_path: Path):
    options = ["model=cnn", "trainer.max_epochs=2", "trainer.limit_train_batches=3", "callbacks.early_stopping=null"]
    whole = train(make_cfg(options))
    run = tmp_path / "run"
    # Killed after its last checkpoint, before metrics.json and the evaluation files were written.
    (run / "metrics.json").unlink()
    completed = train(make_cfg([*options, f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"]))
    for key in ("val/acc", "val/loss", "val/acc_best", "train/loss", "train/acc", "test/acc", "epochs", "best_epoch"):
        assert completed[key] == whole[key], key
    assert json.loads((run / "metrics.json").read_text())["val/acc_best"] == whole["val/acc_best"]


def test_the_newest_training_run_is_the_latest_started_or_checkpointed_that_trains(tmp_path: Path):
    def run(name: str, config: str, moment: float, checkpoint_moment: float | None = None) -> Path:
        folder = tmp_path / name
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "config.yaml").write_text(config)
        os.utime(folder / ".hydra" / "config.yaml", (moment, moment))
        if checkpoint_moment is not None:
            (folder / "checkpoints").mkdir()
            (folder / "checkpoints" / "last.ckpt").write_bytes(b"")
            os.utime(folder / "checkpoints" / "last.ckpt", (checkpoint_moment, checkpoint_moment))
        return folder

    older = run("runs/older", "optimizer: {lr: 0.1}\n", 100, checkpoint_moment=400)
    run("runs/newer", "optimizer: {lr: 0.1}\n", 300)
    run("evaluations/latest", "ckpt_path: x\n", 500)  # not a training run
    run("audits/latest", "optimizer: {lr: 0.1}\naudit: {}\n", 600)
    run("runs/broken", "optimizer: [\n", 700)  # unreadable: skipped
    assert newest_training(tmp_path) == older  # its checkpoint (400) is newer than the other's start (300)
    assert newest_training(tmp_path / "nowhere") is None
