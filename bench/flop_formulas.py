"""FLOPs of the CPU kernels ``torch.utils.flop_counter`` does not count (it reports 0 for them):
oneDNN's fused LSTM layer (``nn.LSTM`` on the CPU: ST-MGCN, DMVST-Net) and the CPU flash
attention of ``F.scaled_dot_product_attention`` (ST-WA). Without these, a baseline built on them
shows a share of the matmul rate far below what it does. Counted as the dense products they
are: 2 FLOPs per multiply-add; a backward pass as twice its forward (gradients of the inputs
and of the weights), as the counter does for matrix products."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any


def lstm_layer_flops(input_shape: Any, w_ih_shape: Any, w_hh_shape: Any, *args: Any, **kwargs: Any) -> int:
    """One LSTM layer over a sequence: every step multiplies its input by ``W_ih`` [4H, I] and its
    hidden state by ``W_hh`` [4H, H] (the gates' element-wise work is not counted)."""
    rows = math.prod(input_shape[:-1])  # steps x batch
    return 2 * rows * (math.prod(w_ih_shape) + math.prod(w_hh_shape))


def lstm_layer_backward_flops(input_shape: Any, w_ih_shape: Any, w_hh_shape: Any, *args: Any, **kwargs: Any) -> int:
    return 2 * lstm_layer_flops(input_shape, w_ih_shape, w_hh_shape)


def attention_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any) -> int:
    """``q k^T`` and ``softmax(.) v`` for q [..., L, E], k [..., S, E], v [..., S, Ev]."""
    batch = math.prod(query_shape[:-2])
    length, width = query_shape[-2], query_shape[-1]
    source, value_width = key_shape[-2], value_shape[-1]
    return 2 * batch * length * source * (width + value_width)


def attention_backward_flops(
    grad_shape: Any, query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any
) -> int:
    return 2 * attention_flops(query_shape, key_shape, value_shape)


def custom_flop_formulas() -> dict[Any, Callable[..., int]]:
    """``FlopCounterMode(custom_mapping=...)`` for the kernels above (those this torch build has)."""
    import torch

    aten = torch.ops.aten
    formulas: dict[Any, Callable[..., int]] = {}
    for name, formula in (
        ("mkldnn_rnn_layer", lstm_layer_flops),
        ("mkldnn_rnn_layer_backward", lstm_layer_backward_flops),
        ("_scaled_dot_product_flash_attention_for_cpu", attention_flops),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", attention_backward_flops),
    ):
        if hasattr(aten, name):
            formulas[getattr(aten, name)] = formula
    return formulas
