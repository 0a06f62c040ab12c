"""Device selection: ``auto`` is CUDA when present, else CPU; nothing else hard-codes one."""

from __future__ import annotations


def resolve_device(requested: str = "auto") -> str:
    """Map ``auto`` / ``cpu`` / ``cuda`` / ``cuda:N`` to a usable torch device string."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} requested but CUDA is not available (use device: auto)")
    return requested
