"""Evaluation: the all-terms bound and the Monte-Carlo estimate agree, and known models score
what they must (an oracle nearly 0, a one-pixel world its exact bound)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from mdiff_lite import make_schedule
from mdiff_lite.evaluate import bound_breakdown, estimate_bound, evaluate_bound
from mdiff_lite.models import Denoiser, DenoiserConfig


class Oracle(nn.Module):
    """Knows the data are all class 1: x0_hat is one-hot(1) up to exp(-40)."""

    num_classes = 4

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))  # gives the evaluator a device

    def forward(self, x_t, t):
        return nn.functional.one_hot(torch.ones_like(x_t), 4).float() * 40


def test_an_oracle_scores_nearly_zero():
    s = make_schedule("hoogeboom-cosine", 30)
    maps = torch.ones(8, 4, 4, dtype=torch.long)
    exact = evaluate_bound(Oracle(), s, maps, progress=False)
    # Only the prior term is left: alpha_bar_T > 0 leaves a little of x0 in x_T.
    assert 0 < exact["bpd"] < 1e-3
    assert exact["per_t_bpd"][-1] == pytest.approx(exact["bpd"], rel=1e-3)
    assert exact["n_images"] == 8 and exact["T"] == 30 and "upper bound" in exact["bound"]


def test_exact_and_monte_carlo_estimates_agree():
    torch.manual_seed(0)
    cfg = DenoiserConfig(num_classes=4, height=8, width=8, fold=1, channels=(16, 32), embed_dim=16,
                         schedule={"name": "hoogeboom-cosine", "T": 20})
    model = Denoiser(cfg)
    with torch.no_grad():  # a random, non-trivial correction on top of the Bayes term
        model.head[-1].weight.normal_(0, 0.05)
    s = make_schedule("hoogeboom-cosine", 20)
    maps = torch.randint(0, 4, (48, 8, 8), generator=torch.Generator().manual_seed(1))
    exact = evaluate_bound(model, s, maps, batch_size=16, max_batch=64, progress=False)
    mc = estimate_bound(model, s, maps, k=24, progress=False)
    assert len(exact["per_map_bpd"]) == 48 and len(exact["per_t_bpd"]) == 21
    assert sum(exact["per_t_bpd"]) == pytest.approx(exact["bpd"], rel=1e-9)
    gap = abs(exact["bpd"] - mc["bpd"])
    # Both are unbiased for the same bound; the maps are shared, so this is generous.
    assert gap < 4 * math.hypot(exact["stderr"], mc["stderr"]), (exact["bpd"], mc["bpd"])
    assert mc["stderr"] > exact["stderr"]  # the price of sampling t
    assert "Monte-Carlo" in mc["bound"] and mc["k"] == 24


def test_evaluation_is_reproducible_and_leaves_the_model_as_it_was():
    cfg = DenoiserConfig(num_classes=4, height=8, width=8, fold=1, channels=(16, 32), embed_dim=16,
                         schedule={"name": "hoogeboom-cosine", "T": 10})
    model = Denoiser(cfg).train()
    s = make_schedule("hoogeboom-cosine", 10)
    maps = torch.randint(0, 4, (6, 8, 8))
    a = evaluate_bound(model, s, maps, seed=3, progress=False)
    b = evaluate_bound(model, s, maps, seed=3, progress=False)
    assert a["per_map_bpd"] == b["per_map_bpd"] and model.training


def test_breakdown_covers_every_term_once():
    per_t = list(np.linspace(0.0, 1.0, 101))
    rows = bound_breakdown(per_t)
    assert rows[0]["t"] == "1-10" and rows[-2]["t"] == "91-100" and rows[-1]["t"] == "prior"
    assert sum(r["bpd"] for r in rows) == pytest.approx(sum(per_t))
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)


def test_bad_input():
    s = make_schedule("hoogeboom-cosine", 10)
    with pytest.raises(ValueError, match="LongTensor"):
        evaluate_bound(Oracle(), s, torch.zeros(2, 4, 4), progress=False)
    with pytest.raises(ValueError, match="k must"):
        estimate_bound(Oracle(), s, torch.ones(2, 4, 4, dtype=torch.long), k=0, progress=False)
