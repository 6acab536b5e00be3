"""The benchmark runs and its figures are sane; it is not a timed test."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from petlab.bench import augmentation_of, main, run_bench, training_config

PIPELINES = (
    "a_notebook_img_s",
    "b_cold_img_s",
    "b_warm_img_s",
    "c_compute_fp32_img_s",
    "c_compute_default_img_s",
    "d_end_to_end_fp32_img_s",
    "d_end_to_end_default_img_s",
)


@pytest.mark.parametrize("task", ["species", "segmentation"])
def test_the_bench_measures_every_pipeline_and_derives_its_ratios(sample_root: Path, task: str):
    results = run_bench(
        sample_root,
        model="cnn",
        image_size=32,
        batch_size=8,
        images=32,
        workers=0,
        steps=2,
        precision="bf16-mixed",
        repeats=2,
        task=task,
    )
    assert results["task"] == task and all(results[key] > 0 for key in PIPELINES)
    assert results["b_cold_img_s"] < results["b_warm_img_s"] * 1.5  # cold includes building the cache
    ratio = results["b_warm_img_s"] / results["a_notebook_img_s"]
    assert results["ratio_b_warm_over_a"] == pytest.approx(ratio, rel=1e-2)
    speedup = results["d_end_to_end_default_img_s"] / results["d_end_to_end_fp32_img_s"]
    assert results["speedup_d_default_over_fp32"] == pytest.approx(speedup, rel=1e-2)
    assert results["precision"] == "bf16-mixed" and results["repeats"] == 2
    assert results["ratio_d_over_c_fp32"] > 0 and results["ratio_d_over_c_default"] > 0
    assert results["images"] == 32 and results["cache_mb"] > 0 and results["peak_rss_mb"] > 100


@pytest.mark.slow
def test_the_quick_bench_command_prints_its_figures(sample_root: Path):
    result = subprocess.run(
        [sys.executable, "-m", "petlab.bench", "--quick", "--model", "cnn", "--workers", "0", "--root",
         str(sample_root), "--json"], capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["image_size"] == 64 and all(figures[key] > 0 for key in PIPELINES)


def test_the_bench_takes_the_training_runs_settings_and_refuses_what_it_cannot_use(sample_root: Path, capsys):
    assert augmentation_of(training_config("species", overrides=["data.augment=null"]).data) == {}
    assert training_config("species", overrides=["data.crop_margin=0.3"]).data.crop_margin == 0.3
    for arguments, message in [
        (["--task", "predict", "data.crop_margin=0"], "data.crop_margin=0: a task's training settings, which --task "
         "predict does not take"),
        (["--task", "nosuch"], "--task nosuch is not a task config: choose one of breed, head_box"),
        (["data.crop_margin=nosuch"], "data.crop_margin='nosuch' is not valid: it must be a number"),
        (["--task", "species", "model=resnet50"], "model=resnet50: the bench sets this with --model"),
        (["data.image_size=64"], "data.image_size=64: the bench sets this with --image-size"),
    ]:  # fmt: skip
        with pytest.raises(SystemExit) as exited:
            main(["--root", str(sample_root), *arguments])
        problem = capsys.readouterr().err
        assert exited.value.code == 2 and message in problem and problem.count("\n") == 1, problem
