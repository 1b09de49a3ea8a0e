"""The absorbing-state process, held against transition matrices and enumeration (numpy, float64).

Every expected value here is built from the definition of the chain, the (K + 1) x (K + 1) matrix
``Q_t[j, i] = q(x_t = i | x_{t-1} = j)`` (keep with alpha_t, else mask; the mask stays), and never
from the process's own formulas.
"""

import itertools
import math

import numpy as np
import pytest
import torch

from mdiff_lite import diffusion as D
from mdiff_lite import make_schedule
from mdiff_lite.absorbing import AbsorbingProcess
from mdiff_lite.models import Denoiser, DenoiserConfig, TextDenoiser, TransformerConfig, process_of
from mdiff_lite.sampling import sample


def step_matrix(schedule, t, K):
    a = schedule.alphas[t].item()
    Q = np.zeros((K + 1, K + 1))
    for j in range(K):
        Q[j, j] = a
        Q[j, K] = 1 - a
    Q[K, K] = 1.0
    return Q


def marginal_matrix(schedule, t, K):
    Qbar = np.eye(K + 1)
    for s in range(1, t + 1):
        Qbar = Qbar @ step_matrix(schedule, s, K)
    return Qbar


SCHEDULES = [make_schedule("jsd", 6), make_schedule("linear", 5), make_schedule("cosine", 7)]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s.name)
def test_step_marginal_and_posterior_equal_the_matrices(schedule):
    K = 3
    proc = AbsorbingProcess(schedule)
    eye = torch.eye(K + 1, dtype=torch.float64)
    for t in range(1, schedule.T + 1):
        Q, Qbar, Qbar_prev = (step_matrix(schedule, t, K), marginal_matrix(schedule, t, K),
                              marginal_matrix(schedule, t - 1, K))
        np.testing.assert_allclose(proc.q_step(eye, t).numpy(), Q, atol=1e-12)
        np.testing.assert_allclose(proc.q_marginal(eye, t).numpy(), Qbar, atol=1e-12)
        for x0, x_t in itertools.product(range(K), range(K + 1)):
            if Qbar[x0, x_t] == 0:
                continue  # x_t impossible from x0
            bayes = Q[:, x_t] * Qbar_prev[x0, :] / Qbar[x0, x_t]
            got = proc.q_posterior(eye[x_t], eye[x0], t).numpy()
            np.testing.assert_allclose(got, bayes, atol=1e-12)
            if x_t == K:  # the posterior's mass on x0 is the unmask weight
                assert got[x0] == pytest.approx(proc.unmask_weight(t).item(), abs=1e-12)


def test_jsd_weights_are_one_over_t():
    proc = AbsorbingProcess(make_schedule("jsd", 50))
    t = torch.arange(1, 51)
    np.testing.assert_allclose(proc.unmask_weight(t).numpy(), 1.0 / t.numpy(), rtol=1e-12)


def test_q_sample_draws_the_marginal():
    K, schedule = 4, make_schedule("linear", 10)
    proc = AbsorbingProcess(schedule)
    x0 = torch.full((200_000,), 2)
    g = torch.Generator().manual_seed(0)
    for t in (1, 5, 10):
        x_t = D.q_sample(x0, t, proc, K, generator=g)
        freq = torch.bincount(x_t, minlength=K + 1).double() / x0.numel()
        expected = marginal_matrix(schedule, t, K)[2]
        np.testing.assert_allclose(freq.numpy(), expected, atol=4 * math.sqrt(0.25 / x0.numel()))


