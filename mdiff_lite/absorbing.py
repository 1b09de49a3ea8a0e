"""Absorbing-state ("mask") noise: the second forward process, beside multinomial diffusion's uniform one.

Instead of resampling a token uniformly, a step replaces it by an extra state, the mask ``m``, and
a masked token stays masked (Austin et al. 2021, D3PM's "absorbing" process; MDLM, Sahoo et al.
2024, trains it with a simplified bound). With K data classes the state space has K + 1 entries;
the mask is the last one, index K. Step by step, with the same schedule ``beta_t`` as the uniform
process:

    q(x_t | x_{t-1}) = C(x_t | alpha_t x_{t-1} + (1 - alpha_t) e_m)                  (one step)
    q(x_t | x_0)     = C(x_t | alpha_bar_t x_0 + (1 - alpha_bar_t) e_m)              (the marginal)

A token that survived every step so far is still ``x_0``, else it is masked: ``alpha_bar_t`` is
the probability it is unmasked at t, exactly as it is the probability of no resample in eq. 12.
Bayes gives the posterior one step back. If ``x_t`` is a data class it was never masked, so
``x_{t-1} = x_t = x_0``. If ``x_t = m``,

    q(x_{t-1} | x_t = m, x_0) = C( a_t x_0 + (1 - a_t) e_m ),   a_t = (alpha_bar_{t-1} - alpha_bar_t) / (1 - alpha_bar_t):

the chance that the token was masked at step t itself, given that it is masked by t. The learned
reverse step is the same construction as eq. 14: ``x_0`` replaced by the network's ``x0_hat`` (a
distribution over the K data classes). Then ``p(x_{t-1} | x_t = m) = a_t x0_hat + (1 - a_t) e_m``
and an unmasked token stays as it is, so the KL of each term is

    KL(q || p) = a_t * (-log x0_hat(x_0))   at a masked token, and 0 at an unmasked one,

a weighted cross-entropy on the masked tokens only. At t = 1, ``a_1 = 1`` and the term is the
decoder's ``-log x0_hat(x_0)`` at the masked tokens: the same formula, no special case. The prior
``p(x_T)`` puts ``alpha_bar_T / K`` on each data class and the rest on the mask (the nearest
distribution to ``q(x_T | x_0)`` that does not depend on ``x_0``: all mask when ``alpha_bar_T = 0``);
its KL is ``alpha_bar_T log K`` per token.

With the "jsd" schedule, ``alpha_bar_t = 1 - t / T`` and ``a_t = 1 / t``: the bound is
``sum_t (1/t) E[cross-entropy on the masked tokens]``, the discrete form of MDLM's masked bound.

The functions taking probabilities (class axis last, K + 1 states) are the documentation; the
tests hold them against transition matrices and the bound against enumeration. Training uses the
index-space methods at the bottom, which :mod:`mdiff_lite.diffusion` calls through the process.

Taught in notebook 07.
"""

from __future__ import annotations

import math

import torch

from .diffusion import _check_probs, _check_t, _coef, _uniform
from .schedules import Schedule

__all__ = ["AbsorbingProcess"]


