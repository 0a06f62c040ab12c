"""Data validation with Great Expectations: real data passes, each defect fails by name.

Expectation types, outcomes and counts are read from GX's own checkpoint result (the dict
``report.gx_result`` and ``gx_result.json``), not only from our summary. One GX context is
shared by the module (GX's import alone takes 4-7 s); the file runs in about 13-16 s.

Synthetic cases are copies of the real data with one defect injected; each says so.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from gptst.data.series import SeriesData, canonical_ids
from gptst.params import DatasetParams, ValidationParams
from gptst.validation.gx_run import new_context
from gptst.validation.validate import ValidationReport, validate_dataset

SPEED = DatasetParams(name="metr-la", kind="speed", series="unused.h5", graph="unused.pkl", null_value=0.0)
BIKE = DatasetParams(name="nycbike", kind="demand", series="unused.npz", graph="unused.npz", null_value=None)
OUTPUTS = ("gx_result.json", "summary.md", "metrics.json")


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def gx_context() -> Any:
    started = time.perf_counter()
    context = new_context()
    print(f"GX import + ephemeral context: {time.perf_counter() - started:.1f} s")
    return context


@pytest.fixture(scope="module")
def metr_graph(week_pkl: Path) -> tuple[list[str], np.ndarray]:
    # DCRNN's Python-2 pickle [ids, id->index, adj]; a trusted file in the repo.
    with open(week_pkl, "rb") as fh:
        ids, _, adj = pickle.load(fh, encoding="latin1")
    return canonical_ids(ids), np.asarray(adj)


@pytest.fixture(scope="module")
def bike_with_graph(bike: SeriesData, test_data: Path) -> tuple[SeriesData, np.ndarray]:
    return bike, np.load(test_data / "nycbike-grid" / "adj_mx.npz")["adj_mx"]


@pytest.fixture(scope="module")
def week_report(gx_context, week, metr_graph, tmp_path_factory) -> ValidationReport:
    ids, adj = metr_graph
    started = time.perf_counter()
    out_dir = tmp_path_factory.mktemp("week")
    report = validate_dataset(week, adj, ids, SPEED, ValidationParams(), out_dir, context=gx_context)
    print(f"METR-LA week validation: {time.perf_counter() - started:.2f} s")
    return report


@pytest.fixture()
def run(gx_context, metr_graph, tmp_path):
    """``run(series, **overrides)``: validate against the METR-LA graph into ``tmp_path``."""

    def _run(series: SeriesData, **kw: Any) -> ValidationReport:
        ids, adj = kw.pop("graph", metr_graph)
        return validate_dataset(
            series,
            adj,
            ids,
            kw.pop("dataset", SPEED),
            kw.pop("options", ValidationParams()),
            kw.pop("out_dir", tmp_path),
            context=gx_context,
            **kw,
        )

    return _run


# ------------------------------------------------------------------------------- helpers
def outcomes(gx_result: dict[str, Any]) -> list[dict[str, Any]]:
    """Flatten GX's own result: suite, expectation type, column, success, result."""
    rows = []
    for suite in gx_result["validation_results"]:
        for res in suite["results"]:
            config = res["expectation_config"]
            rows.append(
                {
                    "suite": suite["suite_name"],
                    "type": config["type"],
                    "column": config["kwargs"].get("column", config["kwargs"].get("column_A")),
                    "success": res["success"],
                    "result": res["result"],
                }
            )
    return rows


def failed(gx_result: dict[str, Any]) -> list[tuple[str, str | None]]:
    return [(o["type"], o["column"]) for o in outcomes(gx_result) if not o["success"]]


def only(gx_result: dict[str, Any], type_: str, column: str | None, suite: str | None = None) -> dict[str, Any]:
    hits = [
        o for o in outcomes(gx_result) if o["type"] == type_ and o["column"] == column and suite in (None, o["suite"])
    ]
    assert len(hits) == 1, (type_, column, hits)
    return hits[0]


def example_items(outcome: dict[str, Any]) -> list[str]:
    return [e["item"] for e in outcome["result"]["partial_unexpected_index_list"]]


def assert_outputs(report: ValidationReport, out_dir: Path) -> dict[str, Any]:
    """All three outputs exist; gx_result.json is the report's GX dict; returns metrics."""
    for name in OUTPUTS:
        assert (out_dir / name).is_file(), name
    on_disk = json.loads((out_dir / "gx_result.json").read_text())
    assert on_disk["validation_results"] == json.loads(json.dumps(report.gx_result["validation_results"]))
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics == report.counts
    return metrics


