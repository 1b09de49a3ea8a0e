# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · The bound: what multinomial diffusion maximises
#
# A diffusion model cannot compute the likelihood $p(x_0)$ of its data directly: it would have to sum
# over every path $x_1, \dots, x_T$ the reverse process could have taken. It maximises a lower bound
# instead, and the same bound, in bits per dimension, is the number the paper reports. You will:
#
# 1. derive the bound (eq. 3 of Hoogeboom et al., 2021) from Jensen's inequality, and split it into
#    the posterior KLs of eq. 15, the decoder term of eq. 16 and a prior term;
# 2. build a **one-pixel world** (3 classes, 6 steps) where $\log p(x_0)$ can be computed exactly by
#    enumerating every path, and watch the bound hold for every denoiser and fall as the denoiser improves;
# 3. turn the bound into a training loss (eq. 17) and see why importance sampling of $t$ helps;
# 4. compare two decoders: eq. 16 with $\hat x_0$ as the paper writes it, and eq. 14 at $t = 1$ (the
#    official code's, and the package's), and what the choice does to the reported number.
#
# **Time:** the code runs in well under a minute on 2 CPU cores. How many minutes the reading and the exercises take has not been measured: no reader has been timed yet.
#
# ## The symbols of notebooks 03-07
#
# | symbol | what it is | where it comes from |
# |---|---|---|
# | $K$, $T$ | number of classes; number of diffusion steps | |
# | $x_0$ | a data point: one class per pixel (one-hot vectors in the math, class ids in code) | |
# | $x_t$, $t = 1..T$ | the data after $t$ steps of noise | eq. 11 |
# | $\beta_t$, $\alpha_t = 1 - \beta_t$ | the chance that step $t$ resamples a pixel, and that it does not | eq. 11 |
# | $\bar\alpha_t = \prod_{s \le t} \alpha_s$ | the chance that a pixel has never been resampled by step $t$ | eq. 12 |
# | $q(x_t \mid x_{t-1})$, $q(x_t \mid x_0)$ | one forward step; the forward marginal | eqs. 11, 12 |
# | $\theta_\text{post}(x_t, x_0)$ | the posterior $q(x_{t-1} \mid x_t, x_0)$, as a vector of $K$ probabilities | eq. 13 |
# | $\hat x_0$ | the denoiser's prediction of $x_0$ from $(x_t, t)$: $K$ probabilities per pixel | eq. 14 |
# | $p(x_{t-1} \mid x_t)$ | the model's reverse step, $\theta_\text{post}(x_t, \hat x_0)$; at $t = 1$ the **decoder** $p(x_0 \mid x_1)$ | eq. 14 |
# | $\ell_t$ | the bound's term at one draw of $x_t \sim q(x_t \mid x_0)$: the KL of eq. 15 for $t \ge 2$, the decoder's $-\log p(x_0 \mid x_1)$ for $t = 1$ (eq. 16); a random number | eqs. 15, 16 |
# | $L_t = \mathbb{E}_{q(x_t \mid x_0)}[\ell_t]$ | its expectation: a number for each $x_0$ and $t$ | |
# | $L_\text{prior}$ | $\mathrm{KL}(q(x_T \mid x_0) \,\|\, p(x_T))$, no parameters | |
# | $-(\text{eq. 3}) = \sum_{t=1}^T L_t + L_\text{prior}$ | the bound, in nats: $T + 1$ terms | eq. 3 |
# | all-T estimate | $\sum_{t=1}^T \ell_t + L_\text{prior}$, every $\ell_t$ at one draw of $x_t$: an unbiased estimate of the bound | |
# | bits per pixel | nats $/ (D \ln 2)$ with $D$ pixels (categorical dimensions, not one-hot entries) | |

# %% tags=["parameters"]
import os

SMOKE = os.environ.get("MDIFF_SMOKE", "0") == "1"
N_MC = 4_000 if SMOKE else 40_000        # examples per Monte Carlo estimate
N_REPEATS = 20 if SMOKE else 200         # repeated training-loss batches for the variance comparison

# %%
import itertools
import math

import matplotlib.pyplot as plt
import torch

from mdiff_lite import (
    ImportanceTimeSampler, UniformTimeSampler, categorical_kl, log_categorical, make_schedule,
    prior_kl, q_marginal, q_posterior, q_step, training_loss, vlb_terms,
)

torch.manual_seed(0)
F64 = torch.float64
LN2 = math.log(2)

