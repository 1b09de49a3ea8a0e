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
# # 01 · The forward process: categorical noise
#
# Multinomial diffusion (Hoogeboom et al., NeurIPS 2021) destroys a categorical variable (a pixel's
# class in a segmentation map, a character of text) one small step at a time, and then learns to undo
# the damage. This notebook is about the destroying half, the part with no learning in it. You will:
#
# 1. write one noise step on a one-hot vector (eq. 11 of the paper) and check it by simulation;
# 2. write the same step as a $K \times K$ transition matrix $Q_t$;
# 3. derive the marginal after $t$ steps (eq. 12) by induction and check it against products of
#    matrices;
# 4. see what $\bar\alpha_t$ means: the chance that a class has survived $t$ steps untouched;
# 5. compare the noise schedules that `mdiff_lite.make_schedule` offers;
# 6. in the exercises, compose steps between two times, design a schedule, and find when a pixel
#    stops being more likely than not to show its class.
#
# **Time:** the code runs in well under a minute on 2 CPU cores. How many minutes the reading and the exercises take has not been measured: no reader has been timed yet.

# %% tags=["parameters"]
import os

SMOKE = os.environ.get("MDIFF_SMOKE", "0") == "1"
N_DRAWS = 20_000 if SMOKE else 200_000  # simulated pixels in the Monte Carlo checks

# %%
import math

import matplotlib.pyplot as plt
import torch

from mdiff_lite import make_schedule, one_hot, q_marginal, q_sample, q_step
from mdiff_lite.data import ToySegmentation
from mdiff_lite.plots import plot_grid
from mdiff_lite.schedules import SCHEDULE_NAMES

torch.manual_seed(0)
F64 = torch.float64

# %% [markdown]
# ## One-hot vectors and the categorical distribution
#
# A variable with $K$ classes is stored as a one-hot vector $x \in \{0, 1\}^K$: class 2 of
# $K = 4$ is $x = (0, 0, 1, 0)$. A probability vector $p$ (non-negative, summing to 1) defines the
# categorical distribution $\mathcal{C}(x \mid p)$, which picks class $k$ with probability $p_k$.
# A one-hot vector is itself a probability vector, the one that puts all its mass on one class,
# and that is what lets the formulas below mix data and noise by plain arithmetic.
#
# Every distribution in the paper factorizes over dimensions (pixels, characters), so it is enough to
# study one dimension. The class axis is always last in `mdiff_lite`.

# %%
K = 4
x_prev = one_hot(torch.tensor(2), K, F64)
x_prev

# %% [markdown]
# ## One step of noise: eq. 11
#
# At step $t$ a coin with bias $\beta_t \in (0, 1]$ decides whether the class is kept (probability
# $\alpha_t = 1 - \beta_t$) or resampled uniformly from all $K$ classes, its own class included. The
# resulting distribution is
#
# $$q(x_t \mid x_{t-1}) = \mathcal{C}\Big(x_t \;\Big|\; \alpha_t\, x_{t-1} + \frac{1 - \alpha_t}{K}\Big). \tag{11}$$
#
# The scalar $(1 - \alpha_t)/K$ is added to every entry. Read entry by entry: the class of
# $x_{t-1}$ gets $\alpha_t + (1 - \alpha_t)/K$ (kept, or resampled back into itself), every other
# class gets $(1 - \alpha_t)/K$. The entries sum to $\alpha_t + K (1 - \alpha_t)/K = 1$.
#
# First the formula by hand, then the coin-flip story by simulation, for $\alpha_t = 0.7$ (the
# check allows five standard errors per class):

# %%
alpha = 0.7
probs_by_hand = alpha * x_prev + (1 - alpha) / K
print("eq. 11 by hand:", probs_by_hand.numpy().round(4))

# The story: keep the class with probability alpha, else draw a class uniformly.
keep = torch.rand(N_DRAWS, dtype=F64) < alpha
noise = torch.randint(0, K, (N_DRAWS,))
x_t = torch.where(keep, torch.tensor(2), noise)
frequencies = torch.bincount(x_t, minlength=K).double() / N_DRAWS
print("simulated:     ", frequencies.numpy().round(4), f"(standard error at most {math.sqrt(0.25 / N_DRAWS):.4f})")
assert ((frequencies - probs_by_hand).abs() < 5 * torch.sqrt(probs_by_hand * (1 - probs_by_hand) / N_DRAWS)).all()

