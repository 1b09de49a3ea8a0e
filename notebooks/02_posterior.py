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
# # 02 · The posterior: one step back
#
# Notebook 01 ran the noise forward. To generate data we must run it backwards, and the backward step
# the model will learn is built from one exact formula: the distribution of $x_{t-1}$ when both the
# noisy $x_t$ and the clean $x_0$ are known (eq. 13 of Hoogeboom et al., 2021). You will:
#
# 1. derive eq. 13 from Bayes' rule and the Markov property, including the step that confuses
#    readers of the official code (a likelihood in which $x_t$ takes the place of $x_{t-1}$);
# 2. verify it by enumerating every case, and by simulation;
# 3. see why the step needs a *symmetric* transition matrix, with a counterexample;
# 4. plug a predicted $\hat x_0$ into it (eq. 14, the model's reverse step) and see why that always
#    gives valid probabilities, and what $\hat x_0$ really does there;
# 5. (optional) jump back several steps at once with the skip posterior $q(x_s \mid x_t, x_0)$.
#
# **Time:** about 25 minutes of reading; the code runs in a few seconds.

# %% tags=["parameters"]
import os

SMOKE = os.environ.get("MDIFF_SMOKE", "0") == "1"
N_DRAWS = 40_000 if SMOKE else 400_000  # simulated chains in the Monte Carlo check

# %%
import itertools

import matplotlib.pyplot as plt
import torch

from mdiff_lite import make_schedule, one_hot, q_marginal, q_posterior, q_posterior_skip, q_sample, q_step
from mdiff_lite.diffusion import log_q_posterior

torch.manual_seed(0)
F64 = torch.float64

# %% [markdown]
# ## Deriving eq. 13
#
# We want $q(x_{t-1} \mid x_t, x_0)$: we watched the chain start at $x_0$, we see where it is at
# step $t$, and we ask where it was one step earlier. Bayes' rule, with $x_0$ kept as a condition
# throughout, gives
#
# $$q(x_{t-1} \mid x_t, x_0) = \frac{q(x_t \mid x_{t-1}, x_0)\; q(x_{t-1} \mid x_0)}{q(x_t \mid x_0)}.$$
#
# Three facts turn this into a formula.
#
# 1. **Markov property.** Given $x_{t-1}$, the step to $x_t$ is a fresh coin flip that does not
#    look at $x_0$: $q(x_t \mid x_{t-1}, x_0) = q(x_t \mid x_{t-1})$, which is eq. 11.
# 2. **The prior on $x_{t-1}$** is eq. 12 at step $t - 1$:
#    $q(x_{t-1} \mid x_0) = \mathcal{C}(x_{t-1} \mid \bar\alpha_{t-1} x_0 + (1 - \bar\alpha_{t-1})/K)$.
# 3. **The denominator** $q(x_t \mid x_0)$ does not depend on $x_{t-1}$. We need the right-hand side
#    as a function of $x_{t-1}$ only (a vector over the $K$ values $x_{t-1}$ can take), so the
#    denominator is just the constant that makes that vector sum to 1: compute the numerator for all
#    $K$ values and normalise.
#
# **The confusing step.** Eq. 11 was written as a distribution over $x_t$ for a given $x_{t-1}$.
# In the numerator it is needed the other way round: $x_t$ is observed, and we need its probability
# for each candidate value $j$ of $x_{t-1}$, i.e. the **column** $x_t$ of $Q_t$, not a row:
#
# $$q(x_t \mid x_{t-1} = j) = [Q_t]_{j,\,x_t} = \alpha_t\, [j = x_t] + \frac{1 - \alpha_t}{K}.$$
#
# As a vector over $j$ this is $\alpha_t x_t + (1 - \alpha_t)/K$: eq. 11's formula with $x_t$
# written where $x_{t-1}$ was. That is legitimate only because $Q_t$ is **symmetric**: moving from
# class $j$ to class $i$ is as likely as moving from $i$ to $j$, so column $x_t$ equals row $x_t$.
# Putting the pieces together gives eq. 13:
#
# $$q(x_{t-1} \mid x_t, x_0) = \mathcal{C}\big(x_{t-1} \mid \theta_\text{post}(x_t, x_0)\big),\qquad
# \tilde\theta = \Big[\alpha_t x_t + \frac{1 - \alpha_t}{K}\Big] \odot
#                \Big[\bar\alpha_{t-1} x_0 + \frac{1 - \bar\alpha_{t-1}}{K}\Big],\qquad
# \theta_\text{post} = \frac{\tilde\theta}{\sum_k \tilde\theta_k}. \tag{13}$$
#
# The first bracket is the **likelihood** of the observation $x_t$ for each candidate $x_{t-1}$, the
# second the **prior** over $x_{t-1}$ given $x_0$; $\odot$ multiplies entry by entry.

