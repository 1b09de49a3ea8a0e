"""The equations of multinomial diffusion: eqs. 3 and 11-17 of Hoogeboom et al. (2021).

Conventions, shared by every function here:

- The class axis is last: a categorical variable over K classes is a vector ``x[..., K]``
  (one-hot, or a probability vector), with any leading shape (batch, height, width, ...).
- ``t`` is the paper's time index: an int, or an integer tensor whose shape broadcasts against
  the leading shape. Schedules are indexed by ``t`` itself (see :mod:`mdiff_lite.schedules`).
- Log-likelihoods and KL divergences are in nats; :func:`bits_per_dim` converts.

The functions in the first part (``q_step``, ``q_marginal``, ``q_posterior``, ``categorical_kl``,
``log_categorical``) compute in probability space, exactly as the equations read: they are the
documentation, and what the notebooks check by hand. Training and evaluation
(``vlb_terms``, ``training_loss``) use the log-space versions in the second part, which stay
accurate in float32 for the smallest betas of long schedules (5e-6 for the first step of
``hoogeboom-cosine`` at T = 4000; the tests go down to 1e-7); the tests check that both agree. Class indices (``LongTensor`` without a class axis) are the currency of the second part:
``x_0`` and ``x_t`` are always one-hot there, and a one-hot vector in log space is two numbers.

Taught in notebooks 01 (eqs. 11-12), 02 (eqs. 13-14) and 03 (eqs. 3, 15-17).
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
import torch.nn.functional as F

from .schedules import Schedule

__all__ = [
    "q_step", "q_marginal", "q_posterior", "q_posterior_skip", "categorical_kl", "log_categorical",
    "sample_categorical", "sample_index", "one_hot", "bits_per_dim",
    "q_sample", "log_q_posterior", "prior_kl", "vlb_terms", "training_loss", "x0_nll",
    "UniformTimeSampler", "StratifiedTimeSampler", "ImportanceTimeSampler", "UniformProcess", "as_process",
]

# ---------------------------------------------------------------------------------------------
# Checks at the boundary. Inner functions trust their inputs.
# ---------------------------------------------------------------------------------------------


def _check_schedule(schedule) -> None:
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a Schedule from make_schedule(), got {type(schedule).__name__}")


def _check_probs(x, name: str) -> None:
    """A floating tensor ``[..., K]``, K >= 2, whose last axis holds probability vectors."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor of probabilities (class axis last), "
                        f"got dtype {x.dtype}; for class indices use one_hot(x, K)")
    if x.ndim < 1 or x.shape[-1] < 2:
        raise ValueError(f"{name} must have a class axis of size K >= 2 last, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        return
    tol = 1e-9 if x.dtype == torch.float64 else 1e-3
    if not torch.isfinite(x).all() or (x < -tol).any() or (x > 1 + tol).any():
        raise ValueError(f"{name} must hold probabilities in [0, 1]; found values in "
                         f"[{x.min().item():.4g}, {x.max().item():.4g}]")
    sums = x.sum(-1)
    worst = (sums - 1).abs().max().item()
    if worst > tol * x.shape[-1]:
        raise ValueError(f"{name} must sum to 1 over its last (class) axis; a sum is off by {worst:.3g}")


def _check_t(t, lo: int, hi: int, device, name: str = "t") -> torch.Tensor:
    """``t`` as a LongTensor on ``device``, every entry in ``lo .. hi``."""
    if isinstance(t, torch.Tensor):
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"{name} must be an int or an integer tensor, got a tensor of dtype {t.dtype}")
        t = t.to(device=device, dtype=torch.long)
    elif isinstance(t, np.ndarray) and np.issubdtype(t.dtype, np.integer):
        t = torch.as_tensor(t, dtype=torch.long, device=device)
    elif isinstance(t, numbers.Integral) and not isinstance(t, bool):
        t = torch.tensor(int(t), dtype=torch.long, device=device)
    else:
        raise TypeError(f"{name} must be an int or an integer tensor, got {t!r}")
    if t.numel() and (t.min() < lo or t.max() > hi):
        bad = t[(t < lo) | (t > hi)].flatten()[0].item()
        raise ValueError(f"{name} must lie in {lo}..{hi}, got {name} = {bad}")
    return t


def _broadcast_t(t: torch.Tensor, x: torch.Tensor, name: str) -> None:
    try:
        torch.broadcast_shapes(t.shape, x.shape[:-1])
    except RuntimeError:
        raise ValueError(f"t of shape {tuple(t.shape)} does not broadcast against the leading shape "
                         f"{tuple(x.shape[:-1])} of {name}") from None


def _coef(schedule: Schedule, name: str, t: torch.Tensor, dtype, axis: int = -1) -> torch.Tensor:
    """``schedule.<name>[t]`` in ``dtype``, with a new class axis at ``axis`` to broadcast over
    classes (last in the public functions, second in the log-space internals)."""
    return schedule.buffer(name, t.device, dtype)[t].unsqueeze(axis)


# ---------------------------------------------------------------------------------------------
# The equations in probability space: read these beside the paper.
# ---------------------------------------------------------------------------------------------


def q_step(x_prev: torch.Tensor, t, schedule: Schedule) -> torch.Tensor:
    """Eq. 11, one forward step: the probabilities of ``x_t`` given ``x_{t-1}``,

        q(x_t | x_{t-1}) = C(x_t | alpha_t x_{t-1} + (1 - alpha_t) / K),

    i.e. keep the class with probability ``alpha_t``, else resample it uniformly.

    Args:
        x_prev: ``[..., K]``, one-hot or probabilities.
        t: 1 .. T, an int or an integer tensor broadcasting against ``x_prev.shape[:-1]``.
    Returns:
        ``[..., K]`` probabilities, in the dtype of ``x_prev``.
    """
    _check_schedule(schedule)
    _check_probs(x_prev, "x_prev")
    t = _check_t(t, 1, schedule.T, x_prev.device)
    _broadcast_t(t, x_prev, "x_prev")
    K = x_prev.shape[-1]
    # (1 - alpha_t) is read from the float64 betas, not recomputed in float32, where 1 - alpha_t
    # keeps only a digit or two when beta_t is 1e-6 or less.
    return _coef(schedule, "alphas", t, x_prev.dtype) * x_prev + _coef(schedule, "betas", t, x_prev.dtype) / K


