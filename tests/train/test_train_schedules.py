"""Learning-rate policies against hand values (train/schedules.py)."""
from __future__ import annotations

import pytest

from train.schedules import cosine_lr, cyclic_lr

BASE, MAX, STEP = 1e-4, 6e-3, 10
SPAN = MAX - BASE


def lr(step, mode, **kw):
    return cyclic_lr(step, base_lr=BASE, max_lr=MAX, step_size=STEP, mode=mode, **kw)


def test_triangular_peaks_at_step_size():
    assert lr(0, "triangular") == pytest.approx(BASE)
    assert lr(5, "triangular") == pytest.approx(BASE + SPAN / 2)
    assert lr(10, "triangular") == pytest.approx(MAX)
    assert lr(15, "triangular") == pytest.approx(BASE + SPAN / 2)
    assert lr(20, "triangular") == pytest.approx(BASE)
    assert lr(30, "triangular") == pytest.approx(MAX)  # every cycle reaches the same peak


def test_triangular2_halves_each_cycle():
    assert lr(10, "triangular2") == pytest.approx(MAX)
    assert lr(30, "triangular2") == pytest.approx(BASE + SPAN / 2)
    assert lr(50, "triangular2") == pytest.approx(BASE + SPAN / 4)
    assert lr(45, "triangular2") == pytest.approx(BASE + SPAN / 4 / 2)  # half way up cycle 3
    assert lr(40, "triangular2") == pytest.approx(BASE)


def test_exp_range_decays_the_amplitude():
    gamma = 0.9
    assert lr(0, "exp_range", gamma=gamma) == pytest.approx(BASE)
    assert lr(10, "exp_range", gamma=gamma) == pytest.approx(BASE + SPAN * 0.9**10)
    assert lr(30, "exp_range", gamma=gamma) == pytest.approx(BASE + SPAN * 0.9**30)
    assert lr(5, "exp_range", gamma=gamma) == pytest.approx(BASE + SPAN * 0.5 * 0.9**5)


def test_unknown_cyclic_mode():
    with pytest.raises(ValueError, match="unknown cyclic mode 'sawtooth'"):
        lr(0, "sawtooth")


def test_cosine_warms_up_then_decays_to_min():
    kw = {"max_lr": 1e-3, "total_steps": 110, "warmup_steps": 10, "min_lr": 1e-5}
    assert cosine_lr(0, **kw) == pytest.approx(1e-4)
    assert cosine_lr(9, **kw) == pytest.approx(1e-3)
    assert cosine_lr(10, **kw) == pytest.approx(1e-3)
    assert cosine_lr(60, **kw) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))
    assert cosine_lr(110, **kw) == pytest.approx(1e-5)
    assert cosine_lr(500, **kw) == pytest.approx(1e-5)