def with_values(series: SeriesData, values: np.ndarray) -> SeriesData:
    return dataclasses.replace(series, values=values)


def with_timestamps(series: SeriesData, keep: np.ndarray | None = None, timestamps=None) -> SeriesData:
    if keep is not None:
        return dataclasses.replace(series, values=series.values[keep], stamps=series.stamps[keep])
    return dataclasses.replace(series, stamps=np.asarray(timestamps, dtype="datetime64[ns]"))


# --------------------------------------------------------------------------------- real data
def test_week_passes_with_its_graph(week_report: ValidationReport) -> None:
    report = week_report
    assert report.success, report.message
    gx = report.gx_result
    assert gx["success"] is True
    assert failed(gx) == []
    types = {(o["suite"], o["type"], o["column"]) for o in outcomes(gx)}
    assert {
        ("series_time", "expect_column_values_to_be_increasing", "timestamp"),
        ("series_time", "expect_column_values_to_be_unique", "timestamp"),
        ("series_time", "expect_column_values_to_be_in_set", "step_seconds"),
        ("series_values", "expect_column_values_to_be_between", "n_nonfinite"),
        ("series_values", "expect_column_values_to_be_between", "min"),
        ("series_values", "expect_column_values_to_be_between", "max"),
        ("series_values", "expect_column_values_to_be_between", "missing_share"),
        ("series_values", "expect_column_mean_to_be_between", "missing_share"),
        ("graph_matrix", "expect_table_row_count_to_equal", None),
        ("graph_matrix", "expect_column_values_to_be_between", "n_cols"),
        ("graph_matrix", "expect_column_values_to_be_between", "min_weight"),
        ("graph_ids", "expect_column_pair_values_to_be_equal", "graph_node_id"),
    } <= types
    # Aggregated views keep the suite small: one row per step / node-channel / graph row.
    evaluated = sum(s["statistics"]["evaluated_expectations"] for s in gx["validation_results"])
    assert evaluated == report.counts["evaluated"] == len(outcomes(gx)) < 20
    assert only(gx, "expect_column_values_to_be_between", "missing_share")["result"]["element_count"] == 207
    assert only(gx, "expect_column_values_to_be_in_set", "step_seconds")["result"]["element_count"] == 2016
    assert report.counts["gaps"] == 0 and report.gaps["expected_step_seconds"] == 300.0
    assert report.counts["zero_nodes"] == 0 and report.counts["nonfinite_cells"] == 0
    assert report.counts["blocking_failed"] == 0
    metrics = assert_outputs(report, report.paths["summary"].parent)
    assert set(metrics) >= {
        "evaluated", "successful", "failed", "blocking_failed", "gaps",
        "zero_nodes", "missing_share_overall", "nonfinite_cells",
    }  # fmt: skip
    summary = report.paths["summary"].read_text()
    assert "PASSED" in summary and "expect_column_pair_values_to_be_equal" in summary


def test_raw_slice_passes_with_default_thresholds(run, raw100) -> None:
    report = run(raw100)
    assert report.success, report.message
    mean = only(report.gx_result, "expect_column_mean_to_be_between", "missing_share")
    share = mean["result"]["observed_value"]
    assert share == pytest.approx(0.031, abs=0.001)  # 3.1% of cells are zeros (= missing)
    assert report.counts["missing_share_overall"] == pytest.approx(share)


def test_raw_slice_fails_stricter_per_node_threshold_naming_the_sensor(run, raw100, tmp_path) -> None:
    strict = SPEED.model_copy(update={"max_missing_per_node": 0.5})
    report = run(raw100, dataset=strict)
    assert not report.success
    assert failed(report.gx_result) == [("expect_column_values_to_be_between", "missing_share")]
    outcome = only(report.gx_result, "expect_column_values_to_be_between", "missing_share")
    assert outcome["result"]["unexpected_count"] == 1
    [example] = outcome["result"]["partial_unexpected_index_list"]
    assert example["item"] == "718072|speed" and example["missing_share"] == pytest.approx(0.51)
    assert "718072" in report.message and "missing_share" in report.message
    assert "expect_column_values_to_be_between" in report.message
    metrics = assert_outputs(report, tmp_path)
    assert metrics["blocking_failed"] == 1 and metrics["failed"] == 1
    assert "FAIL" in (tmp_path / "summary.md").read_text()


