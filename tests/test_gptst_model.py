"""GPT-ST mask autoencoder (GPTST_SPEC sections 1-4 and 9) on real METR-LA / NYC bike windows."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gptst.data.calendar import calendar_features
from gptst.data.scaler import StandardScaler
from gptst.models.gptst import layers
from gptst.models.gptst import model as gptst_model
from gptst.models.gptst.config import GptstConfig
from gptst.models.gptst.model import GPTST, build_model
from gptst.params import GptstModelParams
from gptst.training.pretrain import gptst_config

# The reference's counts at METR-LA defaults (N=207, C=1, T=12, D=64, E=16, e=4, HS=10, HT=16, HTt=8).
REFERENCE = {"total": 1_045_411, "encoder": 591_706, "decoder": 453_705, "predictor": 138_090}
STARTS = (0, 290, 700, 1100)  # window starts across the week: midnight Thursday, Friday, ...


def _windows(series, t_in: int, starts=STARTS, nodes: int | None = None):
    """Normalised x [B,T,N,C], calendar [B,T,4] and the per-channel normalised raw 0 of real windows."""
    values = series.values if nodes is None else series.values[:, :nodes]
    scaler = StandardScaler.fit(values[: int(0.7 * len(values))], null_value=series.null_value)
    scaled = np.nan_to_num(scaler.transform(values))
    calendar = calendar_features(series.stamps, series.freq)
    x = torch.from_numpy(np.stack([scaled[s : s + t_in] for s in starts]))
    cal = torch.from_numpy(np.stack([calendar[s : s + t_in] for s in starts]))
    zero_value = tuple(float(v) for v in -scaler.mean / scaler.std)
    return x, cal, zero_value


def _mask(x: torch.Tensor, ratio: float = 0.25, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(x.shape[:3], generator=generator) < ratio


def _model(x, zero_value, seed: int = 0, **overrides) -> GPTST:
    torch.manual_seed(seed)
    _, T, N, C = x.shape
    return build_model(GptstConfig(num_nodes=N, t_in=T, channels=C, zero_value=zero_value, **overrides))


def _losses(model: GPTST, x, cal, mask):
    """Masked MAE of the reconstruction (normalised units) and KL(Cw1 || q) with log_softmax."""
    out = model(x, cal, mask)
    cells = mask.unsqueeze(-1).expand_as(x)
    recon = (out.recon - x).abs()[cells].mean()
    kl = None
    if out.cw1 is not None:
        log_q = F.log_softmax(model.predict_clusters(x, cal), dim=-1)
        kl = F.kl_div(log_q, out.cw1, reduction="none").sum(-1).mean()
    return out, recon, kl


def _grads(model: GPTST) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def _expected_count(N, T, C, *, D=64, E=16, e=4, HS=10, HT=16, HTt=8, customised=True, clusters=True, learned=False):
    """Parameter count of GPTST_SPEC sections 1-4 at these sizes, from the spec alone.

    Generated weights are pools [E, *shape]; static ones (customised False) are one [*shape]
    and need no node embedding or time encoder. A per-step time encoder on the 4 calendar
    features is Linear(4->d, no bias) + 3 Linear(d->d); the window encoder Linear(4T->d, no bias)
    + 3 Linear(d->d). Without clusters there are no capsule blocks, their learners, or predictor.
    """
    pooled = E if customised else 1

    def step_encoder(d):
        return 4 * d + 3 * (d * d + d)

    def window_encoder(d):
        return 4 * T * d + 3 * (d * d + d)

    temporal = (E if customised else 1) * HTt * T + pooled * (D * D + D)
    capsule = (D * D + D) + (e if customised else 1) * (HS * N + HT * HS * T) + pooled * (D * D + D)
    stack = 4 * temporal
    if customised:
        stack += N * E + step_encoder(E)
    if clusters:
        stack += 2 * capsule
        if customised:
            stack += N * E + step_encoder(e) + window_encoder(e)
    predictor = 0
    if clusters:
        predictor = (C * D + D) + 2 * pooled * (D * D + D) + (D * HS + HS)
        if customised:
            predictor += N * E + step_encoder(E)
    encoder = (C * D + D) + (D if learned else 0) + stack + predictor
    decoder = stack + (D * C + C)
    return {"total": encoder + decoder, "encoder": encoder, "decoder": decoder, "predictor": predictor}


# ---------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize(("t_in", "nodes"), [(12, None), (6, 20), (24, 20)])
def test_output_shapes_on_metr_la_windows_for_any_window_length(week, t_in, nodes):
    x, cal, zero_value = _windows(week, t_in, STARTS[:2], nodes=nodes)
    model = _model(x, zero_value)
    B, T, N, C = x.shape

    out = model(x, cal, _mask(x))

    assert out.recon.shape == (B, T, N, C)
    assert out.cw1.shape == (B, T, N, 10)
    assert out.hidden.shape == (B, T, N, 64)
    assert model.predict_clusters(x, cal).shape == (B, T, N, 10)
    assert model.encode(x, cal).shape == (B, T, N, 64)
    torch.testing.assert_close(out.cw1.sum(-1), torch.ones(B, T, N))  # a distribution over clusters
    assert torch.isfinite(out.recon).all()


def test_output_shapes_with_two_channels_on_the_nyc_bike_grid(bike):
    x, cal, zero_value = _windows(bike, 12, (0, 100, 500))
    model = _model(x, zero_value)

    out = model(x, cal, _mask(x))

    assert x.shape == (3, 12, 128, 2)
    assert out.recon.shape == (3, 12, 128, 2)
    assert out.cw1.shape == (3, 12, 128, 10)


def test_the_step_position_bias_is_step_over_t_not_over_12(week):
    x, _, zero_value = _windows(week, 24, STARTS[:1], nodes=20)
    model = _model(x, zero_value)
    capsule = next(m for m in model.modules() if isinstance(m, layers.CapsuleHyperLayer))

    torch.testing.assert_close(capsule.step_position, torch.arange(1, 25) / 24.0)


def test_inputs_of_the_wrong_size_are_refused_with_the_expected_shape(week):
    x, cal, zero_value = _windows(week, 12, STARTS[:2], nodes=20)
    model = _model(x, zero_value)

    with pytest.raises(ValueError, match=r"T=12, N=20, C=1"):
        model(x[:, :6], cal[:, :6])
    with pytest.raises(ValueError, match="mask must be bool"):
        model(x, cal, _mask(x).float())


# ------------------------------------------------------------------------- parameter count
def test_parameter_count_at_metr_la_defaults_is_the_reference_count_within_1_percent():
    """1,045,435 vs the reference's 1,045,411 (+24), each difference stated:

    - encoder +88: the window encoder giving tau_s reads the 4 sin/cos calendar sequences with
      one Linear(4T -> e, no bias) (192 weights) where the reference reads 2 z-scored index
      sequences with two Linear(T -> e) (2 * (48 + 4) = 104). Per-step time encoders match the
      reference exactly: Linear(4 -> d, no bias) has the 4d parameters of its two Linear(1 -> d).
    - decoder -64: the same +88, and -152 for the reference decoder's two time encoders
      (time_feature1_, time_feature2_, 76 each) that its forward never calls: they would never
      receive a gradient.
    - mask predictor: identical (138,090).
    """
    model = build_model(GptstConfig(num_nodes=207, t_in=12, channels=1, zero_value=(-1.0,)))

    counts = model.parameter_counts()

    assert counts == {"total": 1_045_435, "encoder": 591_794, "decoder": 453_641, "predictor": 138_090}
    assert counts == _expected_count(207, 12, 1)
    assert counts["total"] - REFERENCE["total"] == 88 + 88 - 152
    for part, reference in REFERENCE.items():
        assert abs(counts[part] - reference) <= 0.01 * reference, part
    assert counts["total"] == sum(p.numel() for p in model.parameters())


def test_autoencoder_and_predictor_parameters_are_disjoint_and_cover_the_model():
    model = build_model(GptstConfig(num_nodes=20, t_in=12, channels=1))

    auto = {id(p) for p in model.autoencoder_parameters()}
    pred = {id(p) for p in model.predictor_parameters()}

    assert auto and pred and not auto & pred
    assert auto | pred == {id(p) for p in model.parameters()}
    assert sum(p.numel() for p in model.predictor_parameters()) == model.parameter_counts()["predictor"]


# ------------------------------------------------------------------------------------ init
def test_init_is_xavier_uniform_for_matrices_and_uniform_0_1_for_vectors():
    model = build_model(GptstConfig(num_nodes=207, t_in=12, channels=1, mask_token="learned"))

    vectors = []
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            fan_in, fan_out = torch.nn.init._calculate_fan_in_and_fan_out(p)
            bound = (6.0 / (fan_in + fan_out)) ** 0.5
            assert p.abs().max() <= bound, name
            assert p.abs().max() > 0.5 * bound, name  # filled, not left at zero or uninitialised
        else:
            assert p.min() >= 0 and p.max() < 1 and p.max() > 0, name
            vectors.append(p.detach())
    pooled = torch.cat(vectors)  # biases and the learned mask token
    assert len(pooled) > 500
    assert abs(pooled.mean() - 0.5) < 0.05 and abs(pooled.std() - 12**-0.5) < 0.05  # uniform(0, 1)


def test_config_from_params_takes_every_model_switch():
    params = GptstModelParams(hidden=32, clusters=5, customised_params=False, mask_token="learned", impl="naive")

    cfg = gptst_config(params, num_nodes=20, t_in=6, channels=2, zero_value=[-1.5, -0.5])

    assert (cfg.num_nodes, cfg.t_in, cfg.channels, cfg.zero_value) == (20, 6, 2, (-1.5, -0.5))
    switches = (cfg.hidden, cfg.clusters, cfg.customised_params, cfg.mask_token, cfg.impl)
    assert switches == (32, 5, False, "learned", "naive")
    assert GptstConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="zero_value has 1 values for 2 channels"):
        GptstConfig(num_nodes=20, t_in=6, channels=2, zero_value=(0.0,))


# ---------------------------------------------------------------------------- naive twin
@pytest.mark.parametrize(
    ("chunk_samples", "micro_batch_samples", "overrides"),
    [
        (None, None, {}),
        (1, None, {}),
        (2, 2, {}),
        (1, None, {"customised_params": False}),
        (None, None, {"mask_token": "learned"}),
    ],
    ids=["one-chunk", "sample-by-sample", "chunks-and-micro-batches-of-2", "static-weights", "learned-token"],
)
def test_fast_and_naive_give_the_same_reconstruction_cw1_and_gradients(
    week, monkeypatch, chunk_samples, micro_batch_samples, overrides
):
    """Weights copied from fast to naive (same state_dict keys), one masked pass and one backward.

    Compared in float64, where both implementations agree to ~1e-13: in float32 the different
    summation orders alone reach ~1e-5 on gradients summed over B*T*N cells, while a real
    difference shows at 1e-2. On the CPU the fast model runs large batches in micro-batches and
    its kernels walk each in chunks; the parametrisation forces every path (one sample, several
    samples, one chunk; 3 windows in micro-batches of 2 and 1).
    """
    x, cal, zero_value = _windows(week, 12, STARTS[:3], nodes=20)
    per_sample = 12 * 20 * 64
    if chunk_samples is not None:
        monkeypatch.setattr(layers, "STEP_CHUNK_FLOATS", chunk_samples * per_sample)
        monkeypatch.setattr(layers, "NODE_CHUNK_FLOATS", chunk_samples * per_sample)
    if micro_batch_samples is not None:
        monkeypatch.setattr(gptst_model, "CPU_MICRO_BATCH_FLOATS", micro_batch_samples * per_sample)
    fast = _model(x, zero_value, **overrides).double()
    naive = build_model(dataclasses.replace(fast.cfg, impl="naive")).double()
    naive.load_state_dict(fast.state_dict())
    x, cal, mask = x.double(), cal.double(), _mask(x)

    results = []
    for model in (fast, naive):
        out, recon, kl = _losses(model, x, cal, mask)
        (recon + kl + out.hidden.square().mean()).backward()
        results.append((out, _grads(model)))
    (out_fast, grads_fast), (out_naive, grads_naive) = results

    torch.testing.assert_close(out_fast.recon, out_naive.recon, atol=1e-5, rtol=0)
    torch.testing.assert_close(out_fast.cw1, out_naive.cw1, atol=1e-5, rtol=0)
    torch.testing.assert_close(out_fast.hidden, out_naive.hidden, atol=1e-5, rtol=0)
    assert grads_fast.keys() == grads_naive.keys()
    for name in grads_fast:
        torch.testing.assert_close(grads_fast[name], grads_naive[name], atol=1e-5, rtol=0, msg=name)


def test_fast_and_naive_agree_in_float32_too(week):
    x, cal, zero_value = _windows(week, 12, STARTS[:2], nodes=20)
    fast = _model(x, zero_value)
    naive = build_model(dataclasses.replace(fast.cfg, impl="naive"))
    naive.load_state_dict(fast.state_dict())
    mask = _mask(x)

    with torch.no_grad():
        out_fast, out_naive = fast(x, cal, mask), naive(x, cal, mask)

    torch.testing.assert_close(out_fast.recon, out_naive.recon, atol=1e-5, rtol=0)
    torch.testing.assert_close(out_fast.cw1, out_naive.cw1, atol=1e-5, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the GPU path is checked where a GPU exists")
def test_on_cuda_the_fast_model_matches_the_naive_twin_in_float64_and_under_bfloat16(week):
    """The CUDA path (whole batches, no chunks or micro-batches, by the device policy) against
    the naive twin on the CPU in float64: float64 on the GPU to ~1e-5; under the trainer's
    bfloat16 autocast, the forward to bfloat16's ~1% and the float32 gradients stay finite."""
    x, cal, zero_value = _windows(week, 12, STARTS, nodes=20)
    fast = _model(x, zero_value)
    naive = build_model(dataclasses.replace(fast.cfg, impl="naive")).double()
    naive.load_state_dict(fast.state_dict())
    mask = _mask(x)
    out_naive, recon_naive, kl_naive = _losses(naive, x.double(), cal.double(), mask)
    (recon_naive + kl_naive).backward()
    grads_naive = _grads(naive)

    gpu = fast.double().cuda()
    out, recon, kl = _losses(gpu, x.double().cuda(), cal.double().cuda(), mask.cuda())
    (recon + kl).backward()
    torch.testing.assert_close(out.recon.cpu(), out_naive.recon, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.cw1.cpu(), out_naive.cw1, atol=1e-5, rtol=0)
    for name, grad in _grads(gpu).items():
        torch.testing.assert_close(grad.cpu(), grads_naive[name], atol=1e-5, rtol=0, msg=name)

    gpu = gpu.float()
    gpu.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out, recon, kl = _losses(gpu, x.cuda(), cal.cuda(), mask.cuda())
    (recon + kl).backward()
    torch.testing.assert_close(out.recon.float().cpu(), out_naive.recon.float(), atol=0.05, rtol=0.02)
    assert all(
        p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in gpu.parameters() if p.grad is not None
    )