# %% [markdown]
# The package's `q_step(x_prev, t, schedule)` computes eq. 11 for the $\alpha_t$ of a schedule. A
# schedule is the whole sequence $\beta_1, \dots, \beta_T$; its buffers are indexed by $t$ itself,
# so `schedule.alphas[t]` is $\alpha_t$ (entry 0 means "no noise yet"). A constant schedule with
# $\beta = 0.3$ has $\alpha_t = 0.7$ at every step:

# %%
constant = make_schedule("constant", 10, beta=0.3)
print(constant, "alpha_1 =", constant.alphas[1].item())
torch.testing.assert_close(q_step(x_prev, 1, constant), probs_by_hand)

# %% [markdown]
# ## The step as a transition matrix
#
# Collect eq. 11 for every starting class $i$ into a matrix whose row $i$ is the distribution of
# $x_t$ given $x_{t-1} = i$:
#
# $$[Q_t]_{ij} = q(x_t = j \mid x_{t-1} = i) = \alpha_t\, [i = j] + \frac{1 - \alpha_t}{K},
# \qquad Q_t = \alpha_t I + \frac{1 - \alpha_t}{K}\, \mathbf{1}\mathbf{1}^\top .$$
#
# For a one-hot $x_{t-1}$ (a row vector), the product $x_{t-1} Q_t$ picks its row, which is
# eq. 11. For any probability vector $p$ over $x_{t-1}$, $p\, Q_t$ is the distribution of $x_t$:
# the law of total probability, one matrix product. Two properties matter later: the rows sum to 1
# (each is a distribution), and $Q_t$ is **symmetric** (going from $i$ to $j$ is as likely as going
# from $j$ to $i$). Notebook 02 leans on the symmetry.

# %%
def transition_matrix(alpha: float, K: int) -> torch.Tensor:
    """Q_t = alpha I + (1 - alpha) / K 11^T, float64."""
    return alpha * torch.eye(K, dtype=F64) + (1 - alpha) / K * torch.ones(K, K, dtype=F64)


Q = transition_matrix(alpha, K)
print(Q.numpy().round(3))
print("rows sum to 1:", torch.allclose(Q.sum(1), torch.ones(K, dtype=F64)), "| symmetric:", torch.equal(Q, Q.T))
torch.testing.assert_close(x_prev @ Q, q_step(x_prev, 1, constant))

# %% [markdown]
# ## Many steps: eq. 12 by induction
#
# The steps form a Markov chain: $x_t$ depends on the past only through $x_{t-1}$. So the
# distribution after $t$ steps is the starting vector pushed through $t$ matrices,
# $q(x_t \mid x_0) = \mathcal{C}(x_t \mid x_0\, Q_1 Q_2 \cdots Q_t)$. The paper's eq. 12 says that
# this product has a closed form:
#
# $$q(x_t \mid x_0) = \mathcal{C}\Big(x_t \;\Big|\; \bar\alpha_t\, x_0 + \frac{1 - \bar\alpha_t}{K}\Big),
# \qquad \bar\alpha_t = \prod_{\tau=1}^{t} \alpha_\tau,\quad \bar\alpha_0 = 1. \tag{12}$$
#
# **Proof by induction on $t$.** For $t = 0$ it reads $q(x_0 \mid x_0) = \mathcal{C}(x_0 \mid x_0)$,
# true since $\bar\alpha_0 = 1$. Suppose it holds at $t - 1$, i.e. $x_{t-1}$ has the probability
# vector $p = \bar\alpha_{t-1} x_0 + (1 - \bar\alpha_{t-1})/K$. One step maps any probability vector
# $p$ to
#
# $$p\, Q_t = \alpha_t\, p + \frac{1 - \alpha_t}{K}\, (p \cdot \mathbf{1})\, \mathbf{1}
#          = \alpha_t\, p + \frac{1 - \alpha_t}{K},$$
#
# because $p$ sums to 1: eq. 11 holds for probability vectors, not only for one-hot ones. Put in $p$:
#
# $$\alpha_t \Big(\bar\alpha_{t-1} x_0 + \frac{1 - \bar\alpha_{t-1}}{K}\Big) + \frac{1 - \alpha_t}{K}
#   = \alpha_t \bar\alpha_{t-1}\, x_0 + \frac{\alpha_t - \alpha_t \bar\alpha_{t-1} + 1 - \alpha_t}{K}
#   = \bar\alpha_t\, x_0 + \frac{1 - \bar\alpha_t}{K}. \qquad\blacksquare$$
#
# The same fact in matrix form: $\frac{1}{K}\mathbf{1}\mathbf{1}^\top$ is a projection (its square
# is itself), so $Q(a)\, Q(b) = Q(ab)$ where $Q(a) = aI + \frac{1-a}{K}\mathbf{1}\mathbf{1}^\top$.
# Uniform-resampling steps compose into one uniform-resampling step whose keep-probability is the
# product of theirs. That closure is why a sampler may later jump over many steps at once.
#
# Now check it with numbers: a 20-step schedule, every $t$, the matrix product against eq. 12.

