"""GPT-ST building blocks, fast implementation (GPTST_SPEC sections 1-3).

Every block keeps activations as [B, T, N, D]. The parameters of a block are defined here once;
:mod:`gptst.models.gptst.naive` subclasses these blocks and re-implements only ``forward``
spec-literally, so both implementations share state_dict keys.

Customised (generated) parameters are stored as pools with a leading embedding axis and turned
into weights by :func:`generate`; with ``customised_params=False`` the same attribute holds one
static tensor without that axis, and :func:`generate` returns it unchanged.

The fast blocks run their [B, T, N, D]-sized work in hand-written autograd kernels (``_*`` Function
classes below): they keep one [B, T, N, D] tensor per layer for backward instead of ~4, never
build the [B, T, HS, N, D] prediction tensor, mix steps with A^T A in one product per node, and
let the first layer after the input projection work on its rank C+1 form (:class:`LowRank`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gptst.device import device_policy
from gptst.models.gptst.config import GptstConfig
from gptst.models.kernels import apply_kernel

NEGATIVE_SLOPE = 0.01
SQUASH_EPS = 1e-8


def squash(x: Tensor) -> Tensor:
    """Capsule non-linearity on the last axis: ``|x|^2 / (1 + |x|^2) * x / sqrt(|x|^2 + 1e-8)``."""
    # One [..., 1] factor times x: autograd then keeps x and the small factor, not a second
    # full-size intermediate.
    return x * _squash_factor(_squared_norm(x)).to(x.dtype)


def _squared_norm(x: Tensor) -> Tensor:
    """``|x|^2`` [..., 1] in at least float32: eps = 1e-8 and large norms do not fit float16."""
    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    # A reduction kernel: no [..., D] temporary, unlike (x * x).sum(-1).
    return torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=dtype).square()


def _squash_factor(squared_norm: Tensor) -> Tensor:
    return squared_norm / (1.0 + squared_norm) * torch.rsqrt(squared_norm + SQUASH_EPS)


def leaky_relu(x: Tensor) -> Tensor:
    return F.leaky_relu(x, NEGATIVE_SLOPE)


def _leaky_relu_backward(grad: Tensor, out: Tensor, into: Tensor | None = None) -> Tensor:
    """Gradient of LeakyReLU from its output (optionally written ``into`` a given tensor).

    The sign of the output is the sign of the input (positive slope), so the output suffices.
    """
    if into is None:
        return torch.ops.aten.leaky_relu_backward(grad, out, NEGATIVE_SLOPE, True)
    return torch.ops.aten.leaky_relu_backward.grad_input(grad, out, NEGATIVE_SLOPE, True, grad_input=into)


def generate(embedding: Tensor | None, param: Tensor) -> Tensor:
    """Customised weights: ``embedding [..., E] . pool [E, *shape] -> [..., *shape]``.

    A static parameter (``embedding`` None, ``customised_params=False``) is returned as is.
    """
    if embedding is None:
        return param
    # matmul rather than tensordot: it follows autocast.
    return (embedding @ param.reshape(param.shape[0], -1)).reshape(embedding.shape[:-1] + param.shape[1:])


def _pool(customised: bool, embed: int, *shape: int) -> nn.Parameter:
    """A parameter pool [embed, *shape] when customised, else one static tensor [*shape]."""
    full = (embed, *shape) if customised else shape
    return nn.Parameter(torch.empty(full))


class LowRank(NamedTuple):
    """A [B,T,N,D] activation given as ``basis @ coef``: basis [B,T,N,R] (no gradient), coef [R,D].

    The input projection Linear(C -> D) is rank C+1 per cell (C+2 with the learned mask token),
    so the first layer after it can do R x D work per cell instead of D x D.
    """

    basis: Tensor
    coef: Tensor

    def dense(self) -> Tensor:
        return self.basis @ self.coef


def project_input(
    x: Tensor,
    proj: nn.Linear,
    mask: Tensor | None = None,
    zero_value: Tensor | None = None,
    token: Tensor | None = None,
) -> LowRank:
    """``proj(x)`` with masked cells replaced, as a :class:`LowRank`.

    ``zero_value`` [C]: masked cells of x become the normalised raw 0 before the projection.
    ``token`` [D]: the projection of masked cells becomes the learned token.
    """
    ones = torch.ones_like(x[..., :1])
    coef = [proj.weight.T, proj.bias.unsqueeze(0)]
    if mask is None:
        basis = [x, ones]
    elif token is not None:
        masked = mask.unsqueeze(-1)
        keep = (~masked).to(x.dtype)
        # where, not x * keep: a NaN under the mask must not leak through 0 * NaN.
        basis = [torch.where(masked, 0.0, x), keep, 1.0 - keep]
        coef.append(token.to(x.dtype).unsqueeze(0))
    else:
        assert zero_value is not None, "masking without a token needs zero_value"  # GptstEncoder checks it
        basis = [torch.where(mask.unsqueeze(-1), zero_value.to(x.dtype), x), ones]
    return LowRank(torch.cat(basis, dim=-1), torch.cat(coef, dim=0))


# --------------------------------------------------------------------------- fused kernels
# Hand-written backward passes for the [B, T, N, D]-sized work. Autograd would keep every
# intermediate (mixed steps, pre-activations, permuted copies: ~4 tensors of [B,T,N,D] per
# layer); these kernels keep only the layer input and output (shared with the neighbouring
# layers) and recompute the cheap parts. They walk the batch in chunks: on the CPU a chunk's
# temporaries stay in cache and below glibc's mmap threshold (whole-batch temporaries, 40 MB
# at B=64, N=207, are fresh mmaps that page-fault on every allocation); on a GPU one chunk is
# the whole batch. The naive twin's autograd checks every kernel.


# Floats of one [c, T, N, D] chunk on the CPU. Step-wise work (per-(b, t) GEMMs, step mixing)
# goes sample by sample (1: one sample whatever its size; the step mixing is then a GEMM over
# nodes on a strided view, no permuted copy). Node-specific GEMMs contract over the chunk's
# c*T rows, so the capsule kernels take larger chunks: 1 M floats (4 MB: c = 6 at T=12, N=207,
# D=64; 13 at D=32). Measured against 4 M floats (alternating steps, one process): training steps
# 1.08-1.13x faster at the `cpu` sizes (B=32), 1.00-1.03x at paper sizes (B=16 and 64); encoder
# inference at B=64 1.12x (paper) and 1.20x (`cpu`): the chunk's temporaries stay in cache.
STEP_CHUNK_FLOATS = 1
NODE_CHUNK_FLOATS = 1 << 20


def _chunks(x: Tensor, floats: int) -> list[slice]:
    """Batch slices of about ``floats`` elements of ``x`` where the device policy chunks (the CPU);
    one slice elsewhere."""
    B = x.shape[0]
    if not device_policy(x.device).chunked:
        return [slice(0, B)]
    size = max(1, floats // max(1, x[0].numel()))
    return [slice(lo, min(lo + size, B)) for lo in range(0, B, size)]


def _mix_steps(x: Tensor, mixing: Tensor) -> Tensor:
    """``out[b,t,n] = sum_s mixing[n,t,s] x[b,s,n]`` (node-specific [N,T,T] or shared [T,T])."""
    c, T = x.shape[:2]
    if mixing.dim() == 2:
        return (mixing @ x.reshape(c, T, -1)).view(x.shape)
    if c == 1:  # a batched GEMM over nodes on a strided view: no permuted copy
        return torch.bmm(mixing, x[0].transpose(0, 1)).transpose(0, 1).unsqueeze(0)
    return torch.einsum("nts,bsnd->btnd", mixing, x)


def _mix_steps_grad(grad: Tensor, x: Tensor, mixing_dim: int) -> Tensor:
    """Gradient of :func:`_mix_steps` w.r.t. the mixing matrix."""
    c, T = x.shape[:2]
    if mixing_dim == 2:
        return torch.einsum("btx,bsx->ts", grad.reshape(c, T, -1), x.reshape(c, T, -1))
    if c == 1:
        return torch.bmm(grad[0].transpose(0, 1), x[0].permute(1, 2, 0))
    return torch.einsum("btnd,bsnd->nts", grad, x)


def _flat_grad(x: Tensor, grad: Tensor) -> Tensor:
    """``sum over rows of x^T grad``: the gradient of a shared [D, D] weight."""
    return x.reshape(-1, x.shape[-1]).T @ grad.reshape(-1, grad.shape[-1])


def _node_linear(x: Tensor, weight: Tensor, out: Tensor | None = None) -> Tensor:
    """``x [c,T,N,D] @ weight`` with per-node [N,D,D] (or shared [D,D]) weights, into ``out``."""
    if out is None:
        out = torch.empty(x.shape[:-1] + weight.shape[-1:], dtype=x.dtype, device=x.device)
    if weight.dim() == 2:
        return torch.matmul(x, weight, out=out)
    c, T, N, D = x.shape
    by_node = torch.bmm(x.reshape(c * T, N, D).transpose(0, 1), weight)  # [N, c*T, D]
    out.view(c * T, N, -1).copy_(by_node.transpose(0, 1))
    return out


def _node_weight_grad(x: Tensor, grad: Tensor, weight_dim: int) -> Tensor:
    """Gradient of :func:`_node_linear` w.r.t. its weight."""
    if weight_dim == 2:
        return _flat_grad(x, grad)
    c, T, N, D = x.shape
    return torch.bmm(x.reshape(c * T, N, D).permute(1, 2, 0), grad.reshape(c * T, N, -1).transpose(0, 1))


def _add_bias_(out: Tensor, bias: Tensor) -> None:
    """In place: a per-step bias [c,T,D] broadcast over nodes, or a per-node [N,D] / shared [D] one."""
    out += bias.unsqueeze(-2) if bias.dim() == 3 else bias


def _bias_grad(grad: Tensor, bias_dim: int) -> Tensor:
    """Gradient of :func:`_add_bias_` for a bias of ``bias_dim`` dimensions, over a chunk [c,T,N,D]."""
    return grad.sum(dim={3: (2,), 2: (0, 1), 1: (0, 1, 2)}[bias_dim])


def _empty_grad(x: Tensor, needed: bool, accumulate: bool) -> Tensor | None:
    if not needed:
        return None
    return torch.zeros_like(x) if accumulate else torch.empty_like(x)


class _StepMixLinear(torch.autograd.Function):
    """``LeakyReLU(mix(h) @ W + bias [+ h])``: the temporal layer (mix = step mixing) and the
    predictor's time-specific transform (no mixing). W is per-(b, t) [B,T,D,D] or shared [D,D]."""

    @staticmethod
    def forward(ctx, h, mixing, weight, bias, residual: bool):
        per_step = weight.dim() == 4
        out = torch.empty(h.shape[:-1] + weight.shape[-1:], dtype=h.dtype, device=h.device)
        for sl in _chunks(h, STEP_CHUNK_FLOATS):
            h_c, out_c = h[sl], out[sl]
            mixed = h_c if mixing is None else _mix_steps(h_c, mixing)
            torch.matmul(mixed, weight[sl] if per_step else weight, out=out_c)
            _add_bias_(out_c, bias[sl] if per_step else bias)
            if residual:
                out_c += h_c
            F.leaky_relu_(out_c, NEGATIVE_SLOPE)
        ctx.save_for_backward(h, mixing, weight, out)
        ctx.residual = residual
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        h, mixing, weight, out = ctx.saved_tensors
        need_h, need_mixing, need_weight, need_bias = ctx.needs_input_grad[:4]
        per_step = weight.dim() == 4
        need_mixing = need_mixing and mixing is not None
        grad_h = _empty_grad(h, need_h, False)
        grad_mixing = _empty_grad(mixing, need_mixing, True)
        grad_weight = _empty_grad(weight, need_weight, not per_step)
        grad_bias: Tensor | float | None = None
        if need_bias:
            grad_bias = torch.empty(out.shape[:2] + out.shape[-1:], dtype=h.dtype, device=h.device) if per_step else 0.0
        weight_t = weight.transpose(-1, -2)
        mixing_t = mixing.transpose(-1, -2) if mixing is not None else None
        for sl in _chunks(h, STEP_CHUNK_FLOATS):
            h_c = h[sl]
            grad_pre = _leaky_relu_backward(grad_out[sl], out[sl])
            if need_bias:
                if per_step:
                    assert isinstance(grad_bias, Tensor)
                    grad_bias[sl] = _bias_grad(grad_pre, 3)
                else:
                    assert grad_bias is not None
                    grad_bias = grad_bias + _bias_grad(grad_pre, 1)
            if need_weight:
                assert grad_weight is not None
                mixed = h_c if mixing is None else _mix_steps(h_c, mixing)
                if per_step:
                    torch.matmul(mixed.transpose(-1, -2), grad_pre, out=grad_weight[sl])
                else:
                    grad_weight += _flat_grad(mixed, grad_pre)
                del mixed
            if need_h or need_mixing:
                grad_mixed = torch.matmul(grad_pre, weight_t[sl] if per_step else weight_t)
                if need_mixing:
                    assert grad_mixing is not None
                    grad_mixing += _mix_steps_grad(grad_mixed, h_c, mixing.dim())
                if need_h:
                    assert grad_h is not None
                    # mixing_t is None exactly when mixing is.
                    back = grad_mixed if mixing_t is None else _mix_steps(grad_mixed, mixing_t)
                    if ctx.residual:
                        torch.add(back, grad_pre, out=grad_h[sl])
                    else:
                        grad_h[sl] = back
        return grad_h, grad_mixing, grad_weight, grad_bias, None