# %% [markdown]
# ## Verifying eq. 13 by enumeration
#
# An independent check needs nothing but the definition of conditional probability. For a fixed
# $x_0 = c$, the joint probability of $(x_{t-1} = j, x_t = i)$ is
# $[\bar Q_{t-1}]_{c, j}\, [Q_t]_{j, i}$, where $\bar Q_{t-1} = Q_1 \cdots Q_{t-1}$ is the product
# of the one-step matrices (notebook 01), built here by multiplying them, not from eq. 12.
# Conditioning on $x_t = i$ means taking column $i$ of that joint table and dividing by its sum.
# Below: eq. 13 by hand (a few visible lines) against the table, for every $t$, every $x_0$ and
# every $x_t$ of a 10-step schedule with $K = 4$.

# %%
K = 4
schedule = make_schedule("hoogeboom-cosine", 10)
I, ones = torch.eye(K, dtype=F64), torch.ones(K, K, dtype=F64)

worst = 0.0
Q_bar_prev = I.clone()  # Q_1 ... Q_{t-1}, the empty product at t = 1
for t in range(1, schedule.T + 1):
    alpha, abar_prev = schedule.alphas[t].item(), schedule.alpha_bars[t - 1].item()
    Q_t = alpha * I + (1 - alpha) / K * ones               # eq. 11 as a matrix
    for c, i in itertools.product(range(K), range(K)):
        joint = Q_bar_prev[c, :] * Q_t[:, i]                 # q(x_{t-1} = j, x_t = i | x_0 = c), all j
        by_enumeration = joint / joint.sum()
        x_t, x0 = I[i], I[c]
        theta = (alpha * x_t + (1 - alpha) / K) * (abar_prev * x0 + (1 - abar_prev) / K)  # eq. 13
        by_formula = theta / theta.sum()
        torch.testing.assert_close(by_formula, by_enumeration)
        torch.testing.assert_close(q_posterior(x_t, x0, t, schedule), by_formula)
        worst = max(worst, (by_formula - by_enumeration).abs().max().item())
    Q_bar_prev = Q_bar_prev @ Q_t
print(f"eq. 13 == Bayes by enumeration == q_posterior for all t, x_0, x_t (largest difference {worst:.1e})")

# %% [markdown]
# And by simulation, which checks the story rather than the algebra: start many chains at
# $x_0 = 0$, draw $x_{t-1}$ from eq. 12, take one more noise step with a coin, keep the chains that
# landed on $x_t = 1$, and count where they were at $t - 1$.

# %%
t, c, i = 6, 0, 1
alpha = schedule.alphas[t].item()
x_prev = q_sample(torch.full((N_DRAWS,), c), t - 1, schedule, K)
resample = torch.rand(N_DRAWS, dtype=F64) < 1 - alpha
x_t = torch.where(resample, torch.randint(0, K, (N_DRAWS,)), x_prev)
kept = x_prev[x_t == i]
frequencies = torch.bincount(kept, minlength=K).double() / len(kept)
posterior = q_posterior(I[i], I[c], t, schedule)
print(f"{len(kept):,} chains with x_t = {i} (t = {t}, x_0 = {c})")
print("where they were at t - 1:", frequencies.numpy().round(4))
print("eq. 13:                  ", posterior.numpy().round(4))
assert ((frequencies - posterior).abs() < 5 * torch.sqrt(posterior * (1 - posterior) / len(kept))).all()

