"""Generating maps: ancestral sampling, sampling in fewer steps, inpainting.

The generative model of the paper: ``x_T`` uniform, then ``x_{t-1} ~ p(x_{t-1} | x_t) =
C(theta_post(x_t, x0_hat))`` (eq. 14) down to ``t = 1``, where the same step is the decoder,
``x_0 ~ p(x_0 | x_1) ∝ x0_hat * q(x_1 | x_0)``. Its likelihood is what :mod:`mdiff_lite.evaluate`
bounds.

With fewer steps the sampler visits a decreasing grid ``T = t_0 > t_1 > ... > t_n = 0`` and
jumps with ``q(x_s | x_t, x0_hat)`` (:func:`mdiff_lite.diffusion.q_posterior_skip`): the same
network, no retraining, n network calls instead of T. The last jump, from ``t_{n-1}`` to 0, is no
exception: ``q(x_0 | x_t, x0_hat) ∝ x0_hat * q(x_t | x_0)``. ``x0_hat`` predicts each pixel from
the *other* pixels (:mod:`mdiff_lite.models`), so drawing ``x_0`` from ``x0_hat`` alone would
throw away what the pixel's own ``x_t`` says (an earlier version did, and its few-step samples
were measurably worse: ``benchmarks/samples.py``; the README has the numbers).

Inpainting keeps known pixels: after every step, the known pixels are replaced by a fresh
draw of ``q(x_s | x_0 = known)``, so that they carry exactly the noise level the network expects
at time ``s``; at the end they are the known values themselves.

Every function takes a noise process where it takes a schedule (a schedule alone is the uniform
process): under absorbing noise (:class:`mdiff_lite.absorbing.AbsorbingProcess`) ``x_T`` is all
mask, and a jump unmasks each masked token with the probability the process gives, to a class
drawn from ``x0_hat``.

Taught in notebook 05 (and 07 for text).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .diffusion import as_process, q_sample, sample_index
from .models import check_schedule_matches, example_shape
from .schedules import Schedule

__all__ = ["time_grid", "sample", "inpaint"]


def time_grid(T: int, steps: int | None = None) -> list[int]:
    """The decreasing times a sampler visits, from T down to 0 (``steps`` jumps; all T by default)."""
    steps = T if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= T:
        raise ValueError(f"steps must be an integer in 1..{T}, got {steps!r}")
    grid = torch.linspace(T, 0, steps + 1).round().long().tolist()
    return sorted(set(grid), reverse=True)


@torch.no_grad()
def _run(model, schedule: Schedule, x: torch.Tensor, steps, generator, known, mask, return_trajectory, progress):
    K = model.num_classes
    process = as_process(schedule)
    n = x.shape[0]
    grid = time_grid(process.T, steps)
    was_training = getattr(model, "training", False)
    if was_training:
        model.eval()  # no dropout while sampling; restored below
    trajectory = [x.to(torch.uint8 if K < 256 else torch.int16).cpu()] if return_trajectory else None
    for t, s in tqdm(list(zip(grid[:-1], grid[1:])), desc="sampling", disable=not progress, leave=False):
        t_vec = torch.full((n,), t, device=x.device, dtype=torch.long)
        x0_hat = torch.softmax(model(x, t_vec).float(), -1)
        # Every jump, the last one (s = 0) included. The unchecked twin: the inputs are ours, and
        # the checks (sums, ranges) would cost a synchronising pass over the batch at every step.
        x = sample_index(process._skip_probs(x, x0_hat, t, s, K), generator)
        if known is not None:
            noisy_known = q_sample(known, s, process, K, generator) if s > 0 else known
            x = torch.where(mask, noisy_known, x)
        if return_trajectory:
            trajectory.append(x.to(trajectory[0].dtype).cpu())
    if was_training:
        model.train()
    if return_trajectory:
        return x, torch.stack(trajectory), grid
    return x


def _check_model(model, schedule) -> int:
    if not callable(model) or not hasattr(model, "num_classes"):
        raise TypeError("model must be a denoiser with a num_classes attribute, e.g. mdiff_lite.models.Denoiser")
    check_schedule_matches(model, schedule)
    return model.num_classes


def sample(model, schedule: Schedule, n: int, shape: tuple | None = None, *, steps: int | None = None,
           generator: torch.Generator | None = None, device=None, return_trajectory: bool = False,
           progress: bool = True):
    """Draw ``n`` maps from the model: LongTensor ``[n, H, W]`` (``[n, L]`` for a text denoiser).

    Args:
        schedule: the model's schedule, or its noise process (:func:`mdiff_lite.models.process_of`).
        shape: ``(H, W)``; default: the model's configured size.
        steps: number of network calls (default T, the model whose likelihood is reported).
        generator: on the model's device, for reproducible samples.
        return_trajectory: also return every intermediate ``x_t`` as ``[len(grid), n, H, W]``
            (uint8, on the CPU) and the times ``grid`` they belong to.
    """
    K = _check_model(model, schedule)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if shape is None:
        shape = example_shape(model)
        if shape is None:
            raise ValueError("this model has no configured size: give shape=(H, W)")
    device = device or next(model.parameters()).device
    x_T = as_process(schedule)._prior_sample((n,) + tuple(shape), K, generator, device)
    return _run(model, schedule, x_T, steps, generator, None, None, return_trajectory, progress)


def inpaint(model, schedule: Schedule, known: torch.Tensor, mask: torch.Tensor, *, steps: int | None = None,
            generator: torch.Generator | None = None, return_trajectory: bool = False, progress: bool = True):
    """Fill the pixels where ``mask`` is False, keeping ``known`` where it is True.

    Args:
        known: LongTensor ``[n, H, W]`` or ``[n, L]`` (values under ``~mask`` are ignored).
        mask: bool tensor broadcasting to ``known``: True where the pixel is known.
    """
    K = _check_model(model, schedule)
    shape = example_shape(model)
    if (not isinstance(known, torch.Tensor) or known.is_floating_point()
            or (known.ndim != 1 + len(shape) if shape else known.ndim < 2)):
        raise ValueError(f"known must be a LongTensor [n, {'L' if shape and len(shape) == 1 else 'H, W'}] "
                         "of class indices")
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise ValueError("mask must be a bool tensor (True where the pixel is known)")
    mask = mask.to(known.device).broadcast_to(known.shape)
    if known[mask].numel() and (known[mask].min() < 0 or known[mask].max() >= K):
        raise ValueError(f"the known pixels must hold class ids in 0..{K - 1}")
    known = known.long().clamp(0, K - 1)  # the values under ~mask are ignored
    process = as_process(schedule)
    x_T = process._prior_sample(known.shape, K, generator, known.device)
    x_T = torch.where(mask, q_sample(known, process.T, process, K, generator), x_T)
    return _run(model, schedule, x_T, steps, generator, known, mask, return_trajectory, progress)
