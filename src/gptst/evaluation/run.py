"""The evaluation of every baseline x variant on the test split (the `evaluate` stage's library).

Reads each finetune item's metrics.json (``reports``) and predictions.npz (``models``), one item at
a time, and writes under ``out`` the comparison table (comparison.csv long, comparison.md wide),
under ``out/evaluate`` the DVC metrics (average metrics, paired bootstrap of gptst against plain)
and plots data (MAE per horizon step, hour of day, sensor), and under ``out/figures`` the PNGs.
Every input is read and checked before the first write, so bad input leaves the previous outputs
untouched. Items without results are shown as missing, not an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from gptst.data.series import SeriesData
from gptst.data.windows import make_splits
from gptst.errors import InputError
from gptst.evaluation.bootstrap import (
    BootstrapResult,
    bootstrap_markdown,
    paired_bootstrap,
)
from gptst.evaluation.breakdown import (
    SENSOR_COLUMNS,
    TIME_OF_DAY_COLUMNS,
    ErrorSums,
    error_sums,
    mae_by_sensor,
    mae_by_time_of_day,
)
from gptst.evaluation.comparison import (
    comparison_frame,
    comparison_markdown,
    evaluation_metrics,
    load_metrics_docs,
    reported_horizons,
)
from gptst.evaluation.figures import (
    ForecastView,
    forecast_trace,
    forecast_view,
    plot_forecasts,
    plot_horizon_mae,
    plot_mae_by_time_of_day,
)
from gptst.evaluation.predictions import Predictions, read_predictions
from gptst.evaluation.reference import REFERENCE_VARIANT, reference_metrics
from gptst.io import atomic_path, write_json, write_text
from gptst.params import Params

PREDICTIONS_FILE = "predictions.npz"


def _checked(path: Path, series: SeriesData, t_out: int, starts: np.ndarray | None) -> Predictions:
    pred = read_predictions(path)
    if pred.node_ids != list(series.node_ids):
        raise InputError(path, "node_ids", "differ from the series' node ids: forecasts of another dataset?")
    if pred.t_out != t_out:
        raise InputError(path, "pred", f"forecasts {pred.t_out} steps but windows.t_out is {t_out}")
    if starts is not None and not np.array_equal(pred.starts, starts):
        raise InputError(
            path, "starts", "other test windows than this params' test split (dataset.split, windows): a stale result?"
        )
    if len(pred.starts) == 0:
        raise InputError(path, "starts", "no test window")
    first, last = int(pred.starts.min()), int(pred.target_steps().max())
    if first < 0 or last >= len(series.values):
        raise InputError(
            path, "starts", f"windows span steps {first}..{last}, outside the series' {len(series.values)}"
        )
    return pred


def _csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


@dataclass
class Evaluation:
    """What :func:`evaluate` computed and wrote."""

    frame: pd.DataFrame
    markdown: str
    horizon_mae: pd.DataFrame
    by_hour: pd.DataFrame
    by_sensor: pd.DataFrame
    bootstraps: dict[str, BootstrapResult]
    references: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # name: horizon table
    figures: list[Path] = field(default_factory=list)
    absent: list[Path] = field(default_factory=list)
    results: int = 0

    def mlflow_metrics(self) -> dict[str, float]:
        """``<baseline>_<variant>_test_<metric>_avg`` and ``<baseline>_gptst_vs_plain_<stat>``, finite only."""
        models = self.frame[(self.frame["horizon"] == "avg") & (self.frame["variant"] != REFERENCE_VARIANT)]
        metrics = {
            f"{r.baseline}_{r.variant}_test_{m}_avg": float(getattr(r, m))
            for r in models.itertuples(index=False)
            for m in ("mae", "rmse", "mape")
        }
        for baseline, result in self.bootstraps.items():
            metrics.update(
                {
                    f"{baseline}_gptst_vs_plain_{k}": float(getattr(result, k))
                    for k in ("diff", "diff_low", "diff_high", "rel_diff", "share_better")
                }
            )
        return {k: v for k, v in metrics.items() if np.isfinite(v)}


@dataclass
class _Breakdowns:
    views: dict[str, tuple[ForecastView, dict[str, np.ndarray]]] = field(default_factory=dict)
    bootstraps: dict[str, BootstrapResult] = field(default_factory=dict)
    by_hour: list[pd.DataFrame] = field(default_factory=list)
    by_sensor: list[pd.DataFrame] = field(default_factory=list)


def _breakdowns(
    docs: list[dict], series: SeriesData, models: Path, t_out: int, seed: int, test_starts: np.ndarray
) -> _Breakdowns:
    """Per baseline, one variant's forecasts in memory at a time: error sums, traces, bootstrap."""
    out = _Breakdowns()
    for baseline in dict.fromkeys(d["baseline"] for d in docs):
        sums: dict[str, ErrorSums] = {}
        view: ForecastView | None = None
        traces: dict[str, np.ndarray] = {}
        for variant in [d["variant"] for d in docs if d["baseline"] == baseline]:
            pred = _checked(models / baseline / variant / PREDICTIONS_FILE, series, t_out, test_starts)
            sums[variant] = error_sums(pred, series)
            if view is None:
                view = forecast_view(pred, series)
            traces[variant] = forecast_trace(view, pred)
            del pred
        assert view is not None  # every baseline in docs has at least one variant
        out.views[baseline] = (view, traces)
        if "plain" in sums and "gptst" in sums:
            out.bootstraps[baseline] = paired_bootstrap(sums["gptst"].windows, sums["plain"].windows, seed=seed)
            out.by_hour += [mae_by_time_of_day(s, baseline, v) for v, s in sums.items()]
            out.by_sensor += [mae_by_sensor(s, baseline, v) for v, s in sums.items()]
    return out


