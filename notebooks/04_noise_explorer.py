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
# # 04 · The noise explorer: watching noise eat a map
#
# Notebooks 01-03 worked on one pixel at a time. Here the forward process runs on whole pictures:
# a toy street scene (32 × 32, 8 classes) and a handwritten digit (8 × 8, 17 grey levels taken as 17
# classes). You will:
#
# 1. see eq. 12 as $K$ probability maps, one per class, fading towards $1/K$;
# 2. build *coupled* noise: one set of random numbers per pixel that drives $x_t$ for every $t$, so
#    that a larger $t$ only ever adds corruption, and check that each $x_t$ is still an exact draw
#    from eq. 12;
# 3. watch strips $x_0, \dots, x_T$ and the entropy of $q(x_t \mid x_0)$ against $t$ for each schedule;
# 4. play with two widgets: the noise explorer (schedule, its parameters, $T$ and $t$) and the
#    posterior explorer (eq. 13 as a bar chart).
#
# **Time:** the code runs in well under a minute on 2 CPU cores. How many minutes the reading and the exercises take has not been measured: no reader has been timed yet.
# The widgets need a live kernel: in a static rendering of this notebook they show their last picture.

# %% tags=["parameters"]
import os

SMOKE = os.environ.get("MDIFF_SMOKE", "0") == "1"
T = 200 if SMOKE else 1000              # steps of every schedule in this notebook
N_DRAWS = 20_000 if SMOKE else 400_000  # fresh coupled draws in the Monte Carlo check

# %%
import math

import matplotlib.pyplot as plt
import torch

from mdiff_lite import make_schedule, one_hot, q_marginal, q_posterior, q_sample
from mdiff_lite.data import Digits, ToySegmentation
from mdiff_lite.plots import plot_grid, plot_map
from mdiff_lite.schedules import SCHEDULE_NAMES
from mdiff_lite.widgets import (coupled_noise, draw_coupling, marginal_entropy_bits, noise_explorer,
                                posterior_explorer)

# %% [markdown]
# ## Two maps
#
# Each pixel holds a class, drawn in its dataset's fixed colour (the same colours in every notebook).
# The digit's classes are grey levels; multinomial diffusion ignores that they have an order.

# %%
toy, digits = ToySegmentation(32, 32), Digits()
toy_map, digit = toy.split("test", n=1)[0], digits.split("test")[0]
fig, axes = plt.subplots(1, 2, figsize=(6, 3), layout="constrained")
plot_map(toy_map, toy, ax=axes[0], title="toy street scene, K = 8", legend=True)
plot_map(digit, digits, ax=axes[1], title="digit, K = 17")
plt.show()

# %% [markdown]
# ## Eq. 12 as probability maps
#
# After $t$ steps a pixel keeps its class with probability $\bar\alpha_t$ and is otherwise resampled
# uniformly:
#
# $$q(x_t \mid x_0) = \mathcal C\big(x_t \mid \bar\alpha_t\, x_0 + (1 - \bar\alpha_t)/K\big), \qquad
# \bar\alpha_t = \prod_{\tau \le t} (1 - \beta_\tau).$$
#
# For a whole map that is one probability vector per pixel, an array $[H, W, K]$. By hand, from the
# betas, then against the package:

# %%
schedule = make_schedule("hoogeboom-cosine", T)
K = toy.num_classes
x0 = one_hot(toy_map, K, dtype=torch.float64)                    # [32, 32, 8]

t = T // 4
alpha_bar_t = torch.prod(1 - schedule.betas[1:t + 1])            # the product, step by step
probs = alpha_bar_t * x0 + (1 - alpha_bar_t) / K                 # eq. 12, every pixel at once

torch.testing.assert_close(probs, q_marginal(x0, t, schedule))
print(f"t = {t}: alpha_bar_t = {alpha_bar_t:.4f}; a pixel shows its own class with probability "
      f"{alpha_bar_t + (1 - alpha_bar_t) / K:.4f}, each other class with {(1 - alpha_bar_t) / K:.4f}")

