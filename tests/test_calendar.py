"""Calendar features: slot of day and weekday, as indices and sin/cos pairs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from gptst.data.calendar import calendar_features, calendar_indices, infer_step, step_nanoseconds, steps_per_day


@pytest.fixture(scope="module")
def week_timestamps(week_h5) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(pd.read_hdf(week_h5, "df").index)


def test_metr_la_week_starts_thursday_slot_0_and_wraps_at_midnight(week_timestamps):
    slot, weekday, S = calendar_indices(week_timestamps, "5min")

    assert S == 288
    assert week_timestamps[0] == pd.Timestamp("2012-03-01 00:00")
    assert (slot[0], weekday[0]) == (0, 3)  # Thursday, Monday = 0
    assert week_timestamps[287] == pd.Timestamp("2012-03-01 23:55")
    assert (slot[287], weekday[287]) == (287, 3)
    assert (slot[288], weekday[288]) == (0, 4)  # Friday 00:00
    assert (slot[-1], weekday[-1]) == (287, 2)  # Wednesday 2012-03-07 23:55
    assert slot.min() == 0 and slot.max() == 287
    assert sorted(set(weekday.tolist())) == list(range(7))


def test_features_are_sin_cos_of_slot_and_weekday(week_timestamps):
    features = calendar_features(week_timestamps, "5min")

    assert features.shape == (2016, 4) and features.dtype == np.float32
    thursday = (math.sin(2 * math.pi * 3 / 7), math.cos(2 * math.pi * 3 / 7))
    assert thursday == pytest.approx((0.4338837, -0.9009689), abs=1e-6)
    # 00:00 Thursday: angle 0 of the day.
    np.testing.assert_allclose(features[0], [0.0, 1.0, *thursday], atol=1e-6)
    # 06:00 is slot 72, a quarter of the day: sin 1, cos 0.
    np.testing.assert_allclose(features[72], [1.0, 0.0, *thursday], atol=1e-6)
    # Noon, slot 144: half the day.
    np.testing.assert_allclose(features[144], [0.0, -1.0, *thursday], atol=1e-6)
    # 23:55 sits next to 00:00 on the circle.
    np.testing.assert_allclose(
        features[287, :2], [math.sin(2 * math.pi * 287 / 288), math.cos(2 * math.pi * 287 / 288)], atol=1e-6
    )
    # Monday (2012-03-05 00:00, step 4 * 288): weekday angle 0.
    np.testing.assert_allclose(features[4 * 288], [0.0, 1.0, 0.0, 1.0], atol=1e-6)


def test_frequency_is_inferred_from_the_timestamps(week_timestamps):
    np.testing.assert_array_equal(calendar_features(week_timestamps), calendar_features(week_timestamps, "5min"))
    # A few gaps in the index do not change the inferred step.
    gappy = week_timestamps.delete([5, 6, 100, 101, 102])
    assert infer_step(gappy) == pd.Timedelta("5min")
    slot, _, _ = calendar_indices(gappy)
    assert slot[5] == 7


def test_hourly_bike_data_has_24_slots(test_data):
    raw = np.load(test_data / "nycbike-grid" / "nycbike-grid.npz")["timestamps"]
    timestamps = pd.DatetimeIndex(pd.to_datetime(raw))

    slot, weekday, S = calendar_indices(timestamps)
    assert S == 24
    assert (slot[0], weekday[0]) == (23, 0)  # Monday 2014-08-04 23:00
    assert (slot[1], weekday[1]) == (0, 1)
    np.testing.assert_allclose(calendar_features(timestamps)[1, :2], [0.0, 1.0], atol=1e-6)


@pytest.mark.parametrize(("freq", "expected"), [("5min", 288), ("1h", 24), ("h", 24), ("15min", 96), ("D", 1)])
def test_steps_per_day(freq, expected):
    assert steps_per_day(freq) == expected


@pytest.mark.parametrize("freq", ["7min", "2D", "MS"])
def test_a_frequency_that_does_not_divide_a_day_is_an_error(freq):
    with pytest.raises(ValueError, match=freq):
        steps_per_day(freq)


def test_a_single_timestamp_needs_an_explicit_frequency():
    one = pd.DatetimeIndex(["2012-03-01 00:05"])
    with pytest.raises(ValueError, match="pass freq"):
        calendar_indices(one)
    assert calendar_indices(one, "5min").slot.tolist() == [1]


@pytest.mark.parametrize(
    "alias", ["5min", "min", "15min", "1h", "h", "2h", "30s", "s", "500ms", "10us", "7ns", "D", "1D"]
)
def test_fixed_aliases_read_without_pandas_agree_with_pandas(alias):
    assert step_nanoseconds(alias) == pd.Timedelta(pd.tseries.frequencies.to_offset(alias)).value


@pytest.mark.parametrize("freq", ["0min", "MS", "W", "nonsense"])
def test_a_zero_or_calendar_frequency_is_refused_whichever_path_reads_it(freq):
    with pytest.raises(ValueError, match="frequency"):
        step_nanoseconds(freq)


def test_a_datetime64_array_and_a_local_time_index_have_the_calendar_of_their_wall_clock():
    naive = pd.date_range("1969-12-29 22:00", periods=60, freq="h")  # across 1970 and a Monday
    expected = calendar_indices(naive, "h")
    for stamps in (naive.values, naive.tz_localize("America/Los_Angeles")):
        got = calendar_indices(stamps, "h")
        np.testing.assert_array_equal(got.slot, expected.slot)
        np.testing.assert_array_equal(got.weekday, expected.weekday)
    np.testing.assert_array_equal(expected.slot, naive.hour)
    np.testing.assert_array_equal(expected.weekday, naive.day_of_week)
    np.testing.assert_array_equal(calendar_features(naive.values, "h"), calendar_features(naive, "h"))
