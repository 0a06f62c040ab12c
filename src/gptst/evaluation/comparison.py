"""The comparison table of every baseline x variant: read the finetune metrics, long and wide forms.

Each finetune item writes the contract's ``metrics.json`` (see
:func:`gptst.metrics.write_metrics_json`) under ``<reports>/<baseline>/<variant>/``.
The long form (:func:`comparison_frame`) is the CSV the pipeline keeps; the wide form
(:func:`comparison_markdown`) is what ``make run`` prints.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from gptst.errors import InputError
from gptst.evaluation.reference import PERSISTENCE, REFERENCE_VARIANT
from gptst.layout import VARIANTS
from gptst.metrics import AVG_KEY, METRIC_NAMES

# Model rows are (baseline, variant); reference forecasts are rows (persistence | historical_average, "reference").
ROW_VARIANTS = (*VARIANTS, REFERENCE_VARIANT)
VS_PERSISTENCE = "mae_vs_persistence"
COMPARISON_COLUMNS = ("baseline", "variant", "horizon", *METRIC_NAMES, VS_PERSISTENCE)
METRICS_FILE = "metrics.json"
MISSING = "—"
# The variants gptst's MAE is compared against in the wide table, with their column titles.
REFERENCES = {"plain": "vs plain", "calendar": "vs calendar", "gptst_random": "vs gptst_random"}


def metrics_path(reports: str | Path, baseline: str, variant: str) -> Path:
    """Where the finetune item (``baseline``, ``variant``) writes its test metrics."""
    return Path(reports) / baseline / variant / METRICS_FILE


def reported_horizons(horizons: Iterable[int], t_out: int) -> list[int]:
    """The report's horizons that exist at this output length (``[3, 6, 12]`` at T_out 12, ``[3, 6]`` at 6)."""
    return sorted({int(h) for h in horizons if 1 <= int(h) <= t_out})


