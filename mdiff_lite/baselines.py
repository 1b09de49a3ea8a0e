"""Dequantization flows: the baseline multinomial diffusion is measured against.

A normalizing flow is a density on real vectors; a map of class ids is discrete. Dequantization
bridges the two (Uria et al. 2013, RNADE; Theis et al. 2016, "A note on the evaluation of
generative models"): put a continuous noise ``u`` in the unit cell of each discrete point,
``v = x + u``, fit a density ``p(v)``, and read a lower bound on the discrete probability

    P(x) = integral over the cell of p(x + u) du >= exp E_q[log p(x + u) - log q(u | x)]

for any density ``q(u | x)`` on the cell (Jensen). Four kinds, ``KINDS``:

- ``"ordinal"``: uniform noise on the class index, ``v = x + u``, ``u ~ U[0, 1)^D``: one channel,
  ``v`` in ``[0, K)``. Classes become ordered numbers, and the flow pays for an order the data
  lacks (permuting the labels changes its likelihood; notebook 06 measures how much).
- ``"onehot"``: uniform noise on the one-hot vector, ``v = onehot(x) + u``, ``u ~ U[0, 1)^(D K)``:
  ``K`` channels, ``v`` in ``[0, 2)^K``. What the paper's baselines dequantize.
- ``"variational-ordinal"``, ``"variational-onehot"``: the same representations, with ``u`` drawn
  from a learned conditional flow ``q(u | x)`` instead of the uniform (Ho et al. 2019, Flow++).
  Uniform noise forces ``p`` to be flat within each cell or lose the difference in the bound;
  a learned ``q`` can follow ``p``'s shape and makes the bound tighter.

Every kind reports a lower bound on ``log P(x)`` in nats per map: with ``k = 1`` the one-sample
variational bound ``E_q[log p(x + u) - log q(u | x)]`` (``log q = 0`` for uniform noise), with
``k > 1`` the importance-weighted bound ``E[log (1/k) sum_i p(x + u_i) / q(u_i | x)]`` (Burda et
al. 2016), which increases with ``k`` towards ``log P(x)``. Bits per dimension are
``-bound / (H W ln 2)``: ``D = H W`` counts pixels, also for the one-hot kinds (whose flows see
``H W K`` numbers), so they are in the unit of the diffusion model's bound, and are an upper bound
on ``-log2 P(x) / D`` like it.

The flow for ``p(v)`` (RealNVP, Dinh et al. 2017, with Glow's steps, Kingma & Dhariwal 2018):

1. ``preprocess``: ``v`` is bounded, a Gaussian base is not: ``s = alpha + (1 - 2 alpha) v / upper``
   (``upper = K`` or 2), then ``logit(s)``. Both steps are in the log-determinant.
2. Checkerboard affine couplings at full resolution (``steps[0]`` of them).
3. Per level: squeeze 2 x 2 pixels into channels, then ``steps[level]`` Glow steps (ActNorm,
   invertible 1 x 1 convolution, channel affine coupling); between levels half the channels leave
   for the Gaussian base through an affine coupling on the other half (Glow's learned prior).

Each coupling's network is a small residual conv net whose last layer starts at zero, so a fresh
flow is the identity after preprocessing: its density is known in closed form (the tests use
that). ``q(u | x)`` is a smaller flow on 2 x 2 blocks: ``u = sigmoid(h)``, ``h`` from Gaussian
noise through Glow steps whose coupling networks also see features of ``onehot(x)``.

Why hand-written: normflows (the maintained library the style points to) has Glow blocks and a
multiscale model, but its coupling networks take no context, so ``q(u | x)`` would need a
hand-written conditional coupling anyway; its ``Logit`` is a data-loader transform without a
log-determinant (the change of variables would silently lose a term); and it would add a
dependency. zuko's conditional flows are built for vectors with MLP conditioners, not 32 x 32 x K
images. The flow here is a few hundred lines, and the tests check every log-determinant against
autograd's Jacobian in float64 and the fresh flow's bound against numerical integration.

Taught in notebook 06 (multinomial diffusion against the dequantization baselines, in bits per
pixel against the true entropy, with and without permuted labels).
"""

from __future__ import annotations

import math
import numbers
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import load_weights, read_checkpoint, write_checkpoint
from .diffusion import bits_per_dim