# ------------------------------------------------------------------------------- gradients
def test_one_backward_gives_every_parameter_a_nonzero_gradient(week):
    x, cal, zero_value = _windows(week, 12, STARTS, nodes=20)
    model = _model(x, zero_value)

    _, recon, kl = _losses(model, x, cal, _mask(x))
    (recon + 0.1 * kl).backward()

    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_the_kl_term_trains_only_the_predictor_and_the_reconstruction_only_the_autoencoder(week):
    x, cal, zero_value = _windows(week, 12, STARTS[:2], nodes=20)
    model = _model(x, zero_value)
    mask = _mask(x)

    _, _, kl = _losses(model, x, cal, mask)
    kl.backward()
    assert all(p.grad is None for p in model.autoencoder_parameters())  # Cw1 is a detached target
    assert all(p.grad is not None for p in model.predictor_parameters())

    model.zero_grad(set_to_none=True)
    _losses(model, x, cal, mask)[1].backward()
    assert all(p.grad is None for p in model.predictor_parameters())


# ----------------------------------------------------------------------------------- masks
def test_masked_cells_take_the_zero_value_and_the_calendar_is_never_masked(week):
    x, cal, zero_value = _windows(week, 12, STARTS[:2], nodes=20)
    model = _model(x, zero_value)
    mask = _mask(x, ratio=0.5)
    seen_calendars = []
    for module in model.modules():
        if isinstance(module, layers.CalendarEncoder):
            module.register_forward_hook(lambda mod, args, out: seen_calendars.append(args[0]))

    with torch.no_grad():
        masked = model(x, cal, mask)
        zeroed = torch.where(mask.unsqueeze(-1), torch.tensor(zero_value), x)
        by_hand = model(zeroed, cal)

    # Masking is exactly "replace the masked cells, every channel, by the normalised raw 0".
    torch.testing.assert_close(masked.recon, by_hand.recon, atol=0, rtol=0)
    torch.testing.assert_close(masked.cw1, by_hand.cw1, atol=0, rtol=0)
    assert mask.any() and not torch.equal(zeroed, x)
    # Every time encoder (both stacks, per-step and window) read the calendar untouched.
    assert len(seen_calendars) == 2 * 2 * 3
    for seen in seen_calendars:
        assert torch.equal(seen, cal)


