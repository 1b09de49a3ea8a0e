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
#    readers of the official code (a likelihood in which $x_t$ takes the place of $x_{t-1}$), and
#    draw its two factors and their product as bars;
# 2. verify it by enumerating every case, and by simulation;
# 3. see why the step needs a *symmetric* transition matrix, with a counterexample;
# 4. plug a predicted $\hat x_0$ into it (eq. 14, the model's reverse step) and see why that always
#    gives valid probabilities, and what $\hat x_0$ really does there;
# 5. (optional) jump back several steps at once with the skip posterior $q(x_s \mid x_t, x_0)$;
# 6. in the exercises, compute a posterior by hand, find the $\hat x_0$ of a perfect model, and
#    work out the posterior of absorbing ("mask") noise.
#
# **Time:** the code runs in well under a minute on 2 CPU cores. How many minutes the reading and the exercises take has not been measured: no reader has been timed yet.

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
#
# Here are the two brackets and their normalised product as bars, for $K = 6$, $x_0$ = class 1,
# $x_t$ = class 4, at step 6 of a 10-step schedule. The likelihood has its spike at $x_t$ (most
# likely the class was kept at step $t$), the prior at $x_0$ (most likely it survived the first
# $t - 1$ steps). Their product keeps both spikes, each multiplied by the other factor's floor, so
# the posterior hesitates between "still $x_0$ at $t - 1$, resampled into $x_t$ at step $t$" and
# "already $x_t$ at $t - 1$, kept at step $t$"; every other class gets floor times floor. The sum
# of the product, the normaliser, is $q(x_t \mid x_0)$ (eq. 12).

# %%
K = 6
schedule = make_schedule("hoogeboom-cosine", 10)
t, x0_class, x_t_class = 6, 1, 4
alpha, abar_prev = schedule.alphas[t].item(), schedule.alpha_bars[t - 1].item()
x_t, x0 = one_hot(torch.tensor(x_t_class), K, F64), one_hot(torch.tensor(x0_class), K, F64)
# Both brackets are vectors over the candidates j for x_{t-1}:
likelihood = alpha * x_t + (1 - alpha) / K          # entry j: q(x_t | x_{t-1} = j) = alpha [j = x_t] + (1 - alpha)/K
prior = abar_prev * x0 + (1 - abar_prev) / K        # entry j: q(x_{t-1} = j | x_0), eq. 12 at t - 1
normaliser = (likelihood * prior).sum()
posterior = likelihood * prior / normaliser          # eq. 13
torch.testing.assert_close(posterior, q_posterior(x_t, x0, t, schedule))
torch.testing.assert_close(normaliser, q_marginal(x0, t, schedule)[x_t_class])

colors = ["C0" if k == x0_class else "C1" if k == x_t_class else "0.6" for k in range(K)]
ticks = [f"{k}" + ("\n$= x_0$" if k == x0_class else "\n$= x_t$" if k == x_t_class else "") for k in range(K)]
panels = [(likelihood, rf"$q(x_t = {x_t_class} \mid x_{{t-1}})$",
           rf"likelihood: $\alpha_t = {alpha:.3f}$ at $x_t$, plus $(1 - \alpha_t)/K$"),
          (prior, rf"$q(x_{{t-1}} \mid x_0 = {x0_class})$",
           rf"prior: $\bar\alpha_{{t-1}} = {abar_prev:.3f}$ at $x_0$, plus $(1 - \bar\alpha_{{t-1}})/K$"),
          (posterior, r"$q(x_{t-1} \mid x_t, x_0)$",
           rf"posterior: product / {normaliser:.4f}  ($= q(x_t \mid x_0)$)")]
fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), layout="constrained", sharey=True)
for ax, (values, ylabel, title) in zip(axes, panels):
    ax.bar(range(K), values, color=colors)
    ax.set_xticks(range(K), ticks)
    ax.set_xlabel(r"$x_{t-1}$ (class)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="y", labelleft=True)
fig.suptitle(f"eq. 13 as likelihood × prior: K = {K}, t = {t} of a {schedule.T}-step hoogeboom-cosine schedule",
             fontsize=11)
plt.show()
print("posterior:", posterior.numpy().round(4))

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
# - $x_t = x_0$: the class is most likely untouched, so $x_{t-1} = x_0$ with probability near 1 for
#   almost all of the schedule.
# - $x_t \ne x_0$: the class was resampled at some step up to $t$. Was it first resampled at step
#   $t$ (then $x_{t-1} = x_0$), or earlier (then most likely $x_{t-1} = x_t$)? At $t = 1$ it can only have
#   been step 1, so $x_0 = x_{t-1}$ for certain: $q(x_0 \mid x_1, x_0)$ is $x_0$ itself, since
#   $\bar\alpha_0 = 1$ makes the prior bracket one-hot. After that, step $t$ competes with all the
#   steps before it: the odds of $x_{t-1} = x_0$ against $x_{t-1} = x_t$ are about
#   $\bar\alpha_{t-1}\beta_t$ (first resampled at step $t$) to $1 - \bar\alpha_{t-1}$ (resampled
#   earlier), so the probability of $x_{t-1} = x_0$ falls to 0.53 at $t = 2$, 0.13 at $t = 10$ and
#   0.02 at $t = 100$.
#
# Both cases then change slowly for hundreds of steps, until the posterior collapses in the last
# twenty or so: $\bar\alpha_{t-1}$ reaches 0 (the prior bracket goes flat) and $\beta_t$ climbs to 1
# (the likelihood bracket goes flat; $\beta_T = 0.97$, from the clip at $\alpha_T = \sqrt{0.001}$).
# At $t = T$ the posterior is within 0.03 of uniform whatever $x_t$ and $x_0$ are: neither $x_T$ nor
# $x_0$ says much about $x_{T-1}$, and when $x_t \ne x_0$, the class $x_0$ ends no likelier than any
# third class (the two curves meet). A log $t$ axis spreads out the first steps but squeezes the
# last hundred into a sliver at its right edge, so each case gets two panels: log $t$ over the whole
# schedule, and a linear $t$ axis over the last 40 steps.
#
# `q_posterior` accepts a tensor of times and broadcasts: one call gives the whole curve.

# %%
schedule = make_schedule("hoogeboom-cosine", 1000)
K8 = 8
x0 = one_hot(torch.tensor(0), K8, F64)
ts = torch.arange(1, schedule.T + 1)
last = ts > schedule.T - 40
fig, axes = plt.subplots(2, 2, figsize=(10, 6.2), layout="constrained", sharey=True, width_ratios=(3, 2))
for row, i in zip(axes, (0, 1)):
    post = q_posterior(one_hot(torch.tensor(i), K8, F64), x0, ts, schedule)  # [T, K8]
    lines = [(0, "C0", "-", r"$x_{t-1} = x_0$")] + ([(i, "C1", "-", r"$x_{t-1} = x_t$")] if i != 0 else []) \
        + [(2, "C2", "--", r"$x_{t-1}$ = a given third class")]  # dashed: near T it lies on x_0's curve
    for k, color, ls, label in lines:
        row[0].semilogx(ts, post[:, k], color=color, ls=ls)
        row[1].plot(ts[last], post[last, k], ".", ls=ls, ms=4, color=color, label=label)
    row[0].set_title(f"$x_0$ = class 0, $x_t$ = class {i}: all steps (log t)", fontsize=10)
    row[1].set_title(f"the same, last {int(last.sum())} steps (linear t)", fontsize=10)
    row[1].axhline(1 / K8, color="0.6", lw=0.8, ls=":")
    row[1].text(ts[last][0], 1 / K8 + 0.03, "1/K", color="0.4", fontsize=8)
    row[0].set_ylabel(r"$q(x_{t-1} \mid x_t, x_0)$")
    row[1].legend(fontsize=8, loc="center left")
for ax in axes[1]:
    ax.set_xlabel("step t")
fig.suptitle(f"the posterior of eq. 13 against t (K = {K8}, hoogeboom-cosine, T = {schedule.T})", fontsize=11)
plt.show()
torch.testing.assert_close(q_posterior(one_hot(torch.tensor(1), K8, F64), x0, 1, schedule), x0)
early = torch.arange(2, 101)
odds = schedule.alpha_bars[early - 1] * schedule.betas[early] / schedule.one_minus_alpha_bars[early - 1]
post = q_posterior(one_hot(torch.tensor(1), K8, F64), x0, early, schedule)[:, 0]
assert (post - odds / (1 + odds)).abs().max() < 1e-3  # the odds above, for t <= 100
for i in range(K8):  # at t = T, within 0.03 of uniform for every x_t
    assert (q_posterior(one_hot(torch.tensor(i), K8, F64), x0, schedule.T, schedule) - 1 / K8).abs().max() < 0.03

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
#
# **Exercise 2.** A one-pixel world: $x_0$ is drawn from a known distribution
# $p_\text{data} = (0.6, 0.3, 0.1)$ over $K = 3$ classes. The *true* reverse step
# $q(x_{t-1} \mid x_t)$ (with $x_0$ unknown, averaged over $p_\text{data}$) is what a perfect model
# would use. Which $\hat x_0$ (a probability vector, possibly depending on $x_t$ and $t$) makes
# eq. 14 equal to it for every $x_t$ and every $t \ge 2$? Hint: redo the derivation of eq. 13 without
# conditioning on $x_0$. Set `answer_2` to a function `(x_t, t) -> x0_hat`, e.g. `lambda x_t, t: x_t`
# (that one is wrong).
#
# **Exercise 3.** Absorbing ("mask") noise, the kind D3PM and MDLM use for text: each step turns a
# token into a mask class $m$ with probability $\beta_t$, and $m$ stays $m$. It is the counterexample's
# kernel with $m = e_m$, a one-hot resampling distribution. Take $K = 4$ with class 3 the mask,
# $\alpha_t = 0.8$, $\bar\alpha_{t-1} = 0.5$, $x_0$ = class 0, and observe $x_t = m$. What is the
# probability that the token was still unmasked at $t - 1$, $q(x_{t-1} = x_0 \mid x_t = m, x_0)$?

# %%
answer_1 = None  # a probability
answer_2 = None  # a function (x_t one-hot [3] float64, t int) -> x0_hat [3]
answer_3 = None  # a probability

# %%
from mdiff_lite.exercises import check

s1 = make_schedule("constant", 2, beta=0.5)  # alpha_2 = 0.5 and alpha_bar_1 = 0.5
I3 = torch.eye(3, dtype=F64)
check("exercise 1", answer_1, q_posterior(I3[1], I3[0], 2, s1)[0].item(), tol=1e-3)


def is_perfect(x0_hat_of):
    """Eq. 14 with x0_hat_of(x_t, t) against Bayes with x_0 summed out, for every x_t and t >= 2."""
    s, p_data = make_schedule("linear", 6, beta_start=0.1, beta_end=0.5), torch.tensor([0.6, 0.3, 0.1], dtype=F64)
    for t in range(2, s.T + 1):
        for i in range(3):
            # q(x_{t-1} = j, x_t = i) = [sum_c p_data(c) q(x_{t-1} = j | c)] q(x_t = i | j)
            joint = (p_data @ q_marginal(I3, t - 1, s)) * q_step(I3, t, s)[:, i]
            try:
                model = q_posterior(I3[i], x0_hat_of(I3[i], t), t, s)
            except (TypeError, ValueError) as err:
                return f"eq. 14 refuses that x0_hat: {err}"
            if not torch.allclose(model, joint / joint.sum()):
                return f"wrong at t = {t}, x_t = class {i}"
    return True


check("exercise 2", answer_2, ok=is_perfect)

alpha_3, abar_3, mask = 0.8, 0.5, 3
I4 = torch.eye(4, dtype=F64)
to_mask = torch.ones(4, 1, dtype=F64) * I4[mask]                          # every row e_m: the counterexample with m = e_m
Q_mask, Q_bar_mask = alpha_3 * I4 + (1 - alpha_3) * to_mask, abar_3 * I4 + (1 - abar_3) * to_mask
joint = Q_bar_mask[0] * Q_mask[:, mask]                                   # q(x_{t-1} = j, x_t = m | x_0 = 0)
check("exercise 3", answer_3, (joint / joint.sum())[0].item(), tol=1e-3);

# %% [markdown]
# <details><summary>Solution 1</summary>
#
# Likelihood bracket over $x_{t-1} = 0, 1, 2$: $\alpha_t [x_{t-1} = 1] + (1 - \alpha_t)/3 =
# (\tfrac16, \tfrac23, \tfrac16)$. Prior bracket: $\bar\alpha_{t-1} [x_{t-1} = 0] + (1 - \bar\alpha_{t-1})/3
# = (\tfrac23, \tfrac16, \tfrac16)$. Product: $(\tfrac19, \tfrac19, \tfrac1{36})$, which sums to
# $\tfrac14$ (that is $q(x_t = 1 \mid x_0 = 0)$). So $q(x_{t-1} = 0 \mid x_t, x_0) = \tfrac19 / \tfrac14 =
# \tfrac49 \approx 0.444$.
#
# </details>
#
# <details><summary>Solution 2</summary>
#
# Without $x_0$, Bayes gives $q(x_{t-1} \mid x_t) \propto q(x_t \mid x_{t-1})\, q(x_{t-1})$, and
# $q(x_{t-1}) = \sum_c p_\text{data}(c)\, q(x_{t-1} \mid x_0 = c) = \bar\alpha_{t-1} p_\text{data} +
# (1 - \bar\alpha_{t-1})/K$, because eq. 12 is affine in $x_0$. That is eq. 13's prior bracket with
# $p_\text{data}$ in place of $x_0$: the perfect $\hat x_0$ is $p_\text{data}$, **whatever $x_t$ and
# $t$ are**. The network need not look at its own pixel; the likelihood bracket already adds what
# $x_t$ says (notebook 03 builds on this).
#
# ```python
# answer_2 = lambda x_t, t: torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
# ```
#
# </details>
#
# <details><summary>Solution 3</summary>
#
# The kernel is not symmetric, so the likelihood is the column $x_t = m$ of $Q_t$: $q(x_t = m \mid
# x_{t-1} = j) = 1 - \alpha_t = 0.2$ for an unmasked $j$ and $1$ for $j = m$. The prior is
# $\bar\alpha_{t-1} e_{x_0} + (1 - \bar\alpha_{t-1}) e_m = (0.5, 0, 0, 0.5)$. Product: $0.1$ at
# $x_0$, $0.5$ at $m$, sum $0.6$. So $q(x_{t-1} = x_0 \mid x_t = m, x_0) = 0.1/0.6 = \tfrac16 \approx
# 0.167$, and the token was already masked at $t - 1$ with probability $\tfrac56$. In general it is
# $(\bar\alpha_{t-1} - \bar\alpha_t)/(1 - \bar\alpha_t)$ with $\bar\alpha_t = \alpha_t \bar\alpha_{t-1}$.
# Eq. 13's symmetric bracket $\alpha_t e_m + (1 - \alpha_t)/K$ would give $0.05 \cdot 0.5 / (0.05 \cdot 0.5 +
# 0.85 \cdot 0.5) \approx 0.056$ instead.
#
# </details>