def _kl(p, q):
    p, q = np.asarray(p), np.asarray(q)
    keep = p > 0
    return float(np.sum(p[keep] * (np.log(p[keep]) - np.log(q[keep]))))


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s.name)
def test_terms_are_the_kl_of_the_matrix_posteriors(schedule):
    """L_t from the index-space method against KL(q || p) of posteriors built from the matrices,
    p with x0_hat in the place of x0 (eq. 14's construction); at t = 1, -log p(x_0 | x_1)."""
    K, B, L = 3, 5, 4
    proc = AbsorbingProcess(schedule)
    g = torch.Generator().manual_seed(1)
    for t in range(1, schedule.T + 1):
        x0 = torch.randint(0, K, (B, L), generator=g)
        x_t = D.q_sample(x0, t, proc, K, generator=g)
        log_x0_hat = torch.log_softmax(torch.randn(B, K, L, generator=g, dtype=torch.float64), 1)
        got = proc._terms(log_x0_hat, x0, x_t, torch.full((B,), t), K).numpy()
        Q, Qbar_prev = step_matrix(schedule, t, K), marginal_matrix(schedule, t - 1, K)
        for b in range(B):
            total = 0.0
            for i in range(L):
                xt, x_0 = x_t[b, i].item(), x0[b, i].item()
                hat = np.append(log_x0_hat[b, :, i].exp().numpy(), 0.0)
                theta_p = Q[:, xt] * (hat @ Qbar_prev)
                p = theta_p / theta_p.sum()
                if t == 1:
                    total += -math.log(p[x_0])
                else:
                    theta_q = Q[:, xt] * Qbar_prev[x_0]
                    total += _kl(theta_q / theta_q.sum(), p)
            assert got[b] == pytest.approx(total, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("schedule", [make_schedule("jsd", 4), make_schedule("linear", 3)], ids=lambda s: s.name)
def test_prior_kl_against_the_prior_vector(schedule):
    K = 5
    proc = AbsorbingProcess(schedule)
    q_T = marginal_matrix(schedule, schedule.T, K)[0]
    ab_T = schedule.alpha_bars[-1].item()
    prior = np.append(np.full(K, ab_T / K), 1 - ab_T)
    got = D.prior_kl(torch.zeros(1, 3, dtype=torch.long), proc, K).item()
    assert got == pytest.approx(3 * _kl(q_T, prior), abs=1e-12)


class TableDenoiser:
    """A fixed random denoiser for enumeration: logits from a table indexed by t and the whole x_t."""

    def __init__(self, K, L, T, seed=0):
        self.num_classes, self.L = K, L
        g = torch.Generator().manual_seed(seed)
        self.table = torch.randn(T + 1, (K + 1) ** L, L, K, generator=g, dtype=torch.float64)

    def code(self, x_t):
        base = torch.tensor([(self.num_classes + 1) ** i for i in range(self.L)])
        return (x_t * base).sum(-1)

    def __call__(self, x_t, t):
        return self.table[t, self.code(x_t)]


def _exact_reverse(model, x_t_tuple, t, s, schedule, K):
    """p(x_s | x_t) of every token from the matrices, [L, K + 1]: sum_x0 x0_hat(x0) q(x_s, x_t | x0), normalised."""
    x_t = torch.tensor([x_t_tuple])
    hat = torch.softmax(model(x_t, torch.tensor([t]))[0], -1).numpy()
    Q_st = np.eye(K + 1)
    for r in range(s + 1, t + 1):
        Q_st = Q_st @ step_matrix(schedule, r, K)
    Qbar_s = marginal_matrix(schedule, s, K)
    out = []
    for i, xt in enumerate(x_t_tuple):
        theta = Q_st[:, xt] * (np.append(hat[i], 0.0) @ Qbar_s)
        out.append(theta / theta.sum())
    return np.array(out)


def test_bound_by_enumeration_of_every_path():
    """The expected sum of vlb_terms (every x_t enumerated with its probability) equals
    -E_q[log p(x_0:T) - log q(x_1:T | x_0)] computed over every path of the chain, and is above
    the exact -log p(x_0) summed over every path of the model."""
    K, L = 2, 2
    schedule = make_schedule("linear", 3)
    T = schedule.T
    proc = AbsorbingProcess(schedule)
    model = TableDenoiser(K, L, T)
    x0 = (1, 0)
    states = list(itertools.product(range(K + 1), repeat=L))
    ab_T = schedule.alpha_bars[-1].item()
    prior_tok = np.append(np.full(K, ab_T / K), 1 - ab_T)

    def q_step_prob(prev, now, t):
        Q = step_matrix(schedule, t, K)
        return np.prod([Q[a, b] for a, b in zip(prev, now)])

    def p_step_prob(now, prev, t):  # p(x_{t-1} = prev | x_t = now)
        rev = _exact_reverse(model, now, t, t - 1, schedule, K)
        return np.prod([rev[i, prev[i]] for i in range(L)])

    # The negative ELBO over every path x_1 .. x_T.
    neg_elbo = 0.0
    for path in itertools.product(states, repeat=T):  # path[t - 1] = x_t
        q_path = np.prod([q_step_prob(x0 if t == 1 else path[t - 2], path[t - 1], t) for t in range(1, T + 1)])
        if q_path == 0:
            continue
        log_p = sum(math.log(prior_tok[v]) for v in path[-1])
        log_p += sum(math.log(p_step_prob(path[t - 1], x0 if t == 1 else path[t - 2], t)) for t in range(1, T + 1))
        neg_elbo += q_path * (math.log(q_path) - log_p)

    # The exact -log p(x_0): the model's chain run forward over every path.
    p_x = {s: np.prod([prior_tok[v] for v in s]) for s in states}
    for t in range(T, 0, -1):
        nxt = {s: 0.0 for s in states}
        for now, pr in p_x.items():
            if pr:
                for prev in (states if t > 1 else [x0]):
                    nxt[prev] += pr * p_step_prob(now, prev, t)
        p_x = nxt
    exact_nll = -math.log(p_x[x0])

    # The expectation of each column of vlb_terms, every x_t enumerated.
    x0_t = torch.tensor([x0])
    expected = D.prior_kl(x0_t, proc, K).item()
    for t in range(1, T + 1):
        Qbar = marginal_matrix(schedule, t, K)
        for x_t in states:
            w = np.prod([Qbar[a, b] for a, b in zip(x0, x_t)])
            if w:
                log_hat = torch.log_softmax(model(torch.tensor([x_t]), torch.tensor([t])), -1).movedim(-1, 1)
                expected += w * proc._terms(log_hat, x0_t, torch.tensor([x_t]), torch.tensor([t]), K).item()
    assert expected == pytest.approx(neg_elbo, rel=1e-10)
    assert neg_elbo >= exact_nll - 1e-12

    # And vlb_terms itself, averaged over draws, converges to it.
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([D.vlb_terms(model, x0_t.repeat(2000, 1), proc, num_classes=K, generator=g).sum(1)
                         for _ in range(2)]).flatten()
    assert draws.mean().item() == pytest.approx(expected, abs=4 * draws.std().item() / math.sqrt(draws.numel()))


def test_few_step_sampler_draws_the_enumerated_chain():
    """sample() with 3 jumps (12, 8, 4, 0) against the distribution of x_0 computed by running the jumps'
    matrices forward: the lesson of the first few-step sampler bug (test against the chain, not
    against the sampler's own rule)."""
    K, L = 3, 1
    schedule = make_schedule("jsd", 12)
    proc = AbsorbingProcess(schedule)
    model = TableDenoiser(K, L, schedule.T, seed=3)
    model.config = type("C", (), {"length": L})()
    grid = [12, 8, 4, 0]  # time_grid(12, 3): linspace(12, 0, 4)
    states = [(v,) for v in range(K + 1)]
    ab_T = schedule.alpha_bars[-1].item()
    dist = {s: (ab_T / K if s[0] < K else 1 - ab_T) for s in states}
    for t, s in zip(grid[:-1], grid[1:]):
        nxt = {st: 0.0 for st in states}
        for now, pr in dist.items():
            if pr:
                rev = _exact_reverse(model, now, t, s, schedule, K)[0]
                for v in range(K + 1):
                    nxt[(v,)] += pr * rev[v]
        dist = nxt
    assert dist[(K,)] == pytest.approx(0.0, abs=1e-12)  # nothing stays masked at t = 0
    n = 40_000
    x = sample(model, proc, n, (L,), steps=3, generator=torch.Generator().manual_seed(0), device="cpu", progress=False)
    freq = torch.bincount(x[:, 0], minlength=K + 1).double() / n
    expected = np.array([dist[(v,)] for v in range(K + 1)])
    np.testing.assert_allclose(freq.numpy(), expected, atol=4 * math.sqrt(0.25 / n))


def test_uniform_process_is_what_a_schedule_means():
    schedule = make_schedule("jsd", 20)
    model = TableDenoiser(3, 2, 20)

    def uniform_model(x_t, t):  # the table has K + 1 rows per token; the uniform x_t uses K of them
        return model(x_t, t)

    x0 = torch.randint(0, 3, (6, 2), generator=torch.Generator().manual_seed(0))
    a = D.vlb_terms(uniform_model, x0, schedule, num_classes=3, generator=torch.Generator().manual_seed(1))
    b = D.vlb_terms(uniform_model, x0, D.UniformProcess(schedule), num_classes=3,
                    generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_errors_name_the_problem():
    with pytest.raises(TypeError, match="Schedule"):
        AbsorbingProcess("jsd")
    with pytest.raises(TypeError, match="noise process"):
        D.vlb_terms(lambda x, t: None, torch.zeros(1, 2, dtype=torch.long), object(), num_classes=2)
    proc = AbsorbingProcess(make_schedule("jsd", 5))
    with pytest.raises(ValueError, match="K \\+ 1 >= 3"):
        proc.q_step(torch.tensor([0.5, 0.5]), 1)
    with pytest.raises(ValueError, match="t must lie"):
        proc.q_marginal(torch.eye(3), 6)
    unet = Denoiser(DenoiserConfig(num_classes=2, height=8, width=8, channels=(8, 8), groups=4,
                                   schedule={"name": "jsd", "T": 5}))
    with pytest.raises(ValueError, match="uniform noise"):
        sample(unet, proc, 1, progress=False)
    text = TextDenoiser(TransformerConfig(3, 8, noise="absorbing", schedule={"name": "jsd", "T": 5}, width=8,
                                          depth=1, heads=2))
    with pytest.raises(ValueError, match="absorbing noise"):
        sample(text, D.UniformProcess(make_schedule("jsd", 5)), 1, progress=False)
    assert process_of(text).name == "absorbing"


def test_x0_nll_is_the_posterior_over_x0_from_the_marginal_matrix():
    """-log p(x_0 | x_t) with p ∝ x0_hat(k) q(x_t | x_0 = k), the likelihood read off Qbar_t."""
    K, L, T = 3, 2, 8
    schedule = make_schedule("linear", T)
    proc = AbsorbingProcess(schedule)
    model = TableDenoiser(K, L, T, seed=5)
    x0 = torch.tensor([[0, 2], [1, 1], [2, 0]])
    for t in (1, 4, 8):
        g = torch.Generator().manual_seed(t)
        got = D.x0_nll(model, x0, t, proc, num_classes=K, generator=g)
        x_t = D.q_sample(x0, t, proc, K, generator=torch.Generator().manual_seed(t))  # the same draw
        Qbar = marginal_matrix(schedule, t, K)
        hat = torch.softmax(model(x_t, torch.full((3,), t)), -1).numpy()
        for b in range(3):
            expected = 0.0
            for i in range(L):
                post = hat[b, i] * Qbar[:K, x_t[b, i].item()]
                expected += -math.log(post[x0[b, i].item()] / post.sum())
            assert got[b].item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_inpaint_takes_a_model_without_a_config():
    """A denoiser with no configured size (an oracle, a table) inpaints maps of any rank >= 2."""
    from mdiff_lite.sampling import inpaint

    K, L = 3, 4
    proc = AbsorbingProcess(make_schedule("jsd", 6))
    model = TableDenoiser(K, L, 6, seed=1)
    known = torch.tensor([[0, 1, 2, 0]])
    keep = torch.tensor([True, False, False, True])
    y = inpaint(model, proc, known, keep, steps=3, generator=torch.Generator().manual_seed(0), progress=False)
    assert torch.equal(y[0, keep], known[0, keep]) and y.max() < K
