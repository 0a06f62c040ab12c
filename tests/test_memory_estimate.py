"""A training step's memory is estimated before training; a step over the budget is refused at
once, with the numbers and the batch size that fits (bench/memory_estimate.py compares the
estimate with measured peaks)."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import torch
from torch import nn

from gptst.errors import InputError
from gptst.params import load_params
from gptst.training.finetune import DownstreamData, build_forecaster, finetune, finetune_memory_estimate
from gptst.training.memory import MemoryEstimate, check_memory, saved_activation_bytes
from gptst.training.pretrain import pretrain

from .baseline_checks import week_graph
from .conftest import REPO_ROOT

NODES = 40


@pytest.fixture(scope="module")
def series(week):
    return dataclasses.replace(
        week, values=np.ascontiguousarray(week.values[:, :NODES]), node_ids=week.node_ids[:NODES]
    )


def tiny_params(**overrides):
    return load_params(REPO_ROOT / "params.yaml", {"preset": "tiny", "finetune.common.batch_size": 16, **overrides})


@pytest.fixture(scope="module")
def params():
    return tiny_params()


@pytest.fixture(scope="module")
def data(params, series, week):
    return DownstreamData.prepare(params, series, week_graph(week, nodes=NODES))


def real_saved_bytes(step, module: nn.Module) -> int:
    """What a real run of ``step`` saves for backward, storages counted once, weights not counted."""
    storages: dict[int, int] = {}
    weights = {t.untyped_storage().data_ptr() for t in [*module.parameters(), *module.buffers()]}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in weights:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(storages.values())


def test_the_trace_counts_the_activations_a_network_saves_for_backward():
    net = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))
    # The first layer keeps its input [B, 10]; the ReLU its output [B, 20], which the second layer
    # also reads (one storage). Weights are not activations.
    assert saved_activation_bytes(lambda: net(torch.zeros(32, 10)).sum(), net.parameters()) == 32 * (10 + 20) * 4


@pytest.mark.parametrize("baseline", ["tgcn", "gwn"])
def test_the_trace_on_fake_tensors_counts_what_a_real_step_saves(params, data, baseline):
    forecaster = build_forecaster(params, data, baseline, "plain")
    batch = data.batcher.gather(data.splits.train.starts[:4])
    real = real_saved_bytes(lambda: forecaster(batch.x, batch.cal), forecaster)
    weights = [*forecaster.parameters(), *forecaster.buffers()]
    fake = saved_activation_bytes(lambda: forecaster(torch.zeros_like(batch.x), torch.zeros_like(batch.cal)), weights)
    assert fake == pytest.approx(real, rel=0.02)


def test_the_estimate_grows_with_the_batch_and_leaves_the_model_untouched(params, data):
    forecaster = build_forecaster(params, data, "gwn", "plain")  # batch norm: a forward changes its counters
    before = {k: v.clone() for k, v in forecaster.state_dict().items()}
    rng = torch.random.get_rng_state()
    estimate = finetune_memory_estimate(params, data, "gwn", "plain", forecaster, "cpu")
    assert all(torch.equal(before[k], v) for k, v in forecaster.state_dict().items())
    assert torch.equal(rng, torch.random.get_rng_state())
    assert estimate.batch_size == 16 and estimate.activations_per_window_mb > 0
    assert estimate.total_mb(32) - estimate.total_mb(16) == pytest.approx(2 * 16 * estimate.activations_per_window_mb)
    assert estimate.data_mb == pytest.approx((data.batcher.raw.nbytes + data.batcher.calendar.nbytes) / 2**20)


@pytest.mark.parametrize("budget", [300.0, 900.0, 5000.0])
def test_the_largest_batch_that_fits_is_the_last_one_under_the_budget(budget):
    estimate = MemoryEstimate("x", 64, data_mb=40, weights_mb=10, optimizer_mb=30, fixed_activations_mb=5,
                              activations_per_window_mb=7.5)  # fmt: skip
    fits = estimate.largest_batch(budget)
    assert estimate.total_mb(fits) <= budget < estimate.total_mb(fits + 1)


def test_a_finetune_over_its_budget_fails_before_training_with_the_numbers(params, data, tmp_path):
    tight = tiny_params(**{"finetune.common.max_memory_mb": 140})
    with pytest.raises(InputError) as err:
        finetune(tight, data, "gwn", "plain", state_dir=tmp_path)
    message = str(err.value)
    assert message.startswith("params.yaml: finetune.common.batch_size:")
    assert re.search(
        r"finetune gwn/plain over 40 nodes at batch 16: [\d,]+ MB estimated \(runtime 128 \+ data", message
    )
    assert "exceeds the budget of 140 MB (finetune.common.max_memory_mb)" in message
    fits = int(re.search(r"finetune.common.batch_size: (\d+) fits", message).group(1))
    assert 1 <= fits < 16
    assert not any(tmp_path.iterdir())  # not one step taken, no checkpoint written


def test_a_pretraining_over_its_budget_names_what_activation_checkpointing_would_need(params, series, tmp_path):
    tight = tiny_params(**{"pretrain.max_memory_mb": 129})
    with pytest.raises(InputError) as err:
        pretrain(tight, series, state_dir=tmp_path)
    message = str(err.value)
    assert message.startswith("params.yaml: pretrain.batch_size:") and "pre-training GPT-ST over 40 nodes" in message
    assert "no batch size fits" in message
    assert re.search(r"pretrain.model.activation_checkpointing: true needs [\d,]+ MB at batch", message)
    assert not any(tmp_path.iterdir())


def test_within_the_budget_the_run_proceeds_and_reports_its_estimate(params, data, tmp_path):
    quick = tiny_params(**{"finetune.common.epochs": 1, "finetune.common.max_batches_per_epoch": 1})
    result = finetune(quick, data, "tgcn", "plain", state_dir=tmp_path)
    assert result.memory is not None and result.memory.total_mb() < 1024
    check_memory(result.memory, (result.memory.total_mb(), "the budget"), "finetune.common.batch_size")


@pytest.mark.parametrize("baseline", ["gwn", "astgcn"])
def test_small_networks_are_traced_for_real_and_agree_with_the_fake_trace(params, data, baseline, monkeypatch):
    import gptst.training.memory as memory

    forecaster = build_forecaster(params, data, baseline, "plain")
    real = finetune_memory_estimate(params, data, baseline, "plain", forecaster, "cpu")  # 40 nodes: real
    monkeypatch.setattr(memory, "REAL_TRACE_MAX_NODES", 0)
    fake = finetune_memory_estimate(params, data, baseline, "plain", forecaster, "cpu")
    assert real.activations_per_window_mb == pytest.approx(fake.activations_per_window_mb, rel=0.02)
    assert real.fixed_activations_mb == pytest.approx(fake.fixed_activations_mb, rel=0.05, abs=0.01)
