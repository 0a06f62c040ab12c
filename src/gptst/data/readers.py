"""Readers for raw series files: pandas HDF5, npz and wide CSV.

Each reader reads a file's axes at once and returns a :class:`RawSeries` whose float32 values
[T, N, C] stream in row chunks (:meth:`RawSeries.row_chunks`): ingest writes each chunk as a
Parquet row group, so neither the float64 source nor the whole float32 series is ever held.
:attr:`RawSeries.values` materialises the whole array for callers that want it.
"""

from __future__ import annotations

import csv
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import IO

import h5py
import numpy as np
import pandas as pd

from gptst.data.series import canonical_ids
from gptst.errors import InputError

CHUNK_ROWS = 4096


@dataclass
class RawSeries:
    """What a raw file gives: its shape [T, N, C], the axes it stores (or None), and its values.

    ``read_rows(chunk_rows)`` yields consecutive float32 chunks [<= chunk_rows, N, C] covering
    the T steps in order, reading the file as it goes; errors name the file and the field.
    """

    shape: tuple[int, int, int]
    timestamps: pd.DatetimeIndex | None
    node_ids: list[str] | None
    read_rows: Callable[[int], Iterator[np.ndarray]]
    channel_names: list[str] | None = None

    def row_chunks(self, chunk_rows: int = CHUNK_ROWS) -> Iterator[np.ndarray]:
        """The values in consecutive chunks of at most ``chunk_rows`` steps."""
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        return self.read_rows(chunk_rows)

    @cached_property
    def values(self) -> np.ndarray:
        """All values [T, N, C] float32 (Fortran order: one contiguous column per sensor)."""
        values = np.empty(self.shape, dtype=np.float32, order="F")
        row = 0
        for chunk in self.row_chunks():
            values[row : row + len(chunk)] = chunk
            row += len(chunk)
        return values


def select_channels(n_channels: int, channels: list[int] | None, path: Path, field: str) -> list[int]:
    """Validate the requested channel indices against what the file has."""
    if channels is None:
        return list(range(n_channels))
    bad = [c for c in channels if c >= n_channels]
    if bad:
        raise InputError(path, field, f"channels {bad} requested but the data has {n_channels} channel(s)")
    return list(channels)


def _guarded(
    path: Path, field: str, problem: str, chunks: Iterator[np.ndarray], errors: tuple[type[BaseException], ...]
) -> Iterator[np.ndarray]:
    """``chunks`` with the read errors ``errors`` turned into an :class:`InputError` on ``path``."""
    try:
        yield from chunks
    except InputError:
        raise
    except errors as err:
        raise InputError(path, field, f"{problem}: {err}") from None


def _row_ranges(T: int, chunk_rows: int) -> Iterator[tuple[int, int]]:
    for start in range(0, T, chunk_rows):
        yield start, min(start + chunk_rows, T)


# ------------------------------------------------------------------------------------- HDF5
def read_h5(path: Path, key: str = "df", channels: list[int] | None = None) -> RawSeries:
    """Read a pandas HDF5 DataFrame (METR-LA / PEMS-BAY layout: DatetimeIndex x sensor columns).

    The fixed format is read with h5py block by block in row chunks; the timestamp unit comes
    from the file (old files store ns, pandas 3 stores us). The table format goes through
    pandas in row chunks.
    """
    _require_file(path)
    if channels not in (None, [0]):
        raise InputError(path, "dataset.channels", f"an HDF5 frame has one channel; got {channels}")
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise InputError(path, None, f"not a readable HDF5 file (truncated or corrupt?): {err}") from None
    with handle:
        if key not in handle:
            keys = sorted(handle.keys())
            raise InputError(path, f"HDF5 key '{key}'", f"not found; the file has keys {keys} (set dataset.h5_key)")
        group = handle[key]
        pandas_type = _attr_str(group, "pandas_type")
        if pandas_type == "frame":
            return _read_fixed_frame(path, key, group)
        if pandas_type != "frame_table":
            raise InputError(path, f"HDF5 key '{key}'", f"not a pandas DataFrame (pandas_type={pandas_type!r})")
    return _read_table_frame(path, key)


