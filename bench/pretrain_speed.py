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
import json, sys, tempfile
from pathlib import Path

import torch

from speed_common import ROOT, pretrain_trainer, week_series
from gptst.params import load_params

impl, batch_size, mode, steps = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
profile = sys.argv[5] == "1"
# Paper sizes and schedule (presets/paper-metr-la.yaml: the model's defaults, E0 = 10).
params = load_params(ROOT / "params.yaml", {"preset": "paper-metr-la", "pretrain.model.impl": impl})
trainer, batch, epoch = pretrain_trainer(params, week_series(), batch_size, "cpu", Path(tempfile.mkdtemp()))
model = trainer.model.model
n_params = sum(p.numel() for p in model.parameters())

def infer_step():
    with torch.no_grad():
        model.encode(batch.x, batch.cal)

step = (lambda: trainer.train_step(batch, epoch)) if mode == "train" else infer_step
model.train(mode == "train")
row = measure(step, steps, profile, profile_steps=2)
print(json.dumps({"impl": impl, "batch": batch_size, "mode": mode, "params": n_params, **row}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration (after one warm-up)")
    parser.add_argument("--impls", nargs="+", default=["fast", "naive"], choices=["fast", "naive"])
    parser.add_argument("--batches", nargs="+", type=int, default=[64, 16])
    parser.add_argument("--profile", action="store_true", help="per-op tables (torch.profiler) of the fast impl")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    matmul = matmul_gflops()
    configs = [(b, "train") for b in args.batches] + [(max(args.batches), "infer")]
    rows = []
    for batch, mode in configs:
        for impl in args.impls:
            profile = "1" if args.profile and impl == "fast" else "0"
            row = run_child(CHILD, impl, str(batch), mode, str(args.steps), profile)
            row["matmul_gflops"] = matmul
            rows.append(row)
            print(f"  done: {impl:<5} {mode:<5} batch {batch:>3}: {row['step_median_s']:.3f} s", file=sys.stderr)

    print(
        f"\nGPT-ST pre-training step, METR-LA week (N=207, C=1, T_in=12), paper sizes; "
        f"median of {args.steps} steps; dense fp32 matmul {matmul:.1f} GFLOP/s"
    )
    header = (
        f"{'impl':<6} {'mode':<6} {'batch':>5} {'median s':>9} {'min..max s':>14} {'peak RSS +MB':>13} "
        f"{'GFLOP':>7} {'GFLOP/s':>8} {'% matmul':>9} {'% row mm':>9} {'params':>10}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        rate = r["gflop_per_step"] / r["step_median_s"]
        spread = f"{r['step_min_s']:.2f}..{r['step_max_s']:.2f}"
        print(
            f"{r['impl']:<6} {r['mode']:<6} {r['batch']:>5} {r['step_median_s']:>9.3f} {spread:>14} "
            f"{r['peak_rss_increase_mb']:>13.0f} {r['gflop_per_step']:>7.1f} {rate:>8.1f} "
            f"{100 * rate / matmul:>8.1f}% {100 * rate / r['row_matmul_gflops']:>8.1f}% {r['params']:>10,}"
        )
    print(
        "% matmul: of the rate measured at the start of the run; % row mm: of the rate measured in the "
        "row's own process right after its steps (this machine's rate drifts by +-20% within minutes)"
    )
    by = {(r["impl"], r["batch"], r["mode"]): r for r in rows}
    for batch, mode in configs:
        if ("fast", batch, mode) in by and ("naive", batch, mode) in by:
            ratio = by[("naive", batch, mode)]["step_median_s"] / by[("fast", batch, mode)]["step_median_s"]
            print(f"naive/fast {mode} batch {batch}: {ratio:.2f}x")
    for r in rows:
        if r.get("profile"):
            print(f"\nper-op profile, {r['impl']} {r['mode']} batch {r['batch']} (2 steps):\n{r['profile']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"written: {relative(args.out)}")


if __name__ == "__main__":
    main()
