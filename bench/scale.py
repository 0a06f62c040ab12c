"""GPT-ST and the baselines as the network grows: step time and peak memory against N.

SYNTHETIC data above N=207: the real METR-LA week's sensors tiled with per-copy noise
(``speed_common.tiled_series``; the graph block-diagonal), at LargeST's sizes: SD 716, GBA 2,352,
GLA 3,834 and CA 8,600. Every row runs in its own process (clean peak RSS) at the paper's sizes
(``presets/paper-metr-la.yaml``), on the trainer's own step (``Trainer.train_step``):

- pre-training step (adaptive phase) at each N, at B=8 and B=1, and encoder inference (no grad);
- finetune steps of the default baselines (plain variant) at N=716 and 2,352, B=8;
- the gptst variant encoding on the fly (finetune's path when the encode cache is over its cap)
  with T-GCN at the largest N, B=1.

    python bench/scale.py [--nodes 207 716 2352 3834 8600] [--batches 8 1] [--steps 3]
                          [--baselines gwn stgcn mtgnn astgcn tgcn] [--baseline-nodes 716 2352]

Prints the tables with the per-node cost and the exponent of a least-squares fit of
log(step s) and log(peak MB) against log(N), and, per baseline, the largest N whose fitted peak
memory fits ``--memory-gb`` (24). Writes bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from speed_common import ROOT, matmul_gflops, relative, run_child

RESULTS = ROOT / "bench" / "results" / "scale.json"

PRETRAIN = r"""
import json, sys, tempfile
from pathlib import Path

import torch

from speed_common import ROOT, pretrain_trainer, tiled_series, week_series
from gptst.params import load_params

nodes, batch_size, mode, steps = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
params = load_params(ROOT / "params.yaml", {"preset": "paper-metr-la"})
week = week_series()
series = week if nodes == len(week.node_ids) else tiled_series(week, nodes)
trainer, batch, epoch = pretrain_trainer(params, series, batch_size, "cpu", Path(tempfile.mkdtemp()))
model = trainer.model.model
del week, series

def infer_step():
    with torch.no_grad():
        model.encode(batch.x, batch.cal)

step = (lambda: trainer.train_step(batch, epoch)) if mode == "train" else infer_step
model.train(mode == "train")
print(json.dumps({"what": f"pretrain {mode}", "nodes": nodes, "batch": batch_size, **measure(step, steps)}))
"""

FINETUNE = r"""
import json, sys, tempfile
from pathlib import Path

from speed_common import ROOT, finetune_trainer, tiled, week_graph, week_series
from gptst.params import load_params