def q_marginal(x0: torch.Tensor, t, schedule: Schedule) -> torch.Tensor:
    """Eq. 12, the marginal after ``t`` steps:

        q(x_t | x_0) = C(x_t | alpha_bar_t x_0 + (1 - alpha_bar_t) / K).

    ``alpha_bar_t`` is the probability that the class was never resampled in ``t`` steps
    (a resampled class is uniform, whether it was resampled once or many times).

    Args:
        x0: ``[..., K]``, one-hot or probabilities.
        t: 0 .. T (``t = 0`` returns ``x0``), an int or an integer tensor.
    """
    _check_schedule(schedule)
    _check_probs(x0, "x0")
    t = _check_t(t, 0, schedule.T, x0.device)
    _broadcast_t(t, x0, "x0")
    K = x0.shape[-1]
    return (_coef(schedule, "alpha_bars", t, x0.dtype) * x0
            + _coef(schedule, "one_minus_alpha_bars", t, x0.dtype) / K)


def q_posterior(x_t: torch.Tensor, x0: torch.Tensor, t, schedule: Schedule) -> torch.Tensor:
    """Eq. 13, the posterior of one step back: ``q(x_{t-1} | x_t, x_0) = C(theta_post)`` with

        theta~ = [alpha_t x_t + (1 - alpha_t) / K]  *  [alpha_bar_{t-1} x_0 + (1 - alpha_bar_{t-1}) / K]
        theta_post = theta~ / sum_k theta~_k.

    By Bayes and the Markov property, ``q(x_{t-1} | x_t, x_0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x_0)``.
    The second factor is eq. 12 at ``t - 1``. The first is eq. 11 read as a function of
    ``x_{t-1}``: entry ``j`` is ``alpha_t [j == x_t] + (1 - alpha_t) / K``, which is eq. 11's
    formula with ``x_t`` in the place of ``x_{t-1}``, because the uniform-resampling kernel is
    symmetric (the chance of moving from class i to j equals that of j to i). The normaliser is
    ``q(x_t | x_0)``, constant in ``x_{t-1}``.

    With a predicted probability vector ``x0_hat`` in place of ``x0`` this is the learned
    reverse step of eq. 14, ``p(x_{t-1} | x_t) = C(theta_post(x_t, x0_hat))``: both factors are
    then non-negative and the first is positive, so theta~ always normalises to valid
    probabilities. At ``t = 1`` it gives ``x0`` itself (for a one-hot ``x0``), and with
    ``x0_hat`` it is the decoder ``p(x_0 | x_1) ∝ x0_hat * (alpha_1 x_1 + (1 - alpha_1) / K)``
    that this package uses (and the official code): eq. 16 with the decoder's probabilities, the
    pixel's own ``x_1`` multiplied in as at every other t (:mod:`mdiff_lite.models` says why).

    Args:
        x_t, x0: ``[..., K]``, broadcasting against each other.
        t: 1 .. T (eq. 13 proper is t >= 2).
    """
    _check_schedule(schedule)
    _check_probs(x_t, "x_t")
    _check_probs(x0, "x0")
    if x_t.shape[-1] != x0.shape[-1]:
        raise ValueError(f"x_t and x0 must have the same number of classes, got {x_t.shape[-1]} and {x0.shape[-1]}")
    try:
        lead = torch.broadcast_shapes(x_t.shape, x0.shape)
    except RuntimeError:
        raise ValueError(f"x_t of shape {tuple(x_t.shape)} and x0 of shape {tuple(x0.shape)} "
                         "do not broadcast") from None
    t = _check_t(t, 1, schedule.T, x_t.device)
    _broadcast_t(t, torch.empty(lead, device="meta"), "x_t and x0")
    K = x_t.shape[-1]
    dtype = torch.promote_types(x_t.dtype, x0.dtype)
    likelihood = _coef(schedule, "alphas", t, dtype) * x_t + _coef(schedule, "betas", t, dtype) / K
    prior = (_coef(schedule, "alpha_bars", t - 1, dtype) * x0
             + _coef(schedule, "one_minus_alpha_bars", t - 1, dtype) / K)
    theta = likelihood * prior
    return theta / theta.sum(-1, keepdim=True)


def q_posterior_skip(x_t: torch.Tensor, x0: torch.Tensor, t, s, schedule: Schedule) -> torch.Tensor:
    """``q(x_s | x_t, x_0)`` for any ``0 <= s < t``: the posterior that lets a sampler jump back
    several steps at once.

    The steps ``s + 1 .. t`` compose into one step of the same kind: a class survives all of
    them with probability ``alpha_bar_t / alpha_bar_s``, else it was resampled uniformly, so
    ``q(x_t | x_s) = C(x_t | (alpha_bar_t / alpha_bar_s) x_s + (1 - alpha_bar_t / alpha_bar_s) / K)``.
    Bayes with eq. 12 at ``s`` then gives, as for eq. 13,

        theta~ = [(abar_t / abar_s) x_t + (1 - abar_t / abar_s) / K] * [abar_s x_0 + (1 - abar_s) / K],

    normalised. For ``s = t - 1``, ``abar_t / abar_{t-1} = alpha_t`` and this is eq. 13.
    ``t`` and ``s`` are ints or integer tensors (``s < t`` everywhere); a vanished
    ``alpha_bar_s`` (only possible when some beta is 1) counts as "everything resampled".
    """
    _check_schedule(schedule)
    _check_probs(x_t, "x_t")
    _check_probs(x0, "x0")
    if x_t.shape[-1] != x0.shape[-1]:
        raise ValueError(f"x_t and x0 must have the same number of classes, got {x_t.shape[-1]} and {x0.shape[-1]}")
    t = _check_t(t, 1, schedule.T, x_t.device)
    s = _check_t(s, 0, schedule.T - 1, x_t.device, "s")
    if (s >= t).any():
        raise ValueError("s must be smaller than t")
    return _q_posterior_skip(x_t, x0, t, s, schedule)


