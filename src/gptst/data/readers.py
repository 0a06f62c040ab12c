"""Readers for raw series files: pandas HDF5, npz and wide CSV.

Each reader returns a :class:`RawSeries` with float32 values [T, N, C] and whatever axes the
file carries. Memory stays near the float32 result: HDF5 and npz are read in row chunks
(the float64 source is never held whole), so ingesting full METR-LA peaks well under 3x the
float32 array.
"""

from __future__ import annotations

import csv
import warnings
import zipfile
from dataclasses import dataclass
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
    """What a raw file gives: values [T, N, C] float32 and the axes it stores (or None)."""

    values: np.ndarray
    timestamps: pd.DatetimeIndex | None
    node_ids: list[str] | None
    channel_names: list[str] | None = None


def select_channels(n_channels: int, channels: list[int] | None, path: Path, field: str) -> list[int]:
    """Validate the requested channel indices against what the file has."""
    if channels is None:
        return list(range(n_channels))
    bad = [c for c in channels if c >= n_channels]
    if bad:
        raise InputError(path, field, f"channels {bad} requested but the data has {n_channels} channel(s)")
    return list(channels)


# ------------------------------------------------------------------------------------- HDF5
def read_h5(path: Path, key: str = "df", channels: list[int] | None = None) -> RawSeries:
    """Read a pandas HDF5 DataFrame (METR-LA / PEMS-BAY layout: DatetimeIndex x sensor columns).

    The fixed format is read with h5py block by block in row chunks; the timestamp unit comes
    from the file (old files store ns, pandas 3 stores us). The table format goes through
    pandas in row chunks.
    """
    _require_file(path)
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
        if pandas_type == "frame_table":
            raw = None
        elif pandas_type == "frame":
            raw = _read_fixed_frame(path, key, group)
        else:
            raise InputError(path, f"HDF5 key '{key}'", f"not a pandas DataFrame (pandas_type={pandas_type!r})")
    if raw is None:
        raw = _read_table_frame(path, key)
    if channels not in (None, [0]):
        raise InputError(path, "dataset.channels", f"an HDF5 frame has one channel; got {channels}")
    return raw


def _read_fixed_frame(path: Path, key: str, group: h5py.Group) -> RawSeries:
    try:
        columns = canonical_ids(_read_axis(group["axis0"]))
        index = _read_datetime_axis(path, key, group["axis1"])
        n_blocks = int(group.attrs.get("nblocks", 0))
        T, N = len(index), len(columns)
        # Fortran order: each sensor's column is contiguous for the Parquet writer.
        values = np.empty((T, N, 1), dtype=np.float32, order="F")
        filled = np.zeros(N, dtype=bool)
        position = {c: i for i, c in enumerate(columns)}
        for b in range(n_blocks):
            items = canonical_ids(_read_axis(group[f"block{b}_items"]))
            block = group[f"block{b}_values"]
            if block.dtype.kind not in "fiub":
                raise InputError(path, f"{key}/block{b}_values", f"non-numeric columns ({block.dtype}): {items[:5]}")
            cols = np.array([position[i] for i in items])
            transposed = bool(block.attrs.get("transposed", False))
            rows_axis = 0 if transposed else 1
            if block.shape[rows_axis] != T:
                raise InputError(path, f"{key}/block{b}_values", f"has {block.shape[rows_axis]} rows, index has {T}")
            for start in range(0, T, CHUNK_ROWS):
                stop = min(start + CHUNK_ROWS, T)
                chunk = block[start:stop, :] if transposed else block[:, start:stop].T
                values[start:stop, cols, 0] = chunk
            filled[cols] = True
    except (OSError, KeyError, ValueError) as err:
        if isinstance(err, InputError):
            raise
        raise InputError(path, f"HDF5 key '{key}'", f"unreadable pandas frame (truncated or corrupt?): {err}") from None
    if not filled.all():
        raise InputError(path, f"HDF5 key '{key}'", f"{int((~filled).sum())} columns have no data block")
    return RawSeries(values=values, timestamps=index, node_ids=columns)


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
    try:
        with pd.HDFStore(path, mode="r") as store:
            storer = store.get_storer(key)
            T = storer.nrows
            index: list[pd.Index] = []
            values = None
            for start in range(0, T, CHUNK_ROWS):
                frame = store.select(key, start=start, stop=min(start + CHUNK_ROWS, T))
                if values is None:
                    values = np.empty((T, frame.shape[1], 1), dtype=np.float32, order="F")
                    columns = canonical_ids(frame.columns)
                values[start : start + len(frame), :, 0] = frame.to_numpy(dtype=np.float32)
                index.append(frame.index)
    except (OSError, ValueError, TypeError) as err:
        raise InputError(path, f"HDF5 key '{key}'", f"unreadable pandas table: {err}") from None
    idx = index[0].append(index[1:]) if index else pd.DatetimeIndex([])
    if not isinstance(idx, pd.DatetimeIndex):
        raise InputError(path, f"HDF5 key '{key}'", "the index is not a DatetimeIndex")
    if values is None:
        raise InputError(path, f"HDF5 key '{key}'", "the table is empty")
    return RawSeries(values=values, timestamps=idx.tz_localize(None) if idx.tz else idx, node_ids=columns)


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
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise InputError(path, None, f"not a readable npz (zip) file: {err}") from None
    with archive:
        members = {name[:-4]: name for name in archive.namelist() if name.endswith(".npy")}
        if key not in members:
            raise InputError(
                path, f"npz key '{key}'", f"not found; the file has keys {sorted(members)} (set dataset.npz_key)"
            )
        try:
            with archive.open(members[key]) as fh:
                values = _read_npy_rows(path, key, fh, channels)
            timestamps = None
            if timestamps_key in members:
                with archive.open(members[timestamps_key]) as fh:
                    stamps = np.lib.format.read_array(fh, allow_pickle=False)
                timestamps = _parse_timestamps(path, f"npz key '{timestamps_key}'", stamps)
            node_ids = None
            if node_ids_key in members:
                with archive.open(members[node_ids_key]) as fh:
                    node_ids = _read_node_ids(path, node_ids_key, fh, values.shape[1])
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
            if isinstance(err, InputError):
                raise
            raise InputError(path, f"npz key '{key}'", f"unreadable array (truncated or corrupt?): {err}") from None
    if timestamps is not None and len(timestamps) != values.shape[0]:
        raise InputError(
            path, f"npz key '{timestamps_key}'", f"has {len(timestamps)} entries for {values.shape[0]} steps"
        )
    return RawSeries(values=values, timestamps=timestamps, node_ids=node_ids)


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


