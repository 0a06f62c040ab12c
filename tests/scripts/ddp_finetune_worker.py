"""One rank of a data-parallel finetune, for tests/test_ddp.py.

    torchrun --standalone --nproc_per_node 2 tests/scripts/ddp_finetune_worker.py \
        --params params.yaml --overrides '{...}' --series s.parquet --adjacency a.npz --baseline tgcn --out OUT

Runs the library's :func:`gptst.training.finetune.finetune` on CPU with gloo and one thread per
process and writes ``OUT/finetune_rank{r}.pt``: this rank's weights when training ends (before
the best epoch is loaded back) and the logged history.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import gptst.training.finetune as finetune_module
from gptst.data.series import load_series
from gptst.graph.bundle import load_adjacency
from gptst.params import load_params
from gptst.training.trainer import Distributed, Trainer


def main() -> None:
    parser = argparse.ArgumentParser()
    for flag in ("--params", "--series", "--adjacency", "--baseline"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--overrides", default="{}", help="JSON {dotted key: value}")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()

    torch.set_num_threads(1)  # two ranks on two cores: no oversubscription
    dist = Distributed.from_env()
    assert dist.world == 2, f"run under torchrun with 2 processes (WORLD_SIZE={dist.world})"
    dist.init("cpu")
    out: Path = args.out
    captured: dict[str, object] = {}

    class CapturingTrainer(Trainer):
        def _load_best(self) -> None:
            captured["model"] = {k: v.clone() for k, v in self.model.state_dict().items()}
            captured["ddp"] = isinstance(self.train_module, torch.nn.parallel.DistributedDataParallel)
            super()._load_best()

    finetune_module.Trainer = CapturingTrainer  # type: ignore[misc]
    params = load_params(args.params, overrides=json.loads(args.overrides))
    data = finetune_module.DownstreamData.prepare(params, load_series(args.series), load_adjacency(args.adjacency))
    result = finetune_module.finetune(
        params, data, args.baseline, "plain", state_dir=out / "state", device="cpu", dist=dist, identity={"run": "ddp"}
    )
    torch.save({**captured, "history": result.fit.history}, out / f"finetune_rank{dist.rank}.pt")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
