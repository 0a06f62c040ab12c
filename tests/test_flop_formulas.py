"""The benchmarks' FLOP count of the fused CPU kernels the torch counter skips (bench/flop_formulas.py):
each equals what the counter finds in the same computation written with plain matrix products."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from .conftest import load_bench_script


@pytest.fixture(scope="module")
def formulas():
    return load_bench_script("flop_formulas").custom_flop_formulas()


def forward_backward_flops(fn, mapping=None) -> int:
    with FlopCounterMode(display=False, custom_mapping=mapping or {}) as counter:
        fn().sum().backward()
    return counter.get_total_flops()


def test_a_fused_lstm_counts_what_its_unfused_twin_multiplies(formulas):
    torch.manual_seed(0)
    batch, hidden, layers = 7, 16, 2
    lstm = torch.nn.LSTM(5, hidden, num_layers=layers, batch_first=True)
    x = torch.randn(batch, 12, 5, requires_grad=True)
    with torch.backends.mkldnn.flags(enabled=True):
        uncounted = forward_backward_flops(lambda: lstm(x)[0])
        fused = forward_backward_flops(lambda: lstm(x)[0], formulas)
    with torch.backends.mkldnn.flags(enabled=False):
        unfused = forward_backward_flops(lambda: lstm(x)[0])
    assert uncounted == 0  # what the benchmarks reported before
    # the same products, but the gradient of the zero initial state: the unfused twin skips it
    initial_state_gradient = layers * 2 * batch * (4 * hidden) * hidden
    assert unfused > 0 and fused == unfused + initial_state_gradient


def test_cpu_flash_attention_counts_the_two_products_of_the_formula(formulas):
    torch.manual_seed(0)
    q, k, v = (torch.randn(6, 4, n, 2, requires_grad=True) for n in (9, 11, 11))
    fused = forward_backward_flops(lambda: F.scaled_dot_product_attention(q, k, v), formulas)
    written_out = forward_backward_flops(lambda: ((q @ k.transpose(-1, -2)) / 2**0.5).softmax(-1) @ v)
    assert fused == written_out > 0
