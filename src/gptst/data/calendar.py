"""Calendar of each step: slot of day and weekday, as integers and as sin/cos features.

One function serves the ``calendar`` baseline variant (the features as extra inputs) and
GPT-ST's time encoders (the integer indices, or the same features).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from pandas.tseries.frequencies import to_offset

DAY = pd.Timedelta(days=1)
N_FEATURES = 4
FEATURE_NAMES = ("slot_sin", "slot_cos", "weekday_sin", "weekday_cos")


def as_timedelta(freq: Any) -> pd.Timedelta:
    """A fixed sampling interval from a pandas alias (``"5min"``, ``"h"``), offset or timedelta."""
    try:
        step = pd.Timedelta(to_offset(freq)) if isinstance(freq, (str, pd.DateOffset)) else pd.Timedelta(freq)
    except (TypeError, ValueError) as err:
        raise ValueError(f"frequency {freq!r} is not a fixed interval such as '5min' or '1h': {err}") from None
    if step <= pd.Timedelta(0):
        raise ValueError(f"frequency {freq!r} must be positive")
    return step


def infer_step(timestamps: pd.DatetimeIndex) -> pd.Timedelta:
    """The sampling interval of ``timestamps``: the most common gap between consecutive steps.

    The mode (not ``pd.infer_freq``) so that a few gaps in the index do not defeat inference.
    """
    if len(timestamps) < 2:
        raise ValueError(f"cannot infer a frequency from {len(timestamps)} timestamp(s); pass freq")
    gaps = np.diff(timestamps.asi8)
    gaps = gaps[gaps > 0]
    if len(gaps) == 0:
        raise ValueError("timestamps never increase; cannot infer a frequency, pass freq")
    values, counts = np.unique(gaps, return_counts=True)
    return pd.Timedelta(int(values[np.argmax(counts)]), unit=timestamps.unit)


def steps_per_day(freq: Any) -> int:
    """Number of steps in a day, e.g. 288 at 5 min and 24 at 1 h; the step must divide a day."""
    step = as_timedelta(freq)
    if step > DAY or DAY % step != pd.Timedelta(0):
        raise ValueError(f"frequency {freq!r} ({step}) does not divide a day evenly: no slot of day is defined")
    return int(DAY // step)


class CalendarIndices(NamedTuple):
    """Integer calendar of each step (embedding indices for time encoders)."""

    slot: np.ndarray  # int64 [T], slot of day in [0, steps_per_day)
    weekday: np.ndarray  # int64 [T], Monday 0 .. Sunday 6
    steps_per_day: int


def calendar_indices(timestamps: pd.DatetimeIndex, freq: Any = None) -> CalendarIndices:
    """Slot of day in ``[0, S)`` and weekday in ``[0, 7)`` (Monday 0) of each timestamp.

    ``freq`` is inferred from ``timestamps`` when None.

    A timestamp between slots falls into the slot that contains it (floor).
    """
    timestamps = pd.DatetimeIndex(timestamps)
    step = as_timedelta(freq) if freq is not None else infer_step(timestamps)
    S = steps_per_day(step)
    since_midnight = timestamps - timestamps.normalize()
    slot = np.asarray(since_midnight // step, dtype=np.int64)
    weekday = np.asarray(timestamps.day_of_week, dtype=np.int64)
    return CalendarIndices(slot, weekday, S)


def calendar_features(timestamps: pd.DatetimeIndex, freq: Any = None) -> np.ndarray:
    """float32 [T, 4]: ``[sin(2pi slot/S), cos(2pi slot/S), sin(2pi wd/7), cos(2pi wd/7)]``.

    Cyclic encodings, so 23:55 sits next to 00:00 and Sunday next to Monday.
    """
    slot, weekday, S = calendar_indices(timestamps, freq)
    day_angle = 2 * np.pi * slot / S
    week_angle = 2 * np.pi * weekday / 7
    features = np.stack([np.sin(day_angle), np.cos(day_angle), np.sin(week_angle), np.cos(week_angle)], axis=1)
    return features.astype(np.float32)