# %%
schedule = make_schedule("hoogeboom-cosine", 20)
x0 = one_hot(torch.tensor(1), K, F64)

product = torch.eye(K, dtype=F64)
for t in range(0, schedule.T + 1):
    if t > 0:
        product = product @ transition_matrix(schedule.alphas[t].item(), K)
    abar = schedule.alphas[1:t + 1].prod().item()  # alpha_bar_t by its definition
    closed_form = transition_matrix(abar, K)        # eq. 12 for every x_0 at once: Q(alpha_bar_t)
    torch.testing.assert_close(product, closed_form)
print(f"Q_1 ... Q_t equals eq. 12 for t = 0..{schedule.T}")
print(f"Q(0.9) Q(0.8) == Q(0.72): {torch.allclose(transition_matrix(0.9, K) @ transition_matrix(0.8, K), transition_matrix(0.72, K))}")

# %% [markdown]
# The package's `q_marginal(x0, t, schedule)` is eq. 12; `schedule.alpha_bars[t]` is $\bar\alpha_t$
# (precomputed in float64). It is the running product of $1 - \beta_\tau$, eq. 12 agrees with the
# matrices, and eq. 11 applied $t$ times in a row lands on eq. 12, for a one-hot $x_0$ and for a
# probability vector alike:

# %%
torch.testing.assert_close(schedule.alpha_bars, torch.cumprod(1 - schedule.betas, 0))  # betas[0] = 0: alpha_bar_0 = 1
for start in (x0, torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64)):
    x = start
    for t in range(1, schedule.T + 1):
        x = q_step(x, t, schedule)
        torch.testing.assert_close(x, q_marginal(start, t, schedule))
        torch.testing.assert_close(x, start @ transition_matrix(schedule.alpha_bars[t].item(), K))
print("q_step applied t times == q_marginal == x0 Q(alpha_bar_t) for every t")

# %% [markdown]
# ## What $\bar\alpha_t$ means
#
# $\bar\alpha_t = \alpha_1 \cdots \alpha_t$ is the probability that all $t$ coins said "keep": the
# chance that the class **survived** untouched. Once a class has been resampled, even once, it is
# uniform, and more resampling keeps it uniform. So $x_t$ is a mixture: with probability
# $\bar\alpha_t$ it is still $x_0$, with probability $1 - \bar\alpha_t$ it is a uniform draw. That
# is eq. 12 read aloud. Note the difference between "survived" ($\bar\alpha_t$) and "equals $x_0$"
# ($\bar\alpha_t + (1 - \bar\alpha_t)/K$): a resampled class can land on its old value by chance.
#
# Simulate the coins of a 50-step schedule for many pixels and count both; at every $t$ each count
# must lie within five standard errors of its formula:

# %%
schedule = make_schedule("hoogeboom-cosine", 50)
x = torch.full((N_DRAWS,), 1)
survived = torch.ones(N_DRAWS, dtype=torch.bool)
survived_freq, same_freq = [1.0], [1.0]
for t in range(1, schedule.T + 1):
    resample = torch.rand(N_DRAWS, dtype=F64) < schedule.betas[t]
    x = torch.where(resample, torch.randint(0, K, (N_DRAWS,)), x)
    survived &= ~resample
    survived_freq.append(survived.double().mean().item())
    same_freq.append((x == 1).double().mean().item())

