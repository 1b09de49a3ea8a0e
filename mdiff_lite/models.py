"""A tiny U-Net denoiser: ``(x_t, t) -> logits of x0_hat``, class axis last.

The network follows the denoiser protocol of :mod:`mdiff_lite.diffusion`:
``model(x_t: LongTensor[B, H, W], t: LongTensor[B]) -> logits[B, H, W, K]``.

Three choices make it small and fast enough for a laptop CPU:

- **Folded pixels.** Each ``fold x fold`` block of pixels is folded into channels
  (``pixel_unshuffle``); with the default ``fold = 2`` and channels 32/64/96 a 32 x 32 map is
  processed at 16 x 16, 8 x 8 and 4 x 4. Resolution pays more than width here: in equal
  10-minute CPU budgets (``benchmarks/quality.py``, the README's table) this network reached a
  lower bound than the earlier default, ``fold = 4`` with 56/80/96 (8 x 8 at its finest, so
  each position had to emit 16 pixels x 8 classes = 128 logits), though a step costs about
  1.5 times as much; a fourth, narrower level (24/64/96/128) did worse than three. The price
  is evaluation: the all-T evaluation takes about 1.8 times as long (the README's speed table).
- **One meaning of x0_hat at every t.** Eq. 14 weighs each candidate ``x_0 = k`` by
  ``x0_hat(k) * q(x_t | x_0 = k)``: it multiplies in the likelihood of the pixel's own ``x_t``
  itself (eq. 13's first factor). So the best ``x0_hat`` predicts a pixel from the *other*
  pixels, and the network never adds ``log q(x_t | x_0 = k)`` to its logits. The decoder follows
  the same rule: :mod:`mdiff_lite.diffusion` uses ``p(x_0 | x_1) = C(theta_post(x_1, x0_hat))
  ∝ x0_hat * q(x_1 | x_0)``, eq. 14 at ``t = 1`` (the official code's decoder form), which is
  eq. 16 read with the decoder's probabilities. That term is sharp from the start, because ``x_1``
  is almost surely ``x_0``: a decoder that is ``x0_hat`` alone needs a network that copies its input
  with near-certainty, and in a calibration run such a network was not sharp, which cost a third
  of the whole bound. And a sampler's last jump, from any t straight to ``x_0``, is then the same
  posterior as every other jump (:mod:`mdiff_lite.sampling`).

  Earlier checkpoints had the network add the term itself at ``t = 1`` and used ``x0_hat`` alone
  as the decoder: ``softmax(correction + log q(x_1 | x_0))`` is exactly the decoder above with
  ``x0_hat = softmax(correction)``, so those checkpoints (``bayes_logits="decoder"``) load
  unchanged and score the same bound; but with the term inside the network, the sampler's last
  jump from t >= 2 to 0 lost each pixel's own evidence. ``bayes_logits="all"`` also adds the term
  at ``t >= 2``, counting the pixel's evidence twice there (the first shipped models' design,
  kept so that ``python benchmarks/quality.py --compare bayes-all:2.5`` can measure its cost:
  the README's results table). The last layer starts at zero, so an untrained network
  predicts the uniform ``x0_hat`` and its decoder is Bayes' rule under a uniform prior.
- **Attention** only at the lowest resolution, where it is cheap and links the far sides of
  the map.

Taught in notebook 05; the configuration is a small dataclass saved in every checkpoint.

For sequences (text, notebook 07) there are two transformers of one size and one trunk:
:class:`TextDenoiser`, bidirectional and time-conditioned, the same protocol as the U-Net
(``model(x_t [B, L], t [B]) -> logits [B, L, K]``) for either noise process; and
:class:`CausalTransformer`, the autoregressive reference, whose exact likelihood is one pass.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from .schedules import Schedule, make_schedule

__all__ = ["DenoiserConfig", "Denoiser", "OracleDenoiser", "count_parameters", "check_schedule_matches",
           "TransformerConfig", "TextDenoiser", "CausalTransformer", "NOISE_NAMES", "process_of", "example_shape"]

# Where log q(x_t | x_0 = k) enters: "decoder" only (in the decoder, through eq. 14 at t = 1), or
# "all" (also added to the network's logits at t >= 2: the first design, evidence counted twice).
BAYES_LOGITS = ("decoder", "all")


@dataclass
class DenoiserConfig:
    """Everything needed to rebuild a :class:`Denoiser` (saved in checkpoints as a dict).

    ``schedule`` is the dict of ``Schedule.to_dict()``: the network reads ``alpha_bar_t`` for its
    Bayes term, so a denoiser belongs to one schedule.
    """

    num_classes: int
    height: int
    width: int
    schedule: dict = field(default_factory=lambda: {"name": "hoogeboom-cosine", "T": 1000})
    channels: tuple = (32, 64, 96)
    blocks_per_level: int = 1
    fold: int = 2
    embed_dim: int = 32  # width of the sinusoidal time embedding
    attention: bool = True
    groups: int = 8
    bayes_logits: str = "decoder"  # where log q(x_t | x_0 = k) enters: "decoder" (t = 1, eq. 14), "all"
    dropout: float = 0.0

    def __post_init__(self):
        # Checkpoints of the first models stored a bool: True meant at every t; False meant
        # nowhere, with x0_hat alone as the decoder, a model this version does not build.
        if self.bayes_logits is True:
            self.bayes_logits = "all"

    def validate(self) -> None:
        if self.bayes_logits not in BAYES_LOGITS:
            hint = (" (a model without the term, whose decoder was x0_hat alone, is not built any more)"
                    if self.bayes_logits in (False, "none") else "")
            raise ValueError(f"bayes_logits must be one of {', '.join(BAYES_LOGITS)}, got {self.bayes_logits!r}{hint}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        scale = self.fold * 2 ** (len(self.channels) - 1)
        if self.height % scale or self.width % scale:
            raise ValueError(f"height and width ({self.height} x {self.width}) must be multiples of "
                             f"fold * 2^(levels - 1) = {scale} for fold={self.fold} and {len(self.channels)} levels")
        if any(c % self.groups for c in self.channels):
            raise ValueError(f"every channel count {self.channels} must be a multiple of groups={self.groups}")
        if self.embed_dim % 2:
            raise ValueError(f"embed_dim must be even (sines and cosines), got {self.embed_dim}")
        if self.attention and self.channels[-1] % Attention.HEADS:
            raise ValueError(f"the last channel count {self.channels[-1]} must be a multiple of the "
                             f"{Attention.HEADS} attention heads")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DenoiserConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown denoiser config keys: {sorted(unknown)}")
        d = dict(d)
        if "channels" in d:
            d["channels"] = tuple(d["channels"])
        return cls(**d)


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Transformer-style embedding of integer times: sines and cosines of geometric frequencies."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], 1)


def folded_one_hot(x: torch.Tensor, num_classes: int, fold: int) -> torch.Tensor:
    """``pixel_unshuffle(one_hot(x) as channels, fold)``, float32 ``[B, K * fold^2, H / fold, W / fold]``,
    written straight into place: channel ``k * fold^2 + i * fold + j`` at ``(y, x)`` is 1 where pixel
    ``(y * fold + i, x * fold + j)`` holds class k. Cheaper than building the one-hot map and
    folding it (``benchmarks/train_speed.py`` times evaluation)."""
    B, H, W = x.shape
    f = fold
    offset = torch.arange(f * f, device=x.device).view(1, f * f, 1, 1)
    index = x.reshape(B, H // f, f, W // f, f).permute(0, 2, 4, 1, 3).reshape(B, f * f, H // f, W // f)
    out = torch.zeros(B, num_classes * f * f, H // f, W // f, device=x.device)
    return out.scatter_(1, index * (f * f) + offset, 1.0)


def _log_likelihood_of_x0(x_t: torch.Tensor, log_alpha_bar: torch.Tensor, log_one_minus_alpha_bar: torch.Tensor,
                          K: int) -> torch.Tensor:
    """``log q(x_t | x_0 = k)`` for every class k, ``[B, H, W, K]`` (eq. 12 read as a likelihood of
    x_0), from each example's ``log alpha_bar_t`` and ``log(1 - alpha_bar_t)`` (``[B]``): two values
    per pixel, the larger one at the class x_t shows."""
    log_noise = (log_one_minus_alpha_bar - math.log(K)).view(-1, 1, 1, 1)
    log_same = torch.logaddexp(log_alpha_bar.view(-1, 1, 1, 1), log_noise)
    return torch.where(F.one_hot(x_t, K).bool(), log_same, log_noise)


class ResBlock(nn.Module):
    """GroupNorm, SiLU, conv; the time embedding shifts and scales the middle; a residual path."""

    def __init__(self, c_in: int, c_out: int, t_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time = nn.Linear(t_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, t_emb):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.time(t_emb)[:, :, None, None].chunk(2, 1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return h + self.skip(x)


class Attention(nn.Module):
    """Multi-head self-attention over the positions of a (small) feature map, with a residual."""

    HEADS = 4

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        self.heads = self.HEADS

    def forward(self, x):
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W).unbind(1)
        h = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.out(h.transpose(-1, -2).reshape(B, C, H, W))


class Denoiser(nn.Module):
    """The U-Net. ``Denoiser(DenoiserConfig(num_classes=8, height=32, width=32))``."""

    def __init__(self, config: DenoiserConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.num_classes = K = config.num_classes
        schedule = make_schedule(**config.schedule)
        self.T = schedule.T
        # float32 copies for the Bayes term; the float64 originals stay in the schedule.
        self.register_buffer("log_alpha_bars", schedule.log_alpha_bars.float(), persistent=False)
        self.register_buffer("log_one_minus_alpha_bars", schedule.log_one_minus_alpha_bars.float(), persistent=False)

        f2 = config.fold ** 2
        t_dim = 4 * config.embed_dim
        self.time_mlp = nn.Sequential(nn.Linear(config.embed_dim, t_dim), nn.SiLU(), nn.Linear(t_dim, t_dim))
        chans = list(config.channels)
        # The stem reads one-hot classes, folded: a 3x3 convolution over them subsumes a class
        # embedding (an embedding is a 1x1 convolution of the one-hot map) and costs less.
        self.stem = nn.Conv2d(K * f2, chans[0], 3, padding=1)

        self.down = nn.ModuleList()
        skips = [chans[0]]
        c = chans[0]
        for level, c_level in enumerate(chans):
            for _ in range(config.blocks_per_level):
                self.down.append(ResBlock(c, c_level, t_dim, config.groups, config.dropout))
                c = c_level
                skips.append(c)
            if level < len(chans) - 1:
                self.down.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.mid1 = ResBlock(c, c, t_dim, config.groups, config.dropout)
        self.mid_attn = Attention(c, config.groups) if config.attention else nn.Identity()
        self.mid2 = ResBlock(c, c, t_dim, config.groups, config.dropout)

        self.up = nn.ModuleList()
        for level, c_level in reversed(list(enumerate(chans))):
            for _ in range(config.blocks_per_level + 1):
                self.up.append(ResBlock(c + skips.pop(), c_level, t_dim, config.groups, config.dropout))
                c = c_level
            if level > 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
        self.head = nn.Sequential(nn.GroupNorm(config.groups, c), nn.SiLU(), nn.Conv2d(c, K * f2, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def bayes_logits(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``log q(x_t | x_0 = k)`` for every class k (eq. 12 as a likelihood of x_0), ``[B, H, W, K]``."""
        return _log_likelihood_of_x0(x_t, self.log_alpha_bars[t], self.log_one_minus_alpha_bars[t], self.num_classes)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        h = folded_one_hot(x_t, self.num_classes, cfg.fold)
        t_emb = self.time_mlp(sinusoidal_embedding(t * (1000.0 / self.T), cfg.embed_dim))
        h = self.stem(h)
        hs = [h]
        for layer in self.down:
            h = layer(h, t_emb) if isinstance(layer, ResBlock) else layer(h)
            hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, t_emb)), t_emb)
        for layer in self.up:
            h = layer(torch.cat([h, hs.pop()], 1), t_emb) if isinstance(layer, ResBlock) else layer(h)
        h = self.head(h)
        if cfg.fold > 1:
            h = F.pixel_shuffle(h, cfg.fold)
        logits = h.permute(0, 2, 3, 1).float()  # float32 even under autocast: the loss takes logs
        if cfg.bayes_logits == "all":  # the first design: the evidence again at t >= 2 (not at t = 1,
            # where the decoder multiplies it in; so a first-design checkpoint scores as it did)
            logits = logits + torch.where((t == 1).view(-1, 1, 1, 1), 0.0, self.bayes_logits(x_t, t))
        return logits