# %% [markdown]
# ## Deriving eq. 3
#
# The model is a reverse Markov chain: draw $x_T$ from a uniform prior $p(x_T)$, then
# $x_{T-1}, \dots, x_0$ from learned steps $p(x_{t-1} \mid x_t)$ (eq. 14 of notebook 02). Its
# likelihood is a sum over all paths,
# $p(x_0) = \sum_{x_{1:T}} p(x_T) \prod_{t=1}^{T} p(x_{t-1} \mid x_t)$. Multiply and divide by
# the forward process $q(x_{1:T} \mid x_0) = \prod_t q(x_t \mid x_{t-1})$ and apply Jensen's
# inequality ($\log$ is concave, so $\log \mathbb{E} \ge \mathbb{E} \log$):
#
# $$\log p(x_0) = \log \mathbb{E}_{q(x_{1:T} \mid x_0)}\Big[\frac{p(x_{0:T})}{q(x_{1:T} \mid x_0)}\Big]
#   \;\ge\; \mathbb{E}_{q}\Big[\log \frac{p(x_{0:T})}{q(x_{1:T} \mid x_0)}\Big].$$
#
# The gap is $\mathrm{KL}\big(q(x_{1:T} \mid x_0) \,\|\, p(x_{1:T} \mid x_0)\big) \ge 0$: the bound
# is tight exactly when the forward process is the model's own posterior over paths.
#
# To make the right-hand side computable term by term, rewrite each forward step with Bayes as in
# notebook 02: by the Markov property $q(x_t \mid x_{t-1}) = q(x_t \mid x_{t-1}, x_0)
# = q(x_{t-1} \mid x_t, x_0)\, q(x_t \mid x_0) / q(x_{t-1} \mid x_0)$. For $t = 2, \dots, T$ the
# ratios $q(x_t \mid x_0)/q(x_{t-1} \mid x_0)$ telescope, leaving
#
# $$q(x_{1:T} \mid x_0) = q(x_T \mid x_0) \prod_{t=2}^{T} q(x_{t-1} \mid x_t, x_0).$$
#
# Divide $p(x_{0:T}) = p(x_T)\, p(x_0 \mid x_1) \prod_{t=2}^T p(x_{t-1} \mid x_t)$ by it, take logs and
# expectations; each ratio becomes a KL divergence (the expectation over $x_{t-1}$ given $x_t, x_0$
# is exactly the one in the KL):
#
# $$\log p(x_0) \;\ge\; \mathbb{E}_q\Big[\log p(x_0 \mid x_1) -
#   \mathrm{KL}\big(q(x_T \mid x_0) \,\|\, p(x_T)\big) -
#   \sum_{t=2}^{T} \mathrm{KL}\big(q(x_{t-1} \mid x_t, x_0) \,\|\, p(x_{t-1} \mid x_t)\big)\Big]. \tag{3}$$
#
# For multinomial diffusion every piece is a categorical distribution we already know:
#
# - **eq. 15**, the posterior KL: both sides are eq. 13, once with the true $x_0$, once with the
#   prediction $\hat x_0$: $\mathrm{KL} = \sum_k \theta_\text{post}(x_t, x_0)_k
#   \log\frac{\theta_\text{post}(x_t, x_0)_k}{\theta_\text{post}(x_t, \hat x_0)_k}$;
# - **eq. 16**, the decoder: $\log p(x_0 \mid x_1) = \sum_k x_{0,k} \log \hat x_{0,k}$, the
#   log-probability the decoder gives the true class at $t = 1$. The paper's $\hat x_0$ here is the
#   network's softmax itself; the package, like the official code, decodes with eq. 14 at $t = 1$
#   instead, $p(x_0 \mid x_1) = \theta_\text{post}(x_1, \hat x_0) \propto \hat x_0 \odot q(x_1 \mid x_0)$,
#   which is eq. 16 with those probabilities in the place of $\hat x_0$ (the section "Two decoders" below
#   says why);
# - **the prior term** $\mathrm{KL}(q(x_T \mid x_0) \,\|\, \text{uniform})$ has no parameters; it is
#   near 0 when $\bar\alpha_T \approx 0$.
#
# In the table's notation: $\ell_1 = -\log p(x_0 \mid x_1)$ and $\ell_t$ ($t \ge 2$) the eq. 15 KL, at one
# draw of $x_t$; $L_t$ is the expectation of $\ell_t$ over that draw, and
# $-(\text{eq. 3}) = \sum_{t=1}^T L_t + L_\text{prior}$, in nats.

# %% [markdown]
# ### The three pieces by hand
#
# A few numbers first, each checked against the package: eq. 15 as a sum, eq. 16 as a dot product,
# the prior term as a KL to the uniform distribution.

# %%
K = 3
schedule = make_schedule("linear", 6, beta_start=0.05, beta_end=0.5)
I = torch.eye(K, dtype=F64)
x0, x_t, t = I[0], I[1], 3
x0_hat = torch.tensor([0.5, 0.3, 0.2], dtype=F64)

true_post, model_post = q_posterior(x_t, x0, t, schedule), q_posterior(x_t, x0_hat, t, schedule)
kl_by_hand = (true_post * (true_post / model_post).log()).sum()          # eq. 15
log_decoder_by_hand = (x0 * x0_hat.log()).sum()                           # eq. 16
q_T, uniform = q_marginal(x0, schedule.T, schedule), torch.full((K,), 1 / K, dtype=F64)
prior_by_hand = (q_T * (q_T / uniform).log()).sum()                        # the prior term

torch.testing.assert_close(categorical_kl(true_post, model_post), kl_by_hand)
torch.testing.assert_close(log_categorical(x0, x0_hat), log_decoder_by_hand)
torch.testing.assert_close(prior_kl(torch.tensor([0]), schedule, K)[0], prior_by_hand)
print(f"eq. 15 KL = {kl_by_hand:.4f} nats, eq. 16 log p(x0|x1) = {log_decoder_by_hand:.4f} nats, "
      f"prior KL = {prior_by_hand:.4f} nats (alpha_bar_T = {schedule.alpha_bars[-1]:.3f})")

# %% [markdown]
# ## A one-pixel world where everything is exact
#
# One pixel, $K = 3$ classes, $T = 6$ steps of a short linear schedule that leaves
# $\bar\alpha_T \approx 0.13$ (so the prior term is not zero). The data distribution is
# $p_\text{data} = (0.6, 0.3, 0.1)$; its entropy is the best any model can do on average.
#
# A denoiser maps $(x_t, t)$ to $\hat x_0$. With one pixel, $x_t$ takes only $K$ values, so *any*
# denoiser is a table `x0_hat[t, i]`: the $\hat x_0$ it outputs when $x_t$ is class $i$. From such a
# table we build the model's reverse transition matrices, row $i$ being the distribution of $x_{t-1}$
# given $x_t = i$: eq. 14 at every $t$, which at $t = 1$ is the package's decoder
# $p(x_0 \mid x_1 = i) \propto \hat x_0 \odot q(x_1 = i \mid x_0)$. (`decoder="eq16"` builds the paper's
# $p(x_0 \mid x_1 = i) = \hat x_0$ instead, for the comparison at the end.)