for simulated, formula in [(survived_freq, schedule.alpha_bars),
                           (same_freq, schedule.alpha_bars + schedule.one_minus_alpha_bars / K)]:
    standard_error = torch.sqrt(formula * (1 - formula) / N_DRAWS)  # 0 at t = 0, where both are exactly 1
    assert ((torch.tensor(simulated, dtype=F64) - formula).abs() <= 5 * standard_error + 1e-12).all()

ts = torch.arange(schedule.T + 1)
fig, ax = plt.subplots(figsize=(6, 3.4), layout="constrained")
ax.plot(ts, schedule.alpha_bars, color="C0", label=r"$\bar\alpha_t$ (eq. 12)")
ax.plot(ts, survived_freq, "o", ms=3, color="C0", label="simulated: never resampled")
ax.plot(ts, schedule.alpha_bars + schedule.one_minus_alpha_bars / K, color="C1",
        label=r"$\bar\alpha_t + (1-\bar\alpha_t)/K$")
ax.plot(ts, same_freq, "o", ms=3, color="C1", label=r"simulated: $x_t = x_0$")
ax.axhline(1 / K, color="0.6", lw=0.8, ls="--")
ax.text(1, 1 / K + 0.02, "1/K: pure noise", color="0.4", fontsize=8)
ax.set_xlabel("step t")
ax.set_ylabel("probability")
ax.set_title(f"hoogeboom-cosine schedule, T = {schedule.T}, K = {K} ({N_DRAWS:,} simulated pixels)", fontsize=10)
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# Because the marginal is a mixture, `q_sample` draws $x_t$ in one shot, with no need to run the
# $t$ steps: one coin with bias $1 - \bar\alpha_t$ per pixel, then a uniform class where it came up.
# Its frequencies match eq. 12 (the check allows five standard errors):

# %%
t = 30
x_t = q_sample(torch.full((N_DRAWS,), 1), t, schedule, K)
frequencies = torch.bincount(x_t, minlength=K).double() / N_DRAWS
expected = q_marginal(x0, t, schedule)
print("q_sample frequencies:", frequencies.numpy().round(4))
print("eq. 12:              ", expected.numpy().round(4))
assert ((frequencies - expected).abs() < 5 * torch.sqrt(expected * (1 - expected) / N_DRAWS)).all()

# %% [markdown]
# What this does to a whole map: each pixel of a toy street scene (the dataset of notebook 04) is
# noised independently, so a fraction $\bar\alpha_t$ of the pixels survives and the rest is
# confetti in the eight class colours.

# %%
dataset = ToySegmentation()
scene = dataset.split("test", n=1)[0]
schedule = make_schedule("hoogeboom-cosine", 1000)
times = [0, 200, 400, 600, 800, 1000]
noisy = torch.stack([q_sample(scene, t, schedule, dataset.num_classes) for t in times])
titles = [f"t = {t}, " + r"$\bar\alpha_t$" + f" = {schedule.alpha_bars[t].item():.2f}" for t in times]
plot_grid(noisy, dataset, ncols=6, titles=titles, cell_inches=1.4,
          suptitle="one toy map under the hoogeboom-cosine schedule, T = 1000")
plt.show()

# %% [markdown]
# ## Schedules compared
#
# The schedule $\beta_1, \dots, \beta_T$ decides how fast information is destroyed. Two properties
# matter: $\bar\alpha_T$ should be close to 0, so that $x_T$ is nearly uniform and can be drawn
# from a uniform prior (notebook 03 makes this a term of the bound); and the decay should be gradual,
# so that each reverse step has a small job to do. `make_schedule` offers five:
#
# - `linear`: $\beta_t$ rising linearly, DDPM's $10^{-4} \dots 0.02$ at $T = 1000$;
# - `cosine`: Nichol & Dhariwal's $\bar\alpha_t = f(t)/f(0)$,
#   $f(t) = \cos^2\!\big(\frac{t/T + s}{1 + s} \frac{\pi}{2}\big)$, $s = 0.008$, with each $\beta_t$
#   clipped at $0.999$ (their choice). The clip bites only at $t = T$, where $f(T) = 0$ would make
#   $\beta_T = 1$; so $\bar\alpha_T$ is $0.001\, \bar\alpha_{T-1}$ instead of 0;
# - `hoogeboom-cosine`: the schedule of the official multinomial-diffusion code, the **square root**
#   of the cosine $\bar\alpha_t$ (with each $\alpha_t$ clipped below at $\sqrt{0.001}$), so it
#   destroys information more slowly;
# - `jsd`: $\beta_t = 1/(T - t + 1)$, for which $\bar\alpha_t = 1 - t/T$ exactly;
# - `constant`: the same $\beta$ at every step, so $\bar\alpha_t = (1 - \beta)^t$ (geometric decay).
#
# Three of these claims are identities we can check before plotting:

