"""One rank of a data-parallel pre-training run, for tests/test_ddp.py.

    torchrun --standalone --nproc_per_node 2 tests/scripts/ddp_worker.py \
        --params params.yaml --overrides '{"pretrain.epochs": 2}' --series s.parquet --out OUT

Runs the library's :func:`gptst.training.pretrain.pretrain` on CPU with gloo and one thread per
process, and writes ``OUT/final_rank{r}.pt``: this rank's weights and optimiser state when
training ends. They are captured just before the trainer loads ``best.pt`` (which every rank
reads from the same file, so the weights after that prove nothing about the ranks agreeing).
The checkpoints go to ``OUT/state`` (``last.pt``, ``rank{r}.epoch{k}.pt``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import gptst.training.pretrain as pretrain_module
from gptst.data.series import load_series
from gptst.params import load_params
from gptst.training.trainer import Distributed, Trainer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", required=True)
    parser.add_argument("--overrides", default="{}", help="JSON {dotted key: value}")
    parser.add_argument("--series", required=True)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()

    torch.set_num_threads(1)  # two ranks on two cores: no oversubscription
    torch.manual_seed(0)  # pretrain() seeds again from params.seed; nothing random may come before it
    dist = Distributed.from_env()
    assert dist.world == 2, f"run under torchrun with 2 processes (WORLD_SIZE={dist.world})"
    dist.init("cpu")
    assert torch.distributed.get_backend() == "gloo"

    out: Path = args.out

    class CapturingTrainer(Trainer):
        def _load_best(self) -> None:
            torch.save(
                {
                    "model": self.model.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "ddp": isinstance(self.train_module, torch.nn.parallel.DistributedDataParallel),
                },
                out / f"final_rank{dist.rank}.pt",
            )
            super()._load_best()

    pretrain_module.Trainer = CapturingTrainer  # type: ignore[misc]
    params = load_params(args.params, overrides=json.loads(args.overrides))
    series = load_series(args.series)
    result = pretrain_module.pretrain(
        params, series, state_dir=out / "state", device="cpu", dist=dist, identity={"run": "ddp-test"}
    )
    print(f"rank {dist.rank}: epochs run {result.fit.epochs_run}, best epoch {result.fit.best_epoch}", flush=True)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