def _squash_row(x: Tensor) -> Tensor:
    """``squash(x) = x * f`` with one factor per row of ``x`` [..., N, D]: f as a row [..., 1, N],
    so that a product ``C @ squash(x)`` is ``(C * f) @ x`` and ``squash(x)`` never exists."""
    return _squash_factor(_squared_norm(x)).to(x.dtype).transpose(-1, -2)


class _PrimaryClusters(torch.autograd.Function):
    """Cluster capsules ``S = Cw @ squash(pre)`` [B,T,HS,D] with ``pre = h @ W_p^T + b_p``.

    ``pre`` comes in already computed without gradient, because routing needs the capsules
    before Cw exists; this kernel supplies its gradient (to h, W_p, b_p). squash scales each
    region's row of ``pre``, so every product with the squashed capsules is a product with
    ``pre`` and Cw scaled per column ([HS, N] work instead of [N, D]): no squashed [B,T,N,D]
    tensor is made, forward or backward.
    """

    @staticmethod
    def forward(ctx, h, weight, bias, assign, pre):
        B, T, _, D = pre.shape
        clusters = torch.empty(B, T, assign.shape[2], D, dtype=pre.dtype, device=pre.device)
        for sl in _chunks(pre, NODE_CHUNK_FLOATS):
            torch.matmul(assign[sl] * _squash_row(pre[sl]), pre[sl], out=clusters[sl])
        ctx.save_for_backward(h, weight, assign, pre)
        return clusters

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_clusters):
        h, weight, assign, pre = ctx.saved_tensors
        need_h, need_weight, need_bias, need_assign = ctx.needs_input_grad[:4]
        need_pre = need_h or need_weight or need_bias
        grad_h = _empty_grad(h, need_h, False)
        grad_weight = _empty_grad(weight, need_weight, True)
        grad_assign = _empty_grad(assign, need_assign, False)
        grad_bias: Tensor | float = 0.0
        for sl in _chunks(h, NODE_CHUNK_FLOATS):
            pre_c, grad_c, assign_c = pre[sl], grad_clusters[sl], assign[sl]
            s = _squared_norm(pre_c)  # [c,T,N,1], at least float32
            scale = _squash_factor(s)
            # grad_c @ pre^T [c,T,HS,N] serves both: the gradient of Cw (scaled per column) and
            # <pre_n, g_n> with g = Cw^T grad_c, which is sum_h Cw[h,n] (grad_c pre^T)[h,n].
            grad_c_pre = grad_c @ pre_c.transpose(-1, -2)
            if need_pre:
                # squash's Jacobian at pre applied to g: f g + 2 f'(s) <pre, g> pre, with
                # f'(s) = a r (1 - s a - s r^2 / 2), a = 1 / (1 + s), r = (s + eps)^-1/2.
                along = (assign_c * grad_c_pre).sum(dim=-2, keepdim=True).transpose(-1, -2).to(s.dtype)
                a, r = 1.0 / (1.0 + s), torch.rsqrt(s + SQUASH_EPS)
                along = along.mul_(2.0 * a * r * (1.0 - s * a - 0.5 * s * r * r)).to(pre_c.dtype)
                row = scale.to(pre_c.dtype).transpose(-1, -2)
                grad_pre = torch.matmul((assign_c * row).transpose(-1, -2), grad_c).addcmul_(pre_c, along)
                if need_weight:
                    assert grad_weight is not None
                    grad_weight += _flat_grad(grad_pre, h[sl])
                if need_bias:
                    grad_bias = grad_bias + grad_pre.sum(dim=(0, 1, 2))
                if need_h:
                    assert grad_h is not None
                    torch.matmul(grad_pre, weight, out=grad_h[sl])
            if need_assign:
                assert grad_assign is not None
                torch.mul(grad_c_pre, scale.to(pre_c.dtype).transpose(-1, -2), out=grad_assign[sl])
        return grad_h, grad_weight, grad_bias if need_bias else None, grad_assign, None


