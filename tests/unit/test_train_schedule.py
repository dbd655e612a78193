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
