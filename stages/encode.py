"""DVC stage `encode`: the frozen pre-trained encoder's output for every window, cached once.

Writes fp16 memory-mapped shards keyed by the encoder's sha256 (``<out>/<sha256>/shard_*.npy``
plus ``index.json``); above ``finetune.encoder_cache_max_gb`` it writes only an ``on_the_fly``
index and the gptst finetunes run the encoder per batch instead.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gptst.data.series import load_series, read_series_metadata
from gptst.device import resolve_device
from gptst.graph.bundle import load_adjacency
from gptst.io import sha256_file
from gptst.models.gptst.bundle import check_compatible, load_encoder
from gptst.params import load_params
from gptst.stage import run_stage
from gptst.tracking import dataset_input, log_stage_run
from gptst.training.finetune import DownstreamData, cache_encoder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--series", required=True, type=Path)
    parser.add_argument("--adjacency", required=True, type=Path)
    parser.add_argument("--encoder", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path, help="cache folder to (re)write")
    args = parser.parse_args(argv)

    def body() -> None:
        params = load_params(args.params)
        device = resolve_device(params.device)
        series = load_series(args.series)
        bundle = load_encoder(args.encoder, map_location=device)
        check_compatible(
            bundle,
            t_in=params.windows.t_in,
            num_nodes=len(series.node_ids),
            channels=series.channels,
            node_ids=series.node_ids,
            source=args.series,
        )
        data = DownstreamData.prepare(params, series, load_adjacency(args.adjacency), device)
        sha = read_series_metadata(args.series).get("source_sha256", "")
        index = cache_encoder(args.out, params, data, bundle, encoder_sha256=sha256_file(args.encoder), device=device)
        log_stage_run(
            "encode",
            params,
            dataset_sha256=sha,
            device=device,
            tags={"encoder_sha256": index.encoder_sha256, "mode": index.mode},
            dataset=dataset_input(params, args.series, sha, context="inference"),
            metrics={"windows": index.windows, "cache_gb": index.size_bytes / 2**30 if index.mode == "cached" else 0.0},
        )
        print(f"encode: {index.windows} windows, {index.mode} ({index.reason}) -> {args.out}")

    return run_stage(body)


if __name__ == "__main__":
    raise SystemExit(main())