class _ClusterReadout(torch.autograd.Function):
    """Back to regions and out: ``LeakyReLU((Cw^T V) @ W_n + b_n + h)``.

    Hr = Cw^T V [B,T,N,D] is recomputed in backward from Cw [B,T,HS,N] and V [B,T,HS,D]
    (HS/D of a D x D product) instead of being kept.
    """

    @staticmethod
    def forward(ctx, assign, caps, h, weight, bias):
        out = torch.empty_like(h)
        for sl in _chunks(h, NODE_CHUNK_FLOATS):
            out_c = _node_linear(assign[sl].transpose(-1, -2) @ caps[sl], weight, out[sl])
            out_c += bias
            out_c += h[sl]
            F.leaky_relu_(out_c, NEGATIVE_SLOPE)
        ctx.save_for_backward(assign, caps, weight, out)
        ctx.bias_dim = bias.dim()
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        assign, caps, weight, out = ctx.saved_tensors
        need_assign, need_caps, need_h, need_weight, need_bias = ctx.needs_input_grad[:5]
        grad_assign = _empty_grad(assign, need_assign, False)
        grad_caps = _empty_grad(caps, need_caps, False)
        grad_h = _empty_grad(out, need_h, False)
        grad_weight = _empty_grad(weight, need_weight, True)
        grad_bias: Tensor | float = 0.0
        weight_t = weight.transpose(-1, -2)
        for sl in _chunks(out, NODE_CHUNK_FLOATS):
            assign_c = assign[sl]
            # The residual's gradient is grad_pre itself: computed straight into grad_h
            # (grad_h is None exactly when need_h is false).
            grad_pre = _leaky_relu_backward(grad_out[sl], out[sl], grad_h[sl] if grad_h is not None else None)
            if need_bias:
                grad_bias = grad_bias + _bias_grad(grad_pre, ctx.bias_dim)
            if need_weight:
                assert grad_weight is not None
                grad_weight += _node_weight_grad(assign_c.transpose(-1, -2) @ caps[sl], grad_pre, weight.dim())
            if need_assign or need_caps:
                grad_regions = _node_linear(grad_pre, weight_t)
                if need_assign:
                    assert grad_assign is not None
                    torch.matmul(caps[sl], grad_regions.transpose(-1, -2), out=grad_assign[sl])
                if need_caps:
                    assert grad_caps is not None
                    torch.matmul(assign_c, grad_regions, out=grad_caps[sl])
        return grad_assign, grad_caps, grad_h, grad_weight, grad_bias if need_bias else None


