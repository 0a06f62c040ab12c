"""Data-parallel training (torchrun, 2 CPU ranks, gloo) computes what one process computes on the
union of both ranks' batches: pre-training and finetuning at 716 nodes (the week tiled, SYNTHETIC).

The worker (tests/scripts/ddp_worker.py) runs the library's ``pretrain`` under torchrun, so what is
tested is the real wiring: DistributedDataParallel around the objective (find_unused_parameters:
the predictor has no loss up to E0), per-rank batch shards from ``epoch_batches``, a masker seeded
``seed + rank`` on each rank, per-group clipping and Adam after the gradient all-reduce, the
scheduler, and the per-rank checkpoint state.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from gptst.data.batch import WindowBatcher
from gptst.data.scaler import fit_train_scaler
from gptst.data.series import load_series, write_series
from gptst.data.windows import make_splits
from gptst.models.gptst.model import build_model
from gptst.models.gptst.objective import PretrainObjective
from gptst.params import load_params
from gptst.training.grad import clip_grad_norm
from gptst.training.pretrain import gptst_config, pretrain_masker, zero_value
from gptst.training.trainer import epoch_batches

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "scripts" / "ddp_worker.py"
WORLD = 2
# Two epochs of two steps; E0 = round(0.5 * 2) = 1, so epoch 1 is the uniform phase (the predictor
# is unused: DDP must leave its gradients alone) and epoch 2 the adaptive phase (predictor labels
# drive the masks, KL trains the predictor). The lr decays after epoch 1 (scheduler in the loop).
OVERRIDES = {
    "preset": "tiny",
    "pretrain.epochs": 2,
    "pretrain.change_epoch_frac": 0.5,
    "pretrain.max_batches_per_epoch": 2,
    "pretrain.batch_size": 8,
    "pretrain.lr_decay_epochs": [1],
}


def reference_run(params, series) -> SimpleNamespace:
    """One process, no DDP: each global step runs rank 0's and rank 1's local batches (the shards
    ``epoch_batches`` gives ranks 0 and 1 of 2) with maskers seeded ``seed + 0`` and ``seed + 1``,
    backpropagates ``loss_0 / 2`` and ``loss_1 / 2`` into the same gradients, clips each parameter
    group and takes one Adam step.

    Why this is what DDP computes: both ranks start from identical weights (same seed, and DDP
    broadcasts rank 0's at construction) and apply identical updates, so at every step they hold
    the same weights as this single model. Each rank's backward yields the gradient g_r of its own
    local loss; DDP all-reduces them to (g_0 + g_1) / 2 before ``backward`` returns, i.e. the
    gradient of the mean of the two local losses, which the two half-weighted backward passes here
    accumulate (g_0 / 2 + g_1 / 2: halving is exact in floating point and a sum of two terms does
    not depend on their order, so the match can even be bit-exact). A parameter no rank used
    (the predictor up to E0) keeps ``grad = None`` in both, so Adam skips it in both. Clipping and
    the optimiser then see the same gradients. There is no other randomness: the model has no
    dropout, batch order is seeded by (seed, epoch), and each rank's masker is its own generator,
    which here are the two maskers. The model has no buffers that a forward pass changes, so DDP's
    buffer broadcast is moot.
    """
    pre, windows = params.pretrain, params.windows
    splits = make_splits(len(series.timestamps), params.dataset.split, windows)
    scaler = fit_train_scaler(series, splits.steps)
    batcher = WindowBatcher.from_series(series, scaler, windows.t_in, windows.t_out)
    cfg = gptst_config(
        pre.model,
        num_nodes=len(series.node_ids),
        t_in=windows.t_in,
        channels=len(series.channels),
        zero_value=zero_value(scaler),
    )
    torch.manual_seed(params.seed)
    model = build_model(cfg)
    initial = {f"model.{k}": v.clone() for k, v in model.state_dict().items()}  # keys as the trainer's
    maskers = [pretrain_masker(pre, seed=params.seed + rank) for rank in range(WORLD)]
    objectives = [
        PretrainObjective(model, masker, scaler, series.null_value, pre.kl_weight, pre.change_epoch)
        for masker in maskers
    ]
    groups = [(model.autoencoder_parameters(), pre.grad_clip), (model.predictor_parameters(), pre.predictor_grad_clip)]
    optimizer = torch.optim.Adam([p for ps, _ in groups for p in ps], lr=pre.lr, weight_decay=pre.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, pre.lr_decay_epochs, gamma=pre.lr_decay_rate)
    model.train()
    train_loss = []  # per epoch: the mean over steps of the mean over ranks of the local losses
    for epoch in range(1, pre.epochs + 1):
        shards = [
            epoch_batches(splits.train.starts, pre.batch_size, epoch, params.seed, rank, WORLD)[
                : pre.max_batches_per_epoch
            ]
            for rank in range(WORLD)
        ]
        assert len({len(s) for s in shards}) == 1 and len(shards[0]) == pre.max_batches_per_epoch
        step_losses = []
        for local in zip(*shards, strict=True):
            optimizer.zero_grad(set_to_none=True)
            for objective, starts in zip(objectives, local, strict=True):
                loss, _ = objective(batcher.gather(starts), epoch)
                (loss.total / WORLD).backward()
                step_losses.append(float(loss.total.detach()))
            for params_, max_norm in groups:
                clip_grad_norm(params_, max_norm)
            optimizer.step()
        scheduler.step()
        train_loss.append(sum(step_losses) / len(step_losses))
    # The trainer trains (and checkpoints) the objective, whose only submodule is the model.
    return SimpleNamespace(
        weights=objectives[0].state_dict(),
        optimizer=optimizer.state_dict(),
        maskers=maskers,
        initial=initial,
        train_loss=train_loss,
    )


def torchrun(worker: Path, work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``worker`` under torchrun with WORLD CPU ranks of one thread each, in ``work``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    cmd = [
        str(Path(sys.executable).parent / "torchrun"),
        "--standalone",
        "--nproc_per_node",
        str(WORLD),
        str(worker),
        "--params",
        str(REPO / "params.yaml"),
        "--out",
        str(work),
        *args,
    ]
    proc = subprocess.run(cmd, check=False, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc


def tiled_week(week, nodes: int, seed: int = 0):
    """SYNTHETIC: the week's sensors repeated up to ``nodes``, each copy after the first with its own
    Gaussian noise (sd 1 km/h; missing zeros stay zero), so no two nodes carry the same series."""
    rng = np.random.default_rng(seed)
    copies = -(-nodes // len(week.node_ids))
    blocks = [week.values] + [
        np.where(week.values == 0, 0, week.values + rng.normal(0, 1, week.values.shape)).astype(np.float32)
        for _ in range(copies - 1)
    ]
    ids = [f"{k}:{i}" for k in range(copies) for i in week.node_ids]
    return replace(week, values=np.concatenate(blocks, axis=1)[:, :nodes].copy(), node_ids=ids[:nodes])


@pytest.fixture(scope="module")
def ddp_run(week, tmp_path_factory):
    """The torchrun run and the single-process reference, on the same series: the week tiled to
    LargeST's SD size (716 nodes, SYNTHETIC)."""
    work = tmp_path_factory.mktemp("ddp")
    write_series(work / "series.parquet", tiled_week(week, 716))
    proc = torchrun(WORKER, work, "--overrides", json.dumps(OVERRIDES), "--series", str(work / "series.parquet"))
    ranks = [torch.load(work / f"final_rank{r}.pt", weights_only=True) for r in range(WORLD)]
    last = torch.load(work / "state" / "last.pt", weights_only=True)
    rank_states = [
        torch.load(work / "state" / f"rank{r}.epoch{last['epoch']}.pt", weights_only=True) for r in range(WORLD)
    ]

    params = load_params(REPO / "params.yaml", overrides=dict(OVERRIDES))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank does
    try:
        with torch.random.fork_rng(devices=[]):
            reference = reference_run(params, load_series(work / "series.parquet"))
    finally:
        torch.set_num_threads(threads)
    return {
        "stdout": proc.stdout,
        "ranks": ranks,
        "rank_states": rank_states,
        "last": last,
        "reference": reference,
        "params": params,
    }


def test_the_run_is_data_parallel_and_reaches_the_adaptive_phase(ddp_run):
    params = ddp_run["params"]
    assert params.pretrain.change_epoch == 1 < params.pretrain.epochs == 2
    assert all(r["ddp"] for r in ddp_run["ranks"]), "the trainer did not wrap the model in DDP"
    assert ddp_run["last"]["world"] == WORLD and ddp_run["last"]["epoch"] == 2
    history = ddp_run["last"]["history"]
    assert history[0]["train_adaptive_share"] == 0.0 and "train_kl" not in history[0]
    assert history[1]["train_adaptive_share"] > 0 and history[1]["train_kl"] > 0  # predictor + KL ran
    # Only rank 0 reports.
    assert ddp_run["stdout"].count("epoch 2/2") == 1


def test_the_ranks_split_each_global_batch_between_them(week):
    """What "the union of both ranks' batches" means: rank r's step-k batch is its slice of the
    single-process step-k batch of ``world x batch_size`` windows; the slices are disjoint."""
    params = load_params(REPO / "params.yaml", overrides=dict(OVERRIDES))
    starts = make_splits(len(week.timestamps), params.dataset.split, params.windows).train.starts
    size = params.pretrain.batch_size
    for epoch in (1, 2):
        whole = epoch_batches(starts, WORLD * size, epoch, params.seed)
        shards = [epoch_batches(starts, size, epoch, params.seed, rank, WORLD) for rank in range(WORLD)]
        assert len(shards[0]) == len(shards[1]) == len(whole)
        for k, (a, b) in enumerate(zip(*shards, strict=True)):
            assert not set(a.tolist()) & set(b.tolist())
            assert sorted([*a.tolist(), *b.tolist()]) == sorted(whole[k].tolist())
            if len(whole[k]) == WORLD * size:
                assert len(a) == len(b) == size


def test_each_rank_draws_its_own_masks(ddp_run):
    gen0, gen1 = (s["stateful"]["masker"]["rng_state"] for s in ddp_run["rank_states"])
    assert not torch.equal(gen0, gen1)


def test_both_ranks_end_with_identical_weights_and_optimiser_state(ddp_run):
    (a, b) = ddp_run["ranks"]
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    assert_same_optimizer(a["optimizer"], b["optimizer"], atol=0.0)


def test_ddp_equals_one_process_over_the_union_of_the_ranks_batches(ddp_run):
    ref = ddp_run["reference"]
    ref_model, ref_optimizer, ref_maskers, initial = ref.weights, ref.optimizer, ref.maskers, ref.initial
    rank0 = ddp_run["ranks"][0]
    assert rank0["model"].keys() == ref_model.keys()
    worst = {name: (rank0["model"][name] - ref_model[name]).abs().max().item() for name in ref_model}
    # Bit-exact in practice (torch 2.13, CPU, gloo); the tolerance allows an all-reduce that sums in
    # another order or divides after summing.
    off = {name: d for name, d in worst.items() if not d <= 1e-5}
    assert not off, (
        f"{len(off)} of {len(worst)} tensors differ from the single-process reference, worst "
        f"{max(off.values()):.3g}; e.g. {dict(list(off.items())[:3])}"
    )
    # Training moved every parameter (the predictor too): not a comparison of two initialisations.
    unmoved = [k for k, v in initial.items() if v.is_floating_point() and torch.equal(v, rank0["model"][k])]
    assert not unmoved, f"untrained parameters: {unmoved}"
    assert_same_optimizer(rank0["optimizer"], ref_optimizer, atol=1e-5)
    # Adam skipped the predictor in epoch 1 (no gradient on any rank, not a zero one): 2 steps
    # for it, 4 for the autoencoder.
    assert sorted({int(st["step"]) for st in rank0["optimizer"]["state"].values()}) == [2, 4]
    # Each rank's masker drew exactly as often as the reference masker with its seed.
    for state, masker in zip(ddp_run["rank_states"], ref_maskers, strict=True):
        assert torch.equal(state["stateful"]["masker"]["rng_state"], masker.generator.get_state())


def test_the_logged_training_loss_is_the_mean_over_all_ranks(ddp_run):
    """Every rank sees the same epoch loss (so selection on the training loss and early stopping
    decide alike on every rank: a rank that stopped alone would leave the others hanging)."""
    logged = [row["train_loss"] for row in ddp_run["last"]["history"]]
    assert logged == pytest.approx(ddp_run["reference"].train_loss, rel=1e-9, abs=0)


def assert_same_optimizer(a: dict, b: dict, atol: float) -> None:
    """Adam states: the same parameters have state (a skipped, never-used parameter has none),
    the same step counts, and moments within ``atol``."""
    assert a["param_groups"][0]["lr"] == pytest.approx(b["param_groups"][0]["lr"])
    assert sorted(a["state"]) == sorted(b["state"])
    for index, sa in a["state"].items():
        sb = b["state"][index]
        assert torch.equal(sa["step"], sb["step"]), f"param {index}: step {sa['step']} vs {sb['step']}"
        for key in ("exp_avg", "exp_avg_sq"):
            diff = (sa[key] - sb[key]).abs().max().item()
            assert diff <= atol, f"param {index} {key} differs by {diff}"


# --------------------------------------------------------------------------------- finetuning
FINETUNE_WORKER = REPO / "tests" / "scripts" / "ddp_finetune_worker.py"
FINETUNE_OVERRIDES = {
    "preset": "tiny",
    "finetune.common.epochs": 2,
    "finetune.common.max_batches_per_epoch": 2,
    "finetune.common.lr_decay_epochs": [1],
}
LOCAL_BATCH = 4


@pytest.fixture(scope="module")
def ddp_finetune(week, tmp_path_factory):
    """T-GCN (no dropout, no batch norm: nothing random in a step) finetuned on the week tiled to
    716 nodes (SYNTHETIC; the road graph block-diagonal) by 2 ranks of 4 windows per step, and by
    one process of 8 windows per step."""
    from gptst.graph.bundle import load_adjacency, write_adjacency
    from gptst.training import finetune as finetune_module
    from gptst.training.trainer import Trainer

    from .baseline_checks import week_graph

    work = tmp_path_factory.mktemp("ddp-finetune")
    series = tiled_week(week, 716)
    road = week_graph(week).adj
    adj = np.zeros((716, 716), dtype=np.float32)
    for lo in range(0, 716, len(road)):
        hi = min(lo + len(road), 716)
        adj[lo:hi, lo:hi] = road[: hi - lo, : hi - lo]
    write_series(work / "series.parquet", series)
    write_adjacency(work / "adjacency.npz", adj, series.node_ids)
    overrides = {**FINETUNE_OVERRIDES, "finetune.common.batch_size": LOCAL_BATCH}
    torchrun(
        FINETUNE_WORKER,
        work,
        "--overrides",
        json.dumps(overrides),
        "--series",
        str(work / "series.parquet"),
        "--adjacency",
        str(work / "adjacency.npz"),
        "--baseline",
        "tgcn",
    )
    ranks = [torch.load(work / f"finetune_rank{r}.pt", weights_only=True) for r in range(WORLD)]

    captured: dict[str, dict[str, torch.Tensor]] = {}

    class CapturingTrainer(Trainer):
        def _load_best(self) -> None:
            captured["model"] = {k: v.clone() for k, v in self.model.state_dict().items()}
            super()._load_best()

    params = load_params(
        REPO / "params.yaml", {**FINETUNE_OVERRIDES, "finetune.common.batch_size": WORLD * LOCAL_BATCH}
    )
    data = finetune_module.DownstreamData.prepare(
        params, load_series(work / "series.parquet"), load_adjacency(work / "adjacency.npz")
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    original = finetune_module.Trainer
    finetune_module.Trainer = CapturingTrainer  # type: ignore[misc]
    try:
        one = finetune_module.finetune(params, data, "tgcn", "plain", state_dir=work / "one", identity={"run": "one"})
    finally:
        finetune_module.Trainer = original  # type: ignore[misc]
        torch.set_num_threads(threads)
    initial = finetune_module.build_forecaster(params, data, "tgcn", "plain").state_dict()
    return {"ranks": ranks, "one": captured["model"], "one_history": one.fit.history, "initial": initial}


def test_data_parallel_finetuning_follows_the_single_process_trajectory_of_the_global_batch(ddp_finetune):
    a, b = ddp_finetune["ranks"]
    assert a["ddp"] and b["ddp"]
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name  # the ranks agree bit for bit
    one = ddp_finetune["one"]
    worst = max((a["model"][k] - one[k]).abs().max().item() for k in one)
    assert worst <= 1e-5, f"the 2-rank weights differ from one process by up to {worst:.3g}"
    unmoved = [k for k, v in ddp_finetune["initial"].items() if torch.equal(v, a["model"][k])]
    assert not unmoved, f"untrained parameters: {unmoved}"  # a comparison of trained weights
    ddp_loss = [row["train_loss"] for row in a["history"]]
    one_loss = [row["train_loss"] for row in ddp_finetune["one_history"]]
    assert len(ddp_loss) == len(one_loss) == 2
    assert ddp_loss == pytest.approx(one_loss, rel=1e-5)