__all__ = ["KINDS", "DequantizationFlow", "preprocess", "preprocess_inverse", "fit_flow", "evaluate_flow",
           "save_flow", "load_flow", "pretrained_flow_path", "load_pretrained_flow"]

KINDS = ("ordinal", "onehot", "variational-ordinal", "variational-onehot")

_LOG_2PI = math.log(2 * math.pi)


def _std_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """Sum over all but the batch axis of ``log N(z; 0, 1)``."""
    return -0.5 * (z.pow(2) + _LOG_2PI).flatten(1).sum(1)


# ---------------------------------------------------------------------------------------------
# Preprocessing: the bounded dequantized data to the real line, with its log-determinant.
# ---------------------------------------------------------------------------------------------


def preprocess(v: torch.Tensor, upper: float, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``y = logit(alpha + (1 - 2 alpha) v / upper)`` elementwise, and ``log |det dy/dv|`` per example.

    ``alpha`` keeps ``logit`` finite at the cell edges (RealNVP's choice is 0.05); the map sends
    ``[0, upper]`` to ``[logit(alpha), -logit(alpha)]``.
    """
    scale = (1 - 2 * alpha) / upper
    s = alpha + scale * v
    y = torch.log(s) - torch.log1p(-s)
    log_det = (math.log(scale) - torch.log(s) - torch.log1p(-s)).flatten(1).sum(1)
    return y, log_det


def preprocess_inverse(y: torch.Tensor, upper: float, alpha: float) -> torch.Tensor:
    """The inverse of :func:`preprocess`."""
    return (torch.sigmoid(y) - alpha) * upper / (1 - 2 * alpha)


# ---------------------------------------------------------------------------------------------
# Invertible layers. Each maps x -> (y, log |det dy/dx| per example) and back with inverse;
# ``context`` (features of the class map, for q(u | x)) is read by the couplings only.
# ---------------------------------------------------------------------------------------------


def squeeze(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W] -> [B, 4C, H/2, W/2]``: each 2 x 2 block of pixels into channels (a permutation)."""
    B, C, H, W = x.shape
    x = x.view(B, C, H // 2, 2, W // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(B, 4 * C, H // 2, W // 2)


def unsqueeze(x: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`squeeze`."""
    B, C, H, W = x.shape
    x = x.view(B, C // 4, 2, 2, H, W).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(B, C // 4, 2 * H, 2 * W)


class ActNorm(nn.Module):
    """``y = (x + bias) * exp(log_scale)`` per channel (Glow). The first batch seen in training mode
    sets the parameters so that it comes out with zero mean and unit variance per channel; until
    then (and for a fresh model in eval mode) the layer is the identity."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))

    def forward(self, x, context=None):
        if self.training and not self.initialized:
            with torch.no_grad():
                self.bias.copy_(-x.mean((0, 2, 3), keepdim=True))
                self.log_scale.copy_(-torch.log(x.std((0, 2, 3), keepdim=True) + 1e-6))
                self.initialized.fill_(True)
        log_det = self.log_scale.sum() * x.shape[2] * x.shape[3]
        return (x + self.bias) * torch.exp(self.log_scale), log_det.expand(x.shape[0])

    def inverse(self, y, context=None):
        return y * torch.exp(-self.log_scale) - self.bias


class InvertibleConv1x1(nn.Module):
    """A learned channel mixing ``y = W x`` at every pixel (Glow); ``W`` starts as a random rotation."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.linalg.qr(torch.randn(channels, channels))[0])

    def forward(self, x, context=None):
        log_det = torch.linalg.slogdet(self.weight)[1] * x.shape[2] * x.shape[3]
        return torch.einsum("ij,bjhw->bihw", self.weight, x), log_det.expand(x.shape[0])

    def inverse(self, y, context=None):
        return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(self.weight), y)


class _ResidualBlock(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.conv1 = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, padding=1)

    def forward(self, h):
        return h + self.conv2(F.relu(self.conv1(F.relu(h))))


class AffineCoupling(nn.Module):
    """RealNVP's affine coupling: one part of ``x`` stays, the other is scaled and shifted by
    amounts a conv net computes from the part that stays (and from ``context``, if any).

    ``mode`` ``"checkerboard0"``/``"checkerboard1"``: the part that stays is the pixels with
    ``(i + j) % 2`` equal to 0 or 1, all channels; ``"channel"``: the first ``channels // 2``
    channels stay. The log-scale is soft-clamped to ``(-clamp, clamp)``; the net's last layer
    starts at zero, so a fresh coupling is the identity.
    """

    def __init__(self, channels: int, mode: str, hidden: int, blocks: int = 1, context_channels: int = 0,
                 clamp: float = 2.0):
        super().__init__()
        self.mode, self.clamp = mode, clamp
        if mode == "channel":
            c_in, c_out = channels // 2, channels - channels // 2
        else:
            c_in = c_out = channels
        layers = [nn.Conv2d(c_in + context_channels, hidden, 3, padding=1)]
        layers += [_ResidualBlock(hidden) for _ in range(blocks)]
        layers += [nn.ReLU(), nn.Conv2d(hidden, 2 * c_out, 3, padding=1)]
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)
        self.net = nn.Sequential(*layers)

    def _mask(self, x):
        i = torch.arange(x.shape[2], device=x.device)[:, None]
        j = torch.arange(x.shape[3], device=x.device)[None, :]
        return ((i + j) % 2 == int(self.mode[-1])).to(x.dtype)   # 1 where x stays

    def _scale_shift(self, kept, context):
        h = kept if context is None else torch.cat([kept, context], 1)
        raw_scale, shift = self.net(h).chunk(2, 1)
        return self.clamp * torch.tanh(raw_scale / self.clamp), shift

    def forward(self, x, context=None):
        if self.mode == "channel":
            kept, moved = x[:, :x.shape[1] // 2], x[:, x.shape[1] // 2:]
            log_scale, shift = self._scale_shift(kept, context)
            y = torch.cat([kept, moved * torch.exp(log_scale) + shift], 1)
            return y, log_scale.flatten(1).sum(1)
        mask = self._mask(x)
        log_scale, shift = self._scale_shift(x * mask, context)
        log_scale, shift = log_scale * (1 - mask), shift * (1 - mask)
        return x * torch.exp(log_scale) + shift, log_scale.flatten(1).sum(1)

    def inverse(self, y, context=None):
        if self.mode == "channel":
            kept, moved = y[:, :y.shape[1] // 2], y[:, y.shape[1] // 2:]
            log_scale, shift = self._scale_shift(kept, context)
            return torch.cat([kept, (moved - shift) * torch.exp(-log_scale)], 1)
        mask = self._mask(y)
        log_scale, shift = self._scale_shift(y * mask, context)
        log_scale, shift = log_scale * (1 - mask), shift * (1 - mask)
        return (y - shift) * torch.exp(-log_scale)


def _run(layers, x, context=None):
    log_det = x.new_zeros(x.shape[0])
    for layer in layers:
        x, ld = layer(x, context)
        log_det = log_det + ld
    return x, log_det


def _run_inverse(layers, y, context=None):
    for layer in reversed(layers):
        y = layer.inverse(y, context)
    return y


# ---------------------------------------------------------------------------------------------
# The two flows: p(v) (multi-scale, unconditional) and q(u | x) (full resolution, conditional).
# ---------------------------------------------------------------------------------------------


class MultiscaleFlow(nn.Module):
    """``v [B, C, H, W] -> latents``: preprocessing, ``steps[0]`` checkerboard couplings, then per
    level ``l = 1 .. len(steps) - 1`` a squeeze and ``steps[l]`` Glow steps, half the channels
    leaving between levels. ``hidden[l]`` is the width of the coupling nets at level ``l``."""

    def __init__(self, channels: int, upper: float, alpha: float, hidden: tuple, steps: tuple, blocks: int):
        super().__init__()
        self.upper, self.alpha = upper, alpha
        self.full = nn.ModuleList()
        for i in range(steps[0]):
            self.full += [ActNorm(channels), AffineCoupling(channels, f"checkerboard{i % 2}", hidden[0], blocks)]
        self.levels, self.splits = nn.ModuleList(), nn.ModuleList()
        c = channels
        for level in range(1, len(steps)):
            c *= 4
            layers = nn.ModuleList()
            for _ in range(steps[level]):
                layers += [ActNorm(c), InvertibleConv1x1(c), AffineCoupling(c, "channel", hidden[level], blocks)]
            self.levels.append(layers)
            if level < len(steps) - 1:
                self.splits.append(AffineCoupling(c, "channel", hidden[level], blocks))
                c //= 2

    def forward(self, v):
        """``v`` -> (list of latents, ``log |det d latents / dv|`` per example)."""
        x, log_det = preprocess(v, self.upper, self.alpha)
        x, ld = _run(self.full, x)
        log_det = log_det + ld
        latents = []
        for level, layers in enumerate(self.levels):
            x, ld = _run(layers, squeeze(x))
            log_det = log_det + ld
            if level < len(self.splits):   # the leaving half is Gaussian given the staying half
                x, ld = self.splits[level](x)
                log_det = log_det + ld
                latents.append(x[:, x.shape[1] // 2:])
                x = x[:, :x.shape[1] // 2]
        return latents + [x], log_det

    def inverse(self, latents):
        x = latents[-1]
        for level in reversed(range(len(self.levels))):
            if level < len(self.splits):
                x = self.splits[level].inverse(torch.cat([x, latents[level]], 1))
            x = unsqueeze(_run_inverse(self.levels[level], x))
        return preprocess_inverse(_run_inverse(self.full, x), self.upper, self.alpha)

    def log_prob(self, v):
        latents, log_det = self(v)
        return sum(_std_normal_log_prob(z) for z in latents) + log_det


class ConditionalDequantizer(nn.Module):
    """Flow++'s variational dequantization ``q(u | x)``: ``eps ~ N(0, I)``, ``h = f(eps; x)``,
    ``u = sigmoid(h)`` in ``(0, 1)``. ``f`` works on 2 x 2 blocks squeezed into channels (four
    times cheaper than full resolution at the same width): Glow steps whose coupling nets also see
    features of ``onehot(x)``, squeezed the same way."""

    def __init__(self, channels: int, num_classes: int, hidden: int, steps: int, blocks: int):
        super().__init__()
        c = 4 * channels
        self.context_net = nn.Sequential(
            nn.Conv2d(4 * num_classes, hidden, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU())
        self.layers = nn.ModuleList()
        for _ in range(steps):
            self.layers += [ActNorm(c), InvertibleConv1x1(c),
                            AffineCoupling(c, "channel", hidden, blocks, context_channels=hidden)]

    def transform(self, eps, x_onehot):
        """``eps [B, C, H, W]`` -> (``u``, ``log |det du / d eps|`` per example)."""
        h, log_det = _run(self.layers, squeeze(eps), self.context_net(squeeze(x_onehot)))
        log_sigmoid_slope = -F.softplus(-h) - F.softplus(h)   # log sigmoid'(h)
        return unsqueeze(torch.sigmoid(h)), log_det + log_sigmoid_slope.flatten(1).sum(1)

    def sample(self, x_onehot, shape, generator=None):
        """``u ~ q(u | x)`` of ``shape`` and ``log q(u | x)`` per example."""
        eps = torch.randn(shape, generator=generator, device=x_onehot.device, dtype=x_onehot.dtype)
        u, log_det = self.transform(eps, x_onehot)
        return u, _std_normal_log_prob(eps) - log_det


# ---------------------------------------------------------------------------------------------
# The baseline.
# ---------------------------------------------------------------------------------------------


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {name} = {value!r}")
    return int(value)


def _int_tuple(value, name: str, minimum: int) -> tuple:
    if not isinstance(value, (tuple, list)) or not value or any(
            isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < minimum for n in value):
        raise ValueError(f"{name} must be a non-empty tuple of integers >= {minimum}, got {name} = {value!r}")
    return tuple(int(n) for n in value)


class DequantizationFlow(nn.Module):
    """A normalizing flow on dequantized class maps, scored by a lower bound on ``log P(x)``.

    Args:
        kind: one of ``KINDS`` (see the module docstring).
        num_classes: K >= 2.
        height, width: of the maps; divisible by ``2 ** (len(steps) - 1)``, and by 2 for the
            variational kinds.
        alpha: the preprocessing's margin, in ``(0, 0.5)``.
        hidden: the coupling nets' width at full resolution and at each level.
        steps: couplings at full resolution, then Glow steps at each level (one squeeze each).
        blocks: residual blocks per coupling net.
        dequantizer_hidden, dequantizer_steps: the size of ``q(u | x)`` (variational kinds only).

    The defaults at 32 x 32, K = 8 (``num_parameters``): 1.66M parameters for ``"ordinal"``, 2.20M
    for ``"onehot"`` (its nets see 8 times more channels), plus 0.14M / 0.19M for ``q(u | x)``.
    Taught in notebook 06.
    """

    def __init__(self, kind: str, num_classes: int, height: int, width: int, *, alpha: float = 0.05,
                 hidden: tuple = (32, 64, 128), steps: tuple = (2, 4, 4), blocks: int = 1,
                 dequantizer_hidden: int = 32, dequantizer_steps: int = 4):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        K = _positive_int(num_classes, "num_classes")
        if K < 2:
            raise ValueError(f"num_classes must be at least 2, got num_classes = {num_classes!r}")
        steps = _int_tuple(steps, "steps", 0)
        hidden = _int_tuple(hidden, "hidden", 1)
        if len(hidden) != len(steps):
            raise ValueError(f"hidden must have one width per entry of steps, got hidden = {hidden}, "
                             f"steps = {steps}")
        squeezes = len(steps) - 1
        factor = 2 ** (max(squeezes, 1) if kind.startswith("variational") else squeezes)
        for name, value in (("height", height), ("width", width)):
            if _positive_int(value, name) % factor:
                raise ValueError(f"{name} must be divisible by {factor} (one squeeze per level, and one in "
                                 f"q(u | x) for the variational kinds), "
                                 f"got {name} = {value}")
        if not isinstance(alpha, numbers.Real) or not 0 < alpha < 0.5:
            raise ValueError(f"alpha must be in (0, 0.5), got alpha = {alpha!r}")
        self.kind, self.num_classes, self.height, self.width = kind, K, int(height), int(width)
        self.encoding = "onehot" if kind.endswith("onehot") else "ordinal"
        self.variational = kind.startswith("variational")
        self.channels = K if self.encoding == "onehot" else 1
        self.upper = 2.0 if self.encoding == "onehot" else float(K)
        self.config = dict(kind=kind, num_classes=K, height=int(height), width=int(width), alpha=float(alpha),
                           hidden=hidden, steps=steps, blocks=_positive_int(blocks, "blocks"),
                           dequantizer_hidden=_positive_int(dequantizer_hidden, "dequantizer_hidden"),
                           dequantizer_steps=_positive_int(dequantizer_steps, "dequantizer_steps"))
        self.flow = MultiscaleFlow(self.channels, self.upper, float(alpha), hidden, steps, blocks)
        self.dequantizer = (ConditionalDequantizer(self.channels, K, dequantizer_hidden, dequantizer_steps, blocks)
                            if self.variational else None)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _dtype_device(self):
        p = next(self.parameters())
        return p.dtype, p.device

    def _check_maps(self, x0) -> torch.Tensor:
        if not isinstance(x0, torch.Tensor):
            raise TypeError(f"x0 must be a torch.Tensor of class ids, got {type(x0).__name__}")
        if x0.dtype == torch.bool or x0.is_floating_point() or x0.is_complex():
            raise ValueError(f"x0 must be an integer tensor of class ids, got dtype {x0.dtype}")
        if x0.ndim != 3 or tuple(x0.shape[1:]) != (self.height, self.width):
            raise ValueError(f"x0 must have shape [B, {self.height}, {self.width}], got {tuple(x0.shape)}")
        if x0.numel() and (x0.min() < 0 or x0.max() >= self.num_classes):
            raise ValueError(f"class ids must lie in 0..{self.num_classes - 1}, "
                             f"found {x0.min().item()}..{x0.max().item()}")
        return x0.long()

    def encode(self, x0: torch.Tensor) -> torch.Tensor:
        """Class ids ``[B, H, W]`` -> the corner of their unit cell, ``[B, C, H, W]`` in the model's dtype:
        the index itself (``C = 1``) or the one-hot vector (``C = K``)."""
        x0 = self._check_maps(x0)
        dtype, device = self._dtype_device()
        if self.encoding == "ordinal":
            return x0[:, None].to(device, dtype)
        return F.one_hot(x0.to(device), self.num_classes).permute(0, 3, 1, 2).to(dtype)

    def decode(self, v: torch.Tensor) -> torch.Tensor:
        """Continuous ``v [B, C, H, W]`` -> class ids: the cell ``v`` lies in (ordinal, clamped to the
        classes), or the largest entry (one-hot: a ``v`` outside every one-hot cell still gets a class)."""
        if self.encoding == "ordinal":
            return v[:, 0].floor().clamp(0, self.num_classes - 1).long()
        return v.argmax(1)

    def log_density(self, v: torch.Tensor) -> torch.Tensor:
        """``log p(v)`` in nats per example, for ``v [B, C, H, W]`` in the dequantized space."""
        if not isinstance(v, torch.Tensor) or not v.is_floating_point() or v.ndim != 4 \
                or tuple(v.shape[1:]) != (self.channels, self.height, self.width):
            raise ValueError(f"v must be a float tensor [B, {self.channels}, {self.height}, {self.width}], "
                             f"got {getattr(v, 'dtype', type(v))} {tuple(getattr(v, 'shape', ()))}")
        return self.flow.log_prob(v)

    def _log_weights(self, x, x_onehot, generator):
        """One draw of ``log p(x + u) - log q(u | x)`` per example (``x_onehot`` is q's input)."""
        if self.variational:
            u, log_q = self.dequantizer.sample(x_onehot, x.shape, generator)
        else:
            u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            log_q = 0.0
        return self.flow.log_prob(x + u) - log_q

    def log_prob_bound(self, x0: torch.Tensor, k: int = 1, generator: torch.Generator | None = None,
                       max_batch: int = 256) -> torch.Tensor:
        """A lower bound on ``log P(x0)`` in nats per map, ``[B]``.

        ``k = 1``: one draw of ``log p(x + u) - log q(u | x)``, whose expectation is the variational
        bound. ``k > 1``: ``log (1/k) sum_i p(x + u_i) / q(u_i | x)``, the importance-weighted bound.
        Draws are evaluated ``max_batch`` maps at a time.
        """
        k = _positive_int(k, "k")
        x = self.encode(x0)
        x_onehot = x   # q(u | x) reads x one-hot, whatever the flow's encoding
        if self.variational and self.encoding == "ordinal":
            x_onehot = F.one_hot(x0.long().to(x.device), self.num_classes).permute(0, 3, 1, 2).to(x.dtype)
        B = x.shape[0]
        per_pass = max(1, max_batch // max(B, 1))
        log_w = []
        for start in range(0, k, per_pass):
            n = min(per_pass, k - start)
            rep = (n, 1, 1, 1)
            log_w.append(self._log_weights(x.repeat(rep), x_onehot.repeat(rep), generator).view(n, B))
        log_w = torch.cat(log_w)
        return log_w[0] if k == 1 else torch.logsumexp(log_w, 0) - math.log(k)

    def bits_per_dim(self, x0: torch.Tensor, k: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        """``-log_prob_bound / (H W ln 2)`` per map: an upper bound on bits per pixel."""
        return bits_per_dim(-self.log_prob_bound(x0, k, generator), self.height * self.width)

    def training_loss(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Minus the one-sample bound, in nats per pixel, averaged over the batch."""
        return -self.log_prob_bound(x0, 1, generator).mean() / (self.height * self.width)

    def bound_label(self, k: int = 1) -> str:
        """What :meth:`log_prob_bound` with this ``k`` is, in words."""
        noise = ("variational dequantization (Flow++)" if self.variational else "uniform dequantization") + \
            (" of the one-hot vector" if self.encoding == "onehot" else " of the class index")
        if k == 1:
            return f"one-sample variational lower bound on log P(x), {noise}"
        return f"importance-weighted lower bound on log P(x), k = {k}, {noise}"

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` maps: ``v ~ p(v)`` through the inverse flow, then :meth:`decode`."""
        n = _positive_int(n, "n")
        dtype, device = self._dtype_device()
        latents, _ = self.flow(torch.full((1, self.channels, self.height, self.width), 0.5 * self.upper,
                                          dtype=dtype, device=device))   # only for the latents' shapes
        latents = [torch.randn((n,) + z.shape[1:], generator=generator, dtype=dtype, device=device)
                   for z in latents]
        return self.decode(self.flow.inverse(latents))

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, num_classes={self.num_classes}, {self.height}x{self.width}, " \
               f"{self.num_parameters:,} parameters"


# ---------------------------------------------------------------------------------------------
# Training and evaluation.
# ---------------------------------------------------------------------------------------------


def _check_training_maps(model, maps, name: str) -> torch.Tensor:
    if not isinstance(model, DequantizationFlow):
        raise TypeError(f"model must be a DequantizationFlow, got {type(model).__name__}")
    maps = model._check_maps(maps).cpu()
    if len(maps) == 0:
        raise ValueError(f"{name} is empty")
    return maps


def fit_flow(model: DequantizationFlow, train_maps: torch.Tensor, *, steps: int | None = None,
             max_seconds: float | None = None, batch_size: int = 64, lr: float = 1e-3, warmup_steps: int = 200,
             max_grad_norm: float = 100.0, seed: int = 0, progress: bool = True, on_log=None,
             log_every: int = 10) -> dict:
    """Train ``model`` by maximising the one-sample bound with Adam, on the device it is on.

    Batches are drawn with replacement; training stops after ``steps`` or ``max_seconds``,
    whichever comes first (at least one must be given). The learning rate rises linearly over
    ``warmup_steps`` (ActNorm's data-dependent start and the first Adam steps are fragile in flows).
    ``seed`` fixes the batches and the dequantization noise.

    ``on_log``, if given, is called every ``log_every`` steps as ``on_log(step, seconds, model)``,
    as :func:`mdiff_lite.train.fit` calls it: its own time is not counted in the budget, and if it
    returns True training ends there (``benchmarks/likelihood.py --curve`` scores the flow with it).

    Returns: ``{"steps", "seconds", "loss_bpd"}``, the last a list with one training loss per
    step, in bits per pixel (a noisy one-sample estimate of the bound).
    """
    train_maps = _check_training_maps(model, train_maps, "train_maps")
    if steps is None and max_seconds is None:
        raise ValueError("give steps or max_seconds (or both)")
    if steps is not None:
        steps = _positive_int(steps, "steps")
    if max_seconds is not None and (not isinstance(max_seconds, numbers.Real) or max_seconds <= 0):
        raise ValueError(f"max_seconds must be positive, got max_seconds = {max_seconds!r}")
    batch_size = _positive_int(batch_size, "batch_size")
    log_every = _positive_int(log_every, "log_every")
    if on_log is not None and not callable(on_log):
        raise TypeError(f"on_log must be callable, got {type(on_log).__name__}")
    device = model._dtype_device()[1]
    batch_generator = torch.Generator().manual_seed(seed)
    noise_generator = torch.Generator(device=device).manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses, start = [], time.perf_counter()
    bar = tqdm(total=steps, disable=not progress, desc=f"flow ({model.kind})", unit="step")
    while (steps is None or len(losses) < steps) and \
            (max_seconds is None or time.perf_counter() - start < max_seconds):
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (len(losses) + 1) / max(warmup_steps, 1))
        batch = train_maps[torch.randint(len(train_maps), (batch_size,), generator=batch_generator)]
        loss = model.training_loss(batch.to(device), noise_generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        losses.append(loss.item() / math.log(2))
        bar.update(1)
        bar.set_postfix(bpd=f"{losses[-1]:.3f}")
        if on_log is not None and len(losses) % log_every == 0:
            paused = time.perf_counter()
            reached = on_log(len(losses), paused - start, model)
            model.train()
            start += time.perf_counter() - paused  # the callback's time is not training time
            if reached:
                break
    bar.close()
    return {"steps": len(losses), "seconds": time.perf_counter() - start, "loss_bpd": losses}


@torch.no_grad()
def evaluate_flow(model: DequantizationFlow, maps: torch.Tensor, *, k: int = 1, batch_size: int = 64,
                  seed: int = 0, progress: bool = False) -> dict:
    """Bits per pixel of ``maps`` from the bound :meth:`DequantizationFlow.log_prob_bound` with ``k``.

    Returns ``{"bpd", "stderr", "bound", "k", "kind", "n_images", "per_map_bpd", "seconds"}``, the
    keys of :func:`mdiff_lite.evaluate.evaluate_bound` where they mean the same: ``bpd`` is the mean
    over maps of ``-bound / (H W ln 2)``, an upper bound on the true bits per pixel (in expectation
    over the noise), ``stderr`` its standard error over maps, ``bound`` the bound's name in words.
    """
    maps = _check_training_maps(model, maps, "maps")
    k, batch_size = _positive_int(k, "k"), _positive_int(batch_size, "batch_size")
    device = model._dtype_device()[1]
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    start, bounds = time.perf_counter(), []
    for i in tqdm(range(0, len(maps), batch_size), disable=not progress, desc=f"bound (k = {k})"):
        bounds.append(model.log_prob_bound(maps[i:i + batch_size].to(device), k, generator).cpu().double())
    model.train(was_training)
    per_map = bits_per_dim(-torch.cat(bounds), model.height * model.width)
    n = len(per_map)
    return {"bpd": per_map.mean().item(),
            "stderr": (per_map.std() / math.sqrt(n)).item() if n > 1 else float("nan"),
            "bound": model.bound_label(k), "k": k, "kind": model.kind, "n_images": n,
            "per_map_bpd": per_map.tolist(), "seconds": time.perf_counter() - start}


# ---------------------------------------------------------------------------------------------
# Checkpoints (the denoiser's file format, from mdiff_lite.checkpoint: weights plus JSON metadata)
# ---------------------------------------------------------------------------------------------

def save_flow(path, model: DequantizationFlow, meta: dict | None = None, *,
              weights_dtype: torch.dtype = torch.float32) -> None:
    """Write the flow's weights and ``meta`` (JSON-able; the flow's config is added) atomically."""
    if not isinstance(model, DequantizationFlow):
        raise TypeError(f"model must be a DequantizationFlow, got {type(model).__name__}")
    weights = {k: (v.to(weights_dtype) if v.is_floating_point() else v).cpu() for k, v in model.state_dict().items()}
    meta = dict(meta or {}, flow_config={k: list(v) if isinstance(v, tuple) else v for k, v in model.config.items()})
    write_checkpoint(path, weights, meta, kind="flow")


def _load_flow(path, device, dataset: str | None = None,
               flow_kind: str | None = None) -> tuple[DequantizationFlow, dict]:
    weights, meta, _ = read_checkpoint(path, kind="flow", dataset=dataset)
    config = dict(meta["flow_config"])
    if flow_kind is not None and config.get("kind") != flow_kind:
        raise ValueError(f"{path}: holds a {config.get('kind')!r} flow, not {flow_kind!r}")
    try:
        kind, K, H, W = (config.pop(k) for k in ("kind", "num_classes", "height", "width"))
        model = DequantizationFlow(kind, K, H, W, **{k: tuple(v) if isinstance(v, list) else v
                                                          for k, v in config.items()})
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: its flow_config describes no flow ({err})") from None
    load_weights(model, weights, path)
    return model.to(torch.device(device) if device is not None else torch.device("cpu")).eval(), meta


def load_flow(path, device=None) -> tuple[DequantizationFlow, dict]:
    """Rebuild a flow saved by :func:`save_flow`, in eval mode: ``(model, meta)``. Any other file
    is refused with one line: see :mod:`mdiff_lite.checkpoint`."""
    return _load_flow(path, device)


def pretrained_flow_path(dataset: str, kind: str):
    """Where the shipped baseline for ``dataset`` (``"toyseg"``, ``"digits"``) and ``kind`` lies."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    path = Path(__file__).resolve().parent / "pretrained" / f"flow_{dataset}_{kind}.pt"
    if not path.is_file():
        shipped = sorted(p.stem[5:] for p in path.parent.glob("flow_*.pt"))
        raise ValueError(f"no shipped flow for dataset {dataset!r}, kind {kind!r}; there are: "
                         f"{', '.join(shipped) or 'none'}")
    return path


def load_pretrained_flow(dataset: str, kind: str, device=None) -> tuple[DequantizationFlow, dict]:
    """A shipped baseline (trained by ``benchmarks/likelihood.py``) and its metadata; a file there
    that holds a flow of another dataset or kind is refused."""
    return _load_flow(pretrained_flow_path(dataset, kind), device, dataset=dataset, flow_kind=kind)