def test_bike_grid_passes_and_reports_zero_nodes(run, bike_with_graph, tmp_path) -> None:
    series, adj = bike_with_graph
    report = run(series, graph=(series.node_ids, adj), dataset=BIKE)
    assert report.success, report.message
    zero = only(report.gx_result, "expect_column_values_to_be_between", "nonzero_steps")
    assert zero["suite"] == "zero_nodes" and zero["result"]["unexpected_count"] == 47
    assert failed(report.gx_result) == [("expect_column_values_to_be_between", "nonzero_steps")]
    # GX's own verdict includes the non-blocking suite; ours does not.
    assert report.gx_result["success"] is False
    expected = [str(i) for i in np.flatnonzero((series.values == 0).all(axis=(0, 2)))]
    assert report.zero_node_ids == expected and len(expected) == 47
    assert set(example_items(zero)) <= set(expected)
    assert report.counts["zero_nodes"] == 47 and report.counts["blocking_failed"] == 0
    assert "47 node(s) are zero at every step" in report.message
    assert report.gaps["count"] == 0 and report.gaps["expected_step_seconds"] == 3600.0
    assert_outputs(report, tmp_path)
    assert all(i in (tmp_path / "summary.md").read_text() for i in expected)


def test_bike_zero_nodes_block_when_asked(run, bike_with_graph) -> None:
    series, adj = bike_with_graph
    options = ValidationParams(block_on_zero_nodes=True, max_examples=3)
    report = run(series, graph=(series.node_ids, adj), dataset=BIKE, options=options)
    assert not report.success and report.counts["blocking_failed"] == 1
    zero = only(report.gx_result, "expect_column_values_to_be_between", "nonzero_steps")
    assert len(example_items(zero)) == 3  # max_examples reaches GX's partial_unexpected_count
    assert "nonzero_steps" in report.message


# ------------------------------------------------------------------------- value defects
def test_nan_and_inf_fail_as_nonfinite_not_missing(run, week, week_report, metr_graph, tmp_path) -> None:
    # Synthetic edge case from real data: the week with one NaN and one inf injected.
    ids = metr_graph[0]
    values = week.values.copy()
    values[10, 3, 0] = np.nan
    values[20, 7, 0] = np.inf
    report = run(with_values(week, values))
    assert not report.success
    assert failed(report.gx_result) == [("expect_column_values_to_be_between", "n_nonfinite")]
    outcome = only(report.gx_result, "expect_column_values_to_be_between", "n_nonfinite", "series_values")
    assert outcome["result"]["unexpected_count"] == 2
    assert example_items(outcome) == [f"{ids[3]}|speed", f"{ids[7]}|speed"]
    assert ids[3] in report.message and ids[7] in report.message
    assert report.counts["nonfinite_cells"] == 2
    # Not silently counted as missing: the missing share is unchanged.
    assert report.counts["missing_share_overall"] == week_report.counts["missing_share_overall"]
    assert_outputs(report, tmp_path)


def test_values_above_speed_bound_fail(run, week, metr_graph) -> None:
    # Synthetic edge case from real data: one reading of 150 mph.
    ids = metr_graph[0]
    values = week.values.copy()
    values[100, 42, 0] = 150.0
    report = run(with_values(week, values))
    assert not report.success
    assert failed(report.gx_result) == [("expect_column_values_to_be_between", "max")]
    outcome = only(report.gx_result, "expect_column_values_to_be_between", "max")
    [example] = outcome["result"]["partial_unexpected_index_list"]
    assert example == {"position": 42, "item": f"{ids[42]}|speed", "max": 150.0}
    assert ids[42] in report.message


# --------------------------------------------------------------------------- time defects
def test_duplicated_timestamps_fail(run, week, tmp_path) -> None:
    # Synthetic edge case from real data: step 11 repeats step 10's timestamp.
    ts = week.timestamps.to_numpy().copy()
    ts[11] = ts[10]
    report = run(with_timestamps(week, timestamps=ts))
    assert not report.success
    assert set(failed(report.gx_result)) == {
        ("expect_column_values_to_be_unique", "timestamp"),
        ("expect_column_values_to_be_increasing", "timestamp"),
        ("expect_column_values_to_be_in_set", "step_seconds"),
    }
    unique = only(report.gx_result, "expect_column_values_to_be_unique", "timestamp")
    assert [e["position"] for e in unique["result"]["partial_unexpected_index_list"]] == [10, 11]
    assert str(pd.Timestamp(ts[10])) in report.message
    assert_outputs(report, tmp_path)


