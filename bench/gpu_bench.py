"""Pre-training and finetuning speed on one device, one table (run through bench/gpu.sh).

On CUDA: paper sizes (presets/paper-metr-la.yaml: GPT-ST's and each baseline's defaults),
B=64, at N=207 (the real METR-LA week) and N=2,352 (SYNTHETIC: the week's sensors tiled with
per-copy noise, the graph block-diagonal; LargeST GBA's size). Rows: the pre-training step and
encoder inference, each baseline's finetune step in the plain and gptst variants (the gptst one
reading the fp16 encode cache, as finetune does), and one epoch of the week end to end
(pre-training over every training window with its validation, then Graph WaveNet/gptst: encode
cache, one epoch, validation and test). Each step is the trainer's own (``Trainer.train_step``:
the device's autocast, scaled backward, clipping, Adam); peak memory is the GPU's allocator peak
per row (on the CPU: the process's peak RSS so far). Without CUDA, or with ``--tiny``: the same
rows at the tiny preset, B=4, N=207 and 414, on whatever device there is. ``--amp-dtype
bfloat16`` trains the step rows under that autocast whatever the device: on the CPU, the GPU's
mixed-precision path (the suite runs ``--tiny --amp-dtype bfloat16``); the end-to-end epoch keeps
the stages' own precision.

    bench/gpu.sh [--tiny] [--baselines gwn stgcn ...] [--steps 5] [--amp-dtype bfloat16] [--out FILE]

Writes bench/results/gpu.json (tiny: gpu_tiny.json; ``--out``).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from speed_common import ROOT, finetune_trainer, pretrain_trainer, relative, tiled, week_graph, week_series

from gptst.device import resolve_device
from gptst.params import load_params

RESULTS = ROOT / "bench" / "results" / "gpu.json"
TINY_RESULTS = ROOT / "bench" / "results" / "gpu_tiny.json"
BASELINES = ["gwn", "stgcn", "mtgnn", "astgcn", "tgcn"]


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_mb(device: str) -> float:
    """The GPU allocator's peak since the last reset; on the CPU the process's peak RSS so far."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def third_party_imports() -> list[str]:
    """Top-level modules loaded now that are neither the standard library nor this project."""
    names = {name.split(".")[0] for name in sys.modules}
    ours = {"gptst", "speed_common", "gpu_bench", "__main__"}
    return sorted(n for n in names - ours if n not in sys.stdlib_module_names and not n.startswith("_"))


def row(what: str, model: str, variant: str, nodes: int, batch: int, seconds: float, device: str) -> dict:
    """One table row (``batch`` 0: a whole epoch, no per-sample rate); printed as it comes."""
    print(f"  {what} {model}/{variant} N={nodes}: {seconds * 1e3:.1f} ms", file=sys.stderr)
    return {
        "what": what,
        "model": model,
        "variant": variant,
        "nodes": nodes,
        "batch": batch,
        "seconds": seconds,
        "samples_per_s": batch / seconds if batch else None,
        "peak_mb": peak_mb(device),
    }


def timed(fn, steps: int, device: str) -> float:
    """Median seconds of ``fn`` over ``steps`` calls, after two warm-up calls."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(steps):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (the default without CUDA)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--baselines", nargs="+", default=BASELINES)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per row (default 5, tiny 2)")
    parser.add_argument("--out", type=Path, help=f"default {relative(RESULTS)} (tiny: {relative(TINY_RESULTS)})")
    parser.add_argument(
        "--amp-dtype",
        choices=["bfloat16", "float16"],
        help="autocast of the step rows (default: the device policy's, float32 on the CPU); "
        "bfloat16 on the CPU runs the GPU's mixed-precision path (the suite does)",
    )
    args = parser.parse_args()

    device = resolve_device(args.device)
    tiny = args.tiny or not device.startswith("cuda")
    preset, batch, large = ("tiny", 4, 414) if tiny else ("paper-metr-la", 64, 2352)
    steps = args.steps or (2 if tiny else 5)
    params = load_params(ROOT / "params.yaml", {"preset": preset})
    week = week_series()
    graph = week_graph(week, args.baselines)
    scaled = tiled(week, graph, large, baselines=args.baselines)
    datasets = {len(week.node_ids): (week, graph), large: scaled}
    rows: list[dict] = []
    started = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="gptst-gpu-bench-") as tmp:
        work = Path(tmp)
        for nodes, (series, _) in datasets.items():
            rows.extend(pretrain_rows(params, series, batch, steps, device, work / f"pre{nodes}", args.amp_dtype))
        for series, bundle in datasets.values():
            for baseline in args.baselines:
                for variant in ("plain", "gptst"):
                    rows.append(
                        finetune_row(
                            params, series, bundle, baseline, variant, batch, steps, device, work, args.amp_dtype
                        )
                    )
        rows.extend(epoch_end_to_end(params, week, graph, device, work, batch, whole=not tiny))

    total = time.perf_counter() - started
    name = torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or "cpu"
    print(
        f"\nGPT-ST and baselines, one device: {name} ({device}), preset {preset}, B={batch}, median of {steps} "
        f"steps{f', step rows under {args.amp_dtype} autocast' if args.amp_dtype else ''}; "
        f"N={large} is the week tiled (synthetic); {total:.0f} s in all; torch {torch.__version__}"
    )
    memory = "peak GPU MB" if device.startswith("cuda") else "peak RSS MB"
    header = f"{'what':<18} {'model':<8} {'variant':<7} {'N':>5} {'B':>3} {'ms':>9} {'samples/s':>10} {memory:>12}"
    print(header)
    print("-" * len(header))
    for r in rows:
        rate = f"{r['samples_per_s']:.1f}" if r["samples_per_s"] else ""
        print(
            f"{r['what']:<18} {r['model']:<8} {r['variant']:<7} {r['nodes']:>5} {r['batch']:>3} "
            f"{r['seconds'] * 1e3:>9.1f} {rate:>10} {r['peak_mb']:>12.0f}"
        )
    doc = {
        "device": device.split(":")[0],
        "device_name": name,
        "mode": "tiny" if tiny else "paper",
        "preset": preset,
        "amp_dtype": args.amp_dtype,  # None: the device policy's
        "node_counts": list(datasets),
        "total_s": total,
        "torch": torch.__version__,
        "rows": rows,
        # What this run imported beyond the standard library: what a GPU machine must have.
        "third_party_imports": third_party_imports(),
    }
    out = args.out or (TINY_RESULTS if tiny else RESULTS)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"written: {relative(out)}")


def pretrain_rows(
    params, series, batch: int, steps: int, device: str, work: Path, amp_dtype: str | None = None
) -> list[dict]:
    """The pre-training step and encoder inference at ``series``' size."""
    nodes = len(series.node_ids)
    reset_peak(device)
    trainer, sample, epoch = pretrain_trainer(params, series, batch, device, work, amp_dtype=amp_dtype)
    out = [
        row(
            "pretrain step",
            "gptst",
            "",
            nodes,
            batch,
            timed(lambda: trainer.train_step(sample, epoch), steps, device),
            device,
        )
    ]
    model = trainer.model.model.eval()
    reset_peak(device)
    with torch.no_grad():
        seconds = timed(lambda: model.encode(sample.x, sample.cal), steps, device)
    out.append(row("encoder inference", "gptst", "", nodes, batch, seconds, device))
    return out


