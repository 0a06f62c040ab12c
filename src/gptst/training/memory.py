"""Peak memory of a training step, estimated before training starts, and the budget it must fit.

The estimate adds what a step holds at its peak, the start of the backward pass:

- the data the run holds on the device: the series and its calendar features;
- the model's weights, and for the trainable ones their gradients and Adam's two moments;
- the activations autograd saves for the backward pass, traced by running the step once at batch
  1 and once at batch 2 on fake tensors (``FakeTensorMode``: shapes and dtypes, no storage), so a
  step that would need 50 GB is measured in a second without allocating it (up to 256 nodes the
  two small steps run for real instead: cheaper than importing the fake-tensor machinery). Batch 1
  and 2 give the part that grows with the batch and the part that does not (learned N x N graphs);
- a factor for what the backward pass holds beside them (the gradients of the activations it is
  working on) and a constant for the runtime's own buffers, both measured on the baselines and
  GPT-ST at N = 716 (``bench/memory_estimate.py``).

A trace stops at the first operation whose result depends on values (a ``.item()``, e.g. the
loss read back for logging); the steps here reach that only after the last saved activation.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from contextlib import suppress
from copy import deepcopy
from dataclasses import dataclass, fields

import torch

from gptst.data.batch import Batch
from gptst.errors import InputError

MB = 2**20
# Peak of a step over the activations saved for backward: the backward pass's working gradients
# and the forward's transients on top of them (bench/memory_estimate.py measures it).
ACTIVATION_PEAK_FACTOR = 2.0
# What the first steps allocate beside tensors (kernels' workspaces, thread pools, allocator caches),
# measured the same way.
RUNTIME_MB = 128.0
# Networks up to this many nodes are traced by running the step for real (see estimate_step_memory).
REAL_TRACE_MAX_NODES = 256


def saved_activation_bytes(
    step: Callable[[], object], weights: Iterable[torch.Tensor] = (), *, fake: bool = True
) -> int:
    """Bytes of the tensors autograd saves for backward when ``step()`` runs; ``step`` creates its
    inputs inside the call. ``weights`` (the model's parameters and buffers) and views of them are
    not counted: they are the model's, counted once elsewhere.

    With ``fake`` the step runs on fake tensors (shapes only, no memory: the inputs it creates are
    fake, the weights stay real); otherwise it runs for real, which costs its activations."""
    saved: dict[int, torch.Tensor] = {}  # held, as autograd holds them: no storage freed and reused
    if not fake:
        excluded = {w.untyped_storage().data_ptr() for w in weights}

        def pack_real(tensor: torch.Tensor) -> torch.Tensor:
            key = tensor.untyped_storage().data_ptr()  # views of one activation share it: counted once
            if key not in excluded:
                saved[key] = tensor
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack_real, lambda t: t):
            step()
        return sum(t.untyped_storage().nbytes() for t in saved.values())

    from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensor, FakeTensorMode

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    fake_weights = [mode.from_tensor(w) for w in weights]  # the fakes the trace will use for them
    excluded = {w.untyped_storage()._cdata for w in fake_weights}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if isinstance(tensor, FakeTensor):
            key = tensor.untyped_storage()._cdata
            if key not in excluded:
                saved[key] = tensor
        return tensor

    # The loss read back for logging ends the trace (suppressed): every activation is saved by then.
    with mode, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), suppress(DataDependentOutputException):
        step()
    return sum(t.untyped_storage().nbytes() for t in saved.values())


@dataclass(frozen=True)
class MemoryEstimate:
    """The estimated peak of one training step of ``what`` at ``batch_size``, in MB."""

    what: str
    batch_size: int
    data_mb: float
    weights_mb: float
    optimizer_mb: float  # gradients and Adam's moments of the trainable weights
    fixed_activations_mb: float  # saved for backward whatever the batch
    activations_per_window_mb: float
    # Windows one backward pass holds at once when a step backpropagates its batch in parts (GPT-ST
    # on the CPU); None: the whole batch.
    windows_per_backward: int | None = None

    def activations_mb(self, batch_size: int | None = None) -> float:
        b = self.batch_size if batch_size is None else batch_size
        if self.windows_per_backward is not None:
            b = min(b, self.windows_per_backward)
        return ACTIVATION_PEAK_FACTOR * (self.fixed_activations_mb + b * self.activations_per_window_mb)

    def total_mb(self, batch_size: int | None = None) -> float:
        return RUNTIME_MB + self.data_mb + self.weights_mb + self.optimizer_mb + self.activations_mb(batch_size)

    def largest_batch(self, budget_mb: float) -> int:
        """The largest batch whose estimate fits ``budget_mb`` (0: not even one window)."""
        room = budget_mb - RUNTIME_MB - self.data_mb - self.weights_mb - self.optimizer_mb
        room = room / ACTIVATION_PEAK_FACTOR - self.fixed_activations_mb
        if room < self.activations_per_window_mb:
            return 0
        if self.windows_per_backward is not None and room >= self.windows_per_backward * self.activations_per_window_mb:
            return self.batch_size  # the parts fit; a larger batch only adds parts
        return int(room // self.activations_per_window_mb) if self.activations_per_window_mb > 0 else self.batch_size

    def summary(self) -> str:
        return (
            f"{self.what} at batch {self.batch_size}: {self.total_mb():,.0f} MB estimated "
            f"(runtime {RUNTIME_MB:,.0f} + data {self.data_mb:,.0f} + weights {self.weights_mb:,.0f} "
            f"+ gradients and Adam {self.optimizer_mb:,.0f} + activations {self.activations_mb():,.0f} "
            f"= {ACTIVATION_PEAK_FACTOR} x "
            f"({self.fixed_activations_mb:,.1f} + {self._windows()} x {self.activations_per_window_mb:,.1f} "
            "per window))"
        )

    def _windows(self) -> str:
        if self.windows_per_backward is None or self.windows_per_backward >= self.batch_size:
            return str(self.batch_size)
        return f"{self.windows_per_backward} (backward in parts)"

    def as_metrics(self) -> dict[str, float]:
        """The estimate as tracking metrics."""
        return {"memory_estimate_mb": self.total_mb(), "memory_activations_mb": self.activations_mb()}


def _tensor_mb(tensors: Iterable[torch.Tensor]) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / MB


def fake_batch(template: Batch, batch_size: int) -> Batch:
    """A batch shaped like ``template`` with ``batch_size`` windows (fake inside ``FakeTensorMode``)."""
    out = {}
    for f in fields(Batch):
        like = getattr(template, f.name)
        out[f.name] = torch.zeros((batch_size, *like.shape[1:]), dtype=like.dtype, device=like.device)
    return Batch(**out)


def estimate_step_memory(
    what: str,
    module: torch.nn.Module,
    step: Callable[[torch.nn.Module, Batch], object],
    template: Batch,
    batch_size: int,
    data: Iterable[torch.Tensor] = (),
    windows_per_backward: int | None = None,
) -> MemoryEstimate:
    """Estimate one training step of ``module``: ``step(module, batch)`` runs its forward and loss;
    ``template`` is a real batch (any size) giving the shapes; ``data`` the tensors the run holds
    on the device throughout (the series); ``windows_per_backward`` the windows one backward pass
    holds when the step backpropagates in parts. The trace runs on a copy of ``module``: a forward
    pass changes state (batch-norm counters) that training must not see."""
    traced = deepcopy(module)
    # Up to REAL_TRACE_MAX_NODES the step runs for real at batch 1 and 2 (a few MB, milliseconds);
    # above, on fake tensors, whose machinery costs PyTorch ~1.5 s to import the first time.
    fake = template.x.shape[2] > REAL_TRACE_MAX_NODES
    devices = [template.x.device] if template.x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        weights = [*traced.parameters(), *traced.buffers()]
        one = saved_activation_bytes(lambda: step(traced, fake_batch(template, 1)), weights, fake=fake) / MB
        two = saved_activation_bytes(lambda: step(traced, fake_batch(template, 2)), weights, fake=fake) / MB
    per_window = max(two - one, 0.0)
    trainable = [p for p in module.parameters() if p.requires_grad]
    return MemoryEstimate(
        what=what,
        batch_size=batch_size,
        data_mb=_tensor_mb(data),
        weights_mb=_tensor_mb(module.parameters()) + _tensor_mb(module.buffers()),
        optimizer_mb=3 * _tensor_mb(trainable),
        fixed_activations_mb=max(one - per_window, 0.0),
        activations_per_window_mb=per_window,
        windows_per_backward=windows_per_backward,
    )


def device_memory_mb(device: str | torch.device) -> float:
    """Memory of ``device``: the GPU's, or this machine's physical memory for the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory / MB
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / MB
    except (ValueError, OSError, AttributeError):  # not POSIX
        import psutil

        return psutil.virtual_memory().total / MB


def memory_budget(max_memory_mb: float | None, device: str | torch.device) -> tuple[float, str]:
    """The budget in MB and what it is: ``max_memory_mb``, or the device's memory when it is None."""
    if max_memory_mb is not None:
        return max_memory_mb, "the budget"
    return device_memory_mb(device), f"this {torch.device(device).type.upper()}'s memory"


def check_memory(
    estimate: MemoryEstimate,
    budget: tuple[float, str],
    field: str,
    params_file: str = "params.yaml",
    hints: Iterable[str] = (),
) -> None:
    """Refuse, before training, a step whose estimate exceeds ``budget`` (:func:`memory_budget`),
    with the numbers and the settings that would fit; ``field`` is the batch size's key."""
    budget_mb, source = budget
    if estimate.total_mb() <= budget_mb:
        return
    fits = estimate.largest_batch(budget_mb)
    section = field.rsplit(".", 1)[0]
    advice = [f"{field}: {fits} fits" if fits >= 1 else "no batch size fits", *hints]
    raise InputError(
        params_file,
        field,
        f"{estimate.summary()} exceeds {source} of {budget_mb:,.0f} MB ({section}.max_memory_mb); " + "; ".join(advice),
    )