def test_unsorted_timestamps_fail(run, week) -> None:
    # Synthetic edge case from real data: steps 50 and 51 swapped.
    ts = week.timestamps.to_numpy().copy()
    ts[[50, 51]] = ts[[51, 50]]
    report = run(with_timestamps(week, timestamps=ts))
    assert not report.success
    failures = set(failed(report.gx_result))
    assert ("expect_column_values_to_be_increasing", "timestamp") in failures
    assert ("expect_column_values_to_be_unique", "timestamp") not in failures
    increasing = only(report.gx_result, "expect_column_values_to_be_increasing", "timestamp")
    assert increasing["result"]["unexpected_count"] == 1
    assert increasing["result"]["partial_unexpected_index_list"][0]["position"] == 51


def test_gap_is_reported_and_fails_constant_frequency(run, week, tmp_path) -> None:
    # Synthetic edge case from real data: steps 100-111 (one hour) and 500-502 dropped.
    keep = np.ones(len(week.timestamps), dtype=bool)
    keep[100:112] = False
    keep[500:503] = False
    series = with_timestamps(week, keep=keep)
    report = run(series)
    assert not report.success
    assert failed(report.gx_result) == [("expect_column_values_to_be_in_set", "step_seconds")]
    freq = only(report.gx_result, "expect_column_values_to_be_in_set", "step_seconds")
    assert freq["result"]["unexpected_count"] == 2
    # Positions are in the gapped series: the first kept step after each hole.
    assert report.gaps["count"] == 2 == report.counts["gaps"]
    assert report.gaps["first"] == [
        {"position": 100, "timestamp": str(week.timestamps[112]), "step_seconds": 13 * 300.0},
        {"position": 488, "timestamp": str(week.timestamps[503]), "step_seconds": 4 * 300.0},
    ]
    assert str(week.timestamps[112]) in report.message
    summary = (tmp_path / "summary.md").read_text()
    assert "Irregular steps: 2" in summary and str(week.timestamps[112]) in summary
    assert json.loads((tmp_path / "metrics.json").read_text())["gaps"] == 2


def test_expected_freq_overrides_series_freq(run, week) -> None:
    report = run(week, expected_freq="10min")
    assert not report.success and report.gaps["expected_step_seconds"] == 600.0
    assert report.gaps["count"] == len(week.timestamps) - 1  # every step but the first


