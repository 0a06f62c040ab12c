"""Masked MAE / RMSE / MAPE against hand-computed values, and the metrics JSON schema."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from gptst.metrics import (
    HorizonMetricAccumulator,
    horizon_metrics,
    masked_huber,
    masked_mae,
    masked_mape,
    masked_rmse,
    mlflow_metric_keys,
    write_metrics_json,
)

# One window (B = 1), two horizon steps, two nodes; 0.0 marks a missing true value.
#   step 1: true [2, 4], pred [3, 2] -> errors 1, 2
#   step 2: true [0, 5], pred [7, 1] -> node 0 missing; error 4
TRUE = np.array([[[2.0, 4.0], [0.0, 5.0]]], dtype=np.float32)
PRED = np.array([[[3.0, 2.0], [7.0, 1.0]]], dtype=np.float32)

# step 1: MAE (1 + 2) / 2 = 1.5; RMSE sqrt((1 + 4) / 2) = sqrt(2.5); MAPE (1/2 + 2/4) / 2 = 50 %
# step 2: MAE 4; RMSE 4; MAPE 4/5 = 80 %
# pooled over the 3 valid cells: MAE 7/3; RMSE sqrt((1 + 4 + 16) / 3) = sqrt(7);
#   MAPE (0.5 + 0.5 + 0.8) / 3 = 60 %
EXPECTED = {
    "1": {"mae": 1.5, "rmse": math.sqrt(2.5), "mape": 50.0},
    "2": {"mae": 4.0, "rmse": 4.0, "mape": 80.0},
    "avg": {"mae": 7 / 3, "rmse": math.sqrt(7), "mape": 60.0},
}


def _assert_table(actual: dict, expected: dict) -> None:
    assert list(actual) == list(expected)
    for key, row in expected.items():
        assert actual[key] == pytest.approx(row, rel=1e-6, nan_ok=True), key


def test_horizon_metrics_match_hand_computed_values():
    table = horizon_metrics(PRED, TRUE, null_value=0.0, mape_min=0.0)

    _assert_table(table, EXPECTED)
    assert all(type(v) is float for row in table.values() for v in row.values())


def test_pooled_rmse_is_the_root_of_the_pooled_mean_square_not_the_mean_of_step_rmses():
    table = horizon_metrics(PRED, TRUE, null_value=0.0)

    mean_of_steps = (table["1"]["rmse"] + table["2"]["rmse"]) / 2  # (1.581 + 4) / 2 = 2.79
    assert table["avg"]["rmse"] == pytest.approx(math.sqrt(7))  # 2.646
    assert table["avg"]["rmse"] != pytest.approx(mean_of_steps)


def test_without_the_null_mask_the_missing_cell_counts():
    # null_value None: the 0 of step 2 is a real value; error |7 - 0| = 7.
    # step 2 MAE (7 + 4) / 2 = 5.5; MAPE skips it (|0| is not above mape_min 0) -> still 80 %.
    table = horizon_metrics(PRED, TRUE, null_value=None)

    assert table["2"]["mae"] == pytest.approx(5.5)
    assert table["2"]["mape"] == pytest.approx(80.0)


def test_mape_min_drops_small_true_values_from_mape_only():
    # mape_min 3: only |true| > 3 counts for MAPE -> step 1 only 4 (2/4 = 50 %), step 2 only 5 (80 %),
    # pooled (0.5 + 0.8) / 2 = 65 %. MAE and RMSE are unchanged.
    table = horizon_metrics(PRED, TRUE, null_value=0.0, mape_min=3.0)

    assert [table[k]["mape"] for k in ("1", "2", "avg")] == pytest.approx([50.0, 80.0, 65.0])
    assert table["avg"]["mae"] == pytest.approx(7 / 3)


def test_nan_true_values_are_always_missing():
    true = TRUE.copy()
    true[0, 1, 0] = np.nan  # step 2's missing cell as NaN instead of 0

    _assert_table(horizon_metrics(PRED, true, null_value=None), EXPECTED)
    _assert_table(horizon_metrics(PRED, true, null_value=0.0), EXPECTED)


def test_a_horizon_without_any_valid_cell_gives_nan_not_a_crash():
    true = TRUE.copy()
    true[0, 1, :] = 0.0  # step 2 entirely missing
    # pooled: only step 1 -> MAE 1.5, RMSE sqrt(2.5), MAPE 50 %
    table = horizon_metrics(PRED, true, null_value=0.0)

    assert all(math.isnan(v) for v in table["2"].values())
    assert table["avg"] == pytest.approx(EXPECTED["1"])


def test_channel_axis_and_torch_inputs_give_the_same_table():
    four_d = horizon_metrics(torch.from_numpy(PRED[..., None]), torch.from_numpy(TRUE[..., None]), null_value=0.0)

    _assert_table(four_d, EXPECTED)


def test_streaming_batches_equals_one_call(test_data):
    # Real METR-LA readings with real missing zeros; a "repeat the last input" forecast.
    values = pd.read_hdf(test_data / "metr-la-raw100" / "metr-la-raw100.h5", "df").to_numpy(np.float32)
    starts = np.arange(0, 100 - 12 - 3 + 1)
    true = np.stack([values[s + 12 : s + 15] for s in starts])  # [B, 3, N]
    pred = np.stack([np.repeat(values[s + 11][None], 3, axis=0) for s in starts])

    whole = horizon_metrics(pred, true, null_value=0.0)
    acc = HorizonMetricAccumulator(null_value=0.0)
    for lo in range(0, len(starts), 16):
        acc.update(pred[lo : lo + 16], true[lo : lo + 16])
    _assert_table(acc.result(), whole)

    # Reference computation, cell by cell over the valid ones of step 3.
    valid = true[:, 2] != 0
    err = np.abs(pred[:, 2] - true[:, 2])[valid].astype(np.float64)
    assert whole["3"]["mae"] == pytest.approx(err.mean())
    assert whole["3"]["mape"] == pytest.approx(100 * (err / true[:, 2][valid]).mean())
    # The data do hold missing targets, so the mask changes the result.
    assert (true == 0).any()
    assert horizon_metrics(pred, true, null_value=None)["avg"]["mae"] > whole["avg"]["mae"]


def test_torch_masked_losses_match_the_hand_values():
    pred = torch.tensor(PRED, requires_grad=True)
    true = torch.tensor(TRUE)

    assert masked_mae(pred, true, 0.0).item() == pytest.approx(7 / 3)
    assert masked_rmse(pred, true, 0.0).item() == pytest.approx(math.sqrt(7))
    assert masked_mape(pred, true, 0.0).item() == pytest.approx(60.0)
    assert masked_mape(pred, true, 0.0, mape_min=3.0).item() == pytest.approx(65.0)
    # Huber, delta 1: errors 1, 2, 4 -> 0.5, 0.5 + 1, 0.5 + 3 -> mean 5.5 / 3
    assert masked_huber(pred, true, 0.0, delta=1.0).item() == pytest.approx(5.5 / 3)


def test_masked_mae_is_a_differentiable_scalar_ignoring_missing_targets():
    pred = torch.tensor(PRED, requires_grad=True)
    true = torch.tensor(TRUE)
    true[0, 0, 0] = float("nan")  # a NaN target must not turn gradients into NaN
    # valid cells: (1,1) error -2, (2,2) error -4 -> MAE 3; gradient sign(error) / 2 there.

    loss = masked_mae(pred, true, 0.0)
    loss.backward()

    assert loss.ndim == 0 and loss.item() == pytest.approx(3.0)
    np.testing.assert_allclose(pred.grad.numpy(), [[[0.0, -0.5], [0.0, -0.5]]])


def test_masked_loss_with_no_valid_cell_is_zero_not_nan():
    pred = torch.ones(2, 3, 4, requires_grad=True)
    loss = masked_mae(pred, torch.zeros(2, 3, 4), 0.0)
    loss.backward()

    assert loss.item() == 0.0
    assert torch.all(pred.grad == 0)


def test_metrics_json_schema(tmp_path):
    table = horizon_metrics(PRED, TRUE, null_value=0.0)
    table["2"]["mape"] = float("nan")

    path = write_metrics_json(
        tmp_path / "m" / "metrics.json",
        dataset="metr-la-week",
        baseline="gwn",
        variant="gptst",
        seed=0,
        split="test",
        horizons=table,
    )

    doc = json.loads(path.read_text())
    assert list(doc) == ["dataset", "baseline", "variant", "seed", "split", "horizons"]
    assert doc["dataset"] == "metr-la-week" and doc["seed"] == 0 and doc["split"] == "test"
    assert list(doc["horizons"]) == ["1", "2", "avg"]
    assert all(set(row) == {"mae", "rmse", "mape"} for row in doc["horizons"].values())
    assert doc["horizons"]["avg"]["rmse"] == pytest.approx(math.sqrt(7))
    assert doc["horizons"]["2"]["mape"] is None  # strict JSON: NaN is written as null
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]  # no temp file left


def test_metrics_json_orders_integer_keys_numerically(tmp_path):
    row = {"mae": 1.0, "rmse": 1.0, "mape": 1.0}
    table = {"avg": row, 10: row, 2: row, 1: row}

    path = write_metrics_json(
        tmp_path / "metrics.json", dataset="d", baseline="b", variant="plain", seed=1, split="val", horizons=table
    )
    assert list(json.loads(path.read_text())["horizons"]) == ["1", "2", "10", "avg"]
    with pytest.raises(ValueError, match="avg"):
        write_metrics_json(
            tmp_path / "x.json", dataset="d", baseline="b", variant="plain", seed=1, split="val", horizons={1: row}
        )


def test_mlflow_metric_keys():
    true = np.tile(TRUE, (1, 6, 1))  # 12 steps
    pred = np.tile(PRED, (1, 6, 1))
    table = horizon_metrics(pred, true, null_value=0.0)

    keys = mlflow_metric_keys("test", table)
    assert len(keys) == 3 * 13
    assert keys["test_mae_h01"] == pytest.approx(1.5)
    assert keys["test_mae_h03"] == pytest.approx(1.5)
    assert keys["test_rmse_h12"] == pytest.approx(4.0)
    assert keys["test_mape_avg"] == pytest.approx(60.0)
    assert set(mlflow_metric_keys("val", table)) >= {"val_mae_avg", "val_rmse_h06"}
    assert all(type(v) is float for v in keys.values())
