"""The DTW similarity graph's cost (STFGNN, STGODE, DMVST-Net): measured on the real METR-LA
week (N = 207, the training split's daily profiles) and on SYNTHETIC larger node sets (the week's
profiles tiled with per-copy noise), against the estimate the adjacency stage checks before it
runs (``gptst.graph.derived.dtw_cost``); then the estimates for full METR-LA and LargeST sizes.

    python bench/dtw_cost.py [--measure 207 716] [--estimate 207 716 2352 3834 8600]

Prints one table; writes bench/results/dtw_cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
from speed_common import ROOT, week_series

from gptst.data.splits import chronological_split
from gptst.graph.derived import daily_profiles, derived_graph_inputs, dtw_cost, dtw_distances
from gptst.params import load_params

RESULTS = ROOT / "bench" / "results" / "dtw_cost.json"


def week_profiles() -> np.ndarray:
    """The week's daily speed profiles [288, 207] from its training split (as the stage builds them)."""
    params = load_params(ROOT / "params.yaml")
    series = week_series()
    train = chronological_split(len(series.values), params.dataset.split).train
    inputs = derived_graph_inputs(np.zeros((1, 1)), series, train, params.graph.derived)
    return daily_profiles(inputs.train, inputs.steps_per_day)


def tiled_profiles(profiles: np.ndarray, nodes: int, seed: int = 0) -> np.ndarray:
    """SYNTHETIC: ``nodes`` profiles, the real ones copied side by side, each copy with its own noise."""
    rng = np.random.default_rng(seed)
    copies = -(-nodes // profiles.shape[1])
    out = np.concatenate([profiles + (rng.normal(0, 1.0, profiles.shape) if k else 0) for k in range(copies)], axis=1)
    return out[:, :nodes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--measure", type=int, nargs="+", default=[207, 716])
    parser.add_argument("--estimate", type=int, nargs="+", default=[207, 716, 2352, 3834, 8600])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    derived = load_params(ROOT / "params.yaml").graph.derived
    profiles = week_profiles()
    length = profiles.shape[0]
    rows = []
    for nodes in args.measure:
        data = profiles if nodes == profiles.shape[1] else tiled_profiles(profiles, nodes)
        times = []
        for _ in range(args.repeats if nodes <= 300 else 1):
            started = time.perf_counter()
            dtw_distances(data, derived.dtw_band, chunk_pairs=derived.dtw_chunk_pairs)
            times.append(time.perf_counter() - started)
        cost = dtw_cost(nodes, length, derived.dtw_band, derived.dtw_chunk_pairs)
        measured = statistics.median(times)
        rows.append(
            {
                "nodes": nodes,
                "data": "METR-LA week (real)" if nodes == profiles.shape[1] else "week tiled (synthetic)",
                "measured_s": round(measured, 3),
                "estimate_s": round(cost.seconds, 3),
                "s_per_cell": measured / cost.cells,
                "estimate_mb": round(cost.memory_mb, 1),
            }
        )
    for nodes in args.estimate:
        cost = dtw_cost(nodes, length, derived.dtw_band, derived.dtw_chunk_pairs)
        refused = cost.seconds > derived.dtw_max_seconds or cost.memory_mb > derived.dtw_max_memory_mb
        rows.append(
            {
                "nodes": nodes,
                "data": "estimate",
                "estimate_s": round(cost.seconds, 1),
                "estimate_mb": round(cost.memory_mb, 1),
                "pairs": cost.pairs,
                "cells": cost.cells,
                "default_budget": "refused" if refused else "runs",
            }
        )
    print(
        f"DTW of daily profiles ({length} steps, band {derived.dtw_band}, chunks of {derived.dtw_chunk_pairs:,} "
        f"pairs), budget {derived.dtw_max_seconds:,.0f} s / {derived.dtw_max_memory_mb:,.0f} MB; "
        f"up {time.clock_gettime(time.CLOCK_BOOTTIME):.0f} s, load {os.getloadavg()[0]:.2f}"
    )
    print(f"{'N':>6} {'data':<24} {'measured s':>11} {'estimate s':>11} {'s/cell':>9} {'MB':>8} {'budget':>8}")
    for r in rows:
        measured = f"{r['measured_s']:.2f}" if "measured_s" in r else "-"
        per_cell = f"{r['s_per_cell']:.1e}" if "s_per_cell" in r else "-"
        print(
            f"{r['nodes']:>6} {r['data']:<24} {measured:>11} {r['estimate_s']:>11,.1f} {per_cell:>9} "
            f"{r['estimate_mb']:>8,.0f} {r.get('default_budget', '-'):>8}"
        )
    print(
        "Full METR-LA (34,272 steps, N = 207) has the same daily profiles' length and N as the week: "
        "the same DTW cost; only the profile averaging reads more steps (linear in T, milliseconds)."
    )
    RESULTS.write_text(json.dumps({"profile_steps": length, "band": derived.dtw_band, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
