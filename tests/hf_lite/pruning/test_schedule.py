"""The cubic schedule of Zhu & Gupta 2017 against its formula, its update steps, and its checks."""

from __future__ import annotations

import pytest

from hf_lite.pruning import CubicSchedule


def _formula(t: int, s_i: float, s_f: float, t0: int, span: int) -> float:
    return s_f + (s_i - s_f) * (1 - (t - t0) / span) ** 3


@pytest.mark.parametrize(
    ("s_i", "s_f", "t0", "t1"), [(0.0, 0.9, 0, 100), (0.2, 0.5, 30, 230), (0.5, 0.5, 5, 6)]
)
def test_values_at_start_midpoint_end_and_beyond(s_i, s_f, t0, t1):
    s = CubicSchedule(final_sparsity=s_f, initial_sparsity=s_i, start_step=t0, end_step=t1)
    assert s.sparsity_at(t0) == pytest.approx(s_i)
    assert s.sparsity_at(t1) == s_f and s.sparsity_at(t1 + 1000) == s_f
    mid = (t0 + t1) // 2
    assert s.sparsity_at(mid) == pytest.approx(_formula(mid, s_i, s_f, t0, t1 - t0))
    if t0 > 0:
        assert s.sparsity_at(t0 - 1) == 0.0 and s.sparsity_at(0) == 0.0


def test_midpoint_value_is_seven_eighths_of_the_ramp():
    # (1 - 1/2)**3 = 1/8 of the ramp is left at the midpoint
    s = CubicSchedule(final_sparsity=0.8, initial_sparsity=0.0, start_step=100, end_step=300)
    assert s.sparsity_at(200) == pytest.approx(0.8 * 7 / 8)


def test_every_step_matches_formula_and_is_monotonic():
    s = CubicSchedule(final_sparsity=0.75, initial_sparsity=0.1, start_step=10, end_step=73, frequency=7)
    values = [s.sparsity_at(t) for t in range(0, 100)]
    for t in range(10, 73):
        assert values[t] == pytest.approx(_formula(t, 0.1, 0.75, 10, 63))
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))
    # increments shrink: cubic ramps fast first, slowly at the end
    assert values[11] - values[10] > values[72] - values[71] > 0


def test_update_steps_every_frequency_and_at_end():
    s = CubicSchedule(final_sparsity=0.5, start_step=4, end_step=20, frequency=5)
    assert [t for t in range(40) if s.should_update(t)] == [4, 9, 14, 19, 20]
    assert [s.last_update_step(t) for t in (0, 3, 4, 8, 9, 19, 20, 100)] == [None, None, 4, 4, 9, 19, 20, 20]
    every = CubicSchedule(final_sparsity=0.5, start_step=0, end_step=3)
    assert [t for t in range(6) if every.should_update(t)] == [0, 1, 2, 3]


def test_fields_are_normalized_and_frozen():
    s = CubicSchedule(final_sparsity=1 / 2, end_step=10)
    assert isinstance(s.final_sparsity, float) and s.start_step == 0 and s.frequency == 1
    with pytest.raises(AttributeError):
        s.end_step = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"final_sparsity": 1.0, "end_step": 10}, r"final_sparsity=1.0 is outside \[0, 1\)"),
        (
            {"final_sparsity": 0.5, "initial_sparsity": -0.1, "end_step": 10},
            r"initial_sparsity=-0.1 is outside",
        ),
        (
            {"final_sparsity": 0.5, "initial_sparsity": 0.6, "end_step": 10},
            "initial_sparsity=0.6 is above final",
        ),
        (
            {"final_sparsity": 0.5, "start_step": 10, "end_step": 10},
            "end_step=10 must be greater than start_step=10",
        ),
        ({"final_sparsity": 0.5, "start_step": -1, "end_step": 10}, "start_step=-1 is negative"),
        ({"final_sparsity": 0.5, "end_step": 10, "frequency": 0}, "frequency=0 must be >= 1"),
    ],
)
def test_invalid_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CubicSchedule(**kwargs)


def test_invalid_types():
    with pytest.raises(TypeError, match="end_step must be an int"):
        CubicSchedule(final_sparsity=0.5, end_step=10.0)
    with pytest.raises(TypeError, match="final_sparsity must be a float"):
        CubicSchedule(final_sparsity="0.5", end_step=10)
    with pytest.raises(TypeError, match="step must be an int"):
        CubicSchedule(final_sparsity=0.5, end_step=10).sparsity_at(1.5)