# %% [markdown]
# ## Why the symmetry matters: a counterexample
#
# Suppose the noise resampled classes from a **non-uniform** distribution $m$ instead of the uniform
# one: $Q_t = \alpha_t I + (1 - \alpha_t)\, \mathbf{1} m^\top$ (each row is
# $\alpha_t x_{t-1} + (1 - \alpha_t) m$). Rows still sum to 1, the forward process is still a fine
# Markov chain, but $Q_t$ is no longer symmetric. Copying eq. 11's row formula with $x_t$ in place
# of $x_{t-1}$ now gives the wrong likelihood. The right one is the column $x_t = i$ of $Q_t$, as a
# vector over the candidates $j$ for $x_{t-1}$: $q(x_t = i \mid x_{t-1} = j) = \alpha_t [j = i] +
# (1 - \alpha_t)\, m_i$, i.e. $\alpha_t e_i + (1 - \alpha_t)\, m_i \mathbf{1}$, the asymmetric
# version of eq. 13's first bracket. With $m = \mathbf{1}/K$ it is that bracket again.

# %%
m = torch.tensor([0.7, 0.1, 0.1, 0.1], dtype=F64)
alpha, abar_prev = 0.6, 0.5
Q_t = alpha * I + (1 - alpha) * torch.ones(K, 1, dtype=F64) * m        # row j: alpha e_j + (1 - alpha) m
Q_bar_prev = abar_prev * I + (1 - abar_prev) * torch.ones(K, 1, dtype=F64) * m  # these steps compose as in notebook 01
print("symmetric:", torch.equal(Q_t, Q_t.T))
c, i = 0, 1
joint = Q_bar_prev[c] * Q_t[:, i]                           # q(x_{t-1} = j, x_t = i | x_0 = c), all j
by_enumeration = joint / joint.sum()
prior = Q_bar_prev[c]                                       # q(x_{t-1} | x_0 = c)
column = (alpha * I[i] + (1 - alpha) * m[i]) * prior        # alpha e_i + (1 - alpha) m_i 1: correct
row = (alpha * I[i] + (1 - alpha) * m) * prior              # "eq. 11 with x_t in place of x_{t-1}": wrong here
print("Bayes by enumeration:", by_enumeration.numpy().round(4))
print("column (correct):    ", (column / column.sum()).numpy().round(4))
print("row (wrong):         ", (row / row.sum()).numpy().round(4))
torch.testing.assert_close(column / column.sum(), by_enumeration)
assert not torch.allclose(row / row.sum(), by_enumeration)

# %% [markdown]
# With uniform resampling ($m = \mathbf{1}/K$) the row and the column coincide, and eq. 13 as written
# in the paper is right. Other discrete diffusions (D3PM's absorbing "mask" state, for one) have
# asymmetric matrices, and their posteriors must use the column $Q_t[:, x_t]$ explicitly.

# %% [markdown]
# ## What the posterior looks like
#
# Fix $x_0$ and look at $\theta_\text{post}$ across all $t$ of a 1000-step schedule. Two cases:
#
# - $x_t = x_0$: the class is most likely untouched, so $x_{t-1} = x_0$ with high probability
#   (until the last few steps, where $\bar\alpha_{t-1}$ is near 0 and $\beta_t$ near 1, so that
#   neither bracket says much).
# - $x_t \ne x_0$: the class was resampled at some step up to $t$. Was it first resampled at step
#   $t$ (then $x_{t-1} = x_0$), or earlier (then most likely $x_{t-1} = x_t$)? At $t = 1$ it can only have
#   been step 1, so $x_0 = x_{t-1}$ for certain: $q(x_0 \mid x_1, x_0)$ is $x_0$ itself, since
#   $\bar\alpha_0 = 1$ makes the prior bracket one-hot.
#
# `q_posterior` accepts a tensor of times and broadcasts: one call gives the whole curve.

# %%
schedule = make_schedule("hoogeboom-cosine", 1000)
K8 = 8
x0 = one_hot(torch.tensor(0), K8, F64)
ts = torch.arange(1, schedule.T + 1)
fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), layout="constrained", sharey=True)
for ax, i in zip(axes, (0, 1)):
    post = q_posterior(one_hot(torch.tensor(i), K8, F64), x0, ts, schedule)  # [T, K8]
    ax.semilogx(ts, post[:, 0], color="C0", label=r"$x_{t-1} = x_0$")
    if i != 0:
        ax.semilogx(ts, post[:, i], color="C1", label=r"$x_{t-1} = x_t$")
    ax.semilogx(ts, post[:, 2], color="C2", label=r"$x_{t-1}$ = a given third class")
    ax.set_xlabel("step t (log scale)")
    ax.set_title(f"$x_0$ = class 0, $x_t$ = class {i} (K = {K8}, hoogeboom-cosine)", fontsize=10)
    ax.legend(fontsize=8)
