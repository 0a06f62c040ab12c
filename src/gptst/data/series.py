"""The canonical series contract: one Parquet file, one reader.

Layout: column ``timestamp`` (timestamp[us], naive local time) then one float32 column per
(node, channel) named ``"{node_id}|{channel}"``, node-major; the schema metadata key ``gptst``
holds JSON ``{node_ids, channels, freq, null_value, kind}``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gptst.errors import InputError
from gptst.io import atomic_path

if TYPE_CHECKING:
    import pandas as pd

METADATA_KEY = b"gptst"
TIMESTAMP_COLUMN = "timestamp"
# A row group holds about this many bytes of values: the unit of ingest's and loading's memory.
ROW_GROUP_BYTES = 64 << 20
# Series at least this large are loaded as a memory map of a decoded sidecar (see load_series).
MMAP_MIN_BYTES = 256 << 20


@dataclass(frozen=True)
class SeriesAxes:
    """What a series is over, without its values: steps, nodes, channels and their meaning."""

    stamps: np.ndarray  # datetime64[ns] [T], naive (as stored)
    node_ids: list[str]
    channels: list[str]
    freq: str | None
    null_value: float | None
    kind: str

    @cached_property
    def timestamps(self) -> pd.DatetimeIndex:
        """The steps as a pandas index (pandas is imported on first use: the training stages never need it)."""
        import pandas as pd

        return pd.DatetimeIndex(self.stamps, name=TIMESTAMP_COLUMN)


@dataclass(frozen=True)
class SeriesData(SeriesAxes):
    """A multivariate series: ``values`` [T, N, C] float32 plus its axes and semantics.

    ``values`` may be a read-only memory map (:func:`load_series` of a large series).
    """

    values: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.values.shape)

    def missing_mask(self, rows: slice = slice(None)) -> np.ndarray:
        """Boolean [T, N, C] (of the steps ``rows``): True where the reading is missing (``null_value`` or NaN)."""
        values = self.values[rows]
        missing = np.isnan(values)
        if self.null_value is not None:
            missing |= values == np.float32(self.null_value)
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


def rows_per_group(n_columns: int) -> int:
    """Rows of one Parquet row group: about ``ROW_GROUP_BYTES`` of float32 values, at most 65,536 rows.

    Ingest streams the source in chunks of this many rows, so a row group is also the unit of its
    peak memory, whatever the number of nodes.
    """
    return int(min(1 << 16, max(1, ROW_GROUP_BYTES // (4 * max(n_columns, 1)))))


@contextmanager
def open_series_writer(
    path: str | Path, axes: SeriesAxes, extra_metadata: dict[str, Any] | None = None
) -> Iterator[Callable[[np.ndarray], None]]:
    """Yield ``write(values)``, which appends steps ([rows, N, C] float32) as one row group.

    The file appears at ``path`` when every step of ``axes`` has been written and the block exits
    without an error; otherwise the previous file is left as it was.
    """
    T, N, C = len(axes.stamps), len(axes.node_ids), len(axes.channels)
    meta = {
        "node_ids": list(axes.node_ids),
        "channels": list(axes.channels),
        "freq": axes.freq,
        "null_value": axes.null_value,
        "kind": axes.kind,
        **(extra_metadata or {}),
    }
    names = [column_name(node, channel) for node in axes.node_ids for channel in axes.channels]
    schema = pa.schema(
        [pa.field(TIMESTAMP_COLUMN, pa.timestamp("us"))] + [pa.field(n, pa.float32()) for n in names],
        metadata={METADATA_KEY: json.dumps(meta).encode()},
    )
    stamps = axes.stamps.astype("datetime64[us]")
    written = 0

    def write(values: np.ndarray) -> None:
        nonlocal written
        rows = values.shape[0]
        if values.ndim != 3 or values.shape[1:] != (N, C):
            raise ValueError(f"a chunk of shape {values.shape} does not fit the axes' {N} nodes x {C} channels")
        if written + rows > T:
            raise ValueError(f"{written + rows} steps written for {T} timestamps")
        # Column (n, c) of a Fortran-ordered chunk is contiguous, so pyarrow wraps it without a copy.
        chunk = np.asfortranarray(values, dtype=np.float32)
        arrays = [pa.array(stamps[written : written + rows], type=pa.timestamp("us"))]
        arrays += [pa.array(chunk[:, n, c], type=pa.float32()) for n in range(N) for c in range(C)]
        writer.write_table(pa.Table.from_arrays(arrays, schema=schema), row_group_size=max(rows, 1))
        written += rows

    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        yield write
        if written != T:
            raise ValueError(f"{written} steps written for {T} timestamps")


def write_series(path: str | Path, data: SeriesData, extra_metadata: dict[str, Any] | None = None) -> Path:
    """Write ``data`` as the canonical Parquet series, atomically."""
    T, N, C = data.values.shape
    if len(data.stamps) != T or len(data.node_ids) != N or len(data.channels) != C:
        raise ValueError(
            f"axes do not match values {data.values.shape}: "
            f"{len(data.stamps)} timestamps, {len(data.node_ids)} nodes, {len(data.channels)} channels"
        )
    step = rows_per_group(N * C)
    with open_series_writer(path, data, extra_metadata) as write:
        for start in range(0, T, step):
            write(data.values[start : start + step])
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


def load_series(path: str | Path, *, mmap: bool | None = None) -> SeriesData:
    """Read a canonical series: ``values`` [T, N, C] float32 (C-contiguous: time-major windows).

    The values are read row group by row group, never as a second full copy. With ``mmap`` (by
    default for series of ``MMAP_MIN_BYTES`` or more) they are decoded once into a sidecar
    ``.npy`` beside the file and returned as a read-only memory map of it, which every later
    load, and every process on the machine, shares through the page cache.
    """
    path = Path(path)
    meta = read_series_metadata(path)
    node_ids, channels = meta["node_ids"], meta["channels"]
    expected = [TIMESTAMP_COLUMN] + [column_name(n, c) for n in node_ids for c in channels]
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise InputError(path, None, f"not a readable Parquet file: {err}") from None
    if parquet.schema_arrow.names != expected:
        missing = sorted(set(expected) - set(parquet.schema_arrow.names))[:5]
        raise InputError(path, "columns", f"do not match the metadata's node ids and channels (missing {missing})")
    T, N, C = parquet.metadata.num_rows, len(node_ids), len(channels)
    if mmap is None:
        mmap = T * N * C * 4 >= MMAP_MIN_BYTES
    values = None
    if mmap:
        try:
            values = _memory_mapped_values(path, parquet, (T, N, C))
        except OSError:  # a read-only folder, a full disk: read it into memory instead
            values = None
    if values is None:
        values = _read_values(parquet, (T, N, C))
    stamps = column_values(parquet.read(columns=[TIMESTAMP_COLUMN]).column(0))
    return SeriesData(
        values=values,
        stamps=np.asarray(stamps, dtype="datetime64[ns]"),
        node_ids=list(node_ids),
        channels=list(channels),
        freq=meta.get("freq"),
        null_value=meta.get("null_value"),
        kind=meta.get("kind", "speed"),
    )


def column_values(column: pa.ChunkedArray) -> np.ndarray:
    """A float or timestamp column as numpy, read from its buffers where it has no nulls.

    pyarrow's own ``to_numpy`` imports pandas (0.4 s), which a training process otherwise never
    loads; a column with nulls still goes through it.
    """
    parts = []
    for chunk in column.chunks:
        if chunk.null_count or not (pa.types.is_floating(chunk.type) or pa.types.is_timestamp(chunk.type)):
            parts.append(chunk.to_numpy(zero_copy_only=False))
            continue
        if pa.types.is_timestamp(chunk.type):
            dtype = np.dtype(f"datetime64[{chunk.type.unit}]")
        else:
            dtype = np.dtype(f"float{chunk.type.bit_width}")
        data = chunk.buffers()[1]
        parts.append(np.frombuffer(data, dtype=dtype, count=len(chunk), offset=chunk.offset * dtype.itemsize))
    if not parts:
        return np.empty(0, dtype=np.float32)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _read_values(parquet: pq.ParquetFile, shape: tuple[int, int, int], out: np.ndarray | None = None) -> np.ndarray:
    """Decode the value columns into ``out`` (a new array by default), one row group at a time."""
    T, N, C = shape
    values = np.empty(shape, dtype=np.float32) if out is None else out
    row = 0
    for group in range(parquet.num_row_groups):
        table = parquet.read_row_group(group)
        rows = table.num_rows
        block = values[row : row + rows].reshape(rows, N * C)
        for i in range(N * C):
            block[:, i] = column_values(table.column(i + 1))
        row += rows
    if row != T:
        raise ValueError(f"read {row} rows of {T}")
    return values


def memmap_sidecar(path: str | Path) -> Path:
    """Where :func:`load_series` keeps the decoded values of ``path``: a hidden ``.npy`` beside it,
    named by the file's size and modification time, so a rewritten series never reuses stale values."""
    path = Path(path)
    stat = path.stat()
    return path.parent / f".{path.name}.{stat.st_size}-{stat.st_mtime_ns}.values.npy"


def _memory_mapped_values(path: Path, parquet: pq.ParquetFile, shape: tuple[int, int, int]) -> np.ndarray:
    sidecar = memmap_sidecar(path)
    if sidecar.is_file():
        try:
            values = np.load(sidecar, mmap_mode="r")
            if values.shape == shape and values.dtype == np.float32:
                return values
        except (ValueError, OSError):
            pass  # a damaged sidecar is rebuilt below
    for stale in path.parent.glob(f".{path.name}.*.values.npy"):
        if stale != sidecar:
            stale.unlink(missing_ok=True)
    with atomic_path(sidecar) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
        _read_values(parquet, shape, out)
        out.flush()
        del out
    return np.load(sidecar, mmap_mode="r")