def test_masking_with_the_zero_token_needs_the_zero_value():
    model = build_model(GptstConfig(num_nodes=20, t_in=12, channels=1))
    x, cal = torch.zeros(1, 12, 20, 1), torch.zeros(1, 12, 4)

    model(x, cal)  # unmasked use needs no zero value
    with pytest.raises(ValueError, match="needs GptstConfig.zero_value"):
        model(x, cal, torch.ones(1, 12, 20, dtype=torch.bool))


def test_with_the_learned_token_masked_input_values_do_not_reach_the_model(week):
    x, cal, zero_value = _windows(week, 12, STARTS[:2], nodes=20)
    model = _model(x, zero_value, mask_token="learned")
    mask = _mask(x)
    scrambled = torch.where(mask.unsqueeze(-1), torch.randn_like(x) * 10, x)
    unmasked_change = x.clone()
    unmasked_change[~mask] += 1.0

    with torch.no_grad():
        out = model(x, cal, mask)
        out_scrambled = model(scrambled, cal, mask)
        out_changed = model(unmasked_change, cal, mask)

    torch.testing.assert_close(out.recon, out_scrambled.recon, atol=0, rtol=0)
    assert not torch.allclose(out.recon, out_changed.recon)
    assert model.encoder.mask_token is not None and model.encoder.mask_token.shape == (64,)


