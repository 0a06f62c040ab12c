"""Raw file -> canonical Parquet series + ``meta.json`` (the ingest stage's library half)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gptst.data.readers import RawSeries, read_raw_series
from gptst.data.series import SeriesData, write_series
from gptst.errors import InputError
from gptst.io import sha256_file, write_json
from gptst.params import DatasetParams

_ROW_CHUNK = 8192


@dataclass(frozen=True)
class IngestResult:
    series_path: Path
    meta_path: Path
    meta: dict[str, Any]


def infer_freq(timestamps: pd.DatetimeIndex) -> str:
    """The most common positive step between consecutive timestamps, as a pandas alias.

    The mode (not ``pd.infer_freq``) so that a series with gaps still gets its sampling
    interval; validation then reports the gaps against it.
    """
    steps = np.diff(timestamps.asi8)
    steps = steps[steps > 0]
    if steps.size == 0:
        raise ValueError("fewer than two distinct timestamps")
    values, counts = np.unique(steps, return_counts=True)
    step = pd.Timedelta(int(values[np.argmax(counts)]), unit=timestamps.unit)
    return pd.tseries.frequencies.to_offset(step).freqstr


def read_source(dataset: DatasetParams, source: Path) -> RawSeries:
    """The raw file ``source`` read with the keys, columns and channels ``dataset`` names."""
    return read_raw_series(
        source,
        h5_key=dataset.h5_key,
        npz_key=dataset.npz_key,
        timestamps_key=dataset.timestamps_key,
        node_ids_key=dataset.node_ids_key,
        timestamp_column=dataset.timestamp_column,
        channels=dataset.channels,
    )


def to_series(raw: RawSeries, dataset: DatasetParams, source: Path, params_file: str = "params.yaml") -> SeriesData:
    """Give a raw read its canonical axes: timestamps, string node ids, channel names."""
    T, N, C = raw.values.shape
    if T < 2 or N < 1:
        raise InputError(source, "shape", f"{raw.values.shape} is too small: need at least 2 steps and 1 node")
    timestamps = raw.timestamps
    if timestamps is None:
        if dataset.start is None or dataset.freq is None:
            raise InputError(
                params_file, "dataset.start", f"{source} has no timestamps: set dataset.start and dataset.freq"
            )
        try:
            timestamps = pd.date_range(dataset.start, periods=T, freq=dataset.freq, unit="us")
        except (ValueError, TypeError) as err:
            raise InputError(params_file, "dataset.start", f"{dataset.start!r} is not a timestamp: {err}") from None
    timestamps = pd.DatetimeIndex(timestamps.as_unit("us"), name="timestamp")
    try:
        freq = dataset.freq or infer_freq(timestamps)
    except ValueError as err:
        raise InputError(source, "timestamps", str(err)) from None

    node_ids = raw.node_ids if raw.node_ids is not None else [str(i) for i in range(N)]
    if len(set(node_ids)) != len(node_ids):
        dupes = pd.Index(node_ids)[pd.Index(node_ids).duplicated()].unique().tolist()
        raise InputError(source, "node ids", f"{len(dupes)} duplicated sensor ids, e.g. {dupes[:5]}")

    names = dataset.channel_names or raw.channel_names
    if names is None:
        source_channels = dataset.channels if dataset.channels is not None else list(range(C))
        names = [dataset.kind] if C == 1 else [f"channel{c}" for c in source_channels]
    if len(names) != C:
        raise InputError(params_file, "dataset.channel_names", f"{len(names)} names for {C} channels in {source}")
    return SeriesData(
        values=raw.values,
        timestamps=timestamps,
        node_ids=list(node_ids),
        channels=list(names),
        freq=freq,
        null_value=dataset.null_value,
        kind=dataset.kind,
    )


def channel_statistics(data: SeriesData) -> dict[str, dict[str, float]]:
    """Per channel: missing rate (``null_value`` cells) and non-finite count, in row chunks."""
    T, N, C = data.values.shape
    missing = np.zeros(C, dtype=np.int64)
    nonfinite = np.zeros(C, dtype=np.int64)
    for start in range(0, T, _ROW_CHUNK):
        chunk = data.values[start : start + _ROW_CHUNK]
        nonfinite += (~np.isfinite(chunk)).sum(axis=(0, 1))
        if data.null_value is not None:
            missing += (chunk == np.float32(data.null_value)).sum(axis=(0, 1))
    cells = T * N
    return {
        name: {"missing_rate": float(missing[c] / cells), "nonfinite": int(nonfinite[c])}
        for c, name in enumerate(data.channels)
    }


def ingest(dataset: DatasetParams, source: Path, series_path: Path, meta_path: Path) -> IngestResult:
    """Read ``source`` as ``dataset`` describes it and write the canonical series and its meta.

    Everything is read and checked before anything is written, so bad input leaves earlier
    outputs intact; each output is written atomically.
    """
    data = to_series(read_source(dataset, source), dataset, source)
    stats = channel_statistics(data)
    T, N, C = data.values.shape
    meta = {
        "dataset": dataset.name,
        "kind": data.kind,
        "source": dataset.series,
        "source_sha256": sha256_file(source),
        "shape": [T, N, C],
        "freq": data.freq,
        "start": data.timestamps[0].isoformat(),
        "end": data.timestamps[-1].isoformat(),
        "channels": data.channels,
        "null_value": data.null_value,
        "missing_rate": {name: s["missing_rate"] for name, s in stats.items()},
        "nonfinite": {name: s["nonfinite"] for name, s in stats.items()},
    }
    write_series(series_path, data, extra_metadata={"source_sha256": meta["source_sha256"]})
    write_json(meta_path, meta)
    return IngestResult(series_path=series_path, meta_path=meta_path, meta=meta)