def _read_fixed_frame(path: Path, key: str, group: h5py.Group) -> RawSeries:
    """The axes and block layout now; the values, block by block, when the chunks are read."""
    field = f"HDF5 key '{key}'"
    try:
        columns = canonical_ids(_read_axis(group["axis0"]))
        index = _read_datetime_axis(path, key, group["axis1"])
        T, N = len(index), len(columns)
        position = {c: i for i, c in enumerate(columns)}
        blocks: list[tuple[str, np.ndarray, bool]] = []
        filled = np.zeros(N, dtype=bool)
        for b in range(int(group.attrs.get("nblocks", 0))):
            items = canonical_ids(_read_axis(group[f"block{b}_items"]))
            block = group[f"block{b}_values"]
            if block.dtype.kind not in "fiub":
                raise InputError(path, f"{key}/block{b}_values", f"non-numeric columns ({block.dtype}): {items[:5]}")
            transposed = bool(block.attrs.get("transposed", False))
            rows = block.shape[0 if transposed else 1]
            if rows != T:
                raise InputError(path, f"{key}/block{b}_values", f"has {rows} rows, index has {T}")
            cols = np.array([position[i] for i in items], dtype=np.int64)
            blocks.append((f"block{b}_values", cols, transposed))
            filled[cols] = True
    except (OSError, KeyError, ValueError) as err:
        if isinstance(err, InputError):
            raise
        raise InputError(path, field, f"unreadable pandas frame (truncated or corrupt?): {err}") from None
    if not filled.all():
        raise InputError(path, field, f"{int((~filled).sum())} columns have no data block")

    def read_rows(chunk_rows: int) -> Iterator[np.ndarray]:
        with h5py.File(path, "r") as handle:
            datasets = [(handle[key][name], cols, transposed) for name, cols, transposed in blocks]
            for start, stop in _row_ranges(T, chunk_rows):
                # Fortran order: each sensor's column is contiguous for the Parquet writer.
                chunk = np.empty((stop - start, N, 1), dtype=np.float32, order="F")
                for block, cols, transposed in datasets:
                    chunk[:, cols, 0] = block[start:stop, :] if transposed else block[:, start:stop].T
                yield chunk

    return RawSeries(
        shape=(T, N, 1),
        timestamps=index,
        node_ids=columns,
        read_rows=lambda rows: _guarded(path, field, "unreadable values", read_rows(rows), (OSError, KeyError)),
    )


def _read_axis(dataset: h5py.Dataset) -> np.ndarray:
    data = dataset[()]
    if data.dtype.kind == "S":
        return np.char.decode(data, "utf-8")
    return data


def _read_datetime_axis(path: Path, key: str, dataset: h5py.Dataset) -> pd.DatetimeIndex:
    kind = _attr_str(dataset, "kind")
    if not kind.startswith("datetime64"):
        raise InputError(path, f"{key}/axis1", f"the index is not a DatetimeIndex (kind={kind!r})")
    unit = kind[len("datetime64[") : -1] if "[" in kind else "ns"  # unit-less means pandas < 2: ns
    index = pd.DatetimeIndex(dataset[()].astype(f"datetime64[{unit}]"))
    tz = _attr_str(dataset, "tz")
    if tz:
        # Stored as UTC; calendar features need the local wall-clock time.
        index = index.tz_localize("UTC").tz_convert(tz).tz_localize(None)
    return index


def _read_table_frame(path: Path, key: str) -> RawSeries:
    field = f"HDF5 key '{key}'"
    try:
        with pd.HDFStore(path, mode="r") as store:
            T = store.get_storer(key).nrows
            first = store.select(key, start=0, stop=1)
            index = pd.Index(store.select_column(key, "index"))
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise InputError(path, field, f"unreadable pandas table: {err}") from None
    if T == 0 or first.shape[1] == 0:
        raise InputError(path, field, "the table is empty")
    if not isinstance(index, pd.DatetimeIndex):
        raise InputError(path, field, "the index is not a DatetimeIndex")
    N = first.shape[1]

    def read_rows(chunk_rows: int) -> Iterator[np.ndarray]:
        with pd.HDFStore(path, mode="r") as store:
            for start, stop in _row_ranges(T, chunk_rows):
                frame = store.select(key, start=start, stop=stop)
                yield np.asfortranarray(frame.to_numpy(dtype=np.float32))[:, :, None]

    return RawSeries(
        shape=(T, N, 1),
        timestamps=index.tz_localize(None) if index.tz else index,
        node_ids=canonical_ids(first.columns),
        read_rows=lambda rows: _guarded(
            path, field, "unreadable pandas table", read_rows(rows), (OSError, ValueError, TypeError)
        ),
    )


def _attr_str(obj: h5py.HLObject, name: str) -> str:
    value = obj.attrs.get(name, b"")
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) or value is None:
        return ""
    return str(value)


