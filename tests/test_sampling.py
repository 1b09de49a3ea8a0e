"""Sampling against the exact distribution of a one-pixel world, and its bookkeeping."""

import itertools

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import log_softmax

from mdiff_lite import make_schedule
from mdiff_lite.models import Denoiser, DenoiserConfig
from mdiff_lite.sampling import inpaint, sample, time_grid


class TableDenoiser:
    """Logits from a lookup table [T + 1, K, K] indexed by (t, x_t): a complete, tiny model."""

    def __init__(self, table):
        self.table = torch.as_tensor(table, dtype=torch.float32)
        self.num_classes = self.table.shape[-1]

    def __call__(self, x_t, t):
        return self.table[t.view((-1,) + (1,) * (x_t.ndim - 1)), x_t]


def exact_marginal(table, schedule):
    """p(x_0) of the model of eqs. 14 and 16 with a uniform p(x_T), by enumerating every chain."""
    T, K = schedule.T, table.shape[-1]
    a, ab = schedule.alphas.numpy(), schedule.alpha_bars.numpy()
    x0_hat = np.exp(log_softmax(table, -1))
    p = np.zeros(K)
    for chain in itertools.product(range(K), repeat=T):  # chain[t - 1] = x_t
        prob = 1.0 / K
        for t in range(T, 1, -1):
            i, j = chain[t - 1], chain[t - 2]
            theta = (a[t] * (np.arange(K) == i) + (1 - a[t]) / K) * (ab[t - 1] * x0_hat[t, i] + (1 - ab[t - 1]) / K)
            prob *= theta[j] / theta.sum()
        p += prob * x0_hat[1, chain[0]]
    return p


def test_ancestral_samples_follow_the_models_exact_distribution():
    K, T = 3, 4
    s = make_schedule("linear", T, beta_start=0.1, beta_end=0.5)
    table = np.random.default_rng(0).normal(size=(T + 1, K, K)) * 2
    expected = exact_marginal(table, s)
    assert expected.sum() == pytest.approx(1.0)
    n = 60_000
    x = sample(TableDenoiser(table), s, n, shape=(), generator=torch.Generator().manual_seed(0),
               device="cpu", progress=False)
    counts = np.bincount(x.numpy(), minlength=K)
    assert stats.chisquare(counts, expected * n).pvalue > 1e-4


def test_few_step_samples_follow_their_models_exact_distribution():
    # Grid 4 -> 2 -> 0: x_4 uniform, x_2 ~ q(x_2 | x_4, x0_hat) (the skip posterior), x_0 ~ C(x0_hat).
    K, T = 3, 4
    s = make_schedule("linear", T, beta_start=0.1, beta_end=0.5)
    table = np.random.default_rng(1).normal(size=(T + 1, K, K)) * 2
    x0_hat = np.exp(log_softmax(table, -1))
    a = s.alphas.numpy()
    Q = [None] + [a[t] * np.eye(K) + (1 - a[t]) / K for t in range(1, T + 1)]
    Q_2_to_4 = Q[3] @ Q[4]
    Q_bar_2 = Q[1] @ Q[2]
    expected = np.zeros(K)
    for x4 in range(K):
        theta = Q_2_to_4[:, x4] * (x0_hat[4, x4] @ Q_bar_2)
        theta /= theta.sum()
        for x2 in range(K):
            expected += theta[x2] / K * x0_hat[2, x2]
    n = 60_000
    x = sample(TableDenoiser(table), s, n, shape=(), steps=2, generator=torch.Generator().manual_seed(2),
               device="cpu", progress=False)
    assert stats.chisquare(np.bincount(x.numpy(), minlength=K), expected * n).pvalue > 1e-4


def test_time_grid():
    assert time_grid(10) == list(range(10, -1, -1))
    assert time_grid(1000, 4) == [1000, 750, 500, 250, 0]
    assert time_grid(3, 3) == [3, 2, 1, 0]
    for bad in (0, 11, 2.5):
        with pytest.raises(ValueError):
            time_grid(10, bad)


@pytest.fixture(scope="module")
def tiny_model():
    cfg = DenoiserConfig(num_classes=4, height=8, width=8, fold=1, channels=(16, 32), embed_dim=16,
                         schedule={"name": "hoogeboom-cosine", "T": 20})
    torch.manual_seed(0)
    return Denoiser(cfg).eval(), make_schedule("hoogeboom-cosine", 20)


def test_sample_shapes_trajectory_and_seeds(tiny_model):
    model, s = tiny_model
    x, traj, grid = sample(model, s, 3, return_trajectory=True, generator=torch.Generator().manual_seed(1),
                           progress=False)
    assert x.shape == (3, 8, 8) and x.dtype == torch.long and 0 <= x.min() and x.max() < 4
    assert traj.shape == (21, 3, 8, 8) and grid == list(range(20, -1, -1))
    assert torch.equal(traj[-1].long(), x)
    again = sample(model, s, 3, generator=torch.Generator().manual_seed(1), progress=False)
    assert torch.equal(x, again)
    x5, traj5, grid5 = sample(model, s, 2, steps=5, return_trajectory=True, progress=False)
    assert traj5.shape[0] == 6 and grid5 == [20, 16, 12, 8, 4, 0]
    with pytest.raises(ValueError):
        sample(model, s, 0)


def test_a_certain_model_samples_its_certainty(tiny_model):
    # A denoiser sure that x0 is class 2 everywhere must produce all-2 maps, in any number of steps.
    _, s = tiny_model

    class Certain(TableDenoiser):
        config = DenoiserConfig(num_classes=4, height=8, width=8, schedule=s.to_dict())

    table = np.full((21, 4, 4), -50.0)
    table[..., 2] = 50.0
    for steps in (None, 3, 1):
        x = sample(Certain(table), s, 4, steps=steps, device="cpu", progress=False)
        assert (x == 2).all()


def test_inpainting_keeps_the_known_pixels(tiny_model):
    model, s = tiny_model
    known = torch.randint(0, 4, (2, 8, 8))
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[:, :4] = True
    out, traj, _ = inpaint(model, s, known, mask, return_trajectory=True, progress=False)
    assert torch.equal(out[:, :, :4], known[:, :, :4])
    # Earlier, the known half carries noise of the right level: at t = T it is nearly uniform.
    assert (traj[0][:, :, :4].long() != known[:, :, :4]).float().mean() > 0.5
    with pytest.raises(ValueError, match="bool"):
        inpaint(model, s, known, mask.long())
