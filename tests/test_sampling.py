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
    """Logits from a lookup table [T + 1, K, K] indexed by (t, x_t): a complete one-pixel model."""

    def __init__(self, table):
        self.table = torch.as_tensor(table, dtype=torch.float32)
        self.num_classes = self.table.shape[-1]

    def __call__(self, x_t, t):
        return self.table[t.view((-1,) + (1,) * (x_t.ndim - 1)), x_t]


class WorldTableDenoiser:
    """A 2 x 2 world: logits from a table [T + 1, K^4, 2, 2, K] indexed by (t, the whole x_t), so
    that each pixel's x0_hat depends on the other pixels, as a real denoiser's does."""

    def __init__(self, table):
        self.table = torch.as_tensor(table, dtype=torch.float32)
        self.num_classes = K = self.table.shape[-1]
        self.place = K ** torch.arange(4).view(2, 2)

    def __call__(self, x_t, t):
        return self.table[t, (x_t * self.place).sum((1, 2))]


def step_matrices(schedule, K):
    """Q[t][i, j] = q(x_t = j | x_{t-1} = i) (eq. 11) as matrices, t = 1 .. T; Q[0] = I."""
    a = schedule.alphas.numpy()
    return [np.eye(K)] + [a[t] * np.eye(K) + (1 - a[t]) / K for t in range(1, schedule.T + 1)]


def exact_x0_distribution(x0_hat_of, grid, schedule, K, pixels):
    """p(x_0) of the sampler's model on a world of ``pixels`` pixels, by summing over every path.

    x_T is uniform; each jump t -> s draws every pixel independently from
    p(x_s = j | x_t) ∝ q(x_t | x_s = j) * sum_k x0_hat(k) q(x_s = j | x_0 = k), the two factors
    read off products of the step matrices (no closed form of the schedule), the last jump (s = 0)
    included. ``x0_hat_of(t, state)`` gives [pixels, K] for a state (a tuple of classes)."""
    Q = step_matrices(schedule, K)
    def product(lo, hi):  # Q_lo @ ... @ Q_hi: q(x_hi | x_{lo - 1}); the identity if lo > hi
        out = np.eye(K)
        for t in range(lo, hi + 1):
            out = out @ Q[t]
        return out
    states = list(itertools.product(range(K), repeat=pixels))
    p = {state: 1.0 / len(states) for state in states}
    for t, s in zip(grid[:-1], grid[1:]):
        jump, marginal = product(s + 1, t), product(1, s)  # q(x_t | x_s), q(x_s | x_0)
        new = dict.fromkeys(states, 0.0)
        for state, mass in p.items():
            x0_hat = x0_hat_of(t, state)
            per_pixel = []
            for pixel, i in enumerate(state):
                theta = jump[:, i] * (x0_hat[pixel] @ marginal)
                per_pixel.append(theta / theta.sum())
            for nxt in states:
                new[nxt] += mass * np.prod([per_pixel[pixel][j] for pixel, j in enumerate(nxt)])
        p = new
    return np.array([p[state] for state in states])


def chi_square_pvalue(draws, expected, n):
    return stats.chisquare(np.bincount(draws, minlength=len(expected)), expected * n).pvalue


@pytest.mark.parametrize("steps, grid", [(None, [4, 3, 2, 1, 0]), (2, [4, 2, 0]), (1, [4, 0])])
def test_one_pixel_samples_follow_the_models_exact_distribution(steps, grid):
    K, T = 3, 4
    s = make_schedule("linear", T, beta_start=0.1, beta_end=0.5)
    table = np.random.default_rng(0).normal(size=(T + 1, K, K)) * 2
    x0_hat = np.exp(log_softmax(table, -1))
    expected = exact_x0_distribution(lambda t, state: x0_hat[t, state[0]][None], grid, s, K, 1)
    assert expected.sum() == pytest.approx(1.0) and time_grid(T, steps) == grid
    n = 60_000
    x = sample(TableDenoiser(table), s, n, shape=(), steps=steps, generator=torch.Generator().manual_seed(0),
               device="cpu", progress=False)
    assert chi_square_pvalue(x.numpy(), expected, n) > 1e-4


def test_few_step_samples_of_a_2x2_world_follow_the_models_exact_distribution():
    # Grid 6 -> 4 -> 2 -> 0: every pixel's x0_hat depends on the whole x_t, and each jump,
    # the last one included, must multiply in what the pixel's own x_t says about it.
    K, T = 2, 6
    s = make_schedule("linear", T, beta_start=0.05, beta_end=0.4)
    table = np.random.default_rng(1).normal(size=(T + 1, K ** 4, 2, 2, K)) * 2
    x0_hat = np.exp(log_softmax(table, -1))
    place = K ** np.arange(4)

    def x0_hat_of(t, state):
        return x0_hat[t, int(np.dot(state, place))].reshape(4, K)

    grid = [6, 4, 2, 0]
    expected = exact_x0_distribution(x0_hat_of, grid, s, K, 4)
    # The rule this replaces, x_0 ~ C(x0_hat) at the last jump from t = 2, gives another
    # distribution, far enough away for n draws to tell (so this test would have caught it).
    last = exact_x0_distribution(x0_hat_of, grid[:-1], s, K, 4)
    states = list(itertools.product(range(K), repeat=4))
    old = np.zeros(len(states))
    for mass, state in zip(last, states):
        probs = x0_hat_of(2, state)
        for index, nxt in enumerate(states):
            old[index] += mass * np.prod([probs[pixel, j] for pixel, j in enumerate(nxt)])
    n = 60_000
    assert n * ((old - expected) ** 2 / expected).sum() > 200  # the chi-square the old rule would score

    x = sample(WorldTableDenoiser(table), s, n, shape=(2, 2), steps=3, generator=torch.Generator().manual_seed(3),
               device="cpu", progress=False)
    # Index each drawn map as exact_x0_distribution orders the states (itertools.product: the
    # last pixel varies fastest).
    index = (x.reshape(n, 4).numpy() * K ** np.arange(3, -1, -1)).sum(1)
    assert chi_square_pvalue(index, expected, n) > 1e-4


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