# %%
p_data = torch.tensor([0.6, 0.3, 0.1], dtype=F64)
T = schedule.T
entropy_bits = -(p_data * p_data.log2()).sum().item()
print(f"{schedule}; data entropy {entropy_bits:.4f} bits")


def reverse_matrices(x0_hat, decoder="posterior"):
    """P[t][i, j] = p(x_{t-1} = j | x_t = i) for t = 1..T, from a table x0_hat[t, i] ([T + 1, K, K]).
    decoder: "posterior" (eq. 14 at t = 1: the official code's and the package's) or "eq16" (x0_hat)."""
    P = [None] + [q_posterior(I, x0_hat[t], t, schedule) for t in range(1, T + 1)]  # row i: x_t = class i
    if decoder == "eq16":
        P[1] = x0_hat[1]
    return P


# A denoiser to start with: a random table of probabilities.
x0_hat_random = torch.softmax(torch.randn(T + 1, K, K, dtype=F64, generator=torch.Generator().manual_seed(1)), -1)
P = reverse_matrices(x0_hat_random)

# %% [markdown]
# ### Exact $\log p(x_0)$ and eq. 3 by enumerating every path
#
# With $K = 3$ and $T = 6$ there are $3^6 = 729$ paths $x_{1:T}$. For each, compute the forward
# probability $q(x_{1:T} \mid x_0)$ and the model's joint $p(x_{0:T})$; then
# $p(x_0) = \sum_\text{paths} p(x_{0:T})$ and the bound is
# $\sum_\text{paths} q \cdot (\log p(x_{0:T}) - \log q)$, its definition, before any rewriting.

# %%
Q = [None] + [q_step(I, t, schedule).tolist() for t in range(1, T + 1)]  # Q[t][i][j] = q(x_t = j | x_{t-1} = i)
P_list = [None] + [P[t].tolist() for t in range(1, T + 1)]
log_px0_paths, elbo_paths = torch.zeros(K, dtype=F64), torch.zeros(K, dtype=F64)
for c in range(K):
    p_total, elbo = 0.0, 0.0
    for path in itertools.product(range(K), repeat=T):
        xs = (c,) + path  # xs[t] = x_t
        log_q = sum(math.log(Q[t][xs[t - 1]][xs[t]]) for t in range(1, T + 1))
        log_p = math.log(1 / K) + sum(math.log(P_list[t][xs[t]][xs[t - 1]]) for t in range(1, T + 1))
        p_total += math.exp(log_p)
        elbo += math.exp(log_q) * (log_p - log_q)
    log_px0_paths[c], elbo_paths[c] = math.log(p_total), elbo
for c in range(K):
    print(f"x_0 = {c}: log p(x_0) = {log_px0_paths[c]:.4f} nats >= eq. 3 = {elbo_paths[c]:.4f} nats "
          f"(gap {log_px0_paths[c] - elbo_paths[c]:.4f})")
assert (elbo_paths <= log_px0_paths).all()

# %% [markdown]
# The sum over paths is a chain of matrix products, which is how we compute it from now on: the
# distribution of $x_0$ under the model is $\text{uniform} \cdot P_T P_{T-1} \cdots P_1$.
#
# The bound in its KL form (eq. 3 with eqs. 15 and 16) needs only the $K$ values of $x_t$ at each
# step, weighted by $q(x_t \mid x_0)$ (eq. 12). `exact_terms` below returns, for each $x_0$, the
# expected terms in the layout the package uses: column 0 is $L_1$, column $t - 1$ is $L_t$, column
# $T$ the prior term.

# %%
def exact_log_px0(P):
    """log p(x_0 = c) for every c, summing over all paths with matrix products."""
    p = torch.full((K,), 1 / K, dtype=F64)
    for t in range(T, 0, -1):
        p = p @ P[t]
    return p.log()


def exact_terms(P):
    """Expected terms of -(eq. 3), [K (x_0), T + 1] nats: L_1, L_2 .. L_T, prior."""
    terms = torch.zeros(K, T + 1, dtype=F64)
    for t in range(1, T + 1):
        q_t = q_marginal(I, t, schedule)                           # [x_0, x_t]
        if t == 1:
            per_xt = -P[1].log().T                                 # [x_0, x_1]: -log p(x_0 | x_1)
        else:
            true_post = q_posterior(I[None, :, :], I[:, None, :], t, schedule)  # [x_0, x_t, x_{t-1}]
            per_xt = categorical_kl(true_post, P[t].expand(K, K, K))
        terms[:, t - 1] = (q_t * per_xt).sum(1)                    # the package's column for L_t
    terms[:, T] = prior_kl(torch.arange(K)[:, None], schedule, K)
    return terms


terms = exact_terms(P)
torch.testing.assert_close(exact_log_px0(P), log_px0_paths)
torch.testing.assert_close(-terms.sum(1), elbo_paths)
print("matrix products == path enumeration, and the KL form of eq. 3 == its definition, for every x_0")

