"""The evaluate stage and its library: comparison table, paired bootstrap, breakdowns, figures.

Forecasts are built from the real METR-LA series as truth plus known errors, so every expected
MAE is known in advance.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import stages.evaluate as evaluate_stage
from gptst.data.series import SeriesData, write_series
from gptst.data.windows import make_splits
from gptst.errors import InputError
from gptst.evaluation.bootstrap import WindowErrors, paired_bootstrap
from gptst.evaluation.breakdown import PEAK_HOURS, error_sums, mae_by_sensor, mae_by_time_of_day
from gptst.evaluation.comparison import (
    COMPARISON_COLUMNS,
    comparison_frame,
    comparison_markdown,
    load_metrics_docs,
    metrics_path,
    read_metrics_doc,
)
from gptst.evaluation.figures import forecast_view
from gptst.evaluation.predictions import Predictions, write_predictions
from gptst.metrics import horizon_metrics, write_metrics_json
from gptst.params import SplitRatios, WindowParams

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
T_OUT = 12


# ------------------------------------------------------------------------------ comparison table
def _table(mae_avg: float, t_out: int = T_OUT) -> dict[str, dict[str, float]]:
    """A metrics table whose step k has MAE mae_avg + k / 100, RMSE twice the MAE, MAPE ten times."""
    table = {
        str(k): {"mae": mae_avg + k / 100, "rmse": 2 * (mae_avg + k / 100), "mape": 10 * (mae_avg + k / 100)}
        for k in range(1, t_out + 1)
    }
    table["avg"] = {"mae": mae_avg, "rmse": 2 * mae_avg, "mape": 10 * mae_avg}
    return table


def _write_docs(reports: Path, maes: dict[tuple[str, str], float], dataset: str = "metr-la-week") -> None:
    for (baseline, variant), mae in maes.items():
        write_metrics_json(
            metrics_path(reports, baseline, variant),
            dataset=dataset,
            baseline=baseline,
            variant=variant,
            seed=0,
            split="test",
            horizons=_table(mae),
        )


FULL = {
    ("gwn", "plain"): 3.0,
    ("gwn", "calendar"): 2.7,
    ("gwn", "gptst"): 2.7,
    ("gwn", "gptst_random"): 2.0,
    ("stgcn", "plain"): 4.0,
    ("stgcn", "calendar"): 3.9,
    ("stgcn", "gptst"): 3.6,
    ("stgcn", "gptst_random"): 3.8,
}


def test_comparison_frame_is_long_with_string_horizons_exact_values_and_fixed_order(tmp_path):
    """One row per baseline x variant x horizon, baselines in the given order, then VARIANTS, then
    the horizons and avg; the CSV round trip keeps the exact values and the horizons as strings."""
    _write_docs(tmp_path, FULL)
    docs, absent = load_metrics_docs(tmp_path, dataset="metr-la-week", baselines=["stgcn", "gwn"], t_out=T_OUT)
    frame = comparison_frame(docs, [3, 6, 12])

    assert absent == []
    assert tuple(frame.columns) == COMPARISON_COLUMNS
    assert len(frame) == 2 * 4 * 4
    assert frame["baseline"].tolist()[:16] == ["stgcn"] * 16
    assert frame["variant"].tolist()[:8] == ["plain"] * 4 + ["calendar"] * 4
    assert frame["horizon"].tolist()[:4] == ["3", "6", "12", "avg"]
    frame.to_csv(tmp_path / "comparison.csv", index=False)
    back = pd.read_csv(tmp_path / "comparison.csv", dtype={"horizon": str})
    row = back[(back.baseline == "gwn") & (back.variant == "gptst") & (back.horizon == "6")].iloc[0]
    assert (row.mae, row.rmse, row.mape) == (2.7 + 0.06, 2 * (2.7 + 0.06), 10 * (2.7 + 0.06))
    avg = back[(back.baseline == "stgcn") & (back.variant == "plain") & (back.horizon == "avg")].iloc[0]
    assert (avg.mae, avg.rmse, avg.mape) == (4.0, 8.0, 40.0)


def test_markdown_has_one_row_per_baseline_and_signed_relative_changes_of_gptst_mae(tmp_path):
    """gwn: gptst 2.7 against plain 3.0 is -10%, against calendar 2.7 is 0%, against gptst_random 2.0
    is +35%; stgcn at horizon 3: 3.63 against plain 4.03 is -9.93%."""
    _write_docs(tmp_path, FULL)
    docs, _ = load_metrics_docs(tmp_path, dataset="metr-la-week", baselines=["gwn", "stgcn"], t_out=T_OUT)
    markdown = comparison_markdown(comparison_frame(docs, [3, 6, 12]), title="metr-la-week")

    average = markdown.split("### Average over all horizon steps")[1]
    gwn_row = next(line for line in average.splitlines() if line.startswith("| gwn"))
    cells = [c.strip() for c in gwn_row.strip("|").split("|")]
    assert cells == [
        "gwn",
        "3.00/6.00/30.00",
        "2.70/5.40/27.00",
        "2.70/5.40/27.00",
        "2.00/4.00/20.00",
        "-10.00%",
        "+0.00%",
        "+35.00%",
    ]
    horizon3 = markdown.split("### Horizon 3")[1].split("###")[0]
    stgcn_row = next(line for line in horizon3.splitlines() if line.startswith("| stgcn"))
    assert f"{100 * (3.63 - 4.03) / 4.03:+.2f}%" == "-9.93%"
    assert [c.strip() for c in stgcn_row.strip("|").split("|")][5] == "-9.93%"
    assert sum(line.startswith("| gwn") for line in markdown.splitlines()) == 4  # 3, 6, 12, avg


def test_missing_variants_show_a_dash_and_their_relative_changes_are_omitted(tmp_path):
    """A user who ran only plain and gptst for gwn, and only plain for stgcn, still gets a table."""
    _write_docs(tmp_path, {("gwn", "plain"): 3.0, ("gwn", "gptst"): 2.4, ("stgcn", "plain"): 4.0})
    docs, absent = load_metrics_docs(
        tmp_path, dataset="metr-la-week", baselines=["gwn", "stgcn"], t_out=T_OUT, allow_missing=True
    )
    markdown = comparison_markdown(comparison_frame(docs, [3]))

    assert len(absent) == 5 and metrics_path(tmp_path, "stgcn", "gptst") in absent
    average = markdown.split("### Average over all horizon steps")[1]
    gwn = [c.strip() for c in next(x for x in average.splitlines() if x.startswith("| gwn")).strip("|").split("|")]
    stgcn = [c.strip() for c in next(x for x in average.splitlines() if x.startswith("| stgcn")).strip("|").split("|")]
    assert gwn == ["gwn", "3.00/6.00/30.00", "—", "2.40/4.80/24.00", "—", "-20.00%", "—", "—"]
    assert stgcn == ["stgcn", "4.00/8.00/40.00", "—", "—", "—", "—", "—", "—"]


def test_the_loader_names_the_file_and_field_of_bad_metrics(tmp_path):
    """A missing file, a wrong variant field, a missing horizon and broken JSON are InputErrors."""
    _write_docs(tmp_path, {("gwn", "plain"): 3.0})
    path = metrics_path(tmp_path, "gwn", "plain")
    kwargs = {"dataset": "metr-la-week", "baseline": "gwn", "t_out": T_OUT}

    with pytest.raises(InputError, match=r"gwn/gptst/metrics.json: file: missing"):
        read_metrics_doc(metrics_path(tmp_path, "gwn", "gptst"), variant="gptst", **kwargs)
    with pytest.raises(InputError, match=r"gwn/plain/metrics.json: variant: is 'plain', expected 'gptst'"):
        read_metrics_doc(path, variant="gptst", **kwargs)
    doc = json.loads(path.read_text())
    del doc["horizons"]["6"]
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError, match=r"gwn/plain/metrics.json: horizons.6: missing"):
        read_metrics_doc(path, variant="plain", **kwargs)
    path.write_text("{not json")
    with pytest.raises(InputError, match=r"gwn/plain/metrics.json: not valid JSON"):
        read_metrics_doc(path, variant="plain", **kwargs)
    with pytest.raises(InputError, match=r"file: missing"):
        load_metrics_docs(tmp_path, dataset="metr-la-week", baselines=["stgcn"], t_out=T_OUT)


# ------------------------------------------------------------------------------------ bootstrap
def _window_errors(mae_per_window: np.ndarray, count: np.ndarray) -> WindowErrors:
    return WindowErrors(starts=np.arange(len(count), dtype=np.int64), abs_sum=mae_per_window * count, count=count)


def test_a_known_mae_difference_lies_inside_the_bootstrap_interval():
    """gptst's windows are plain's minus 0.3 plus zero-mean noise: the interval covers -0.3, excludes 0,
    and gptst is better in nearly every resample (6850 windows, as METR-LA's test split)."""
    rng = np.random.default_rng(1)
    count = rng.integers(150, 208, size=6850)
    plain = rng.gamma(4.0, 0.75, size=6850)
    noise = rng.normal(0.0, 0.5, size=6850)
    gptst = plain - 0.3 + (noise - np.average(noise, weights=count))  # pooled difference exactly -0.3
    result = paired_bootstrap(_window_errors(gptst, count), _window_errors(plain, count), seed=0)

    assert result.diff == pytest.approx(-0.3)
    assert result.diff_low < -0.3 < result.diff_high < 0
    assert result.rel_diff == pytest.approx(-30.0 / result.mae_reference)
    assert result.rel_diff_low < result.rel_diff < result.rel_diff_high < 0
    assert result.share_better > 0.99
    assert (result.n_windows, result.n_resamples, result.confidence) == (6850, 2000, 0.95)


def test_identical_variants_give_zero_difference_and_an_interval_containing_zero():
    """The same errors on both sides: point estimate 0, interval [0, 0], never better."""
    rng = np.random.default_rng(2)
    count = rng.integers(0, 50, size=300)
    errors = _window_errors(rng.gamma(2.0, 1.0, size=300), count)
    result = paired_bootstrap(errors, errors, n_resamples=500, seed=3)

    assert result.diff == 0.0 and result.rel_diff == 0.0
    assert result.diff_low <= 0.0 <= result.diff_high
    assert result.share_better == 0.0


def test_the_bootstrap_is_seeded_and_refuses_unpaired_windows():
    """The same seed gives the same interval; other windows (or another count of them) raise."""
    rng = np.random.default_rng(4)
    count = np.full(200, 10)
    a, b = _window_errors(rng.random(200), count), _window_errors(rng.random(200), count)
    assert paired_bootstrap(a, b, seed=7) == paired_bootstrap(a, b, seed=7)
    assert paired_bootstrap(a, b, seed=7).diff_low != paired_bootstrap(a, b, seed=8).diff_low

    shifted = dataclasses.replace(b, starts=b.starts + 1)
    with pytest.raises(ValueError, match="different test windows"):
        paired_bootstrap(a, shifted)
    shorter = WindowErrors(starts=b.starts[:-1], abs_sum=b.abs_sum[:-1], count=b.count[:-1])
    with pytest.raises(ValueError, match="different test windows"):
        paired_bootstrap(a, shorter)


# ----------------------------------------------------------------------------------- breakdowns
def _test_starts(series: SeriesData, every: int = 1, limit: int | None = None) -> np.ndarray:
    starts = make_splits(len(series.values), SplitRatios(), WindowParams()).test.starts
    return np.asarray(starts[::every][:limit])


def test_mae_by_time_of_day_follows_the_hour_of_each_forecast_step(week):
    """Errors of 0.1 x (hour + 1) at every forecast step give exactly that MAE per hour; all 207 sensors
    count at every step, and the morning and evening peaks are flagged."""
    starts = _test_starts(week, every=12)  # 32 windows, 15:25 on Tuesday to 23:00 on Wednesday
    steps = starts[:, None] + 12 + np.arange(T_OUT)
    hours = week.timestamps.hour.values[steps]
    signs = np.where(np.arange(207) % 2 == 0, 1.0, -1.0)[None, None, :, None]
    error = (0.1 * (hours + 1))[:, :, None, None] * signs
    pred = Predictions(week.values[steps] + error.astype(np.float32), starts, 12, week.node_ids)
    frame = mae_by_time_of_day(error_sums(pred, week), "gwn", "plain")

    assert list(frame.columns) == ["baseline", "variant", "hour", "peak", "mae", "cells"]
    assert frame["hour"].tolist() == sorted(set(hours.ravel()))
    np.testing.assert_allclose(frame["mae"], 0.1 * (frame["hour"] + 1), rtol=1e-4)
    expected_cells = pd.Series(hours.ravel()).value_counts().sort_index() * 207
    assert frame["cells"].tolist() == expected_cells.tolist()
    assert frame.loc[frame["peak"], "hour"].tolist() == [h for h in frame["hour"] if h in PEAK_HOURS]
    assert {7, 17} <= set(frame.loc[frame["peak"], "hour"]) and not frame.loc[frame["hour"] == 12, "peak"].any()


def test_mae_by_sensor_ignores_missing_readings(week):
    """The week has no missing reading, so some are blanked (set to the null value 0) with wild forecasts
    there: each sensor's MAE stays its own error 0.01 x (index + 1); a sensor missing throughout
    keeps its row with MAE NaN and no cells."""
    starts = _test_starts(week, limit=40)
    steps = starts[:, None] + 12 + np.arange(T_OUT)
    values = week.values.copy()
    values[:, 5] = 0.0  # sensor 5 never reports
    blanked = np.random.default_rng(0).random(values.shape) < 0.1
    values[blanked] = 0.0
    series = dataclasses.replace(week, values=values)
    error = (0.01 * (np.arange(207) + 1)).astype(np.float32)[None, None, :, None]
    pred = series.values[steps] + error
    pred[series.values[steps] == 0] = 1000.0
    sums = error_sums(Predictions(pred, starts, 12, week.node_ids), series)
    frame = mae_by_sensor(sums, "gwn", "gptst")

    assert frame["node_id"].tolist() == week.node_ids and set(frame["variant"]) == {"gptst"}
    expected = 0.01 * (np.arange(207) + 1)
    expected[5] = np.nan
    np.testing.assert_allclose(frame["mae"], expected, rtol=1e-3)
    assert frame["cells"].tolist() == (series.values[steps] != 0).sum(axis=(0, 1, 3)).tolist()
    assert frame.loc[5, "cells"] == 0
    # The pooled window errors agree with the contract's metrics.
    contract = horizon_metrics(pred, series.values[steps], null_value=0.0)["avg"]["mae"]
    assert sums.windows.mae == pytest.approx(contract, rel=1e-9)


def test_real_missing_zeros_of_raw_metr_la_are_ignored(raw100):
    """METR-LA's raw first hours contain real missing zeros: forecasts of 500 there change nothing,
    every hour's MAE is the constant error 2, and the counts are the present readings."""
    steps_all = np.arange(0, len(raw100.values) - 24 + 1)
    steps = steps_all[:, None] + 12 + np.arange(T_OUT)
    truth = raw100.values[steps]
    assert (truth == 0).sum() > 0
    pred = np.where(truth == 0, 500.0, truth + 2.0).astype(np.float32)
    sums = error_sums(Predictions(pred, steps_all, 12, raw100.node_ids), raw100)
    frame = mae_by_time_of_day(sums, "tgcn", "plain")

    np.testing.assert_allclose(frame["mae"], 2.0, rtol=1e-4)
    assert frame["cells"].sum() == (truth != 0).sum() == sums.windows.count.sum()
    assert frame.loc[frame["hour"] == 8, "peak"].item()


def test_the_forecast_view_shows_the_most_variable_sensors_over_one_day(week):
    """Default: horizon step 3, the three sensors whose test truth varies most, windows within 24 h."""
    starts = _test_starts(week)
    pred = Predictions(np.zeros((len(starts), T_OUT, 207, 1), np.float32), starts, 12, week.node_ids)
    view = forecast_view(pred, week)

    target = starts + 12 + 2
    variance = week.values[target, :, 0].astype(np.float64).var(axis=0)
    assert view.step == 3
    assert view.sensors.tolist() == np.argsort(-variance, kind="stable")[:3].tolist()
    assert len(view.rows) == 288 and view.timestamps[-1] - view.timestamps[0] == pd.Timedelta(hours=23, minutes=55)
    np.testing.assert_array_equal(view.truth, week.values[target[view.rows]][:, view.sensors, 0])
    chosen = forecast_view(pred, week, sensors=[week.node_ids[7]], step=12)
    assert chosen.node_ids == [week.node_ids[7]] and chosen.step == 12


# ------------------------------------------------------------------------------------ the stage
SCALES = {"plain": 2.0, "calendar": 1.8, "gptst": 1.4, "gptst_random": 1.9}
BASELINES = {"gwn": 1.0, "stgcn": 1.3}


class Project:
    """A params.yaml, the real week series and finetune outputs of 2 baselines x 4 variants
    (truth plus Gaussian noise, the scale set per variant) on every test window."""

    def __init__(self, root: Path, week: SeriesData) -> None:
        self.root = root
        params = {
            "seed": 0,
            "dataset": {
                "name": "metr-la-week",
                "kind": "speed",
                "series": "unused.h5",
                "graph": "unused.pkl",
                "null_value": 0.0,
            },
            "windows": {"t_in": 12, "t_out": T_OUT},
            "metrics": {"horizons": [3, 6, 12]},
            "finetune": {"baselines": list(BASELINES)},
        }
        (root / "params.yaml").write_text(yaml.safe_dump(params))
        self.series = write_series(root / "series.parquet", week)
        self.models = root / "models" / "metr-la-week" / "finetune"
        self.reports = root / "reports" / "metr-la-week" / "finetune"
        self.out = root / "reports" / "metr-la-week"
        starts = _test_starts(week)
        truth = week.values[starts[:, None] + 12 + np.arange(T_OUT)]
        rng = np.random.default_rng(0)
        self.expected: dict[tuple[str, str], dict] = {}
        for baseline, factor in BASELINES.items():
            for variant, scale in SCALES.items():
                pred = truth + rng.normal(0.0, factor * scale, size=truth.shape).astype(np.float32)
                write_predictions(self.models / baseline / variant / "predictions.npz", pred, starts, 12, week.node_ids)
                table = horizon_metrics(pred, truth, null_value=0.0)
                write_metrics_json(
                    metrics_path(self.reports, baseline, variant),
                    dataset="metr-la-week",
                    baseline=baseline,
                    variant=variant,
                    seed=0,
                    split="test",
                    horizons=table,
                )
                self.expected[baseline, variant] = table

    def run(self, reports: Path | None = None, out: Path | None = None) -> int:
        return evaluate_stage.main(
            [
                "--params",
                str(self.root / "params.yaml"),
                "--series",
                str(self.series),
                "--models",
                str(self.models),
                "--reports",
                str(reports or self.reports),
                "--out",
                str(out or self.out),
            ]
        )


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory, week):
    project = Project(tmp_path_factory.mktemp("evaluate"), week)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = project.run()
    return project, code, printed.getvalue()