def _q_posterior_skip(x_t, x0, t: torch.Tensor, s: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """:func:`q_posterior_skip` without the checks, for a sampler's inner loop."""
    K = x_t.shape[-1]
    dtype = torch.promote_types(x_t.dtype, x0.dtype)
    # abar_t / abar_s and 1 - abar_t / abar_s from the float64 logs, on the CPU (MPS has no
    # float64), then cast: 1 - ratio in float32 would lose most digits when the ratio is near 1.
    log_abar = schedule.log_alpha_bars
    log_ratio = log_abar[t.cpu()] - log_abar[s.cpu()]
    log_ratio = torch.where(torch.isfinite(log_abar[s.cpu()]), log_ratio, torch.full_like(log_ratio, -math.inf))
    keep = log_ratio.exp().to(x_t.device, dtype).unsqueeze(-1)
    resampled = (-torch.expm1(log_ratio)).to(x_t.device, dtype).unsqueeze(-1)
    likelihood = keep * x_t + resampled / K
    prior = _coef(schedule, "alpha_bars", s, dtype) * x0 + _coef(schedule, "one_minus_alpha_bars", s, dtype) / K
    theta = likelihood * prior
    return theta / theta.sum(-1, keepdim=True)


def categorical_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Eq. 15's divergence: ``KL(C(p) || C(q)) = sum_k p_k log(p_k / q_k)`` in nats, summed over
    the class axis (so the result has the leading shape). Terms with ``p_k = 0`` count 0;
    ``p_k > 0 = q_k`` gives ``inf``. In eq. 15, ``p = theta_post(x_t, x_0)`` and
    ``q = theta_post(x_t, x0_hat)``."""
    _check_probs(p, "p")
    _check_probs(q, "q")
    if p.shape[-1] != q.shape[-1]:
        raise ValueError(f"p and q must have the same number of classes, got {p.shape[-1]} and {q.shape[-1]}")
    return (torch.xlogy(p, p) - torch.xlogy(p, q)).sum(-1)


def log_categorical(x: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Eq. 16: ``log C(x | probs) = sum_k x_k log probs_k`` in nats, for one-hot ``x``
    (for a probability vector ``x`` it is the cross-entropy's negative). In eq. 16, ``probs`` are
    the decoder's probabilities and this is ``log p(x_0 | x_1)``."""
    _check_probs(x, "x")
    _check_probs(probs, "probs")
    if x.shape[-1] != probs.shape[-1]:
        raise ValueError(f"x and probs must have the same number of classes, got {x.shape[-1]} and {probs.shape[-1]}")
    return torch.xlogy(x, probs).sum(-1)


def sample_categorical(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A one-hot sample from ``C(probs)`` for every leading index, in the dtype of ``probs``.

    Inverse-CDF sampling: one uniform number per variable, the first class whose cumulative
    probability exceeds it. ``generator`` (on the device of ``probs``) makes it reproducible.
    """
    _check_probs(probs, "probs")
    return F.one_hot(sample_index(probs, generator), probs.shape[-1]).to(probs.dtype)


def sample_index(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Like :func:`sample_categorical`, but the class indices (LongTensor, the leading shape);
    no checks, for samplers' inner loops."""
    u = torch.rand(probs.shape[:-1] + (1,), generator=generator, device=probs.device, dtype=probs.dtype)
    cdf = probs.cumsum(-1)
    return (cdf <= u * cdf[..., -1:]).sum(-1).clamp(max=probs.shape[-1] - 1)


def one_hot(x: torch.Tensor, num_classes: int, dtype=torch.float32) -> torch.Tensor:
    """Class indices ``[...]`` to one-hot vectors ``[..., K]`` (float, for the functions above)."""
    if not isinstance(x, torch.Tensor) or x.is_floating_point() or x.dtype == torch.bool:
        raise TypeError(f"x must be an integer tensor of class indices, got {getattr(x, 'dtype', type(x))}")
    _check_num_classes(num_classes)
    if x.numel() and (x.min() < 0 or x.max() >= num_classes):
        raise ValueError(f"class indices must lie in 0..{num_classes - 1}, found {x.min().item()}..{x.max().item()}")
    return F.one_hot(x.long(), num_classes).to(dtype)


def bits_per_dim(nats, num_dims: int):
    """Negative log-likelihood (or its bound) in nats -> bits per categorical dimension:
    ``nats / (num_dims * ln 2)``. ``num_dims`` counts pixels or characters, not one-hot entries."""
    if isinstance(num_dims, bool) or not isinstance(num_dims, numbers.Integral) or num_dims < 1:
        raise ValueError(f"num_dims must be a positive integer, got {num_dims!r}")
    return nats / (num_dims * math.log(2))


def _check_num_classes(num_classes) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    return int(num_classes)


# ---------------------------------------------------------------------------------------------
# Log space, on class indices: what training and evaluation use.
# ---------------------------------------------------------------------------------------------


def _float64_where_possible(device) -> torch.dtype:
    """float64, except on MPS, which has none (float32 there)."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def _uniform(shape, device, generator) -> torch.Tensor:
    # float64 where the device has it: 1 - alpha_bar_1 can be 1e-7, finer than float32's grid
    # of uniforms (2^-24), and comparing against it in float32 would bias the first steps.
    return torch.rand(shape, generator=generator, device=device, dtype=_float64_where_possible(device))


def q_sample(x0: torch.Tensor, t, schedule: Schedule, num_classes: int,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw ``x_t ~ q(x_t | x_0)`` (eq. 12) as class indices.

    With probability ``1 - alpha_bar_t`` a pixel is resampled uniformly (possibly to its own
    class), else it keeps ``x_0``: exactly the mixture of eq. 12, with no K-way sampling.
    (``schedule`` may also be a process: an :class:`~mdiff_lite.absorbing.AbsorbingProcess`
    masks instead, writing the mask id K.)

    Args:
        x0: integer tensor of class indices, any shape.
        t: 0 .. T, an int or an integer tensor broadcasting against ``x0.shape``.
    """
    process = as_process(schedule)
    K = _check_num_classes(num_classes)
    x0 = _check_indices(x0, K, "x0")
    t = _check_t(t, 0, process.T, x0.device)
    return process._sample(x0, t, K, generator)


def _q_sample(x0: torch.Tensor, t: torch.Tensor, schedule: Schedule, K: int, generator) -> torch.Tensor:
    """:func:`q_sample` on checked inputs: no look at the values, so no wait for the device."""
    shape = torch.broadcast_shapes(t.shape, x0.shape)
    u = _uniform(shape, x0.device, generator)
    resample = u < schedule.buffer("one_minus_alpha_bars", x0.device, u.dtype)[t]
    noise = torch.randint(0, K, shape, generator=generator, device=x0.device)
    return torch.where(resample, noise, x0)


def _check_indices(x, K: int, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor of class indices, got "
                        f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.numel() and (x.min() < 0 or x.max() >= K):
        raise ValueError(f"{name} holds class indices outside 0..{K - 1}: "
                         f"found {x.min().item()}..{x.max().item()}")
    return x.long()


# Inside the log-space functions the class axis is the second one, ``[B, K, *dims]``: a
# convolutional network produces that layout, and on the CPU a log-softmax over a contiguous
# axis of size K = 8 runs much faster there than over the last axis (benchmarks/loss_speed.py
# halved with this layout). Times ``t`` come
# shaped like the index tensors (one entry per example, broadcasting over the dimensions).


def _log_onehot_mix(index: torch.Tensor, log_keep, log_noise, K: int) -> torch.Tensor:
    """``log(keep * onehot(index) + noise / K)``, ``[B, K, *dims]``, from the logs of keep and
    noise (shaped ``[B, 1, ...]``): two values, placed by the index."""
    log_other = log_noise - math.log(K)
    log_same = torch.logaddexp(log_keep, log_other)
    classes = torch.arange(K, device=index.device).view((1, K) + (1,) * (index.ndim - 1))
    return torch.where(index.unsqueeze(1) == classes, log_same, log_other)


def _log_q_t_given_prev(x_t: torch.Tensor, t: torch.Tensor, schedule, K: int, dtype) -> torch.Tensor:
    """log q(x_t | x_{t-1} = j) for every class j (eq. 11 read as a function of x_{t-1})."""
    return _log_onehot_mix(x_t, _coef(schedule, "log_alphas", t, dtype, axis=1),
                           _coef(schedule, "log_betas", t, dtype, axis=1), K)


def _log_marginal(x: torch.Tensor, s: torch.Tensor, schedule, K: int, dtype) -> torch.Tensor:
    """Eq. 12 at time s in log space, ``log(alpha_bar_s x + (1 - alpha_bar_s) / K)``, ``[B, K, *dims]``.
    ``x`` as class indices: then, the kernel being symmetric, it is both log q(x_s = j | x_0 = x)
    for every class j and log q(x_s = x | x_0 = k) for every class k. Or ``x`` as the
    log-probabilities ``[B, K, *dims]`` of a prediction of x_0."""
    log_keep = _coef(schedule, "log_alpha_bars", s, dtype, axis=1)
    log_noise = _coef(schedule, "log_one_minus_alpha_bars", s, dtype, axis=1)
    if x.is_floating_point():
        return torch.logaddexp(x + log_keep, log_noise - math.log(K))
    return _log_onehot_mix(x, log_keep, log_noise, K)


def _log_posterior(x_t, x0, t, schedule, K: int, dtype, log_likelihood=None) -> torch.Tensor:
    """log theta_post(x_t, x0) of eq. 13, ``[B, K, *dims]``; ``t`` broadcasts against ``x_t``.
    ``log_likelihood``: the first factor, if already computed for this ``x_t`` and ``t``."""
    if log_likelihood is None:
        log_likelihood = _log_q_t_given_prev(x_t, t, schedule, K, dtype)
    log_theta = log_likelihood + _log_marginal(x0, t - 1, schedule, K, dtype)  # log q(x_{t-1} | x_0)
    return log_theta - torch.logsumexp(log_theta, 1, keepdim=True)


def log_q_posterior(x_t: torch.Tensor, x0: torch.Tensor, t, schedule: Schedule,
                    num_classes: int | None = None, dtype=torch.float32) -> torch.Tensor:
    """Eq. 13 in log space: ``log theta_post(x_t, x0)``, ``[..., K]`` (class axis last).

    ``x_t`` holds class indices. ``x0`` is either class indices (an integer tensor: the true
    ``x_0``; then give ``num_classes`` and the working ``dtype``) or the log-probabilities of a
    prediction (a floating tensor ``[..., K]``, e.g. ``log_softmax(logits)``: eq. 14; its dtype
    is used). ``t``: times in 1 .. T broadcasting against ``x_t.shape``. For ``t >= 2`` every
    entry is finite: both factors of theta~ are positive.

    What training uses (through an unchecked class-second twin); the tests hold it against
    :func:`q_posterior`.
    """
    _check_schedule(schedule)
    if x0.is_floating_point():
        num_classes = x0.shape[-1]
    K = _check_num_classes(num_classes)
    x_t = _check_indices(x_t, K, "x_t")
    if not x0.is_floating_point():
        x0 = _check_indices(x0, K, "x0")
    t = _check_t(t, 1, schedule.T, x_t.device)
    # The class-second twin wants a batch axis first: flatten whatever leading shape there is,
    # after broadcasting x_t, x0 and t against each other (as q_posterior does).
    t = torch.as_tensor(t, device=x_t.device)
    x0_lead = x0.shape[:-1] if x0.is_floating_point() else x0.shape
    try:
        lead = torch.broadcast_shapes(x_t.shape, x0_lead, t.shape)
    except RuntimeError as error:
        raise ValueError(f"x_t {tuple(x_t.shape)}, x0 {tuple(x0.shape)} and t {tuple(t.shape)} do not "
                         f"broadcast together: {error}") from None
    x_t = x_t.broadcast_to(lead)
    t = t.broadcast_to(lead).reshape(-1, 1)
    x_t = x_t.reshape(-1, 1)
    if x0.is_floating_point():
        K, dtype = x0.shape[-1], x0.dtype
        x0 = x0.broadcast_to(lead + (K,)).reshape(-1, K, 1)
    else:
        K = num_classes
        x0 = x0.broadcast_to(lead).reshape(-1, 1)
    return _log_posterior(x_t, x0, t, schedule, K, dtype).reshape(lead + (K,))


def _kl_from_logs(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """sum_k p_k (log p_k - log q_k) over the class axis (1), for finite log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(1)


def prior_kl(x0: torch.Tensor, schedule: Schedule, num_classes: int) -> torch.Tensor:
    """``KL(q(x_T | x_0) || p(x_T))`` with the uniform prior ``p(x_T)``, in nats, summed over all
    but the first (batch) axis of ``x0``: the last term of eq. 3. It does not depend on the
    model and is near 0 when ``alpha_bar_T`` is near 0. Computed in float64. (For a process
    other than the uniform one, its own prior: see :mod:`mdiff_lite.absorbing`.)"""
    process = as_process(schedule)
    K = _check_num_classes(num_classes)
    x0 = _check_indices(x0, K, "x0")
    # Every class is noised alike, so the KL is the same for every pixel: q(x_T | x_0) puts
    # a = alpha_bar_T + (1 - alpha_bar_T) / K on x_0 and b = (1 - alpha_bar_T) / K on the K - 1
    # others, and KL = a log(a K) + (K - 1) b log(b K). Computed once, in float64, on the CPU.
    dims = math.prod(x0.shape[1:])
    return torch.full((x0.shape[0],), process._prior_kl_per_dim(K) * dims, device=x0.device,
                      dtype=_float64_where_possible(x0.device))


def _prior_kl_per_pixel(schedule: Schedule, K: int) -> float:
    """The prior KL of one pixel (see :func:`prior_kl`), a Python float, computed once per K."""
    key = ("prior_kl_per_pixel", K)
    if key not in schedule._cache:
        log_b = schedule.log_one_minus_alpha_bars[-1] - math.log(K)
        log_a = torch.logaddexp(schedule.log_alpha_bars[-1], log_b)
        schedule._cache[key] = (torch.xlogy(log_a.exp(), log_a.exp() * K)
                                + (K - 1) * torch.xlogy(log_b.exp(), log_b.exp() * K)).item()
    return schedule._cache[key]


# ---------------------------------------------------------------------------------------------
# The noise as an object: the bound, the loss and the sampler take a process.
# ---------------------------------------------------------------------------------------------


class UniformProcess:
    """Multinomial diffusion's noise (eqs. 11-13 above) as the object that the bound, the loss and
    the sampler take: ``UniformProcess(make_schedule("hoogeboom-cosine", 1000))``. A plain
    :class:`~mdiff_lite.schedules.Schedule` given to them means this process, so every call
    written before there was a second process reads as it did. Its sibling is
    :class:`mdiff_lite.absorbing.AbsorbingProcess`; both offer the same methods, which the
    functions here call (sample x_t, the terms L_t, the prior's KL, the evidence of x_t about
    x_0, the sampler's jump and the prior draw)."""

    name = "uniform"

    def __init__(self, schedule: Schedule):
        _check_schedule(schedule)
        self.schedule = schedule
        self.T = schedule.T

    def __repr__(self) -> str:
        return f"UniformProcess({self.schedule!r})"

    def to_dict(self) -> dict:
        return {"noise": self.name, "schedule": self.schedule.to_dict()}

    @staticmethod
    def num_states(num_classes: int) -> int:
        """The values ``x_t`` takes: the K classes themselves."""
        return num_classes

    def _sample(self, x0, t, K: int, generator):
        return _q_sample(x0, t, self.schedule, K, generator)

    def _terms(self, log_x0_hat, x0, x_t, t, K: int):
        return _per_example_terms(log_x0_hat, x0, x_t, t, self.schedule, K)

    def _prior_kl_per_dim(self, K: int) -> float:
        return _prior_kl_per_pixel(self.schedule, K)

    def _log_evidence(self, x_t, t_b, K: int, dtype):
        return _log_marginal(x_t, t_b, self.schedule, K, dtype)

    def _skip_probs(self, x_t, x0_hat, t: int, s: int, K: int):
        return _q_posterior_skip(F.one_hot(x_t, K).to(x0_hat.dtype), x0_hat, torch.tensor(t, device=x_t.device),
                                 torch.tensor(s, device=x_t.device), self.schedule)

    def _prior_sample(self, shape, K: int, generator, device):
        return torch.randint(0, K, shape, generator=generator, device=device)


def as_process(schedule_or_process):
    """The process a function was given: a :class:`Schedule` means :class:`UniformProcess` on it;
    a process (uniform or :class:`~mdiff_lite.absorbing.AbsorbingProcess`) is returned as it is."""
    if isinstance(schedule_or_process, Schedule):
        return UniformProcess(schedule_or_process)
    if isinstance(getattr(schedule_or_process, "schedule", None), Schedule) and hasattr(schedule_or_process, "_terms"):
        return schedule_or_process
    raise TypeError("expected a Schedule from make_schedule() or a noise process (UniformProcess, "
                    f"AbsorbingProcess), got {type(schedule_or_process).__name__}")


def _call_denoiser(denoiser, x_t: torch.Tensor, t: torch.Tensor, K: int) -> torch.Tensor:
    """log x0_hat = log_softmax(denoiser(x_t, t)), checked, class axis second, float32 at least."""
    logits = denoiser(x_t, t)
    if not isinstance(logits, torch.Tensor) or logits.shape != x_t.shape + (K,):
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"the denoiser must return logits of shape {tuple(x_t.shape) + (K,)} "
                         f"([B, *dims, K]), got {got}")
    if logits.dtype in (torch.float16, torch.bfloat16):  # mixed precision: the loss in float32
        logits = logits.float()
    # For a network whose output is a permuted channels-first tensor, this movedim is free.
    return torch.log_softmax(logits.movedim(-1, 1), 1)


def _resolve_num_classes(denoiser, num_classes) -> int:
    if num_classes is None:
        num_classes = getattr(denoiser, "num_classes", None)
        if num_classes is None:
            raise ValueError("num_classes is needed to sample x_t: pass num_classes=K or give the "
                             "denoiser a num_classes attribute")
    return _check_num_classes(num_classes)


def _check_x0_batch(x0, K: int) -> torch.Tensor:
    x0 = _check_indices(x0, K, "x0")
    if x0.ndim < 1 or x0.shape[0] < 1:
        raise ValueError(f"x0 must be [B, *dims] with B >= 1, got shape {tuple(x0.shape)}")
    return x0


def _per_example_terms(log_x0_hat, x0, x_t, t, schedule, K) -> torch.Tensor:
    """L_t for each example (nats, summed over its dimensions): the decoder term
    -log p(x_0 | x_1) where t = 1, the eq. 15 KL where t >= 2. ``t`` has shape [B];
    ``log_x0_hat`` is ``[B, K, *dims]``.

    The reverse step is eq. 14 at every t, ``p(x_{t-1} | x_t) = C(theta_post(x_t, x0_hat))``;
    at t = 1 it is the decoder, ``∝ x0_hat * q(x_1 | x_0)``. Since ``q(x_0 | x_1, x_0)`` is x_0
    itself, the KL at t = 1 is the decoder's negative log-likelihood of x_0."""
    B = x0.shape[0]
    t_b = t.view((B,) + (1,) * (x0.ndim - 1))  # broadcasts over the dimensions
    dtype = log_x0_hat.dtype
    log_likelihood = _log_q_t_given_prev(x_t, t_b, schedule, K, dtype)  # shared by q and p
    log_p = _log_posterior(x_t, log_x0_hat, t_b, schedule, K, dtype, log_likelihood)
    nll = -log_p.gather(1, x0.unsqueeze(1)).squeeze(1)
    if schedule.T == 1:
        return nll.reshape(B, -1).sum(1)
    # Rows with t = 1 get a KL from the true posterior at t = 2, discarded below: at t = 1 that
    # posterior has exact zeros, and 0 * log 0 would fill the discarded branch with NaN.
    log_q = _log_posterior(x_t, x0, t_b.clamp(min=2), schedule, K, dtype, log_likelihood)
    per_dim = torch.where(t_b == 1, nll, _kl_from_logs(log_q, log_p))
    return per_dim.reshape(B, -1).sum(1)


def vlb_terms(denoiser, x0: torch.Tensor, schedule: Schedule, *, num_classes: int | None = None,
              generator: torch.Generator | None = None, max_batch: int | None = None) -> torch.Tensor:
    """The terms of minus eq. 3 for each example, in nats summed over its dimensions: ``[B, T + 1]``.

    - column 0: ``-log p(x_0 | x_1)``, the decoder term, at a fresh ``x_1 ~ q(x_1 | x_0)``, with
      ``p(x_0 | x_1) = C(theta_post(x_1, x0_hat)) ∝ x0_hat * q(x_1 | x_0)`` (eq. 16 read with the
      decoder's probabilities; :mod:`mdiff_lite.models` says why);
    - column ``t - 1`` for ``t = 2 .. T``: ``KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))``
      (eq. 15) at a fresh ``x_t ~ q(x_t | x_0)``;
    - column ``T``: ``KL(q(x_T | x_0) || p(x_T))``, exact (no sampling).

    Every column is an unbiased estimate of its expectation in eq. 3, so the row sum is an
    unbiased estimate of ``-(eq. 3)``, an upper bound on ``-log p(x_0)`` in expectation.
    The randomness is one ``x_t`` per (example, t): all T terms are computed, none is sampled.

    Args:
        denoiser: ``(x_t: LongTensor[B, *dims], t: LongTensor[B]) -> logits[B, *dims, K]``;
            ``x0_hat = softmax(logits)``.
        x0: LongTensor of class indices ``[B, *dims]``.
        schedule: a :class:`Schedule` (the uniform noise of eqs. 11-13) or a process
            (:class:`UniformProcess`, :class:`~mdiff_lite.absorbing.AbsorbingProcess`, whose terms
            are its own, and whose ``x_t`` holds the mask id K).
        num_classes: K; if omitted, ``denoiser.num_classes``.
        generator: for the draws of ``x_t``, on the device of ``x0``.
        max_batch: several t share one denoiser call when ``max_batch`` is at least 2 B, as
            many as fit in ``max_batch`` maps (default: one t per call, B maps a call; a call
            never holds fewer than the B maps of one t).
    Returns:
        float tensor ``[B, T + 1]`` (float64 for a float64 denoiser, else float32).
        Gradients flow if enabled; evaluation should run under ``torch.no_grad()``.
    """
    process = as_process(schedule)
    K = _resolve_num_classes(denoiser, num_classes)
    x0 = _check_x0_batch(x0, K)
    B, T = x0.shape[0], process.T
    if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, numbers.Integral)
                                  or max_batch < 1):
        raise ValueError(f"max_batch must be a positive integer, got {max_batch!r}")
    per_call = max(1, (max_batch or B) // B)

    columns = []
    for start in range(1, T + 1, per_call):
        ts = torch.arange(start, min(start + per_call, T + 1), device=x0.device)
        t = ts.repeat_interleave(B)
        x0_rep = x0.repeat((len(ts),) + (1,) * (x0.ndim - 1))
        t_b = t.view((-1,) + (1,) * (x0.ndim - 1))
        x_t = process._sample(x0_rep, t_b, K, generator)
        log_x0_hat = _call_denoiser(denoiser, x_t, t, K)
        terms = process._terms(log_x0_hat, x0_rep, x_t, t, K)
        columns.append(terms.view(len(ts), B).T)
    terms = torch.cat(columns, 1)
    prior = prior_kl(x0, process, K).to(terms.dtype).unsqueeze(1)
    return torch.cat([terms, prior], 1)


def training_loss(denoiser, x0: torch.Tensor, schedule: Schedule, t_sampler, *,
                  num_classes: int | None = None, generator: torch.Generator | None = None,
                  reduction: str = "mean", with_x0_nll: bool = False):
    """Eq. 17: the training objective, an unbiased one-sample estimate of ``-(eq. 3)``.

    For each example a time ``t ~ p(t)`` is drawn by ``t_sampler`` and the loss is
    ``L_t / p(t) + KL(q(x_T | x_0) || p(x_T))``, where ``L_1 = -log p(x_0 | x_1)`` (the decoder
    of :func:`vlb_terms`) and
    ``L_t`` (t >= 2) is the eq. 15 KL. Since ``E_t[L_t / p(t)] = sum_t L_t``, the expectation
    is minus eq. 3 in nats per example (with a uniform ``p(t) = 1 / T`` this is ``T * L_t``).
    The observed ``L_t`` are passed to ``t_sampler.update`` (importance sampling learns from them).

    Args:
        denoiser, x0, num_classes, generator: as in :func:`vlb_terms`.
        t_sampler: a :class:`UniformTimeSampler` or :class:`ImportanceTimeSampler` with the
            schedule's ``T``.
        reduction: ``"mean"`` (over the batch) or ``"none"`` (one estimate per example).
        with_x0_nll: also return, at the same draws, ``-log p(x_0 | x_t)`` under the model's own
            posterior over x_0 (see :func:`x0_nll`), for an auxiliary loss.
    Returns:
        nats per example: a scalar (the batch mean), or ``[B]`` with ``reduction="none"``;
        with ``with_x0_nll``, a pair ``(estimate, x0_nll)`` reduced alike.
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    process = as_process(schedule)
    if not hasattr(t_sampler, "sample") or getattr(t_sampler, "T", None) != process.T:
        raise ValueError(f"t_sampler must be a time sampler with T = {process.T}, got {t_sampler!r}")
    K = _resolve_num_classes(denoiser, num_classes)
    x0 = _check_x0_batch(x0, K)
    return _training_loss(denoiser, x0, process, t_sampler, K, generator, reduction, with_x0_nll)


def _training_loss(denoiser, x0, schedule, t_sampler, K: int, generator, reduction: str = "mean",
                   with_x0_nll: bool = False):
    """:func:`training_loss` on checked inputs (``fit`` checks its maps once): nothing here reads a
    value back from the device, so on a GPU a training step runs without waiting for it (the
    importance sampler's update is the exception: it learns from the losses on the host)."""
    process = as_process(schedule)
    B = x0.shape[0]
    t, p_t = t_sampler.sample(B, device=x0.device, generator=generator)
    x_t = process._sample(x0, t.view((B,) + (1,) * (x0.ndim - 1)), K, generator)
    log_x0_hat = _call_denoiser(denoiser, x_t, t, K)
    L_t = process._terms(log_x0_hat, x0, x_t, t, K)
    if getattr(t_sampler, "learns", True):
        t_sampler.update(t, L_t.detach())
    prior = process._prior_kl_per_dim(K) * math.prod(x0.shape[1:])  # prior_kl, unchecked
    estimate = L_t / p_t.to(L_t.dtype) + prior
    if with_x0_nll:
        nll = _x0_nll(log_x0_hat, x0, x_t, t, process, K)
        return (estimate.mean(), nll.mean()) if reduction == "mean" else (estimate, nll)
    return estimate.mean() if reduction == "mean" else estimate


def _x0_nll(log_x0_hat, x0, x_t, t, process, K) -> torch.Tensor:
    """-log p(x_0 | x_t) per example (nats, summed over dimensions) under the model's posterior
    ``x0_hat * q(x_t | x_0), normalised`` (at t = 1, the decoder)."""
    B = x0.shape[0]
    t_b = t.view((B,) + (1,) * (x0.ndim - 1))
    log_lik = process._log_evidence(x_t, t_b, K, log_x0_hat.dtype)  # log q(x_t | x_0 = k) for every k
    log_post = torch.log_softmax(log_x0_hat + log_lik, 1)
    return -log_post.gather(1, x0.unsqueeze(1)).reshape(B, -1).sum(1)


def x0_nll(denoiser, x0: torch.Tensor, t, schedule: Schedule, *, num_classes: int | None = None,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """How well the denoiser predicts x_0 from x_t: ``-log p(x_0 | x_t)`` in nats per example,
    summed over its dimensions, at a fresh ``x_t ~ q(x_t | x_0)``.

    Under eq. 14 the model's belief about x_0 given x_t is ``x0_hat * q(x_t | x_0)``,
    normalised over x_0 (its prediction times what the pixel's own x_t says), and at its best it
    is the true posterior ``q(x_0 | x_t)`` of each pixel; the KL of eq. 15 is minimised by the
    same ``x0_hat``. So this cross-entropy is a denser training signal with the same optimum
    (D3PM's auxiliary loss, Austin et al. 2021, taken through the model's posterior). At
    ``t = 1`` it is the decoder term. ``t``: an int or LongTensor ``[B]`` in 1 .. T.
    """
    process = as_process(schedule)
    K = _resolve_num_classes(denoiser, num_classes)
    x0 = _check_x0_batch(x0, K)
    B = x0.shape[0]
    t = _check_t(t, 1, process.T, x0.device).broadcast_to((B,))
    x_t = process._sample(x0, t.view((B,) + (1,) * (x0.ndim - 1)), K, generator)
    return _x0_nll(_call_denoiser(denoiser, x_t, t, K), x0, x_t, t, process, K)


# ---------------------------------------------------------------------------------------------
# Which t to train on.
# ---------------------------------------------------------------------------------------------


class UniformTimeSampler:
    """``t ~ Uniform{1, .., T}``. ``probs()`` is indexed by t (entry 0 is 0)."""

    def __init__(self, T: int):
        if isinstance(T, bool) or not isinstance(T, numbers.Integral) or T < 1:
            raise ValueError(f"T must be an integer >= 1, got {T!r}")
        self.T = int(T)

    def probs(self) -> torch.Tensor:
        p = torch.full((self.T + 1,), 1.0 / self.T, dtype=torch.float64)
        p[0] = 0
        return p

    def sample(self, batch_size: int, device="cpu", generator: torch.Generator | None = None):
        """``(t, p(t))``: LongTensor[batch_size] of times and float64 probabilities, on ``device``."""
        t = torch.randint(1, self.T + 1, (batch_size,), device=device, generator=generator)
        return t, self._flat_probs(batch_size, device)

    def _flat_probs(self, batch_size: int, device) -> torch.Tensor:
        """``p(t) = 1 / T`` for each of ``batch_size`` draws."""
        return torch.full((batch_size,), 1.0 / self.T, device=device, dtype=_float64_where_possible(device))

    learns = False  # update() ignores the losses: a trainer need not bring them to the host

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Uniform sampling learns nothing from the losses."""

    def state_dict(self) -> dict:
        return {"T": self.T}

    def load_state_dict(self, state: dict) -> None:
        if int(state["T"]) != self.T:
            raise ValueError(f"this sampler has T = {self.T}, the saved state has T = {state['T']}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(T={self.T})"


class StratifiedTimeSampler(UniformTimeSampler):
    """Uniform t, stratified across the batch: the batch of ``B`` draws splits ``1 .. T`` into
    ``B`` equal ranges and takes one t from each (``t_i = floor(T (i + u_i) / B) + 1``,
    ``u_i ~ U[0, 1)``, in a random order). Every t still has the weight ``1 / T``: the ranges
    cover ``1 .. T`` once, so ``sum_i P(t_i = s) = B / T`` for every s, and the batch mean of
    ``T * L_{t_i}`` stays unbiased for the bound. But no batch crowds into a few t, so its
    gradient varies less than with independent draws (each example's own estimate is not
    unbiased alone: only the batch mean is). With ``B = 1`` it is :class:`UniformTimeSampler`.
    """

    def sample(self, batch_size: int, device="cpu", generator: torch.Generator | None = None):
        """``(t, p(t))`` as :meth:`UniformTimeSampler.sample` returns them, with stratified t."""
        u = _uniform(batch_size, device, generator)
        strata = torch.randperm(batch_size, device=device, generator=generator).to(u.dtype)
        t = ((strata + u) * (self.T / batch_size)).long().clamp_(max=self.T - 1) + 1
        return t, self._flat_probs(batch_size, device)


class ImportanceTimeSampler(UniformTimeSampler):
    """Importance sampling of t, ``p(t) ∝ sqrt(E[L_t^2])``, as Nichol & Dhariwal (2021, "Improved
    denoising diffusion probabilistic models") estimate it.

    ``E[L_t^2]`` is the mean of the last ``history`` squared losses seen at each t. Until every t
    has been seen ``history`` times, t is drawn uniformly (the warm-up). A small uniform share
    (``uniform_mix``) keeps every ``p(t)`` positive, so ``L_t / p(t)`` stays unbiased.
    This choice of p(t) minimises the variance of ``L_t / p(t)`` over distributions of t.

    The official multinomial-diffusion code uses the same ``p(t)`` with another estimate: an
    exponential moving average of ``L_t^2`` (weight 0.1 on each new loss) instead of a history,
    uniform t until every t has more than 10 visits, and ``t = 1`` given the weight of ``t = 2``.
    """

    def __init__(self, T: int, history: int = 10, uniform_mix: float = 1e-4):
        super().__init__(T)
        if isinstance(history, bool) or not isinstance(history, numbers.Integral) or history < 1:
            raise ValueError(f"history must be a positive integer, got {history!r}")
        if not 0 < uniform_mix <= 1:
            raise ValueError(f"uniform_mix must lie in (0, 1], got {uniform_mix!r}")
        self.history, self.uniform_mix = int(history), float(uniform_mix)
        self._sq = np.zeros((self.T + 1, self.history))  # row t: the last squared losses at t
        self._count = np.zeros(self.T + 1, dtype=np.int64)

    learns = True

    def sample(self, batch_size: int, device="cpu", generator: torch.Generator | None = None):
        """``(t, p(t))``: LongTensor[batch_size] of times drawn from :meth:`probs`, and their
        probabilities (float64, float32 on MPS), on ``device``."""
        p = self.probs().to(device=device, dtype=_float64_where_possible(device))
        t = torch.multinomial(p, batch_size, replacement=True, generator=generator)
        return t, p[t]

    @property
    def warmed_up(self) -> bool:
        return bool((self._count[1:] >= self.history).all())

    def probs(self) -> torch.Tensor:
        if not self.warmed_up:
            return super().probs()
        w = np.sqrt(self._sq[1:].mean(1))
        if not w.sum() > 0:  # every loss seen was 0: nothing to prefer
            return super().probs()
        p = (1 - self.uniform_mix) * w / w.sum() + self.uniform_mix / self.T
        return torch.from_numpy(np.concatenate([[0.0], p]))

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        for ti, loss in zip(t.tolist(), losses.tolist()):
            if not math.isfinite(loss):  # the trainer stops on it; keep p(t) usable meanwhile
                continue
            self._sq[ti, self._count[ti] % self.history] = loss * loss
            self._count[ti] += 1

    def state_dict(self) -> dict:
        return {"T": self.T, "history": self.history, "uniform_mix": self.uniform_mix,
                "sq": torch.from_numpy(self._sq.copy()), "count": torch.from_numpy(self._count.copy())}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if int(state["history"]) != self.history:
            raise ValueError(f"this sampler keeps history = {self.history}, the saved state {state['history']}")
        self.uniform_mix = float(state["uniform_mix"])
        self._sq = np.asarray(state["sq"], dtype=np.float64).copy()
        self._count = np.asarray(state["count"], dtype=np.int64).copy()

    def __repr__(self) -> str:
        return f"ImportanceTimeSampler(T={self.T}, history={self.history}, warmed_up={self.warmed_up})"