# %% [markdown]
# ### The package's Monte Carlo estimate
#
# `vlb_terms(denoiser, x0, schedule)` estimates the same columns for a batch of data, drawing one
# $x_t \sim q(x_t \mid x_0)$ per example and step. Any function of $(x_t, t)$ that returns logits
# is a denoiser; here it looks the table up. Each column's average should match the exact
# expectation within a few standard errors.

# %%
log_table = x0_hat_random.log()
denoiser = lambda x_t, t: log_table[t, x_t]  # noqa: E731  (logits; the softmax gives back the table)
x0_batch = torch.multinomial(p_data, N_MC, replacement=True, generator=torch.Generator().manual_seed(2))
mc = vlb_terms(denoiser, x0_batch, schedule, num_classes=K, generator=torch.Generator().manual_seed(3))
mean, stderr = mc.mean(0), mc.std(0) / math.sqrt(N_MC)
expected = p_data @ terms  # averaged over the data
print("column:         " + "".join(f"{name:>9}" for name in ["L_1"] + [f"L_{t}" for t in range(2, T + 1)] + ["prior"]))
print("exact:          " + "".join(f"{v:9.4f}" for v in expected.tolist()))
print("vlb_terms mean: " + "".join(f"{v:9.4f}" for v in mean.tolist()))
print("standard error: " + "".join(f"{v:9.4f}" for v in stderr.tolist()))
assert ((mean - expected).abs() <= 5 * stderr + 1e-9).all()

# %% [markdown]
# ## The bound as the denoiser improves
#
# What is the *perfect* denoiser in this world? The best reverse step is the true one,
# $q(x_{t-1} \mid x_t)$, with $x_0$ unknown. Redo notebook 02's derivation without conditioning on
# $x_0$: $q(x_{t-1} \mid x_t) \propto q(x_t \mid x_{t-1})\, q(x_{t-1})$, and averaging eq. 12 over
# the data gives $q(x_{t-1}) = \bar\alpha_{t-1} p_\text{data} + (1 - \bar\alpha_{t-1})/K$. That is
# eq. 13 with $p_\text{data}$ in the place of $x_0$, so for $t \ge 2$ the perfect table is
# $\hat x_0 = p_\text{data}$, **whatever $x_t$ is** (notebook 02, exercise 2). The network does
# not need to "see" its own pixel, because eq. 13's likelihood bracket already adds that evidence.
# (With many pixels the same argument makes the ideal $\hat x_0$ of a pixel its prediction from the
# *other* pixels.) The decoder is eq. 14 at $t = 1$, so the same holds there: the perfect table is
# $p_\text{data}$ at every $t$, $t = 1$ included. (Had the decoder been eq. 16 with $\hat x_0$ used as
# is, the perfect $\hat x_0$ at $t = 1$ would have had to be the full posterior
# $q(x_0 \mid x_1) \propto p_\text{data} \odot q(x_1 \mid x_0)$: a different job from every other step.)
#
# Now interpolate from the know-nothing denoiser (uniform $\hat x_0$) to the perfect one,
# $\hat x_0^{(\lambda)} = (1 - \lambda)\,\text{uniform} + \lambda\, \hat x_0^\text{perfect}$, and
# compute, averaged over the data, the exact $-\log p(x_0)$ and the bound $-(\text{eq. 3})$, in bits.

# %%
x0_hat_perfect = p_data.expand(T + 1, K, K).clone()

lambdas = torch.linspace(0, 1, 21)
exact_bits, bound_bits = [], []
for lam in lambdas.tolist():
    P = reverse_matrices((1 - lam) / K + lam * x0_hat_perfect)
    exact_bits.append(-(p_data @ exact_log_px0(P)).item() / LN2)
    bound_bits.append((p_data @ exact_terms(P).sum(1)).item() / LN2)

# With the true reverse steps, eq. 3 falls short of log p_data(x_0) only through the uniform prior:
# on average by KL(q(x_T) || uniform), where q(x_T) is the data pushed through T steps (eq. 12).
q_xT = p_data @ q_marginal(I, T, schedule)
floor_bits = entropy_bits + categorical_kl(q_xT, torch.full((K,), 1 / K, dtype=F64)).item() / LN2
assert all(b >= e - 1e-12 for b, e in zip(bound_bits, exact_bits))
assert abs(bound_bits[-1] - floor_bits) < 1e-9

fig, ax = plt.subplots(figsize=(6.5, 3.8), layout="constrained")
ax.plot(lambdas, bound_bits, "o-", ms=3, label=r"bound: $-$(eq. 3), averaged over the data")
ax.plot(lambdas, exact_bits, "o-", ms=3, label=r"exact $-\log p(x_0)$, averaged over the data")
ax.axhline(entropy_bits, color="0.4", ls="--", lw=1)
ax.text(0.01, entropy_bits + 0.02, f"data entropy {entropy_bits:.3f} bits", color="0.3", fontsize=8)
ax.set_xlabel(r"$\lambda$ (0: uniform $\hat x_0$, 1: perfect $\hat x_0$)")
ax.set_ylabel("bits per pixel")
ax.set_title(f"one pixel, K = {K}, T = {T}: the bound holds for every denoiser", fontsize=10)
ax.legend(fontsize=8)
plt.show()
print(f"lambda = 0: exact {exact_bits[0]:.3f} bits, bound {bound_bits[0]:.3f} bits")
print(f"lambda = 1: exact {exact_bits[-1]:.3f} bits, bound {bound_bits[-1]:.3f} bits "
      f"= entropy {entropy_bits:.3f} + KL(q(x_T) || uniform) {floor_bits - entropy_bits:.3f}")

