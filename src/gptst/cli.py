"""The ``gptst`` command and the error handling every stage entry point shares."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from gptst.errors import InputError

EXIT_BAD_INPUT = 2


def run_stage(body: Callable[[], int | None]) -> int:
    """Run a stage body; bad input becomes one clear line on stderr and exit code 2.

    Outputs are written atomically by the library, so an error here leaves earlier outputs
    as they were.
    """
    try:
        return body() or 0
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _cmd_params(args: argparse.Namespace) -> int:
    from gptst.params import load_params

    params = load_params(args.params)
    if args.show:
        print(json.dumps(params.model_dump(mode="json"), indent=2))
    else:
        print(f"{args.params}: valid (preset {params.preset!r}, dataset {params.dataset.name!r})")
    return 0


def _cmd_outputs(args: argparse.Namespace) -> int:
    from gptst.reporting import print_outputs

    return print_outputs(Path(args.root))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``gptst`` console script."""
    parser = argparse.ArgumentParser(prog="gptst", description="GPT-ST pipeline tools")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("params", help="validate params.yaml (with its preset) and optionally print it")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--show", action="store_true", help="print the resolved parameters as JSON")
    p.set_defaults(func=_cmd_params)
    p = sub.add_parser("outputs", help="list what the pipeline has produced (from dvc.lock)")
    p.add_argument("--root", default=".")
    p.set_defaults(func=_cmd_outputs)
    args = parser.parse_args(argv)
    return run_stage(lambda: args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