nodes, batch_size, steps = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[5])
baseline, variant = sys.argv[3], sys.argv[4]
params = load_params(ROOT / "params.yaml", {"preset": "paper-metr-la", "finetune.baselines": [baseline]})
week = week_series()
graph = week_graph(week, baselines=[baseline])
series, graph = (week, graph) if nodes == len(week.node_ids) else tiled(week, graph, nodes, baselines=[baseline])
trainer, batch = finetune_trainer(
    params, series, graph, baseline, variant, batch_size, "cpu", Path(tempfile.mkdtemp()), on_the_fly=variant == "gptst"
)
del week
what = f"{baseline} {variant}" + (" (encoder on the fly)" if variant == "gptst" else "")
row = measure(lambda: trainer.train_step(batch, 1), steps)
print(json.dumps({"what": what, "nodes": nodes, "batch": batch_size, **row}))
"""


def fit_exponent(points: list[tuple[float, float]]) -> float | None:
    """Slope of log(y) against log(x) by least squares (None below two points)."""
    if len(points) < 2:
        return None
    xs = [math.log(x) for x, _ in points]
    ys = [math.log(y) for _, y in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


def largest_nodes(points: list[tuple[float, float]], budget_mb: float) -> int | None:
    """The N at which the power law through ``points`` (N, peak MB) reaches ``budget_mb``."""
    exponent = fit_exponent(points)
    if exponent is None or exponent <= 0:
        return None
    n, mb = points[-1]
    return int(n * (budget_mb / mb) ** (1 / exponent))


def run_row(code: str, *args: object) -> dict:
    t0 = time.perf_counter()
    row = run_child(code, *(str(a) for a in args))
    row["wall_s"] = time.perf_counter() - t0
    print(
        f"  {row['what']:<34} N={row['nodes']:>5} B={row['batch']:>2}: {row['step_median_s']:8.3f} s, "
        f"peak +{row['peak_rss_increase_mb']:.0f} MB ({row['wall_s']:.0f} s)",
        flush=True,
    )
    return row


def table(rows: list[dict]) -> None:
    print(
        f"{'what':<34} {'N':>5} {'B':>3} {'step s':>8} {'ms/node':>8} {'peak RSS +MB':>12} {'KB/node':>8} {'GFLOP':>8}"
    )
    for r in rows:
        n, step, peak = r["nodes"], r["step_median_s"], r["peak_rss_increase_mb"]
        print(
            f"{r['what']:<34} {n:>5} {r['batch']:>3} {step:>8.3f} {1e3 * step / n:>8.3f} "
            f"{peak:>12.0f} {1024 * peak / n:>8.1f} {r['gflop_per_step']:>8.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", nargs="+", type=int, default=[207, 716, 2352, 3834, 8600])
    parser.add_argument("--batches", nargs="+", type=int, default=[8, 1])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per row (after one warm-up)")
    parser.add_argument("--baselines", nargs="*", default=["gwn", "stgcn", "mtgnn", "astgcn", "tgcn"])
    parser.add_argument("--baseline-nodes", nargs="+", type=int, default=[716, 2352])
    parser.add_argument("--baseline-batch", type=int, default=8)
    parser.add_argument("--memory-gb", type=float, default=24.0, help="the memory the largest-N estimates fit into")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    started = time.perf_counter()
    matmul = matmul_gflops()
    rows: list[dict] = []
    print(f"paper sizes; N > 207 is the week tiled (synthetic); dense fp32 matmul {matmul:.1f} GFLOP/s")
    for mode in ("train", "infer"):
        for batch in args.batches:
            for nodes in args.nodes:
                rows.append(run_row(PRETRAIN, nodes, batch, mode, args.steps))
    for baseline in args.baselines:
        for nodes in args.baseline_nodes:
            rows.append(run_row(FINETUNE, nodes, args.baseline_batch, baseline, "plain", args.steps))
    if "tgcn" in args.baselines:
        rows.append(run_row(FINETUNE, max(args.nodes), 1, "tgcn", "gptst", args.steps))

    print()
    table(rows)
    fits = []
    for what in dict.fromkeys(r["what"] for r in rows):
        for batch in sorted({r["batch"] for r in rows if r["what"] == what}, reverse=True):
            same = sorted((r for r in rows if r["what"] == what and r["batch"] == batch), key=lambda r: r["nodes"])
            time_fit = fit_exponent([(r["nodes"], r["step_median_s"]) for r in same])
            memory = [(r["nodes"], max(r["peak_rss_increase_mb"], 1.0)) for r in same]
            if time_fit is None:
                continue
            fits.append(
                {
                    "what": what,
                    "batch": batch,
                    "nodes": [r["nodes"] for r in same],
                    "time_exponent": time_fit,
                    "memory_exponent": fit_exponent(memory),
                    "largest_nodes_in_budget": largest_nodes(memory, 1024 * args.memory_gb),
                }
            )
    print(
        f"\nfitted growth (step s ~ N^a, peak MB ~ N^b) and the largest N whose fitted peak fits {args.memory_gb:g} GB"
    )
    print(f"{'what':<34} {'B':>3} {'a (time)':>9} {'b (memory)':>11} {'largest N':>10}")
    for f in fits:
        largest = f["largest_nodes_in_budget"]
        print(
            f"{f['what']:<34} {f['batch']:>3} {f['time_exponent']:>9.2f} {f['memory_exponent']:>11.2f} "
            f"{largest if largest is not None else '-':>10}"
        )
    total = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"matmul_gflops": matmul, "memory_gb": args.memory_gb, "rows": rows, "fits": fits, "wall_s": total}
    for row in payload["rows"]:
        row.pop("profile", None)
    args.out.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"\n{total:.0f} s in all; written: {relative(args.out)}", file=sys.stderr)


if __name__ == "__main__":
    main()