class AbsorbingProcess:
    """Absorbing-state noise on a :class:`~mdiff_lite.schedules.Schedule`: ``AbsorbingProcess(make_schedule("jsd", 1000))``.

    ``vlb_terms``, ``training_loss``, ``evaluate_bound``, ``sample`` and ``inpaint`` take it where
    they take a schedule (a schedule alone means the uniform process). ``x_t`` then holds K + 1
    values, the mask being ``K``: a denoiser for it reads K + 1 token ids and predicts K classes.
    """

    name = "absorbing"

    def __init__(self, schedule: Schedule):
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a Schedule from make_schedule(), got {type(schedule).__name__}")
        self.schedule = schedule
        self.T = schedule.T
        # a_t for t = 0 .. T (entry 0 unused), float64. alpha_bar_{t-1} - alpha_bar_t = alpha_bar_{t-1} beta_t:
        # no cancellation when both are near 1.
        weights = schedule.alpha_bars[:-1] * schedule.betas[1:] / schedule.one_minus_alpha_bars[1:]
        self._weights = torch.cat([torch.zeros(1, dtype=torch.float64), weights])
        self._cache = {}

    def __repr__(self) -> str:
        return f"AbsorbingProcess({self.schedule!r})"

    def to_dict(self) -> dict:
        return {"noise": self.name, "schedule": self.schedule.to_dict()}

    @staticmethod
    def num_states(num_classes: int) -> int:
        """The values ``x_t`` takes: the K classes and the mask."""
        return num_classes + 1

    @staticmethod
    def mask_id(num_classes: int) -> int:
        return num_classes

    # --- the equations, in probability space (class axis last, K + 1 states, mask last) -----

    def _check(self, x, name):
        _check_probs(x, name)
        if x.shape[-1] < 3:
            raise ValueError(f"{name} must have K + 1 >= 3 states (K classes and the mask last), "
                             f"got {x.shape[-1]}")

    def _mask_vector(self, x):
        e = torch.zeros(x.shape[-1], dtype=x.dtype, device=x.device)
        e[-1] = 1
        return e

    def q_step(self, x_prev: torch.Tensor, t) -> torch.Tensor:
        """One forward step: ``q(x_t | x_{t-1}) = C(alpha_t x_{t-1} + (1 - alpha_t) e_m)``, ``[..., K + 1]``.
        (A masked ``x_{t-1}`` gives ``alpha_t e_m + (1 - alpha_t) e_m = e_m``: the mask absorbs.)"""
        self._check(x_prev, "x_prev")
        t = _check_t(t, 1, self.T, x_prev.device)
        return (_coef(self.schedule, "alphas", t, x_prev.dtype) * x_prev
                + _coef(self.schedule, "betas", t, x_prev.dtype) * self._mask_vector(x_prev))

    def q_marginal(self, x0: torch.Tensor, t) -> torch.Tensor:
        """The marginal ``q(x_t | x_0) = C(alpha_bar_t x_0 + (1 - alpha_bar_t) e_m)``, ``[..., K + 1]``; t in 0 .. T."""
        self._check(x0, "x0")
        t = _check_t(t, 0, self.T, x0.device)
        return (_coef(self.schedule, "alpha_bars", t, x0.dtype) * x0
                + _coef(self.schedule, "one_minus_alpha_bars", t, x0.dtype) * self._mask_vector(x0))

    def q_posterior(self, x_t: torch.Tensor, x0: torch.Tensor, t) -> torch.Tensor:
        """``q(x_{t-1} | x_t, x_0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x_0)``, ``[..., K + 1]``, t in 1 .. T.

        The first factor, as a function of ``x_{t-1} = j``: ``alpha_t x_t[j] + (1 - alpha_t) x_t[m]``
        for a data class j (keep it, or mask it now), and ``x_t[m]`` for ``j = m`` (a mask stays).
        Unlike the uniform kernel this one is not symmetric, so it is not eq. 11 with x_t in the place of
        x_{t-1}. The second factor is the marginal at ``t - 1``. With ``x0_hat`` (zero on the mask) in
        the place of ``x0`` this is the learned reverse step, as eq. 14 is for the uniform process."""
        self._check(x_t, "x_t")
        self._check(x0, "x0")
        if x_t.shape[-1] != x0.shape[-1]:
            raise ValueError(f"x_t and x0 must have the same number of states, got {x_t.shape[-1]} and {x0.shape[-1]}")
        t = _check_t(t, 1, self.T, x_t.device)
        dtype = torch.promote_types(x_t.dtype, x0.dtype)
        x_t, x0 = x_t.to(dtype), x0.to(dtype)
        masked = x_t[..., -1:]
        likelihood = _coef(self.schedule, "alphas", t, dtype) * x_t + _coef(self.schedule, "betas", t, dtype) * masked
        likelihood = torch.cat([likelihood[..., :-1], masked], -1)
        prior = (_coef(self.schedule, "alpha_bars", t - 1, dtype) * x0
                 + _coef(self.schedule, "one_minus_alpha_bars", t - 1, dtype) * self._mask_vector(x0))
        theta = likelihood * prior
        return theta / theta.sum(-1, keepdim=True)

    def unmask_weight(self, t) -> torch.Tensor:
        """``a_t = (alpha_bar_{t-1} - alpha_bar_t) / (1 - alpha_bar_t)``, float64: the posterior's mass on
        ``x_0`` at a masked token, and the weight of its cross-entropy in the bound (``1 / t`` for "jsd")."""
        t = _check_t(t, 1, self.T, "cpu")
        return self._unmask_weight(t, "cpu", torch.float64)

    # --- index space: what the bound, the loss and the sampler call --------------------------

    def _unmask_weight(self, t: torch.Tensor, device, dtype) -> torch.Tensor:
        """a_t, indexed on the device ``t`` is on (the buffer copied there once)."""
        key = (str(torch.device(device)), dtype)
        if key not in self._cache:
            self._cache[key] = self._weights.to(device=device, dtype=dtype)
        return self._cache[key][t.to(device)]

    def _sample(self, x0: torch.Tensor, t: torch.Tensor, K: int, generator) -> torch.Tensor:
        shape = torch.broadcast_shapes(t.shape, x0.shape)
        u = _uniform(shape, x0.device, generator)
        masked = u < self.schedule.buffer("one_minus_alpha_bars", x0.device, u.dtype)[t]
        return torch.where(masked, torch.full_like(x0, K).broadcast_to(shape), x0.broadcast_to(shape))

    def _terms(self, log_x0_hat: torch.Tensor, x0, x_t, t: torch.Tensor, K: int) -> torch.Tensor:
        """L_t per example (nats summed over its dimensions): ``a_t`` times the cross-entropy of the
        masked tokens. ``log_x0_hat`` is ``[B, K, *dims]``, ``t`` is ``[B]``."""
        B = x0.shape[0]
        nll = -log_x0_hat.gather(1, x0.unsqueeze(1)).squeeze(1)
        masked_nll = torch.where(x_t == K, nll, torch.zeros((), dtype=nll.dtype, device=nll.device))
        return self._unmask_weight(t, x0.device, nll.dtype) * masked_nll.reshape(B, -1).sum(1)

    def _prior_kl_per_dim(self, K: int) -> float:
        ab_T = self.schedule.alpha_bars[-1].item()
        return ab_T * math.log(K)

    def _log_evidence(self, x_t: torch.Tensor, t_b: torch.Tensor, K: int, dtype) -> torch.Tensor:
        """``log q(x_t | x_0 = k)`` for every class k, ``[B, K, *dims]``: ``log(1 - alpha_bar_t)`` for all k
        at a masked token; ``log alpha_bar_t`` at ``k = x_t`` and ``-inf`` elsewhere at an unmasked one."""
        log_keep = _coef(self.schedule, "log_alpha_bars", t_b, dtype, axis=1)
        log_masked = _coef(self.schedule, "log_one_minus_alpha_bars", t_b, dtype, axis=1)
        classes = torch.arange(K, device=x_t.device).view((1, K) + (1,) * (x_t.ndim - 1))
        x = x_t.unsqueeze(1)
        minus_inf = torch.full((), -math.inf, dtype=dtype, device=x_t.device)
        return torch.where(x == K, log_masked, torch.where(x == classes, log_keep, minus_inf))

    def _skip_probs(self, x_t: torch.Tensor, x0_hat: torch.Tensor, t: int, s: int, K: int) -> torch.Tensor:
        """``p(x_s | x_t)`` for ``s < t``, ``[..., K + 1]``: a masked token is unmasked to class k with
        probability ``(alpha_bar_s - alpha_bar_t) / (1 - alpha_bar_t) * x0_hat(k)``, else stays masked;
        an unmasked one stays. (Composing the steps s+1..t gives the same form as one step.)"""
        ab = self.schedule.alpha_bars
        unmask = ((ab[s] - ab[t]) / (1 - ab[t])).item()
        dtype = x0_hat.dtype
        masked = torch.cat([unmask * x0_hat, torch.full_like(x0_hat[..., :1], 1 - unmask)], -1)
        kept = torch.nn.functional.one_hot(x_t.clamp(max=K), K + 1).to(dtype)
        return torch.where((x_t == K).unsqueeze(-1), masked, kept)

    def _prior_sample(self, shape, K: int, generator, device) -> torch.Tensor:
        """``x_T ~ p(x_T)``: the mask, except with probability ``alpha_bar_T`` a uniform class."""
        u = _uniform(shape, device, generator)
        classes = torch.randint(0, K, shape, generator=generator, device=device)
        return torch.where(u < self.schedule.alpha_bars[-1].item(), classes, torch.full_like(classes, K))