# %% [markdown]
# Three things to read off the figure:
#
# - the bound is never below the exact negative log-likelihood: eq. 3 is a lower bound on
#   $\log p(x_0)$, so its negative is an upper bound on the cost in bits;
# - a uniform $\hat x_0$ is exactly the uniform model, $\log_2 3 = 1.585$ bits, and its bound is tight: the
#   model is then the forward chain run backwards from uniformly random data, whose posterior over paths is
#   the forward process itself;
# - both fall as $\lambda$ grows, the gap between them opening in between; at $\lambda = 1$ the model's exact cost is close to the data entropy,
#   and the bound sits above the entropy only by $\mathrm{KL}(q(x_T) \,\|\, \text{uniform})$, where $q(x_T)$
#   is the data pushed through all $T$ steps; it is small here and vanishes when $\bar\alpha_T = 0$.
#
# Where does the bound spend its bits? Each term, exactly, for three denoisers of the family:

# %%
names = ["$L_1$"] + [f"$L_{t}$" for t in range(2, T + 1)] + ["$L_{prior}$"]
fig, ax = plt.subplots(figsize=(7, 3.2), layout="constrained")
per_lambda = {}
for i, lam in enumerate([0.0, 0.5, 1.0]):
    per_term = per_lambda[lam] = p_data @ exact_terms(reverse_matrices((1 - lam) / K + lam * x0_hat_perfect)) / LN2
    ax.bar(torch.arange(T + 1) + 0.27 * (i - 1), per_term, 0.27,
           label=f"λ = {lam:g}: sum {per_term.sum():.3f} bits")
ax.set_xticks(range(T + 1), names)
ax.set(ylabel="bits (averaged over the data)", title="The terms of the bound, one pixel, exact")
ax.legend(fontsize=8)
gain = per_lambda[0.0] - per_lambda[1.0]
print("what the perfect denoiser saves over the uniform one, per term (bits): "
      + ", ".join(f"{n.strip('$')} {g:.3f}" for n, g in zip(names, gain.tolist())))

# %% [markdown]
# The prior term does not depend on the denoiser. Every other term falls as the denoiser improves, most in
# the early and middle steps (the savings printed above), where $x_t$ still says much about $x_0$ and a good
# $\hat x_0$ can sharpen what it says; at the last steps the true posterior is close to the likelihood bracket
# alone and every $\hat x_0$ comes close to it. The decoder term $L_1$ is not small in this world: the
# short schedule resamples a pixel with probability $\beta_1 = 0.05$ at the first step already, so $x_1$ is
# often not $x_0$. (With the $T = 1000$ schedule of the later notebooks it is far smaller: "Two decoders" below.)

# %% [markdown]
# ## Training: eq. 17 and the choice of $t$
#
# Evaluating all $T$ terms for every example is expensive when $T = 1000$. Training instead draws one
# $t$ per example and uses an unbiased estimate of the whole sum: with $t$ uniform on $1..T$,
# $\mathbb{E}[T \cdot \ell_t] = \sum_t L_t$ (eq. 17), the expectation being over $t$ and the draw of $x_t$.
# More generally, with any $p(t) > 0$, and $\mathbb{E}$ over the data $x_0$ and the draw of $x_t$ too,
#
# $$\mathbb{E}\Big[\frac{\ell_t}{p(t)}\Big] = \sum_t \mathbb{E}[\ell_t], \qquad
# \mathrm{Var} = \sum_t \frac{\mathbb{E}[\ell_t^2]}{p(t)} - \Big(\sum_t \mathbb{E}[\ell_t]\Big)^2 .$$
#
# Minimising the variance over $p$ (a Lagrange multiplier for $\sum_t p(t) = 1$) gives
# $p(t) \propto \sqrt{\mathbb{E}[\ell_t^2]}$: spend the samples where the terms are large. Nichol &
# Dhariwal (2021, improved DDPM) estimate $\mathbb{E}[\ell_t^2]$ from the last 10 losses seen at each $t$
# and sample uniformly until every $t$ has 10; `ImportanceTimeSampler` does the same. (The official
# multinomial-diffusion code keeps an exponential moving average of $\ell_t^2$ instead and gives $t = 1$
# the weight of $t = 2$.) Here the optimum can be computed exactly.
# We use a half-trained denoiser ($\lambda = 0.5$), whose $L_t$ differ a lot across $t$.
#
# Each $\ell_t$ is a random variable through $x_0$ and $x_t$; its two moments follow from its value at
# each $(x_0, x_t)$, weighted by their joint probability, as in `exact_terms`.

# %%
x0_hat_half = 0.5 / K + 0.5 * x0_hat_perfect
P = reverse_matrices(x0_hat_half)
first, second = torch.zeros(T + 1, dtype=F64), torch.zeros(T + 1, dtype=F64)  # E[ell_t], E[ell_t^2], index t
for t in range(1, T + 1):
    q_t = p_data[:, None] * q_marginal(I, t, schedule)                    # joint of (x_0, x_t)
    if t == 1:
        per_xt = -P[1].log().T
    else:
        per_xt = categorical_kl(q_posterior(I[None, :, :], I[:, None, :], t, schedule), P[t].expand(K, K, K))
    first[t], second[t] = (q_t * per_xt).sum(), (q_t * per_xt**2).sum()
prior = (p_data @ prior_kl(torch.arange(K)[:, None], schedule, K)).item()
total = first.sum().item() + prior

p_uniform = torch.cat([torch.zeros(1, dtype=F64), torch.full((T,), 1 / T, dtype=F64)])  # p(t), index t
p_best = second.sqrt() / second.sqrt().sum()                                           # p_best[0] = 0
variance = {name: (second[1:] / p[1:]).sum().item() - first.sum().item() ** 2 for name, p in
            [("uniform", p_uniform), ("optimal", p_best)]}
