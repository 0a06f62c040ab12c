"""Ingest: every supported raw layout becomes the canonical series; bad files fail clearly."""

from __future__ import annotations

import json
import pickle
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from gptst.data.ingest import infer_freq, ingest
from gptst.data.readers import read_raw_series
from gptst.data.series import canonical_id, column_values, load_series, read_series_metadata
from gptst.errors import InputError
from gptst.params import DatasetParams
from stages import ingest as ingest_stage

from .conftest import REPO_ROOT, TEST_DATA, WEEK_DIR


def speed(**kw) -> DatasetParams:
    base = dict(name="t", kind="speed", series="unused", graph="unused", null_value=0.0)
    return DatasetParams(**{**base, **kw})


def demand(**kw) -> DatasetParams:
    base = dict(name="t", kind="demand", series="unused", graph="unused", null_value=None)
    return DatasetParams(**{**base, **kw})


# ------------------------------------------------------------------------------ real layouts
def test_the_week_becomes_the_canonical_parquet_contract(tmp_path: Path, week_h5: Path):
    result = ingest(speed(), week_h5, tmp_path / "series.parquet", tmp_path / "meta.json")
    frame = pd.read_hdf(week_h5, "df")

    schema = pq.read_schema(tmp_path / "series.parquet")
    assert schema.field("timestamp").type.unit == "us"
    assert schema.names[1] == f"{frame.columns[0]}|speed" and len(schema.names) == 1 + 207
    assert all(str(schema.field(n).type) == "float" for n in schema.names[1:])
    assert read_series_metadata(tmp_path / "series.parquet")["node_ids"] == list(frame.columns)

    data = load_series(tmp_path / "series.parquet")
    assert data.values.shape == (2016, 207, 1) and data.values.dtype == np.float32
    np.testing.assert_array_equal(data.values[:, :, 0], frame.to_numpy(np.float32))
    assert (data.timestamps == frame.index).all()
    assert (data.freq, data.channels, data.null_value, data.kind) == ("5min", ["speed"], 0.0, "speed")

    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta == result.meta
    assert meta["shape"] == [2016, 207, 1] and meta["freq"] == "5min"
    assert meta["start"] == "2012-03-01T00:00:00" and meta["end"] == "2012-03-07T23:55:00"
    assert meta["source_sha256"] == "ddcad54a94f0b704342051dc1f04b2e46a55b28fc1e282bae7096170538cffd1"
    assert meta["missing_rate"] == {"speed": 0.0}  # its publishers filled the gaps


def test_raw_metr_la_int_ids_become_the_strings_the_dcrnn_pickle_uses(tmp_path: Path):
    ingest(speed(), TEST_DATA / "metr-la-raw100/metr-la-raw100.h5", tmp_path / "s.parquet", tmp_path / "m.json")
    data = load_series(tmp_path / "s.parquet")
    with open(WEEK_DIR / "adj_mx.pkl", "rb") as fh:  # a trusted file of this repo
        pickle_ids = pickle.load(fh, encoding="latin1")[0]
    assert data.node_ids == list(pickle_ids)
    meta = json.loads((tmp_path / "m.json").read_text())
    assert meta["missing_rate"]["speed"] == pytest.approx(float((data.values == 0).mean()))
    assert 0.02 < meta["missing_rate"]["speed"] < 0.04  # 3.1% of METR-LA's first 100 steps


def test_nyc_bike_npz_keeps_both_channels_and_its_timestamps(tmp_path: Path):
    params = demand(channel_names=["inflow", "outflow"])
    ingest(params, TEST_DATA / "nycbike-grid/nycbike-grid.npz", tmp_path / "s.parquet", tmp_path / "m.json")
    data = load_series(tmp_path / "s.parquet")
    raw = np.load(TEST_DATA / "nycbike-grid/nycbike-grid.npz")
    np.testing.assert_array_equal(data.values, raw["data"])
    assert data.node_ids == [str(i) for i in range(128)]
    assert data.channels == ["inflow", "outflow"] and data.freq == "h"
    assert data.timestamps[0] == pd.Timestamp("2014-08-04 23:00") and data.null_value is None


