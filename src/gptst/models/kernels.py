"""Hand-written autograd kernels under mixed precision: one place that casts their inputs."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def apply_kernel(kernel: type[torch.autograd.Function], *args: Any) -> Any:
    """``kernel.apply(*args)``; under autocast, on floating inputs cast to the autocast dtype with
    autocast off inside: a kernel's in-place and ``out=`` products need one dtype, and autocast
    does not cast in-place operations (the GPU trains under bfloat16 or float16 autocast)."""
    device_type = next(a for a in args if isinstance(a, Tensor)).device.type
    if not torch.is_autocast_enabled(device_type):
        return kernel.apply(*args)
    dtype = torch.get_autocast_dtype(device_type)
    args = tuple(a.to(dtype) if isinstance(a, Tensor) and a.is_floating_point() else a for a in args)
    with torch.autocast(device_type, enabled=False):
        return kernel.apply(*args)