print("t:          " + "".join(f"{t:>8}" for t in range(1, T + 1)))
print("E[ell_t]:   " + "".join(f"{v:8.4f}" for v in first[1:].tolist()))
print("optimal p:  " + "".join(f"{v:8.4f}" for v in p_best[1:].tolist()))
print(f"-(eq. 3) = {total:.4f} nats; one-sample standard deviation: uniform t {math.sqrt(variance['uniform']):.3f}, "
      f"optimal p(t) {math.sqrt(variance['optimal']):.3f} nats")

# %% [markdown]
# Now the package: `training_loss(denoiser, x0, schedule, t_sampler, reduction="none")` returns one
# estimate $\ell_t / p(t) + L_\text{prior}$ per example. Both samplers are unbiased: the batch means agree
# with the exact bound within their standard errors. But `ImportanceTimeSampler` knows $\mathbb{E}[\ell_t^2]$
# only from the last 10 losses it saw at each $t$, and here that misleads it about $t = 1$. The decoder
# term is almost always tiny ($x_1 = x_0$ with probability $\bar\alpha_1 + (1 - \bar\alpha_1)/K \approx 0.97$,
# and the decoder reads $x_1$ off) and rarely large (when $x_1$ was resampled to another class). Ten draws
# usually miss the large values, so the warmed-up sampler gives $t = 1$ a fraction of its optimal
# probability, and each rare large $\ell_1$ then counts $1/p(1)$ times. Compare the spreads:

# %%
log_table = x0_hat_half.log()
denoiser = lambda x_t, t: log_table[t, x_t]  # noqa: E731
g = torch.Generator().manual_seed(4)
samplers = {"uniform": UniformTimeSampler(T), "importance": ImportanceTimeSampler(T)}
warm_up = torch.multinomial(p_data, 200, replacement=True, generator=g)
training_loss(denoiser, warm_up, schedule, samplers["importance"], num_classes=K, generator=g)
warmed = samplers["importance"].probs()
print("importance sampler warmed up:", samplers["importance"].warmed_up, "| its p(t):", warmed[1:].numpy().round(3))
print(f"p(t = 1): {warmed[1]:.3f} from 10 losses per t, against the optimal {p_best[1]:.3f}")
assert warmed[1] < p_best[1] / 2

for name, sampler in samplers.items():
    x0_batch = torch.multinomial(p_data, N_MC, replacement=True, generator=g)
    estimates = training_loss(denoiser, x0_batch, schedule, sampler, num_classes=K, generator=g, reduction="none")
    mean, sd = estimates.mean().item(), estimates.std().item()
    print(f"{name:>10}: mean {mean:.4f} +- {sd / math.sqrt(N_MC):.4f} nats (exact {total:.4f}), "
          f"one-sample standard deviation {sd:.3f} nats")
    assert abs(mean - total) < 5 * sd / math.sqrt(N_MC)

# %% [markdown]
# In this tiny world the optimal $p(t)$ buys a modest gain over uniform $t$ (the spreads printed two
# cells up), and an estimated one can lose it, as it did here. The official code sidesteps the $t = 1$
# problem by giving $t = 1$ the weight of $t = 2$. At $T = 1000$ the terms can differ by orders of magnitude
# across $t$ (near $t = T$, where $x_t$ is almost pure noise, the true posterior is almost the
# likelihood bracket alone and any $\hat x_0$ matches it), and sampling in proportion to their size
# makes the estimate, and its gradient, less noisy. Less noise in the loss is not the whole story for
# training, though. On the toy maps a committed benchmark trained the same network twice for the same
# 2.5 CPU minutes, once with uniform and once with importance-sampled $t$, and scored both on the same
# 128 test maps:

# %%
import json
from pathlib import Path

rows = json.loads((Path("..") / "benchmarks" / "results" / "quality_cpu.json").read_text())["rows"]
print("python benchmarks/quality.py --budgets 2.5,10 --compare importance:2.5,lr2e-3:2.5 --digits-budget 0 --eval-maps 128")
print("(benchmarks/results/quality_cpu.json; the earlier fold-4 network of notebook 05, all-T estimates, ± one standard error)")
for r in rows:
    if r["budget_minutes"] == 2.5 and r["training"].startswith("lr 0.003"):
        print(f"  {r['training']:<22} {r['steps']:>5} steps   {r['test_bpd']:.4f} ± {r['stderr']:.4f} bits per pixel")

# %% [markdown]
# Importance sampling did no better (a little worse, by about two standard errors), so `fit` draws uniform $t$
# by default (stratified across the batch, notebook 05) and takes `t_sampler="importance"` on request. The
# official code also uses it to *report* the bound: one importance-sampled $t$ per example, averaged over 100
# repetitions of the test set, a Monte Carlo estimate. The package's evaluation computes all $T$ terms instead
# (`vlb_terms`), each at one draw of $x_t$: the **all-T estimate**, which has no sampling noise from $t$
# but is still an estimate (unbiased) of the bound, not the bound itself.