class _LowRankStepMix(torch.autograd.Function):
    """The temporal layer on a :class:`LowRank` input h = U V (U [B,T,N,R], V [R,D]):
    ``LeakyReLU(mix(U) (V W) + U V + bias)``; mixing commutes with the right factor V, so the
    D x D products shrink to R x D ones."""

    @staticmethod
    def forward(ctx, basis, coef, mixing, weight, bias):
        per_step = weight.dim() == 4
        R, D = coef.shape
        coef_weight = torch.matmul(coef, weight)  # [B,T,R,D] or [R,D]
        out = torch.empty(basis.shape[:-1] + (D,), dtype=coef.dtype, device=coef.device)
        for sl in _chunks(out, STEP_CHUNK_FLOATS):
            basis_c, out_c = basis[sl], out[sl]
            torch.matmul(_mix_steps(basis_c, mixing), coef_weight[sl] if per_step else coef_weight, out=out_c)
            out_c.view(-1, D).addmm_(basis_c.reshape(-1, R), coef)  # the residual U V
            _add_bias_(out_c, bias[sl] if per_step else bias)
            F.leaky_relu_(out_c, NEGATIVE_SLOPE)
        ctx.save_for_backward(basis, coef, mixing, weight, out)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        basis, coef, mixing, weight, out = ctx.saved_tensors
        need_coef, need_mixing, need_weight, need_bias = ctx.needs_input_grad[1:5]
        per_step = weight.dim() == 4
        D = coef.shape[1]
        coef_weight = torch.matmul(coef, weight)
        grad_coef_weight = torch.empty_like(coef_weight) if per_step else torch.zeros_like(coef_weight)
        grad_coef = torch.zeros_like(coef)
        grad_mixing = torch.zeros_like(mixing) if need_mixing else None
        grad_bias: Tensor | float | None = None
        if need_bias:
            grad_bias = torch.empty(out.shape[:2] + (D,), dtype=out.dtype, device=out.device) if per_step else 0.0
        for sl in _chunks(out, STEP_CHUNK_FLOATS):
            basis_c = basis[sl]
            grad_pre = _leaky_relu_backward(grad_out[sl], out[sl])
            if need_bias:
                if per_step:
                    assert isinstance(grad_bias, Tensor)
                    grad_bias[sl] = _bias_grad(grad_pre, 3)
                else:
                    assert grad_bias is not None
                    grad_bias = grad_bias + _bias_grad(grad_pre, 1)
            mixed = _mix_steps(basis_c, mixing)
            if per_step:
                torch.matmul(mixed.transpose(-1, -2), grad_pre, out=grad_coef_weight[sl])
            else:
                grad_coef_weight += _flat_grad(mixed, grad_pre)
            grad_coef += _flat_grad(basis_c, grad_pre)
            if need_mixing:
                coef_weight_c = coef_weight[sl] if per_step else coef_weight
                grad_mixed = torch.matmul(grad_pre, coef_weight_c.transpose(-1, -2))
                assert grad_mixing is not None
                grad_mixing += _mix_steps_grad(grad_mixed, basis_c, mixing.dim())
        grad_weight = torch.matmul(coef.T, grad_coef_weight) if need_weight else None
        through_weight = torch.matmul(grad_coef_weight, weight.transpose(-1, -2))
        grad_coef += through_weight.sum(dim=(0, 1)) if per_step else through_weight
        return None, grad_coef if need_coef else None, grad_mixing, grad_weight, grad_bias


