"""Evaluation figures (PNG, matplotlib's Agg backend, written atomically).

- :func:`plot_horizon_mae`: MAE per horizon step, one line per variant, one panel per baseline;
- :func:`plot_forecasts`: forecasts against the truth for a few sensors over one day of the test
  split at one horizon step, all variants of one baseline. :func:`forecast_view` picks the
  sensors and windows from the first item read, :func:`forecast_trace` cuts each item's small
  slice, so the stage never holds more than one item's forecasts;
- :func:`plot_mae_by_time_of_day`: MAE per hour of day, peak hours shaded.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from gptst.data.series import SeriesData
from gptst.evaluation.breakdown import PEAK_HOURS
from gptst.evaluation.predictions import Predictions
from gptst.evaluation.reference import REFERENCE_VARIANT
from gptst.io import atomic_path
from gptst.layout import VARIANTS
from gptst.metrics import valid_mask

DEFAULT_STEP = 3
DEFAULT_SENSORS = 3
FORECAST_SPAN = pd.Timedelta(days=1)
_PANEL_COLUMNS = 3


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display, no GUI toolkit: the same output on servers and laptops
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> Path:
    plt = _pyplot()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


def _panels(n: int, width: float = 4.5, height: float = 3.2) -> tuple[Any, list[Any]]:
    plt = _pyplot()
    cols = min(n, _PANEL_COLUMNS)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), dpi=100, squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _variant_order(variants: Sequence[str]) -> list[str]:
    known = [v for v in VARIANTS if v in set(variants)]
    return known + sorted(set(variants) - set(known))


def plot_horizon_mae(frame: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """MAE against horizon step (``frame``: baseline, variant, step, mae), one panel per baseline;
    reference forecasts (variant ``reference``) are dashed grey lines in every panel."""
    is_reference = frame["variant"] == REFERENCE_VARIANT
    references, models = frame[is_reference], frame[~is_reference]
    baselines = list(dict.fromkeys(models["baseline"]))
    if not baselines:
        raise ValueError("no horizon MAE to plot")
    fig, axes = _panels(len(baselines))
    for ax, baseline in zip(axes, baselines, strict=False):
        rows = models[models["baseline"] == baseline]
        for variant in _variant_order(rows["variant"].unique()):
            line = rows[rows["variant"] == variant].sort_values("step")
            ax.plot(line["step"], line["mae"], marker="o", markersize=3, label=variant)
        for style, name in zip(("--", ":"), dict.fromkeys(references["baseline"]), strict=False):
            line = references[references["baseline"] == name].sort_values("step")
            ax.plot(line["step"], line["mae"], linestyle=style, color="0.45", label=name)
        ax.set_title(baseline)
        ax.set_xlabel("horizon step")
        ax.set_ylabel("test MAE (raw units)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_mae_by_time_of_day(frame: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """MAE per hour of the forecast step's timestamp (``frame`` from
    :func:`gptst.evaluation.breakdown.mae_by_time_of_day`), peak hours shaded, one panel per baseline.

    An empty frame gives a figure that says so (no baseline had both plain and gptst results)."""
    baselines = list(dict.fromkeys(frame["baseline"]))
    if not baselines:
        # The figure is a pipeline output either way: say why it is empty.
        fig, axes = _panels(1)
        axes[0].text(0.5, 0.5, "no baseline has both plain and gptst results", ha="center", va="center")
        axes[0].set_axis_off()
        return _save(fig, path)
    fig, axes = _panels(len(baselines))
    for ax, baseline in zip(axes, baselines, strict=False):
        rows = frame[frame["baseline"] == baseline]
        for lo, hi in _runs(sorted(PEAK_HOURS)):
            ax.axvspan(lo - 0.5, hi + 0.5, color="0.9", zorder=0)
        for variant in _variant_order(rows["variant"].unique()):
            # Hours without forecasts become gaps instead of lines bridging them.
            mae = rows[rows["variant"] == variant].set_index("hour")["mae"].reindex(range(24))
            ax.plot(mae.index, mae.to_numpy(dtype=float), marker="o", markersize=3, label=variant)
        ax.set_title(f"{baseline} (shaded: peak hours)")
        ax.set_xlabel("hour of day")
        ax.set_ylabel("test MAE (raw units)")
        ax.set_xlim(-0.5, 23.5)
        ax.set_xticks(range(0, 24, 3))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _runs(values: list[int]) -> list[tuple[int, int]]:
    """Consecutive runs of sorted integers: [7, 8, 9, 16, 17] -> [(7, 9), (16, 17)]."""
    runs: list[tuple[int, int]] = []
    for v in values:
        if runs and v == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], v)
        else:
            runs.append((v, v))
    return runs


@dataclass(frozen=True)
class ForecastView:
    """What the forecast figure shows: some windows' forecasts at one horizon step for a few sensors."""

    rows: np.ndarray  # int64 [R], window rows of the predictions, in time order
    sensors: np.ndarray  # int64 [S], node indices
    node_ids: list[str]  # [S]
    step: int  # 1-based horizon step
    channel: int
    timestamps: pd.DatetimeIndex  # [R], of the forecast step
    truth: np.ndarray  # float64 [R, S], NaN where the reading is missing
    starts: np.ndarray  # every window start of the item the view was built from