def test_a_pems_style_npz_without_timestamps_takes_start_and_freq_from_params(tmp_path: Path):
    # Synthetic [T, N, 3] array in the PEMS0x layout (flow, occupancy, speed); no timestamps.
    values = np.random.default_rng(0).uniform(0, 500, size=(300, 5, 3))
    np.savez(tmp_path / "pems.npz", data=values)
    params = demand(channels=[0], channel_names=["flow"], start="2016-07-01 00:00", freq="5min")
    ingest(params, tmp_path / "pems.npz", tmp_path / "s.parquet", tmp_path / "m.json")
    data = load_series(tmp_path / "s.parquet")
    np.testing.assert_allclose(data.values[:, :, 0], values[:, :, 0].astype(np.float32))
    assert data.timestamps[0] == pd.Timestamp("2016-07-01") and data.timestamps[-1] == pd.Timestamp("2016-07-02 00:55")
    assert data.channels == ["flow"]


def test_a_two_dimensional_npz_is_one_channel(tmp_path: Path):
    np.savez_compressed(tmp_path / "x.npz", data=np.arange(40, dtype=np.float64).reshape(10, 4))
    raw = read_raw_series(tmp_path / "x.npz")
    assert raw.values.shape == (10, 4, 1) and raw.timestamps is None
    np.testing.assert_array_equal(raw.values[:, :, 0], np.arange(40).reshape(10, 4))


@pytest.mark.parametrize("with_timestamps", [True, False])
def test_wide_csv_with_or_without_a_timestamp_column(tmp_path: Path, week_h5: Path, with_timestamps: bool):
    frame = pd.read_hdf(week_h5, "df").iloc[:50, :6]
    path = tmp_path / "wide.csv"
    if with_timestamps:
        frame.rename_axis("timestamp").to_csv(path)
        params = speed()
    else:
        frame.to_csv(path, index=False)
        params = speed(start="2012-03-01 00:00", freq="5min")
    ingest(params, path, tmp_path / "s.parquet", tmp_path / "m.json")
    data = load_series(tmp_path / "s.parquet")
    np.testing.assert_allclose(data.values[:, :, 0], frame.to_numpy(np.float32))
    assert data.node_ids == list(frame.columns)
    assert (data.timestamps == frame.index).all()


# ------------------------------------------------------------------- streaming in row chunks
def _synthetic_source(directory: Path, layout: str) -> tuple[Path, DatasetParams]:
    """SYNTHETIC values (with missing zeros, NaN and inf) in each raw layout, 700 steps x 9 nodes."""
    rng = np.random.default_rng(3)
    values = rng.uniform(0, 80, (700, 9, 2)).astype(np.float64)
    values[rng.random(values.shape) < 0.05] = 0.0
    values[5, 2, 0], values[600, 7, 1] = np.nan, np.inf
    stamps = pd.date_range("2019-01-01", periods=700, freq="5min")
    ids = [f"s{i:02d}" for i in range(9)]
    if layout == "npz":
        np.savez(directory / "src.npz", data=values, timestamps=stamps.values, node_ids=np.array(ids))
        return directory / "src.npz", speed(channel_names=["flow", "speed"])
    if layout == "npz-fortran":
        np.savez(directory / "src.npz", data=np.asfortranarray(values), timestamps=stamps.values)
        return directory / "src.npz", speed(channels=[1], channel_names=["speed"])
    frame = pd.DataFrame(values[:, :, 0], index=stamps, columns=ids)
    if layout == "h5":
        frame[ids[4]] = np.arange(700)  # an int64 block beside the float64 one
        frame.to_hdf(directory / "src.h5", key="df")
        return directory / "src.h5", speed()
    if layout == "h5-table":
        frame.to_hdf(directory / "src.h5", key="df", format="table")
        return directory / "src.h5", speed()
    frame.rename_axis("timestamp").to_csv(directory / "src.csv")
    return directory / "src.csv", speed()


