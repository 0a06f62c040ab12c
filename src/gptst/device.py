"""Device selection: ``auto`` is CUDA when present, else CPU; nothing else hard-codes one.

:func:`device_policy` says how compute runs on a device type, chosen by the device and never by
a flag the user must know: on the CPU the fast GPT-ST kernels walk a batch in cache-sized chunks
and micro-batches (below glibc's mmap threshold) and training stays in float32; on CUDA a batch
is one chunk and training autocasts to bfloat16 (float16 with loss scaling where the GPU has
no bfloat16).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def resolve_device(requested: str = "auto") -> str:
    """Map ``auto`` / ``cpu`` / ``cuda`` / ``cuda:N`` to a usable torch device string."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} requested but CUDA is not available (use device: auto)")
    return requested


@dataclass(frozen=True)
class DevicePolicy:
    """How the model and the trainer run on one device type."""

    chunked: bool  # walk batches in chunks and micro-batches sized for CPU caches and the allocator
    autocast_dtype: torch.dtype | None  # the mixed-precision dtype when ``amp`` is on; None: float32


def device_policy(device: str | torch.device) -> DevicePolicy:
    """The :class:`DevicePolicy` of ``device`` (a string like ``cuda:1`` or a torch.device)."""
    import torch

    return _policy(torch.device(device).type)


@functools.cache
def _policy(device_type: str) -> DevicePolicy:
    import torch

    if device_type == "cpu":
        return DevicePolicy(chunked=True, autocast_dtype=None)
    if device_type == "cuda":
        return DevicePolicy(
            chunked=False, autocast_dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        )
    return DevicePolicy(chunked=False, autocast_dtype=None)