axes[0].set_ylabel(r"$q(x_{t-1} \mid x_t, x_0)$")
plt.show()
torch.testing.assert_close(q_posterior(one_hot(torch.tensor(1), K8, F64), x0, 1, schedule), x0)

# %% [markdown]
# ## Eq. 14: the model's reverse step
#
# At generation time $x_0$ is unknown; that is the point. The paper's model replaces it with a
# prediction: a network $\mu$ reads $x_t$ and $t$ and outputs a probability vector
# $\hat x_0 = \mu(x_t, t)$ (a softmax), and the reverse step is eq. 13 with $\hat x_0$ plugged in:
#
# $$p(x_{t-1} \mid x_t) = \mathcal{C}\big(x_{t-1} \mid \theta_\text{post}(x_t, \hat x_0)\big),
# \qquad p(x_0 \mid x_1) = \mathcal{C}(x_0 \mid \hat x_0). \tag{14}$$
#
# **Why this is always a valid distribution.** Both brackets of $\tilde\theta$ are non-negative, since
# $\hat x_0 \ge 0$. The likelihood bracket is at least $(1 - \alpha_t)/K > 0$ everywhere (every
# $\beta_t > 0$), and the prior bracket $\bar\alpha_{t-1}\hat x_0 + (1 - \bar\alpha_{t-1})/K$ sums
# to 1, so it has a positive entry. Hence $\sum_k \tilde\theta_k > 0$, the division is defined, and
# $\theta_\text{post}$ is non-negative and sums to 1, whatever the network outputs. No constraint
# on the network is needed beyond a softmax.
#
# **What $\hat x_0$ does there.** $\tilde\theta$ is affine in its second argument (the prior
# bracket is $\bar\alpha_{t-1} \hat x_0$ plus a constant), and an affine map preserves averages whose
# weights sum to 1. Since $\hat x_0 = \sum_c \hat x_{0,c}\, e_c$, where $e_c$ is the one-hot vector
# of class $c$, and $\sum_c \hat x_{0,c} = 1$, this gives
# $\tilde\theta(x_t, \hat x_0) = \sum_c \hat x_{0,c}\, \tilde\theta(x_t, e_c)$ (without the sum
# to 1, the constant part would be counted the wrong number of times). Each $\tilde\theta(x_t, e_c)$
# sums to $q(x_t \mid x_0 = c)$ (the normaliser of eq. 13). Normalising therefore gives a **mixture of exact posteriors**:
#
# $$\theta_\text{post}(x_t, \hat x_0) = \sum_c w_c\, \theta_\text{post}(x_t, e_c), \qquad
# w_c \propto \hat x_{0,c}\; q(x_t \mid x_0 = c).$$
#
# The weights are $\hat x_0$ times the likelihood of the observed $x_t$ under each candidate $x_0$,
# Bayes' rule once more. So in eq. 14 $\hat x_0$ acts like a *prior* over $x_0$, and the formula
# itself adds the evidence that $x_t$ carries about its own pixel. Keep this in mind for notebook 03.
# First by hand, then the identity, then the package:

# %%
schedule = make_schedule("hoogeboom-cosine", 50)
t = 20  # K = 4 and I = eye(4) from the enumeration above
alpha, abar_prev = schedule.alphas[t].item(), schedule.alpha_bars[t - 1].item()
x_t = one_hot(torch.tensor(2), K, F64)
x0_hat = torch.softmax(torch.tensor([1.5, -0.3, 0.2, 0.9], dtype=F64), 0)

theta = (alpha * x_t + (1 - alpha) / K) * (abar_prev * x0_hat + (1 - abar_prev) / K)
p_reverse = theta / theta.sum()
print("p(x_{t-1} | x_t), eq. 14:", p_reverse.numpy().round(4), " sum =", p_reverse.sum().item())

exact = torch.stack([q_posterior(x_t, I[c], t, schedule) for c in range(K)])  # row c: theta_post(x_t, e_c)
w = x0_hat * q_marginal(I, t, schedule)[:, 2]                                 # x0_hat_c q(x_t = 2 | x_0 = c)
torch.testing.assert_close(p_reverse, (w / w.sum()) @ exact)
torch.testing.assert_close(q_posterior(x_t, x0_hat, t, schedule), p_reverse)
print("eq. 14 == mixture of exact posteriors weighted by x0_hat * likelihood == q_posterior")

