"""The equations against independent computations: K x K transition matrices, Bayes by
enumeration, hand-computed numbers, enumeration of every chain of a one-pixel world, float64."""

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from scipy import stats
from scipy.special import log_softmax, logsumexp, rel_entr

from mdiff_lite import diffusion as D
from mdiff_lite.schedules import SCHEDULE_NAMES, make_schedule

F64 = torch.float64


# ---- independent machinery: transition matrices in numpy float64 -----------------------------

def Q(alpha: float, K: int) -> np.ndarray:
    """Q[i, j] = q(x_t = j | x_{t-1} = i): keep with probability alpha, else uniform."""
    return alpha * np.eye(K) + (1 - alpha) / K * np.ones((K, K))


def Q_bar(schedule, t: int, K: int) -> np.ndarray:
    """Q_1 Q_2 ... Q_t, the t-step transition matrix, by matrix products."""
    M = np.eye(K)
    for tau in range(1, t + 1):
        M = M @ Q(schedule.alphas[tau].item(), K)
    return M


def random_probs(rng, shape, K):
    """Probability vectors with a spread of sharpness (some near one-hot, some near uniform)."""
    logits = rng.normal(size=shape + (K,)) * rng.choice([0.3, 3.0, 12.0], size=shape + (1,))
    return torch.from_numpy(np.exp(log_softmax(logits, -1)))


SCHEDULES = [("linear", {}), ("cosine", {}), ("hoogeboom-cosine", {}), ("jsd", {}), ("constant", {"beta": 0.3})]


# ---- eq. 11 and eq. 12 -------------------------------------------------------------------------