# %% [markdown]
# ## Two decoders: eq. 16 with $\hat x_0$, and eq. 14 at $t = 1$
#
# The paper's eq. 16 uses the network's $\hat x_0$ as the decoder. The official code does not: it applies
# eq. 13 at $t = 1$ with $\hat x_0$ plugged in (notebook 02), and so does `mdiff_lite`:
#
# $$p_\text{posterior}(x_0 \mid x_1) \propto \hat x_0 \odot \Big(\alpha_1 x_1 + \frac{1 - \alpha_1}{K}\Big),
# \qquad\text{versus}\qquad p_\text{eq. 16}(x_0 \mid x_1) = \hat x_0 .$$
#
# Both are normalised distributions over $x_0$, so both make eq. 3 a valid bound; they are two
# different models. The difference is what the network must do. In the posterior form the likelihood
# bracket, which at $t = 1$ is almost one-hot on $x_1$ (since $\alpha_1 \approx 1$), does the work:
# the $\hat x_0$ that is perfect for $t \ge 2$ ($p_\text{data}$ here, a prediction that ignores
# the pixel's own value) is perfect at $t = 1$ too. Eq. 16 with $\hat x_0$ instead asks the network itself
# to output the sharp posterior $q(x_0 \mid x_1)$ at $t = 1$, a different job from every other step.
#
# Compare the decoder term $L_1$ in bits per pixel for a long schedule (hoogeboom-cosine,
# $T = 1000$, $K = 8$, as in the paper's segmentation experiments) and three denoisers: uniform,
# the one that is perfect for $t \ge 2$, and the sharp posterior.

# %%
K8, long_schedule = 8, make_schedule("hoogeboom-cosine", 1000)
I8 = torch.eye(K8, dtype=F64)
p_data8 = torch.softmax(torch.linspace(2, -2, K8, dtype=F64), 0)
q_x1 = q_marginal(I8, 1, long_schedule)                       # [x_0, x_1]
sharp = p_data8[:, None] * q_x1
sharp = (sharp / sharp.sum(0)).T                               # [x_1, x_0]: q(x_0 | x_1)
candidates = {"uniform": torch.full((K8, K8), 1 / K8, dtype=F64),
              "p_data (perfect for t >= 2)": p_data8.expand(K8, K8),
              "q(x_0 | x_1) (sharp)": sharp}
entropy8_bits = -(p_data8 * p_data8.log2()).sum().item()
print(f"alpha_1 = {long_schedule.alphas[1].item():.7f}; data entropy {entropy8_bits:.5f} bits; "
      "decoder term L_1 in bits per pixel:")
print(f"{'x0_hat at t = 1':<30}{'eq. 16':>10}{'posterior':>12}")
x1_onehot = I8[:, None, :].expand(K8, K8, K8)  # [x_1, x_0, K]: x_1 one-hot, repeated for each x_0
costs = {}
for name, table in candidates.items():
    # eq. 16: log p(x_0 | x_1) = log x0_hat[x_1, x_0]; posterior: eq. 13 at t = 1 with x0_hat.
    eq16 = log_categorical(I8[None, :, :], table[:, None, :])                    # [x_1, x_0]
    posterior = log_categorical(I8[None, :, :], q_posterior(x1_onehot, table[:, None, :], 1, long_schedule))
    cost = {k: -(p_data8[None, :] * q_x1.T * v).sum().item() / LN2 for k, v in [("eq16", eq16), ("posterior", posterior)]}
    print(f"{name:<30}{cost['eq16']:>10.5f}{cost['posterior']:>12.5f}")
    costs[name] = cost

assert abs(costs["uniform"]["eq16"] - math.log2(K8)) < 1e-12                  # log2 8 = 3 bits, whatever x_1 is
assert abs(costs["p_data (perfect for t >= 2)"]["eq16"] - entropy8_bits) < 1e-12  # cross-entropy of p_data with itself
assert all(cost["posterior"] < 1e-3 for cost in costs.values())                     # the posterior form: nearly free

# %% [markdown]
# With the posterior-form decoder, $L_1$ is nearly free for every denoiser, even a uniform one (below
# $10^{-3}$ bits in all three rows): $x_1$ almost always equals $x_0$ and the decoder reads it off.
# With eq. 16, $L_1$ is the cross-entropy of the network's softmax: a uniform one pays exactly
# $\log_2 8 = 3$ bits, and a network that predicts well for $t \ge 2$ (the middle row) pays the
# full entropy of the data at $t = 1$. Only a network that is sharp at $t = 1$ gets eq. 16 down
# to the same value. (The last row also shows the converse: the posterior form with the sharp
# $\hat x_0$ counts the evidence of $x_1$ twice and does slightly worse. Each decoder has its own ideal
# $\hat x_0$.)
#
# **Why the package decodes with eq. 14.** With it, $\hat x_0$ means the same thing at every $t$: a
# prediction of each pixel from the *other* pixels, the pixel's own evidence multiplied in by eq. 14.
# The network never has to switch jobs at $t = 1$, and a sampler that jumps from any $t$ straight to
# $x_0$ (notebook 05) draws from the same formula as every other step. Eq. 16 holds as written, with the
# decoder's probabilities in the place of $\hat x_0$.
#
# **What this does to reported numbers.** Bounds from different decoders are both valid, but they are
# not comparable term by term: a bound with the posterior-form decoder contains an almost-zero decoder
# term, one with eq. 16 and an unsharp network a large one (up to $\log_2 K$ bits per pixel, the first
# row). The package's bounds and the official code's (0.305 bits per pixel on Cityscapes) use the
# posterior form; when comparing with other numbers, ask which decoder and which estimator produced each.

