"""Test bits per pixel: the variational bound of eq. 3, all terms, every test map.

Two estimates, both unbiased for the same quantity, the bound ``-(eq. 3)`` in bits per pixel (an
upper bound on the model's true negative log-likelihood, so on average no lower than it); neither
is the bound exactly, since each term of eq. 3 is an expectation over ``x_t``:

- :func:`evaluate_bound`, the **all-T estimate**: all T + 1 terms for every map, each KL at one
  fresh draw of ``x_t`` (the T network calls per map are batched across maps and times). What is
  random is only that draw; the reported standard error is over maps, and covers it.
  The official code instead reports a Monte-Carlo estimate with one importance-sampled t per
  map, averaged over repetitions.
- :func:`estimate_bound` draws ``k`` uniform times per map: ``T * L_t + prior`` is unbiased for
  the same bound, far cheaper, and noisier; its standard error says how much.

Both take a noise process where they take a schedule (text, notebook 07: either noise).
:func:`exact_nll` scores the autoregressive reference, whose likelihood needs no bound.

Taught in notebooks 05 and 06; ``python -m mdiff_lite eval`` prints these.
"""

from __future__ import annotations

import contextlib
import math
import time

import torch
from tqdm.auto import tqdm

from .diffusion import UniformTimeSampler, bits_per_dim, training_loss, vlb_terms
from .models import check_schedule_matches
from .schedules import Schedule

__all__ = ["evaluate_bound", "estimate_bound", "exact_nll", "bound_breakdown", "tenths", "BOUND_ALL_T", "ALL_T_LABEL",
           "EXACT"]

BOUND_ALL_T = ("all-T estimate of the variational bound (eq. 3): every one of its T + 1 terms per map, each KL "
               "at one draw of x_t, so unbiased for the bound (an upper bound on the negative log-likelihood); "
               "+- one standard error over maps")
ALL_T_LABEL = "all-T estimate ({T} terms, one x_t each)"  # the short form, for tables
BOUND_MC = ("Monte-Carlo estimate of the variational bound (eq. 3) from {k} uniformly drawn t per map; "
            "+- one standard error")


def _prepare(model, schedule, maps):
    check_schedule_matches(model, schedule)
    if not isinstance(maps, torch.Tensor) or maps.is_floating_point() or maps.ndim < 2:
        raise ValueError("maps must be a LongTensor [N, *dims] of class indices")
    device = next(model.parameters()).device if isinstance(model, torch.nn.Module) else maps.device
    return maps.long(), device


@contextlib.contextmanager
def _eval_mode(model):
    """Evaluate in eval mode (no dropout), and leave the model as it was found."""
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


@torch.no_grad()
def evaluate_bound(model, schedule: Schedule, maps: torch.Tensor, *, batch_size: int = 64,
                   max_batch: int = 512, seed: int = 0, progress: bool = True, compile: bool = False) -> dict:
    """The all-T estimate of the bound: all T + 1 terms for every map in ``maps``, each at one
    draw of ``x_t``.

    Args:
        batch_size: maps per ``vlb_terms`` call; ``max_batch``: maps per network call (several
            t share a call when ``max_batch > batch_size``).
        compile: ``torch.compile`` the network first (about a minute; the calls are then faster:
            ``benchmarks/train_speed.py`` measures by how much). Same terms, up to float rounding.
    Returns:
        ``{"bpd", "stderr", "bound", "n_images", "T", "per_t_bpd", "per_map_bpd", "seconds",
        "maps_per_second"}``; ``per_t_bpd[j]`` is column j of :func:`vlb_terms` averaged over
        maps, in bits per pixel (column 0: decoder, t - 1: the KL at t, T: the prior).
    """
    maps, device = _prepare(model, schedule, maps)
    N, D = maps.shape[0], math.prod(maps.shape[1:])
    generator = torch.Generator(device=device).manual_seed(seed)
    totals, column_sums = [], torch.zeros(schedule.T + 1, dtype=torch.float64)
    start = time.perf_counter()
    net = torch.compile(model, dynamic=False) if compile else model
    with _eval_mode(model), tqdm(total=N, desc="all-T bound", unit="map", disable=not progress) as bar:
        for i in range(0, N, batch_size):
            x0 = maps[i:i + batch_size].to(device)
            terms = vlb_terms(net, x0, schedule, num_classes=model.num_classes, generator=generator,
                              max_batch=max_batch).cpu().double()  # float64 on the CPU: MPS has none
            totals.append(terms.sum(1))
            column_sums += terms.sum(0)
            bar.update(x0.shape[0])
    seconds = time.perf_counter() - start
    per_map = bits_per_dim(torch.cat(totals), D)
    return {
        "bpd": per_map.mean().item(),
        "stderr": (per_map.std(unbiased=True) / math.sqrt(N)).item() if N > 1 else float("nan"),
        "bound": BOUND_ALL_T,
        "n_images": N,
        "T": schedule.T,
        "per_t_bpd": bits_per_dim(column_sums / N, D).tolist(),
        "per_map_bpd": per_map.tolist(),
        "seconds": seconds,
        "maps_per_second": N / seconds,
    }