# ------------------------------------------------------------------------------- ablations
@pytest.mark.parametrize(
    "overrides",
    [{"customised_params": False}, {"use_clusters": False}, {"customised_params": False, "use_clusters": False}],
    ids=["static-weights", "no-clusters", "both"],
)
def test_each_ablation_builds_trains_one_step_and_has_the_spec_parameter_count(week, overrides):
    x, cal, zero_value = _windows(week, 12, STARTS, nodes=20)
    model = _model(x, zero_value, **overrides)
    full = _model(x, zero_value)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)

    out, recon, kl = _losses(model, x, cal, _mask(x))
    loss = recon if kl is None else recon + 0.1 * kl
    loss.backward()
    optimiser.step()

    expected = _expected_count(
        20, 12, 1, customised=overrides.get("customised_params", True), clusters=overrides.get("use_clusters", True)
    )
    assert model.parameter_counts() == expected
    assert model.parameter_counts()["total"] < full.parameter_counts()["total"]
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert not torch.equal(p, before[name]), name  # every parameter moved
    if not overrides.get("use_clusters", True):
        assert out.cw1 is None and model.predictor is None and model.predictor_parameters() == []
        assert not any(isinstance(m, layers.CapsuleHyperLayer) for m in model.modules())
        with pytest.raises(ValueError, match="no clusters"):
            model.predict_clusters(x, cal)
    if not overrides.get("customised_params", True):
        assert not any(isinstance(m, layers.CalendarEncoder) for m in model.modules())