class _LowRankNodeLinear(torch.autograd.Function):
    """``LeakyReLU(U (V W_n) + b_n)``: the predictor's node-specific transform on a
    :class:`LowRank` input U V, with per-node [N,D,D] (or shared [D,D]) weights."""

    @staticmethod
    def forward(ctx, basis, coef, weight, bias):
        R = coef.shape[0]
        coef_weight = torch.matmul(coef, weight)  # [N,R,D] or [R,D]
        out = torch.empty(basis.shape[:-1] + weight.shape[-1:], dtype=coef.dtype, device=coef.device)
        for sl in _chunks(out, NODE_CHUNK_FLOATS):
            basis_c, out_c = basis[sl], out[sl]
            # R (2 or 3) broadcast multiply-adds: a GEMM with an inner size of R is memory-bound anyway.
            torch.mul(basis_c[..., 0:1], coef_weight[..., 0, :], out=out_c)
            for r in range(1, R):
                out_c.addcmul_(basis_c[..., r : r + 1], coef_weight[..., r, :])
            out_c += bias
            F.leaky_relu_(out_c, NEGATIVE_SLOPE)
        ctx.save_for_backward(basis, coef, weight, out)
        ctx.bias_dim = bias.dim()
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        basis, coef, weight, out = ctx.saved_tensors
        need_coef, need_weight, need_bias = ctx.needs_input_grad[1:4]
        R, D = coef.shape
        per_node = weight.dim() == 3
        shape = (weight.shape[0], R, D) if per_node else (R, D)
        grad_coef_weight = torch.zeros(shape, dtype=out.dtype, device=out.device)
        grad_bias: Tensor | float = 0.0
        for sl in _chunks(out, NODE_CHUNK_FLOATS):
            basis_c = basis[sl]
            grad_pre = _leaky_relu_backward(grad_out[sl], out[sl])
            if need_bias:
                grad_bias = grad_bias + _bias_grad(grad_pre, ctx.bias_dim)
            if per_node:
                c, T, N = basis_c.shape[:3]
                grad_coef_weight += torch.bmm(
                    basis_c.reshape(c * T, N, R).permute(1, 2, 0), grad_pre.reshape(c * T, N, D).transpose(0, 1)
                )
            else:
                grad_coef_weight += _flat_grad(basis_c, grad_pre)
        grad_weight = torch.matmul(coef.T, grad_coef_weight) if need_weight else None
        grad_coef = None
        if need_coef:
            through_weight = torch.matmul(grad_coef_weight, weight.transpose(-1, -2))
            grad_coef = through_weight.sum(dim=0) if per_node else through_weight
        return None, grad_coef, grad_weight, grad_bias if need_bias else None


