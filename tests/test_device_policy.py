"""How compute runs is chosen by the device, never by a flag: on the CPU the fast GPT-ST kernels
walk batches in chunks and micro-batches and training stays float32; on CUDA a batch is one chunk
and training autocasts to bfloat16 (float16 where the GPU lacks it). CUDA is mocked here; the
fast-vs-naive check on a real GPU is in test_gptst_model.py and skipped without one."""

from __future__ import annotations

import pytest
import torch

from gptst import device as device_module
from gptst.device import device_policy
from gptst.models.gptst import layers
from gptst.models.gptst.config import GptstConfig
from gptst.models.gptst.model import build_model
from gptst.training.trainer import TrainerConfig, _amp_dtype


@pytest.fixture
def cuda_bf16(monkeypatch):
    """Pretend the GPU does (True) or does not (False) support bfloat16."""

    def set_support(supported: bool) -> None:
        device_module._policy.cache_clear()
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)

    yield set_support
    device_module._policy.cache_clear()


def _config(**amp) -> TrainerConfig:
    return TrainerConfig(epochs=1, lr=1e-3, **amp)


def test_the_cpu_chunks_and_trains_in_float32():
    policy = device_policy("cpu")
    assert policy.chunked and policy.autocast_dtype is None
    assert _amp_dtype(_config(amp=True), "cpu") is None


def test_cuda_runs_whole_batches_in_bfloat16(cuda_bf16):
    cuda_bf16(True)
    policy = device_policy("cuda:1")
    assert not policy.chunked and policy.autocast_dtype is torch.bfloat16
    assert _amp_dtype(_config(amp=True), "cuda:1") is torch.bfloat16
    assert _amp_dtype(_config(amp=False), "cuda:1") is None


def test_a_gpu_without_bfloat16_gets_float16(cuda_bf16):
    cuda_bf16(False)
    assert device_policy("cuda").autocast_dtype is torch.float16
    assert _amp_dtype(_config(amp=True), "cuda") is torch.float16


def test_an_explicit_amp_dtype_wins_over_the_device_choice(cuda_bf16):
    cuda_bf16(True)
    assert _amp_dtype(_config(amp=True, amp_dtype="float16"), "cuda") is torch.float16
    assert _amp_dtype(_config(amp=True, amp_dtype="bfloat16"), "cpu") is torch.bfloat16


def test_the_fast_kernels_chunk_a_cpu_batch_and_take_any_other_device_whole():
    per_sample = 12 * 207 * 64
    cpu = torch.empty(64, 12, 207, 64)
    elsewhere = torch.empty(64, 12, 207, 64, device="meta")  # not the CPU: stands for a GPU
    assert len(layers._chunks(cpu, 4 * per_sample)) == 16
    assert layers._chunks(elsewhere, 4 * per_sample) == [slice(0, 64)]


def test_the_model_micro_batches_only_on_the_cpu():
    model = build_model(GptstConfig(num_nodes=207, t_in=12, channels=1))
    assert len(model._micro_batches(torch.empty(64, 12, 207, 1))) == 2
    assert model._micro_batches(torch.empty(64, 12, 207, 1, device="meta")) == [slice(0, 64)]


def test_training_on_the_cpu_keeps_freed_memory_mapped_and_the_gpu_policy_does_not(monkeypatch, cuda_bf16):
    from gptst.training import trainer as trainer_module
    from gptst.training.trainer import ParamGroup, StepResult, Trainer

    calls = []
    monkeypatch.setattr(trainer_module, "retain_freed_memory", lambda: calls.append(1) or True)
    cuda_bf16(True)
    assert device_policy("cpu").retain_heap and not device_policy("cuda").retain_heap
    model = torch.nn.Linear(3, 1)

    def build(device: str) -> None:
        Trainer(
            model,
            lambda m, b, e: StepResult(m(b).sum()),
            [ParamGroup("m", list(model.parameters()), 1.0)],
            _config(selection="train_loss"),
            checkpoint_dir="unused",
            device=device,
        )

    build("cpu")
    assert calls == [1]


def test_retaining_freed_memory_is_applied_on_glibc_linux():
    import platform

    from gptst.device import retain_freed_memory

    expected = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert retain_freed_memory() is expected
