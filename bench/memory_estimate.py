"""The training step's memory estimate against the measured peak (SYNTHETIC data above N=207).

Each row runs in its own process: it loads the week (tiled to ``--nodes`` with per-copy noise,
``speed_common.tiled``), builds the stage's trainer at the paper's sizes, takes the estimate the
stage takes before training (``gptst.training.memory``), then runs ``--steps`` training steps and
reports the peak RSS over the RSS after imports (data, model and steps: what the estimate covers),
and the ratio estimate / measured (the issue's bar: within 30%).

    python bench/memory_estimate.py [--nodes 716] [--batch 8] [--steps 3]
                                    [--baselines gwn stgcn mtgnn astgcn tgcn]

Writes bench/results/memory_estimate-<nodes>x<batch>.json.
"""

from __future__ import annotations

import argparse
import json
import time

from speed_common import ROOT, run_child

RESULTS = ROOT / "bench" / "results"  # memory_estimate-<nodes>x<batch>.json

CHILD = r"""
import dataclasses, json, sys, tempfile
from pathlib import Path

import torch
from speed_common import ROOT, finetune_trainer, pretrain_trainer, tiled, week_graph, week_series
from gptst.params import load_params
from gptst.training.finetune import DownstreamData, finetune_memory_estimate
from gptst.training.pretrain import pretrain_memory_estimate
import gptst.models.baselines.registry, gptst.graph.derived
base = reset_peak_rss()  # after the imports: the estimate covers what the run allocates

what, nodes, batch_size, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
overrides = {"preset": "paper-metr-la"} | ({} if what == "pretrain" else {"finetune.baselines": [what]})
params = load_params(ROOT / "params.yaml", overrides)
week = week_series()
needs = [] if what == "pretrain" else [what]
graph = week_graph(week, baselines=needs)
series, graph = (week, graph) if nodes == len(week.node_ids) else tiled(week, graph, nodes, baselines=needs)
del week
workdir = Path(tempfile.mkdtemp())
if what == "pretrain":
    trainer, batch, epoch = pretrain_trainer(params, series, batch_size, "cpu", workdir)
    estimate = pretrain_memory_estimate(trainer.model, batch, batch_size, epoch, [torch.from_numpy(series.values)])
    step = lambda: trainer.train_step(batch, epoch)
else:
    trainer, batch = finetune_trainer(params, series, graph, what, "plain", batch_size, "cpu", workdir)
    data = DownstreamData.prepare(params, series, graph, "cpu")
    estimate = finetune_memory_estimate(params, data, what, "plain", trainer.model, "cpu")
    step = lambda: trainer.train_step(batch, 1)
estimate = dataclasses.replace(estimate, batch_size=batch_size)
for _ in range(steps):
    step()
peak = status_kb("VmHWM")
print(json.dumps({
    "what": what, "nodes": nodes, "batch": batch_size, "estimate_mb": estimate.total_mb(),
    "estimate": estimate.summary(), "measured_peak_mb": (peak - base) / 1024,
}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=716)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--baselines", nargs="+", default=["gwn", "stgcn", "mtgnn", "astgcn", "tgcn"])
    args = parser.parse_args()
    rows = []
    t0 = time.perf_counter()
    for what in ["pretrain", *args.baselines]:
        row = run_child(CHILD, what, str(args.nodes), str(args.batch), str(args.steps))
        row["ratio"] = row["estimate_mb"] / row["measured_peak_mb"]
        rows.append(row)
        print(f"  {row['estimate']}\n    measured peak +{row['measured_peak_mb']:,.0f} MB, ratio {row['ratio']:.2f}")
    print(f"\nN={args.nodes}, B={args.batch}, paper sizes, SYNTHETIC tiled data; peak RSS over the imports")
    print(f"{'what':<10} {'estimate MB':>12} {'measured MB':>12} {'estimate/measured':>18}")
    for r in rows:
        print(f"{r['what']:<10} {r['estimate_mb']:>12,.0f} {r['measured_peak_mb']:>12,.0f} {r['ratio']:>18.2f}")
    out = RESULTS / f"memory_estimate-{args.nodes}x{args.batch}.json"
    out.write_text(json.dumps({"rows": rows, "wall_s": time.perf_counter() - t0}, indent=1) + "\n")


if __name__ == "__main__":
    main()