@pytest.mark.parametrize("name, params", SCHEDULES)
def test_eq11_is_one_row_of_the_transition_matrix(name, params):
    K, T = 5, 12
    s = make_schedule(name, T, **params)
    x = random_probs(np.random.default_rng(0), (7,), K)
    for t in range(1, T + 1):
        expected = x.numpy() @ Q(s.alphas[t].item(), K)
        torch.testing.assert_close(D.q_step(x, t, s), torch.from_numpy(expected), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name, params", SCHEDULES)
def test_eq12_equals_the_product_of_t_transition_matrices(name, params):
    K, T = 4, 15
    s = make_schedule(name, T, **params)
    x0 = random_probs(np.random.default_rng(1), (3,), K)
    for t in range(0, T + 1):
        expected = x0.numpy() @ Q_bar(s, t, K)
        torch.testing.assert_close(D.q_marginal(x0, t, s), torch.from_numpy(expected), rtol=1e-10, atol=1e-12)


def test_eq12_one_step_at_a_time_is_the_marginal():
    # Chaining eq. 11 t times from a one-hot x0 gives eq. 12 (the induction of notebook 01).
    s = make_schedule("hoogeboom-cosine", 40)
    x = D.one_hot(torch.tensor([2]), 6, F64)
    for t in range(1, 41):
        x = D.q_step(x, t, s)
        torch.testing.assert_close(x, D.q_marginal(D.one_hot(torch.tensor([2]), 6, F64), t, s))


def test_t_broadcasts_against_the_leading_shape():
    s = make_schedule("cosine", 100)
    x0 = D.one_hot(torch.tensor([0, 1, 2]), 3, F64)
    t = torch.tensor([[1], [50], [100]])  # [3, 1] against leading shape [3]: a [3, 3] table
    out = D.q_marginal(x0, t, s)
    assert out.shape == (3, 3, 3)
    torch.testing.assert_close(out[1, 2], D.q_marginal(x0[2], 50, s))
    curve = D.q_marginal(x0[0], torch.arange(101), s)  # every t at once, for plots
    torch.testing.assert_close(curve[:, 0], s.alpha_bars + (1 - s.alpha_bars) / 3)


# ---- eq. 13 and eq. 14 -------------------------------------------------------------------------

@pytest.mark.parametrize("name, params", SCHEDULES)
def test_eq13_is_bayes_by_enumeration(name, params):
    K, T = 4, 10
    s = make_schedule(name, T, **params)
    for t in range(1, T + 1):
        Qt, Qbar_prev = Q(s.alphas[t].item(), K), Q_bar(s, t - 1, K)
        for c, i in itertools.product(range(K), range(K)):
            # q(x_{t-1} = j, x_t = i | x_0 = c) for each j, then condition on x_t = i.
            joint = np.array([Qbar_prev[c, j] * Qt[j, i] for j in range(K)])
            if joint.sum() == 0:
                continue
            got = D.q_posterior(D.one_hot(torch.tensor(i), K, F64), D.one_hot(torch.tensor(c), K, F64), t, s)
            np.testing.assert_allclose(got.numpy(), joint / joint.sum(), rtol=1e-10, atol=1e-14)


def test_eq13_at_t1_returns_x0_and_eq14_is_the_plugin_formula():
    K, T = 5, 8
    s = make_schedule("cosine", T)
    rng = np.random.default_rng(3)
    x0 = D.one_hot(torch.tensor(3), K, F64)
    xt = D.one_hot(torch.tensor(1), K, F64)
    torch.testing.assert_close(D.q_posterior(xt, x0, 1, s), x0)
    x0_hat = random_probs(rng, (), K)
    for t in range(1, T + 1):
        # Eq. 14: theta_j ∝ Q_t[j, x_t] * (x0_hat Q_bar_{t-1})_j, from the matrices.
        theta = Q(s.alphas[t].item(), K)[:, 1] * (x0_hat.numpy() @ Q_bar(s, t - 1, K))
        np.testing.assert_allclose(D.q_posterior(xt, x0_hat, t, s).numpy(), theta / theta.sum(), rtol=1e-10)


@pytest.mark.parametrize("name, params", SCHEDULES)
def test_skip_posterior_is_bayes_over_several_steps(name, params):
    # q(x_s | x_t, x_0) ∝ Q_bar_s[x0, x_s] * (Q_{s+1} ... Q_t)[x_s, x_t], all from matrix products.
    K, T = 3, 9
    sch = make_schedule(name, T, **params)
    for t in range(1, T + 1):
        for s in range(0, t):
            between = np.eye(K)
            for tau in range(s + 1, t + 1):
                between = between @ Q(sch.alphas[tau].item(), K)
            for c, i in itertools.product(range(K), range(K)):
                joint = Q_bar(sch, s, K)[c] * between[:, i]
                if joint.sum() == 0:
                    continue
                got = D.q_posterior_skip(D.one_hot(torch.tensor(i), K, F64), D.one_hot(torch.tensor(c), K, F64), t, s, sch)
                np.testing.assert_allclose(got.numpy(), joint / joint.sum(), rtol=1e-9, atol=1e-12)
    x = random_probs(np.random.default_rng(0), (4,), K)
    torch.testing.assert_close(D.q_posterior_skip(x, x, 5, 4, sch), D.q_posterior(x, x, 5, sch))


# ---- eq. 15 and eq. 16 by hand ------------------------------------------------------------------

def test_eq15_by_hand():
    p = torch.tensor([0.5, 0.5, 0.0], dtype=F64)
    q = torch.tensor([0.25, 0.25, 0.5], dtype=F64)
    assert D.categorical_kl(p, q).item() == pytest.approx(math.log(2), rel=1e-14)
    assert D.categorical_kl(q, q).item() == 0
    p2 = torch.tensor([0.9, 0.1], dtype=F64)
    q2 = torch.tensor([0.6, 0.4], dtype=F64)
    hand = 0.9 * math.log(0.9 / 0.6) + 0.1 * math.log(0.1 / 0.4)
    assert D.categorical_kl(p2, q2).item() == pytest.approx(hand, rel=1e-14)
    assert D.categorical_kl(torch.tensor([0.5, 0.5], dtype=F64), torch.tensor([1.0, 0.0], dtype=F64)) == math.inf


def test_eq15_matches_scipy_on_batches():
    rng = np.random.default_rng(4)
    p, q = random_probs(rng, (6, 5), 7), random_probs(rng, (6, 5), 7)
    np.testing.assert_allclose(D.categorical_kl(p, q).numpy(), rel_entr(p.numpy(), q.numpy()).sum(-1), rtol=1e-12)


def test_eq16_by_hand():
    probs = torch.tensor([[0.2, 0.3, 0.5], [0.7, 0.1, 0.2]], dtype=F64)
    x = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]], dtype=F64)
    torch.testing.assert_close(D.log_categorical(x, probs), torch.tensor([math.log(0.5), math.log(0.1)], dtype=F64))
    # A zero probability where x is 0 costs nothing; where x is 1 it is -inf.
    assert D.log_categorical(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0])).item() == 0
    assert D.log_categorical(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0])).item() == -math.inf


def test_bits_per_dim_and_one_hot():
    assert D.bits_per_dim(1024 * math.log(2) * 3, 1024) == pytest.approx(3.0)
    assert D.bits_per_dim(torch.tensor([math.log(8)]), 1).item() == pytest.approx(3.0)
    torch.testing.assert_close(D.one_hot(torch.tensor([2, 0]), 3), torch.tensor([[0.0, 0, 1], [1, 0, 0]]))


# ---- sampling ----------------------------------------------------------------------------------

