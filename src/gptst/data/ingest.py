"""Raw file -> canonical Parquet series + ``meta.json`` (the ingest stage's library half)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gptst.data.calendar import infer_step
from gptst.data.readers import RawSeries, read_raw_series
from gptst.data.series import SeriesAxes, SeriesData, open_series_writer, rows_per_group
from gptst.errors import InputError
from gptst.io import sha256_file, write_json
from gptst.params import DatasetParams


@dataclass(frozen=True)
class IngestResult:
    series_path: Path
    meta_path: Path
    meta: dict[str, Any]


def infer_freq(timestamps: pd.DatetimeIndex) -> str:
    """The sampling interval of ``timestamps`` (:func:`gptst.data.calendar.infer_step`: the most
    common positive step, so that a series with gaps still gets it) as a pandas alias.
    Validation then reports the gaps against it."""
    return pd.tseries.frequencies.to_offset(infer_step(timestamps)).freqstr


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


def series_axes(raw: RawSeries, dataset: DatasetParams, source: Path, params_file: str = "params.yaml") -> SeriesAxes:
    """Give a raw read its canonical axes: timestamps, string node ids, channel names."""
    T, N, C = raw.shape
    if T < 2 or N < 1:
        raise InputError(source, "shape", f"{list(raw.shape)} is too small: need at least 2 steps and 1 node")
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
        raise InputError(source, "timestamps", f"{err} (in {params_file}: dataset.freq)") from None

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
    return SeriesAxes(
        stamps=np.asarray(timestamps.values, dtype="datetime64[ns]"),
        node_ids=list(node_ids),
        channels=list(names),
        freq=freq,
        null_value=dataset.null_value,
        kind=dataset.kind,
    )


def to_series(raw: RawSeries, dataset: DatasetParams, source: Path, params_file: str = "params.yaml") -> SeriesData:
    """The whole raw series in memory, with its canonical axes (:func:`series_axes`)."""
    axes = series_axes(raw, dataset, source, params_file)
    return SeriesData(values=raw.values, **{f.name: getattr(axes, f.name) for f in fields(SeriesAxes)})


class ChannelStatistics:
    """Per channel: missing rate (``null_value`` cells) and non-finite count, accumulated chunk by chunk."""

    def __init__(self, channels: list[str], null_value: float | None) -> None:
        self.channels = channels
        self.null_value = null_value
        self.cells = 0
        self.missing = np.zeros(len(channels), dtype=np.int64)
        self.nonfinite = np.zeros(len(channels), dtype=np.int64)

    def add(self, chunk: np.ndarray) -> None:
        """Count the cells of ``chunk`` [rows, N, C]."""
        self.cells += chunk.shape[0] * chunk.shape[1]
        self.nonfinite += (~np.isfinite(chunk)).sum(axis=(0, 1))
        if self.null_value is not None:
            self.missing += (chunk == np.float32(self.null_value)).sum(axis=(0, 1))

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {
            name: {"missing_rate": float(self.missing[c] / max(self.cells, 1)), "nonfinite": int(self.nonfinite[c])}
            for c, name in enumerate(self.channels)
        }


def ingest(
    dataset: DatasetParams, source: Path, series_path: Path, meta_path: Path, chunk_rows: int | None = None
) -> IngestResult:
    """Read ``source`` as ``dataset`` describes it and write the canonical series and its meta.

    The values stream from the source into the Parquet file in chunks of ``chunk_rows`` steps
    (by default one row group, see :func:`rows_per_group`), so peak memory is a few chunks, not
    the series. The axes are checked before anything is written and each output is written
    atomically, so bad input (found at any chunk) leaves earlier outputs intact.
    """
    raw = read_source(dataset, source)
    axes = series_axes(raw, dataset, source)
    T, N, C = raw.shape
    stats = ChannelStatistics(axes.channels, axes.null_value)
    source_sha256 = sha256_file(source)
    with open_series_writer(series_path, axes, extra_metadata={"source_sha256": source_sha256}) as write:
        for chunk in raw.row_chunks(chunk_rows or rows_per_group(N * C)):
            stats.add(chunk)
            write(chunk)
    summary = stats.as_dict()
    meta = {
        "dataset": dataset.name,
        "kind": axes.kind,
        "source": dataset.series,
        "source_sha256": source_sha256,
        "shape": [T, N, C],
        "freq": axes.freq,
        "start": axes.timestamps[0].isoformat(),
        "end": axes.timestamps[-1].isoformat(),
        "channels": axes.channels,
        "null_value": axes.null_value,
        "missing_rate": {name: s["missing_rate"] for name, s in summary.items()},
        "nonfinite": {name: s["nonfinite"] for name, s in summary.items()},
    }
    write_json(meta_path, meta)
    return IngestResult(series_path=series_path, meta_path=meta_path, meta=meta)
