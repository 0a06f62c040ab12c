"""Readers, the canonical series, splits, windows, scaler, calendar and batches."""

from gptst.data.batch import Batch, WindowBatcher, n_batches
from gptst.data.calendar import calendar_features, calendar_indices, steps_per_day
from gptst.data.scaler import StandardScaler, fit_train_scaler
from gptst.data.series import SeriesData, canonical_id, canonical_ids, load_series, write_series
from gptst.data.splits import SplitSteps, chronological_split
from gptst.data.windows import Splits, WindowIndex, make_splits, window_index

__all__ = [
    "Batch",
    "SeriesData",
    "SplitSteps",
    "Splits",
    "StandardScaler",
    "WindowBatcher",
    "WindowIndex",
    "calendar_features",
    "calendar_indices",
    "canonical_id",
    "canonical_ids",
    "chronological_split",
    "fit_train_scaler",
    "load_series",
    "make_splits",
    "n_batches",
    "steps_per_day",
    "window_index",
    "write_series",
]