# %% [markdown]
# ## Summary
#
# - Eq. 3 is Jensen's inequality applied to the sum over paths; the Markov property and Bayes turn it
#   into a decoder term (eq. 16), one posterior KL per step (eq. 15) and a prior term. Its gap is the KL
#   from the forward process to the model's posterior over paths.
# - In a one-pixel world, $\log p(x_0)$ is a sum over $K^T$ paths, or a chain of $T$ matrix products;
#   the bound held for every denoiser and fell as the denoiser improved, reaching the data entropy
#   plus $\mathrm{KL}(q(x_T) \,\|\, \text{uniform})$ at the perfect one.
# - The perfect $\hat x_0$ is a prediction that leaves the pixel's own evidence to eq. 13. Decoding with
#   eq. 14 at $t = 1$ (the official code's and the package's choice) keeps that meaning at $t = 1$ and
#   makes $L_1$ almost free; eq. 16 with $\hat x_0$ itself wants the full, sharp posterior there. Both
#   decoders give valid bounds, but different numbers.
# - Training (eq. 17) draws one $t$ per example; $L_t / p(t)$ is unbiased for any $p(t) > 0$, and
#   $p(t) \propto \sqrt{\mathbb{E}[\ell_t^2]}$ minimises its variance.
#
# In the package: `categorical_kl` (eq. 15), `log_categorical` (eq. 16), `prior_kl`, `vlb_terms` (all
# terms, for evaluation), `training_loss` (eq. 17), `UniformTimeSampler`, `ImportanceTimeSampler`.
# Notebook 05 trains a real denoiser with them.

# %% [markdown]
# ## Exercises
#
# **Exercise 1.** In the one-pixel world above, the denoiser that outputs $\hat x_0 = p_\text{data}$ at
# every $t$ is perfect with the package's decoder. How many bits does its bound cost on average if the
# decoder is eq. 16 with $\hat x_0$ used as is? (Compute it with `reverse_matrices(..., decoder="eq16")` and
# `exact_terms`.)
#
# **Exercise 2.** Which schedule would make the bound of the perfect denoiser equal the data entropy
# exactly, in this one-pixel world, keeping $T = 6$? Set `answer_2` to a `Schedule` with `T = 6`; the check
# computes the gap.
#
# **Exercise 3 (the one-pixel oracle for eq. 16).** With the eq. 16 decoder, which table `x0_hat[t, i]`
# makes the bound as small as it can be, that is, the data entropy plus $\mathrm{KL}(q(x_T) \,\|\, \text{uniform})$
# (`floor_bits` above)? Build it as a `[T + 1, K, K]` tensor (row `i` of `x0_hat[t]` is the $\hat x_0$ for
# $x_t = i$); the check runs it through `reverse_matrices(..., decoder="eq16")`.

# %%
answer_1 = None  # bits
answer_2 = None  # a Schedule with T = 6
answer_3 = None  # a [T + 1, K, K] table of x0_hat

# %%
from mdiff_lite.exercises import check

P_check = reverse_matrices(p_data.expand(T + 1, K, K), decoder="eq16")
check("exercise 1", answer_1, (p_data @ exact_terms(P_check).sum(1)).item() / LN2, tol=1e-3)


def gap_is_zero(schedule_6):
    if getattr(schedule_6, "T", None) != 6:
        return f"keep T = 6 (this has T = {getattr(schedule_6, 'T', None)})"
    q_xT = p_data @ q_marginal(I, 6, schedule_6)
    gap = categorical_kl(q_xT, torch.full((K,), 1 / K, dtype=F64)).item()
    return True if gap < 1e-12 else f"KL(q(x_T) || uniform) = {gap:.4f} nats"


def reaches_the_floor(table):
    table = torch.as_tensor(table, dtype=F64)
    if table.shape != (T + 1, K, K):
        return f"the table must have shape {(T + 1, K, K)}, got {tuple(table.shape)}"
    bits = (p_data @ exact_terms(reverse_matrices(table, decoder="eq16")).sum(1)).item() / LN2
    return True if abs(bits - floor_bits) < 1e-9 else f"its bound is {bits:.4f} bits, the floor {floor_bits:.4f}"


check("exercise 2", answer_2, ok=gap_is_zero)
check("exercise 3", answer_3, ok=reaches_the_floor)

# %% [markdown]
# <details><summary>Solution 1</summary>
#
# ```python
# P_check = reverse_matrices(p_data.expand(T + 1, K, K), decoder="eq16")
# answer_1 = (p_data @ exact_terms(P_check).sum(1)).item() / LN2
# ```
#
# The steps $t \ge 2$ are as good as before; the decoder now ignores $x_1$ and pays the data's whole
# entropy at $t = 1$ (the "Two decoders" section shows the same on $K = 8$).
# </details>
#
# <details><summary>Solution 2</summary>
#
# Any schedule with $\bar\alpha_T = 0$: then $q(x_T \mid x_0)$ is uniform whatever $x_0$ is, and the prior term
# vanishes. For example `answer_2 = make_schedule("jsd", 6)` ($\bar\alpha_t = 1 - t/T$), or a linear one whose
# last $\beta$ is 1.
# </details>
#
# <details><summary>Solution 3</summary>
#
# At $t \ge 2$ the perfect table is $p_\text{data}$ as before. At $t = 1$ the eq. 16 decoder *is* the table, so it
# must be the true posterior $q(x_0 \mid x_1 = i) \propto p_\text{data} \odot q(x_1 = i \mid x_0)$:
#
# ```python
# answer_3 = p_data.expand(T + 1, K, K).clone()
# joint = p_data[:, None] * q_marginal(I, 1, schedule)      # [x_0, x_1]
# answer_3[1] = (joint / joint.sum(0)).T                     # row i: q(x_0 | x_1 = i)
# ```
#
# Then every reverse step is the true one and the bound reaches the floor: the same network must do a
# different job at $t = 1$ than at every other step, which is why the package decodes with eq. 14.
# </details>
