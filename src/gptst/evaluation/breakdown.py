"""Where the errors are: masked MAE by time of day and by sensor, from one pass over the forecasts.

:func:`error_sums` streams a finetune's test forecasts against the series once, in blocks of
windows, and keeps only small sums (per window, per hour of day, per sensor); the frames and the
bootstrap (:mod:`gptst.evaluation.bootstrap`) are built from those sums, so one item's forecasts
never need to stay in memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from gptst.data.series import SeriesData
from gptst.evaluation.bootstrap import WindowErrors
from gptst.evaluation.predictions import Predictions
from gptst.metrics import valid_mask

# The usual weekday traffic peaks, in hours of the day (inclusive): the morning rush 7-9 h and
# the evening rush 16-19 h. An hour is flagged when the forecast step's timestamp falls in it.
PEAK_HOURS: tuple[int, ...] = (7, 8, 9, 16, 17, 18, 19)
HOURS_PER_DAY = 24
TIME_OF_DAY_COLUMNS = ("baseline", "variant", "hour", "peak", "mae", "cells")
SENSOR_COLUMNS = ("baseline", "variant", "node_id", "mae", "cells")
# Windows per block: [256, 12, 207, 1] float64 temporaries are ~5 MB each on METR-LA.
_BLOCK_WINDOWS = 256


@dataclass(frozen=True)
class ErrorSums:
    """Masked absolute-error sums and valid-cell counts of one item's forecasts, by several keys."""

    windows: WindowErrors
    hour_abs: np.ndarray  # float64 [24], by the hour of each forecast step's timestamp
    hour_count: np.ndarray  # int64 [24], valid cells
    hour_cells: np.ndarray  # int64 [24], all forecast cells, valid or not
    node_abs: np.ndarray  # float64 [N]
    node_count: np.ndarray  # int64 [N]
    node_ids: list[str]


def error_sums(pred: Predictions, series: SeriesData, *, block_windows: int = _BLOCK_WINDOWS) -> ErrorSums:
    """Score ``pred`` against ``series`` (all horizon steps pooled), ignoring missing true values.

    Missing follows the metrics' rule (:func:`gptst.metrics.valid_mask`: NaN or the
    series' ``null_value``). Raises ValueError when the forecasts do not fit the series.
    """
    if list(series.node_ids) != list(pred.node_ids):
        raise ValueError("the predictions' node ids are not the series' node ids")
    if pred.pred.shape[3] != series.values.shape[2]:
        raise ValueError(f"the predictions have {pred.pred.shape[3]} channels, the series {series.values.shape[2]}")
    steps = pred.target_steps()
    if steps.size and (steps.min() < 0 or steps.max() >= len(series.values)):
        raise ValueError(
            f"forecast steps {steps.min()}..{steps.max()} fall outside the series' {len(series.values)} steps"
        )
    hour_of_step = np.asarray(series.timestamps.hour, dtype=np.int64)
    n_windows, n_nodes, n_channels = pred.pred.shape[0], pred.pred.shape[2], pred.pred.shape[3]
    window_abs = np.zeros(n_windows)
    window_count = np.zeros(n_windows, dtype=np.int64)
    hour_abs = np.zeros(HOURS_PER_DAY)
    hour_count = np.zeros(HOURS_PER_DAY, dtype=np.int64)
    hour_cells = np.zeros(HOURS_PER_DAY, dtype=np.int64)
    node_abs = np.zeros(n_nodes)
    node_count = np.zeros(n_nodes, dtype=np.int64)
    for lo in range(0, n_windows, block_windows):
        hi = min(lo + block_windows, n_windows)
        true = series.values[steps[lo:hi]]
        valid = valid_mask(torch.from_numpy(true), series.null_value).numpy()
        err = np.abs(pred.pred[lo:hi].astype(np.float64) - true)
        err[~valid] = 0.0  # also clears the NaN of missing true values
        per_window_step = err.sum(axis=(2, 3))
        count_window_step = valid.sum(axis=(2, 3))
        window_abs[lo:hi] = per_window_step.sum(axis=1)
        window_count[lo:hi] = count_window_step.sum(axis=1)
        hours = hour_of_step[steps[lo:hi]].ravel()
        hour_abs += np.bincount(hours, weights=per_window_step.ravel(), minlength=HOURS_PER_DAY)
        hour_count += np.bincount(hours, weights=count_window_step.ravel(), minlength=HOURS_PER_DAY).astype(np.int64)
        hour_cells += np.bincount(hours, minlength=HOURS_PER_DAY) * (n_nodes * n_channels)
        node_abs += err.sum(axis=(0, 1, 3))
        node_count += valid.sum(axis=(0, 1, 3))
    return ErrorSums(
        windows=WindowErrors(starts=pred.starts.copy(), abs_sum=window_abs, count=window_count),
        hour_abs=hour_abs,
        hour_count=hour_count,
        hour_cells=hour_cells,
        node_abs=node_abs,
        node_count=node_count,
        node_ids=list(pred.node_ids),
    )


def _mae(abs_sum: np.ndarray, count: np.ndarray) -> np.ndarray:
    return np.divide(abs_sum, count, out=np.full(len(count), np.nan), where=count > 0)


def mae_by_time_of_day(sums: ErrorSums, baseline: str, variant: str) -> pd.DataFrame:
    """Long form: ``baseline, variant, hour, peak, mae, cells`` for every hour some forecast step falls in.

    ``peak`` flags :data:`PEAK_HOURS`; ``cells`` counts the valid cells (MAE is NaN where none is).
    """
    hours = np.flatnonzero(sums.hour_cells)
    return pd.DataFrame(
        {
            "baseline": baseline,
            "variant": variant,
            "hour": hours,
            "peak": np.isin(hours, PEAK_HOURS),
            "mae": _mae(sums.hour_abs, sums.hour_count)[hours],
            "cells": sums.hour_count[hours],
        },
        columns=list(TIME_OF_DAY_COLUMNS),
    )


def mae_by_sensor(sums: ErrorSums, baseline: str, variant: str) -> pd.DataFrame:
    """Long form: ``baseline, variant, node_id, mae, cells`` for every sensor, in the series' order.

    A sensor without any valid test reading keeps its row, with MAE NaN and 0 cells.
    """
    return pd.DataFrame(
        {
            "baseline": baseline,
            "variant": variant,
            "node_id": sums.node_ids,
            "mae": _mae(sums.node_abs, sums.node_count),
            "cells": sums.node_count,
        },
        columns=list(SENSOR_COLUMNS),
    )
