"""Reference forecasts (persistence, historical average) against values computed by hand on a
tiny synthetic series with missing readings (synthetic: the cases must be exact)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gptst.data.series import SeriesData
from gptst.evaluation.reference import (
    HISTORICAL_AVERAGE,
    PERSISTENCE,
    HistoricalAverage,
    reference_forecasts,
    reference_metrics,
)

NAN = np.nan


def _series(values: np.ndarray, freq: str = "6h", start: str = "2024-01-01") -> SeriesData:
    """[T, N] values (0 marks a missing reading) on a ``freq`` grid starting Monday midnight."""
    timestamps = pd.date_range(start, periods=len(values), freq=freq)
    return SeriesData(
        values=np.asarray(values, dtype=np.float32)[:, :, None],
        stamps=timestamps.values,
        node_ids=[str(i) for i in range(values.shape[1])],
        channels=["speed"],
        freq=freq,
        null_value=0.0,
        kind="speed",
    )


def test_persistence_repeats_the_last_observed_input_reading_per_node():
    """Node 0's last input reading is missing, so its previous one is repeated; node 1 has no
    observed input reading at all and falls back to the historical average."""
    values = np.array([[10, 0], [20, 0], [0, 0], [40, 4], [50, 5]], dtype=float)
    series = _series(values)
    # One window: input steps 0..2, targets 3..4; training split: steps 0..3.
    (_, forecasts), *_ = reference_forecasts(series, np.array([0]), t_in=3, t_out=2, train_steps=range(4))
    persistence = forecasts[PERSISTENCE][0, :, :, 0]
    historical = forecasts[HISTORICAL_AVERAGE][0, :, :, 0]
    assert persistence[:, 0].tolist() == [20.0, 20.0]
    assert persistence[:, 1].tolist() == historical[:, 1].tolist()


def test_historical_average_uses_the_slot_of_day_when_the_training_split_misses_a_weekday():
    """4 slots a day (6 h). Training split: Monday and Tuesday complete, Wednesday's first slot.
    Wednesday is not covered, so a Wednesday target gets the slot-of-day mean of Monday and
    Tuesday; a Tuesday target gets the Tuesday slot mean itself (slot of week)."""
    monday = [1, 2, 3, 4]
    tuesday = [5, 6, 0, 8]  # slot 2 missing
    wednesday = [9, 10, 11, 12]
    series = _series(np.array(monday + tuesday + wednesday + [13] * 4, dtype=float)[:, None])
    average = HistoricalAverage.fit(series, range(9))
    assert average.covered_weekdays == (0, 1)
    forecast = average.forecast(np.array([5, 6, 9, 10]))[:, 0, 0]  # Tue slot 1, Tue slot 2, Wed slots 1, 2
    # Tue slot 2 was never observed on a Tuesday: slot-of-day mean over Monday only (3).
    assert forecast.tolist() == [6.0, 3.0, (2 + 6) / 2, 3.0]


def test_historical_average_falls_back_to_the_node_mean_then_the_overall_mean():
    """Node 1 is observed only at slot 0 (its mean is 7); node 2 never (overall training mean)."""
    values = np.array([[1, 7, 0], [2, 0, 0], [3, 0, 0], [4, 0, 0]], dtype=float)
    series = _series(values)
    average = HistoricalAverage.fit(series, range(4))
    forecast = average.forecast(np.array([1]))[0, :, 0]
    assert forecast[1] == 7.0
    assert forecast[2] == pytest.approx(np.mean([2.5, 7.0]))  # the mean of the node means


def test_reference_metrics_are_the_masked_metrics_of_the_forecasts():
    """MAE per step by hand, missing targets left out, and pooled over steps."""
    values = np.array([[10, 1], [20, 2], [30, 0], [25, 6]], dtype=float)
    series = _series(values)
    table = reference_metrics(series, np.array([0]), t_in=2, t_out=2, train_steps=range(2), mape_min=0.0)
    # Persistence forecasts 20 and 2 for both steps; targets [30, missing] then [25, 6].
    assert table[PERSISTENCE]["1"]["mae"] == pytest.approx(10.0)
    assert table[PERSISTENCE]["2"]["mae"] == pytest.approx((5 + 4) / 2)
    assert table[PERSISTENCE]["avg"]["mae"] == pytest.approx((10 + 5 + 4) / 3)
    assert table[PERSISTENCE]["2"]["mape"] == pytest.approx(100 * (5 / 25 + 4 / 6) / 2)
