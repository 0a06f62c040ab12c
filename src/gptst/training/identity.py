"""The identity of a training run: what must be equal for a checkpoint to resume.

A checkpoint resumes only when every part is equal: the resolved params of each section the
stage reads, the content of each input file, the code the stage runs (the digest of its import
closure, :mod:`gptst.code_closure`) and the device. Each part is a separate entry, so a refused
resume says which part differs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from gptst.code_closure import code_digest
from gptst.io import sha256_file
from gptst.params import Params

# Keys that say where a run may run, not what it computes: a checkpoint stays valid when they change.
NOT_IDENTITY = frozenset({"max_memory_mb"})


def _without(value: Any, keys: frozenset[str]) -> Any:
    """``value`` with the mapping keys ``keys`` left out, at any depth."""
    if isinstance(value, dict):
        return {k: _without(v, keys) for k, v in value.items() if k not in keys}
    return value


def section_digest(params: Params, dotted: str) -> str:
    """sha256 of one resolved params value (``seed``, ``windows``, ``finetune.common``), without
    the keys of ``NOT_IDENTITY``."""
    value: Any = params.model_dump(mode="json")
    for key in dotted.split("."):
        value = value[key]
    value = _without(value, NOT_IDENTITY)
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def content_digest(path: Path) -> str:
    """sha256 of a file, or of a folder's files (names and contents, in sorted order)."""
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + b"\0" + sha256_file(file).encode())
    return digest.hexdigest()


def run_identity(
    params: Params,
    sections: Iterable[str],
    *,
    inputs: Mapping[str, Path | None],
    code: Iterable[Path | str],
    device: str,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The parts of a run's identity: ``params.<section>``, ``input.<name>``, ``code``, ``device``.

    ``inputs`` maps a name to a file or folder (None: the stage has no such input); ``code`` are
    the entry files of the code the run executes (the stage script, a baseline's module).
    """
    identity = {f"params.{s}": section_digest(params, s) for s in sections}
    identity |= {f"input.{name}": content_digest(Path(p)) for name, p in inputs.items() if p is not None}
    identity["code"] = code_digest(code)
    identity["device"] = device.split(":")[0]  # the type: every DDP rank has the same identity
    identity |= dict(extra or {})
    return identity


def module_digest(module: Any) -> str:
    """sha256 of a module's state (names, shapes, dtypes and values), e.g. a frozen encoder's."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tuple(t.shape)}|{t.dtype}\0".encode())
        digest.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return digest.hexdigest()


def library_identity(params: Params, device: str, **parts: str) -> dict[str, str]:
    """The identity of a run started from the library without one (a benchmark, a notebook): the
    whole resolved params, the device type and ``parts``, so a checkpoint left by a run with other
    params (another schedule, another seed) is never resumed. Stages pass :func:`run_identity`."""
    return {"params": params.digest(), "device": device.split(":")[0], **parts}
