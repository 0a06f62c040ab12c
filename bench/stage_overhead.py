"""Fixed cost of every pipeline stage: process start to exit, minus its work loops.

Runs ``dvc repro`` once in a fresh copy of this checkout (its own DVC cache and MLflow store;
``--preset`` and ``--baselines`` set the sizes, which change the loops, not the fixed cost), with
``GPTST_STAGE_TIMINGS`` set so that every stage process reports when it started, when it exited
and how long its training, evaluation and encoding loops took (``gptst.timing``).

    python bench/stage_overhead.py [--preset tiny] [--baselines tgcn] [--keep DIR]

Prints one row per stage (wall = process start to exit; loops = train + evaluate + encode;
outside = wall - loops) and the two figures of issue 12: the largest finetune item's time
outside its loops (target <= 3 s) and evaluate + promote (target <= 15 s). Writes
bench/results/stage_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "stage_overhead.json"
sys.path.insert(0, str(ROOT))

from gptst.timing import TIMINGS_ENV  # noqa: E402
from tests.pipeline_clone import make_clone  # noqa: E402

FINETUNE_TARGET_S = 3.0
EVALUATE_PROMOTE_TARGET_S = 15.0


def stage_rows(records: list[dict]) -> list[dict]:
    """One row per stage record: wall (start to process exit), body, loops and outside seconds."""
    rows = []
    for r in records:
        loops = sum(r["phases"].values())
        wall = r["exit"] - r["start"]
        rows.append(
            {
                "stage": r["stage"],
                "exit_code": r["exit_code"],
                "wall_s": wall,
                "body_end_s": r["end"] - r["start"],
                "loops_s": loops,
                "outside_s": wall - loops,
                "phases": r["phases"],
            }
        )
    return rows


def summary(rows: list[dict]) -> dict[str, float]:
    """The issue's two figures: finetune items' time outside their loops, evaluate + promote."""
    finetune = [r["outside_s"] for r in rows if r["stage"].startswith(("finetune@", "finetune_gptst@"))]
    by_name = {r["stage"]: r for r in rows}
    out = {}
    if finetune:
        out["finetune_outside_median_s"] = statistics.median(finetune)
        out["finetune_outside_max_s"] = max(finetune)
    if "evaluate" in by_name and "promote" in by_name:
        out["evaluate_plus_promote_s"] = by_name["evaluate"]["wall_s"] + by_name["promote"]["wall_s"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", help="training preset of the run (default tiny)")
    parser.add_argument("--baselines", nargs="+", default=["tgcn"], help="finetune.baselines of the run")
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    if args.keep:
        workdir = args.keep
        if workdir.exists():
            shutil.rmtree(workdir)
        workdir.mkdir(parents=True)
    else:
        workdir = Path(tempfile.mkdtemp(prefix="gptst-stage-overhead-"))
    try:
        clone = make_clone(workdir / "gptst", preset=args.preset, finetune={"baselines": args.baselines})
        timings = clone.root / "stage_timings.jsonl"
        clone.env[TIMINGS_ENV] = str(timings)
        started = time.perf_counter()
        clone.dvc("repro")
        total = time.perf_counter() - started
        records = [json.loads(line) for line in timings.read_text().splitlines() if line]
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    rows = stage_rows(records)
    figures = summary(rows)
    load = os.getloadavg()
    print(
        f"\nStage fixed cost, `dvc repro` of the week, preset {args.preset}, baselines {' '.join(args.baselines)}; "
        f"load average {load[0]:.2f} at the end"
    )
    header = f"{'stage':<34} {'wall s':>7} {'loops s':>8} {'outside s':>10}  loops"
    print(header)
    print("-" * (len(header) + 20))
    for r in rows:
        loops = ", ".join(f"{k} {v:.1f}" for k, v in sorted(r["phases"].items()))
        print(f"{r['stage']:<34} {r['wall_s']:>7.2f} {r['loops_s']:>8.2f} {r['outside_s']:>10.2f}  {loops}")
    print(f"\ndvc repro wall: {total:.1f} s; stages' walls add to {sum(r['wall_s'] for r in rows):.1f} s")
    if "finetune_outside_max_s" in figures:
        print(
            f"finetune items outside their loops: median {figures['finetune_outside_median_s']:.2f} s, "
            f"max {figures['finetune_outside_max_s']:.2f} s (target <= {FINETUNE_TARGET_S:g} s)"
        )
    if "evaluate_plus_promote_s" in figures:
        print(
            f"evaluate + promote: {figures['evaluate_plus_promote_s']:.2f} s "
            f"(target <= {EVALUATE_PROMOTE_TARGET_S:g} s)"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "preset": args.preset,
        "baselines": args.baselines,
        "dvc_repro_s": total,
        "loadavg": load,
        "stages": rows,
        **figures,
    }
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"written: {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
