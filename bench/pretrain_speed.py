"""GPT-ST pre-training speed and memory: fast vs naive implementation, same run.

Each configuration runs in its own process on the real embedded METR-LA week (N=207, C=1,
T_in=12) at the paper's default sizes. A training step is measured in the adaptive phase:
mask predictor, adaptive mask generation, masked forward, reconstruction + KL, backward,
separate gradient clipping and the Adam update. Inference is the encoder alone (no grad).

    python bench/pretrain_speed.py [--steps 5] [--impls fast naive] [--batches 64 16]

Prints a table and writes bench/results/pretrain_speed.json (a list of rows with impl, batch,
mode, step_median_s, peak_rss_increase_mb, params, gflop_per_step, matmul_gflops).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from speed_common import ROOT, matmul_gflops, relative, run_child

RESULTS = ROOT / "bench" / "results" / "pretrain_speed.json"

CHILD = r"""
import json, statistics, sys, time
import torch
from pathlib import Path
from torch.utils.flop_counter import FlopCounterMode

impl, batch_size, mode, steps, root = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), Path(sys.argv[5])
from gptst.data.batch import WindowBatcher
from gptst.data.ingest import ingest
from gptst.data.scaler import fit_train_scaler
from gptst.data.series import load_series
from gptst.data.windows import make_splits
from gptst.models.gptst.config import GptstConfig
from gptst.models.gptst.model import build_model
from gptst.training.grad import clip_grad_norm
from gptst.models.gptst.masker import AdaptiveMasker
from gptst.models.gptst.objective import PretrainObjective
from gptst.params import DatasetParams, GptstModelParams, PretrainParams, WindowParams
from gptst.training.pretrain import gptst_config, pretrain_masker
import tempfile

with tempfile.TemporaryDirectory() as tmp:
    source = root / "data/raw/metr-la-week/metr-la-week.h5"
    dataset = DatasetParams(name="bench", kind="speed", series=str(source), graph="unused", null_value=0.0)
    ingest(dataset, source, Path(tmp) / "s.parquet", Path(tmp) / "m.json")
    series = load_series(Path(tmp) / "s.parquet")
windows = WindowParams()
splits = make_splits(len(series.timestamps), dataset.split, windows)
scaler = fit_train_scaler(series, splits.steps)
batcher = WindowBatcher.from_series(series, scaler, windows.t_in, windows.t_out)
batch = batcher.gather(splits.train.starts[:batch_size])
pre = PretrainParams()  # paper defaults: 300 epochs, E0 = 10, rho 0.5, mode half
model_params = GptstModelParams(impl=impl)
zero = tuple(float(v) for v in scaler.transform(torch.zeros(1, 1)).reshape(-1))
cfg = gptst_config(model_params, num_nodes=len(series.node_ids), t_in=windows.t_in, channels=1, zero_value=zero)
torch.manual_seed(0)
model = build_model(cfg)
n_params = sum(p.numel() for p in model.parameters())
masker = pretrain_masker(pre, seed=0)
objective = PretrainObjective(model, masker, scaler, 0.0, pre.kl_weight, pre.change_epoch)
optimiser = torch.optim.Adam(model.parameters(), lr=pre.lr)
epoch = pre.change_epoch + 50  # adaptive phase: predictor, cluster masks and KL all run
ae, pred = model.autoencoder_parameters(), model.predictor_parameters()

def train_step():
    optimiser.zero_grad(set_to_none=True)
    loss, _ = objective(batch, epoch)
    loss.total.backward()
    clip_grad_norm(ae, pre.grad_clip), clip_grad_norm(pred, pre.predictor_grad_clip)
    optimiser.step()

def infer_step():
    with torch.no_grad():
        model.encode(batch.x, batch.cal)

step = train_step if mode == "train" else infer_step
model.train(mode == "train")
base = reset_peak_rss()
step()  # warm-up (allocator, Adam state)
times = []
for _ in range(steps):
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
peak = status_kb("VmHWM")
with FlopCounterMode(display=False) as counter:
    step()
print(json.dumps({
    "impl": impl, "batch": batch_size, "mode": mode, "step_median_s": statistics.median(times),
    "step_min_s": min(times), "step_max_s": max(times),
    "peak_rss_increase_mb": (peak - base) / 1024, "params": n_params,
    "gflop_per_step": counter.get_total_flops() / 1e9, "threads": torch.get_num_threads(),
}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration (after one warm-up)")
    parser.add_argument("--impls", nargs="+", default=["fast", "naive"], choices=["fast", "naive"])
    parser.add_argument("--batches", nargs="+", type=int, default=[64, 16])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    matmul = matmul_gflops()
    configs = [(b, "train") for b in args.batches] + [(max(args.batches), "infer")]
    rows = []
    for batch, mode in configs:
        for impl in args.impls:
            row = run_child(CHILD, impl, str(batch), mode, str(args.steps), str(ROOT))
            row["matmul_gflops"] = matmul
            rows.append(row)
            print(f"  done: {impl:<5} {mode:<5} batch {batch:>3}: {row['step_median_s']:.3f} s", file=sys.stderr)

    print(
        f"\nGPT-ST pre-training step, METR-LA week (N=207, C=1, T_in=12), paper sizes; "
        f"median of {args.steps} steps; dense fp32 matmul {matmul:.1f} GFLOP/s"
    )
    header = (
        f"{'impl':<6} {'mode':<6} {'batch':>5} {'median s':>9} {'min..max s':>14} {'peak RSS +MB':>13} "
        f"{'GFLOP':>7} {'GFLOP/s':>8} {'params':>10}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        rate = r["gflop_per_step"] / r["step_median_s"]
        spread = f"{r['step_min_s']:.2f}..{r['step_max_s']:.2f}"
        print(
            f"{r['impl']:<6} {r['mode']:<6} {r['batch']:>5} {r['step_median_s']:>9.3f} {spread:>14} "
            f"{r['peak_rss_increase_mb']:>13.0f} {r['gflop_per_step']:>7.1f} {rate:>8.1f} {r['params']:>10,}"
        )
    by = {(r["impl"], r["batch"], r["mode"]): r for r in rows}
    for batch, mode in configs:
        if ("fast", batch, mode) in by and ("naive", batch, mode) in by:
            ratio = by[("naive", batch, mode)]["step_median_s"] / by[("fast", batch, mode)]["step_median_s"]
            print(f"naive/fast {mode} batch {batch}: {ratio:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"written: {relative(args.out)}")


if __name__ == "__main__":
    main()