# %% [markdown]
# The extreme cases show the validity argument at work: a network that outputs a uniform
# $\hat x_0$ still gives a proper distribution (the posterior under "no idea what $x_0$ was"), and so
# does a confidently wrong one-hot $\hat x_0$ that disagrees with $x_t$. At $t = 1$ the prior bracket
# is $\hat x_0$ itself, so eq. 13 with $\hat x_0$ at $t = 1$ is
# $\hat x_0 \odot (\alpha_1 x_1 + (1 - \alpha_1)/K)$, normalised: **not** the paper's $p(x_0 \mid x_1) =
# \hat x_0$ (eqs. 14 and 16). The official code uses the former as its decoder, and so
# does `mdiff_lite`: then $\hat x_0$ means the same at every $t$, the pixel's own evidence always
# multiplied in by eq. 14. Notebook 03 shows what that changes.

# %%
for name, guess in [("uniform", torch.full((K,), 1 / K, dtype=F64)), ("confidently wrong", I[0])]:
    p = q_posterior(x_t, guess, t, schedule)
    print(f"x0_hat {name:<18} -> {p.numpy().round(4)}  (min {p.min().item():.2e}, sum {p.sum().item():.6f})")
alpha_1 = schedule.alphas[1].item()
decoder = x0_hat * (alpha_1 * x_t + (1 - alpha_1) / K)
torch.testing.assert_close(q_posterior(x_t, x0_hat, 1, schedule), decoder / decoder.sum())
print("t = 1, eq. 13 with x0_hat:", (decoder / decoder.sum()).numpy().round(5), " vs x0_hat:", x0_hat.numpy().round(4))

# %% [markdown]
# ## Log space, for training
#
# Training evaluates eq. 13 millions of times in float32, where the smallest $\beta_t$ of long
# schedules ($2 \times 10^{-5}$ for hoogeboom-cosine at $T = 1000$, $5 \times 10^{-6}$ at the
# paper's $T = 4000$) would lose most of their digits next to 1. The package therefore also
# has a log-space version, `log_q_posterior`, which takes class indices for $x_t$ and either class
# indices or log-probabilities for $x_0$. It agrees with the probability-space formula:

# %%
ts = torch.arange(2, schedule.T + 1)
x_t_idx, x0_idx = torch.full(ts.shape, 2), torch.zeros_like(ts)  # class indices, one per t
torch.testing.assert_close(log_q_posterior(x_t_idx, x0_idx, ts, schedule, num_classes=K, dtype=F64).exp(),
                           q_posterior(I[2], I[0], ts, schedule))
torch.testing.assert_close(log_q_posterior(x_t_idx, x0_hat.log().expand(len(ts), K), ts, schedule).exp(),
                           q_posterior(I[2], x0_hat, ts, schedule))
print("log_q_posterior agrees with q_posterior, with x_0 and with x0_hat")

# %% [markdown]
# ## Optional: jumping back several steps, $q(x_s \mid x_t, x_0)$
#
# Notebook 01 showed that uniform-resampling steps compose: $Q_{s+1} \cdots Q_t$ is the single step
# with keep-probability $\bar\alpha_t / \bar\alpha_s$. The derivation of eq. 13 then goes through
# unchanged for any $s < t$, with that ratio in place of $\alpha_t$ and $\bar\alpha_s$ in place of
# $\bar\alpha_{t-1}$:
#
# $$q(x_s \mid x_t, x_0) \propto \Big[\tfrac{\bar\alpha_t}{\bar\alpha_s} x_t + \tfrac{1 - \bar\alpha_t / \bar\alpha_s}{K}\Big]
# \odot \Big[\bar\alpha_s x_0 + \tfrac{1 - \bar\alpha_s}{K}\Big].$$
#
# A sampler can use it (with $\hat x_0$ in place of $x_0$) to take 100 reverse steps instead of 1000
# (notebook 05). Check it against Bayes over the matrix product, for all pairs $s < t$ of a short
# schedule:

