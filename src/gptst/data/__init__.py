"""Readers, the canonical series, splits, windows, scaler, calendar and batches."""

from gptst.data.series import SeriesData, canonical_id, canonical_ids, load_series, write_series

__all__ = ["SeriesData", "canonical_id", "canonical_ids", "load_series", "write_series"]