def test_sample_categorical_matches_its_probabilities():
    probs = torch.tensor([0.05, 0.5, 0.0, 0.2, 0.25], dtype=F64)
    g = torch.Generator().manual_seed(0)
    draws = D.sample_categorical(probs.expand(200_000, 5), generator=g)
    assert draws.dtype == F64 and set(draws.sum(-1).tolist()) == {1.0}
    counts = draws.sum(0).numpy()
    assert counts[2] == 0
    keep = probs.numpy() > 0
    p_value = stats.chisquare(counts[keep], probs.numpy()[keep] * 200_000).pvalue
    assert p_value > 1e-4
    again = D.sample_categorical(probs.expand(200_000, 5), generator=torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)


@pytest.mark.parametrize("t", [1, 30, 60, 100])
def test_q_sample_matches_eq12(t):
    K, n = 6, 120_000
    s = make_schedule("hoogeboom-cosine", 100)
    x0 = torch.full((n,), 4)
    xt = D.q_sample(x0, t, s, K, generator=torch.Generator().manual_seed(t))
    counts = torch.bincount(xt, minlength=K).numpy()
    expected = D.q_marginal(D.one_hot(torch.tensor(4), K, F64), t, s).numpy() * n
    assert stats.chisquare(counts, expected).pvalue > 1e-4


# ---- log space (training) agrees with probability space (the equations) --------------------------

@pytest.mark.parametrize("name, params", SCHEDULES)
def test_log_space_posterior_agrees_with_eq13_and_eq14(name, params):
    K, T = 5, 60
    s = make_schedule(name, T, **params)
    rng = np.random.default_rng(5)
    t = torch.arange(2, T + 1).repeat_interleave(K * K)
    xt = torch.arange(K).repeat_interleave(K).repeat(T - 1)
    x0 = torch.arange(K).repeat(K * (T - 1))
    got = D.log_q_posterior(xt, x0, t, s, K, F64)
    want = D.q_posterior(D.one_hot(xt, K, F64), D.one_hot(x0, K, F64), t, s)
    torch.testing.assert_close(got.exp(), want, rtol=1e-10, atol=1e-15)
    x0_hat = random_probs(rng, (len(t),), K)
    got = D.log_q_posterior(xt, torch.log(x0_hat), t, s)
    torch.testing.assert_close(got.exp(), D.q_posterior(D.one_hot(xt, K, F64), x0_hat, t, s), rtol=1e-10, atol=1e-15)



def test_log_space_posterior_broadcasts_like_eq13():
    K, T = 4, 30
    s = make_schedule("linear", T)
    t = torch.arange(2, T + 1)                   # [T - 1] against a scalar x_t and x0
    got = D.log_q_posterior(torch.tensor(1), torch.tensor(3), t, s, K, F64)
    want = D.q_posterior(D.one_hot(torch.tensor(1), K, F64), D.one_hot(torch.tensor(3), K, F64), t, s)
    assert got.shape == (T - 1, K)
    torch.testing.assert_close(got.exp(), want, rtol=1e-10, atol=1e-15)
    with pytest.raises(ValueError, match="broadcast"):
        D.log_q_posterior(torch.tensor([1, 2]), torch.tensor([0, 1, 2]), 3, s, K, F64)

def test_prior_kl_is_the_kl_to_uniform():
    s = make_schedule("linear", 20)
    x0 = torch.tensor([[0, 1], [2, 2]])
    q_T = D.q_marginal(D.one_hot(x0, 3, F64), s.T, s)
    expected = D.categorical_kl(q_T, torch.full_like(q_T, 1 / 3)).sum(1)
    torch.testing.assert_close(D.prior_kl(x0, s, 3), expected)
    assert (D.prior_kl(x0, make_schedule("jsd", 20), 3) == 0).all()  # alpha_bar_T = 0: x_T is uniform


# ---- properties (hypothesis) -------------------------------------------------------------------

@st.composite
def worlds(draw):
    K = draw(st.integers(2, 9))
    T = draw(st.integers(1, 60))
    name = draw(st.sampled_from(SCHEDULE_NAMES))
    shape = tuple(draw(st.lists(st.integers(1, 3), min_size=0, max_size=3)))
    t = draw(st.integers(1, T))
    seed = draw(st.integers(0, 2**31 - 1))
    return K, make_schedule(name, T), shape, t, np.random.default_rng(seed)