def finetune_row(
    params,
    series,
    graph,
    baseline: str,
    variant: str,
    batch: int,
    steps: int,
    device: str,
    work: Path,
    amp_dtype: str | None = None,
) -> dict:
    """One baseline's finetune step in one variant at ``series``' size."""
    reset_peak(device)
    trainer, sample = finetune_trainer(
        params, series, graph, baseline, variant, batch, device, work, amp_dtype=amp_dtype
    )
    seconds = timed(lambda: trainer.train_step(sample, 1), steps, device)
    return row("finetune step", baseline, variant, len(series.node_ids), batch, seconds, device)


def epoch_end_to_end(params, week, graph, device: str, work: Path, batch: int, whole: bool) -> list[dict]:
    """Wall time of one pre-training epoch over every training window of the week (``whole``;
    else the preset's batches per epoch) with its validation, and of one Graph WaveNet/gptst
    finetune epoch on that encoder (encode cache, training, validation and test), as the
    stages run them."""
    from gptst.io import sha256_file
    from gptst.models.encoded import EncodedCache
    from gptst.models.gptst.bundle import load_encoder
    from gptst.training.finetune import DownstreamData, cache_encoder, finetune
    from gptst.training.pretrain import pretrain

    one_epoch = params.model_copy(
        update={
            "pretrain": params.pretrain.model_copy(
                update={
                    "epochs": 1,
                    "batch_size": batch,
                    "max_batches_per_epoch": None if whole else params.pretrain.max_batches_per_epoch,
                    "change_epoch_frac": 0.0,
                }
            ),
            "finetune": params.finetune.model_copy(
                update={
                    "common": params.finetune.common.model_copy(
                        update={
                            "epochs": 1,
                            "batch_size": batch,
                            "max_batches_per_epoch": None if whole else params.finetune.common.max_batches_per_epoch,
                        }
                    )
                }
            ),
        }
    )
    rows = []
    nodes = len(week.node_ids)
    reset_peak(device)
    synchronize(device)
    start = time.perf_counter()
    result = pretrain(one_epoch, week, state_dir=work / "epoch_pretrain", device=device)
    synchronize(device)
    rows.append(row("epoch end to end", "gptst", "", nodes, 0, time.perf_counter() - start, device))
    path = result.save_encoder(work / "encoder.pt", one_epoch, week, dataset_sha256="bench")
    bundle = load_encoder(path, map_location=device)
    data = DownstreamData.prepare(one_epoch, week, graph, device)
    reset_peak(device)
    synchronize(device)
    start = time.perf_counter()
    sha = sha256_file(path)
    cache_encoder(work / "encoded-epoch", one_epoch, data, bundle, encoder_sha256=sha, device=device)
    cache = EncodedCache.open(work / "encoded-epoch", sha)
    finetune(
        one_epoch, data, "gwn", "gptst", encoder_bundle=bundle, cache=cache, state_dir=work / "epoch_ft", device=device
    )
    synchronize(device)
    rows.append(row("epoch end to end", "gwn", "gptst", nodes, 0, time.perf_counter() - start, device))
    return rows


if __name__ == "__main__":
    main()