def forecast_view(
    pred: Predictions,
    series: SeriesData,
    *,
    step: int | None = None,
    n_sensors: int = DEFAULT_SENSORS,
    sensors: Sequence[str] | None = None,
    channel: int = 0,
    span: pd.Timedelta = FORECAST_SPAN,
) -> ForecastView:
    """Choose the windows (the first ``span`` of test forecasts at ``step``) and the sensors.

    ``step`` defaults to 3, or T_out when shorter. Without explicit ``sensors`` (node ids), the
    ``n_sensors`` whose test truth at that step varies most are shown: flat sensors say little.
    """
    step = min(DEFAULT_STEP, pred.t_out) if step is None else step
    if not 1 <= step <= pred.t_out:
        raise ValueError(f"step {step} is outside the horizon 1..{pred.t_out}")
    if not 0 <= channel < pred.pred.shape[3]:
        raise ValueError(f"channel {channel} is outside the {pred.pred.shape[3]} channels")
    if len(pred.starts) == 0:
        raise ValueError("no test window to plot")
    target = pred.target_steps()[:, step - 1]
    order = np.argsort(target, kind="stable")
    times = series.timestamps[target[order]]
    rows = order[np.asarray(times < times[0] + span)]
    raw = series.values[target, :, channel]
    truth_all = np.where(valid_mask(torch.from_numpy(raw), series.null_value).numpy(), raw, np.nan).astype(np.float64)
    if sensors is not None:
        index = {node: i for i, node in enumerate(pred.node_ids)}
        unknown = [s for s in sensors if s not in index]
        if unknown:
            raise ValueError(f"sensors {unknown} are not in the predictions' node ids")
        chosen = np.asarray([index[s] for s in sensors], dtype=np.int64)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # nanvar of a sensor missing throughout
            spread = np.nanvar(truth_all, axis=0)
        spread = np.where(np.isfinite(spread), spread, -np.inf)
        chosen = np.argsort(-spread, kind="stable")[: min(n_sensors, len(spread))]
    return ForecastView(
        rows=rows.astype(np.int64),
        sensors=chosen,
        node_ids=[pred.node_ids[i] for i in chosen],
        step=step,
        channel=channel,
        timestamps=series.timestamps[target[rows]],
        truth=truth_all[np.ix_(rows, chosen)],
        starts=pred.starts.copy(),
    )


def forecast_trace(view: ForecastView, pred: Predictions) -> np.ndarray:
    """One item's forecasts [R, S] for ``view``; the item must cover the same windows as the view's."""
    if not np.array_equal(pred.starts, view.starts):
        raise ValueError("these predictions cover other test windows than the forecast view")
    return pred.pred[view.rows, view.step - 1][:, view.sensors, view.channel].astype(np.float64)


def plot_forecasts(view: ForecastView, traces: Mapping[str, np.ndarray], path: str | Path, title: str = "") -> Path:
    """Truth and each variant's forecast (``traces``: variant -> [R, S]) for the view's sensors, one panel each."""
    plt = _pyplot()
    n = len(view.sensors)
    fig, axes = plt.subplots(n, 1, figsize=(10, 2.6 * n), dpi=100, sharex=True, squeeze=False)
    for k, ax in enumerate(axes[:, 0]):
        ax.plot(view.timestamps, view.truth[:, k], color="black", linewidth=1.6, label="truth")
        for variant in _variant_order(list(traces)):
            ax.plot(view.timestamps, traces[variant][:, k], linewidth=1.0, label=variant)
        ax.set_title(f"sensor {view.node_ids[k]}, horizon step {view.step}", fontsize=10)
        ax.set_ylabel("value (raw units)")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8, ncol=len(traces) + 1)
    axes[-1, 0].set_xlabel("time of the forecast step")
    fig.autofmt_xdate()
    if title:
        fig.suptitle(title)
    return _save(fig, path)
