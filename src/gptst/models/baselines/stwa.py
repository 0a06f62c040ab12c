"""ST-WA (Cirstea, Kieu, Guo, Yang and Pan): spatio-temporal aware window attention with
stochastic, location- and time-specific model parameters. No predefined graph.

Each node has a latent code ``z`` (``memory_size`` values) that is the sum of two Gaussian
samples: a location-specific one, ``N(mu_l, exp(logvar_l))`` with ``mu_l, logvar_l`` learned
per node and layer, and a time-specific one whose mean and log-variance two small MLPs read
from the node's input window. Per layer, four generator MLPs turn ``z`` into the weights and
biases of the key and value projections of a temporal and a spatial attention, so every
(window, node) pair has its own projections.

A layer cuts its input into windows along time. For each window, ``proxies`` learned
per-node queries (plus the previous window's output, which makes the windows a recurrence)
attend over themselves and the window's steps (8 heads, per node), then over all nodes
(8 heads, per proxy; queries unprojected, keys and values generated), and a sigmoid gate sums
the proxies into one step. A layer thus turns T steps into ceil(T / window) steps; three
layers make a pyramid, each layer's output feeds a skip connection (``steps x channels ->
256``), and two linear layers map the summed skips of each node to all output steps.

Sizes follow GPT-ST's configuration (conf/ST-WA: 16 channels, memory 16; 2 proxies, 8 heads,
skip 256, end 512 as in the authors' code). Differences from GPT-ST's port, and why:

- window sizes. The authors wrote the layers for 72 input steps: windows of 6, 4 and 3 steps
  (72 -> 12 -> 3 -> 1). GPT-ST's port keeps those cuts with 12 input steps, so the first layer's
  windows 3 to 12 are empty slices: ten of its twelve outputs come from the proxies and the
  recurrence alone, never from the data. ``window_sizes`` (1, 4, 3) gives the same pyramid of
  outputs at 12 steps (12 -> 12 -> 3 -> 1, the same parameter count as the port) with every
  window reading data; (6, 4, 3) is the authors' setting at 72 steps. Any ``in_steps`` works:
  the last window of a layer may be shorter.
- inference. The reference samples both latents at every forward pass, test time included, so
  its forecasts are random. In eval mode this port uses the means (the usual point estimate of
  a variational model): forecasts are deterministic. Training samples as the reference does.
- the KL term. The authors train with ``Huber(pred) + 0.0005 * KL`` where KL sums
  ``KL(N(mu, sigma^2) || N(0, I))`` over every layer's node posteriors and over the
  time-specific posteriors of the batch. GPT-ST's port leaves it out (its loss is the masked
  MAE of the forecast only; the ``loss_kl`` of GPT-ST's trainer is the pre-training cluster
  loss). ``kl_weight`` defaults to 0, as GPT-ST; :meth:`STWA.auxiliary_loss` returns
  ``kl_weight * KL`` of the last training forward pass, which the finetune step adds to the
  forecast loss (``gptst.training.finetune.finetune_step_fn``; the authors' weight is 0.0005).
  Without it the posteriors are free to collapse to points, as they are in GPT-ST's runs.
- inputs with more than one channel (``gptst``: 64, demand: 2): the time-specific MLPs read one
  channel made by a linear map of the input channels, as GPT-ST's port does (``eval_dimin``); the
  authors' code only ran on one channel.
- ``params.dropout`` (0, as the reference) drops units of the summed skips before the output layers.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import nn

from gptst.graph.bundle import GraphBundle
from gptst.models.baselines.registry import BaselineConfig, register_baseline
from gptst.models.dropout import Dropout


def sample(mu: torch.Tensor, logvar: torch.Tensor, training: bool) -> torch.Tensor:
    """A reparameterised draw from N(mu, exp(logvar)) in training, the mean otherwise."""
    if not training:
        return mu
    return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, exp(logvar)) || N(0, 1))`` summed over all elements (the authors' sum)."""
    return -0.5 * torch.sum(1 + logvar - mu.square() - logvar.exp())


def window_counts(in_steps: int, window_sizes: tuple[int, ...]) -> list[int]:
    """Windows (= output steps) of each layer: ceil(steps / window), layer after layer."""
    counts, steps = [], in_steps
    for size in window_sizes:
        steps = math.ceil(steps / size)
        counts.append(steps)
    return counts


class ParameterGenerator(nn.Module):
    """A projection's weights [B, N, C, C] and biases [B, N, C] from latent codes [B, N, M]."""

    def __init__(self, memory: int, channels: int, hidden: tuple[int, int]) -> None:
        super().__init__()
        self.channels = channels

        def mlp(out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Linear(memory, hidden[0]),
                nn.ReLU(),
                nn.Linear(hidden[0], hidden[1]),
                nn.ReLU(),
                nn.Linear(hidden[1], out),
            )

        self.weights = mlp(channels * channels)
        self.biases = mlp(channels)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.weights(z).unflatten(-1, (self.channels, self.channels)), self.biases(z)