class OracleDenoiser:
    """The best denoiser there is, for data whose posterior can be computed: the yardstick.

    The reverse step of eq. 14 treats pixels as independent given ``x_t``, so for each KL of eq. 15
    the best any network can do is each pixel's exact marginal ``q(x_{t-1} | x_t)``. Eq. 14 gives
    that marginal when ``x0_hat(k)`` is proportional to ``p(x_0 = k | x_t) / q(x_t | x_0 = k)`` at
    the pixel: the posterior of x0 given every pixel, the pixel's own evidence taken out again
    (eq. 14 multiplies it back in). The decoder is eq. 14 at ``t = 1``, so the same rule makes it
    ``p(x_0 | x_1)`` itself. So this denoiser's bound is the lowest any denoiser of this form
    reaches at this T; what is left above the entropy is the price of the independent pixels, and
    it shrinks as T grows.

    ``dataset`` must offer ``posterior(log_likelihood)`` (:meth:`mdiff_lite.data.ToySegmentation.posterior`).
    Follows the denoiser protocol, in float64: ``oracle(x_t, t) -> logits [B, H, W, K]``, computed on
    the CPU and returned on the device of ``x_t``. It has no weights: ``sampling.sample`` needs its
    ``shape`` and ``device`` given.
    ``benchmarks/oracle.py`` holds it against the trained denoiser.
    """

    def __init__(self, dataset, schedule):
        if not hasattr(dataset, "posterior"):
            raise TypeError(f"{type(dataset).__name__} has no exact posterior(); the oracle needs one")
        self.dataset, self.schedule = dataset, schedule
        self.num_classes, self.T = dataset.num_classes, schedule.T

    def log_likelihood(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``log q(x_t | x_0 = k)`` at every pixel for every class k (eq. 12), float64 ``[B, H, W, K]``
        on the CPU (float64 work stays there: MPS has no float64)."""
        x_t, t = x_t.cpu(), t.cpu()
        return _log_likelihood_of_x0(x_t, self.schedule.log_alpha_bars[t], self.schedule.log_one_minus_alpha_bars[t],
                                     self.num_classes)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        log_likelihood = self.log_likelihood(x_t, t)
        _, marginals = self.dataset.posterior(log_likelihood)
        logits = marginals.log() - log_likelihood
        return (logits.float() if x_t.device.type == "mps" else logits).to(x_t.device)  # MPS has no float64


def check_schedule_matches(model, schedule) -> None:
    """A :class:`Denoiser` reads alpha_bar_t from its own schedule (the Bayes term and the time
    scale): evaluating or sampling it with another schedule would silently compute nonsense.
    ``schedule`` may be a noise process; a :class:`TextDenoiser` must get the process it was
    built for (its noise and its schedule)."""
    process = schedule
    schedule = getattr(process, "schedule", process)
    noise = "uniform" if isinstance(process, Schedule) else getattr(process, "name", "uniform")
    config = getattr(model, "config", None)
    if isinstance(config, TransformerConfig):
        if config.noise != noise or make_schedule(**config.schedule).to_dict() != schedule.to_dict():
            raise ValueError(f"the model was built for {config.noise} noise on {config.schedule}, not "
                             f"{noise} noise on {schedule.to_dict()}; use mdiff_lite.models.process_of(model)")
        return
    if isinstance(config, DenoiserConfig) and noise != "uniform":
        raise ValueError(f"the U-Net denoiser is built for uniform noise, not {noise}")
    own = getattr(model, "schedule", None)   # an OracleDenoiser's
    if isinstance(own, Schedule) and own.to_dict() != schedule.to_dict():
        raise ValueError(f"the oracle was built for the schedule {own.to_dict()}, not {schedule.to_dict()}")
    if isinstance(config, DenoiserConfig) and make_schedule(**config.schedule).to_dict() != schedule.to_dict():
        raise ValueError(f"the model was built for the schedule {config.schedule}, not {schedule.to_dict()}; "
                         "use make_schedule(**model.config.schedule)")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------------------------
# Transformers for sequences (text): the denoiser and the autoregressive reference.
# ---------------------------------------------------------------------------------------------

NOISE_NAMES = ("uniform", "absorbing")


@dataclass
class TransformerConfig:
    """Everything needed to rebuild a :class:`TextDenoiser` (``noise`` and ``schedule`` set) or a
    :class:`CausalTransformer` (``noise=None``, ``schedule=None``). Both have the same trunk for
    the same ``width``, ``depth`` and ``heads``, so their sizes match parameter for parameter,
    up to the token table (K + 1 rows for the absorbing denoiser's mask and the causal model's
    start token, K for the uniform denoiser) and the denoiser's time MLP."""

    num_classes: int
    length: int
    noise: str | None = "absorbing"
    schedule: dict | None = field(default_factory=lambda: {"name": "jsd", "T": 1000})
    width: int = 64
    depth: int = 4
    heads: int = 4
    # A convolution over this many neighbouring tokens before the first layer (0: none). With
    # learned absolute positions alone, attention found no use for a character's neighbours early in
    # training: after 300 steps the absorbing denoiser's test bound was 4.130 +- 0.009 bits per
    # character, the unigram level, and 3.403 +- 0.011 with it (benchmarks/results/text_cpu_local0.json
    # and _local5.json, each with its command). The causal model's is causal: it sees only the past.
    local: int = 5
    dropout: float = 0.0

    def validate(self) -> None:
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if self.local < 0:
            raise ValueError(f"local must be >= 0 (0: no convolution), got {self.local}")
        if self.length < 1:
            raise ValueError(f"length must be >= 1, got {self.length}")
        if self.noise is not None and self.noise not in NOISE_NAMES:
            raise ValueError(f"noise must be one of {', '.join(NOISE_NAMES)} (or None for the causal model), "
                             f"got {self.noise!r}")
        if (self.noise is None) != (self.schedule is None):
            raise ValueError("a denoiser needs both noise and schedule; the causal model neither")
        if self.width % self.heads or self.width % 2:
            raise ValueError(f"width {self.width} must be even and a multiple of heads={self.heads}")
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, got {self.depth}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TransformerConfig":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown transformer config keys: {sorted(unknown)}")
        return cls(**d)


