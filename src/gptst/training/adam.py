"""Adam (Kingma & Ba, 2015) with L2 weight decay added to the gradient: the update of
``torch.optim.Adam(params, lr, weight_decay=...)`` (not amsgrad, not decoupled), step for step.

Why our own: every method of ``torch.optim.Optimizer`` is wrapped by ``torch._disable_dynamo``,
which imports ``torch._dynamo`` on first call: about 1 s of each stage process here (20
finetune items in ``make run``), for a compiler the pipeline never uses. The update below does
the same arithmetic in the same order on ``torch._foreach`` lists (tested equal to
``torch.optim.Adam``), and the state dict has the same layout (ids for parameters). It keeps what
the trainer and ``torch.amp.GradScaler`` use: ``param_groups`` (with ``lr``), ``zero_grad``,
``step``, ``state_dict`` and ``load_state_dict``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor


class Adam:
    """One parameter group; ``param_groups[0]["lr"]`` may be changed between steps."""

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        params = list(params)
        if not params:
            raise ValueError("Adam got an empty parameter list")
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"invalid Adam settings: lr={lr}, betas={betas}, eps={eps}, weight_decay={weight_decay}")
        self.param_groups: list[dict[str, Any]] = [
            {"params": params, "lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        ]
        self.state: dict[Tensor, dict[str, Tensor]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if p not in self.state:
                    self.state[p] = {
                        "step": torch.tensor(0.0),
                        "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                        "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                    }
            self._update(params, group)

    def _update(self, params: list[Tensor], group: dict[str, Any]) -> None:
        beta1, beta2 = group["betas"]
        states = [self.state[p] for p in params]
        grads = [g for g in (p.grad for p in params) if g is not None]  # every one has a gradient
        exp_avgs = [s["exp_avg"] for s in states]
        exp_avg_sqs = [s["exp_avg_sq"] for s in states]
        steps = [s["step"] for s in states]
        torch._foreach_add_(steps, 1.0)
        if group["weight_decay"] != 0:
            grads = list(torch._foreach_add(grads, params, alpha=group["weight_decay"]))
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
        # Parameters can join at different steps (a group's unused ones have no gradient): the
        # bias corrections are per parameter.
        counts = [s.item() for s in steps]
        step_sizes = [-group["lr"] / (1 - beta1**n) for n in counts]
        correction2_sqrt = [(1 - beta2**n) ** 0.5 for n in counts]
        denominators = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denominators, correction2_sqrt)
        torch._foreach_add_(denominators, group["eps"])
        torch._foreach_addcdiv_(params, exp_avgs, denominators, step_sizes)

    def state_dict(self) -> dict[str, Any]:
        """``torch.optim.Optimizer``'s layout: per-parameter state keyed by position."""
        group = self.param_groups[0]
        index = {p: i for i, p in enumerate(group["params"])}
        return {
            "state": {index[p]: dict(s) for p, s in self.state.items()},
            "param_groups": [{**{k: v for k, v in group.items() if k != "params"}, "params": list(range(len(index)))}],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        group = self.param_groups[0]
        (saved,) = state["param_groups"]
        if len(saved["params"]) != len(group["params"]):
            raise ValueError(
                f"optimizer state for {len(saved['params'])} parameters, this optimizer has {len(group['params'])}"
            )
        group.update({k: v for k, v in saved.items() if k != "params"})
        group["betas"] = tuple(group["betas"])
        params = group["params"]
        self.state = {
            # Copies: a state dict held elsewhere (or loaded twice) must not share these buffers.
            params[int(i)]: {
                k: v.detach().to(params[int(i)].device if k != "step" else "cpu", copy=True) for k, v in s.items()
            }
            for i, s in state["state"].items()
        }
