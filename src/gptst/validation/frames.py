"""Tidy views of a series and its graph, small enough for one expectation per property.

A wide [T, N*C] table would need one expectation per column (hundreds for METR-LA) and a
report nobody reads. Each view below has one row per step, node-channel, node or graph row,
so a single column expectation covers every node and its failures name the offending rows.

Every view carries the same two index columns, ``position`` and ``item``: the checkpoint's
result format (and so its ``unexpected_index_column_names``) is shared by all suites, and GX
refuses index columns a batch does not have.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from gptst.data.series import SeriesData, canonical_ids, column_name
from gptst.errors import InputError

POSITION = "position"
ITEM = "item"
INDEX_COLUMNS = [POSITION, ITEM]
NO_ID = "<none>"
# Steps per chunk of the per-column views: bounds their temporaries on long or memory-mapped series.
_ROWS = 4096


def step_seconds(freq: str, source: str = "expected_freq") -> float:
    """Length of a fixed pandas frequency in seconds ('5min' -> 300); ``source`` names it in errors."""
    try:
        offset = pd.tseries.frequencies.to_offset(freq)
        return float(pd.Timedelta(offset).total_seconds())
    except (ValueError, TypeError) as err:
        problem = f"{freq!r} is not a fixed-length pandas frequency ('5min', '1h'): {err}"
        raise InputError(source, "freq", problem) from None


def expected_step(series: SeriesData, expected_freq: str | None) -> tuple[float | None, str]:
    """The step every diff must equal, in seconds, and where it came from.

    ``expected_freq``, else the series' own ``freq``, else the most common positive step (the
    data then only has to be regular, not a particular frequency).
    """
    if expected_freq is not None:
        return step_seconds(expected_freq), f"expected_freq {expected_freq!r}"
    if series.freq is not None:
        return step_seconds(series.freq, "series"), f"series freq {series.freq!r}"
    diffs = np.diff(series.timestamps.values).astype("timedelta64[ns]").astype(np.int64) / 1e9
    diffs = diffs[np.isfinite(diffs) & (diffs > 0)]
    if diffs.size == 0:
        return None, "no positive step to infer it from"
    values, counts = np.unique(diffs, return_counts=True)
    # np.unique sorts, so argmax breaks ties towards the shortest step.
    return float(values[np.argmax(counts)]), "most common step"


def timestamps_frame(timestamps: pd.DatetimeIndex) -> pd.DataFrame:
    """One row per step: its timestamp and the seconds since the previous step (NaN first)."""
    ts = pd.DatetimeIndex(timestamps)
    steps = pd.Series(ts).diff().dt.total_seconds().to_numpy(dtype=np.float64)
    return pd.DataFrame(
        {
            POSITION: np.arange(len(ts), dtype=np.int64),
            ITEM: ts.astype(str),
            "timestamp": ts,
            "step_seconds": steps,
        }
    )


def node_channel_frame(series: SeriesData) -> pd.DataFrame:
    """One row per (node, channel): non-finite count, min/max of valid readings, missing share.

    Missing means equal to ``null_value``; NaN and inf are counted as non-finite instead, so a
    NaN that slipped through ingest fails validation rather than hiding among missing readings.
    """
    T, N, C = series.values.shape
    n_nonfinite = np.zeros(N * C, dtype=np.int64)
    n_missing = np.zeros(N * C, dtype=np.int64)
    vmin = np.full(N * C, np.inf, dtype=np.float64)
    vmax = np.full(N * C, -np.inf, dtype=np.float64)
    # Row chunks: the temporaries stay a chunk's size however long the series (it may be memory-mapped).
    for lo in range(0, T, _ROWS):
        flat = np.asarray(series.values[lo : lo + _ROWS]).reshape(-1, N * C)  # node-major, like the Parquet
        finite = np.isfinite(flat)
        if series.null_value is not None:
            missing = finite & (flat == np.float32(series.null_value))
        else:
            missing = np.zeros_like(finite)
        valid = finite & ~missing
        n_nonfinite += (~finite).sum(axis=0)
        n_missing += missing.sum(axis=0)
        with np.errstate(invalid="ignore"):
            vmin = np.minimum(vmin, np.where(valid, flat, np.inf).min(axis=0))
            vmax = np.maximum(vmax, np.where(valid, flat, -np.inf).max(axis=0))
    # A column with no valid reading has no min or max: null, which GX map expectations skip.
    vmin[np.isinf(vmin) & (vmin > 0)] = np.nan
    vmax[np.isinf(vmax) & (vmax < 0)] = np.nan
    node_index = np.repeat(np.arange(N, dtype=np.int64), C)
    return pd.DataFrame(
        {
            POSITION: node_index,
            ITEM: [column_name(n, c) for n in series.node_ids for c in series.channels],
            "node_id": np.repeat(np.asarray(series.node_ids, dtype=object), C),
            "channel": np.tile(np.asarray(series.channels, dtype=object), N),
            "n_nonfinite": n_nonfinite,
            "min": vmin,
            "max": vmax,
            "missing_share": n_missing / T,
        }
    )


def node_frame(series: SeriesData) -> pd.DataFrame:
    """One row per node: how many steps have any channel different from zero."""
    T, N, _ = series.values.shape
    nonzero_steps = np.zeros(N, dtype=np.int64)
    for lo in range(0, T, _ROWS):
        nonzero_steps += (~(np.asarray(series.values[lo : lo + _ROWS]) == 0).all(axis=2)).sum(axis=0)
    return pd.DataFrame(
        {
            POSITION: np.arange(len(series.node_ids), dtype=np.int64),
            ITEM: list(series.node_ids),
            "nonzero_steps": nonzero_steps.astype(np.int64),
        }
    )


def graph_rows_frame(adj: np.ndarray, adj_node_ids: Sequence[str]) -> pd.DataFrame:
    """One row per adjacency row: its length, non-finite count, smallest finite weight and
    degree (edges out of the row's node plus edges into it, self-loops not counted; 0 means
    the node is isolated). A non-square matrix gives the nodes beyond its columns no in-edges."""
    adj = np.asarray(adj, dtype=np.float64)
    rows, cols = adj.shape
    ids = canonical_ids(adj_node_ids)
    linked = adj != 0  # NaN counts as an edge here; it fails the n_nonfinite check instead
    square = min(rows, cols)
    linked[np.arange(square), np.arange(square)] = False
    degree = linked.sum(axis=1).astype(np.int64)
    degree[:square] += linked.sum(axis=0)[:square]
    finite = np.isfinite(adj)
    with np.errstate(invalid="ignore"):
        min_weight = np.where(finite, adj, np.inf).min(axis=1) if cols else np.full(rows, np.inf)
    min_weight[~finite.any(axis=1)] = np.nan
    return pd.DataFrame(
        {
            POSITION: np.arange(rows, dtype=np.int64),
            ITEM: [ids[i] if i < len(ids) else NO_ID for i in range(rows)],
            "n_cols": np.full(rows, cols, dtype=np.int64),
            "n_nonfinite": (~finite).sum(axis=1).astype(np.int64),
            "min_weight": min_weight,
            "degree": degree,
        }
    )


def graph_ids_frame(adj_node_ids: Sequence[str], series_node_ids: Sequence[str]) -> pd.DataFrame:
    """Graph ids beside series ids, position by position; the shorter list is padded with nulls."""
    adj_ids = canonical_ids(adj_node_ids)
    length = max(len(adj_ids), len(series_node_ids))
    pad = lambda ids: list(ids) + [None] * (length - len(ids))  # noqa: E731
    return pd.DataFrame(
        {
            POSITION: np.arange(length, dtype=np.int64),
            ITEM: [s if s is not None else NO_ID for s in pad(series_node_ids)],
            "graph_node_id": pd.Series(pad(adj_ids), dtype=object),
            "series_node_id": pd.Series(pad(series_node_ids), dtype=object),
        }
    )
