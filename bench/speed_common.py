"""What the speed benchmarks share: the machine's dense matmul rate, running one measurement in
its own process (clean peak RSS, no allocator state from the last one), and the RSS counters."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MATMUL = r"""
import json, statistics, time, torch
n = 2048
a, b = torch.randn(n, n), torch.randn(n, n)
a @ b
times = []
for _ in range(10):
    t0 = time.perf_counter(); a @ b; times.append(time.perf_counter() - t0)
print(json.dumps({"matmul_gflops": 2 * n**3 / statistics.median(times) / 1e9}))
"""

# Pasted at the top of every child: these helpers importable, and peak RSS over what the child
# had before its measured steps.
RSS = r"""
import sys
sys.path.insert(0, BENCH_DIR)
def status_kb(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])

# This process's dense fp32 2048 x 2048 matmul rate now (GFLOP/s): the yardstick of the row just
# measured, taken in the same process and minute.
def matmul_rate(reps=5):
    import statistics, time, torch
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(reps):
        t0 = time.perf_counter(); a @ b; times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9

def reset_peak_rss():
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the high-water mark: count only what the steps add
    return status_kb("VmRSS")

# One row's figures for ``step``: the peak RSS the steps add (warm-up included: allocator, Adam
# state), the median of ``steps`` timed calls, FLOPs of one call, and with ``profile`` the per-op
# table of ``profile_steps`` calls.
def measure(step, steps, profile=False, profile_steps=2):
    import statistics, time, torch
    from torch.utils.flop_counter import FlopCounterMode
    base = reset_peak_rss()
    step()  # warm-up
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = status_kb("VmHWM")
    from flop_formulas import custom_flop_formulas
    with FlopCounterMode(display=False, custom_mapping=custom_flop_formulas()) as counter:
        step()
    table = ""
    if profile:
        from torch.profiler import ProfilerActivity, profile as torch_profile
        from profile_tables import shape_table
        with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(profile_steps):
                step()
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=48)
        by_shape = shape_table(prof.key_averages(group_by_input_shape=True), profile_steps)
        table += f"\nby input shape, per step:\n{by_shape}\n"
    return {
        "step_median_s": statistics.median(times), "step_min_s": min(times), "step_max_s": max(times),
        "peak_rss_increase_mb": (peak - base) / 1024, "gflop_per_step": counter.get_total_flops() / 1e9,
        "threads": torch.get_num_threads(), "profile": table, "row_matmul_gflops": matmul_rate(),
    }