def read_metrics_doc(path: str | Path, *, dataset: str, baseline: str, variant: str, t_out: int) -> dict[str, Any]:
    """Read and check one item's ``metrics.json``.

    It must be the test metrics of (``dataset``, ``baseline``, ``variant``) and hold every step
    ``"1".."t_out"`` and ``"avg"``, each with mae, rmse and mape (a number or null). Anything else
    is an :class:`InputError` naming the file and the field.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file", f"missing: run the finetune stage of {baseline} / {variant}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(path, None, f"not valid JSON: {err}") from None
    if not isinstance(doc, dict):
        raise InputError(path, None, f"expected a JSON object, got {type(doc).__name__}")
    expected = {"dataset": dataset, "baseline": baseline, "variant": variant, "split": "test"}
    for field, value in expected.items():
        if field not in doc:
            raise InputError(path, field, "missing")
        if doc[field] != value:
            raise InputError(path, field, f"is {doc[field]!r}, expected {value!r} (the item this file belongs to)")
    horizons = doc.get("horizons")
    if not isinstance(horizons, dict):
        raise InputError(path, "horizons", "missing or not an object of per-step metrics")
    for key in [str(k) for k in range(1, t_out + 1)] + [AVG_KEY]:
        row = horizons.get(key)
        if not isinstance(row, dict):
            raise InputError(path, f"horizons.{key}", f"missing: every step 1..{t_out} and {AVG_KEY!r} are required")
        for metric in METRIC_NAMES:
            value = row.get(metric, "absent")
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise InputError(path, f"horizons.{key}.{metric}", f"{value!r} is not a number or null")
    return doc


def load_metrics_docs(
    reports: str | Path,
    *,
    dataset: str,
    baselines: Sequence[str],
    t_out: int,
    variants: Sequence[str] = VARIANTS,
    allow_missing: bool = False,
) -> tuple[list[dict[str, Any]], list[Path]]:
    """Read every (baseline, variant) item's metrics under ``reports``, baselines then variants in order.

    Returns the documents and the paths of absent items (always empty unless ``allow_missing``;
    without it an absent file is an :class:`InputError`). A present but malformed file is always one.
    """
    docs: list[dict[str, Any]] = []
    absent: list[Path] = []
    for baseline in baselines:
        for variant in variants:
            path = metrics_path(reports, baseline, variant)
            if allow_missing and not path.exists():
                absent.append(path)
                continue
            docs.append(read_metrics_doc(path, dataset=dataset, baseline=baseline, variant=variant, t_out=t_out))
    return docs, absent


def _number(value: Any) -> float:
    return float("nan") if value is None else float(value)


def comparison_frame(docs: Sequence[Mapping[str, Any]], horizons: Sequence[int]) -> pd.DataFrame:
    """Long form: one row per baseline x variant x horizon (``"3"``, ..., then ``"avg"``).

    Columns ``baseline, variant, horizon, mae, rmse, mape, mae_vs_persistence`` (MAPE in percent,
    NaN for null; the last is the relative change of MAE against persistence at that horizon, NaN
    without a persistence row). Reference forecasts are docs with variant ``"reference"``.
    Baselines keep their order in ``docs`` (references after the models), variants follow
    :data:`VARIANTS`.
    """
    keys = [str(int(h)) for h in horizons] + [AVG_KEY]
    unknown = sorted({doc["variant"] for doc in docs} - set(ROW_VARIANTS))
    if unknown:
        raise ValueError(f"unknown variants {unknown}; variants are {list(VARIANTS)} and {REFERENCE_VARIANT!r}")
    docs = [d for d in docs if d["variant"] != REFERENCE_VARIANT] + [
        d for d in docs if d["variant"] == REFERENCE_VARIANT
    ]
    baseline_order = list(dict.fromkeys(doc["baseline"] for doc in docs))
    ordered = sorted(docs, key=lambda d: (baseline_order.index(d["baseline"]), ROW_VARIANTS.index(d["variant"])))
    rows = [
        {
            "baseline": doc["baseline"],
            "variant": doc["variant"],
            "horizon": key,
            **{m: _number(doc["horizons"][key][m]) for m in METRIC_NAMES},
        }
        for doc in ordered
        for key in keys
    ]
    frame = pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS[:-1]))
    persistence = frame[(frame["baseline"] == PERSISTENCE) & (frame["variant"] == REFERENCE_VARIANT)]
    reference_mae = dict(zip(persistence["horizon"], persistence["mae"].astype("float64"), strict=True))
    frame[VS_PERSISTENCE] = [
        relative_change(float(mae), reference_mae.get(h, float("nan")))
        for mae, h in zip(frame["mae"], frame["horizon"], strict=True)
    ]
    return frame.astype({m: "float64" for m in (*METRIC_NAMES, VS_PERSISTENCE)})


def relative_change(value: float, reference: float) -> float:
    """``100 * (value - reference) / reference``: negative when ``value`` is lower (better for errors)."""
    if not (math.isfinite(value) and math.isfinite(reference)) or reference == 0:
        return float("nan")
    return 100.0 * (value - reference) / reference


def _fmt(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else MISSING


def _fmt_change(value: float) -> str:
    return f"{value:+.2f}%" if math.isfinite(value) else MISSING


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], right_from: int = 1) -> list[str]:
    """Lines of a markdown table padded to read as plain text too; columns from ``right_from`` on
    (the numbers) are right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        padded = [
            c.rjust(w) if i >= right_from else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = ["-" * (w + 2) if i < right_from else "-" * (w + 1) + ":" for i, w in enumerate(widths)]
    return [line(header), "|" + "|".join(rule) + "|", *(line(r) for r in rows)]


def comparison_markdown(frame: pd.DataFrame, title: str | None = None) -> str:
    """Wide form of :func:`comparison_frame`: one table per horizon (then the average), one row per baseline.

    Each variant's cell is ``MAE/RMSE/MAPE`` (MAPE in percent); the ``vs ...`` columns give the relative change
    of gptst's MAE against plain, calendar and gptst_random in percent (negative: gptst is better).
    Below each, the reference forecasts' cells; at the end, every variant's relative change of
    average MAE against persistence. A variant without results shows as ``—``, and so do the
    changes that would need it.
    """
    models = frame[frame["variant"] != REFERENCE_VARIANT]
    references = list(dict.fromkeys(frame.loc[frame["variant"] == REFERENCE_VARIANT, "baseline"]))
    baselines = list(dict.fromkeys(models["baseline"]))
    horizons = list(dict.fromkeys(frame["horizon"]))
    by_key = {(r.baseline, r.variant, r.horizon): r for r in frame.itertuples(index=False)}

    def cell(baseline: str, variant: str, horizon: str) -> str:
        r = by_key.get((baseline, variant, horizon))
        return MISSING if r is None else f"{_fmt(r.mae)}/{_fmt(r.rmse)}/{_fmt(r.mape)}"

    lines = [f"## {title}", ""] if title else []
    lines.append(
        "Cells: MAE/RMSE/MAPE (%) on the test split. "
        "vs X: relative change of gptst's MAE against variant X (negative = gptst better); "
        f"{MISSING}: no result."
    )
    for horizon in horizons:
        heading = "Average over all horizon steps" if horizon == AVG_KEY else f"Horizon {horizon}"
        header = ["baseline", *VARIANTS, *REFERENCES.values()]
        rows = []
        for baseline in baselines:
            cells = [baseline, *(cell(baseline, variant, horizon) for variant in VARIANTS)]
            gptst = by_key.get((baseline, "gptst", horizon))
            for reference in REFERENCES:
                other = by_key.get((baseline, reference, horizon))
                change = float("nan") if gptst is None or other is None else relative_change(gptst.mae, other.mae)
                cells.append(_fmt_change(change))
            rows.append(cells)
        lines += ["", f"### {heading}", ""]
        if rows:
            lines += [*markdown_table(header, rows), ""]
        if references:
            lines += markdown_table(
                ["reference forecast", "MAE/RMSE/MAPE"], [[r, cell(r, REFERENCE_VARIANT, horizon)] for r in references]
            )
    if baselines and PERSISTENCE in references:
        lines += [
            "",
            "### Against persistence",
            "",
            "Relative change of each variant's average MAE against persistence (negative = better than "
            "repeating each sensor's last reading).",
            "",
            *markdown_table(
                ["baseline", *VARIANTS],
                [
                    [
                        b,
                        *(
                            _fmt_change(by_key[(b, v, AVG_KEY)].mae_vs_persistence)
                            if (b, v, AVG_KEY) in by_key
                            else MISSING
                            for v in VARIANTS
                        ),
                    ]
                    for b in baselines
                ],
            ),
        ]
    return "\n".join(lines) + "\n"


def _finite_or_none(value: float) -> float | None:
    # Strict JSON has no NaN (DVC would not read it): undefined numbers become null.
    return float(value) if math.isfinite(value) else None


def evaluation_metrics(
    frame: pd.DataFrame, bootstraps: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """DVC metrics of the evaluate stage: per baseline, each variant's average mae/rmse/mape, and
    (where given) the bootstrap comparison of gptst against plain under ``gptst_vs_plain``."""
    metrics: dict[str, dict[str, Any]] = {}
    for row in frame[frame["horizon"] == AVG_KEY].itertuples(index=False):
        metrics.setdefault(row.baseline, {})[row.variant] = {m: _finite_or_none(getattr(row, m)) for m in METRIC_NAMES}
    for baseline, result in (bootstraps or {}).items():
        metrics.setdefault(baseline, {})["gptst_vs_plain"] = {
            k: _finite_or_none(v) if isinstance(v, float) else v for k, v in result.items()
        }
    return metrics