def evaluate(params: Params, series: SeriesData, *, models: Path, reports: Path, out: Path) -> Evaluation:
    """Compare every finetune result of ``params.finetune.baselines`` and write the outputs under ``out``."""
    name, t_out = params.dataset.name, params.windows.t_out
    docs, absent = load_metrics_docs(
        reports, dataset=name, baselines=params.finetune.baselines, t_out=t_out, allow_missing=True
    )
    if not docs:
        raise InputError(reports, None, f"no finetune results for baselines {params.finetune.baselines}")
    splits = make_splits(len(series.values), params.dataset.split, params.windows)
    references = reference_metrics(
        series,
        splits.test.starts,
        t_in=params.windows.t_in,
        t_out=t_out,
        train_steps=splits.steps.train,
        mape_min=params.metrics.mape_threshold(series.kind),
    )
    reference_docs = [{"baseline": n, "variant": REFERENCE_VARIANT, "horizons": h} for n, h in references.items()]
    docs_with_references = docs + reference_docs
    frame = comparison_frame(docs_with_references, reported_horizons(params.metrics.horizons, t_out))
    horizon_mae = pd.DataFrame(
        [
            (d["baseline"], d["variant"], k, d["horizons"][str(k)]["mae"])
            for d in docs_with_references
            for k in range(1, t_out + 1)
        ],
        columns=["baseline", "variant", "step", "mae"],
    ).astype({"mae": "float64"})
    parts = _breakdowns(docs, series, models, t_out, params.seed, splits.test.starts)
    markdown = comparison_markdown(frame, title=f"{name}: test metrics per baseline and variant")
    if parts.bootstraps:
        markdown += "\n" + bootstrap_markdown(parts.bootstraps)
    # Without a baseline that has both plain and gptst the plots data is a header only: still an output.
    result = Evaluation(
        frame=frame,
        markdown=markdown,
        horizon_mae=horizon_mae,
        bootstraps=parts.bootstraps,
        by_hour=pd.concat(parts.by_hour) if parts.by_hour else pd.DataFrame(columns=list(TIME_OF_DAY_COLUMNS)),
        by_sensor=pd.concat(parts.by_sensor) if parts.by_sensor else pd.DataFrame(columns=list(SENSOR_COLUMNS)),
        references=references,
        absent=list(absent),
        results=len(docs),
    )
    _write_tables(result, out)
    result.figures = _write_figures(result, parts.views, out / "figures", name)
    return result


def _write_tables(result: Evaluation, out: Path) -> None:
    evaluate_dir = out / "evaluate"
    _csv(result.frame, out / "comparison.csv")
    write_text(out / "comparison.md", result.markdown)
    write_json(
        evaluate_dir / "metrics.json",
        evaluation_metrics(result.frame, {b: r.as_dict() for b, r in result.bootstraps.items()}),
    )
    _csv(result.horizon_mae, evaluate_dir / "horizon_mae.csv")
    _csv(result.by_hour, evaluate_dir / "mae_by_time_of_day.csv")
    _csv(result.by_sensor, evaluate_dir / "mae_by_sensor.csv")


def _write_figures(
    result: Evaluation, views: dict[str, tuple[ForecastView, dict[str, np.ndarray]]], folder: Path, name: str
) -> list[Path]:
    # One DVC output folder: a dropped baseline's figure goes with it.
    figures = [
        plot_horizon_mae(result.horizon_mae, folder / "horizon_mae.png", title=f"{name}: test MAE per horizon step"),
        plot_mae_by_time_of_day(
            result.by_hour,
            folder / "mae_by_time_of_day.png",
            title=f"{name}: test MAE by hour of day (all horizon steps)",
        ),
    ]
    for baseline, (view, traces) in views.items():
        figures.append(
            plot_forecasts(
                view,
                traces,
                folder / f"forecast_{baseline}.png",
                title=f"{name}, {baseline}: test forecasts over one day",
            )
        )
    return figures
