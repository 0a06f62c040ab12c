"""The benchmarks' per-shape profile table (bench/profile_tables.py): each matrix product's FLOPs
from its input shapes, and a profile's (op, shapes) rows with their calls and time per step."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from .conftest import load_bench_script


@pytest.fixture(scope="module")
def tables():
    return load_bench_script("profile_tables")


@pytest.mark.parametrize(
    ("op", "args"),
    [
        ("aten::mm", lambda: (torch.randn(5, 7), torch.randn(7, 3))),
        ("aten::bmm", lambda: (torch.randn(4, 5, 7), torch.randn(4, 7, 3))),
        ("aten::addmm", lambda: (torch.randn(3), torch.randn(5, 7), torch.randn(7, 3))),
        ("aten::baddbmm", lambda: (torch.randn(4, 5, 3), torch.randn(4, 5, 7), torch.randn(4, 7, 3))),
    ],
)
def test_a_products_flops_from_its_shapes_are_what_torchs_counter_counts(tables, op, args):
    inputs = args()
    fn = getattr(torch, op.removeprefix("aten::"))
    with FlopCounterMode(display=False) as counter:
        fn(*inputs)

    assert tables.product_flops(op, [list(x.shape) for x in inputs]) == counter.get_total_flops()


def test_other_ops_and_mismatched_shapes_have_no_product_flops(tables):
    assert tables.product_flops("aten::add", [[5, 7], [5, 7]]) is None
    assert tables.product_flops("aten::mm", [[5, 7], [6, 3]]) is None
    assert tables.product_flops("aten::mm", [[5, 7]]) is None


def test_the_table_lists_each_shape_of_an_op_with_its_calls_per_step_and_rate(tables):
    a, b = torch.randn(64, 32), torch.randn(32, 16)
    batch_a, batch_b = torch.randn(8, 12, 12), torch.randn(8, 12, 64)
    steps = 2
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            for _ in range(3):
                a @ b
            torch.bmm(batch_a, batch_b)
    events = prof.key_averages(group_by_input_shape=True)

    table = tables.shape_table(events, steps, top=50)

    mm_row = next(line for line in table.splitlines() if "aten::mm [64, 32], [32, 16]" in line)
    bmm_row = next(line for line in table.splitlines() if "aten::bmm [8, 12, 12], [8, 12, 64]" in line)
    assert mm_row.split()[2] == "3" and bmm_row.split()[2] == "1"  # calls per step
    mm = next(e for e in events if e.key == "aten::mm" and list(e.input_shapes[0]) == [64, 32])
    expected_rate = 2 * 64 * 32 * 16 * mm.count / mm.self_cpu_time_total / 1e3
    assert float(mm_row.split()[3]) == pytest.approx(expected_rate, abs=0.06)
    assert float(mm_row.split()[0]) == pytest.approx(mm.self_cpu_time_total / steps / 1e3, abs=0.06)