@settings(max_examples=80, deadline=None)
@given(worlds())
def test_outputs_are_probability_vectors(world):
    K, s, shape, t, rng = world
    x, y = random_probs(rng, shape, K), random_probs(rng, shape, K)
    for out in (D.q_step(x, t, s), D.q_marginal(x, t, s), D.q_posterior(x, y, t, s),
                D.q_posterior(D.sample_categorical(x), y, t, s)):
        assert out.shape == shape + (K,)
        assert (out >= 0).all() and (out <= 1 + 1e-12).all()
        torch.testing.assert_close(out.sum(-1), torch.ones(shape, dtype=F64))


@settings(max_examples=80, deadline=None)
@given(worlds())
def test_kl_is_nonnegative_and_zero_only_at_equality(world):
    K, _, shape, _, rng = world
    p, q = random_probs(rng, shape, K), random_probs(rng, shape, K)
    kl = D.categorical_kl(p, q)
    assert (kl >= 0).all()
    assert (D.categorical_kl(p, p).abs() < 1e-12).all()
    # Pinsker: KL >= 2 TV^2, so it is strictly positive wherever p and q differ.
    tv = 0.5 * (p - q).abs().sum(-1)
    assert (kl >= 2 * tv**2 - 1e-12).all()


# ---- the one-pixel world: eq. 3 and log p(x0) exactly, by enumerating every chain ---------------

class TableDenoiser:
    """A fixed lookup table of logits per (t, x_t): any function of (x_t, t) is a valid model."""

    def __init__(self, table):
        self.table = table  # [T + 1, K, K] float64 logits
        self.num_classes = table.shape[-1]

    def __call__(self, x_t, t):
        return self.table[t, x_t]


def exact_one_pixel(table: np.ndarray, s, x0: int):
    """Eq. 3 by its definition E_q[log p(x_{0:T}) - log q(x_{1:T} | x_0)], log p(x_0), and the
    expectation of every column of vlb_terms, by enumerating all K^T chains in numpy float64."""
    T, K = s.T, table.shape[-1]
    Qs = [None] + [Q(s.alphas[t].item(), K) for t in range(1, T + 1)]
    Qbars = [Q_bar(s, t, K) for t in range(T + 1)]
    x0_hat = np.exp(log_softmax(table, -1))  # [t, x_t, class]

    def reverse(t, i):  # p(x_{t-1} = . | x_t = i), eq. 14 from the matrices; at t = 1 the decoder
        theta = Qs[t][:, i] * (x0_hat[t, i] @ Qbars[t - 1])
        return theta / theta.sum()

    elbo, log_terms_p = 0.0, []
    for chain in itertools.product(range(K), repeat=T):  # chain[t - 1] = x_t
        xs = (x0,) + chain
        log_q = sum(math.log(Qs[t][xs[t - 1], xs[t]]) for t in range(1, T + 1))
        log_p = -math.log(K) + sum(math.log(reverse(t, xs[t])[xs[t - 1]]) for t in range(1, T + 1))
        elbo += math.exp(log_q) * (log_p - log_q)
        log_terms_p.append(log_p)
    # log p(x0): sum p(x_{0:T}) over the chains.
    log_px0 = logsumexp(log_terms_p)

    expected = np.zeros(T + 1)
    expected[0] = -sum(Qbars[1][x0, i] * math.log(reverse(1, i)[x0]) for i in range(K))
    for t in range(2, T + 1):
        for i in range(K):
            post = Qbars[t - 1][x0] * Qs[t][:, i]
            post /= post.sum()
            expected[t - 1] += Qbars[t][x0, i] * rel_entr(post, reverse(t, i)).sum()
    expected[T] = rel_entr(Qbars[T][x0], np.full(K, 1 / K)).sum()
    return elbo, log_px0, expected


@pytest.fixture(scope="module")
def one_pixel_world():
    K, T = 3, 4
    # A short schedule that leaves x_T far from uniform, so that the prior term matters.
    s = make_schedule("linear", T, beta_start=0.05, beta_end=0.3)
    table = np.random.default_rng(7).normal(size=(T + 1, K, K)) * 2
    return s, table


@pytest.mark.parametrize("x0", [0, 1, 2])
def test_vlb_terms_are_unbiased_for_eq3_and_the_bound_holds(one_pixel_world, x0):
    s, table = one_pixel_world
    elbo, log_px0, expected = exact_one_pixel(table, s, x0)
    assert elbo <= log_px0 + 1e-12  # eq. 3 is a lower bound
    assert -elbo == pytest.approx(expected.sum(), rel=1e-10)  # eq. 3's KL form = its definition

    n = 40_000
    model = TableDenoiser(torch.from_numpy(table))
    terms = D.vlb_terms(model, torch.full((n,), x0), s, generator=torch.Generator().manual_seed(x0), max_batch=3 * n)
    assert terms.shape == (n, s.T + 1) and terms.dtype == F64
    mean, se = terms.mean(0).numpy(), terms.std(0).numpy() / math.sqrt(n)
    assert np.all(np.abs(mean - expected) <= 5 * se + 1e-12), (mean, expected, se)
    total = terms.sum(1)
    assert abs(total.mean().item() + elbo) <= 5 * total.std().item() / math.sqrt(n)


