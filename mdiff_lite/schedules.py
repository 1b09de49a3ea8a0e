"""Noise schedules: how much categorical noise each forward step adds.

A schedule is the sequence ``beta_1 .. beta_T``: at step ``t`` a pixel's class is resampled
uniformly with probability ``beta_t`` (eq. 11 of Hoogeboom et al. 2021). Everything else follows:
``alpha_t = 1 - beta_t`` and ``alpha_bar_t = prod_{tau <= t} alpha_tau``, the probability that
a class has not been resampled in the first ``t`` steps (eq. 12).

Every buffer has length ``T + 1`` and is indexed by ``t`` itself, so ``alpha_bars[t]`` is
``alpha_bar_t`` of the paper and ``betas[0] = 0``, ``alpha_bars[0] = 1`` describe "no noise yet".
The official code stores 0-based arrays whose entry ``i`` belongs to time ``i + 1``; indexing by
``t`` removes that off-by-one. Buffers are float64: at T = 4000 the first betas are about 5e-6 (hoogeboom-cosine; the tests
go down to 1e-7 with a linear schedule), and ``1 - alpha`` or ``log(1 - alpha_bar)`` computed in float32 would lose most of their digits.

Taught in notebook 01 (forward process); the widgets of notebook 04 plot these buffers.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

import torch

__all__ = ["Schedule", "make_schedule", "SCHEDULE_NAMES"]


@dataclass(frozen=True, eq=False)
class Schedule:
    """Precomputed float64 buffers of one noise schedule, indexed by ``t = 0 .. T``.

    Build one with :func:`make_schedule`; the constructor trusts its input.

    Attributes:
        name, T, params: what :func:`make_schedule` was called with (``params`` holds the
            parameter values actually used, defaults included), enough to rebuild it.
        betas, alphas, alpha_bars: ``beta_t``, ``alpha_t = 1 - beta_t``, ``alpha_bar_t``.
        log_alphas, log_alpha_bars: their logarithms (``-inf`` where the value is 0).
        log_betas: ``log(1 - alpha_t)``; ``log_betas[0] = -inf``.
        one_minus_alpha_bars: ``1 - alpha_bar_t``, the probability that a class has been
            resampled at least once by time ``t``, computed as ``-expm1(log alpha_bar_t)``.
        log_one_minus_alpha_bars: ``log(1 - alpha_bar_t)``, computed as
            ``log(-expm1(log alpha_bar_t))`` so that it keeps its digits when ``alpha_bar_t`` is
            close to 1; ``-inf`` at ``t = 0``.
    """

    name: str
    T: int
    params: dict
    betas: torch.Tensor
    alphas: torch.Tensor
    alpha_bars: torch.Tensor
    log_alphas: torch.Tensor
    log_alpha_bars: torch.Tensor
    log_betas: torch.Tensor
    one_minus_alpha_bars: torch.Tensor
    log_one_minus_alpha_bars: torch.Tensor
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def buffer(self, name: str, device=None, dtype=None) -> torch.Tensor:
        """A buffer moved to ``device`` and cast to ``dtype``, cached after the first request.

        The training loop asks for the same float32 CUDA copy at every step; the cache saves a
        host-to-device transfer each time. The float64 originals are never modified.
        """
        source = getattr(self, name)
        device = torch.device(device) if device is not None else source.device
        dtype = dtype or source.dtype
        key = (name, str(device), dtype)
        if key not in self._cache:
            self._cache[key] = source.to(device=device, dtype=dtype)
        return self._cache[key]

    def to_dict(self) -> dict:
        """JSON-able description; ``make_schedule(**s.to_dict())`` rebuilds the same schedule."""
        return {"name": self.name, "T": self.T, **self.params}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return (f"Schedule(name={self.name!r}, T={self.T}{', ' if params else ''}{params}, "
                f"alpha_bar_T={self.alpha_bars[-1].item():.3g})")


# --- the schedules ------------------------------------------------------------------------
# Each returns (betas of length T for t = 1..T, the parameters used), in float64.

def _linear(T: int, beta_start: float | None = None, beta_end: float | None = None):
    """Betas rising linearly, as in DDPM. The defaults scale DDPM's 1e-4 .. 0.02 at T = 1000
    with 1000 / T, so alpha_bar_T stays near exp(-10) for any T; the end is capped at 1 so
    that short schedules stay valid (for T <= 20 the last step then resamples everything)."""
    beta_start = min(0.1 / T, 1.0) if beta_start is None else beta_start
    beta_end = min(20.0 / T, 1.0) if beta_end is None else beta_end
    betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    return betas, {"beta_start": float(beta_start), "beta_end": float(beta_end)}


def _nichol_dhariwal_alpha_bars(T: int, s: float) -> torch.Tensor:
    """alpha_bar_t = f(t) / f(0), f(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2), t = 0..T."""
    t = torch.arange(T + 1, dtype=torch.float64)
    f = torch.cos(((t / T) + s) / (1 + s) * math.pi / 2) ** 2
    return f / f[0]


def _cosine(T: int, s: float = 0.008, max_beta: float = 0.999):
    """Nichol & Dhariwal (2021): the cosine alpha_bar, with each beta clipped at max_beta
    (their choice, which keeps the last step from resampling with certainty)."""
    alpha_bars = _nichol_dhariwal_alpha_bars(T, s)
    betas = (1 - alpha_bars[1:] / alpha_bars[:-1]).clamp(max=max_beta)
    return betas, {"s": float(s), "max_beta": float(max_beta)}


def _hoogeboom_cosine(T: int, s: float = 0.008, min_alpha: float = math.sqrt(0.001)):
    """The official multinomial-diffusion code's schedule: the square root of the cosine
    alpha_bar, i.e. alpha_t = sqrt(abar_t / abar_{t-1}) of Nichol & Dhariwal, with each alpha_t
    clipped below at sqrt(0.001). It decays more slowly than the cosine schedule: at each t its
    alpha_bar is the square root of theirs (until clipping bites at the very end)."""
    nd = _nichol_dhariwal_alpha_bars(T, s)
    alphas = torch.sqrt(nd[1:] / nd[:-1]).clamp(min=min_alpha)
    return 1 - alphas, {"s": float(s), "min_alpha": float(min_alpha)}


def _jsd(T: int):
    """beta_t = 1 / (T - t + 1) (Sohl-Dickstein et al. 2015; D3PM's "JSD" schedule). Then
    alpha_bar_t = 1 - t / T exactly: the survival probability falls linearly to 0 at t = T."""
    t = torch.arange(1, T + 1, dtype=torch.float64)
    return 1.0 / (T - t + 1), {}


def _constant(T: int, beta: float | None = None):
    """The same beta at every step, so alpha_bar_t = (1 - beta)^t. The default beta makes
    alpha_bar_T = 0.001 for any T."""
    beta = -math.expm1(math.log(0.001) / T) if beta is None else beta
    return torch.full((T,), float(beta), dtype=torch.float64), {"beta": float(beta)}


_BUILDERS = {
    "linear": _linear,
    "cosine": _cosine,
    "hoogeboom-cosine": _hoogeboom_cosine,
    "jsd": _jsd,
    "constant": _constant,
}
SCHEDULE_NAMES = tuple(_BUILDERS)


def make_schedule(name: str, T: int, **params) -> Schedule:
    """Build a noise schedule: ``"linear"``, ``"cosine"``, ``"hoogeboom-cosine"``, ``"jsd"``
    or ``"constant"``, with ``T`` steps.

    Parameters (all optional): ``linear``: ``beta_start``, ``beta_end``; ``cosine``: ``s``,
    ``max_beta``; ``hoogeboom-cosine``: ``s``, ``min_alpha``; ``constant``: ``beta``.

    Raises:
        ValueError: an unknown name or parameter, ``T`` that is not an integer >= 1, or
            parameters that give some ``beta_t`` outside (0, 1].
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown schedule name {name!r}; choose one of {', '.join(SCHEDULE_NAMES)}")
    if isinstance(T, bool) or not isinstance(T, numbers.Integral):
        raise ValueError(f"T must be an integer >= 1, got {T!r}")
    T = int(T)
    if T < 1:
        raise ValueError(f"T must be an integer >= 1, got {T}")
    for key, value in params.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"schedule parameter {key}={value!r} must be a real number")
    try:
        betas, used = _BUILDERS[name](T, **params)
    except TypeError as err:  # an unexpected keyword
        raise ValueError(f"bad parameters for schedule {name!r}: {err}") from None

    bad = ~((betas > 0) & (betas <= 1))  # also catches NaN
    if bad.any():
        t = int(torch.nonzero(bad)[0]) + 1
        raise ValueError(f"schedule {name!r} with T={T} and parameters {used} gives "
                         f"beta_{t} = {betas[t - 1].item()!r}, outside (0, 1]")

    zero = torch.zeros(1, dtype=torch.float64)
    betas = torch.cat([zero, betas])
    alphas = 1 - betas
    log_alphas = torch.log(alphas)
    log_alpha_bars = torch.cumsum(log_alphas, 0)
    alpha_bars = torch.cumprod(alphas, 0)
    one_minus_alpha_bars = -torch.expm1(log_alpha_bars)
    return Schedule(
        name=name, T=T, params=used,
        betas=betas, alphas=alphas, alpha_bars=alpha_bars,
        log_alphas=log_alphas, log_alpha_bars=log_alpha_bars,
        log_betas=torch.log(betas), one_minus_alpha_bars=one_minus_alpha_bars,
        log_one_minus_alpha_bars=torch.log(one_minus_alpha_bars),
    )
