"""The trainer's Adam is torch.optim.Adam's update (L2 weight decay in the gradient), step for
step, with the same state layout, and it works with the loss scaler; it exists so that a stage
process does not import torch._dynamo (torch.optim's methods do, on first call)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from gptst.training.adam import Adam


def _problem(seed: int = 0):
    torch.manual_seed(seed)
    weights = [
        torch.randn(5, 3, dtype=torch.float64, requires_grad=True),
        torch.randn(3, dtype=torch.float64, requires_grad=True),
    ]
    data = torch.randn(16, 5, dtype=torch.float64)
    return weights, data


def _loss(weights, data):
    return ((data @ weights[0] + weights[1]).tanh() ** 2).mean()


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_the_update_equals_torch_adam_step_for_step_with_rate_changes(weight_decay):
    ours_w, data = _problem()
    theirs_w = [w.detach().clone().requires_grad_(True) for w in ours_w]
    ours = Adam(ours_w, lr=0.01, weight_decay=weight_decay)
    theirs = torch.optim.Adam(theirs_w, lr=0.01, weight_decay=weight_decay)
    for step in range(25):
        if step == 10:  # a decay between steps, as the trainer's milestones and plateaus do
            for opt in (ours, theirs):
                opt.param_groups[0]["lr"] *= 0.3
        for opt, weights in ((ours, ours_w), (theirs, theirs_w)):
            opt.zero_grad(set_to_none=True)
            _loss(weights, data).backward()
            opt.step()
        for a, b in zip(ours_w, theirs_w, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-15)


def test_a_parameter_without_gradient_is_left_alone_and_starts_its_own_count_later():
    weights, data = _problem()
    frozen_then_used = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = Adam([*weights, frozen_then_used], lr=0.1)
    _loss(weights, data).backward()
    opt.step()
    assert torch.equal(frozen_then_used, torch.zeros(2, dtype=torch.float64))
    assert frozen_then_used not in opt.state
    opt.zero_grad()
    (_loss(weights, data) + frozen_then_used.sum()).backward()
    opt.step()
    assert opt.state[frozen_then_used]["step"].item() == 1 and opt.state[weights[0]]["step"].item() == 2


def test_a_state_dict_round_trip_continues_exactly_where_it_left():
    weights, data = _problem()
    opt = Adam(weights, lr=0.01)
    for _ in range(3):
        opt.zero_grad()
        _loss(weights, data).backward()
        opt.step()
    saved = {k: v for k, v in opt.state_dict().items()}
    copy = [w.detach().clone().requires_grad_(True) for w in weights]
    resumed = Adam(copy, lr=0.5)
    resumed.load_state_dict(saved)
    assert resumed.param_groups[0]["lr"] == 0.01
    for opt_, ws in ((opt, weights), (resumed, copy)):
        opt_.zero_grad()
        _loss(ws, data).backward()
        opt_.step()
    for a, b in zip(weights, copy, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="2 parameters, this optimizer has 1"):
        Adam(copy[:1], lr=0.01).load_state_dict(saved)


def test_the_loss_scaler_unscales_and_steps_it():
    weights, data = _problem()
    weights = [w.detach().float().requires_grad_(True) for w in weights]
    reference = [w.detach().clone() for w in weights]
    opt = Adam(weights, lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(_loss(weights, data.float())).backward()
    scaler.unscale_(opt)
    grads = [w.grad.clone() for w in weights]
    scaler.step(opt)
    scaler.update()
    plain = [w.clone().requires_grad_(True) for w in reference]
    _loss(plain, data.float()).backward()
    for g, p in zip(grads, plain, strict=True):
        torch.testing.assert_close(g, p.grad)  # unscaled: the true gradient
    assert all(not torch.equal(w, r) for w, r in zip(weights, reference, strict=True))


def test_training_does_not_import_the_torch_compiler():
    script = (
        "import sys, torch\n"
        "from gptst.training.trainer import Trainer, TrainerConfig, ParamGroup, StepResult\n"
        "m = torch.nn.Linear(3, 1)\n"
        "t = Trainer(m, lambda mod, b, e: StepResult(mod(b).sum()), [ParamGroup('m', list(m.parameters()), 1.0)],\n"
        "            TrainerConfig(epochs=1, lr=0.1, selection='train_loss'), checkpoint_dir='unused')\n"
        "t.optimizer.zero_grad(); t.model(torch.ones(2, 3)).sum().backward(); t.optimizer.step()\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