# -------------------------------------------------------------------------------------- npz
def read_npz(
    path: Path,
    key: str = "data",
    timestamps_key: str = "timestamps",
    channels: list[int] | None = None,
    node_ids_key: str = "node_ids",
) -> RawSeries:
    """Read ``key`` ([T, N] or [T, N, C]) from an npz, in row chunks, plus optional timestamps and
    node ids (strings or integers, one per node; without them the nodes are 0..N-1)."""
    _require_file(path)
    field = f"npz key '{key}'"
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise InputError(path, None, f"not a readable npz (zip) file: {err}") from None
    with archive:
        members = {name[:-4]: name for name in archive.namelist() if name.endswith(".npy")}
        if key not in members:
            raise InputError(path, field, f"not found; the file has keys {sorted(members)} (set dataset.npz_key)")
        try:
            with archive.open(members[key]) as fh:
                layout = _npy_layout(path, field, fh, channels)
            T, N = layout.shape[0], layout.shape[1]
            timestamps = None
            if timestamps_key in members:
                with archive.open(members[timestamps_key]) as fh:
                    stamps = np.lib.format.read_array(fh, allow_pickle=False)
                timestamps = _parse_timestamps(path, f"npz key '{timestamps_key}'", stamps)
            node_ids = None
            if node_ids_key in members:
                with archive.open(members[node_ids_key]) as fh:
                    node_ids = _read_node_ids(path, node_ids_key, fh, N)
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
            if isinstance(err, InputError):
                raise
            raise InputError(path, field, f"unreadable array (truncated or corrupt?): {err}") from None
    if timestamps is not None and len(timestamps) != T:
        raise InputError(path, f"npz key '{timestamps_key}'", f"has {len(timestamps)} entries for {T} steps")

    def read_rows(chunk_rows: int) -> Iterator[np.ndarray]:
        with zipfile.ZipFile(path) as archive, archive.open(members[key]) as fh:
            _npy_layout(path, field, fh, channels)  # positions the stream at the data
            yield from _npy_rows(path, field, fh, layout, chunk_rows)

    return RawSeries(
        shape=(T, N, len(layout.chosen)),
        timestamps=timestamps,
        node_ids=node_ids,
        read_rows=lambda rows: _guarded(
            path,
            field,
            "unreadable array (truncated or corrupt?)",
            read_rows(rows),
            (ValueError, OSError, zipfile.BadZipFile, EOFError),
        ),
    )


def _read_node_ids(path: Path, key: str, fh: IO[bytes], n_nodes: int) -> list[str]:
    field = f"npz key '{key}'"
    try:
        ids = np.lib.format.read_array(fh, allow_pickle=False)
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise InputError(path, field, "holds Python objects; only string or integer ids are read") from None
        raise
    if ids.ndim != 1 or ids.dtype.kind not in "USiu":
        raise InputError(
            path,
            field,
            f"is a {ids.dtype} array of shape {list(ids.shape)}; expected one string or integer id per node",
        )
    if len(ids) != n_nodes:
        raise InputError(path, field, f"has {len(ids)} ids for the series' {n_nodes} nodes")
    return canonical_ids(ids.tolist())


@dataclass(frozen=True)
class _NpyLayout:
    shape: tuple[int, ...]
    fortran: bool
    dtype: np.dtype
    chosen: list[int]


def _npy_layout(path: Path, field: str, fh: IO[bytes], channels: list[int] | None) -> _NpyLayout:
    """Read an .npy header from ``fh`` (leaving it at the data) and check it is a numeric series."""
    version = np.lib.format.read_magic(fh)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(fh)
    if dtype.hasobject:
        raise InputError(path, field, "holds Python objects; only numeric arrays are read (no unpickling)")
    if dtype.kind not in "fiub":
        raise InputError(path, field, f"non-numeric dtype {dtype}")
    if len(shape) not in (2, 3):
        raise InputError(path, field, f"has {len(shape)} dimensions {shape}; expected [T, N] or [T, N, C]")
    C = shape[2] if len(shape) == 3 else 1
    return _NpyLayout(shape, fortran, dtype, select_channels(C, channels, path, "dataset.channels"))


def _npy_rows(path: Path, field: str, fh: IO[bytes], layout: _NpyLayout, chunk_rows: int) -> Iterator[np.ndarray]:
    T, N = layout.shape[0], layout.shape[1]
    C = layout.shape[2] if len(layout.shape) == 3 else 1
    itemsize = layout.dtype.itemsize
    if layout.fortran:
        # Column-major on disk: no row can be read before the last column, so this layout is read whole.
        n_bytes = int(np.prod(layout.shape)) * itemsize
        full = np.frombuffer(_read_exact(fh, n_bytes, path, field), dtype=layout.dtype)
        full = full.reshape(layout.shape, order="F").reshape(T, N, C, order="F")
        for start, stop in _row_ranges(T, chunk_rows):
            yield np.asfortranarray(full[start:stop][:, :, layout.chosen], dtype=np.float32)
        return
    row_bytes = N * C * itemsize
    for start, stop in _row_ranges(T, chunk_rows):
        rows = stop - start
        chunk = np.frombuffer(_read_exact(fh, rows * row_bytes, path, field), dtype=layout.dtype)
        yield np.asfortranarray(chunk.reshape(rows, N, C)[:, :, layout.chosen], dtype=np.float32)