def project(x: torch.Tensor, params: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``x W[b, n] + b[b, n]`` for x [B, T, N, C]: a separate linear map per sample and node."""
    weight, bias = params
    return torch.einsum("btnc,bncd->btnd", x, weight) + bias[:, None]


class TemporalAttention(nn.Module):
    """Per node and head: queries [B, P, N, C] (unprojected) over keys and values [B, S, N, C]
    projected with generated parameters; then linear, tanh, linear."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.out = nn.Sequential(nn.Linear(channels, channels), nn.Tanh(), nn.Linear(channels, channels))

    def forward(
        self, query: torch.Tensor, memory: torch.Tensor, params: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> torch.Tensor:
        # A few keys per query (proxies + one window's steps) and heads of width C / K: written
        # out with broadcasting in the [B, T, N, K, h] layout. The fused kernel pays a fixed cost
        # per (node, head) problem, and there are B * N * K of them: about 15 times slower here.
        q = query.unflatten(-1, (self.heads, -1))  # [B, P, N, K, h]
        k = project(memory, params[0]).unflatten(-1, (self.heads, -1))  # [B, S, N, K, h]
        v = project(memory, params[1]).unflatten(-1, (self.heads, -1))
        scores = (q.unsqueeze(2) * k.unsqueeze(1)).sum(-1) * q.shape[-1] ** -0.5  # [B, P, S, N, K]
        out = (scores.softmax(dim=2).unsqueeze(-1) * v.unsqueeze(1)).sum(2)  # [B, P, N, K, h]
        return self.out(out.flatten(-2))


class SpatialAttention(nn.Module):
    """Per step and head: every node's query (unprojected) over all nodes' generated keys and
    values; then linear, ReLU, linear."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.out = nn.Sequential(nn.Linear(channels, channels), nn.ReLU(), nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor, params: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        # Attention over the nodes of each step and head, in the fused kernel: it does not keep
        # the [N, N] scores of every step and head for the backward pass.
        batch, steps = x.shape[:2]

        def heads(t: torch.Tensor) -> torch.Tensor:  # [B, P, N, K * h] -> [B * P, K, N, h]
            return t.unflatten(-1, (self.heads, -1)).transpose(2, 3).flatten(0, 1)

        q, k, v = heads(x), heads(project(x, params[0])), heads(project(x, params[1]))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(h)) v: [B * P, K, N, h]
        return self.out(out.unflatten(0, (batch, steps)).transpose(2, 3).flatten(-2))


class WindowLayer(nn.Module):
    """One ST-WA layer: [B, T, N, C] -> [B, ceil(T / window), N, C], one step per window."""

    def __init__(self, nodes: int, window: int, windows: int, params: StwaConfig) -> None:
        super().__init__()
        c, m = params.channels, params.memory_size
        self.window, self.windows, self.proxies_per_window = window, windows, params.proxies
        self.proxies = nn.Parameter(torch.randn(windows * params.proxies, nodes, c))
        # The location-specific posterior of each node (the authors draw both from N(0, 1)).
        self.mu = nn.Parameter(torch.randn(nodes, m))
        self.logvar = nn.Parameter(torch.randn(nodes, m))
        hidden = (params.generator_hidden[0], params.generator_hidden[1])
        self.temporal_generators = nn.ModuleList(ParameterGenerator(m, c, hidden) for _ in range(2))
        self.spatial_generators = nn.ModuleList(ParameterGenerator(m, c, hidden) for _ in range(2))
        self.temporal = TemporalAttention(c, params.heads)
        self.spatial = SpatialAttention(c, params.heads)
        self.gate = nn.Sequential(nn.Linear(c, c), nn.ReLU(), nn.Linear(c, c), nn.Sigmoid())

    def forward(self, x: torch.Tensor, z_time: torch.Tensor) -> torch.Tensor:
        z = z_time + sample(self.mu, self.logvar, self.training)  # [B, N, M]
        temporal = [g(z) for g in self.temporal_generators]
        spatial = [g(z) for g in self.spatial_generators]
        batch = x.shape[0]
        outs: list[torch.Tensor] = []
        p = self.proxies_per_window
        # A recurrence over the windows: each window's queries carry the previous output.
        # split, not slicing: each slice's gradient would be a zeroed copy of the whole input.
        windows = x.split(self.window, dim=1)
        for i, steps in enumerate(windows):
            query = self.proxies[i * p : (i + 1) * p].expand(batch, -1, -1, -1)
            if outs:
                query = query + outs[-1]
            h = self.temporal(query, torch.cat([query, steps], dim=1), temporal)
            h = self.spatial(h, spatial)
            outs.append((self.gate(h) * h).sum(dim=1, keepdim=True))  # [B, 1, N, C]
        return torch.cat(outs, dim=1)


class StwaConfig(BaselineConfig):
    """ST-WA, GPT-ST configuration (conf/ST-WA/*.conf and the authors' fixed sizes)."""

    channels: int = Field(16, ge=1)
    heads: int = Field(8, ge=1, description="attention heads; channels must be a multiple")
    memory_size: int = Field(16, ge=1, description="size of the latent code z of each node")
    window_sizes: tuple[int, ...] = Field(
        (1, 4, 3), min_length=1, description="window of each layer (the authors' 72-step setting: 6, 4, 3)"
    )
    proxies: int = Field(2, ge=1, description="learned queries per window")
    skip_channels: int = Field(256, ge=1)
    end_channels: int = Field(512, ge=1)
    estimator_hidden: int = Field(32, ge=1, description="hidden units of the time-specific mean / log-variance MLPs")
    generator_hidden: tuple[int, int] = Field((32, 5), description="hidden units of the parameter generators")
    kl_weight: float = Field(0.0, ge=0, description="weight of the KL term in auxiliary_loss (authors: 0.0005)")

    @field_validator("window_sizes", "generator_hidden")
    @classmethod
    def _positive(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(v < 1 for v in value):
            raise ValueError(f"sizes must be positive, got {list(value)}")
        return value

    @model_validator(mode="after")
    def _heads_divide_channels(self) -> StwaConfig:
        if self.channels % self.heads:
            raise ValueError(f"channels ({self.channels}) must be a multiple of heads ({self.heads})")
        return self


@register_baseline("stwa", StwaConfig)
class STWA(nn.Module):
    """ST-WA: x [B, in_steps, N, in_dim] -> [B, out_steps, N, out_dim]; any step counts; the graph
    is not used."""

    def __init__(
        self,
        *,
        num_nodes: int,
        in_dim: int,
        out_dim: int,
        in_steps: int,
        out_steps: int,
        graph: GraphBundle,
        params: StwaConfig,
    ) -> None:
        super().__init__()
        self.num_nodes, self.out_steps, self.out_dim = num_nodes, out_steps, out_dim
        self.kl_weight = params.kl_weight
        c, m, hidden = params.channels, params.memory_size, params.estimator_hidden
        self.start = nn.Linear(in_dim, c)
        # The time-specific MLPs read one series per node: several channels are mixed into one.
        self.reduce = nn.Linear(in_dim, 1) if in_dim != 1 else None

        def estimator() -> nn.Sequential:
            return nn.Sequential(
                nn.Linear(in_steps, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, m)
            )

        self.mu_estimator = estimator()
        self.logvar_estimator = estimator()
        self.windows = window_counts(in_steps, params.window_sizes)
        self.layers = nn.ModuleList(
            WindowLayer(num_nodes, size, count, params)
            for size, count in zip(params.window_sizes, self.windows, strict=True)
        )
        self.skips = nn.ModuleList(nn.Linear(count * c, params.skip_channels) for count in self.windows)
        self.dropout = Dropout(params.dropout)
        self.head = nn.Sequential(
            nn.Linear(params.skip_channels, params.end_channels),
            nn.ReLU(),
            nn.Linear(params.end_channels, out_steps * out_dim),
        )
        self._last_kl: torch.Tensor | None = None

    def time_posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance [B, N, M] of the time-specific latent of x [B, T, N, in_dim]."""
        series = (x if self.reduce is None else self.reduce(x))[..., 0].transpose(1, 2)  # [B, N, T]
        return self.mu_estimator(series), self.logvar_estimator(series)

    def kl_divergence(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """The authors' KL: the time-specific posteriors ``mu, logvar`` of a batch and every
        layer's location-specific posteriors, each against N(0, I), summed."""
        kl = gaussian_kl(mu, logvar)
        for layer in self.layers:
            layer = cast(WindowLayer, layer)
            kl = kl + gaussian_kl(layer.mu, layer.logvar)
        return kl

    def auxiliary_loss(self) -> torch.Tensor:
        """``kl_weight`` x the KL of the last training forward pass (0 without one): what a
        training step adds to the forecast loss to train ST-WA as its authors do."""
        if self._last_kl is None or self.kl_weight == 0:
            return torch.zeros((), device=self.start.weight.device)
        return self.kl_weight * self._last_kl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        mu, logvar = self.time_posterior(x)
        z_time = sample(mu, logvar, self.training)
        # Kept only while training (for auxiliary_loss), so evaluation holds no graph.
        self._last_kl = self.kl_divergence(mu, logvar) if self.training and self.kl_weight > 0 else None
        h = self.start(x)
        skips = []
        for layer, skip_layer in zip(self.layers, self.skips, strict=True):
            h = layer(h, z_time)
            skips.append(skip_layer(h.transpose(1, 2).flatten(2)))  # from [B, N, windows * C], window-major
        skip = torch.relu(torch.stack(skips).sum(dim=0))
        out = self.head(self.dropout(skip))  # [B, N, out_steps * out_dim]
        return out.reshape(batch, self.num_nodes, self.out_steps, self.out_dim).transpose(1, 2)
