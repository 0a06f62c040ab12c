"""Reference forecasts every comparison carries: persistence and a historical average.

A learned model that does not beat these is not forecasting. Both are scored on the same test
windows with the same masked metrics (:class:`gptst.metrics.HorizonMetricAccumulator`) as the
finetuned models, and both use only what a model may use: the window's own input steps, and the
training split.

- **persistence**: each node and channel's last observed reading of the input window, repeated
  for every forecast step. A window whose input has no observed reading of a node falls back to
  the historical average of each forecast step.
- **historical_average**: the training split's mean per node and channel at the forecast step's
  slot of week, for weekdays the training split covers completely (every slot of the day at
  least once); otherwise, or where that node was never observed at that slot of week, the mean at
  the slot of day; then the node's training mean; then the training split's overall mean.

Forecasts are produced in blocks of windows, so memory stays bounded by the block, not the test
split.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from gptst.data.calendar import calendar_indices
from gptst.data.series import SeriesData
from gptst.metrics import HorizonMetricAccumulator

REFERENCE_VARIANT = "reference"
PERSISTENCE = "persistence"
HISTORICAL_AVERAGE = "historical_average"
REFERENCE_FORECASTS = (PERSISTENCE, HISTORICAL_AVERAGE)
_BLOCK_WINDOWS = 256


def _observed(series: SeriesData, steps: np.ndarray | slice) -> tuple[np.ndarray, np.ndarray]:
    """The readings at ``steps`` as float64 with missing ones set to 0, and the observed mask."""
    values = series.values[steps]
    observed = ~np.isnan(values)
    if series.null_value is not None:
        observed &= values != np.asarray(series.null_value, dtype=values.dtype)
    return np.where(observed, values, 0.0).astype(np.float64), observed


def _group_means(series: SeriesData, steps: range, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """[n_groups, N, C] mean of the observed readings of ``steps`` per group (NaN: none observed)."""
    _, nodes, channels = series.shape
    sums = np.zeros((n_groups, nodes, channels))
    counts = np.zeros((n_groups, nodes, channels))
    step_ids = np.arange(steps.start, steps.stop)
    for group in np.unique(groups):
        values, observed = _observed(series, step_ids[groups == group])
        sums[group] = values.sum(axis=0)
        counts[group] = observed.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


@dataclass(frozen=True)
class HistoricalAverage:
    """Per-node calendar means of the training split; :meth:`forecast` gives them at any steps."""

    by_slot_of_week: np.ndarray  # [7 * S, N, C], NaN where not covered
    by_slot_of_day: np.ndarray  # [S, N, C]
    node_mean: np.ndarray  # [N, C]
    overall_mean: float
    covered_weekdays: tuple[int, ...]
    slot: np.ndarray  # [T] slot of day of every series step
    weekday: np.ndarray  # [T]
    steps_per_day: int

    @classmethod
    def fit(cls, series: SeriesData, train_steps: range) -> HistoricalAverage:
        """Means over ``train_steps`` (the training split) of ``series``."""
        calendar = calendar_indices(series.timestamps, series.freq)
        S = calendar.steps_per_day
        train = slice(train_steps.start, train_steps.stop)
        slot, weekday = calendar.slot[train], calendar.weekday[train]
        covered = tuple(
            int(day) for day in range(7) if len(np.unique(slot[weekday == day])) == S
        )  # the whole day seen at least once
        by_week = _group_means(series, train_steps, weekday * S + slot, 7 * S)
        uncovered = [day for day in range(7) if day not in covered]
        for day in uncovered:
            by_week[day * S : (day + 1) * S] = np.nan
        by_day = _group_means(series, train_steps, slot, S)
        node_mean = _group_means(series, train_steps, np.zeros(len(train_steps), dtype=np.int64), 1)[0]
        overall = float(np.nanmean(node_mean)) if np.isfinite(node_mean).any() else 0.0
        return cls(by_week, by_day, node_mean, overall, covered, calendar.slot, calendar.weekday, S)

    def forecast(self, steps: np.ndarray) -> np.ndarray:
        """[*steps.shape, N, C] float32: the mean for each step, with the fallbacks of the module docstring."""
        slot, weekday = self.slot[steps], self.weekday[steps]
        out = self.by_slot_of_week[weekday * self.steps_per_day + slot]
        out = np.where(np.isnan(out), self.by_slot_of_day[slot], out)
        out = np.where(np.isnan(out), self.node_mean, out)
        return np.where(np.isnan(out), self.overall_mean, out).astype(np.float32)


def persistence_forecast(
    series: SeriesData, starts: np.ndarray, t_in: int, t_out: int, fallback: np.ndarray
) -> np.ndarray:
    """[W, t_out, N, C] float32: each window's last observed input reading per node and channel,
    repeated; ``fallback`` [W, t_out, N, C] where the input window has no observed reading."""
    values, observed = _observed(series, np.asarray(starts)[:, None] + np.arange(t_in))  # [W, t_in, N, C]
    position = np.where(observed, np.arange(t_in)[None, :, None, None], -1).max(axis=1)  # [W, N, C]
    last = np.take_along_axis(values, np.maximum(position, 0)[:, None], axis=1)  # [W, 1, N, C]
    repeated = np.broadcast_to(last, (len(starts), t_out, *last.shape[2:]))
    return np.where((position >= 0)[:, None], repeated, fallback).astype(np.float32)


def reference_forecasts(
    series: SeriesData, starts: np.ndarray, *, t_in: int, t_out: int, train_steps: range, block: int = _BLOCK_WINDOWS
) -> Iterator[tuple[slice, dict[str, np.ndarray]]]:
    """Blocks ``(window slice, {name: forecasts [b, t_out, N, C]})`` over the windows ``starts``."""
    average = HistoricalAverage.fit(series, train_steps)
    starts = np.asarray(starts, dtype=np.int64)
    for lo in range(0, len(starts), block):
        chunk = starts[lo : lo + block]
        historical = average.forecast(chunk[:, None] + t_in + np.arange(t_out))
        yield (
            slice(lo, lo + len(chunk)),
            {
                PERSISTENCE: persistence_forecast(series, chunk, t_in, t_out, historical),
                HISTORICAL_AVERAGE: historical,
            },
        )


def reference_metrics(
    series: SeriesData, starts: np.ndarray, *, t_in: int, t_out: int, train_steps: range, mape_min: float
) -> dict[str, dict[str, dict[str, float]]]:
    """``{name: horizon table}`` of each reference forecast (the finetune items' metric table)."""
    accumulators = {name: HorizonMetricAccumulator(series.null_value, mape_min) for name in REFERENCE_FORECASTS}
    starts = np.asarray(starts, dtype=np.int64)
    for window_slice, forecasts in reference_forecasts(series, starts, t_in=t_in, t_out=t_out, train_steps=train_steps):
        truth = series.values[starts[window_slice][:, None] + t_in + np.arange(t_out)]
        for name, forecast in forecasts.items():
            accumulators[name].update(forecast, truth)
    return {name: accumulator.result() for name, accumulator in accumulators.items()}