def test_the_stage_writes_the_comparison_metrics_plots_and_figures(stage):
    """Exit 0; the long CSV carries each item's metrics exactly; the wide table is printed."""
    project, code, printed = stage
    evaluate = project.out / "evaluate"

    assert code == 0
    comparison = pd.read_csv(project.out / "comparison.csv", dtype={"horizon": str})
    assert len(comparison) == (2 * 4 + 2) * 4 and tuple(comparison.columns) == COMPARISON_COLUMNS
    models = comparison[comparison.variant != "reference"]
    for row in models.itertuples():
        assert row.mae == project.expected[row.baseline, row.variant][row.horizon]["mae"]
    references = comparison[comparison.variant == "reference"]
    assert list(dict.fromkeys(references.baseline)) == ["persistence", "historical_average"]
    assert (references[references.baseline == "persistence"].mae_vs_persistence == 0).all()
    markdown = (project.out / "comparison.md").read_text()
    assert markdown.strip() in printed and "### Horizon 12" in markdown and "gptst better in" in markdown
    for name in ("horizon_mae.png", "mae_by_time_of_day.png", "forecast_gwn.png", "forecast_stgcn.png"):
        assert (project.out / "figures" / name).read_bytes()[:8] == PNG_MAGIC, name
    horizon = pd.read_csv(evaluate / "horizon_mae.csv")
    assert list(horizon.columns) == ["baseline", "variant", "step", "mae"] and len(horizon) == (2 * 4 + 2) * T_OUT
    by_hour = pd.read_csv(evaluate / "mae_by_time_of_day.csv")
    by_sensor = pd.read_csv(evaluate / "mae_by_sensor.csv", dtype={"node_id": str})
    assert set(zip(by_hour.baseline, by_hour.variant, strict=True)) == set(project.expected)
    assert len(by_sensor) == 8 * 207
    gwn_plain = by_sensor[(by_sensor.baseline == "gwn") & (by_sensor.variant == "plain")]
    pooled = (gwn_plain.mae * gwn_plain.cells).sum() / gwn_plain.cells.sum()
    assert pooled == pytest.approx(project.expected["gwn", "plain"]["avg"]["mae"], rel=1e-9)