@pytest.mark.parametrize("layout", ["npz", "npz-fortran", "h5", "h5-table", "csv"])
def test_a_series_streamed_in_many_chunks_equals_the_in_memory_ingest_cell_for_cell(tmp_path: Path, layout: str):
    from gptst.data.ingest import read_source, to_series
    from gptst.data.series import write_series

    source, params = _synthetic_source(tmp_path, layout)
    streamed = ingest(params, source, tmp_path / "streamed.parquet", tmp_path / "streamed.json", chunk_rows=64)
    whole = to_series(read_source(params, source), params, source)
    write_series(tmp_path / "whole.parquet", whole)

    assert pq.ParquetFile(tmp_path / "streamed.parquet").num_row_groups == 11  # 700 steps in chunks of 64
    a, b = load_series(tmp_path / "streamed.parquet"), load_series(tmp_path / "whole.parquet")
    np.testing.assert_array_equal(a.values, b.values)  # NaN where NaN, bit for bit elsewhere
    assert (a.timestamps == b.timestamps).all() and a.node_ids == b.node_ids and a.channels == b.channels
    missing = {c: float((b.values[..., i] == 0).mean()) for i, c in enumerate(b.channels)}
    nonfinite = {c: int((~np.isfinite(b.values[..., i])).sum()) for i, c in enumerate(b.channels)}
    assert streamed.meta["missing_rate"] == pytest.approx(missing)
    assert streamed.meta["nonfinite"] == nonfinite


def test_a_bad_value_deep_in_the_stream_leaves_the_earlier_series_intact(tmp_path: Path):
    source, params = _synthetic_source(tmp_path, "csv")
    ingest(params, source, tmp_path / "s.parquet", tmp_path / "m.json", chunk_rows=64)
    before = (tmp_path / "s.parquet").read_bytes()
    lines = source.read_text().splitlines()
    lines[650] = lines[650].rsplit(",", 1)[0] + ",not-a-number"  # in the eleventh chunk
    source.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match="non-numeric sensor values") as err:
        ingest(params, source, tmp_path / "s.parquet", tmp_path / "m.json", chunk_rows=64)
    assert str(source) in str(err.value)
    assert (tmp_path / "s.parquet").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "s.parquet", "src.csv"]  # no temp file left


def test_a_large_series_loads_as_a_read_only_memory_map_that_a_rewrite_replaces(tmp_path: Path, week_h5: Path):
    from gptst.data.series import memmap_sidecar, write_series

    ingest(speed(), week_h5, tmp_path / "s.parquet", tmp_path / "m.json")
    in_memory = load_series(tmp_path / "s.parquet")
    mapped = load_series(tmp_path / "s.parquet", mmap=True)
    assert isinstance(mapped.values, np.memmap) and not mapped.values.flags.writeable
    np.testing.assert_array_equal(mapped.values, in_memory.values)
    sidecar = memmap_sidecar(tmp_path / "s.parquet")
    assert sidecar.is_file() and sidecar.name.startswith(".s.parquet.")

    changed = replace(in_memory, values=in_memory.values[::-1].copy())
    write_series(tmp_path / "s.parquet", changed)
    again = load_series(tmp_path / "s.parquet", mmap=True)
    np.testing.assert_array_equal(again.values, changed.values)  # never the stale sidecar
    assert not sidecar.exists() and memmap_sidecar(tmp_path / "s.parquet").is_file()


# ------------------------------------------------------------------------ HDF5 file variants
def test_old_files_with_nanosecond_timestamps_read_the_same(tmp_path: Path, week_h5: Path):
    """Files written before pandas 2 store the index in ns with kind 'datetime64' (no unit)."""
    old = tmp_path / "old.h5"
    old.write_bytes(week_h5.read_bytes())
    with h5py.File(old, "r+") as fh:
        axis = fh["df/axis1"]
        ns = axis[()] * 1000
        attrs = dict(axis.attrs)
        del fh["df/axis1"]
        fh["df/axis1"] = ns
        for key, value in attrs.items():
            fh["df/axis1"].attrs[key] = value
        fh["df/axis1"].attrs["kind"] = np.bytes_(b"datetime64")
    assert (read_raw_series(old).timestamps == read_raw_series(week_h5).timestamps).all()