def _read_exact(fh: IO[bytes], n_bytes: int, path: Path, field: str) -> bytes:
    data = fh.read(n_bytes)
    if len(data) != n_bytes:
        raise InputError(path, field, f"truncated: expected {n_bytes} bytes, got {len(data)}")
    return data


# -------------------------------------------------------------------------------------- csv
_TIMESTAMP_NAMES = ("timestamp", "time", "datetime", "date")


def read_csv(path: Path, timestamp_column: str | None = "auto") -> RawSeries:
    """Read a wide CSV: an optional timestamp column, then one numeric column per sensor.

    A first pass reads only the first column (the timestamps, or something to count the rows
    by); the sensor values stream in row chunks on a second pass.
    """
    _require_file(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            header = next(csv.reader(fh), [])
    except UnicodeDecodeError as err:
        raise InputError(path, None, f"not a readable CSV: {err}") from None
    if not header:
        raise InputError(path, None, "empty file")
    # pandas would silently rename a repeated column to 'x.1'; a repeated sensor is an error.
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        raise InputError(path, "node ids", f"{len(repeated)} duplicated sensor ids, e.g. {repeated[:5]}")
    ts_col = _timestamp_column(path, header, timestamp_column)
    sensors = [c for c in header if c != ts_col]
    if not sensors:
        raise InputError(path, "columns", "no sensor columns")
    first = ts_col if ts_col is not None else header[0]
    try:
        stamps = [
            chunk[first].to_numpy()
            for chunk in pd.read_csv(path, usecols=[first], dtype={first: str}, chunksize=1 << 16)
        ]
    except (ValueError, pd.errors.ParserError) as err:
        raise InputError(path, f"column '{first}'", f"unreadable: {err}") from None
    T = sum(len(s) for s in stamps)
    timestamps = None
    if ts_col is not None:
        timestamps = _parse_timestamps(path, f"column '{ts_col}'", np.concatenate(stamps) if stamps else np.array([]))

    def read_rows(chunk_rows: int) -> Iterator[np.ndarray]:
        row = 0
        reader = pd.read_csv(path, chunksize=chunk_rows, dtype={c: "float32" for c in sensors}, usecols=header)
        for chunk in reader:
            row += len(chunk)
            yield np.asfortranarray(chunk[sensors].to_numpy(dtype=np.float32))[:, :, None]
        if row != T:
            raise InputError(path, "rows", f"{row} rows of values but {T} in the first column")

    return RawSeries(
        shape=(T, len(sensors), 1),
        timestamps=timestamps,
        node_ids=canonical_ids(sensors),
        read_rows=lambda rows: _guarded(
            path, "values", "non-numeric sensor values", read_rows(rows), (ValueError, pd.errors.ParserError)
        ),
    )


def _timestamp_column(path: Path, header: list[str], requested: str | None) -> str | None:
    if requested is None:
        return None
    if requested != "auto":
        if requested not in header:
            raise InputError(path, f"column '{requested}'", f"not found (columns start {header[:5]})")
        return requested
    for name in header:
        if str(name).strip().lower() in _TIMESTAMP_NAMES:
            return name
    first = str(header[0])
    try:
        float(first)
        return None
    except ValueError:
        pass
    # An unnamed first column (pandas writes the index as '' or 'Unnamed: 0') holds the timestamps.
    return header[0] if first == "" or first.startswith("Unnamed") else None


def _parse_timestamps(path: Path, field: str, raw: np.ndarray) -> pd.DatetimeIndex:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "could not infer format": parsed anyway
            stamps = pd.DatetimeIndex(pd.to_datetime(raw))
    except (ValueError, TypeError) as err:
        raise InputError(path, field, f"cannot be parsed as timestamps: {err}") from None
    if stamps.tz is not None:
        stamps = stamps.tz_localize(None)
    return stamps


# ----------------------------------------------------------------------------------- dispatch
def _require_file(path: Path) -> None:
    if not path.exists():
        raise InputError(path, None, "file not found")
    if not path.is_file():
        raise InputError(path, None, "not a file")


def read_raw_series(
    path: Path,
    *,
    h5_key: str = "df",
    npz_key: str = "data",
    timestamps_key: str = "timestamps",
    timestamp_column: str | None = "auto",
    channels: list[int] | None = None,
    node_ids_key: str = "node_ids",
) -> RawSeries:
    """Read a raw series file, choosing the reader by suffix (.h5/.hdf5, .npz, .csv)."""
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5", ".hdf"):
        return read_h5(path, h5_key, channels)
    if suffix == ".npz":
        return read_npz(path, npz_key, timestamps_key, channels, node_ids_key)
    if suffix == ".csv":
        raw = read_csv(path, timestamp_column)
        if channels not in (None, [0]):
            raise InputError(path, "dataset.channels", f"a wide CSV has one channel; got {channels}")
        return raw
    raise InputError(path, "dataset.series", f"unsupported suffix {suffix!r}; expected .h5, .npz or .csv")