class CalendarEncoder(nn.Module):
    """Per-step time encoder: calendar features [..., F] -> embedding [..., d].

    The reference projects z-scored slot and weekday indices with two Linear(1 -> d) and sums
    them; here the sin/cos features go through one bias-free Linear(F -> d) (a bias there would
    be redundant: the next layer is affine). Then Linear, ReLU, Linear, ReLU, Linear as the
    reference. At F=4 the parameter count equals the reference's (4d + 3(d^2 + d)).
    """

    def __init__(self, in_features: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_features, out_dim, bias=False)
        self.mlp = nn.Sequential(
            nn.Linear(out_dim, out_dim),
            nn.ReLU(),
            nn.Linear(out_dim, out_dim),
            nn.ReLU(),
            nn.Linear(out_dim, out_dim),
        )

    def forward(self, cal: Tensor) -> Tensor:
        return self.mlp(self.proj(cal))


class WindowCalendarEncoder(CalendarEncoder):
    """Per-sample time encoder: the window's calendar [B, T, F] -> tau_s [B, d].

    The reference applies Linear(T -> d) to each calendar sequence (slot, weekday); with four
    sin/cos sequences that is one bias-free Linear(F*T -> d) over the flattened window, so T is
    fixed at construction (the reference's pre-trained encoder fixes T_in too).
    """

    def __init__(self, in_features: int, t_in: int, out_dim: int) -> None:
        super().__init__(in_features * t_in, out_dim)

    def forward(self, cal: Tensor) -> Tensor:
        return self.mlp(self.proj(cal.flatten(start_dim=-2)))


