"""The trainer every stage uses: pre-training and each finetune.

Driven by ``step_fn(model, batch, epoch) -> StepResult`` and an optional
``val_fn(model, epoch) -> float`` (lower is better), it runs Adam with step decay, clips the
gradient norm of each parameter group separately, selects the best epoch (validation metric or
training loss), stops early after ``patience`` epochs without improvement (never before
``min_epochs``; with ``plateau_decays`` > 0 the first such plateaus decay the learning rate and
restart the count instead), and writes an atomic checkpoint after every epoch: model, optimiser
(with the current rate), epoch, early-stopping state, RNG states and the states of stateful
helpers (the masker's generator), so an interrupted run resumes to the same final weights.

Data-parallel: under ``torchrun`` the model is wrapped in ``DistributedDataParallel``; each
rank gets its own shard of every global batch (:func:`epoch_batches`) and rank 0 alone writes
checkpoints and logs. Mixed precision (autocast, with a gradient scaler for float16) runs on
CUDA when ``amp`` is set; ``amp_dtype="bfloat16"`` also exercises the autocast path on CPU.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar, cast

import numpy as np
import torch
from torch import nn

from gptst.data.batch import Batch
from gptst.device import device_policy, retain_freed_memory
from gptst.io import atomic_path
from gptst.timing import phase
from gptst.training.adam import Adam
from gptst.training.grad import clip_grad_norm

CHECKPOINT = "last.pt"
BEST_WEIGHTS = "best.pt"

ModelT = TypeVar("ModelT", bound=nn.Module)


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class StepResult:
    """What ``step_fn`` returns: the loss to backpropagate and floats to log (averaged per epoch)."""

    loss: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)
    # True when step_fn already backpropagated (in parts of the batch); the trainer then does not.
    backward_done: bool = False


@dataclass
class ParamGroup:
    """Parameters clipped together to ``max_norm`` (None: not clipped)."""

    name: str
    params: list[nn.Parameter]
    max_norm: float | None


@dataclass
class TrainerConfig:
    epochs: int
    lr: float
    lr_decay_epochs: list[int] = field(default_factory=list)
    lr_decay_rate: float = 0.3
    weight_decay: float = 0.0
    patience: int = 10
    min_epochs: int = 0
    # Plateaus that decay the rate (lr *= lr_decay_rate) before one stops the run: a noisy
    # validation curve at a high rate no longer ends training before a lower rate was tried.
    plateau_decays: int = 0
    selection: str = "val"  # "val" | "train_loss"
    amp: bool = False
    # None: the device policy's (CUDA: bfloat16, float16 without it); "bfloat16" enables CPU autocast
    amp_dtype: str | None = None
    progress: bool | None = None  # None: a progress bar only on an interactive terminal outside CI


@dataclass
class Distributed:
    """This process's place in a data-parallel run (world 1: a plain single-process run)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Distributed:
        """torchrun's RANK / WORLD_SIZE / LOCAL_RANK, or a single process."""
        return cls(
            rank=int(os.environ.get("RANK", 0)),
            world=int(os.environ.get("WORLD_SIZE", 1)),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def init(self, device: str) -> None:
        """Join the process group (NCCL on CUDA, gloo on CPU) when there is more than one rank."""
        if self.world > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if device.startswith("cuda") else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(self.local_rank)  # barriers and object collectives use the current device
            torch.distributed.init_process_group(backend=backend, rank=self.rank, world_size=self.world)


@dataclass
class FitResult:
    best_epoch: int
    best_metric: float
    epochs_run: int
    stopped_early: bool
    resumed_from: int
    history: list[dict[str, float]]


def epoch_batches(
    starts: np.ndarray, batch_size: int, epoch: int, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True
) -> list[np.ndarray]:
    """This rank's window starts for each step of ``epoch``.

    The order is a permutation seeded by (seed, epoch), identical on every rank, so a resumed
    epoch replays the same batches. A global batch holds ``batch_size`` windows per rank; each
    rank takes its own slice. The last, short global batch is split evenly (dropped only when it
    has fewer windows than ranks), so every rank runs the same number of steps.
    """
    order = np.random.default_rng([seed, epoch]).permutation(len(starts)) if shuffle else np.arange(len(starts))
    ordered = np.asarray(starts)[order]
    per_step = batch_size * world
    out = []
    for lo in range(0, len(ordered), per_step):
        chunk = ordered[lo : lo + per_step]
        if len(chunk) == per_step:
            out.append(chunk[rank * batch_size : (rank + 1) * batch_size])
        elif len(chunk) >= world:
            out.append(np.array_split(chunk, world)[rank])
    return out


class Trainer(Generic[ModelT]):
    """Fits ``model`` with ``step_fn``; see the module docstring for what it guarantees."""

    def __init__(
        self,
        model: ModelT,
        step_fn: Callable[[nn.Module, Batch, int], StepResult],
        groups: list[ParamGroup],
        config: TrainerConfig,
        *,
        checkpoint_dir: str | Path,
        device: str = "cpu",
        val_fn: Callable[[ModelT, int], float] | None = None,
        stateful: Mapping[str, Stateful] | None = None,
        identity: Mapping[str, str] | None = None,
        dist: Distributed | None = None,
        log_fn: Callable[[int, dict[str, float]], None] | None = None,
    ) -> None:
        if config.selection == "val" and val_fn is None:
            raise ValueError("selection 'val' needs a val_fn")
        self.model = model.to(device)
        self.step_fn = step_fn
        self.groups = groups
        self.config = config
        self.device = device
        self.val_fn = val_fn
        self.stateful = dict(stateful or {})
        self.identity = dict(identity or {})
        self.dist = dist or Distributed()
        self.log_fn = log_fn
        self.checkpoint_dir = Path(checkpoint_dir)
        params = [p for g in groups for p in g.params]
        if len({id(p) for p in params}) != len(params):
            raise ValueError("a parameter belongs to two groups")
        self.optimizer = Adam(params, lr=config.lr, weight_decay=config.weight_decay)
        if device_policy(device).retain_heap:
            retain_freed_memory()
        self.amp_dtype = _amp_dtype(config, device)
        # Loss scaling is only needed for float16: bfloat16 has float32's exponent range.
        self.grad_scaler = torch.amp.GradScaler(
            device.split(":")[0], enabled=self.amp_dtype == torch.float16 and device.startswith("cuda")
        )
        self.train_module: nn.Module = self.model
        if self.dist.world > 1:
            # Unused parameters: before E0 the mask predictor has no loss.
            self.train_module = nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.dist.local_rank] if device.startswith("cuda") else None,
                find_unused_parameters=True,
            )

    # ------------------------------------------------------------------------------ training
    def fit(self, train_batches: Callable[[int], Iterable[Batch]], steps_per_epoch: int | None = None) -> FitResult:
        """Train from the last checkpoint (if it has this run's identity) to the end."""
        with phase("train"):
            return self._fit(train_batches, steps_per_epoch)

    def _fit(self, train_batches: Callable[[int], Iterable[Batch]], steps_per_epoch: int | None) -> FitResult:
        cfg = self.config
        state = self._resume()
        start = state["epoch"] + 1
        best, best_epoch, bad = state["best_metric"], state["best_epoch"], state["bad_epochs"]
        decays = int(state.get("plateau_decays_done", 0))
        history: list[dict[str, float]] = state["history"]
        epoch = state["epoch"]
        # A checkpoint saved by the epoch that stopped early (a kill before the run returned, or a
        # re-run of a finished item): it stays stopped, no epoch is added.
        stopped = epoch >= 1 and epoch >= cfg.min_epochs and bad >= cfg.patience
        if stopped:
            start = cfg.epochs + 1
        if self.log_fn is not None and self.dist.is_main:
            # A resumed run's tracking shows the whole curve, not only the epochs it adds.
            for row in history:
                self.log_fn(int(row["epoch"]), _finite(row))
        for epoch in range(start, cfg.epochs + 1):
            started = time.perf_counter()
            train_logs = self._mean_over_ranks(self._train_epoch(train_batches(epoch), epoch, steps_per_epoch))
            row = {"epoch": float(epoch), **{f"train_{k}": v for k, v in train_logs.items()}}
            row["lr"] = self.optimizer.param_groups[0]["lr"]  # the rate this epoch trained with
            self._decay_at_milestones(epoch)
            if self.val_fn is not None:
                self.model.eval()
                with torch.no_grad(), self._autocast():
                    row["val_metric"] = float(self.val_fn(self.model, epoch))
            metric = row["val_metric"] if cfg.selection == "val" else row["train_loss"]
            improved = math.isfinite(metric) and metric < best
            if improved:
                best, best_epoch, bad = metric, epoch, 0
                self._save_best()
            else:
                bad += 1
            plateau = epoch >= cfg.min_epochs and bad >= cfg.patience
            if plateau and decays < cfg.plateau_decays:
                for group in self.optimizer.param_groups:
                    group["lr"] *= cfg.lr_decay_rate
                decays, bad, plateau = decays + 1, 0, False
                self._say(f"epoch {epoch}: no improvement for {cfg.patience} epochs, learning rate decayed")
            row["seconds"] = time.perf_counter() - started
            history.append(row)
            self._save_checkpoint(epoch, best, best_epoch, bad, history, decays)
            self._report(row, epoch, improved)
            if plateau:
                stopped = True
                break
        self._barrier()
        self._load_best()
        return FitResult(
            best_epoch=best_epoch,
            best_metric=best,
            epochs_run=epoch,
            stopped_early=stopped,
            resumed_from=int(state["epoch"]),
            history=history,
        )

    def _train_epoch(self, batches: Iterable[Batch], epoch: int, steps: int | None) -> dict[str, float]:
        self.train_module.train()
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        bar = self._progress(epoch, steps)
        for batch in batches:
            logs = self.train_step(batch, epoch)
            for key, value in logs.items():
                if math.isfinite(value):
                    sums[key] = sums.get(key, 0.0) + value
                    counts[key] = counts.get(key, 0) + 1
            if bar is not None:
                bar.set_postfix(loss=f"{logs['loss']:.4f}")
                bar.update(1)
        if bar is not None:
            bar.close()
        if not counts:
            raise RuntimeError(f"epoch {epoch} had no training batch")
        return {k: sums[k] / counts[k] for k in sums}

    def _decay_at_milestones(self, epoch: int) -> None:
        """After training epoch ``epoch``: the rate times ``lr_decay_rate`` once per milestone equal
        to it (``torch.optim.lr_scheduler.MultiStepLR``'s rule, on top of plateau decays)."""
        hits = list(self.config.lr_decay_epochs).count(epoch)
        if hits:
            for group in self.optimizer.param_groups:
                group["lr"] *= self.config.lr_decay_rate**hits

    def train_step(self, batch: Batch, epoch: int) -> dict[str, float]:
        """One optimisation step on ``batch``: forward under the device's autocast, (scaled)
        backward, clipping per parameter group, the update; returns the step's logs. The
        speed benchmarks time exactly this."""
        batch = batch.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            result = self.step_fn(self.train_module, batch, epoch)
        if result.backward_done:
            if self.grad_scaler.is_enabled():
                raise RuntimeError("a step that backpropagates itself cannot be loss-scaled (float16 autocast)")
        else:
            self.grad_scaler.scale(result.loss).backward()
        # The scaler reads param_groups and calls step(): our Adam has both (it is no torch Optimizer).
        scaled = cast("torch.optim.Optimizer", self.optimizer)
        self.grad_scaler.unscale_(scaled)
        logs = {"loss": float(result.loss.detach()), **result.logs}
        for group in self.groups:
            logs[f"grad_norm_{group.name}"] = float(clip_grad_norm(group.params, group.max_norm))
        self.grad_scaler.step(scaled)
        self.grad_scaler.update()
        return logs

    def _mean_over_ranks(self, logs: dict[str, float]) -> dict[str, float]:
        """The epoch's logs averaged over ranks (every rank runs the same number of steps), so
        every rank sees the same train loss: selection "train_loss" then makes the same
        best-epoch and early-stopping decisions everywhere (a rank stopping alone would hang the
        others in their next all-reduce)."""
        if self.dist.world == 1 or not torch.distributed.is_initialized():
            return logs
        gathered: list[dict[str, float] | None] = [None] * self.dist.world
        torch.distributed.all_gather_object(gathered, logs)
        keys = list(dict.fromkeys(k for g in gathered if g for k in g))  # rank 0's order, the same on every rank
        return {k: float(np.mean([g[k] for g in gathered if g and k in g])) for k in keys}

    def _autocast(self) -> Any:
        if self.amp_dtype is None:
            return torch.autocast(device_type=self.device.split(":")[0], enabled=False)
        return torch.autocast(device_type=self.device.split(":")[0], dtype=self.amp_dtype)

    # --------------------------------------------------------------------------- checkpoints
    def _state_path(self, name: str) -> Path:
        return self.checkpoint_dir / name

    def _rank_state_path(self, epoch: int) -> Path:
        return self.checkpoint_dir / f"rank{self.dist.rank}.epoch{epoch}.pt"

    def _save_checkpoint(
        self, epoch: int, best: float, best_epoch: int, bad: int, history: list, plateau_decays_done: int
    ) -> None:
        # Each rank keeps its own RNG and helper states (the masker is seeded per rank).
        rank_state = {
            "epoch": epoch,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "stateful": {name: obj.state_dict() for name, obj in self.stateful.items()},
        }
        # Written before last.pt and named by epoch: a kill between the two writes leaves the
        # previous epoch's pair intact, and older rank states go only once last.pt is replaced.
        _atomic_save(rank_state, self._rank_state_path(epoch))
        if self.dist.is_main:
            _atomic_save(
                {
                    "identity": self.identity,
                    "world": self.dist.world,
                    "epoch": epoch,
                    "model": self.model.state_dict(),
                    "optimizer": self.optimizer.state_dict(),  # holds the current rate
                    "grad_scaler": self.grad_scaler.state_dict(),
                    "best_metric": best,
                    "best_epoch": best_epoch,
                    "bad_epochs": bad,
                    "plateau_decays_done": plateau_decays_done,
                    "history": history,
                },
                self._state_path(CHECKPOINT),
            )
        self._barrier()
        for old in self.checkpoint_dir.glob(f"rank{self.dist.rank}.epoch*.pt"):
            if old != self._rank_state_path(epoch):
                old.unlink(missing_ok=True)

    def _save_best(self) -> None:
        if self.dist.is_main:
            _atomic_save(self.model.state_dict(), self._state_path(BEST_WEIGHTS))

    def _load_best(self) -> None:
        path = self._state_path(BEST_WEIGHTS)
        if path.is_file():
            self.model.load_state_dict(torch.load(path, map_location=self.device, weights_only=True))

    def _resume(self) -> dict[str, Any]:
        fresh = {
            "epoch": 0,
            "best_metric": math.inf,
            "best_epoch": 0,
            "bad_epochs": 0,
            "plateau_decays_done": 0,
            "history": [],
        }
        path = self._state_path(CHECKPOINT)
        if self.dist.is_main:
            for stale in self.checkpoint_dir.glob(".*.tmp"):  # left by a kill during a save
                stale.unlink(missing_ok=True)
        if not path.is_file():
            return fresh
        state = torch.load(path, map_location=self.device, weights_only=True)
        differs = identity_differences(
            {**state.get("identity", {}), "world": str(state.get("world"))},
            {**self.identity, "world": str(self.dist.world)},
        )
        if differs:
            self._say(f"checkpoint {path} is not this run's ({'; '.join(differs)}): starting afresh")
            return fresh
        rank_path = self._rank_state_path(state["epoch"])
        rank_state = torch.load(rank_path, map_location="cpu", weights_only=True) if rank_path.is_file() else None
        if rank_state is None or rank_state["epoch"] != state["epoch"]:
            self._say(f"checkpoint {path} has no matching state for rank {self.dist.rank}: starting afresh")
            return fresh
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.grad_scaler.load_state_dict(state["grad_scaler"])
        torch.set_rng_state(rank_state["torch_rng"])
        if rank_state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rank_state["cuda_rng"])
        for name, obj in self.stateful.items():
            obj.load_state_dict(rank_state["stateful"][name])
        self._say(f"resuming after epoch {state['epoch']} from {path}")
        return state

    def _barrier(self) -> None:
        if self.dist.world > 1 and torch.distributed.is_initialized():
            torch.distributed.barrier()

    # ------------------------------------------------------------------------------ reporting
    def _progress(self, epoch: int, steps: int | None) -> Any:
        show = self.config.progress
        if show is None:
            show = sys.stderr.isatty() and not os.environ.get("CI")
        if not show or not self.dist.is_main:
            return None
        from tqdm import tqdm

        return tqdm(total=steps, desc=f"epoch {epoch}/{self.config.epochs}", leave=False, dynamic_ncols=True)

    def _report(self, row: dict[str, float], epoch: int, improved: bool) -> None:
        if not self.dist.is_main:
            return
        if self.log_fn is not None:
            self.log_fn(epoch, _finite(row))
        done = [r["seconds"] for r in [row]]
        eta = (self.config.epochs - epoch) * float(np.mean(done))
        parts = [
            f"{k.removeprefix('train_')} {v:.4g}" for k, v in row.items() if k.startswith("train_") and "grad" not in k
        ]
        val = f"  val {row['val_metric']:.4f}" if "val_metric" in row else ""
        mark = " *" if improved else ""
        self._say(
            f"epoch {epoch}/{self.config.epochs}  {'  '.join(parts)}{val}{mark}  "
            f"lr {row['lr']:.2g}  {row['seconds']:.1f} s  ETA {eta:.0f} s"
        )

    def _say(self, message: str) -> None:
        if self.dist.is_main:
            print(message, flush=True)


def identity_differences(saved: Mapping[str, str], current: Mapping[str, str]) -> list[str]:
    """What makes a checkpoint another run's: one line per part of the identity that differs."""

    def short(value: str | None) -> str:
        return "absent" if value is None else (value[:12] if len(value) > 16 else value)

    return [
        f"{key} differs (checkpoint {short(saved.get(key))}, now {short(current.get(key))})"
        for key in sorted(set(saved) | set(current))
        if saved.get(key) != current.get(key)
    ]


def _finite(row: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in row.items() if k != "epoch" and math.isfinite(v)}


def _amp_dtype(config: TrainerConfig, device: str) -> torch.dtype | None:
    if not config.amp:
        return None
    if config.amp_dtype is not None:
        return {"bfloat16": torch.bfloat16, "float16": torch.float16}[config.amp_dtype]
    return device_policy(device).autocast_dtype  # CPU: full precision unless asked for explicitly


def _atomic_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