# -------------------------------------------------------------------------- graph defects
def _graph_case(case: str, ids: list[str], adj: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Synthetic edge cases from the real METR-LA graph, one defect each."""
    ids, adj = list(ids), adj.copy()
    if case == "not_square":
        return ids, adj[:, :-1]
    if case == "wrong_size":
        return ids[:-1], adj[:-1, :-1]
    if case == "negative":
        adj[3, 5] = -0.25
        return ids, adj
    if case == "nonfinite":
        adj[4, 6] = np.nan
        return ids, adj
    if case == "ids_swapped":
        ids[0], ids[1] = ids[1], ids[0]
        return ids, adj
    raise AssertionError(case)


@pytest.mark.parametrize(
    ("case", "expected_failures"),
    [
        ("not_square", {("expect_column_values_to_be_between", "n_cols")}),
        (
            "wrong_size",
            {
                ("expect_table_row_count_to_equal", None),
                ("expect_column_pair_values_to_be_equal", "graph_node_id"),
            },
        ),
        ("negative", {("expect_column_values_to_be_between", "min_weight")}),
        ("nonfinite", {("expect_column_values_to_be_between", "n_nonfinite")}),
        ("ids_swapped", {("expect_column_pair_values_to_be_equal", "graph_node_id")}),
    ],
)
def test_graph_defects_fail(run, week, metr_graph, tmp_path, case, expected_failures) -> None:
    ids, adj = _graph_case(case, *metr_graph)
    report = run(week, graph=(ids, adj))
    assert not report.success
    assert set(failed(report.gx_result)) == expected_failures
    assert {o["suite"] for o in outcomes(report.gx_result) if not o["success"]} <= {"graph_matrix", "graph_ids"}
    assert report.counts["blocking_failed"] == len(expected_failures)
    assert_outputs(report, tmp_path)
    if case == "negative":
        outcome = only(report.gx_result, "expect_column_values_to_be_between", "min_weight")
        [example] = outcome["result"]["partial_unexpected_index_list"]
        assert example == {"position": 3, "item": ids[3], "min_weight": -0.25}
    if case == "ids_swapped":
        outcome = only(report.gx_result, "expect_column_pair_values_to_be_equal", "graph_node_id")
        assert [e["position"] for e in outcome["result"]["partial_unexpected_index_list"]] == [0, 1]
        assert ids[0] in report.message and ids[1] in report.message
    if case == "wrong_size":
        rows = only(report.gx_result, "expect_table_row_count_to_equal", None)
        assert rows["result"]["observed_value"] == 206


# ------------------------------------------------------------------------ isolated nodes
ISOLATED = ("expect_column_values_to_be_between", "degree")


def isolated_share(adj: np.ndarray) -> tuple[int, int]:
    """(isolated nodes, nodes) of a square graph: no edge in or out, self-loops not counted."""
    linked = np.asarray(adj) != 0
    np.fill_diagonal(linked, False)
    return int((~linked.any(axis=0) & ~linked.any(axis=1)).sum()), linked.shape[0]


def test_real_graphs_pass_the_default_isolated_share(test_data, metr_graph) -> None:
    from gptst.graph.adjacency import build_adjacency
    from gptst.graph.dcrnn_pickle import read_dcrnn_pickle
    from gptst.params import GraphParams
    from gptst.validation.frames import graph_rows_frame

    limit = ValidationParams().max_isolated_share
    assert limit == 0.05
    graphs = {
        "metr-la-week": metr_graph[1],
        "pems-bay": read_dcrnn_pickle(test_data / "pems-bay" / "adj_mx_bay.pkl")[1],
        "nycbike-grid": np.load(test_data / "nycbike-grid" / "adj_mx.npz")["adj_mx"],
        "pems08 (binary)": build_adjacency(
            test_data / "pems08" / "PEMS08.csv", [str(i) for i in range(170)], GraphParams(weighting="binary")
        )[0],
    }
    measured = {name: isolated_share(adj) for name, adj in graphs.items()}
    assert measured == {
        "metr-la-week": (1, 207), "pems-bay": (6, 325), "nycbike-grid": (0, 128), "pems08 (binary)": (0, 170),
    }  # fmt: skip
    for name, adj in graphs.items():
        frame = graph_rows_frame(adj, [str(i) for i in range(len(adj))])
        assert int((frame["degree"] == 0).sum()) == measured[name][0], name  # the view agrees
        assert measured[name][0] / measured[name][1] <= limit, name


def test_week_graph_reports_its_one_isolated_node(week_report, metr_graph) -> None:
    # Sensor 717804 has only its self-loop (the Gaussian kernel of d = 0): isolated, within the limit.
    outcome = only(week_report.gx_result, *ISOLATED)
    assert outcome["suite"] == "graph_matrix" and outcome["success"]
    assert outcome["result"]["unexpected_count"] == 1 and outcome["result"]["element_count"] == 207
    assert week_report.counts["isolated_nodes"] == 1
    assert week_report.counts["isolated_share"] == pytest.approx(1 / 207)
    assert "1 of 207 graph node(s) are isolated" in week_report.message
    assert "limit 0.05" in week_report.message
    summary = week_report.paths["summary"].read_text()
    assert "- isolated_nodes: 1" in summary and "degree" in summary


def test_graph_of_another_series_is_blocked_naming_share_and_limit(run, week, metr_graph, test_data, tmp_path) -> None:
    # The graph the adjacency stage used to build from PEMS08's 170-node edge list for the 207
    # METR-LA sensors (default Gaussian recipe, rows/cols taken by position): 137 edges,
    # 85 of the 207 nodes isolated (positions 170..206 and 48 whose roads fall under the threshold).
    from gptst.graph.adjacency import gaussian_adjacency
    from gptst.graph.readers import read_csv_graph

    edges = read_csv_graph(test_data / "pems08" / "PEMS08.csv").frame
    adj = gaussian_adjacency(edges, [str(i) for i in range(207)])
    assert np.count_nonzero(adj) == 137 and isolated_share(adj) == (85, 207)
    report = run(week, graph=(metr_graph[0], adj))
    assert not report.success
    assert failed(report.gx_result) == [ISOLATED]  # every other expectation still passes
    outcome = only(report.gx_result, *ISOLATED)
    assert outcome["result"]["unexpected_count"] == 85 and outcome["result"]["element_count"] == 207
    assert {e["degree"] for e in outcome["result"]["partial_unexpected_index_list"]} == {0}
    assert report.counts["blocking_failed"] == 1
    assert report.counts["isolated_nodes"] == 85
    assert report.counts["isolated_share"] == pytest.approx(85 / 207)
    assert "85 of 207 rows unexpected (share 0.411, limit 0.05)" in report.message
    assert "validation.max_isolated_share" in report.message
    metrics = assert_outputs(report, tmp_path)
    assert metrics["isolated_nodes"] == 85
    summary = (tmp_path / "summary.md").read_text()
    assert "FAILED" in summary and "85 / 207" in summary and "- isolated_nodes: 85" in summary


def test_isolated_share_limit_is_inclusive(run, week) -> None:
    # The week's graph has 1 isolated node of 207: a limit of exactly 1/207 passes, 0 blocks.
    at_limit = run(week, options=ValidationParams(max_isolated_share=1 / 207))
    assert at_limit.success, at_limit.message
    strict = run(week, options=ValidationParams(max_isolated_share=0.0))
    assert not strict.success and failed(strict.gx_result) == [ISOLATED]
    [example] = only(strict.gx_result, *ISOLATED)["result"]["partial_unexpected_index_list"]
    assert example == {"position": 26, "item": "717804", "degree": 0}
    assert "1 of 207 rows unexpected (share 0.00483, limit 0)" in strict.message and "717804" in strict.message


def test_self_loops_alone_do_not_connect_a_node(run, week, metr_graph) -> None:
    # Synthetic: the real METR-LA graph reduced to its diagonal (every node only loops to itself).
    ids, adj = metr_graph
    report = run(week, graph=(ids, np.diag(np.diag(adj))))
    assert not report.success and failed(report.gx_result) == [ISOLATED]
    assert report.counts["isolated_nodes"] == 207 and report.counts["isolated_share"] == 1.0


def test_max_isolated_share_is_a_share() -> None:
    from pydantic import ValidationError

    for bad in (-0.1, 1.5):
        with pytest.raises(ValidationError, match="max_isolated_share"):
            ValidationParams(max_isolated_share=bad)
    assert ValidationParams(max_isolated_share=1.0).max_isolated_share == 1.0


# ------------------------------------------------------------------------------ plumbing
def test_outputs_replace_earlier_ones_on_failure(run, week, tmp_path) -> None:
    first = run(week)
    assert first.success and json.loads((tmp_path / "metrics.json").read_text())["blocking_failed"] == 0
    # Synthetic edge case from real data: a negative speed.
    values = week.values.copy()
    values[0, 0, 0] = -1.0
    second = run(with_values(week, values))
    assert not second.success
    assert json.loads((tmp_path / "metrics.json").read_text())["blocking_failed"] == 1
    assert json.loads((tmp_path / "gx_result.json").read_text())["success"] is False
    assert "FAILED" in (tmp_path / "summary.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(OUTPUTS)  # no temp files left


def test_offline_ephemeral_and_leaves_no_files(gx_context, week, metr_graph, tmp_path, monkeypatch) -> None:
    """No network, no gx/ project folder, analytics off, the shared context left clean."""
    import os

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.chdir(tmp_path)
    ids, adj = metr_graph
    # context=None: the call builds (and drops) its own ephemeral context.
    report = validate_dataset(week, adj, ids, SPEED, ValidationParams(), tmp_path / "out")
    assert report.success
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert os.environ["GX_ANALYTICS_ENABLED"] == "false"
    assert gx_context.config.analytics_enabled is False
    assert not gx_context.config.data_docs_sites
    assert type(gx_context).__name__ == "EphemeralDataContext"
    assert list(gx_context.suites.all()) == [] and list(gx_context.checkpoints.all()) == []
    assert list(gx_context.data_sources.all()) == []


def test_unvalidatable_inputs_raise_input_error(week, metr_graph, tmp_path) -> None:
    """Shapes no expectation can describe are refused before GX runs (nothing is written)."""
    from gptst.errors import InputError

    ids, adj = metr_graph
    short_ids = dataclasses.replace(week, node_ids=week.node_ids[:-1])
    with pytest.raises(InputError, match="do not match values"):
        validate_dataset(short_ids, adj, ids, SPEED, ValidationParams(), tmp_path)
    with pytest.raises(InputError, match="2-D matrix"):
        validate_dataset(week, adj[0], ids, SPEED, ValidationParams(), tmp_path)
    with pytest.raises(InputError, match="fixed-length"):
        validate_dataset(week, adj, ids, SPEED, ValidationParams(), tmp_path, expected_freq="MS")
    assert list(tmp_path.iterdir()) == []