@pytest.mark.parametrize("T", [1, 2])
def test_short_chains_match_enumeration(T):
    K = 3
    s = make_schedule("linear", T, beta_start=0.2, beta_end=0.4)
    table = np.random.default_rng(T).normal(size=(T + 1, K, K))
    model = TableDenoiser(torch.from_numpy(table))
    _, _, expected = exact_one_pixel(table, s, 2)
    n = 40_000
    terms = D.vlb_terms(model, torch.full((n,), 2), s, generator=torch.Generator().manual_seed(0))
    se = terms.std(0).numpy() / math.sqrt(n)
    assert np.all(np.abs(terms.mean(0).numpy() - expected) <= 5 * se + 1e-12)
    losses = torch.stack([D.training_loss(model, torch.full((n,), 2), s, D.UniformTimeSampler(T)) for _ in range(20)])
    assert abs(losses.mean().item() - expected.sum()) <= 5 * losses.std().item() / math.sqrt(20)


def test_a_perfect_reverse_model_makes_the_bound_tight():
    # If p(x_{t-1} | x_t) is the true reverse process, eq. 3 equals log p(x0) up to the prior term;
    # here the denoiser is the exact posterior over x0 for a point-mass data distribution.
    K, T = 3, 4
    s = make_schedule("linear", T, beta_start=0.1, beta_end=0.6)
    table = np.full((T + 1, K, K), -60.0)
    table[..., 1] = 0.0  # x0_hat = one-hot(1) whatever x_t: the data are all class 1
    elbo, log_px0, expected = exact_one_pixel(table, s, 1)
    assert elbo == pytest.approx(-expected[T], abs=1e-9)  # only the prior term is left
    assert log_px0 <= 0 and elbo <= log_px0 + 1e-12
    terms = D.vlb_terms(TableDenoiser(torch.from_numpy(table)), torch.full((500,), 1), s)
    assert terms[:, :T].abs().max() < 1e-9  # every other term vanishes, whatever x_t was drawn
    torch.testing.assert_close(terms[:, T], torch.full((500,), expected[T], dtype=F64))


@pytest.mark.parametrize("sampler", ["uniform", "stratified", "importance"])
def test_training_loss_is_unbiased_for_eq3(one_pixel_world, sampler):
    s, table = one_pixel_world
    model = TableDenoiser(torch.from_numpy(table))
    if sampler == "uniform":
        t_sampler = D.UniformTimeSampler(s.T)
    elif sampler == "stratified":  # a batch of 20 000 over T = 4: every batch nearly a fixed grid
        t_sampler = D.StratifiedTimeSampler(s.T)
    else:  # warmed up on made-up losses, so that p(t) is far from uniform
        t_sampler = D.ImportanceTimeSampler(s.T, history=2)
        t_sampler.update(torch.tensor([1, 1, 2, 2, 3, 3, 4, 4]), torch.tensor([9.0, 9, 1, 1, 0.1, 0.1, 3, 3]))
        assert t_sampler.warmed_up and t_sampler.probs()[1] > 0.6
        t_sampler.update = lambda t, losses: None  # hold p(t) fixed for the test
    g = torch.Generator().manual_seed(11)
    for x0 in range(3):
        elbo, _, _ = exact_one_pixel(table, s, x0)
        batch_means = torch.stack([D.training_loss(model, torch.full((20_000,), x0), s, t_sampler, generator=g)
                                   for _ in range(40)])
        assert 5 * batch_means.std() / math.sqrt(40) < 0.3 * exact_one_pixel(table, s, x0)[2][-1]
        se = batch_means.std() / math.sqrt(len(batch_means))
        assert abs(batch_means.mean().item() + elbo) <= 5 * se.item(), (batch_means.mean(), -elbo, se)


# ---- the auxiliary loss: the model's posterior over x0 ---------------------------------------------

@pytest.mark.parametrize("t", [1, 2, 4])
def test_x0_nll_is_the_cross_entropy_of_the_models_posterior(one_pixel_world, t):
    s, table = one_pixel_world
    K = table.shape[-1]
    x0_hat = np.exp(log_softmax(table, -1))
    n = 60_000
    g = torch.Generator().manual_seed(t)
    for x0 in range(K):
        nll = D.x0_nll(TableDenoiser(torch.from_numpy(table)), torch.full((n,), x0), t, s, generator=g)
        # By the matrices: x_t ~ row x0 of Q_bar_t; the posterior is x0_hat * Q_bar_t[:, x_t] (at
        # t = 1 too: the decoder).
        Qb = Q_bar(s, t, K)
        expected = 0.0
        for i in range(K):
            post = x0_hat[t, i] * Qb[:, i]
            expected += Qb[x0, i] * -math.log(post[x0] / post.sum())
        assert abs(nll.mean().item() - expected) <= 5 * nll.std().item() / math.sqrt(n) + 1e-12


