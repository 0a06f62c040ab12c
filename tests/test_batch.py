"""Batches gathered by window start index from the series held once in memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gptst.data.batch import Batch, WindowBatcher, n_batches
from gptst.data.calendar import calendar_features
from gptst.data.scaler import StandardScaler, fit_train_scaler
from gptst.data.series import SeriesData, load_series, write_series
from gptst.data.windows import make_splits
from gptst.params import SplitRatios, WindowParams


def _batcher(series: SeriesData, t_in: int, t_out: int) -> tuple[WindowBatcher, StandardScaler]:
    splits = make_splits(len(series.timestamps), SplitRatios(), WindowParams(t_in=t_in, t_out=t_out))
    scaler = fit_train_scaler(series, splits.steps)
    return WindowBatcher.from_series(series, scaler, t_in, t_out), scaler


def test_a_batch_is_the_scaled_input_slice_and_the_raw_target_slice_of_each_window(week):
    batcher, scaler = _batcher(week, 12, 12)
    calendar = calendar_features(week.timestamps, "5min")
    starts = [0, 700, 1411, 2016 - 24]  # first, inner, across the train/val step boundary, last

    batch = batcher.gather(starts)

    for b, s in enumerate(starts):
        np.testing.assert_allclose(batch.x[b].numpy(), scaler.transform(week.values[s : s + 12]), rtol=1e-6)
        np.testing.assert_array_equal(batch.y[b].numpy(), week.values[s + 12 : s + 24])  # raw, unscaled
        np.testing.assert_array_equal(batch.x_raw[b].numpy(), week.values[s : s + 12])
        np.testing.assert_array_equal(batch.cal[b].numpy(), calendar[s : s + 12])
        np.testing.assert_array_equal(batch.cal_y[b].numpy(), calendar[s + 12 : s + 24])
    assert batch.start.tolist() == starts
    assert batch.start.dtype == torch.long
    assert batch.x.dtype == batch.y.dtype == batch.cal.dtype == torch.float32
    assert len(batch) == 4


@pytest.mark.parametrize(("t_in", "t_out"), [(12, 3), (6, 12)])
def test_shapes_with_unequal_windows_and_two_channels(bike, t_in, t_out):
    batcher, scaler = _batcher(bike, t_in, t_out)
    starts = np.array([5, 40, 300])

    batch = batcher.gather(starts)

    assert batch.x.shape == (3, t_in, 128, 2)
    assert batch.cal.shape == (3, t_in, 4)
    assert batch.cal_y.shape == (3, t_out, 4)
    assert batch.y.shape == (3, t_out, 128, 2)
    s = 40
    np.testing.assert_allclose(batch.x[1].numpy(), scaler.transform(bike.values[s : s + t_in]), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(batch.y[1].numpy(), bike.values[s + t_in : s + t_in + t_out])
    # The two channels are scaled by their own statistics.
    assert scaler.mean[0] != scaler.mean[1]


def test_the_raw_series_is_shared_not_copied_and_normalised_only_batch_by_batch(week):
    batcher, _ = _batcher(week, 12, 12)

    assert np.shares_memory(batcher.raw.numpy(), week.values)
    series_bytes = week.values.nbytes
    held = [t for t in vars(batcher).values() if isinstance(t, torch.Tensor) and t.numel() * 4 >= series_bytes]
    assert len(held) == 1  # the raw series itself: no normalised copy of it


def test_a_memory_mapped_series_batches_like_one_in_memory(week, tmp_path: Path):
    write_series(tmp_path / "s.parquet", week)
    mapped = load_series(tmp_path / "s.parquet", mmap=True)
    assert isinstance(mapped.values, np.memmap) and not mapped.values.flags.writeable
    scaler = StandardScaler.fit(week.values[:1400], null_value=0.0)
    in_memory = WindowBatcher.from_series(week, scaler, 12, 12).gather([0, 500, 1990])
    from_map = WindowBatcher.from_series(mapped, scaler, 12, 12).gather([0, 500, 1990])
    for name in ("x", "y", "x_raw", "cal", "cal_y"):
        torch.testing.assert_close(getattr(from_map, name), getattr(in_memory, name), rtol=0, atol=0)


def test_iterating_a_split_visits_every_window_once_in_a_seeded_order(week):
    batcher, _ = _batcher(week, 12, 12)
    val = make_splits(2016, SplitRatios(), WindowParams()).val

    ordered = [b.start for b in batcher.batches(val, batch_size=64)]
    assert [len(s) for s in ordered] == [64, 64, 50]
    assert torch.cat(ordered).tolist() == val.starts.tolist()

    def shuffled(seed: int) -> list[int]:
        gen = torch.Generator().manual_seed(seed)
        return torch.cat([b.start for b in batcher.batches(val, 64, shuffle=True, generator=gen)]).tolist()

    assert shuffled(0) == shuffled(0)
    assert shuffled(0) != shuffled(1)
    assert shuffled(0) != val.starts.tolist()
    assert sorted(shuffled(0)) == val.starts.tolist()

    kept = list(batcher.batches(val, 64, drop_last=True))
    assert len(kept) == n_batches(len(val), 64, drop_last=True) == 2
    assert n_batches(len(val), 64) == 3


def test_a_window_past_the_series_end_is_an_index_error(week):
    batcher, _ = _batcher(week, 12, 12)

    with pytest.raises(IndexError, match="2016 steps"):
        batcher.gather([2016 - 23])
    with pytest.raises(IndexError):
        batcher.gather([-1])


def test_windows_of_another_length_are_rejected(week):
    batcher, _ = _batcher(week, 12, 12)
    other = make_splits(2016, SplitRatios(), WindowParams(t_in=12, t_out=3)).val

    with pytest.raises(ValueError, match="12 -> 3"):
        next(batcher.batches(other, 8))


def test_nan_inputs_become_zero_but_raw_inputs_and_targets_keep_them(week):
    values = week.values[:48].copy()
    values[3, 7, 0] = np.nan  # an input step of the window at 0
    values[10, 7, 0] = np.nan  # a target step of the same window
    scaler = StandardScaler.fit(week.values, null_value=0.0)
    batcher = WindowBatcher(values, calendar_features(week.timestamps[:48]), scaler, 6, 6)

    batch = batcher.gather([0])
    assert batch.x[0, 3, 7, 0] == 0.0  # the training mean, in normalised units
    assert torch.isfinite(batch.x).all()
    assert torch.isnan(batch.y[0, 4, 7, 0])
    assert torch.isnan(batch.x_raw[0, 3, 7, 0])  # the reconstruction target still sees it as missing


def test_batch_moves_to_a_device_as_a_whole(week):
    batcher, _ = _batcher(week, 12, 12)

    moved = batcher.gather([0, 1]).to("cpu")
    assert isinstance(moved, Batch)
    assert all(t.device.type == "cpu" for t in (moved.x, moved.cal, moved.cal_y, moved.y, moved.start))