# %%
schedule = make_schedule("cosine", 8)
K3 = 3
I3 = torch.eye(K3, dtype=F64)
for t in range(1, schedule.T + 1):
    for s in range(t):
        between = torch.eye(K3, dtype=F64)
        for tau in range(s + 1, t + 1):
            a = schedule.alphas[tau].item()
            between = between @ (a * I3 + (1 - a) / K3)
        abar_s = schedule.alpha_bars[s].item()
        for c, i in itertools.product(range(K3), range(K3)):
            joint = (abar_s * I3[c] + (1 - abar_s) / K3) * between[:, i]
            torch.testing.assert_close(q_posterior_skip(I3[i], I3[c], t, s, schedule), joint / joint.sum())
    torch.testing.assert_close(q_posterior_skip(I3[1], I3[0], t, t - 1, schedule),
                               q_posterior(I3[1], I3[0], t, schedule))
print("q_posterior_skip == Bayes over Q_{s+1} ... Q_t for every s < t; s = t - 1 is eq. 13")

# %% [markdown]
# ## Summary
#
# - Eq. 13 is Bayes' rule: likelihood of the observed $x_t$ for each candidate $x_{t-1}$ (eq. 11,
#   read as a function of $x_{t-1}$) times the prior over $x_{t-1}$ (eq. 12 at $t - 1$), normalised;
#   the Markov property removes $x_0$ from the likelihood, and the normaliser is $q(x_t \mid x_0)$.
# - Writing the likelihood as $\alpha_t x_t + (1 - \alpha_t)/K$ uses the **symmetry** of $Q_t$; with
#   an asymmetric kernel one must use the column $Q_t[:, x_t]$.
# - Eq. 14 plugs a predicted $\hat x_0$ into eq. 13. The result is always a valid distribution, and
#   it is a mixture of exact posteriors whose weights are $\hat x_0$ times the likelihood of $x_t$.
# - The same derivation gives the skip posterior $q(x_s \mid x_t, x_0)$ for fast sampling.
#
# In the package: `q_posterior` (eqs. 13 and 14), `log_q_posterior` (the same in log space, for
# training), `q_posterior_skip`. Next, notebook 03 turns these posteriors into the training objective.

# %% [markdown]
# ## Exercises
#
# **Exercise 1.** By hand: $K = 3$, $\alpha_t = 0.5$, $\bar\alpha_{t-1} = 0.5$, $x_0$ is class 0 and
# $x_t$ is class 1. What is the probability that $x_{t-1}$ was class 0?

# %%
answer_1 = None  # your answer here, a number

# %%
if answer_1 is None:
    print("fill in answer_1")
else:
    s = make_schedule("constant", 2, beta=0.5)  # alpha_2 = 0.5 and alpha_bar_1 = 0.5
    truth = q_posterior(torch.eye(3, dtype=F64)[1], torch.eye(3, dtype=F64)[0], 2, s)[0].item()
    print("correct" if abs(answer_1 - truth) < 1e-3 else "not yet")

# %% [markdown]
# **Exercise 2.** A one-pixel world: $x_0$ is drawn from a known distribution
# $p_\text{data} = (0.6, 0.3, 0.1)$ over $K = 3$ classes. The *true* reverse step
# $q(x_{t-1} \mid x_t)$ (with $x_0$ unknown, averaged over $p_\text{data}$) is what a perfect model
# would use. Which $\hat x_0$ (a probability vector, possibly depending on $x_t$ and $t$) makes
# eq. 14 equal to it for every $x_t$ and every $t \ge 2$? Hint: redo the derivation of eq. 13 without
# conditioning on $x_0$. Set `answer_2` to a function `(x_t, t) -> x0_hat`, e.g. `lambda x_t, t: x_t`
# (that one is wrong).

# %%
answer_2 = None  # your answer here: a function (x_t one-hot [3] float64, t int) -> x0_hat [3]

# %%
if answer_2 is None:
    print("fill in answer_2")
else:
    s, p_data = make_schedule("linear", 6, beta_start=0.1, beta_end=0.5), torch.tensor([0.6, 0.3, 0.1], dtype=F64)
    I3, ok = torch.eye(3, dtype=F64), True
    for t in range(2, s.T + 1):
        for i in range(3):
            # Bayes with x_0 summed out: q(x_{t-1} = j, x_t = i) = [sum_c p_data(c) q(x_{t-1} = j | c)] q(x_t = i | j)
            joint = (p_data @ q_marginal(I3, t - 1, s)) * q_step(I3, t, s)[:, i]
            ok &= torch.allclose(q_posterior(I3[i], answer_2(I3[i], t), t, s), joint / joint.sum())
    print("correct" if ok else "not yet")
