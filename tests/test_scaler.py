"""Z-score scaler: fitted on non-missing training cells only, per channel, numpy and torch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gptst.data.scaler import StandardScaler, fit_train_scaler
from gptst.data.splits import chronological_split
from gptst.params import SplitRatios


def test_fit_uses_only_non_missing_training_cells(raw100):
    steps = chronological_split(100, SplitRatios())
    scaler = fit_train_scaler(raw100, steps)

    train = raw100.values[: steps.train.stop, :, 0].astype(np.float64)
    present = train[train != 0.0]
    assert steps.train.stop == 70
    assert scaler.mean[0] == pytest.approx(present.mean(), rel=1e-12)
    assert scaler.std[0] == pytest.approx(present.std(), rel=1e-12)  # population std (ddof 0)
    # Counting the missing zeros would drag the mean down noticeably.
    assert train.mean() < scaler.mean[0] - 1.0
    assert scaler.channels == ["speed"]


def test_val_and_test_values_do_not_leak_into_the_fit(raw100):
    steps = chronological_split(100, SplitRatios())
    tampered = raw100.values.copy()
    tampered[steps.train.stop :] = 1e6

    original = fit_train_scaler(raw100, steps)
    refit = StandardScaler.fit(tampered[: steps.train.stop], null_value=0.0)
    np.testing.assert_array_equal(refit.mean, original.mean)
    np.testing.assert_array_equal(refit.std, original.std)


def test_nan_cells_are_missing_too():
    values = np.array([[1.0], [np.nan], [3.0], [0.0]], dtype=np.float32)

    scaler = StandardScaler.fit(values, null_value=0.0)
    # Present: 1 and 3 -> mean 2, population std 1.
    assert scaler.mean.tolist() == [2.0]
    assert scaler.std.tolist() == [1.0]
    assert StandardScaler.fit(values, null_value=None).mean.tolist() == [pytest.approx(4 / 3)]


@pytest.fixture(scope="module")
def bike_counts(bike) -> np.ndarray:
    """Real NYC bike inflow/outflow counts, [1369, 128, 2]."""
    return bike.values


def test_each_channel_has_its_own_statistics(bike_counts):
    scaler = StandardScaler.fit(bike_counts, null_value=None, channels=["inflow", "outflow"])

    flat = bike_counts.reshape(-1, 2).astype(np.float64)
    np.testing.assert_allclose(scaler.mean, flat.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(scaler.std, flat.std(axis=0), rtol=1e-10)
    scaled = scaler.transform(bike_counts).reshape(-1, 2).astype(np.float64)
    np.testing.assert_allclose(scaled.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(scaled.std(axis=0), 1.0, atol=1e-4)


def test_a_constant_channel_gets_std_one_not_a_division_by_zero(bike_counts):
    # Grid cell 0 of the real bike_counts data is 0 at every step: std 0.
    cell = bike_counts[:, 0, :]
    assert np.all(cell == 0)

    scaler = StandardScaler.fit(cell, null_value=None)
    assert scaler.std.tolist() == [1.0, 1.0]
    scaled = scaler.transform(cell)
    assert np.all(np.isfinite(scaled))
    np.testing.assert_array_equal(scaled, cell - scaler.mean.astype(np.float32))


def test_transform_roundtrips_numpy_and_torch_of_any_leading_shape(raw100):
    scaler = fit_train_scaler(raw100, chronological_split(100, SplitRatios()))
    windows = raw100.values[:96].reshape(8, 12, 207, 1)  # [B, T, N, C]

    scaled_np = scaler.transform(windows)
    scaled_torch = scaler.transform(torch.from_numpy(windows))
    assert scaled_np.dtype == np.float32 and scaled_np.shape == windows.shape
    assert isinstance(scaled_torch, torch.Tensor) and scaled_torch.dtype == torch.float32
    np.testing.assert_allclose(scaled_torch.numpy(), scaled_np, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(scaled_np, (windows - scaler.mean[0]) / scaler.std[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scaler.inverse_transform(scaled_np), windows, atol=1e-4)
    np.testing.assert_allclose(scaler.inverse_transform(scaled_torch).numpy(), windows, atol=1e-4)


def test_transform_rejects_a_channel_count_mismatch(bike_counts):
    scaler = StandardScaler.fit(bike_counts)
    with pytest.raises(ValueError, match="channels"):
        scaler.transform(bike_counts[..., :1])


def test_scaler_roundtrips_through_a_json_dict(bike_counts):
    scaler = StandardScaler.fit(bike_counts, channels=["inflow", "outflow"])

    restored = StandardScaler.from_dict(json.loads(json.dumps(scaler.to_dict())))
    np.testing.assert_array_equal(restored.mean, scaler.mean)
    np.testing.assert_array_equal(restored.std, scaler.std)
    assert restored.channels == ["inflow", "outflow"]
    with pytest.raises(ValueError, match="std"):
        StandardScaler.from_dict({"mean": [1.0]})


def test_a_channel_without_any_valid_cell_cannot_be_fitted():
    values = np.zeros((5, 3, 1), dtype=np.float32)
    with pytest.raises(ValueError, match="no valid"):
        StandardScaler.fit(values, null_value=0.0)