def example_shape(model) -> tuple | None:
    """The shape of one example a model reads: ``(H, W)`` for the U-Net, ``(L,)`` for the
    transformers; None for a model without a config (the oracle), which takes any."""
    config = getattr(model, "config", None)
    if isinstance(config, TransformerConfig):
        return (config.length,)
    return (config.height, config.width) if isinstance(config, DenoiserConfig) else None


def sequence_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``-sum_i log softmax(logits)[i, x_i]`` per sequence, nats ``[B]``: the causal model's exact
    negative log-likelihood from its logits ``[B, L, K]`` (what :meth:`CausalTransformer.nll` and
    ``fit`` compute)."""
    return F.cross_entropy(logits.transpose(1, 2), x, reduction="none").sum(1)


def process_of(model):
    """The noise process a text denoiser was built for (its config's ``noise`` on its ``schedule``)."""
    from .absorbing import AbsorbingProcess   # imported here: the equations do not import the models
    from .diffusion import UniformProcess

    config = model.config
    schedule = make_schedule(**config.schedule)
    return AbsorbingProcess(schedule) if config.noise == "absorbing" else UniformProcess(schedule)


class _Trunk(nn.Module):
    """Token and position embeddings, a convolution over neighbouring tokens (``config.local``),
    ``depth`` pre-norm transformer layers (PyTorch's own), a final norm and a zero-initialised
    head: at the start every prediction is uniform."""

    def __init__(self, config: TransformerConfig, vocab: int):
        super().__init__()
        c = config
        self.tokens = nn.Embedding(vocab, c.width)
        self.local = nn.Conv1d(c.width, c.width, c.local) if c.local else None
        self.positions = nn.Parameter(torch.randn(c.length, c.width) * 0.02)
        layer = nn.TransformerEncoderLayer(c.width, c.heads, 4 * c.width, c.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, c.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(c.width)
        self.head = nn.Linear(c.width, c.num_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, ids: torch.Tensor, extra: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        L = ids.shape[1]
        h = self.tokens(ids)
        if self.local is not None:  # causal: pad on the left only, so position i sees tokens <= i
            k = self.local.kernel_size[0]
            pad = (k - 1, 0) if causal else ((k - 1) // 2, k - 1 - (k - 1) // 2)
            h = h + self.local(F.pad(h.transpose(1, 2), pad)).transpose(1, 2)
        h = h + self.positions[:L]
        if extra is not None:
            h = h + extra[:, None, :]
        mask = nn.Transformer.generate_square_subsequent_mask(L, device=ids.device) if causal else None
        h = self.layers(h, mask=mask, is_causal=causal)
        return self.head(self.norm(h)).float()  # float32 even under autocast: the loss takes logs


def _check_sequences(x, vocab: int, length: int, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.is_floating_point() or x.ndim != 2:
        raise ValueError(f"{name} must be a LongTensor [B, L] of token ids, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.shape[1] > length:
        raise ValueError(f"{name} has {x.shape[1]} tokens, the model was built for at most {length}")


class TextDenoiser(nn.Module):
    """A bidirectional transformer denoiser for sequences: ``model(x_t [B, L], t [B]) -> logits [B, L, K]``.

    It reads ``x_t`` as token ids (K + 1 of them under absorbing noise, the mask being ``K``) and
    the time through a sinusoidal embedding and a small MLP added at every position. As with the
    U-Net, ``x0_hat = softmax(logits)`` and the network never adds ``x_t``'s own evidence: eq. 14
    (and its absorbing twin, :mod:`mdiff_lite.absorbing`) multiplies it in, which for absorbing
    noise means that an unmasked token is kept whatever the network says there.
    ``TextDenoiser(TransformerConfig(num_classes=27, length=256, noise="uniform", schedule={"name": "jsd", "T": 1000}))``.
    """

    def __init__(self, config: TransformerConfig):
        super().__init__()
        config.validate()
        if config.noise is None:
            raise ValueError("a TextDenoiser needs a noise process in its config (noise='uniform' or 'absorbing')")
        self.config = config
        self.num_classes = config.num_classes
        self.T = config.schedule["T"]
        self.vocab = config.num_classes + (1 if config.noise == "absorbing" else 0)
        w = config.width
        self.time_mlp = nn.Sequential(nn.Linear(w, 2 * w), nn.SiLU(), nn.Linear(2 * w, w))
        self.trunk = _Trunk(config, self.vocab)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t_emb = self.time_mlp(sinusoidal_embedding(t * (1000.0 / self.T), self.config.width))
        return self.trunk(x_t, t_emb)


class CausalTransformer(nn.Module):
    """The autoregressive reference: ``p(x) = prod_i p(x_i | x_{<i})``, exactly, by one causal pass.

    ``model(x [B, L]) -> logits [B, L, K]``, where position i predicts ``x_i`` from ``x_{<i}`` (the
    input is shifted right behind a start token, id K). :meth:`nll` is ``-log p(x)`` in nats per
    sequence: exact, no bound. Same trunk as :class:`TextDenoiser` for the same config sizes.
    """

    def __init__(self, config: TransformerConfig):
        super().__init__()
        config.validate()
        if config.noise is not None:
            raise ValueError("a CausalTransformer has no noise process: build it with noise=None, schedule=None")
        self.config = config
        self.num_classes = config.num_classes
        self.trunk = _Trunk(config, config.num_classes + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_sequences(x, self.num_classes, self.config.length, "x")
        start = torch.full_like(x[:, :1], self.num_classes)
        return self.trunk(torch.cat([start, x[:, :-1]], 1), causal=True)

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        """``-log p(x)`` per sequence, nats, ``[B]`` (exact)."""
        return sequence_nll(self(x), x)

    @torch.no_grad()
    def sample(self, n: int, length: int | None = None, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` sequences, one token at a time (``length`` passes): LongTensor ``[n, length]``."""
        length = length or self.config.length
        device = self.trunk.head.weight.device
        was_training = self.training
        self.eval()
        x = torch.zeros(n, 0, dtype=torch.long, device=device)
        for _ in range(length):
            start = torch.full((n, 1), self.num_classes, dtype=torch.long, device=device)
            logits = self.trunk(torch.cat([start, x], 1), causal=True)[:, -1]
            x = torch.cat([x, torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)], 1)
        self.train(was_training)
        return x