@torch.no_grad()
def estimate_bound(model, schedule: Schedule, maps: torch.Tensor, *, k: int = 8, batch_size: int = 256,
                   seed: int = 0, progress: bool = True) -> dict:
    """A Monte-Carlo estimate of the bound: ``k`` uniform draws of t per map (unbiased).

    Returns ``{"bpd", "stderr", "bound", "n_images", "T", "k", "seconds"}``; the standard
    error is over maps of each map's average over its k draws.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    maps, device = _prepare(model, schedule, maps)
    N, D = maps.shape[0], math.prod(maps.shape[1:])
    generator = torch.Generator(device=device).manual_seed(seed)
    sampler = UniformTimeSampler(schedule.T)
    per_map = torch.zeros(N, dtype=torch.float64)
    start = time.perf_counter()
    with _eval_mode(model):
        for _ in tqdm(range(k), desc="bound estimate", disable=not progress):
            for i in range(0, N, batch_size):
                x0 = maps[i:i + batch_size].to(device)
                est = training_loss(model, x0, schedule, sampler, num_classes=model.num_classes,
                                    generator=generator, reduction="none")
                per_map[i:i + x0.shape[0]] += est.cpu().double() / k
    bpd = bits_per_dim(per_map, D)
    return {
        "bpd": bpd.mean().item(),
        "stderr": (bpd.std(unbiased=True) / math.sqrt(N)).item() if N > 1 else float("nan"),
        "bound": BOUND_MC.format(k=k),
        "n_images": N, "T": schedule.T, "k": k,
        "seconds": time.perf_counter() - start,
    }


EXACT = "exact negative log-likelihood (one causal pass per sequence; no bound, no sampling)"


@torch.no_grad()
def exact_nll(model, seqs: torch.Tensor, *, batch_size: int = 64, progress: bool = True) -> dict:
    """``-log p(x)`` of every sequence under an autoregressive model (``model.nll``), in bits per
    character: ``{"bpd", "stderr", "bound", "n_images", "seconds"}``; the standard error is over
    sequences (the number is exact for each; the error says how much the test set's choice moves it)."""
    if not isinstance(seqs, torch.Tensor) or seqs.is_floating_point() or seqs.ndim != 2:
        raise ValueError("seqs must be a LongTensor [N, L] of class indices")
    device = next(model.parameters()).device
    N, D = seqs.shape
    start = time.perf_counter()
    per_seq = []
    with _eval_mode(model):
        for i in tqdm(range(0, N, batch_size), desc="exact NLL", disable=not progress):
            per_seq.append(model.nll(seqs[i:i + batch_size].to(device)).cpu().double())
    bpd = bits_per_dim(torch.cat(per_seq), D)
    return {"bpd": bpd.mean().item(),
            "stderr": (bpd.std(unbiased=True) / math.sqrt(N)).item() if N > 1 else float("nan"),
            "bound": EXACT, "n_images": N, "seconds": time.perf_counter() - start}


def tenths(T: int) -> list[int]:
    """The upper ends of ten equal ranges of t in 1..T (fewer when T < 10)."""
    return sorted({max(1, round(T * (i + 1) / 10)) for i in range(10)})


def bound_breakdown(per_t_bpd, edges=None) -> list[dict]:
    """Where the bound is spent: the share of ``per_t_bpd`` (from :func:`evaluate_bound`) in
    ranges of t. ``edges`` are the upper ends of the ranges (default: :func:`tenths`);
    the prior term (last column) is reported on its own."""
    T = len(per_t_bpd) - 1
    edges = edges or tenths(T)
    total = sum(per_t_bpd)
    rows, lo = [], 1
    for hi in edges:
        part = sum(per_t_bpd[lo - 1:hi])  # columns lo - 1 .. hi - 1 hold t = lo .. hi
        rows.append({"t": f"{lo}-{hi}", "bpd": part, "share": part / total if total else float("nan")})
        lo = hi + 1
    rows.append({"t": "prior", "bpd": per_t_bpd[-1], "share": per_t_bpd[-1] / total if total else float("nan")})
    return rows