def test_table_format_mixed_blocks_and_time_zones_are_read(tmp_path: Path, week_h5: Path):
    frame = pd.read_hdf(week_h5, "df").iloc[:30, :4]
    frame.to_hdf(tmp_path / "table.h5", key="df", format="table")
    raw = read_raw_series(tmp_path / "table.h5")
    np.testing.assert_array_equal(raw.values[:, :, 0], frame.to_numpy(np.float32))

    mixed = frame.copy()
    mixed[mixed.columns[1]] = np.arange(30)  # an int64 block beside the float64 one
    mixed.index = mixed.index.tz_localize("America/Los_Angeles")
    mixed.to_hdf(tmp_path / "mixed.h5", key="df")
    raw = read_raw_series(tmp_path / "mixed.h5")
    assert raw.node_ids == list(frame.columns)
    np.testing.assert_array_equal(raw.values[:, 1, 0], np.arange(30))
    assert raw.timestamps[0] == pd.Timestamp("2012-03-01 00:00")  # local wall-clock time kept


def test_freq_is_the_most_common_step_even_with_gaps():
    stamps = pd.DatetimeIndex(pd.date_range("2020-01-01", periods=10, freq="5min").delete([3, 4]))
    assert infer_freq(stamps) == "5min"
    hourly = pd.DatetimeIndex(["2020-01-01 00:00", "2020-01-01 01:00", "2020-01-01 01:00", "2020-01-01 03:00"])
    assert infer_freq(hourly) == "h"  # a repeated stamp is no step


@pytest.mark.parametrize("stamps", [["2020-01-01"], ["2020-01-01", "2020-01-01"]], ids=["one", "never increasing"])
def test_a_frequency_cannot_be_inferred_from_fewer_than_two_distinct_timestamps(stamps):
    with pytest.raises(ValueError, match="cannot infer a frequency"):
        infer_freq(pd.DatetimeIndex(stamps))


def test_canonical_ids():
    assert [canonical_id(x) for x in (773869, np.int64(773869), 773869.0, b"773869", " 773869 ")] == ["773869"] * 5


# -------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "make, field",
    [
        (lambda d: d / "absent.h5", "file not found"),
        (lambda d: _truncated(d), "truncated or corrupt"),
        (lambda d: _write(d / "x.h5", b"not an hdf5 file at all"), "not a readable HDF5"),
        (lambda d: _h5_with_key(d, "speed"), "HDF5 key 'df': not found; the file has keys ['speed']"),
        (lambda d: _npz(d, other=np.zeros((4, 3))), "npz key 'data': not found; the file has keys ['other']"),
        (lambda d: _npz(d, data=np.zeros(12)), "has 1 dimensions"),
        (lambda d: _npz(d, data=np.zeros((2, 3, 4, 5))), "has 4 dimensions"),
        (lambda d: _npz(d, data=np.array([["a", "b"]] * 3)), "non-numeric dtype"),
        (lambda d: _write(d / "x.parquet", b"PAR1"), "unsupported suffix '.parquet'"),
        (lambda d: _write(d / "x.csv", b"timestamp,a,b\n2020-01-01 00:00,1,x\n2020-01-01 00:05,2,3\n"), "non-numeric"),
        (lambda d: _write(d / "x.csv", b"timestamp,a\nnot a time,1\nlater,2\n"), "cannot be parsed as timestamps"),
    ],
)
def test_bad_files_name_the_file_and_the_problem(tmp_path: Path, make, field: str):
    path = make(tmp_path)
    with pytest.raises(InputError) as err:
        ingest(speed(start="2020-01-01", freq="5min"), path, tmp_path / "s.parquet", tmp_path / "m.json")
    assert str(path) in str(err.value)
    assert field in str(err.value)


def test_channels_beyond_the_file_are_refused(tmp_path: Path):
    with pytest.raises(InputError, match=r"channels \[2\] requested but the data has 2 channel"):
        read_raw_series(TEST_DATA / "nycbike-grid/nycbike-grid.npz", channels=[2])


def test_a_file_without_timestamps_needs_start_and_freq(tmp_path: Path):
    path = _npz(tmp_path, data=np.ones((5, 2)))
    with pytest.raises(InputError, match=r"params.yaml: dataset.start: .*has no timestamps"):
        ingest(speed(), path, tmp_path / "s.parquet", tmp_path / "m.json")


