"""DVC stage `finetune_params`: the resolved params every finetune item trains with, as one file.

``finetune.common`` and ``baselines.<name>`` of each listed baseline, with the preset overlaid and
each baseline's defaults (its config class) filled in, validated against the baseline registry.
The finetune items track their own keys of this file (dvc.yaml), so a baseline needs no section in
params.yaml or in any preset, presets list only what they change, and editing one baseline's
values re-runs only that baseline's items. A wrong baseline name, key or value stops here (exit 2),
before any training.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from gptst.io import write_text
from gptst.params import load_params
from gptst.stage import run_stage
from gptst.training.baseline_config import resolved_finetune_params

HEADER = "# Written by stages/finetune_params.py (DVC stage finetune_params) from params.yaml and its preset.\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", required=True, type=Path, help="the resolved params file (YAML)")
    args = parser.parse_args(argv)

    def body() -> None:
        params = load_params(args.params)
        resolved = resolved_finetune_params(params)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_text(args.out, HEADER + yaml.safe_dump(resolved, sort_keys=True, default_flow_style=False))
        print(f"finetune_params: {', '.join(resolved['baselines'])} (preset {params.preset!r}) -> {args.out}")

    return run_stage(body)


if __name__ == "__main__":
    raise SystemExit(main())