# %%
T = 1000
schedules = {name: make_schedule(name, T) for name in SCHEDULE_NAMES}
t = torch.arange(T + 1, dtype=F64)
f = torch.cos((t / T + 0.008) / (1 + 0.008) * math.pi / 2) ** 2
torch.testing.assert_close(schedules["cosine"].alpha_bars[:T], (f / f[0])[:T])  # t = T: the clip, see above
torch.testing.assert_close(schedules["jsd"].alpha_bars, 1 - t / T)
torch.testing.assert_close(schedules["hoogeboom-cosine"].alpha_bars, schedules["cosine"].alpha_bars.sqrt())
print("cosine: alpha_bar_t = f(t)/f(0) for t < T;  jsd: alpha_bar_t = 1 - t/T;  "
      "hoogeboom-cosine: alpha_bar_t = sqrt(cosine alpha_bar_t)")

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
for name, s in schedules.items():
    ax1.plot(t / T, s.alpha_bars, label=name)
    ax2.semilogy(t[1:] / T, s.betas[1:], label=name)
ax1.set_xlabel("t / T")
ax1.set_ylabel(r"$\bar\alpha_t$ (probability a class survives)")
ax1.set_title(f"survival probability, T = {T}", fontsize=10)
ax1.legend(fontsize=8)
ax2.set_xlabel("t / T")
ax2.set_ylabel(r"$\beta_t$ (log scale)")
ax2.set_title(f"resampling probability per step, T = {T}", fontsize=10)
plt.show()