def test_the_stage_metrics_hold_averages_and_the_bootstrap_of_gptst_against_plain(stage):
    """DVC metrics: every item's average metrics, and per baseline a bootstrap that finds gptst
    (noise scale 1.4) better than plain (2.0)."""
    project, _, _ = stage
    metrics = json.loads((project.out / "evaluate" / "metrics.json").read_text())

    assert set(metrics) == {*BASELINES, "persistence", "historical_average"}
    assert metrics["stgcn"]["calendar"] == pytest.approx(project.expected["stgcn", "calendar"]["avg"])
    for baseline in BASELINES:
        boot = metrics[baseline]["gptst_vs_plain"]
        gain = project.expected[baseline, "gptst"]["avg"]["mae"] - project.expected[baseline, "plain"]["avg"]["mae"]
        assert boot["diff"] == pytest.approx(gain)
        assert boot["diff_low"] <= gain <= boot["diff_high"] < 0
        assert boot["share_better"] == 1.0 and boot["n_windows"] == 380 and boot["n_resamples"] == 2000


def test_missing_variants_are_shown_as_missing_and_skip_the_bootstrap(stage, tmp_path, capsys):
    """With stgcn's gptst and calendar results absent the stage still succeeds: '—' in the table,
    no bootstrap or breakdown for stgcn."""
    project, _, _ = stage
    reports = tmp_path / "finetune"
    shutil.copytree(project.reports, reports)
    shutil.rmtree(reports / "stgcn" / "gptst")
    shutil.rmtree(reports / "stgcn" / "calendar")

    assert project.run(reports=reports, out=tmp_path / "out") == 0
    out = capsys.readouterr().out
    assert "stgcn/gptst/metrics.json: shown as —" in out
    metrics = json.loads((tmp_path / "out" / "evaluate" / "metrics.json").read_text())
    assert "gptst_vs_plain" not in metrics["stgcn"] and "gptst_vs_plain" in metrics["gwn"]
    assert set(pd.read_csv(tmp_path / "out" / "evaluate" / "mae_by_sensor.csv").baseline) == {"gwn"}
    assert (tmp_path / "out" / "figures" / "forecast_stgcn.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize(
    ("damage", "field"),
    [
        (lambda doc: doc["horizons"].pop("6"), "horizons.6"),
        (lambda doc: doc.update(variant="plain"), "variant"),
    ],
    ids=["missing-horizon", "wrong-variant"],
)
def test_bad_metrics_fail_naming_file_and_field_and_keep_the_previous_outputs(stage, tmp_path, capsys, damage, field):
    """A damaged gwn/gptst metrics.json: exit code 2, the message names the file and the field,
    and the comparison written by the earlier run is left as it was."""
    project, _, _ = stage
    reports, out = tmp_path / "finetune", tmp_path / "out"
    shutil.copytree(project.reports, reports)
    shutil.copytree(project.out, out, ignore=shutil.ignore_patterns("finetune"))
    before = (out / "comparison.csv").read_bytes()
    path = metrics_path(reports, "gwn", "gptst")
    doc = json.loads(path.read_text())
    damage(doc)
    path.write_text(json.dumps(doc))

    assert project.run(reports=reports, out=out) == 2
    err = capsys.readouterr().err
    assert f"{path}: {field}:" in err
    assert (out / "comparison.csv").read_bytes() == before


def test_the_stage_logs_each_reference_forecast_as_a_run_with_the_finetune_metric_names(stage):
    """One MLflow run per reference forecast, tagged baseline=<name>, variant=reference, with
    test_mae_avg etc. equal to the comparison's rows."""
    import mlflow

    project, _, _ = stage
    comparison = pd.read_csv(project.out / "comparison.csv", dtype={"horizon": str})
    runs = mlflow.search_runs(
        experiment_names=["gptst-metr-la-week"], filter_string="tags.variant = 'reference'", output_format="list"
    )
    by_name = {run.data.tags["baseline"]: run for run in runs}
    assert set(by_name) >= {"persistence", "historical_average"}
    for name, run in by_name.items():
        row = comparison[(comparison.baseline == name) & (comparison.horizon == "avg")].iloc[0]
        assert run.data.metrics["test_mae_avg"] == pytest.approx(row.mae)
        assert "test_rmse_h12" in run.data.metrics
