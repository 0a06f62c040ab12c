"""DVC stage `evaluate`: every baseline x variant compared on the test split.

Reads each finetune item's metrics.json (--reports) and predictions.npz (--models), one item
at a time, and writes under --out the comparison table (comparison.csv long, comparison.md wide,
printed), under --out/evaluate the DVC metrics (average metrics, paired bootstrap of gptst
against plain) and plots data (MAE per horizon step, hour of day, sensor), under --out/figures the
PNGs, and logs one MLflow run. Every input is read and checked before the first write, so bad input leaves the
previous outputs untouched. Items without results are shown as missing, not an error.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from gptst.cli import run_stage
from gptst.data.series import SeriesData, load_series, read_series_metadata
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
from gptst.io import atomic_path, write_json, write_text
from gptst.params import load_params
from gptst.tracking import log_stage_run

PREDICTIONS_FILE = "predictions.npz"


def _checked(path: Path, series: SeriesData, t_out: int, starts: np.ndarray | None) -> Predictions:
    pred = read_predictions(path)
    if pred.node_ids != list(series.node_ids):
        raise InputError(path, "node_ids", "differ from the series' node ids: forecasts of another dataset?")
    if pred.t_out != t_out:
        raise InputError(path, "pred", f"forecasts {pred.t_out} steps but windows.t_out is {t_out}")
    if starts is not None and not np.array_equal(pred.starts, starts):
        raise InputError(path, "starts", "other test windows than this baseline's other variants")
    if len(pred.starts) == 0:
        raise InputError(path, "starts", "no test window")
    first, last = int(pred.starts.min()), int(pred.target_steps().max())
    if first < 0 or last >= len(series.values):
        raise InputError(path, "starts", f"windows span steps {first}..{last}, outside the series' {len(series.values)}")
    return pred


def _csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--series", required=True, type=Path)
    parser.add_argument("--models", required=True, type=Path, help="finetune models folder (<baseline>/<variant>/)")
    parser.add_argument("--reports", required=True, type=Path, help="finetune reports folder (<baseline>/<variant>/)")
    parser.add_argument("--out", required=True, type=Path, help="the dataset's reports folder")
    args = parser.parse_args(argv)

    def body() -> None:
        params = load_params(args.params)
        series = load_series(args.series)
        name, t_out = params.dataset.name, params.windows.t_out
        docs, absent = load_metrics_docs(
            args.reports, dataset=name, baselines=params.finetune.baselines, t_out=t_out, allow_missing=True
        )
        if not docs:
            raise InputError(args.reports, None, f"no finetune results for baselines {params.finetune.baselines}")
        frame = comparison_frame(docs, reported_horizons(params.metrics.horizons, t_out))
        horizon_mae = pd.DataFrame(
            [(d["baseline"], d["variant"], k, d["horizons"][str(k)]["mae"]) for d in docs for k in range(1, t_out + 1)],
            columns=["baseline", "variant", "step", "mae"],
        ).astype({"mae": "float64"})
        views: dict[str, tuple[ForecastView, dict[str, np.ndarray]]] = {}
        bootstraps: dict[str, BootstrapResult] = {}
        by_hour, by_sensor = [], []
        for baseline in dict.fromkeys(d["baseline"] for d in docs):
            sums: dict[str, ErrorSums] = {}
            view, traces = None, {}
            for variant in [d["variant"] for d in docs if d["baseline"] == baseline]:
                pred = _checked(args.models / baseline / variant / PREDICTIONS_FILE, series, t_out,
                                None if view is None else view.starts)
                sums[variant] = error_sums(pred, series)
                if view is None:
                    view = forecast_view(pred, series)
                traces[variant] = forecast_trace(view, pred)
                del pred  # one item's forecasts in memory at a time
            views[baseline] = (view, traces)
            if "plain" in sums and "gptst" in sums:
                bootstraps[baseline] = paired_bootstrap(sums["gptst"].windows, sums["plain"].windows, seed=params.seed)
                by_hour += [mae_by_time_of_day(s, baseline, v) for v, s in sums.items()]
                by_sensor += [mae_by_sensor(s, baseline, v) for v, s in sums.items()]

        markdown = comparison_markdown(frame, title=f"{name}: test metrics per baseline and variant")
        if bootstraps:
            markdown += "\n" + bootstrap_markdown(bootstraps)
        # Without a baseline that has both plain and gptst the plots data is a header only: still an output.
        hour_frame = pd.concat(by_hour) if by_hour else pd.DataFrame(columns=list(TIME_OF_DAY_COLUMNS))
        sensor_frame = pd.concat(by_sensor) if by_sensor else pd.DataFrame(columns=list(SENSOR_COLUMNS))
        evaluate_dir = args.out / "evaluate"
        _csv(frame, args.out / "comparison.csv")
        write_text(args.out / "comparison.md", markdown)
        write_json(evaluate_dir / "metrics.json",
                   evaluation_metrics(frame, {b: r.as_dict() for b, r in bootstraps.items()}))
        _csv(horizon_mae, evaluate_dir / "horizon_mae.csv")
        _csv(hour_frame, evaluate_dir / "mae_by_time_of_day.csv")
        _csv(sensor_frame, evaluate_dir / "mae_by_sensor.csv")
        figures_dir = args.out / "figures"  # one DVC output folder: a dropped baseline's figure goes with it
        figures = [
            plot_horizon_mae(horizon_mae, figures_dir / "horizon_mae.png", title=f"{name}: test MAE per horizon step"),
            plot_mae_by_time_of_day(hour_frame, figures_dir / "mae_by_time_of_day.png",
                                    title=f"{name}: test MAE by hour of day (all horizon steps)"),
        ]
        for baseline, (view, traces) in views.items():
            figures.append(plot_forecasts(view, traces, figures_dir / f"forecast_{baseline}.png",
                                          title=f"{name}, {baseline}: test forecasts over one day"))

        mlflow_metrics = {
            f"{r.baseline}_{r.variant}_test_{m}_avg": getattr(r, m)
            for r in frame[frame["horizon"] == "avg"].itertuples(index=False) for m in ("mae", "rmse", "mape")
        }
        for baseline, result in bootstraps.items():
            mlflow_metrics.update({f"{baseline}_gptst_vs_plain_{k}": getattr(result, k)
                                   for k in ("diff", "diff_low", "diff_high", "rel_diff", "share_better")})
        run_id = log_stage_run(
            "evaluate", params, dataset_sha256=read_series_metadata(args.series).get("source_sha256", ""),
            sections=("metrics",), metrics={k: v for k, v in mlflow_metrics.items() if np.isfinite(v)},
            artifacts=[args.out / "comparison.csv", args.out / "comparison.md", *figures], artifact_path="evaluate",
        )
        print(markdown)
        for path in absent:
            print(f"evaluate: no result at {path}: shown as —")
        print(f"evaluate: {len(docs)} results compared; outputs in {args.out} (MLflow run {run_id})")

    return run_stage(body)


if __name__ == "__main__":
    raise SystemExit(main())