print(f"{'schedule':<18}{'abar at T/4':>12}{'T/2':>9}{'3T/4':>9}{'abar_T':>11}   first t with abar < 1/2")
for name, s in schedules.items():
    half = int(torch.nonzero(s.alpha_bars < 0.5)[0])
    row = [s.alpha_bars[T * q // 4].item() for q in (1, 2, 3)]
    print(f"{name:<18}" + "".join(f"{v:>9.3f}" if i else f"{v:>12.3f}" for i, v in enumerate(row))
          + f"{s.alpha_bars[T].item():>11.2e}   {half}")

# %% [markdown]
# Reading the figure:
#
# - **linear** destroys most of the information in the first half (at $t = T/2$ fewer than one pixel
#   in ten survives) and then spends half the steps on near-pure noise;
# - **cosine** spreads the decay evenly, with the steepest part in the middle;
# - **hoogeboom-cosine** keeps 70% of the pixels at $t = T/2$ and reaches near-zero survival only at
#   the very end, where its last $\beta_t$ are large (right panel);
# - **jsd** falls in a straight line to exactly 0, so its last step resamples everything
#   ($\beta_T = 1$);
# - **constant** has the same $\beta$ throughout, which makes the decay geometric: fast early, slow late.
#
# Every schedule here ends with $\bar\alpha_T$ of about $10^{-3}$ or less, so $x_T$ is uniform to a
# good approximation.
# With short schedules (small $T$), the choice matters more; notebook 04 lets you drag the sliders.

# %% [markdown]
# ## Summary
#
# - One step (eq. 11) keeps a class with probability $\alpha_t$ and otherwise resamples it uniformly;
#   as a matrix, $Q_t = \alpha_t I + \frac{1 - \alpha_t}{K}\mathbf{1}\mathbf{1}^\top$, symmetric with
#   rows summing to 1.
# - Such matrices compose by multiplying their keep-probabilities, $Q(a)Q(b) = Q(ab)$, which proves
#   eq. 12: after $t$ steps, $q(x_t \mid x_0) = \mathcal{C}(\bar\alpha_t x_0 + (1 - \bar\alpha_t)/K)$.
# - $\bar\alpha_t$ is the probability that a class survived all $t$ steps; $x_t$ equals $x_0$ with the
#   slightly larger probability $\bar\alpha_t + (1 - \bar\alpha_t)/K$.
# - The schedule sets the pace; the official code uses the square root of the cosine schedule.
#
# In the package: `q_step` (eq. 11), `q_marginal` (eq. 12), `q_sample` (draw from eq. 12),
# `make_schedule` and its buffers `alphas`, `alpha_bars`, indexed by $t$.
#
# Next, notebook 02 runs the process backwards one step: given $x_t$ and $x_0$, what was $x_{t-1}$?

# %% [markdown]
# ## Exercises
#
# **Exercise 1.** A toy-map pixel ($K = 8$) under the `hoogeboom-cosine` schedule with $T = 1000$
# (`schedules["hoogeboom-cosine"]`): what is the probability that its class at step 600 equals its
# class at step 200? Not its class at step 0: the class it had at step 200, whatever that was. Use the
# schedule's buffers, not the rounded values in the figure titles.
#
# **Exercise 2.** A `constant` schedule with $T = 100$ steps: which $\beta$ makes $\bar\alpha_T$
# exactly $10^{-3}$? (The check accepts a $\beta$ whose $\bar\alpha_{100}$ is within 1% of
# $10^{-3}$.)
#
# **Exercise 3.** For the `linear` schedule with $T = 1000$, at which step $t$ does the probability
# that a pixel *equals its original class* (not only "survived") first drop below $1/2$, for $K = 8$?

# %%
answer_1 = None  # a probability
answer_2 = None  # a number, beta
answer_3 = None  # an integer t

# %%
from mdiff_lite.exercises import check

hc = schedules["hoogeboom-cosine"]
steps_201_to_600 = torch.eye(8, dtype=F64)
for tau in range(201, 601):  # the 400 one-step matrices between the two times, multiplied
    steps_201_to_600 = steps_201_to_600 @ transition_matrix(hc.alphas[tau].item(), 8)
check("exercise 1", answer_1, steps_201_to_600[0, 0].item(), tol=1e-4)


def reaches_one_in_a_thousand(beta):
    if not isinstance(beta, (int, float)) or not 0 < beta < 1:
        return "beta must be a number in (0, 1)"
    abar_T = make_schedule("constant", 100, beta=beta).alpha_bars[100].item()
    return abs(abar_T / 1e-3 - 1) < 0.01 or f"then alpha_bar_100 = {abar_T:.3g}"


check("exercise 2", answer_2, ok=reaches_one_in_a_thousand)

same_prob = q_marginal(one_hot(torch.tensor(0), 8, F64), torch.arange(T + 1), schedules["linear"])[:, 0]
check("exercise 3", answer_3, int(torch.nonzero(same_prob < 0.5)[0]), tol=0);

# %% [markdown]
# <details><summary>Solution 1</summary>
#
# Steps 201 to 600 compose into one uniform-resampling step, $Q_{201} \cdots Q_{600} =
# Q(\bar\alpha_{600} / \bar\alpha_{200})$, since $Q(a)Q(b) = Q(ab)$ and $\bar\alpha_{600} =
# \bar\alpha_{200}\, \alpha_{201} \cdots \alpha_{600}$. Every diagonal entry of $Q(a)$ is
# $a + (1 - a)/K$, whatever the class at step 200 was. With $a = \bar\alpha_{600} / \bar\alpha_{200}
# = 0.5838 / 0.9480 = 0.6158$: $0.6158 + 0.3842/8 \approx 0.6638$.
#
# ```python
# s = schedules["hoogeboom-cosine"]
# a = s.alpha_bars[600] / s.alpha_bars[200]
# answer_1 = (a + (1 - a) / 8).item()
# ```
#
# </details>
#
# <details><summary>Solution 2</summary>
#
# $\bar\alpha_T = (1 - \beta)^T$, so $\beta = 1 - 10^{-3/T} = 1 - 10^{-0.03} \approx 0.0667$.
# (A 1000-step constant schedule would need only $\beta \approx 0.0069$.)
#
# </details>
#
# <details><summary>Solution 3</summary>
#
# $P(x_t = x_0) = \bar\alpha_t + (1 - \bar\alpha_t)/8 < 1/2$ means $\bar\alpha_t < 3/7$, a later step
# than $\bar\alpha_t < 1/2$ (the table above): $t = 287$ against 260.
#
# ```python
# s = schedules["linear"]
# answer_3 = int(torch.nonzero(s.alpha_bars + s.one_minus_alpha_bars / 8 < 0.5)[0])
# ```
#
# </details>
