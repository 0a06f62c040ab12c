"""Spec-literal twin of the fast GPT-ST blocks (GPTST_SPEC sections 2-3).

Same parameters (subclasses of :mod:`gptst.models.gptst.layers`, so the same state_dict keys);
``forward`` follows the spec line by line: two-pass temporal mixing (steps -> hyperedges ->
steps), per-(b, t) weight matrices [B, T, D, D], the materialised [B, T, HS, N, D] prediction
tensor in routing. It is the reference the fast blocks are tested against and the baseline of
the speed benchmark; it is not meant for training at scale.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gptst.models.gptst.layers import (
    SQUASH_EPS,
    CapsuleHyperLayer,
    LowRank,
    MaskPredictor,
    TemporalHyperLayer,
    leaky_relu,
)


def squash_literal(x: Tensor) -> Tensor:
    """``|x|^2 / (1 + |x|^2) * x / sqrt(|x|^2 + 1e-8)``, written as in the spec."""
    squared_norm = (x**2).sum(dim=-1, keepdim=True)
    return squared_norm / (1 + squared_norm) * x / torch.sqrt(squared_norm + SQUASH_EPS)


def _node_specific(nu: Tensor | None, pool: Tensor, num_nodes: int) -> Tensor:
    """Per-node tensors [N, *shape]: ``nu . pool``, or the static tensor repeated per node."""
    if nu is None:
        return pool.unsqueeze(0).expand(num_nodes, *pool.shape)
    return torch.einsum("ne,e...->n...", nu, pool)


def _time_specific(tau: Tensor | None, pool: Tensor, lead: tuple[int, ...]) -> Tensor:
    """Per-(b, t) (or per-b) tensors [*lead, *shape]: ``tau . pool``, or the static tensor repeated."""
    if tau is None:
        return pool.expand(*lead, *pool.shape)
    return torch.tensordot(tau, pool, dims=([-1], [0]))


class NaiveTemporalHyperLayer(TemporalHyperLayer):
    """Two passes through the hyperedges and materialised per-(b, t) weights."""

    def forward(self, h: Tensor | LowRank, nu: Tensor | None, tau: Tensor | None) -> Tensor:
        if isinstance(h, LowRank):
            h = h.dense()
        B, T, N, _ = h.shape
        incidence = _node_specific(nu, self.incidence, N)  # A [N, HTt, T]
        hyperedges = torch.einsum("nht,btnd->bhnd", incidence, h)  # steps -> hyperedges
        mixed = torch.einsum("nht,bhnd->btnd", incidence, hyperedges)  # hyperedges -> steps
        weight = _time_specific(tau, self.weight, (B, T))  # W_bt [B, T, D, D]
        bias = _time_specific(tau, self.bias, (B, T))  # b_bt [B, T, D]
        out = torch.einsum("btni,btio->btno", mixed, weight) + bias[:, :, None, :]
        return leaky_relu(out + h)


class NaiveCapsuleHyperLayer(CapsuleHyperLayer):
    """Capsule routing over the materialised prediction tensor u [B, T, HS, N, D]."""

    def forward(
        self, h: Tensor, nu_s: Tensor | None, tau_4: Tensor | None, tau_s: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        if isinstance(h, LowRank):
            h = h.dense()
        B, T, N, D = h.shape
        HS = self.clusters
        primary = squash_literal(self.primary(h))  # P
        logits = _time_specific(tau_4, self.assignment, (B, T))  # Ahat [B, T, HS, N]
        initial = torch.einsum("bthn,btnd->bthd", torch.softmax(logits, dim=-2), primary)  # S0
        predictions = (squash_literal(initial)[:, :, :, None, :] * primary[:, :, None, :, :]).detach()
        primary_in = primary.detach()
        route = torch.zeros(B, T, HS, N, dtype=h.dtype, device=h.device)
        for _ in range(self.routing_iters):
            coupling = torch.softmax(route, dim=-2)
            s = (coupling[..., None] * predictions).sum(dim=-2)  # [B, T, HS, D]
            v = squash_literal(s)
            route = route + torch.einsum("bthd,btnd->bthn", v, primary_in)
        assign = torch.softmax(route + logits, dim=-2)  # Cw [B, T, HS, N]
        clusters = torch.einsum("bthn,btnd->bthd", assign, primary)  # S
        positioned = clusters + self.step_position[None, :, None, None]  # S + (t+1)/T
        flat = positioned.reshape(B, T * HS, D)  # t-major cluster-time nodes
        incidence = _time_specific(tau_s, self.cross_incidence, (B,))  # G [B, HT, HS*T]
        edges = leaky_relu(torch.einsum("bhk,bkd->bhd", incidence, flat))  # Q
        back = leaky_relu(torch.einsum("bhk,bhd->bkd", incidence, edges))
        caps = squash_literal(back.reshape(B, T, HS, D) + clusters)  # V = squash(S')
        regions = torch.einsum("bthn,bthd->btnd", assign, caps)  # Hr
        weight = _node_specific(nu_s, self.out_weight, N)  # W_n [N, D, D]
        bias = _node_specific(nu_s, self.out_bias, N)  # b_n [N, D]
        out = torch.einsum("btni,nio->btno", regions, weight) + bias
        return leaky_relu(out + h), assign


class NaiveMaskPredictor(MaskPredictor):
    """Node-specific then time-specific transforms with materialised per-node and per-(b, t) weights."""

    def forward(self, x: Tensor, cal: Tensor) -> Tensor:
        B, T, N, _ = x.shape
        nu, tau = self.embeddings(cal)
        h = self.input_proj(x)
        weight = _node_specific(nu, self.node_weight, N)
        bias = _node_specific(nu, self.node_bias, N)
        h = leaky_relu(torch.einsum("btni,nio->btno", h, weight) + bias)
        weight = _time_specific(tau, self.time_weight, (B, T))
        bias = _time_specific(tau, self.time_bias, (B, T))
        h = leaky_relu(torch.einsum("btni,btio->btno", h, weight) + bias[:, :, None, :])
        return self.output_proj(h)
