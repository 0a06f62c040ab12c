"""Turn a GX checkpoint result (as a plain dict) into a message and an offline Markdown summary."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from gptst.data.kinds import data_kind
from gptst.data.series import SeriesData
from gptst.validation.frames import INDEX_COLUMNS, ITEM, POSITION


def iter_outcomes(gx_result: dict[str, Any], blocking: set[str]) -> Iterator[dict[str, Any]]:
    """One flat record per evaluated expectation, in checkpoint order."""
    for suite in gx_result["validation_results"]:
        name = suite["suite_name"]
        for res in suite["results"]:
            config = res["expectation_config"]
            kwargs = config.get("kwargs", {})
            result = res.get("result") or {}
            exception = res.get("exception_info") or {}
            yield {
                "suite": name,
                "blocking": name in blocking,
                "success": bool(res["success"]),
                "type": config["type"],
                "column": _columns(kwargs),
                "description": config.get("description") or "",
                "observed": result.get("observed_value"),
                "unexpected_count": result.get("unexpected_count"),
                "element_count": result.get("element_count"),
                "examples": result.get("partial_unexpected_index_list") or [],
                "mostly": kwargs.get("mostly"),
                "error": exception.get("exception_message") if exception.get("raised_exception") else None,
            }


def collect_failures(gx_result: dict[str, Any], blocking: set[str]) -> list[dict[str, Any]]:
    """The failed expectations, blocking or not."""
    return [o for o in iter_outcomes(gx_result, blocking) if not o["success"]]


def format_example(example: dict[str, Any]) -> str:
    """``718072|speed (position 5): missing_share=0.51`` from one GX unexpected-index record."""
    values = ", ".join(f"{k}={'null' if v is None else _fmt(v)}" for k, v in example.items() if k not in INDEX_COLUMNS)
    head = f"{example.get(ITEM)} (position {example.get(POSITION)})"
    return f"{head}: {values}" if values else head


def describe_outcome(o: dict[str, Any], max_examples: int) -> str:
    """One line: suite, expectation type and column, what was seen, a few offending rows."""
    text = f"{o['suite']}: {o['type']} on {o['column']} ({o['description']})"
    if o["error"]:
        return f"{text}: raised {o['error']}"
    if o["unexpected_count"] is not None:
        text += f": {o['unexpected_count']} of {o['element_count']} rows unexpected"
        if o.get("mostly") is not None and o["element_count"]:
            # A share limit (GX's mostly = 1 - limit, maybe less a rounding margin): name the
            # observed share and the limit.
            share = o["unexpected_count"] / o["element_count"]
            text += f" (share {share:.3g}, limit {round(1 - o['mostly'], 6):.3g})"
    else:
        text += f": observed {_fmt(o['observed'])}"
    if o["examples"]:
        text += "; e.g. " + "; ".join(format_example(e) for e in o["examples"][:max_examples])
    return text


def render_message(
    success: bool,
    failures: list[dict[str, Any]],
    counts: dict[str, int | float],
    zero_node_ids: list[str],
    max_examples: int,
) -> str:
    """The stage's one-paragraph verdict: every blocking failure with examples, then notes."""
    blocking = [f for f in failures if f["blocking"]]
    if success:
        lines = [f"validation passed: {counts['evaluated']} expectations, none blocking failed"]
    else:
        lines = [f"validation failed: {len(blocking)} blocking expectation(s) failed"]
        lines += [f"- {describe_outcome(f, max_examples)}" for f in blocking]
    if counts["gaps"]:
        lines.append(f"note: {counts['gaps']} irregular step(s) (gaps) in the timestamps")
    if zero_node_ids:
        shown = ", ".join(zero_node_ids[:max_examples])
        more = f" and {len(zero_node_ids) - max_examples} more" if len(zero_node_ids) > max_examples else ""
        lines.append(f"note: {len(zero_node_ids)} node(s) are zero at every step: {shown}{more}")
    return "\n".join(lines)


def render_summary(
    *,
    dataset_name: str,
    success: bool,
    message: str,
    series: SeriesData,
    adj_shape: tuple[int, ...],
    gx_result: dict[str, Any],
    blocking: set[str],
    gaps: dict[str, Any],
    zero_node_ids: list[str],
    counts: dict[str, int | float],
) -> str:
    """``summary.md``: the whole result, readable offline (no Data Docs: they need CDNs)."""
    T, N, C = series.values.shape
    out = [
        f"# Data validation: {dataset_name} — {'PASSED' if success else 'FAILED'}",
        "",
        f"Series: {T} steps x {N} nodes x {C} channels ({', '.join(series.channels)}), kind {series.kind}, "
        f"null value {series.null_value}, {series.timestamps.min()} to {series.timestamps.max()}. "
        f"Graph: {' x '.join(map(str, adj_shape))}.",
        "",
        f"Great Expectations checkpoint `{gx_result['checkpoint']}` (ephemeral context); the raw result is "
        "`gx_result.json`. Data Docs are not built: they need CDNs.",
        "",
        "```",
        message,
        "```",
        "",
        "## Expectations",
        "",
        "| suite | blocking | expectation | column | result | observed | unexpected | examples |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for o in iter_outcomes(gx_result, blocking):
        observed = o["error"] if o["error"] else _fmt(o["observed"])
        unexpected = "" if o["unexpected_count"] is None else f"{o['unexpected_count']} / {o['element_count']}"
        examples = "<br>".join(format_example(e) for e in o["examples"])
        cells = [
            o["suite"],
            "yes" if o["blocking"] else "no",
            f"{o['type']}<br>{o['description']}",
            o["column"],
            "pass" if o["success"] else "**FAIL**",
            observed,
            unexpected,
            examples,
        ]
        out.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    out += ["", "## Gaps", ""]
    step = gaps["expected_step_seconds"]
    out.append(
        f"Expected step: {'unknown' if step is None else f'{step:g} s'} ({gaps['step_source']}). "
        f"Irregular steps: {gaps['count']}."
    )
    for g in gaps["first"]:
        out.append(f"- position {g['position']}, {g['timestamp']}: {_fmt(g['step_seconds'])} s after the previous step")
    out += ["", "## Zero nodes", ""]
    if not data_kind(series.kind).checks_zero_nodes:
        out.append(data_kind(series.kind).zero_nodes_note)
    else:
        out.append(f"{len(zero_node_ids)} node(s) are zero at every step.")
        if zero_node_ids:
            out.append("")
            out.append(", ".join(zero_node_ids))
    out += ["", "## Counts", ""]
    out += [f"- {k}: {_fmt(v)}" for k, v in counts.items()]
    return "\n".join(out) + "\n"


def _columns(kwargs: dict[str, Any]) -> str:
    if "column" in kwargs:
        return str(kwargs["column"])
    if "column_A" in kwargs:
        return f"{kwargs['column_A']} = {kwargs['column_B']}"
    if "column_list" in kwargs:
        return "+".join(map(str, kwargs["column_list"]))
    return "(table)"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else str(value)


def _cell(value: Any) -> str:
    # Node-channel items contain '|', which would split a Markdown table cell.
    return str(value).replace("|", "\\|").replace("\n", " ")