def test_static_weights_at_metr_la_defaults_drop_the_embedding_axis_of_every_pool():
    counts = build_model(GptstConfig(num_nodes=207, t_in=12, channels=1, customised_params=False)).parameter_counts()
    no_clusters = build_model(GptstConfig(num_nodes=207, t_in=12, channels=1, use_clusters=False)).parameter_counts()

    assert counts == _expected_count(207, 12, 1, customised=False)
    assert no_clusters == _expected_count(207, 12, 1, clusters=False)
    assert counts["total"] < REFERENCE["total"] / 10  # pools [E, D, D] became [D, D]


def test_bfloat16_autocast_runs_the_fast_kernels_and_keeps_float32_gradients(week):
    """The mixed-precision code path (CUDA in production) exercised on the CPU in bfloat16."""
    x, cal, zero_value = _windows(week, 12, STARTS[:2], nodes=20)
    model = _model(x, zero_value)
    mask = _mask(x)
    with torch.no_grad():
        reference = model(x, cal, mask).recon

    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, cal, mask)
        log_q = F.log_softmax(model.predict_clusters(x, cal).float(), dim=-1)
    loss = (out.recon.float() - x).abs().mean() + F.kl_div(log_q, out.cw1.float(), reduction="batchmean")
    loss.backward()

    assert out.recon.dtype == torch.bfloat16
    torch.testing.assert_close(out.recon.float(), reference, atol=0.1, rtol=0.05)
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), name