class TemporalHyperLayer(nn.Module):
    """Temporal hypergraph layer: node-specific incidence over steps, time-specific weights.

    ``A[n] = nu[n] . P_A`` [HTt, T]; steps -> hyperedges -> steps is the per-node T x T mixing
    ``K[n] = A[n]^T A[n]``; then ``LeakyReLU(H' W_bt + b_bt + H)`` with ``W_bt = tau_16[b,t] . P_W``.
    """

    def __init__(self, cfg: GptstConfig) -> None:
        super().__init__()
        c, E, D = cfg.customised_params, cfg.embed, cfg.hidden
        self.incidence = _pool(c, E, cfg.temporal_hyperedges, cfg.t_in)
        self.weight = _pool(c, E, D, D)
        self.bias = _pool(c, E, D)

    def forward(self, h: Tensor | LowRank, nu: Tensor | None, tau: Tensor | None) -> Tensor:
        """``h`` [B,T,N,D] (or :class:`LowRank`); ``nu`` [N,E]; ``tau`` [B,T,E] (None when static)."""
        incidence = generate(nu, self.incidence)  # [N, HTt, T] or [HTt, T]
        # A^T A once per forward: one T x T mixing per node instead of two passes over h.
        mixing = incidence.transpose(-1, -2) @ incidence  # [N, T, T] or [T, T]
        weight = generate(tau, self.weight)  # W_bt [B, T, D, D] or [D, D]
        bias = generate(tau, self.bias)  # [B, T, D] or [D]
        # The [B,T,D,D] weights are B*T*D*D floats (3 M at B=64, a tenth of h): every
        # contraction order that avoids them costs E times the multiply-adds and a
        # [B,T,N,E,D] intermediate.
        if isinstance(h, LowRank):
            return apply_kernel(_LowRankStepMix, h.basis, h.coef, mixing, weight, bias)
        return apply_kernel(_StepMixLinear, h, mixing, weight, bias, True)


