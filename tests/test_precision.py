"""bfloat16 autocast and channels-last where the CPU runs them fast, fp32 where not; numerics stay fp32."""

import json
from pathlib import Path

import pytest
import torch

from petlab import precision
from petlab.data.targets import Label
from petlab.module import PetModule
from petlab.precision import resolve_precision, uses_channels_last
from petlab.tasks import Classification
from petlab.train import train


@pytest.fixture(params=[["AVX512-BF16"], []], ids=["bf16-cpu", "cpu-without-bf16"])
def cpu_features(request, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A CPU with bfloat16 instructions, and one without (what torch's feature detection reports)."""
    monkeypatch.setattr(precision, "cpu_bf16_features", lambda: request.param)
    return request.param


def test_auto_picks_bf16_and_channels_last_only_on_a_cpu_with_bf16_instructions(cpu_features: list[str]):
    fast = bool(cpu_features)
    assert resolve_precision("auto", "cpu") == ("bf16-mixed" if fast else "32-true")
    assert uses_channels_last("auto", "cpu") is fast and uses_channels_last("auto", "cuda")
    assert resolve_precision("32-true", "cpu") == "32-true" and resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"
    assert uses_channels_last(False, "cpu") is False and uses_channels_last(True, "cpu") is True


def test_a_run_records_the_precision_and_memory_format_it_used(make_cfg, cpu_features: list[str]):
    cfg = make_cfg(["model=cnn", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "test=false"])
    metrics = train(cfg)
    expected = ("bf16-mixed", "channels_last") if cpu_features else ("32-true", "contiguous")
    assert (metrics["precision"], metrics["memory_format"]) == expected
    written = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert (written["precision"], written["memory_format"]) == expected
    checkpoint = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    assert {t.dtype for t in checkpoint["state_dict"].values() if t.is_floating_point()} == {torch.float32}


def test_explicit_settings_override_auto(make_cfg, cpu_features: list[str]):
    overrides = ["model=cnn", "trainer.fast_dev_run=true", "trainer.precision=32-true", "model.channels_last=false"]
    metrics = train(make_cfg(overrides))
    assert (metrics["precision"], metrics["memory_format"]) == ("32-true", "contiguous")


def test_losses_and_metrics_get_fp32_under_bf16_autocast(monkeypatch: pytest.MonkeyPatch):
    task = Classification("species", Label("species", ["cat", "dog"]))
    model = PetModule({"name": "cnn", "pretrained": False}, task, 32, [0.5] * 3, [0.25] * 3)
    seen = []
    update = model.stage_metrics["train_acc"].update
    monkeypatch.setattr(model.stage_metrics["train_acc"], "update", lambda p, t: seen.append(p.dtype) or update(p, t))
    model.log = lambda *args, **kwargs: None  # no Trainer attached
    images, targets = torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8), torch.tensor([0, 1, 0, 1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(torch.randn(2, 3, 32, 32)).dtype == torch.bfloat16  # the network does run in bf16
        loss = model.training_step((images, targets), 0)
    assert loss.dtype == torch.float32 and seen == [torch.float32]
    assert all(p.dtype == torch.float32 for p in model.parameters())
