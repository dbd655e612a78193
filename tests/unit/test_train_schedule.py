"""Learning-rate schedule of ``g2i train``: warmup, cosine decay to 0, constant, validation."""

from __future__ import annotations

import math

import pytest

from g2i_core.model.train import TrainConfig, learning_rate


def test_cosine_warms_up_linearly_then_decays_to_zero_at_the_last_step():
    cfg = TrainConfig(steps=1000, lr=1e-3, lr_warmup_steps=100)
    assert learning_rate(cfg, 1) == pytest.approx(1e-5)
    assert learning_rate(cfg, 50) == pytest.approx(5e-4)
    assert learning_rate(cfg, 100) == pytest.approx(1e-3)
    assert learning_rate(cfg, 550) == pytest.approx(5e-4)  # half-way through the decay
    assert learning_rate(cfg, 1000) == pytest.approx(0.0, abs=1e-12)
    after = [learning_rate(cfg, s) for s in range(100, 1001)]
    assert all(a >= b for a, b in zip(after, after[1:], strict=False))  # never rises after the warmup
    assert learning_rate(cfg, 1200) == pytest.approx(0.0, abs=1e-12)  # past the end (a longer resume) stays at 0


def test_constant_keeps_the_peak_after_the_warmup():
    cfg = TrainConfig(steps=1000, lr=2e-4, lr_warmup_steps=10, lr_schedule="constant")
    assert learning_rate(cfg, 5) == pytest.approx(1e-4)
    assert [learning_rate(cfg, s) for s in (10, 500, 1000)] == [pytest.approx(2e-4)] * 3


def test_warmup_longer_than_the_run_never_divides_by_zero():
    cfg = TrainConfig(steps=10, lr=1e-3, lr_warmup_steps=50)
    assert all(math.isfinite(learning_rate(cfg, s)) for s in range(1, 11))


def test_unknown_schedule_is_a_clear_error():
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        TrainConfig(lr_schedule="linear")


def test_preset_tiny16_brings_the_suites_training_settings_unless_a_flag_is_given(monkeypatch, tmp_path, capsys):
    """`g2i train --preset tiny16` (what `make demo` trains) is the suite's TINY16 at lr 1e-3 with condition
    dropout 0.1; a flag given on the command line wins; other presets keep TrainConfig's defaults."""
    from g2i_core.cli import main
    from g2i_core.evaluate.suite import TINY16
    from g2i_core.model import train as train_mod
    from g2i_core.model.config import tiny16_config

    seen = []

    def fake_train(cfg, settings):
        seen.append(cfg)
        return train_mod.TrainResult("m", {1: 0.5}, 1.0, 16.0, 1.0, 0)

    monkeypatch.setattr(train_mod, "train", fake_train)
    monkeypatch.setenv("G2I_STORAGE_ROOT", f"file://{tmp_path}")
    assert main(["train", "--run-id", "a", "--preset", "tiny16", "--steps", "5"]) == 0
    assert main(["train", "--run-id", "b", "--preset", "tiny16", "--lr", "5e-4", "--p-drop-graph", "0.2"]) == 0
    assert main(["train", "--run-id", "c", "--preset", "tiny"]) == 0
    assert main(["train", "--run-id", "d", "--preset", "sd15"]) == 0
    a, b, c, d = seen
    assert (a.lr, a.p_drop_text, a.p_drop_graph, a.p_drop_both) == (1e-3, 0.1, 0.1, 0.1)
    assert (b.lr, b.p_drop_text, b.p_drop_graph) == (5e-4, 0.1, 0.2)
    assert (c.lr, c.p_drop_graph) == (3e-4, 0.05)
    assert d.lr == 1e-5  # pretrained weights are fine-tuned at the reference's rate, not the tiny one
    mcfg = train_mod.model_config_for(a, None)
    assert mcfg.resolution == 16 and mcfg.qformer_num_layers == 1 and mcfg.unet_config["block_out_channels"] == (32, 64)
    assert tiny16_config().to_dict() == train_mod.tiny_config(**TINY16).to_dict()  # the suite's architecture