"""


def run_child(code: str, *args: str) -> dict:
    """Run ``code`` in a fresh interpreter (repo root as working directory); its last stdout line is JSON."""
    prelude = RSS.replace("BENCH_DIR", repr(str(Path(__file__).resolve().parent)), 1)
    proc = subprocess.run([sys.executable, "-c", prelude + code, *args], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def matmul_gflops() -> float:
    """Dense fp32 2048 x 2048 matmul rate of this machine now (GFLOP/s, median of 10)."""
    return run_child(MATMUL)["matmul_gflops"]


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


# --------------------------------------------------------------------------- in-process builders
# The benchmarks time the trainer's own step (Trainer.train_step: autocast, scaled backward,
# clipping per group, Adam), built the way the pretrain and finetune stages build it.


def _no_validation(module, epoch: int) -> float:
    """The trainers here only take steps; fit (which validates) never runs."""
    raise AssertionError("the speed benchmarks never call fit")


def week_series():
    """The embedded METR-LA week, ingested as the pipeline does (h5py reads its HDF5)."""
    import tempfile

    from gptst.data.ingest import ingest
    from gptst.data.series import load_series
    from gptst.params import load_params

    params = load_params(ROOT / "params.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        ingest(params.dataset, params.path(params.dataset.series), Path(tmp) / "s.parquet", Path(tmp) / "m.json")
        return load_series(Path(tmp) / "s.parquet")


def week_graph(series, baselines=()):
    """The week's sensor graph as the adjacency stage builds it (params.yaml's recipe), with the
    derived graphs ``baselines`` need, from the training split."""
    from gptst.graph.adjacency import build_adjacency
    from gptst.graph.bundle import GraphBundle
    from gptst.params import load_params

    params = load_params(ROOT / "params.yaml")
    adj, node_ids = build_adjacency(params.path(params.dataset.graph), series.node_ids, params.graph)
    return with_derived_graphs(series, GraphBundle(adj=adj, node_ids=node_ids), baselines)


def with_derived_graphs(series, graph, baselines=()):
    """``graph`` with the derived graphs ``baselines`` need, built from ``series``' training split
    as the adjacency stage builds them."""
    from gptst.data.splits import chronological_split
    from gptst.graph.bundle import GraphBundle
    from gptst.graph.derived import build_derived_graphs, derived_graph_inputs
    from gptst.models.baselines.registry import graphs_needed
    from gptst.params import load_params

    params = load_params(ROOT / "params.yaml")
    train = chronological_split(len(series.values), params.dataset.split).train
    inputs = derived_graph_inputs(graph.adj, series, train, params.graph.derived)
    extras, _ = build_derived_graphs(graphs_needed(list(baselines)), inputs)
    return GraphBundle(adj=graph.adj, node_ids=graph.node_ids, extras=extras)


def tiled_series(series, nodes: int, seed: int = 0):
    """SYNTHETIC scale data: the real week's sensors copied side by side up to ``nodes`` sensors,
    each copy with its own N(0, 1) noise on the readings (missing ones stay missing); copy 0 is
    the real week."""
    import dataclasses

    import numpy as np

    n = len(series.node_ids)
    copies = -(-nodes // n)
    rng = np.random.default_rng(seed)
    values = np.concatenate([series.values] * copies, axis=1)[:, :nodes]
    missing = np.concatenate([series.missing_mask()] * copies, axis=1)[:, :nodes]
    noisy = values + rng.normal(0.0, 1.0, size=values.shape).astype(np.float32)
    noisy[:, :n] = series.values[:, :n]
    noisy[missing] = values[missing]
    ids = [f"{node}#{k}" for k in range(copies) for node in series.node_ids][:nodes]
    return dataclasses.replace(series, values=noisy, node_ids=ids)


def tiled(series, graph, nodes: int, seed: int = 0, baselines=()):
    """:func:`tiled_series` and its graph: block-diagonal, each copy keeping its own road graph,
    with the derived graphs ``baselines`` need."""
    import numpy as np

    from gptst.graph.bundle import GraphBundle

    scaled = tiled_series(series, nodes, seed)
    n = len(series.node_ids)
    adj = np.zeros((nodes, nodes), dtype=np.float32)
    for lo in range(0, nodes, n):
        hi = min(lo + n, nodes)
        adj[lo:hi, lo:hi] = graph.adj[: hi - lo, : hi - lo]
    return scaled, with_derived_graphs(scaled, GraphBundle(adj=adj, node_ids=scaled.node_ids), baselines)


def _with_amp(config, amp_dtype: str | None):
    """``config`` (a TrainerConfig) with autocast in ``amp_dtype``; None: as the stage builds it
    (the device policy's dtype: float32 on the CPU)."""
    import dataclasses

    return config if amp_dtype is None else dataclasses.replace(config, amp=True, amp_dtype=amp_dtype)


def pretrain_trainer(params, series, batch_size: int, device: str, workdir: Path, amp_dtype: str | None = None):
    """The pretrain stage's trainer for ``series`` at ``params`` sizes, the first ``batch_size``
    training windows as a batch, and an epoch in the adaptive phase (predictor, cluster masks
    and KL all run: the epoch is past E0). ``amp_dtype`` ("bfloat16"): train under that autocast
    whatever the device (on the CPU, the GPU's precision)."""
    from gptst.data.batch import WindowBatcher
    from gptst.data.scaler import fit_train_scaler
    from gptst.data.windows import make_splits
    from gptst.models.gptst.objective import PretrainObjective
    from gptst.training.pretrain import (
        build_pretrain_model,
        pretrain_groups,
        pretrain_masker,
        pretrain_step_fn,
        pretrain_trainer_config,
    )
    from gptst.training.trainer import Trainer

    pre, windows = params.pretrain, params.windows
    splits = make_splits(len(series.stamps), params.dataset.split, windows)
    scaler = fit_train_scaler(series, splits.steps)
    batcher = WindowBatcher.from_series(series, scaler, windows.t_in, windows.t_out)
    model = build_pretrain_model(params, series, scaler)
    masker = pretrain_masker(pre, seed=0, device=device)
    objective = PretrainObjective(model, masker, scaler, series.null_value, pre.kl_weight, pre.change_epoch)
    trainer = Trainer(
        objective,
        pretrain_step_fn(masker),
        pretrain_groups(model, pre),
        _with_amp(pretrain_trainer_config(pre), amp_dtype),
        checkpoint_dir=workdir / "pretrain_state",
        device=device,
        val_fn=_no_validation,
    )
    batch = batcher.gather(splits.train.starts[:batch_size]).to(device)
    # 50 epochs into the adaptive phase, as the figures were taken (the mask's adaptive
    # share grows with the epoch, and the step with it: at paper sizes, B=16, E0+1 ran ~10% faster).
    return trainer, batch, min(pre.change_epoch + 50, pre.epochs)


def finetune_trainer(
    params,
    series,
    graph,
    baseline: str,
    variant: str,
    batch_size: int,
    device: str,
    workdir: Path,
    on_the_fly=False,
    amp_dtype: str | None = None,
):
    """The finetune stage's trainer for one baseline and variant, and a batch of the first
    ``batch_size`` training windows; a gptst variant reads those windows from an fp16 encode
    cache (as finetune does) of an untrained encoder of ``pretrain.model``'s sizes, or with
    ``on_the_fly`` runs that encoder on every batch (finetune's path above the cache's cap);
    ``amp_dtype`` as in :func:`pretrain_trainer`."""
    from gptst.models.encoded import EncodedCache, write_encoded
    from gptst.models.gptst.bundle import EncoderBundle
    from gptst.training.finetune import (
        DownstreamData,
        build_forecaster,
        finetune_step_fn,
        finetune_trainer_config,
    )
    from gptst.training.pretrain import build_pretrain_model
    from gptst.training.trainer import ParamGroup, Trainer

    data = DownstreamData.prepare(params, series, graph, device)
    starts = data.splits.train.starts[:batch_size]
    encoder, cache = None, None
    if variant in ("gptst", "gptst_random"):
        encoder = build_pretrain_model(params, series, data.scaler).to(device).eval().requires_grad_(False)
    if encoder is not None and not on_the_fly:
        bundle = EncoderBundle(
            model=encoder,
            config=encoder.cfg,
            scaler=data.scaler,
            node_ids=list(series.node_ids),
            channels=list(series.channels),
            t_in=params.windows.t_in,
            freq=series.freq or "",
            steps_per_day=0,
            dataset="bench",
            meta={},
            source="bench",
        )
        folder = workdir / f"encoded-{len(series.node_ids)}"
        if not (folder / "index.json").is_file():
            write_encoded(folder, bundle, data.batcher, starts, encoder_sha256="bench", max_gb=1e3, device=device)
        cache = EncodedCache.open(folder, "bench")
    forecaster = build_forecaster(params, data, baseline, variant, encoder).to(device)
    common = params.finetune.common
    trainer = Trainer(
        forecaster,
        finetune_step_fn(params, data, baseline, cache),
        [ParamGroup("forecaster", forecaster.trainable_parameters(), common.grad_clip)],
        _with_amp(finetune_trainer_config(common), amp_dtype),
        checkpoint_dir=workdir / "finetune_state",
        device=device,
        val_fn=_no_validation,
    )
    return trainer, data.batcher.gather(starts).to(device)
