"""Chronological splits and index-based windows (the reference's split rule)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from gptst.data.splits import SPLIT_NAMES, chronological_split, robust_floor
from gptst.data.windows import WindowIndex, make_splits, window_index
from gptst.errors import InputError
from gptst.params import SplitRatios, WindowParams


@pytest.fixture(scope="module")
def week_steps(week_h5) -> int:
    return len(pd.read_hdf(week_h5, "df"))


def test_metr_la_week_splits_into_1412_201_403_steps_in_time_order(week_steps):
    steps = chronological_split(week_steps, SplitRatios(train=0.7, val=0.1, test=0.2))

    assert week_steps == 2016
    assert steps.sizes() == {"train": 1412, "val": 201, "test": 403}
    assert steps.train.start == 0
    assert steps.train.stop == steps.val.start
    assert steps.val.stop == steps.test.start
    assert steps.test.stop == steps.n_steps == 2016


def test_metr_la_week_gives_1389_178_380_windows_at_12_to_12(week_steps):
    splits = make_splits(week_steps, SplitRatios(), WindowParams(t_in=12, t_out=12))

    assert splits.counts() == {"train": 1389, "val": 178, "test": 380}
    assert (splits.t_in, splits.t_out) == (12, 12)


@pytest.mark.parametrize(("t_in", "t_out"), [(12, 12), (12, 3), (6, 12), (1, 1), (24, 7)])
def test_every_split_holds_s_minus_window_length_plus_one_windows_none_crossing_its_boundary(week_steps, t_in, t_out):
    splits = make_splits(week_steps, SplitRatios(), WindowParams(t_in=t_in, t_out=t_out))

    for name in SPLIT_NAMES:
        steps, windows = splits.steps[name], splits[name]
        assert len(windows) == len(steps) - t_in - t_out + 1
        assert np.all(np.diff(windows.starts) == 1)  # stride 1
        # Every step a window touches, inputs and targets, lies inside the split.
        assert windows.input_steps().min() == steps.start
        assert windows.target_steps().max() == steps.stop - 1
        assert np.all(windows.input_steps() >= steps.start)
        assert np.all(windows.target_steps() < steps.stop)


def test_a_window_reads_t_in_steps_then_the_next_t_out_steps():
    windows = window_index(range(100, 120), t_in=6, t_out=3, split="val")

    assert windows.starts[0] == 100
    np.testing.assert_array_equal(windows.input_steps()[0], np.arange(100, 106))
    np.testing.assert_array_equal(windows.target_steps()[0], np.arange(106, 109))
    np.testing.assert_array_equal(windows.target_steps()[-1], np.arange(117, 120))


def test_windows_are_start_indices_not_copies():
    windows = window_index(range(0, 2016), t_in=12, t_out=12)

    assert windows.starts.dtype == np.int64
    assert windows.starts.shape == (2016 - 24 + 1,)
    with pytest.raises(ValueError):
        windows.starts[0] = 5  # read-only: shared by every consumer


def test_last_n_windows_are_the_most_recent():
    windows = window_index(range(10, 50), t_in=4, t_out=2)

    tail = windows.last(5)
    assert isinstance(tail, WindowIndex)
    np.testing.assert_array_equal(tail.starts, windows.starts[-5:])
    assert windows.last(None) is windows
    assert len(windows.last(10_000)) == len(windows)


def test_robust_floor_survives_binary_rounding():
    # 100 * 0.29 is 28.999999999999996 in floating point; a plain floor drops a test step.
    assert math.floor(100 * 0.29) == 28
    assert robust_floor(100 * 0.29) == 29
    # 2016 * 0.2 is 403.20000000000005: still 403.
    assert robust_floor(2016 * 0.2) == 403
    assert robust_floor(7.9999) == 7


def test_split_uses_the_robust_floor():
    steps = chronological_split(100, SplitRatios(train=0.51, val=0.2, test=0.29))

    assert steps.sizes() == {"train": 51, "val": 20, "test": 29}


def test_split_accepts_a_plain_ratio_tuple():
    assert chronological_split(2016, (0.6, 0.2, 0.2)).sizes() == {"train": 1210, "val": 403, "test": 403}


def test_too_few_steps_for_a_window_names_the_split_and_the_numbers():
    # 40 steps at 0.7/0.1/0.2: train 28, val 4, test 8; a 12 -> 12 window needs 24.
    with pytest.raises(InputError) as err:
        make_splits(40, SplitRatios(), WindowParams(t_in=12, t_out=12))

    message = str(err.value)
    assert "val split has 4 steps" in message
    assert "24" in message


def test_unknown_split_name_is_a_key_error(week_steps):
    splits = make_splits(week_steps, SplitRatios(), WindowParams())

    assert splits["test"] is splits.test
    with pytest.raises(KeyError, match="validation"):
        splits["validation"]
