"""The canonical series contract: one Parquet file, one reader.

Layout: column ``timestamp`` (timestamp[us], naive local time) then one float32 column per
(node, channel) named ``"{node_id}|{channel}"``, node-major; the schema metadata key ``gptst``
holds JSON ``{node_ids, channels, freq, null_value, kind}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from gptst.errors import InputError
from gptst.io import atomic_path

METADATA_KEY = b"gptst"
TIMESTAMP_COLUMN = "timestamp"


@dataclass(frozen=True)
class SeriesData:
    """A multivariate series: ``values`` [T, N, C] float32 plus its axes and semantics."""

    values: np.ndarray
    timestamps: pd.DatetimeIndex
    node_ids: list[str]
    channels: list[str]
    freq: str | None
    null_value: float | None
    kind: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.values.shape)

    def missing_mask(self) -> np.ndarray:
        """Boolean [T, N, C]: True where the reading is missing (``null_value`` or NaN)."""
        missing = np.isnan(self.values)
        if self.null_value is not None:
            missing |= self.values == np.float32(self.null_value)
        return missing


def canonical_id(raw: Any) -> str:
    """Node ids are strings everywhere: ints (and integral floats) become ``str(int(x))``."""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")
    if isinstance(raw, (bool, np.bool_)):
        return str(raw)
    if isinstance(raw, (int, np.integer)):
        return str(int(raw))
    if isinstance(raw, (float, np.floating)):
        return str(int(raw)) if float(raw).is_integer() else repr(float(raw))
    return str(raw).strip()


def canonical_ids(raw: Any) -> list[str]:
    """:func:`canonical_id` over a sequence."""
    return [canonical_id(x) for x in raw]


def column_name(node_id: str, channel: str) -> str:
    return f"{node_id}|{channel}"


def write_series(path: str | Path, data: SeriesData, extra_metadata: dict[str, Any] | None = None) -> Path:
    """Write ``data`` as the canonical Parquet series, atomically."""
    T, N, C = data.values.shape
    if len(data.timestamps) != T or len(data.node_ids) != N or len(data.channels) != C:
        raise ValueError(
            f"axes do not match values {data.values.shape}: "
            f"{len(data.timestamps)} timestamps, {len(data.node_ids)} nodes, {len(data.channels)} channels"
        )
    meta = {
        "node_ids": list(data.node_ids),
        "channels": list(data.channels),
        "freq": data.freq,
        "null_value": data.null_value,
        "kind": data.kind,
        **(extra_metadata or {}),
    }
    # Column (n, c) of a Fortran-ordered [T, N, C] array is contiguous, so pyarrow wraps it
    # without a copy; a C-ordered array would need one strided copy per column.
    values = np.asfortranarray(data.values, dtype=np.float32)
    names = [TIMESTAMP_COLUMN]
    arrays = [pa.array(data.timestamps.values.astype("datetime64[us]"), type=pa.timestamp("us"))]
    for n, node in enumerate(data.node_ids):
        for c, channel in enumerate(data.channels):
            names.append(column_name(node, channel))
            arrays.append(pa.array(values[:, n, c], type=pa.float32()))
    schema = pa.schema(
        [pa.field(TIMESTAMP_COLUMN, pa.timestamp("us"))] + [pa.field(n, pa.float32()) for n in names[1:]],
        metadata={METADATA_KEY: json.dumps(meta).encode()},
    )
    table = pa.Table.from_arrays(arrays, schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", row_group_size=1 << 16)
    return Path(path)


def read_series_metadata(path: str | Path) -> dict[str, Any]:
    """The ``gptst`` schema metadata of a canonical series file, without reading its values."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, None, "file not found (run the ingest stage first)")
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as err:
        raise InputError(path, None, f"not a readable Parquet file: {err}") from None
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise InputError(path, "schema metadata 'gptst'", "missing: not a canonical series written by ingest")
    return json.loads(raw)


def load_series(path: str | Path) -> SeriesData:
    """Read a canonical series: ``values`` [T, N, C] float32 (C-contiguous: time-major windows)."""
    path = Path(path)
    meta = read_series_metadata(path)
    node_ids, channels = meta["node_ids"], meta["channels"]
    expected = [TIMESTAMP_COLUMN] + [column_name(n, c) for n in node_ids for c in channels]
    table = pq.read_table(path)
    if table.column_names != expected:
        missing = sorted(set(expected) - set(table.column_names))[:5]
        raise InputError(path, "columns", f"do not match the metadata's node ids and channels (missing {missing})")
    T, N, C = table.num_rows, len(node_ids), len(channels)
    values = np.empty((T, N, C), dtype=np.float32)
    for i, name in enumerate(expected[1:]):
        n, c = divmod(i, C)
        values[:, n, c] = table.column(name).to_numpy(zero_copy_only=False)
    timestamps = pd.DatetimeIndex(table.column(TIMESTAMP_COLUMN).to_numpy(), name=TIMESTAMP_COLUMN)
    return SeriesData(
        values=values,
        timestamps=timestamps,
        node_ids=list(node_ids),
        channels=list(channels),
        freq=meta.get("freq"),
        null_value=meta.get("null_value"),
        kind=meta.get("kind", "speed"),
    )
