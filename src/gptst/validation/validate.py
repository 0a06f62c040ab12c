"""``validate_dataset``: Great Expectations checks of a series and its graph, with offline reports.

Outputs (always written, pass or fail, atomically, under ``out_dir``):

* ``gx_result.json``: the checkpoint result, GX's own serialisation;
* ``summary.md``: every expectation with its outcome, observed value and examples, the gaps
  and the all-zero nodes, readable without GX or a browser;
* ``metrics.json``: counts for ``dvc metrics``.

Data Docs are not built: their HTML loads CSS and JavaScript from CDNs and does not render
offline, and building them would write a site to disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gptst.data.kinds import data_kind
from gptst.data.series import SeriesData
from gptst.errors import InputError
from gptst.io import write_json, write_text
from gptst.params import DatasetParams, ValidationParams
from gptst.validation import frames
from gptst.validation.gx_run import Check, View, new_context, run_checkpoint
from gptst.validation.report import collect_failures, render_message, render_summary

# Suite (and view) names: they appear in gx_result.json and in messages.
TIME_SUITE = "series_time"
VALUES_SUITE = "series_values"
GRAPH_SUITE = "graph_matrix"
GRAPH_IDS_SUITE = "graph_ids"
ZERO_SUITE = "zero_nodes"

GX_RESULT_FILE = "gx_result.json"
SUMMARY_FILE = "summary.md"
METRICS_FILE = "metrics.json"


@dataclass
class ValidationReport:
    """Outcome of :func:`validate_dataset`.

    ``success`` counts blocking suites only; ``gx_result["success"]`` is GX's verdict over all
    suites, so it is False whenever the non-blocking zero-node suite reports something.
    """

    success: bool
    message: str
    counts: dict[str, int | float]
    paths: dict[str, Path]
    zero_node_ids: list[str]
    gaps: dict[str, Any]
    gx_result: dict[str, Any] = field(repr=False)


def validate_dataset(
    series: SeriesData,
    adj: np.ndarray,
    adj_node_ids: list[str],
    dataset: DatasetParams,
    options: ValidationParams,
    out_dir: Path,
    expected_freq: str | None = None,
    context: Any | None = None,
) -> ValidationReport:
    """Validate ``series`` and its graph with one GX checkpoint; write the three reports.

    Missing readings are those equal to ``series.null_value`` (the file's own marker); NaN and
    inf are non-finite and always fail. ``context``: a GX context from
    :func:`gptst.validation.new_context` to reuse (created when omitted); it is left unchanged.
    Raises :class:`InputError` only for inputs that cannot be validated at all (wrong ranks,
    axes that do not match the values, an empty series).
    """
    _check_shapes(series, adj)
    out_dir = Path(out_dir)
    step, step_source = frames.expected_step(series, expected_freq)
    views = _views(series, adj, adj_node_ids, dataset, options, step)

    gx_result = run_checkpoint(context if context is not None else new_context(), views, options.max_examples)

    blocking = {v.name for v in views if v.blocking}
    failures = collect_failures(gx_result, blocking)
    node_view = next(v for v in views if v.name == VALUES_SUITE)
    graph_view = next(v for v in views if v.name == GRAPH_SUITE)
    isolated = int((graph_view.frame["degree"] == 0).sum())
    zero_ids = _zero_node_ids(views)
    gaps = _gaps(gx_result, step, step_source)
    stats = [r["statistics"] for r in gx_result["validation_results"]]
    evaluated = sum(s["evaluated_expectations"] for s in stats)
    successful = sum(s["successful_expectations"] for s in stats)
    blocking_failed = sum(1 for f in failures if f["blocking"])
    counts: dict[str, int | float] = {
        "evaluated": evaluated,
        "successful": successful,
        "failed": evaluated - successful,
        "blocking_failed": blocking_failed,
        "gaps": gaps["count"],
        "zero_nodes": len(zero_ids),
        "missing_share_overall": float(node_view.frame["missing_share"].mean()),
        "nonfinite_cells": int(node_view.frame["n_nonfinite"].sum()),
        "isolated_nodes": isolated,
        "isolated_share": isolated / len(graph_view.frame) if len(graph_view.frame) else 0.0,
    }
    success = blocking_failed == 0
    message = render_message(success, failures, counts, zero_ids, options.max_examples)
    if isolated:
        message += (
            f"\nnote: {isolated} of {len(graph_view.frame)} graph node(s) are isolated (no edge in or out): "
            f"share {counts['isolated_share']:.3g}, limit {options.max_isolated_share:g} "
            "(validation.max_isolated_share)"
        )

    paths = {
        "gx_result": out_dir / GX_RESULT_FILE,
        "summary": out_dir / SUMMARY_FILE,
        "metrics": out_dir / METRICS_FILE,
    }
    write_json(paths["gx_result"], gx_result)
    write_text(
        paths["summary"],
        render_summary(
            dataset_name=dataset.name,
            success=success,
            message=message,
            series=series,
            adj_shape=tuple(adj.shape),
            gx_result=gx_result,
            blocking=blocking,
            gaps=gaps,
            zero_node_ids=zero_ids,
            counts=counts,
        ),
    )
    write_json(paths["metrics"], counts)
    return ValidationReport(success, message, counts, paths, zero_ids, gaps, gx_result)


def _check_shapes(series: SeriesData, adj: np.ndarray) -> None:
    """Reject what no expectation can describe: the views need a 3-D series and a 2-D graph."""
    if series.values.ndim != 3:
        raise InputError("series", "values", f"expected [T, N, C], got shape {series.values.shape}")
    T, N, C = series.values.shape
    if T == 0 or N == 0 or C == 0:
        raise InputError("series", "values", f"empty series of shape {series.values.shape}")
    if len(series.stamps) != T or len(series.node_ids) != N or len(series.channels) != C:
        raise InputError(
            "series",
            "axes",
            f"{len(series.stamps)} timestamps, {len(series.node_ids)} node ids and "
            f"{len(series.channels)} channels do not match values {series.values.shape}",
        )
    if np.ndim(adj) != 2:
        raise InputError("graph", "adjacency", f"expected a 2-D matrix, got shape {np.shape(adj)}")


def _time_checks(step: float | None) -> list[Check]:
    """The timestamps: present, strictly increasing, unique, and (when known) one step apart."""
    time_checks = [
        Check("ExpectColumnValuesToNotBeNull", {"column": "timestamp"}, "every step has a timestamp"),
        Check(
            "ExpectColumnValuesToBeIncreasing",
            {"column": "timestamp", "strictly": True},
            "timestamps strictly increase",
        ),
        Check("ExpectColumnValuesToBeUnique", {"column": "timestamp"}, "timestamps are unique"),
    ]
    if step is not None:
        time_checks.append(
            Check(
                "ExpectColumnValuesToBeInSet",
                {"column": "step_seconds", "value_set": [step]},
                f"constant frequency: every step is {step:g} s after the previous one (others are gaps)",
            )
        )

    return time_checks


def _value_checks(dataset: DatasetParams) -> list[Check]:
    """Per (node, channel): finite, within the kind's physical bounds, not too much missing."""
    bounds = dataset.physical_bounds
    value_checks = [
        Check(
            "ExpectCompoundColumnsToBeUnique",
            {"column_list": ["node_id", "channel"]},
            "each (node, channel) appears once",
        ),
        Check(
            "ExpectColumnValuesToBeBetween",
            {"column": "n_nonfinite", "min_value": 0, "max_value": 0},
            "values are finite (no NaN or inf)",
        ),
    ]
    if bounds.min is not None:
        value_checks.append(
            Check(
                "ExpectColumnValuesToBeBetween",
                {"column": "min", "min_value": bounds.min},
                f"valid readings are >= {bounds.min:g} ({dataset.kind} lower bound)",
            )
        )
    if bounds.max is not None:
        value_checks.append(
            Check(
                "ExpectColumnValuesToBeBetween",
                {"column": "max", "max_value": bounds.max},
                f"valid readings are <= {bounds.max:g} ({dataset.kind} upper bound)",
            )
        )
    value_checks += [
        Check(
            "ExpectColumnValuesToBeBetween",
            {"column": "missing_share", "min_value": 0, "max_value": dataset.max_missing_per_node},
            f"each node-channel is at most {dataset.max_missing_per_node:g} missing",
        ),
        # Every row covers T readings, so the mean share is the share of missing cells overall.
        Check(
            "ExpectColumnMeanToBeBetween",
            {"column": "missing_share", "min_value": 0, "max_value": dataset.max_missing_overall},
            f"at most {dataset.max_missing_overall:g} of all readings are missing",
        ),
    ]

    return value_checks


def _graph_checks(N: int, graph_rows: int, options: ValidationParams) -> list[Check]:
    """The graph's rows: one per node, square, finite non-negative weights, few isolated nodes."""
    graph_checks = [
        Check("ExpectTableRowCountToEqual", {"value": N}, f"the graph has N = {N} rows, one per series node"),
        Check(
            "ExpectColumnValuesToBeBetween",
            {"column": "n_cols", "min_value": graph_rows, "max_value": graph_rows},
            f"the graph is square: every row has {graph_rows} columns",
        ),
        Check(
            "ExpectColumnValuesToBeBetween",
            {"column": "n_nonfinite", "min_value": 0, "max_value": 0},
            "edge weights are finite",
        ),
        Check(
            "ExpectColumnValuesToBeBetween",
            {"column": "min_weight", "min_value": 0},
            "edge weights are non-negative",
        ),
        # mostly = 1 - limit (GX passes when the share of rows with degree >= 1 is >= mostly);
        # the 1e-9 keeps a share exactly at the limit passing despite 1 - x rounding.
        Check(
            "ExpectColumnValuesToBeBetween",
            {"column": "degree", "min_value": 1, "mostly": max(0.0, 1.0 - options.max_isolated_share - 1e-9)},
            f"at most {options.max_isolated_share:g} of the nodes are isolated (degree 0: no edge in or out, "
            "self-loops not counted; validation.max_isolated_share)",
        ),
    ]
    return graph_checks


def _views(
    series: SeriesData,
    adj: np.ndarray,
    adj_node_ids: list[str],
    dataset: DatasetParams,
    options: ValidationParams,
    step: float | None,
) -> list[View]:
    """The frames GX validates (aggregated views, never the raw [T, N, C] values) and their checks."""
    id_checks = [
        Check(
            "ExpectColumnPairValuesToBeEqual",
            {"column_A": "graph_node_id", "column_B": "series_node_id"},
            "graph node ids equal the series node ids, in order",
        )
    ]
    graph_checks = _graph_checks(series.values.shape[1], adj.shape[0], options)
    views = [
        View(TIME_SUITE, frames.timestamps_frame(series.timestamps), _time_checks(step)),
        View(VALUES_SUITE, frames.node_channel_frame(series), _value_checks(dataset)),
        View(GRAPH_SUITE, frames.graph_rows_frame(adj, adj_node_ids), graph_checks),
        View(GRAPH_IDS_SUITE, frames.graph_ids_frame(adj_node_ids, series.node_ids), id_checks),
    ]
    if data_kind(dataset.kind).checks_zero_nodes:
        # Demand grids have cells nobody uses; they are worth knowing about, not fatal by default.
        views.append(
            View(
                ZERO_SUITE,
                frames.node_frame(series),
                [
                    Check(
                        "ExpectColumnValuesToBeBetween",
                        {"column": "nonzero_steps", "min_value": 1},
                        "every node is non-zero at some step",
                    )
                ],
                blocking=options.block_on_zero_nodes,
            )
        )
    return views


def _zero_node_ids(views: list[View]) -> list[str]:
    """All all-zero nodes (GX's result lists only the first few examples)."""
    view = next((v for v in views if v.name == ZERO_SUITE), None)
    if view is None:
        return []
    return view.frame.loc[view.frame["nonzero_steps"] == 0, frames.ITEM].astype(str).tolist()


def _gaps(gx_result: dict[str, Any], step: float | None, step_source: str) -> dict[str, Any]:
    """Steps whose distance to the previous one is not the expected step, from GX's result."""
    gaps: dict[str, Any] = {"count": 0, "expected_step_seconds": step, "step_source": step_source, "first": []}
    for suite in gx_result["validation_results"]:
        if suite["suite_name"] != TIME_SUITE:
            continue
        for res in suite["results"]:
            config = res["expectation_config"]
            if config["kwargs"].get("column") != "step_seconds":
                continue
            result = res.get("result") or {}
            gaps["count"] = int(result.get("unexpected_count") or 0)
            gaps["first"] = [
                {
                    "position": ex.get(frames.POSITION),
                    "timestamp": ex.get(frames.ITEM),
                    "step_seconds": ex.get("step_seconds"),
                }
                for ex in result.get("partial_unexpected_index_list") or []
            ]
    return gaps