def test_x0_nll_and_the_kl_share_their_optimum():
    # Data: one pixel with class probabilities pi. Whatever x_t, the x0_hat that minimises
    # E[KL of eq. 15 | x_t] makes x0_hat * q(x_t | x0) the true posterior q(x0 | x_t), which also
    # minimises the cross-entropy of x0_nll. Here that x0_hat is pi itself; check both gradients
    # vanish there (and not elsewhere), by the matrices in float64 with autograd.
    K, T = 4, 5
    s = make_schedule("linear", T, beta_start=0.1, beta_end=0.5)
    pi = torch.tensor([0.55, 0.25, 0.15, 0.05], dtype=F64)
    Qs = [None] + [torch.from_numpy(Q(s.alphas[t].item(), K)) for t in range(1, T + 1)]
    Qbars = [torch.from_numpy(Q_bar(s, t, K)) for t in range(T + 1)]

    def objectives(logits, t, i):  # E over x0 | x_t = i of the KL and of -log posterior
        w = pi * Qbars[t][:, i]
        w = w / w.sum()  # q(x0 | x_t = i)
        x0_hat = torch.softmax(logits, 0)
        theta_p = Qs[t][:, i] * (x0_hat @ Qbars[t - 1])
        p = theta_p / theta_p.sum()
        kl = 0.0
        for k in range(K):
            q = Qs[t][:, i] * Qbars[t - 1][k]
            q = q / q.sum()
            kl = kl + w[k] * (q * (q / p).log()).sum()
        post = x0_hat * Qbars[t][:, i]
        ce = -(w * (post / post.sum()).log()).sum()
        return kl, ce

    for t in range(2, T + 1):
        for i in range(K):
            for logits, optimum in [(pi.log().clone(), True), (torch.zeros(K, dtype=F64), False)]:
                logits.requires_grad_(True)
                kl, ce = objectives(logits, t, i)
                g_kl, = torch.autograd.grad(kl, logits, retain_graph=True)
                g_ce, = torch.autograd.grad(ce, logits)
                if optimum:
                    assert g_kl.abs().max() < 1e-12 and g_ce.abs().max() < 1e-12
                else:
                    assert g_kl.abs().max() > 1e-6 and g_ce.abs().max() > 1e-3