def test_timestamps_that_never_increase_without_freq_are_refused_naming_the_file_and_the_param(tmp_path: Path):
    path = tmp_path / "same_stamp.csv"
    path.write_text("timestamp,1,2\n2020-01-01 00:00,1,2\n2020-01-01 00:00,3,4\n")
    with pytest.raises(InputError, match=r"same_stamp.csv: timestamps: .*cannot infer a frequency.*dataset.freq"):
        ingest(speed(), path, tmp_path / "s.parquet", tmp_path / "m.json")
    assert not (tmp_path / "s.parquet").exists()


def test_duplicated_sensor_ids_are_refused(tmp_path: Path):
    path = tmp_path / "dup.csv"
    path.write_text("timestamp,1,2,1\n2020-01-01 00:00,1,2,3\n2020-01-01 00:05,1,2,3\n")
    with pytest.raises(InputError, match=r"node ids: 1 duplicated sensor ids, e.g. \['1'\]"):
        ingest(speed(), path, tmp_path / "s.parquet", tmp_path / "m.json")


def test_node_ids_stored_in_an_npz_name_the_nodes_so_an_edge_list_by_sensor_id_matches(tmp_path: Path):
    """The PEMS-BAY distances (real, keyed by sensor id) and a series with synthetic values over
    those 325 sensors, in an npz that carries their ids (integers, as in the CSV) under
    ``dataset.node_ids_key``: the ids reach the series and the graph is built by id. Without them
    the nodes are 0..N-1 and the same edge list is refused, naming the mismatch."""
    from gptst.graph.adjacency import build_adjacency
    from gptst.params import GraphParams

    edges = TEST_DATA / "pems-bay/distances_bay_2017.csv"
    sensors = pd.read_csv(edges, header=None)[0].unique()[::-1]  # any order: the graph follows the series
    values = np.random.default_rng(0).uniform(20, 70, (24, len(sensors))).astype(np.float32)
    params = speed(start="2017-01-01 00:00", freq="5min")
    np.savez(tmp_path / "with_ids.npz", data=values, node_ids=sensors)
    ingest(params, tmp_path / "with_ids.npz", tmp_path / "s.parquet", tmp_path / "m.json")
    series = load_series(tmp_path / "s.parquet")
    assert series.node_ids == [str(s) for s in sensors]
    adj, ids = build_adjacency(edges, series.node_ids, GraphParams())
    assert ids == series.node_ids and adj.shape == (325, 325)
    assert np.count_nonzero(adj) > 325  # sensors linked to others, by id

    np.savez(tmp_path / "without_ids.npz", data=values)
    ingest(params, tmp_path / "without_ids.npz", tmp_path / "s.parquet", tmp_path / "m.json")
    series = load_series(tmp_path / "s.parquet")
    assert series.node_ids == [str(i) for i in range(325)]
    with pytest.raises(InputError, match="ids match a series node id"):
        build_adjacency(edges, series.node_ids, GraphParams())


@pytest.mark.parametrize(
    ("ids", "problem"),
    [
        (np.array(["a", "b", "c"]), "has 3 ids for the series' 4 nodes"),
        (np.array([["a", "b"], ["c", "d"]]), "expected one string or integer id per node"),
        (np.array([0.5, 1.5, 2.5, 3.5]), "expected one string or integer id per node"),
        (np.array(["a", {}, "c", "d"], dtype=object), "holds Python objects"),
    ],
    ids=["count", "shape", "float", "pickled"],
)
def test_bad_node_ids_in_an_npz_name_the_file_and_key(tmp_path: Path, ids, problem):
    np.savez(tmp_path / "x.npz", data=np.zeros((10, 4), np.float32), sensors=ids)
    with pytest.raises(InputError, match="npz key 'sensors'") as err:
        read_raw_series(tmp_path / "x.npz", node_ids_key="sensors")
    assert problem in str(err.value) and "x.npz" in str(err.value)