def _read_npy_rows(path: Path, key: str, fh: IO[bytes], channels: list[int] | None) -> np.ndarray:
    version = np.lib.format.read_magic(fh)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(fh)
    field = f"npz key '{key}'"
    if dtype.hasobject:
        raise InputError(path, field, "holds Python objects; only numeric arrays are read (no unpickling)")
    if dtype.kind not in "fiub":
        raise InputError(path, field, f"non-numeric dtype {dtype}")
    if len(shape) not in (2, 3):
        raise InputError(path, field, f"has {len(shape)} dimensions {shape}; expected [T, N] or [T, N, C]")
    T, N = shape[0], shape[1]
    C = shape[2] if len(shape) == 3 else 1
    chosen = select_channels(C, channels, path, "dataset.channels")
    out = np.empty((T, N, len(chosen)), dtype=np.float32, order="F")
    if fortran:
        full = np.frombuffer(_read_exact(fh, int(np.prod(shape)) * dtype.itemsize, path, field), dtype=dtype)
        full = full.reshape(shape, order="F").reshape(T, N, C, order="F")
        out[...] = full[:, :, chosen]
        return out
    row_bytes = N * C * dtype.itemsize
    for start in range(0, T, CHUNK_ROWS):
        rows = min(CHUNK_ROWS, T - start)
        chunk = np.frombuffer(_read_exact(fh, rows * row_bytes, path, field), dtype=dtype).reshape(rows, N, C)
        out[start : start + rows] = chunk[:, :, chosen]
    return out


def _read_exact(fh: IO[bytes], n_bytes: int, path: Path, field: str) -> bytes:
    data = fh.read(n_bytes)
    if len(data) != n_bytes:
        raise InputError(path, field, f"truncated: expected {n_bytes} bytes, got {len(data)}")
    return data


# -------------------------------------------------------------------------------------- csv
_TIMESTAMP_NAMES = ("timestamp", "time", "datetime", "date")


def read_csv(path: Path, timestamp_column: str | None = "auto") -> RawSeries:
    """Read a wide CSV: an optional timestamp column, then one numeric column per sensor."""
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
    n_rows = _count_data_rows(path)
    values = np.empty((n_rows, len(sensors), 1), dtype=np.float32, order="F")
    stamps: list[pd.Series] = []
    row = 0
    try:
        reader = pd.read_csv(path, chunksize=CHUNK_ROWS, dtype={c: "float32" for c in sensors}, usecols=header)
        for chunk in reader:
            values[row : row + len(chunk), :, 0] = chunk[sensors].to_numpy(dtype=np.float32)
            if ts_col is not None:
                stamps.append(chunk[ts_col])
            row += len(chunk)
    except ValueError as err:
        raise InputError(path, "values", f"non-numeric sensor values: {err}") from None
    values = values[:row] if row != n_rows else values
    timestamps = None
    if ts_col is not None:
        timestamps = _parse_timestamps(path, f"column '{ts_col}'", pd.concat(stamps).to_numpy())
    return RawSeries(values=values, timestamps=timestamps, node_ids=canonical_ids(sensors))


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


def _count_data_rows(path: Path) -> int:
    count = 0
    last = b"\n"
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            count += block.count(b"\n")
            last = block[-1:]
    count += last != b"\n"
    return max(count - 1, 0)


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