def test_training_loss_can_return_x0_nll_at_the_same_draws(one_pixel_world):
    s, table = one_pixel_world
    model = TableDenoiser(torch.from_numpy(table))
    x0 = torch.randint(0, 3, (500,), generator=torch.Generator().manual_seed(0))
    plain = D.training_loss(model, x0, s, D.UniformTimeSampler(s.T), generator=torch.Generator().manual_seed(1),
                            reduction="none")
    est, nll = D.training_loss(model, x0, s, D.UniformTimeSampler(s.T), generator=torch.Generator().manual_seed(1),
                               reduction="none", with_x0_nll=True)
    torch.testing.assert_close(est, plain)
    assert nll.shape == (500,) and (nll > 0).all()
    mean_est, mean_nll = D.training_loss(model, x0, s, D.UniformTimeSampler(s.T), with_x0_nll=True,
                                         generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(mean_est, plain.mean())
    torch.testing.assert_close(mean_nll, nll.mean())


# ---- float32 at T = 4000 -------------------------------------------------------------------------

def _denoisers(K):
    zero = lambda x, t: torch.zeros(x.shape + (K,))  # noqa: E731
    oracle = lambda x, t: torch.nn.functional.one_hot(torch.zeros_like(x), K).float() * 40  # noqa: E731
    wrong = lambda x, t: torch.nn.functional.one_hot(torch.ones_like(x), K).float() * 40  # noqa: E731
    noisy = lambda x, t: torch.randn(x.shape + (K,), generator=torch.Generator().manual_seed(int(t[0]))) * 8  # noqa: E731
    follow = lambda x, t: torch.nn.functional.one_hot(x, K).float() * 20  # noqa: E731
    return {"zero": zero, "oracle": oracle, "wrong": wrong, "noisy": noisy, "follow": follow}


@pytest.mark.slow
@pytest.mark.parametrize("name, params", [("hoogeboom-cosine", {}), ("cosine", {}), ("linear", {}), ("jsd", {}),
                                          ("linear", {"beta_start": 1e-7, "beta_end": 0.004})])
def test_float32_at_T4000_is_finite_nonnegative_and_matches_float64(name, params):
    K, T = 8, 4000
    s = make_schedule(name, T, **params)
    x0 = torch.zeros(2, 4, 4, dtype=torch.long)  # the oracle knows the data are all class 0
    for label, f in _denoisers(K).items():
        t32 = D.vlb_terms(f, x0, s, num_classes=K, generator=torch.Generator().manual_seed(0), max_batch=512)
        f64 = lambda x, t, f=f: f(x, t).double()  # noqa: E731 (same x_t draws: same seed)
        t64 = D.vlb_terms(f64, x0, s, num_classes=K, generator=torch.Generator().manual_seed(0), max_batch=512)
        assert torch.isfinite(t32).all(), label
        assert t32.min() >= -1e-4, (label, t32.min())  # KL below zero only by rounding
        torch.testing.assert_close(t32.double(), t64, rtol=1e-3, atol=2e-4, msg=label)


def test_float32_training_at_T4000_has_finite_gradients():
    K, T = 8, 4000
    s = make_schedule("hoogeboom-cosine", T)
    net = torch.nn.Conv2d(K, K, 3, padding=1)
    with torch.no_grad():
        net.weight.mul_(30)  # a confident, badly calibrated model: large logits everywhere

    def model(x, t):
        return net(torch.nn.functional.one_hot(x, K).permute(0, 3, 1, 2).float()).permute(0, 2, 3, 1)

    sampler = D.UniformTimeSampler(T)
    for t_fixed in ([1] * 8, [2] * 8, [T] * 8, list(range(1, 9))):
        sampler.sample = lambda B, device, generator, tt=t_fixed: (torch.tensor(tt), torch.full((B,), 1 / T, dtype=F64))
        net.zero_grad()
        loss = D.training_loss(model, torch.randint(0, K, (8, 6, 6)), s, sampler, num_classes=K)
        loss.backward()
        assert torch.isfinite(loss) and loss > 0
        assert all(torch.isfinite(p.grad).all() for p in net.parameters())


# ---- the time samplers -------------------------------------------------------------------------

def test_importance_sampler_warms_up_then_follows_root_mean_square_losses():
    T = 5
    sampler = D.ImportanceTimeSampler(T, history=3, uniform_mix=0.01)
    uniform = torch.tensor([0] + [0.2] * 5, dtype=F64)
    torch.testing.assert_close(sampler.probs(), uniform)
    for _ in range(2):
        sampler.update(torch.arange(1, 6), torch.tensor([1.0, 2, 3, 4, 5]))
    assert not sampler.warmed_up
    torch.testing.assert_close(sampler.probs(), uniform)  # still uniform: each t seen only twice
    sampler.update(torch.tensor([1, 2, 3, 4, 5, 5]), torch.tensor([1.0, 2, 3, 4, -5, 10]))
    assert sampler.warmed_up
    rms = np.array([1, 2, 3, 4, math.sqrt((25 + 25 + 100) / 3)])  # t = 5 kept its last 3 losses
    expected = 0.99 * rms / rms.sum() + 0.01 / 5
    np.testing.assert_allclose(sampler.probs().numpy()[1:], expected, rtol=1e-12)

    t, p = sampler.sample(100_000, generator=torch.Generator().manual_seed(0))
    assert t.min() >= 1 and t.max() <= T
    torch.testing.assert_close(p, sampler.probs()[t])
    counts = torch.bincount(t, minlength=T + 1)[1:].numpy()
    assert stats.chisquare(counts, expected * 100_000).pvalue > 1e-4

    clone = D.ImportanceTimeSampler(T, history=3)
    clone.load_state_dict(sampler.state_dict())
    torch.testing.assert_close(clone.probs(), sampler.probs())
    with pytest.raises(ValueError, match="T = 6"):
        D.ImportanceTimeSampler(6).load_state_dict(sampler.state_dict())


def test_uniform_sampler():
    sampler = D.UniformTimeSampler(7)
    t, p = sampler.sample(50_000, generator=torch.Generator().manual_seed(1))
    assert t.min() == 1 and t.max() == 7 and torch.allclose(p, torch.full_like(p, 1 / 7))
    assert stats.chisquare(torch.bincount(t)[1:].numpy()).pvalue > 1e-4


@pytest.mark.parametrize("T, B", [(7, 3), (1000, 64), (5, 5), (4, 9)])
def test_stratified_sampler_is_uniform_and_spreads_every_batch(T, B):
    sampler, g = D.StratifiedTimeSampler(T), torch.Generator().manual_seed(2)
    batches = [sampler.sample(B, generator=g) for _ in range(20_000 // B + 200)]
    t = torch.cat([b[0] for b in batches])
    assert all(torch.allclose(b[1], torch.full((B,), 1 / T, dtype=F64)) for b in batches)
    assert t.min() == 1 and t.max() == T
    # Marginally uniform on 1..T (so the batch mean of T * L_t stays unbiased) ...
    assert stats.chisquare(torch.bincount(t, minlength=T + 1)[1:].numpy()).pvalue > 1e-4
    # ... and within a batch, the i-th smallest t lies in the i-th of B equal ranges of [0, T).
    for ts, _ in batches[:50]:
        lo = torch.arange(B, dtype=F64) * T / B
        ranked = ts.sort().values.double() - 1  # 0-based
        assert ((ranked >= lo.floor()) & (ranked < torch.ceil(lo + T / B))).all(), ts


# ---- bad input gets a clear error -----------------------------------------------------------------

S = make_schedule("cosine", 10)
X = torch.tensor([[0.5, 0.5], [1.0, 0.0]])


@pytest.mark.parametrize("call, error, fragment", [
    (lambda: D.q_step(X, 0, S), ValueError, "t = 0"),
    (lambda: D.q_step(X, 11, S), ValueError, "t = 11"),
    (lambda: D.q_marginal(X, -1, S), ValueError, "t = -1"),
    (lambda: D.q_posterior(X, X, 1.5, S), TypeError, "1.5"),
    (lambda: D.q_marginal(X, torch.tensor([1.0]), S), TypeError, "float32"),
    (lambda: D.q_marginal(X, True, S), TypeError, "True"),
    (lambda: D.q_marginal(X, torch.tensor([1, 2, 3]), S), ValueError, "broadcast"),
    (lambda: D.q_marginal(X, 1, "cosine"), TypeError, "Schedule"),
    (lambda: D.q_marginal(torch.tensor([[0, 1]]), 1, S), TypeError, "int64"),
    (lambda: D.q_marginal([[0.5, 0.5]], 1, S), TypeError, "list"),
    (lambda: D.q_marginal(torch.tensor([[0.5, 0.6]]), 1, S), ValueError, "sum to 1"),
    (lambda: D.q_marginal(torch.tensor([[1.5, -0.5]]), 1, S), ValueError, "[0, 1]"),
    (lambda: D.q_marginal(torch.tensor([[1.0]]), 1, S), ValueError, "K >= 2"),
    (lambda: D.q_posterior(X, torch.ones(2, 3) / 3, 2, S), ValueError, "same number of classes"),
    (lambda: D.categorical_kl(X, torch.ones(2, 3) / 3), ValueError, "same number of classes"),
    (lambda: D.log_categorical(X, torch.tensor([[float("nan"), 1.0]])), ValueError, "probabilities"),
    (lambda: D.bits_per_dim(1.0, 0), ValueError, "num_dims"),
    (lambda: D.one_hot(torch.tensor([3]), 3), ValueError, "0..2"),
    (lambda: D.vlb_terms(lambda x, t: x, torch.zeros(2, 3, dtype=torch.long), S), ValueError, "num_classes"),
    (lambda: D.vlb_terms(lambda x, t: torch.zeros(2, 3, 5), torch.zeros(2, 3, dtype=torch.long), S,
                         num_classes=4), ValueError, "(2, 3, 4)"),
    (lambda: D.vlb_terms(lambda x, t: x, torch.zeros(2, 3), S, num_classes=4), TypeError, "float32"),
    (lambda: D.vlb_terms(lambda x, t: x, torch.full((2, 3), 4), S, num_classes=4), ValueError, "0..3"),
    (lambda: D.vlb_terms(lambda x, t: x, torch.zeros(2, 3, dtype=torch.long), S, num_classes=1), ValueError, "num_classes"),
    (lambda: D.vlb_terms(lambda x, t: x, torch.zeros(2, 3, dtype=torch.long), S, num_classes=4, max_batch=0),
     ValueError, "max_batch"),
    (lambda: D.training_loss(lambda x, t: x, torch.zeros(2, 3, dtype=torch.long), S, D.UniformTimeSampler(9),
                             num_classes=4), ValueError, "T = 10"),
    (lambda: D.UniformTimeSampler(0), ValueError, "got 0"),
    (lambda: D.q_posterior_skip(X, X, 3, 3, S), ValueError, "smaller"),
])
def test_bad_input_is_refused_clearly(call, error, fragment):
    with pytest.raises(error) as info:
        call()
    assert fragment in str(info.value)
