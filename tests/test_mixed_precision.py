"""The GPU's mixed precision, exercised on the CPU: the device policy trains under bfloat16
autocast on CUDA, float16 (with loss scaling) where the GPU lacks bfloat16. Every baseline, in the
plain variant and fused with a GPT-ST encoder (gptst), takes a forward and backward step under
each autocast at the tiny preset's sizes and gets finite float32 gradients (but ST-MGCN's plain
variant in float16: oneDNN's CPU LSTM has no float16 kernel for its one-channel input).
A hand-written kernel whose in-place products mix the autocast dtype with float32 parameters fails
here (the gated fusion did, before it cast its inputs)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml

from gptst.data.calendar import calendar_features
from gptst.models.baselines.registry import build_baseline, graphs_needed, registered_baselines
from gptst.models.forecaster import Forecaster, input_dim
from gptst.models.gptst.config import GptstConfig
from gptst.models.gptst.model import build_model

from .baseline_checks import derived_week_graph, week_windows
from .conftest import REPO_ROOT

NODES = 24
WINDOWS = 4
TINY = yaml.safe_load((REPO_ROOT / "presets" / "tiny.yaml").read_text())["baselines"]


@pytest.fixture(scope="module")
def graph(week):
    return derived_week_graph(week, graphs_needed(registered_baselines()), NODES)


def _encoder(hidden: int) -> torch.nn.Module:
    torch.manual_seed(1)
    cfg = GptstConfig(
        num_nodes=NODES,
        t_in=12,
        channels=1,
        hidden=hidden,
        embed=4,
        clusters=4,
        cross_hyperedges=4,
        temporal_hyperedges=4,
    )
    return build_model(cfg).eval()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("variant", ["plain", "gptst"])
@pytest.mark.parametrize("name", registered_baselines())
def test_every_baseline_trains_a_step_under_autocast(week, graph, name, variant, dtype):
    if dtype == torch.float16 and name == "stmgcn" and variant == "plain":
        # "could not create a primitive descriptor for the LSTM forward propagation primitive"
        pytest.skip("oneDNN's CPU LSTM has no float16 kernel for ST-MGCN's one-channel input (a CPU limit)")
    x, y, _ = week_windows(week, windows=WINDOWS, nodes=NODES)
    cal = calendar_features(week.timestamps)
    cal = torch.from_numpy(np.stack([cal[s : s + 12] for s in np.arange(WINDOWS) * 6])).float()  # week_windows' starts
    hidden = 8
    encoder = _encoder(hidden) if variant == "gptst" else None
    torch.manual_seed(0)
    baseline = build_baseline(
        name,
        num_nodes=NODES,
        in_dim=input_dim(variant, 1, hidden),
        out_dim=1,
        in_steps=12,
        out_steps=12,
        graph=graph,
        params=TINY.get(name),
    )
    forecaster = Forecaster(baseline, variant, encoder=encoder, channels=1).train()
    with torch.autocast("cpu", dtype=dtype):
        forecast = forecaster(x, cal)
    assert forecast.shape == (WINDOWS, 12, NODES, 1)
    loss = (forecast.float() - x).abs().mean()  # any loss: the gradients' dtype and finiteness are the point
    loss.backward()
    params = forecaster.trainable_parameters()
    grads = {n: p.grad for n, p in forecaster.named_parameters() if p.requires_grad}
    assert all(p.dtype == torch.float32 for p in params)
    assert any(g is not None for g in grads.values())
    for n, g in grads.items():
        assert g is None or (g.dtype == torch.float32 and torch.isfinite(g).all()), n
    if variant == "gptst":
        assert all(grads[f"fusion.{n}"] is not None for n, _ in forecaster.fusion.named_parameters())


def test_pretraining_and_a_gptst_finetune_run_end_to_end_under_the_gpus_autocast(week, tmp_path, monkeypatch):
    """The stage functions with the trainer's device policy replaced by the GPU's autocast
    (bfloat16; the CPU's chunked kernels stay): one pre-training epoch with its validation, the
    encode cache, and one T-GCN gptst epoch with its validation and test scoring, all finite."""
    import gptst.training.trainer as trainer_module
    from gptst.device import DevicePolicy
    from gptst.io import sha256_file
    from gptst.models.encoded import EncodedCache
    from gptst.models.gptst.bundle import load_encoder
    from gptst.params import load_params
    from gptst.training.finetune import DownstreamData, cache_encoder, finetune
    from gptst.training.pretrain import pretrain

    from .baseline_checks import week_graph

    asked: list[str] = []

    def gpu_like(device):
        asked.append(str(device))
        return DevicePolicy(chunked=True, autocast_dtype=torch.bfloat16, retain_heap=True)

    monkeypatch.setattr(trainer_module, "device_policy", gpu_like)
    autocasts: list[torch.dtype | None] = []
    original = trainer_module.Trainer._autocast

    def recorded(self):
        autocasts.append(self.amp_dtype)
        return original(self)

    monkeypatch.setattr(trainer_module.Trainer, "_autocast", recorded)
    params = load_params(
        REPO_ROOT / "params.yaml", {"preset": "tiny", "pretrain.epochs": 1, "finetune.common.epochs": 1}
    )
    result = pretrain(params, week, state_dir=tmp_path / "pretrain")
    assert asked and autocasts and set(autocasts) == {torch.bfloat16}  # every step and validation autocast
    assert math.isfinite(result.val_mae) and math.isfinite(result.fit.history[0]["train_loss"])
    path = result.save_encoder(tmp_path / "encoder.pt", params, week, dataset_sha256="test")
    bundle = load_encoder(path)
    data = DownstreamData.prepare(params, week, week_graph(week), "cpu")
    sha = sha256_file(path)
    cache_encoder(tmp_path / "encoded", params, data, bundle, encoder_sha256=sha, device="cpu")
    tuned = finetune(
        params,
        data,
        "tgcn",
        "gptst",
        encoder_bundle=bundle,
        cache=EncodedCache.open(tmp_path / "encoded", sha),
        state_dir=tmp_path / "finetune",
    )
    assert math.isfinite(tuned.fit.history[0]["train_loss"]) and math.isfinite(tuned.fit.history[0]["val_metric"])
    assert all(math.isfinite(v) for row in tuned.test.values() for v in row.values())
    assert np.isfinite(tuned.test_pred).all()
    assert set(autocasts) == {torch.bfloat16}