def test_a_pickled_object_array_in_an_npz_is_never_unpickled(tmp_path: Path):
    np.savez(tmp_path / "evil.npz", data=np.array([object(), 1], dtype=object))
    with pytest.raises(InputError, match="holds Python objects"):
        read_raw_series(tmp_path / "evil.npz")


# ------------------------------------------------------------------------- the stage itself
def test_the_stage_writes_outputs_and_a_bad_input_leaves_them_intact(tmp_path: Path, capsys):
    project = tmp_path / "project"
    (project / "presets").mkdir(parents=True)
    (project / "presets" / "cpu.yaml").write_text((REPO_ROOT / "presets" / "cpu.yaml").read_text())
    params_text = (
        (REPO_ROOT / "params.yaml")
        .read_text()
        .replace(
            "series: data/raw/metr-la-week/metr-la-week.h5", f"series: {TEST_DATA / 'metr-la-raw100/metr-la-raw100.h5'}"
        )
    )
    (project / "params.yaml").write_text(params_text)
    out = project / "out"
    assert ingest_stage.main(["--params", str(project / "params.yaml"), "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == {"series.parquet", "meta.json"}
    assert "ingest:" in capsys.readouterr().out

    broken = project / "broken.h5"
    broken.write_bytes((TEST_DATA / "metr-la-raw100/metr-la-raw100.h5").read_bytes()[:5000])
    (project / "params.yaml").write_text(
        params_text.replace(str(TEST_DATA / "metr-la-raw100/metr-la-raw100.h5"), str(broken))
    )
    assert ingest_stage.main(["--params", str(project / "params.yaml"), "--out", str(out)]) == 2
    message = capsys.readouterr().err
    assert message.startswith("error: ") and str(broken) in message
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing lost, no temp files left

    (project / "params.yaml").write_text(params_text.replace("kind: speed", "kind: sped"))
    assert ingest_stage.main(["--params", str(project / "params.yaml"), "--out", str(out)]) == 2
    assert "dataset.kind" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# ------------------------------------------------------------------------------- helpers
def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def _truncated(directory: Path) -> Path:
    source = (WEEK_DIR / "metr-la-week.h5").read_bytes()
    return _write(directory / "truncated.h5", source[: len(source) // 2])


def _h5_with_key(directory: Path, key: str) -> Path:
    frame = pd.DataFrame(np.ones((3, 2)), index=pd.date_range("2020", periods=3, freq="5min"), columns=["a", "b"])
    frame.to_hdf(directory / "k.h5", key=key)
    return directory / "k.h5"


def _npz(directory: Path, **arrays) -> Path:
    np.savez(directory / "x.npz", **arrays)
    return directory / "x.npz"


def test_a_series_whose_sidecar_cannot_be_written_loads_into_memory_instead(tmp_path: Path, week_h5: Path, monkeypatch):
    import gptst.data.series as series_module

    def read_only(path):
        raise PermissionError(13, "Read-only file system", str(path))

    ingest(speed(), week_h5, tmp_path / "s.parquet", tmp_path / "m.json")
    monkeypatch.setattr(series_module, "atomic_path", read_only)
    data = load_series(tmp_path / "s.parquet", mmap=True)
    assert not isinstance(data.values, np.memmap) and data.values.shape == (2016, 207, 1)
    assert not list(tmp_path.glob(".*.values.npy"))


def test_columns_read_from_their_buffers_equal_pyarrows_own_conversion():
    import pyarrow as pa

    values = np.arange(10, dtype=np.float32)
    stamps = np.arange("2012-03-01T00:00", "2012-03-01T00:50", np.timedelta64(5, "m"), dtype="datetime64[us]")
    columns = [
        pa.chunked_array([pa.array(values).slice(3), pa.array(values[:4])]),  # offsets, several chunks
        pa.chunked_array([pa.array([1.5, None, np.nan], pa.float64())]),  # a null: pyarrow's own path
        pa.chunked_array([pa.array(stamps).slice(2, 5)]),
        pa.chunked_array([pa.array([1, 2], pa.int32())]),  # not float or timestamp: pyarrow's own path
    ]
    for column in columns:
        got, expected = column_values(column), column.to_numpy()
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)
