"""The benchmarks' per-shape profile table: where a step's time goes, op by op and input shape by
input shape, with the rate each matrix product reaches.

A per-op table says that ``aten::bmm`` took half of a step; this one says which products they
were, how often they ran and at what rate, e.g. that the GPT-ST temporal layers' step mixing
([207, 12, 12] x [207, 12, 64], 1,344 calls per step) runs at a sixth of the dense rate. Needs a
``torch.profiler`` run with ``record_shapes=True``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# Matrix products and where their two factors sit among the op's inputs.
_PRODUCT_OPERANDS = {
    "aten::mm": (0, 1),
    "aten::bmm": (0, 1),
    "aten::addmm": (1, 2),
    "aten::baddbmm": (1, 2),
    "aten::addbmm": (1, 2),
}


def product_flops(name: str, input_shapes: Sequence[Sequence[int]]) -> int | None:
    """FLOPs of one call of a matrix product (2 x multiply-adds), or None for any other op.

    ``[.., m, k] x [.., k, n]`` with the leading (batch) axes of the first factor.
    """
    operands = _PRODUCT_OPERANDS.get(name)
    if operands is None or len(input_shapes) <= max(operands):
        return None
    a, b = (input_shapes[i] for i in operands)
    if len(a) < 2 or len(b) < 2 or a[-1] != b[-2]:
        return None
    return 2 * math.prod(a[:-2]) * a[-2] * a[-1] * b[-1]


def shape_table(events, steps: int, top: int = 20) -> str:
    """The ``top`` (op, input shapes) pairs by self CPU time of a profile of ``steps`` steps.

    ``events``: ``prof.key_averages(group_by_input_shape=True)`` of a profile recorded with
    ``record_shapes=True``. Columns: self time per step, its share of the step's self time, calls
    per step, and for matrix products the GFLOP/s they reached.
    """
    total_us = sum(e.self_cpu_time_total for e in events) or 1.0
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    lines = [f"{'ms/step':>8} {'share':>6} {'calls/step':>10} {'GFLOP/s':>8}  op and input shapes", "-" * 100]
    for e in rows:
        flops = product_flops(e.key, e.input_shapes)
        rate = f"{flops * e.count / e.self_cpu_time_total / 1e3:8.1f}" if flops and e.self_cpu_time_total else " " * 8
        shapes = ", ".join(str(list(s)) for s in e.input_shapes if s)
        lines.append(
            f"{e.self_cpu_time_total / steps / 1e3:8.1f} {e.self_cpu_time_total / total_us:6.1%} "
            f"{e.count / steps:10.0f} {rate}  {e.key} {shapes}"
        )
    return "\n".join(lines)
