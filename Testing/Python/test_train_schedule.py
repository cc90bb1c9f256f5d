"""Learning-rate schedule: linear warm-up then half a cosine, per cycle; cycles restart."""
import math

import pytest

from medals.train.schedule import Cycle, learning_rate, total_steps

ONE = (Cycle(steps=100, warmup=10, peak_lr=1e-3),)


def test_warmup_rises_linearly_to_the_peak():
    assert [learning_rate(s, ONE) for s in (0, 4, 9)] == pytest.approx([1e-4, 5e-4, 1e-3])


def test_decay_follows_half_a_cosine_from_the_peak():
    # step s ≥ warmup: peak · ½(1 + cos(π (s − warmup + 1) / (steps − warmup + 1)))
    assert learning_rate(10, ONE) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi / 91)))
    assert learning_rate(55, ONE) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 46 / 91)))


def test_decay_is_decreasing_and_never_zero():
    rates = [learning_rate(s, ONE) for s in range(10, 100)]
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert rates[-1] > 0


def test_a_second_cycle_restarts_with_its_own_warmup_and_peak():
    cycles = (Cycle(50, 5, 1e-3), Cycle(30, 3, 2e-4))
    assert total_steps(cycles) == 80
    assert learning_rate(50, cycles) == pytest.approx(2e-4 / 3)
    assert learning_rate(52, cycles) == pytest.approx(2e-4)


def test_steps_past_the_end_keep_the_final_rate():
    assert learning_rate(500, ONE) == learning_rate(99, ONE)


def test_a_cycle_with_warmup_not_shorter_than_it_is_refused():
    with pytest.raises(ValueError, match="warmup"):
        Cycle(steps=10, warmup=10, peak_lr=1e-3)