class CapsuleHyperLayer(nn.Module):
    """Hypergraph capsule clustering + cross-cluster hypergraph (GPTST_SPEC section 3).

    Returns the new [B, T, N, D] and the soft assignment Cw [B, T, HS, N].
    """

    step_position: Tensor  # buffer [T]

    def __init__(self, cfg: GptstConfig) -> None:
        super().__init__()
        c, e, E, D, HS = cfg.customised_params, cfg.small_embed, cfg.embed, cfg.hidden, cfg.clusters
        self.clusters = HS
        self.routing_iters = cfg.routing_iters
        self.primary = nn.Linear(D, D)
        self.assignment = _pool(c, e, HS, cfg.num_nodes)  # region -> cluster logits P_C
        self.cross_incidence = _pool(c, e, cfg.cross_hyperedges, HS * cfg.t_in)  # P_G
        self.out_weight = _pool(c, E, D, D)
        self.out_bias = _pool(c, E, D)
        # (t + 1) / T: the reference divides by a hard-coded 12.
        position = torch.arange(1, cfg.t_in + 1, dtype=torch.float32) / cfg.t_in
        self.register_buffer("step_position", position, persistent=False)

    def forward(
        self, h: Tensor, nu_s: Tensor | None, tau_4: Tensor | None, tau_s: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """``h`` [B,T,N,D]; ``nu_s`` [N,E]; ``tau_4`` [B,T,e]; ``tau_s`` [B,e] (None when static)."""
        if isinstance(h, LowRank):
            h = h.dense()
        B, T, _, D = h.shape
        logits = generate(tau_4, self.assignment)  # Ahat [B, T, HS, N] or [HS, N]
        pre, routed = self._primary_and_route(h, logits.detach())
        assign = torch.softmax(routed + logits, dim=-2)  # Cw, softmax over clusters
        # S = Cw @ P, contracting N: no [B,T,HS,N,D] tensor.
        clusters = apply_kernel(_PrimaryClusters, h, self.primary.weight, self.primary.bias, assign, pre)
        del pre
        flat = (clusters + self.step_position.view(T, 1, 1)).reshape(B, T * self.clusters, D)
        incidence = generate(tau_s, self.cross_incidence)  # G [B, HT, HS*T] or [HT, HS*T]
        edges = leaky_relu(incidence @ flat)  # Q [B, HT, D]
        back = leaky_relu(incidence.transpose(-1, -2) @ edges)  # [B, HS*T, D]
        caps = squash(back.view(B, T, self.clusters, D) + clusters)  # V
        weight = generate(nu_s, self.out_weight)  # W_n [N, D, D] or [D, D]
        bias = generate(nu_s, self.out_bias)  # [N, D] or [D]
        # Hr = Cw^T V back to regions, then the node-specific transform and the residual.
        return apply_kernel(_ClusterReadout, assign, caps, h, weight, bias), assign

    def _primary_and_route(self, h: Tensor, logits: Tensor) -> tuple[Tensor, Tensor]:
        """Primary capsules before squash [B,T,N,D] and routing logits b [B,T,HS,N], without gradient.

        Routing reads detached inputs, so no gradient flows through it. The prediction of region
        n for cluster h is ``squash(S0)[h] * P[n]`` (elementwise), so ``sum_n c[h,n] * u[h,n]`` is
        ``squash(S0)[h] * (c @ P)[h]``: no [B,T,HS,N,D] tensor. Chunked like the kernels, so the
        squashed capsules P never exist for the whole batch.
        """
        B, T, N, D = h.shape
        with torch.no_grad():
            pre = torch.empty_like(h)
            routed = torch.empty(B, T, self.clusters, N, dtype=h.dtype, device=h.device)
            weight_t, bias = self.primary.weight.T.to(h.dtype), self.primary.bias.to(h.dtype)
            per_step = logits.dim() == 4
            for sl in _chunks(h, NODE_CHUNK_FLOATS):
                pre_c = pre[sl]
                torch.addmm(bias, h[sl].reshape(-1, D), weight_t, out=pre_c.view(-1, D))
                # Products with the squashed capsules P = squash(pre) as products with pre and a
                # per-region scale (see _squash_row): P itself is never made.
                row = _squash_row(pre_c)  # [c,T,1,N]
                pre_t = pre_c.transpose(-1, -2)
                logits_c = logits[sl] if per_step else logits
                initial = squash((torch.softmax(logits_c, dim=-2) * row) @ pre_c)  # squash(S0) [c,T,HS,D]
                route = routed[sl].zero_()
                for _ in range(self.routing_iters):
                    coupling = torch.softmax(route, dim=-2)
                    v = squash(initial * ((coupling * row) @ pre_c))
                    route.addcmul_(v @ pre_t, row)
        return pre, routed


class MaskPredictor(nn.Module):
    """The adaptive masker's cluster predictor: logits [B, T, N, HS] on the unmasked input.

    Linear(C -> D), node-specific generated transform, time-specific generated transform (both
    LeakyReLU), Linear(D -> HS). Its own time encoder and node embeddings, as in the reference.
    """

    def __init__(self, cfg: GptstConfig) -> None:
        super().__init__()
        c, E, D = cfg.customised_params, cfg.embed, cfg.hidden
        self.input_proj = nn.Linear(cfg.channels, D)
        self.node_weight = _pool(c, E, D, D)
        self.node_bias = _pool(c, E, D)
        self.time_weight = _pool(c, E, D, D)
        self.time_bias = _pool(c, E, D)
        self.output_proj = nn.Linear(D, cfg.clusters)
        self.node_embed: nn.Parameter | None
        self.time_encoder: CalendarEncoder | None
        if c:
            self.node_embed = nn.Parameter(torch.empty(cfg.num_nodes, E))
            self.time_encoder = CalendarEncoder(cfg.calendar_dim, E)
        else:
            self.node_embed = None
            self.time_encoder = None

    def embeddings(self, cal: Tensor) -> tuple[Tensor | None, Tensor | None]:
        if self.time_encoder is None:
            return None, None
        return self.node_embed, self.time_encoder(cal)

    def forward(self, x: Tensor, cal: Tensor) -> Tensor:
        nu, tau = self.embeddings(cal)
        # Linear(C -> D) is rank C+1 per cell: the node-specific transform works on it directly.
        projected = project_input(x, self.input_proj)
        node_weight, node_bias = generate(nu, self.node_weight), generate(nu, self.node_bias)
        h = apply_kernel(_LowRankNodeLinear, projected.basis, projected.coef, node_weight, node_bias)
        h = apply_kernel(_StepMixLinear, h, None, generate(tau, self.time_weight), generate(tau, self.time_bias), False)
        return self.output_proj(h)