# ------------------------------------------------------------------ checkpointing, determinism
def test_activation_checkpointing_gives_the_same_outputs_and_gradients(week):
    x, cal, zero_value = _windows(week, 12, STARTS[:2], nodes=20)
    plain = _model(x, zero_value)
    checkpointed = _model(x, zero_value, activation_checkpointing=True)
    checkpointed.load_state_dict(plain.state_dict())
    mask = _mask(x)

    results = []
    for model in (plain, checkpointed):
        out, recon, kl = _losses(model, x, cal, mask)
        (recon + kl).backward()
        results.append((out, _grads(model)))

    torch.testing.assert_close(results[0][0].recon, results[1][0].recon, atol=0, rtol=0)
    torch.testing.assert_close(results[0][0].cw1, results[1][0].cw1, atol=0, rtol=0)
    for name, grad in results[0][1].items():
        torch.testing.assert_close(grad, results[1][1][name], atol=1e-7, rtol=1e-6, msg=name)


def test_same_seed_gives_bit_identical_outputs_and_gradients(week):
    x, cal, zero_value = _windows(week, 12, STARTS[:2], nodes=20)
    runs = []
    for _ in range(2):
        model = _model(x, zero_value, seed=7)
        out, recon, kl = _losses(model, x, cal, _mask(x, seed=3))
        (recon + kl).backward()
        runs.append((out, _grads(model)))

    assert torch.equal(runs[0][0].recon, runs[1][0].recon)
    assert torch.equal(runs[0][0].cw1, runs[1][0].cw1)
    assert all(torch.equal(g, runs[1][1][name]) for name, g in runs[0][1].items())
    with torch.no_grad():
        other = _model(x, zero_value, seed=8)(x, cal, _mask(x, seed=3))
    assert not torch.allclose(other.recon, runs[0][0].recon)  # the seed does matter