# %% [markdown]
# Slice that array by class: map $k$ shows $q(x_t = k \mid x_0)$ at every pixel. It is the mask of
# class $k$ in $x_0$, scaled by $\bar\alpha_t$, on a floor of $(1 - \bar\alpha_t)/K$: a pixel of class $k$
# holds $\bar\alpha_t + (1 - \bar\alpha_t)/K$, every other pixel $(1 - \bar\alpha_t)/K$. As $t$ grows the masks
# fade and the floor rises, until at $t = T$, where $\bar\alpha_T \approx 0$, all $K$ maps are the same flat
# $1/K$ (marked on the colour bar): the uniform distribution, where nothing of $x_0$ is left. This
# schedule keeps the masks clear for a long time: they fade mostly in the second half ($\bar\alpha_t$ is
# still 0.70 at $t = T/2$).

# %%
times = [0, T // 4, T // 2, 3 * T // 4, 9 * T // 10, T]
fig, axes = plt.subplots(len(times), K, figsize=(1.1 * K + 1.2, 1.1 * len(times) + 0.4), layout="constrained")
for row, t in zip(axes, times):
    probs = q_marginal(x0, t, schedule)
    for k, ax in enumerate(row):
        image = ax.imshow(probs[..., k], cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        if t == 0:
            ax.set_title(toy.class_names[k], fontsize=8)
    row[0].set_ylabel(f"t = {t}\n" + r"$\bar\alpha_t$" + f" = {schedule.alpha_bars[t]:.2f}", fontsize=8)
colour_bar = fig.colorbar(image, ax=axes, shrink=0.7, aspect=30, ticks=[0, 1 / K, 0.25, 0.5, 0.75, 1])
colour_bar.ax.set_yticklabels(["0", f"1/K = {1 / K:g}", "0.25", "0.5", "0.75", "1"], fontsize=8)
colour_bar.set_label("probability q(x_t = k | x_0)", fontsize=8)
fig.suptitle(f"q(x_t = k | x_0) for each class k (columns) at each t (rows); {schedule.name}, T = {T}",
             fontsize=9)
plt.show()

# %% [markdown]
# ## Coupled noise: one set of random numbers for every $t$
#
# To *watch* the noise grow we want $x_1, x_2, \dots$ that look like one map being eaten, not a new
# random picture at each $t$. Drawing $x_t \sim q(x_t \mid x_0)$ afresh for each $t$ (as training does,
# with `q_sample`) gives exact marginals but unrelated pictures: a pixel destroyed at $t = 300$ may be
# intact again at $t = 301$.
#
# The fix: give each pixel two random numbers once, $u \sim U(0, 1)$ and a replacement class
# $n \sim \text{Uniform}\{0, \dots, K-1\}$, and set
#
# $$x_t = \begin{cases} x_0 & \text{if } u < \bar\alpha_t \\ n & \text{otherwise.} \end{cases}$$
#
# For one $t$, $P(u < \bar\alpha_t) = \bar\alpha_t$, so the pixel keeps $x_0$ with probability
# $\bar\alpha_t$ and is otherwise a uniform class: exactly eq. 12. Across $t$, since $\bar\alpha_t$ only
# decreases, the set of resampled pixels $\{u \ge \bar\alpha_t\}$ only grows, and a resampled pixel
# always shows the same $n$. (Only the marginals are the paper's: the real chain of eq. 11 can resample
# a pixel several times. For pictures of $q(x_t \mid x_0)$ that is all we need.) Three lines by hand,
# then the package:

# %%
g = torch.Generator().manual_seed(1)
u = torch.rand(toy_map.shape, generator=g, dtype=torch.float64)   # one uniform per pixel
n = torch.randint(0, K, toy_map.shape, generator=g)               # one replacement class per pixel
x_t = torch.where(u < schedule.alpha_bars[T // 2], toy_map, n)

assert torch.equal(x_t, coupled_noise(toy_map, T // 2, schedule, u, n))
u, n = draw_coupling(toy_map.shape, K, torch.Generator().manual_seed(1))  # the same draws, packaged
assert torch.equal(x_t, coupled_noise(toy_map, T // 2, schedule, u, n))
print(f"t = {T // 2}: {(x_t != toy_map).float().mean():.1%} of the pixels differ from x_0")

# %% [markdown]
# Is each $x_t$ really a draw from eq. 12? Take many pixels with the same $x_0$ class, fresh $(u, n)$ for
# each, and compare the class frequencies with eq. 12, in units of the Monte Carlo standard error
# $\sqrt{p(1-p)/N}$ (anything beyond about 4 would be suspicious):

# %%
x0_class = 3  # road
pixels = torch.full((N_DRAWS,), x0_class)
u_many, n_many = draw_coupling((N_DRAWS,), K, torch.Generator().manual_seed(2))
for t in (T // 10, T // 2, 9 * T // 10):
    freq = torch.bincount(coupled_noise(pixels, t, schedule, u_many, n_many), minlength=K).double() / N_DRAWS
    p = q_marginal(one_hot(torch.tensor(x0_class), K, dtype=torch.float64), t, schedule)
    z = ((freq - p) / torch.sqrt(p * (1 - p) / N_DRAWS)).abs().max()
    print(f"t = {t:4d}: P(x_t = x_0) = {p[x0_class]:.4f}, observed {freq[x0_class]:.4f}; "
          f"largest deviation over the {K} classes: {z:.1f} standard errors")
    assert z < 5

# %% [markdown]
# ## Strips $x_0 \dots x_T$
#
# Seven frames of each map under the same random numbers. Corruption only spreads; nothing heals.

# %%
frame_times = torch.linspace(0, T, 7).round().long()
for data, x in ((toy, toy_map), (digits, digit)):
    u_x, n_x = draw_coupling(x.shape, data.num_classes, torch.Generator().manual_seed(3))
    frames = coupled_noise(x, frame_times.view(-1, 1, 1), schedule, u_x, n_x)   # [7, H, W]
    plot_grid(frames, data, ncols=7, legend=False, titles=[f"t = {t}" for t in frame_times.tolist()],
              suptitle=f"{type(data).__name__}: coupled noise, {schedule.name}, T = {T}")
plt.show()

# %% [markdown]
# For contrast, count the pixels that go back to their $x_0$ class between consecutive frames, for coupled
# noise and for independent draws with `q_sample` (what training uses; right for training, since each
# training step needs one $x_t$, wrong for a film):

# %%
dense_times = torch.arange(0, T + 1, T // 100)
coupled = coupled_noise(toy_map, dense_times.view(-1, 1, 1), schedule, u, n)
independent = q_sample(toy_map.expand(len(dense_times), -1, -1), dense_times.view(-1, 1, 1), schedule, K,
                       torch.Generator().manual_seed(4))
for name, film in (("coupled", coupled), ("independent", independent)):
    wrong = film != toy_map
    healed = (wrong[:-1] & ~wrong[1:]).sum().item()
    print(f"{name:>11}: {healed:5d} pixels returned to x_0 between consecutive frames "
          f"({len(dense_times)} frames)")

# %% [markdown]
# ## Entropy against $t$
#
# How much is left of $x_0$ at time $t$? The entropy of $q(x_t \mid x_0)$ is the same for every pixel
# (the kernel treats all classes alike): with $a = \bar\alpha_t + (1 - \bar\alpha_t)/K$ on $x_0$ and
# $b = (1 - \bar\alpha_t)/K$ on each other class, $H_t = -a\log_2 a - (K-1)\, b \log_2 b$ bits. It starts at
# 0 and ends at $\log_2 K$ (3 bits for 8 classes, 4.09 for 17) when nothing is left. By hand from eq. 12,
# then the package:

# %%
one_pixel = one_hot(torch.tensor(0), K, dtype=torch.float64)
by_hand = torch.stack([-(torch.xlogy(p, p)).sum() / math.log(2)
                       for p in (q_marginal(one_pixel, t, schedule) for t in range(T + 1))])
torch.testing.assert_close(by_hand, marginal_entropy_bits(schedule, K))

fig, axes = plt.subplots(1, 2, figsize=(10, 3.2), layout="constrained")
for name in SCHEDULE_NAMES:
    s = make_schedule(name, T)
    axes[0].plot(torch.arange(T + 1) / T, s.alpha_bars, label=name)
    axes[1].plot(torch.arange(T + 1) / T, marginal_entropy_bits(s, K), label=name)
axes[0].set(xlabel="t / T", ylabel=r"$\bar\alpha_t$", title=r"survival $\bar\alpha_t$")
axes[1].axhline(math.log2(K), color="0.5", ls="--", lw=0.8)
axes[1].set(xlabel="t / T", ylabel="bits per pixel", title=f"entropy of q(x_t | x_0), K = {K}")
axes[1].legend(fontsize=8, frameon=False)
plt.show()

# %% [markdown]
# The schedules spend their noise very differently. `constant` destroys the map fastest
# ($\bar\alpha_t = (1-\beta)^t$ falls exponentially) and `linear` has lost it by $t/T \approx 0.5$; `jsd`
# makes $\bar\alpha_t$ fall in a straight line; `cosine` keeps most of the map for the first quarter, and
# `hoogeboom-cosine` (the official code's, the square root of `cosine`'s $\bar\alpha_t$) keeps it longest
# and reaches the uniform distribution only at the very end. Where the entropy is
# flat at $\log_2 K$, the steps are wasted: the map is already gone.
#
# ## The noise explorer
#
# Everything above in one widget. Choose a **schedule**, tune its own parameters (they reset to the
# schedule's defaults when you change the schedule or $T$), set $T$ and move **t** (drag the slider,
# or click its handle and use the arrow keys). The left pictures are $x_0$ and its coupled $x_t$; the
# curves, drawn against $t/T$, are $\bar\alpha_t$ and $P(x_t = x_0) = \bar\alpha_t + (1 - \bar\alpha_t)/K$
# with this map's own share of unchanged pixels (dotted), $\beta_t$ on a log scale, and the entropy.
# The line above the picture gives the values at $t$.
#
# Things to try: find the $t$ where the street is no longer recognisable, for each schedule; set
# `constant` and drag `beta`; compare `linear` at $T = 100$ and $T = 4000$ (its default betas scale
# with $1/T$, so the curves barely move). `noise_explorer("digits")` does the same for a digit.

# %%
explorer = noise_explorer("toyseg", schedule="hoogeboom-cosine", T=T)
explorer

# %% [markdown]
# Everything the widget shows is also an attribute, for use in code: `explorer.x_t` is the map on show,
# `explorer.curves` the curves, `explorer.schedule` the schedule.

# %%
print(f"{explorer.schedule}; t = {explorer.t}: "
      f"{(explorer.x_t != explorer.x0).float().mean():.1%} of pixels changed, "
      f"P(x_t = x_0) = {explorer.curves['survival'][explorer.t]:.3f}")

# %% [markdown]
# ## The posterior explorer
#
# Eq. 13 runs the process one step back: given $x_t$ and $x_0$, where was the pixel at $t - 1$?
#
# $$q(x_{t-1} \mid x_t, x_0) \propto \underbrace{\big[\alpha_t\, x_t + (1-\alpha_t)/K\big]}_{q(x_t \mid x_{t-1})
# \text{ as a function of } x_{t-1}} \odot \underbrace{\big[\bar\alpha_{t-1}\, x_0 + (1-\bar\alpha_{t-1})/K\big]}_{q(x_{t-1} \mid x_0)}.$$
#
# One case by hand, against the package:

# %%
x0_vec = one_hot(torch.tensor(0), K, dtype=torch.float64)   # x_0 = sky
xt_vec = one_hot(torch.tensor(1), K, dtype=torch.float64)   # x_t = building
t = T // 10
theta = (schedule.alphas[t] * xt_vec + schedule.betas[t] / K) * \
        (schedule.alpha_bars[t - 1] * x0_vec + (1 - schedule.alpha_bars[t - 1]) / K)
torch.testing.assert_close(theta / theta.sum(), q_posterior(xt_vec, x0_vec, t, schedule))
print(f"t = {t}: P(x_(t-1) = building) = {(theta / theta.sum())[1]:.4f}, P(x_(t-1) = sky) = {(theta / theta.sum())[0]:.4f}")

# %% [markdown]
# The widget draws the bars (the posterior, eq. 13) with its two factors as markers. Things to try:
# with $x_t \ne x_0$, move **step t** up from 1. At $t = 1$ the pixel must have been $x_0$ at time 0.
# A few steps later $x_t$ is already the likelier answer: the pixel changed at one of the first $t$ steps,
# and with betas of similar size the chance that it was the last one is only about $1/t$ (at $t = 2$ the
# two are close to even). Set $x_t = x_0$ and the posterior concentrates on that class. The other classes
# only get mass late in the process, when both factors are spread out.

# %%
posterior = posterior_explorer("toyseg", schedule="hoogeboom-cosine", T=T, x0_class=0, xt_class=1, t=t)
torch.testing.assert_close(torch.from_numpy(posterior.probs), theta / theta.sum())
posterior

# %% [markdown]
# ## Summary
#
# - Eq. 12 on a map is $K$ probability maps, each its class's mask scaled by $\bar\alpha_t$ on a floor of
#   $(1-\bar\alpha_t)/K$; all fade to $1/K$.
# - Coupled noise ($x_t = x_0$ where $u < \bar\alpha_t$, else $n$, with $u, n$ fixed per pixel) gives exact
#   eq. 12 marginals at every $t$ and a film in which corruption only spreads; independent draws give
#   the same marginals and a flickering film.
# - The entropy of $q(x_t \mid x_0)$ rises from 0 to $\log_2 K$; schedules differ in when they spend it,
#   and steps spent at $\log_2 K$ teach the model nothing.
# - Eq. 13 weighs what $x_t$ says (one step of noise) against what $x_0$ says ($t - 1$ steps of noise).
#
# ## Exercises
#
# 1. **Entropy by hand.** Under `constant` with $\beta = 0.01$ (`make_schedule("constant", 1000, beta=0.01)`),
#    $\bar\alpha_t = (1 - \beta)^t$. Compute the entropy of $q(x_t \mid x_0)$ at $t = 100$ for $K = 8$, in
#    bits, with `math` alone (the formula of the entropy section), then compare with `marginal_entropy_bits`.
# 2. **Wasted steps.** For `linear` with $T = 1000$ and $K = 8$: what share of the steps $t = 1, \dots, T$
#    have an entropy within 0.01 bits of $\log_2 K$, where $x_t$ is as good as uniform noise? Compute it,
#    then compare `hoogeboom-cosine`.
# 3. **Coupled noise is not the chain of eq. 11.** Under `jsd` with $T = 1000$ and $K = 8$, a pixel shows
#    its $x_0$ class at $t_1 = 400$. What is the probability that it still shows it at $t_2 = 800$, (a) with
#    coupled noise (draw a million pixels with `draw_coupling` and run `coupled_noise` at both times; or
#    work it out from $u$ and $n$), (b) under the Markov chain of eq. 11, whose steps from $t_1$ to $t_2$
#    compose to eq. 12 with $\bar\alpha_{t_2} / \bar\alpha_{t_1}$ in place of $\bar\alpha_t$? Give the pair
#    `(a, b)`; (a) within 0.003.

# %%
answer_1 = None  # bits per pixel
answer_2 = None  # a share of the T steps, between 0 and 1
answer_3 = None  # a pair: (coupled noise, chain of eq. 11)

# %%
from mdiff_lite.exercises import check

check("exercise 1", answer_1, marginal_entropy_bits(make_schedule("constant", 1000, beta=0.01), 8)[100].item(),
      tol=1e-4)

entropy_linear = marginal_entropy_bits(make_schedule("linear", 1000), 8)
check("exercise 2", answer_2, (entropy_linear[1:] > math.log2(8) - 0.01).double().mean().item(), tol=2e-3)

jsd = make_schedule("jsd", 1000)
a_1, a_2 = jsd.alpha_bars[400].item(), jsd.alpha_bars[800].item()
coupled_3 = (a_2 + (1 - a_2) / 8) / (a_1 + (1 - a_1) / 8)
chain_3 = a_2 / a_1 + (1 - a_2 / a_1) / 8


def pair_is_right(answer):
    try:
        coupled, chain = (float(value) for value in answer)
    except (TypeError, ValueError):
        return "give a pair (a, b)"
    if abs(coupled - coupled_3) > 3e-3:
        return "(a), coupled noise, is off"
    return True if abs(chain - chain_3) < 1e-4 else "(b), the chain of eq. 11, is off"


check("exercise 3", answer_3, ok=pair_is_right);

# %% [markdown]
# <details><summary>Solution 1</summary>
#
# $\bar\alpha_{100} = 0.99^{100} \approx 0.366$; the pixel's own class has $a = \bar\alpha_t + (1 - \bar\alpha_t)/8$,
# each of the 7 others $b = (1 - \bar\alpha_t)/8$:
#
# ```python
# alpha_bar = 0.99 ** 100
# a, b = alpha_bar + (1 - alpha_bar) / 8, (1 - alpha_bar) / 8
# answer_1 = -a * math.log2(a) - 7 * b * math.log2(b)   # about 2.549 bits, of at most 3
# marginal_entropy_bits(make_schedule("constant", 1000, beta=0.01), 8)[100]   # the same
# ```
#
# </details>
#
# <details><summary>Solution 2</summary>
#
# ```python
# entropy = marginal_entropy_bits(make_schedule("linear", 1000), 8)
# answer_2 = (entropy[1:] > math.log2(8) - 0.01).float().mean().item()   # about 0.45
# ```
#
# Almost half of `linear`'s steps see (nearly) pure noise; `hoogeboom-cosine` wastes about 3 % of its steps.
#
# </details>
#
# <details><summary>Solution 3</summary>
#
# With coupled noise the pixel shows $x_0$ at $t$ when $u < \bar\alpha_t$ or $n = x_0$. Since
# $\bar\alpha_{800} < \bar\alpha_{400}$, showing $x_0$ at 800 implies showing it at 400, so (a) is
# $P(x_{800} = x_0) / P(x_{400} = x_0)$ from eq. 12. By simulation:
#
# ```python
# s = make_schedule("jsd", 1000)
# u, n = draw_coupling((1_000_000,), 8, torch.Generator().manual_seed(0))
# pixel = torch.zeros(1_000_000, dtype=torch.long)
# at_400 = coupled_noise(pixel, 400, s, u, n) == 0
# at_800 = coupled_noise(pixel, 800, s, u, n) == 0
# a = (at_800 & at_400).sum().item() / at_400.sum().item()      # about 0.462
# r = s.alpha_bars[800].item() / s.alpha_bars[400].item()      # 1/3
# answer_3 = (a, r + (1 - r) / 8)                               # (0.462, 0.417)
# ```
#
# Both have the marginals of eq. 12 at every $t$, not the same law across times: with coupled noise a
# pixel that shows $x_0$ at $t_1$ only because its replacement class $n$ is $x_0$ shows it for good, while
# the chain of eq. 11 may resample it again; so (a) > (b). Training draws one $x_t$ at a time from
# $q(x_t \mid x_0)$, and for that only the marginals matter.
#
# </details>
