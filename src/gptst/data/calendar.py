"""Calendar of each step: slot of day and weekday, as integers and as sin/cos features.

One function serves the ``calendar`` baseline variant (the features as extra inputs) and
GPT-ST's time encoders (the integer indices, or the same features).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

N_FEATURES = 4
FEATURE_NAMES = ("slot_sin", "slot_cos", "weekday_sin", "weekday_cos")
DAY_NS = 86_400 * 10**9
# Fixed-interval pandas aliases read without importing pandas (0.4 s of every training process);
# anything else goes through pandas' own parser. tests/test_calendar.py checks they agree.
_SIMPLE_ALIAS = re.compile(r"(\d*)(min|h|s|ms|us|ns|D)")
_UNIT_NS = {"min": 60 * 10**9, "h": 3600 * 10**9, "s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1, "D": DAY_NS}


def step_nanoseconds(freq: Any) -> int:
    """A fixed sampling interval in nanoseconds, from a pandas alias (``"5min"``, ``"h"``), offset or timedelta."""
    if isinstance(freq, str) and (simple := _SIMPLE_ALIAS.fullmatch(freq)):
        step = int(simple[1] or 1) * _UNIT_NS[simple[2]]
    else:
        step = as_timedelta(freq).value
    if step <= 0:
        raise ValueError(f"frequency {freq!r} must be positive")
    return step


def as_timedelta(freq: Any) -> pd.Timedelta:
    """A fixed sampling interval from a pandas alias (``"5min"``, ``"h"``), offset or timedelta."""
    import pandas as pd
    from pandas.tseries.frequencies import to_offset

    try:
        step = pd.Timedelta(to_offset(freq)) if isinstance(freq, (str, pd.DateOffset)) else pd.Timedelta(freq)
    except (TypeError, ValueError) as err:
        raise ValueError(f"frequency {freq!r} is not a fixed interval such as '5min' or '1h': {err}") from None
    if step <= pd.Timedelta(0):
        raise ValueError(f"frequency {freq!r} must be positive")
    return step


def _nanoseconds(timestamps: Any) -> np.ndarray:
    """int64 nanoseconds since the epoch of a DatetimeIndex or datetime64 array (naive, as stored)."""
    if hasattr(timestamps, "tz") and timestamps.tz is not None:  # local wall-clock time, not UTC
        timestamps = timestamps.tz_localize(None)
    return np.asarray(timestamps, dtype="datetime64[ns]").view(np.int64)


def _infer_step_ns(nanoseconds: np.ndarray) -> int:
    if len(nanoseconds) < 2:
        raise ValueError(f"cannot infer a frequency from {len(nanoseconds)} timestamp(s); pass freq")
    gaps = np.diff(nanoseconds)
    gaps = gaps[gaps > 0]
    if len(gaps) == 0:
        raise ValueError("timestamps never increase; cannot infer a frequency, pass freq")
    values, counts = np.unique(gaps, return_counts=True)
    return int(values[np.argmax(counts)])


def infer_step(timestamps: Any) -> pd.Timedelta:
    """The sampling interval of ``timestamps``: the most common gap between consecutive steps.

    The mode (not ``pd.infer_freq``) so that a few gaps in the index do not defeat inference.
    """
    import pandas as pd

    return pd.Timedelta(_infer_step_ns(_nanoseconds(timestamps)), unit="ns")


def steps_per_day(freq: Any) -> int:
    """Number of steps in a day, e.g. 288 at 5 min and 24 at 1 h; the step must divide a day."""
    return _slots_per_day(step_nanoseconds(freq), freq)


def _slots_per_day(step: int, freq: Any) -> int:
    if step > DAY_NS or DAY_NS % step:
        raise ValueError(
            f"frequency {freq!r} ({_readable(step)}) does not divide a day evenly: no slot of day is defined"
        )
    return DAY_NS // step


def _readable(nanoseconds: int) -> str:
    return (
        str(np.timedelta64(nanoseconds, "ns").astype("timedelta64[s]"))
        if nanoseconds % 10**9 == 0
        else f"{nanoseconds} ns"
    )


class CalendarIndices(NamedTuple):
    """Integer calendar of each step (embedding indices for time encoders)."""

    slot: np.ndarray  # int64 [T], slot of day in [0, steps_per_day)
    weekday: np.ndarray  # int64 [T], Monday 0 .. Sunday 6
    steps_per_day: int


def calendar_indices(timestamps: Any, freq: Any = None) -> CalendarIndices:
    """Slot of day in ``[0, S)`` and weekday in ``[0, 7)`` (Monday 0) of each timestamp
    (a DatetimeIndex or a datetime64 array).

    ``freq`` is inferred from ``timestamps`` when None.

    A timestamp between slots falls into the slot that contains it (floor).
    """
    nanoseconds = _nanoseconds(timestamps)
    step = step_nanoseconds(freq) if freq is not None else _infer_step_ns(nanoseconds)
    S = _slots_per_day(step, freq if freq is not None else f"inferred {_readable(step)}")
    days, since_midnight = np.divmod(nanoseconds, DAY_NS)
    slot = since_midnight // step
    weekday = (days + 3) % 7  # 1970-01-01 was a Thursday
    return CalendarIndices(slot.astype(np.int64), weekday.astype(np.int64), S)


def calendar_features(timestamps: Any, freq: Any = None) -> np.ndarray:
    """float32 [T, 4]: ``[sin(2pi slot/S), cos(2pi slot/S), sin(2pi wd/7), cos(2pi wd/7)]``.

    Cyclic encodings, so 23:55 sits next to 00:00 and Sunday next to Monday.
    """
    slot, weekday, S = calendar_indices(timestamps, freq)
    day_angle = 2 * np.pi * slot / S
    week_angle = 2 * np.pi * weekday / 7
    features = np.stack([np.sin(day_angle), np.cos(day_angle), np.sin(week_angle), np.cos(week_angle)], axis=1)
    return features.astype(np.float32)
