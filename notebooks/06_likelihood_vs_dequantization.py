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
# # 06 · Likelihood: multinomial diffusion against dequantization flows
#
# The paper's claim is that on categorical data multinomial diffusion beats normalizing flows that
# first *dequantize* the data (turn class ids into continuous numbers by adding noise). Here you test
# that claim on data where the true answer is known. You will:
#
# 1. compute the diffusion model's test bound in bits per pixel (all its terms), and see which $t$ it is
#    spent on;
# 2. learn dequantization in one dimension first: three classes as numbers, the density a flow would
#    have to fit, its bound, and why the order of the classes matters to it;
# 3. meet the four dequantization flows of the package, each by what it transforms;
# 4. compare everything **at equal training budgets**: test bits per pixel against training minutes, for
#    diffusion and each flow, against the true entropy, the floor no model can beat;
# 5. see why relabelling the classes cannot change the diffusion model's likelihood, what it did to an
#    ordinal flow, and where the class order shows in the flow's samples;
# 6. place the numbers beside the paper's.
#
# The symbols are those of notebook 03's table.
#
# **Time:** the code runs in about 5 minutes on 2 CPU cores (about 1 with `MDIFF_SMOKE=1`). How many minutes the reading and the exercises take has not been measured: no reader has been timed yet.
# All models are loaded from the package; the benchmark that trained them is named below with its command.

# %% tags=["parameters"]
import os

SMOKE = os.environ.get("MDIFF_SMOKE", "0") == "1"
N_TEST = 8 if SMOKE else 64   # test maps scored live (the benchmark scored 128, the shipped model's metadata 1000)
K_IW = 4 if SMOKE else 64     # samples of the importance-weighted flow bound

# %%
import copy
import itertools
import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
import matplotlib.ticker
import torch

from mdiff_lite import make_schedule, q_marginal, q_posterior, one_hot, categorical_kl
from mdiff_lite.baselines import KINDS, evaluate_flow, load_pretrained_flow
from mdiff_lite.data import ToySegmentation
from mdiff_lite.evaluate import ALL_T_LABEL, bound_breakdown, evaluate_bound
from mdiff_lite.exercises import check
from mdiff_lite.models import count_parameters
from mdiff_lite.plots import plot_grid
from mdiff_lite.sampling import sample
from mdiff_lite.train import load_pretrained

torch.manual_seed(0)
data = ToySegmentation(32, 32)
test_maps = data.split("test")[:N_TEST]
ENTROPY = data.entropy_bits_per_pixel
D = 32 * 32
RESULTS = Path("..") / "benchmarks" / "results"  # committed benchmark results, each with its command
print(f"true entropy: {ENTROPY:.4f} bits per pixel; a uniform model: log2 8 = 3 bits per pixel")

# %% [markdown]
# ## Bits per pixel, and what each number is
#
# Every model here reports a bound on $-\log_2 P(x)$, divided by the number of *categorical* dimensions
# $D = 32 \cdot 32$ (pixels, not one-hot entries):
#
# $$\text{bpd} = \frac{-\mathcal{L}(x)}{D \ln 2}, \qquad \mathcal{L}(x) \le \log P(x) ,$$
#
# where $P(x)$ is the model's probability of the map $x$ and $\mathcal{L}(x)$ its lower bound: for the diffusion
# model, eq. 3 (minus the bound of 03's table), for a flow the dequantization bound below.
#
# The true entropy $H$ of the toy generator is the floor: the expected $-\log_2 P(x)/D$ of the *true*
# distribution; any model's expected bound is at least $H$. The ratio bpd $/ H$ says how far from perfect
# a model is.
#
# ## Multinomial diffusion: the all-T estimate of the bound
#
# Eq. 3 is a sum of $T + 1$ terms (notebook 03's table): the decoder term $L_1$, one KL term $L_t$ for each
# $t = 2, \dots, T$, and the prior term $L_\text{prior}$. Computing all of them per map, each at one draw of
# $x_t$, gives the **all-T estimate**: unbiased for the bound, not the bound itself, since each term is an
# expectation over $x_t$ estimated by one draw; its standard error over maps covers that noise.
# `evaluate_bound` batches the 1000 network calls per map.

# %%
model, meta = load_pretrained("toyseg")
schedule = make_schedule(**model.config.schedule)
all_t = evaluate_bound(model, schedule, test_maps, batch_size=16)  # 16 maps x 1000 steps at a time: memory
print(f"{all_t['bpd']:.4f} ± {all_t['stderr']:.4f} bits per pixel on {all_t['n_images']} test maps "
      f"({all_t['seconds']:.0f} s)\n  = {all_t['bpd'] / ENTROPY:.2f} x the entropy; {all_t['bound']}")
print(f"the shipped metadata, all {meta['test_n_images']} test maps: {meta['test_bpd']:.4f} ± {meta['test_bpd_stderr']:.4f} "
      f"({meta['eval_command']})")

# %% [markdown]
# The per-$t$ terms tell where the bits go (each $L_t$ estimated by the mean over the maps of its one-draw
# $\ell_t$). Tiny $t$ costs almost nothing (eq. 14 multiplies in the
# pixel's own evidence, which decides almost everything when $x_t$ is nearly clean). The late steps cost the
# most, but that is mostly the information the forward process destroys there, which every model pays
# (notebook 05 compares with the best denoiser there is). The middle, where the network must restore
# structure from a half-destroyed map, is where a better network would gain.

# %%
per_t = torch.tensor(all_t["per_t_bpd"])
fig, axes = plt.subplots(1, 2, figsize=(10, 3), layout="constrained")
axes[0].plot(range(1, schedule.T + 1), per_t[:-1] * schedule.T)
axes[0].set(xlabel="t", ylabel="T · L_t (bits per pixel)", title="The bound's terms, T times each (estimated)")
parts = bound_breakdown(all_t["per_t_bpd"])
axes[1].bar([p["t"] for p in parts[:-1]], [p["bpd"] for p in parts[:-1]])
axes[1].set(xlabel="range of t", ylabel="bits per pixel", title="Sum of the terms per range of t")
axes[1].tick_params(axis="x", rotation=45)
print(f"prior term: {parts[-1]['bpd']:.2e} bits per pixel")

# %% [markdown]
# ## Dequantization in one dimension
#
# A normalizing flow models a *density* $p(v)$ on real numbers; a class is not a number. Dequantization
# makes it one. Take one pixel with three classes, numbered $0, 1, 2$, with data probabilities
# $\pi = (0.45, 0.10, 0.45)$ (`P` in the code), and add uniform noise: $v = x + u$, $u \sim U[0, 1)$. Then $v$
# has a density on $[0, 3)$: $\pi(x)$ on the unit cell $[x, x + 1)$, a staircase. A flow offers a density $p$
# on $[0, 3)$; the probability it gives a class is the mass of that class's cell, and
#
# $$\log P(x) = \log \int_0^1 p(x + u)\, du \;\ge\; \mathbb{E}_{u}\big[\log p(x + u)\big] = \mathcal{L}(x)
#   \qquad \text{(Jensen)}.$$
#
# Averaged over $x \sim \pi$ the bound is $-H(\pi) - \mathrm{KL}(p^\star \,\|\, p)$, with $p^\star$ the staircase:
# a model pays the entropy plus how far its density is from the staircase. The staircase itself is perfect.
#
# But a flow is a smooth, invertible map of a Gaussian: with limited capacity and training, its density
# is smooth at some scale and cannot jump from 0.45 to 0.10 at an integer. A stand-in for that is the
# staircase blurred by a Gaussian of width $\sigma$ (mirrored at the ends, so that it stays on $[0, 3)$). The blur costs
# bits at every jump between neighbouring cells, and the jumps depend on how the classes are numbered:
# $(0.45, 0.10, 0.45)$ has two big ones, the same classes numbered $(0.45, 0.45, 0.10)$ one.

# %%
DV = 1e-4  # integrals over v are sums over the midpoints of a grid of this step


def cells(K):
    """The grid's midpoints on [0, K)."""
    return (torch.arange(K * round(1 / DV), dtype=torch.float64) + 0.5) * DV


def staircase(P):
    """The dequantized density p*(v) = P(floor v) on the grid."""
    return torch.as_tensor(P, dtype=torch.float64)[cells(len(P)).long()]


def blurred(P, sigma):
    """The staircase convolved with a Gaussian of width sigma: a sum of normal CDFs, one step per
    cell, with the staircase mirrored at 0 and K so that no mass leaves [0, K)."""
    if sigma == 0:
        return staircase(P)
    K, v = len(P), cells(len(P))
    mirrored = {j: P[-j - 1] if j < 0 else P[j] if j < K else P[2 * K - 1 - j] for j in range(-K, 2 * K)}
    smooth = sum(q * (torch.special.ndtr((j + 1 - v) / sigma) - torch.special.ndtr((j - v) / sigma))
                 for j, q in mirrored.items())
    return smooth / (smooth.sum() * DV)


def bound_bits(P, density):
    """-E_x E_u[log2 p(x + u)] for x ~ P: the uniform-dequantization bound, in bits."""
    return -(staircase(P) * density.log2()).sum().item() * DV


P_bad, P_good = (0.45, 0.10, 0.45), (0.45, 0.45, 0.10)
H = -sum(q * math.log2(q) for q in P_bad)
assert abs(bound_bits(P_bad, staircase(P_bad)) - H) < 1e-6          # the staircase: the bound is tight
sigmas = [0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4]
cost = {P: [bound_bits(P, blurred(P, s)) - H for s in sigmas] for P in (P_bad, P_good)}

fig, axes = plt.subplots(1, 3, figsize=(12, 3), layout="constrained")
for ax, P in zip(axes[:2], (P_bad, P_good)):
    ax.plot(cells(3), staircase(P), color="0.5", lw=1, label="staircase p*: the perfect density")
    ax.plot(cells(3), blurred(P, 0.15), label="a smooth density (σ = 0.15)")
    ax.set(xlabel="v = x + u", ylabel="density", title=f"classes numbered with P = {P}", ylim=(0, 0.75))
    ax.set_xticks([0.5, 1.5, 2.5], ["class 0", "class 1", "class 2"])
    ax.legend(fontsize=7, loc="upper center")
for P, style in ((P_bad, "o-"), (P_good, "s-")):
    axes[2].plot(sigmas, cost[P], style, ms=4, label=f"P = {P}")
axes[2].set(xlabel="σ, the density's smoothness scale", ylabel="bits above the entropy",
            title="What smoothness costs, by class order")
axes[2].legend(fontsize=8)
print(f"entropy {H:.3f} bits; at σ = 0.15 the bound costs {cost[P_bad][3]:.3f} bits more with the rare class in "
      f"the middle, {cost[P_good][3]:.3f} with it at the end")

# %% [markdown]
# Same classes, same probabilities, same smoothness: numbering the rare class between the two common ones
# costs about twice as much, two jumps of the same height instead of one (exactly twice while $\sigma$ is
# small against a cell; a little more at the largest $\sigma$, where the two jumps' blurs overlap). An **ordinal** flow (one number per pixel) pays for an order the data does not
# have. On maps the effect is the same in spirit but about neighbourhoods: wherever the flow is unsure,
# its smooth density spreads a pixel's mass onto the *numerically* neighbouring classes.
#
# The **one-hot** representation removes the order: class $k$ becomes the corner $e_k$ of $[0, 2)^K$, each
# class its own axis, no neighbours. The price is room: the dequantized point lives in $K$ dimensions per pixel
# instead of one, and every cell is a unit cube in a space of volume $2^K$, of which the data uses only $K$
# cubes. A density that knows only the box spreads over all of it (exercise 3 computes what that costs), and
# the flow must learn to empty the rest, for every pixel.
#
# ## The four flows of the package
#
# `mdiff_lite.baselines.DequantizationFlow(kind, ...)` has four kinds, one per row:
#
# | kind | what is dequantized | noise $u$, $q(u \mid x)$ | the point the flow sees |
# |---|---|---|---|
# | ordinal | the class index | uniform, $\log q = 0$ | one number per pixel in $[0, K)$ |
# | onehot | the one-hot vector (the paper's baselines) | uniform | $K$ numbers per pixel in $[0, 2)$ |
# | variational-ordinal | the class index | a learned conditional flow (Flow++, Ho et al. 2019) | one number per pixel |
# | variational-onehot | the one-hot vector | a learned conditional flow | $K$ numbers per pixel |
#
# A learned $q(u \mid x)$ lets the noise follow the density's shape inside each cell instead of filling the
# cell evenly, which tightens the bound: its $\log q$ is subtracted, $\mathcal{L} = \mathbb{E}_q[\log p(x + u) - \log q(u \mid x)]$.
#
# How a flow has a density at all: it is an invertible map $f$ from $v$ to a Gaussian $z = f(v)$, and by the
# change of variables $\log p(v) = \log \mathcal{N}(f(v); 0, I) + \log |\det \partial f / \partial v|$. It is built
# from layers whose inverse and determinant are cheap: each $v$ is squashed into $(0, 1)$ and through a logit
# (so an unbounded Gaussian can reach it); then *affine couplings*, which leave half of the numbers as they
# are and scale and shift the other half by amounts computed from the first half (so the determinant is the
# product of the scales), alternating halves (RealNVP, Dinh et al. 2017); then levels of Glow steps (Kingma &
# Dhariwal 2018), each level folding 2 × 2 pixels into channels. The same design serves all four kinds; you
# can treat its inside as a black box that returns $\log p(v)$, which is all the bound needs. With $k$ draws $u_1..u_k \sim q$, the
# importance-weighted bound (Burda et al. 2016) $\log \frac1k \sum_i p(x + u_i)/q(u_i \mid x)$ is tighter,
# and tends to $\log P(x)$ as $k$ grows. What each shipped flow turns a map into, and the one-sample bound of
# the ordinal kind by hand for one map against the package:

# %%
flows, flow_metas = {}, {}
x = test_maps[:1]
for kind in KINDS:
    flows[kind], flow_metas[kind] = load_pretrained_flow("toyseg", kind)
    corner = flows[kind].encode(x)
    print(f"{kind:<20} {flows[kind].num_parameters / 1e6:.2f}M parameters; a map becomes {tuple(corner.shape[1:])} "
          f"values, cell corners in {{{', '.join(f'{v:g}' for v in corner.unique()[:3].tolist())}{', ...' if corner.unique().numel() > 3 else ''}}}")

ordinal64 = copy.deepcopy(flows["ordinal"]).double()                       # float64 for the comparison
u = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
v = x[:, None].double() + u                                                # the dequantized map, in [0, K)^D
with torch.no_grad():
    by_hand = -ordinal64.log_density(v) / (D * math.log(2))                # log q(u | x) = 0 for uniform u
    package = ordinal64.bits_per_dim(x, 1, torch.Generator().manual_seed(5))  # draws the same u
torch.testing.assert_close(by_hand, package)
print(f"\none draw of the ordinal flow's bound for this map: {by_hand.item():.4f} bits per pixel")

# %% [markdown]
# ## Equal budgets: bits per pixel against training minutes
#
# A fair comparison trains every model from scratch for the same minutes on the same machine and scores
# them on the same test maps. `benchmarks/likelihood.py --curve` does that and also scores each model
# while it trains: the diffusion model's EMA with a Monte-Carlo estimate of its bound (4 random $t$ per
# map), each flow with its one-sample bound. The points before the last are the model in the middle of
# its run, its learning rate not yet annealed. Its committed results:

# %%
curve_run = json.loads((RESULTS / "likelihood_cpu_curve.json").read_text())
print(curve_run["command"])
steps = {r["kind"]: r["steps"] for r in curve_run["rows"]}
print(f"{curve_run['device']}, {curve_run['torch_threads']} thread, {curve_run['rows'][0]['n_test_maps']} test maps; "
      "every figure an unbiased estimate of an upper bound on the true bits per pixel, ± one standard error\n")
for r in curve_run["rows"]:
    for b in r["bounds"]:
        print(f"{r['model']:<42} {r['train_seconds'] / 60:4.1f} min {r['steps']:>5} steps  {b['label']:<42} "
              f"{b['bpd']:.4f} ± {b['stderr']:.4f} {b['bpd'] / r['entropy']:6.2f}x")

shipped_flows = json.loads((RESULTS / "likelihood_cpu.json").read_text())
fig, ax = plt.subplots(figsize=(10, 4.2), layout="constrained")
colors = {"diffusion": "C0", "ordinal": "C1", "onehot": "C2", "variational-ordinal": "C3", "variational-onehot": "C4"}
for r in curve_run["rows"]:
    c = r["curve"]
    ax.errorbar([p["minutes"] for p in c], [p["bpd"] for p in c], yerr=[p["stderr"] for p in c], marker="o", ms=3,
                capsize=2, color=colors[r["kind"]], label=r["model"].replace(" dequantization", ""))
ax.errorbar([meta["wall_seconds"] / 60], [meta["test_bpd"]], yerr=[meta["test_bpd_stderr"]], marker="*", ms=12,
            color="C0", mfc="white", ls="none", label=f"shipped diffusion model ({meta['wall_seconds'] / 60:.0f} min on 2 cores, earlier network)")
for r in shipped_flows["rows"]:
    if r["dataset"] == "toyseg" and not r["permuted"] and r["kind"] != "diffusion":
        ax.plot([r["train_seconds"] / 60], [r["bounds"][0]["bpd"]], marker="D", ms=6, mfc="white",
                color=colors[r["kind"]], ls="none")
ax.plot([], [], "D", mfc="white", color="0.3", label="shipped flows (an earlier 6-minute run)")
ax.axhline(ENTROPY, color="k", ls="--", lw=1, label=f"true entropy {ENTROPY:.3f}")
ax.set(xscale="log", yscale="log", xlabel="training minutes (the curves: one CPU core each, one after another)",
       ylabel="test bits per pixel (bound estimates)", title="Equal budgets: every model trained from scratch, same machine")
ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
ax.set_yticks([0.12, 0.2, 0.3, 0.5, 1, 2, 3, 5])
ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
flow_steps = [v for k, v in steps.items() if k != "diffusion"]
print(f"steps in the same minutes: diffusion {steps['diffusion']}, flows {min(flow_steps)} to {max(flow_steps)}")
print(f"{curve_run['note']}")
print("the shipped flows' run: " + ", ".join(f"{r['kind']} {r['steps']} steps" for r in shipped_flows["rows"]
                                            if r["dataset"] == "toyseg" and not r["permuted"] and r["kind"] != "diffusion"))

# %% [markdown]
# Read it along a vertical line: at every budget the diffusion model is several times lower than every flow,
# and it stays lower than the flows' final points from its first half minute on. The flows learn slowly per
# minute (each step is dearer, and they take far fewer: the steps printed above). Of the flows, dequantizing
# the class index beats dequantizing the one-hot vector; a learned $q(u \mid x)$ helps the one-hot kind a lot
# and, in this short budget, not the ordinal one. The one-hot flow with uniform noise is worst: it has the most
# room to empty. The open markers are there for scale only: the shipped diffusion model trained 45 minutes,
# and the shipped flows came from an earlier 6-minute run on a faster machine (their steps are printed above),
# which is why they sit below the curves' ends. The comparison is the curves.
#
# ### The shipped models, scored here
#
# The shipped models are what this notebook can evaluate live, on `N_TEST` test maps; their budgets differ (45 minutes
# for the diffusion model, 6 for each flow), so this is a check of the files, not a comparison:

# %%
rows = [{"model": f"multinomial diffusion (shipped, {meta['wall_seconds'] / 60:.0f} min)", "bound": ALL_T_LABEL.format(T=schedule.T),
         "bpd": all_t["bpd"], "stderr": all_t["stderr"]}]
for kind in KINDS:
    for k in (1, K_IW):
        r = evaluate_flow(flows[kind], test_maps, k=k, batch_size=max(1, 64 // k))
        rows.append({"model": f"flow, {kind} ({flow_metas[kind]['train_seconds'] / 60:.0f} min)",
                     "bound": "one-sample bound" if k == 1 else f"importance-weighted, k = {k}",
                     "bpd": r["bpd"], "stderr": r["stderr"], "kind": kind, "k": k})
print(f"flows trained by: {flow_metas['ordinal']['command']}")
print(f"the diffusion model: {meta['command']} ({count_parameters(model) / 1e6:.2f}M parameters)\n")
print(f"{'model':<42} {'bound':<42} {'bits per pixel':>17} {'x entropy':>9}")
for r in rows:
    print(f"{r['model']:<42} {r['bound']:<42} {r['bpd']:>8.4f} ± {r['stderr']:.4f} {r['bpd'] / ENTROPY:>9.2f}")

# %% [markdown]
# ## Relabelling the classes
#
# Class ids are names, not numbers: "road" = 3 and "car" = 6 is as good as the reverse. Multinomial
# diffusion never uses the order. Its transition $Q_t = \alpha_t I + \beta_t \mathbf{1}\mathbf{1}^\top / K$
# commutes with every permutation matrix $P$, so the marginal and the posterior of relabelled inputs are the
# originals relabelled, and every KL term is unchanged. Check it:

# %%
K, t = 8, 300
perm = torch.randperm(K, generator=torch.Generator().manual_seed(0))
x0, xt = one_hot(torch.tensor([3]), K).double(), one_hot(torch.tensor([6]), K).double()
x0_hat = torch.softmax(torch.randn(1, K, dtype=torch.float64), -1)
torch.testing.assert_close(q_marginal(x0[:, perm], t, schedule), q_marginal(x0, t, schedule)[:, perm])
torch.testing.assert_close(q_posterior(xt[:, perm], x0[:, perm], t, schedule), q_posterior(xt, x0, t, schedule)[:, perm])
torch.testing.assert_close(   # the eq. 15 KL, computed from relabelled inputs, is the KL of the originals
    categorical_kl(q_posterior(xt[:, perm], x0[:, perm], t, schedule), q_posterior(xt[:, perm], x0_hat[:, perm], t, schedule)),
    categorical_kl(q_posterior(xt, x0, t, schedule), q_posterior(xt, x0_hat, t, schedule)))
print("q(x_t | x_0) and q(x_{t-1} | x_t, x_0) are relabelled with the labels; the KL terms are unchanged")

# %% [markdown]
# The network sees one-hot inputs and emits one logit per class, so relabelling just permutes its first
# and last layers: the same function class, the same optimum. Only the random initialisation differs, so
# a retrained model moves by noise. The ordinal flow is different, as the one-dimensional picture showed.
# The likelihood benchmark retrained both on permuted labels:

# %%
bench = shipped_flows
print(f"{bench['command']}\n(benchmarks/results/likelihood_cpu.json; its flow rows come from the run in "
      "benchmarks/results/likelihood_cpu_flows.json, with the same settings)")
ordinal_row = next(r for r in bench["rows"] if r["kind"] == "ordinal" and not r["permuted"])
print(f"the ordinal flow: {ordinal_row['steps']} steps in {ordinal_row['train_seconds'] / 60:.0f} minutes, "
      f"{ordinal_row['bounds'][-1]['bpd'] / ENTROPY:.1f} x the entropy")
for p in bench["permutation"]:
    print(f"{p['model']:<42} {p['original']:.4f} -> {p['permuted']:.4f} bits per pixel "
          f"({p['relative_change']:+.1%}, {p['change_in_stderrs']:+.1f} standard errors; {p['bound']})")

# %% [markdown]
# Read the two lines as measurements, not as a proof. The diffusion model's change is noise (two
# independently trained models), as the algebra says it must be. **On the toy maps the ordinal flow did not
# measurably suffer either**: after its few hundred steps (printed above) its bound is several times the entropy, so the
# error from a bad order, a few hundredths of a bit in the one-dimensional picture, is lost in the far larger
# error of a flow that has not yet learned the scenes; and one permutation is one draw. A longer budget and
# several permutations would be the experiment that settles it.
#
# ## Samples, and where the class order shows
#
# Likelihood is not everything, but it shows in samples too. Diffusion samples (100 steps) beside samples of
# the ordinal and one-hot flows:

# %%
g = torch.Generator().manual_seed(7)
n = 4 if SMOKE else 8
shown = [sample(model, schedule, n, steps=10 if SMOKE else 100, generator=g, progress=False),
         flows["ordinal"].sample(n, g), flows["onehot"].sample(n, g)]
plot_grid(torch.cat(shown), data, ncols=n, titles=[name if i % n == 0 else "" for name in
          ("diffusion", "ordinal flow", "one-hot flow") for i in range(n)],
          suptitle="Rows: multinomial diffusion, ordinal flow, one-hot flow");

# %% [markdown]
# Look at the ordinal flow's row with the class ids in mind: sky 0, building 1, window 2, road 3, sidewalk 4.
# Its mistakes are mostly between **neighbouring ids**: sky bleeding into building, building into windows,
# road into sidewalk, the blur of the one-dimensional picture, now in space. Counting it: for every pair of
# adjacent pixels (left-right and up-down) with different classes, how far apart are their ids?

# %%
def id_gaps(maps):
    """|id difference| of every pair of adjacent pixels whose classes differ."""
    pairs = [(maps[:, :, 1:], maps[:, :, :-1]), (maps[:, 1:, :], maps[:, :-1, :])]
    gaps = torch.cat([(a - b).abs().flatten() for a, b in pairs])
    return gaps[gaps > 0]

more = torch.Generator().manual_seed(8)
sets = {"real test maps": data.split("test")[:64], "ordinal flow": flows["ordinal"].sample(64, more),
        "one-hot flow": flows["onehot"].sample(64, more)}
fig, ax = plt.subplots(figsize=(7, 3), layout="constrained")
for i, (name, maps) in enumerate(sets.items()):
    share = torch.bincount(id_gaps(maps), minlength=K)[1:].double()
    ax.bar(torch.arange(1, K) + 0.27 * (i - 1), share / share.sum(), 0.27, label=name)
    print(f"{name:<15} {(id_gaps(maps) == 1).double().mean():.0%} of the class boundaries are between neighbouring ids")
ax.set(xlabel="|difference of the class ids| across a class boundary", ylabel="share of boundaries",
       title="Which classes meet: real maps and flow samples (64 each)")
ax.legend(fontsize=8);

# %% [markdown]
# In real maps many boundaries are between neighbouring ids already (sky meets building, building holds
# windows, road meets sidewalk: the ids were numbered in that order). The ordinal flow makes even more of them,
# and fewer of the long jumps (a car, id 6, on the road, id 3); the one-hot flow, which has no order, does not
# prefer neighbours. The order a flow is handed leaves its mark where the likelihood, on these undertrained
# models, did not.
#
# ## The paper's numbers, for context
#
# From Hoogeboom et al. (2021, arXiv:2102.05379), in bits per categorical dimension (test set, bounds), as the
# project's notes on the paper record them (`PAPER.md`, beside the repository):
#
# ("Argmax flows" are the paper's other method: a flow on continuous values whose argmax is the class, the
# dequantization learned so that every class has its own region; this course does not build them.)
#
# | data | multinomial diffusion | flows with uniform dequantization | variational dequantization | argmax flows |
# |---|---:|---:|---:|---:|
# | text8 (bits per character) | 1.72 | 1.90 (autoregressive) / 2.01 (coupling) | 1.43 / 2.08 | 1.38 / 1.82 |
# | Cityscapes 32 × 64, 8 classes (bits per pixel) | 0.305 (official repository, after a network fix; the first paper version: 0.37) | beaten, in the paper's text | not in our notes | not in our notes |
#
# The paper's Cityscapes model is a 30M-parameter U-Net trained for 500 epochs at $T = 4000$; ours has the
# parameters printed with the shipped table above and 45 minutes on 2 CPU cores. On text8 an *autoregressive* flow with variational dequantization
# beats multinomial diffusion: the comparison that favours diffusion is at equal architectures.
#
# ## Summary
#
# - Every bits-per-pixel figure of a model of the maps in this notebook is an unbiased estimate of an upper
#   bound on the true bits per pixel, in one unit (bits per categorical dimension), labelled with its kind: the diffusion model's all-T
#   estimate or Monte-Carlo estimate, the flows' one-sample and importance-weighted bounds.
# - Dequantization turns classes into cells of a continuous space; the bound is the entropy plus how far the
#   flow's density is from flat-in-every-cell, and a smooth density pays at every jump between neighbouring
#   cells, so an ordinal flow depends on how the classes are numbered. One-hot cells have no order but
#   $2^K$ room per pixel.
# - At equal budgets, multinomial diffusion's bound is several times lower than every flow's at every
#   budget measured, on data whose entropy is known.
# - Multinomial diffusion is blind to how the classes are numbered; an ordinal flow is not, though on these
#   undertrained flows it showed in the samples, not measurably in the likelihood.
#
# ## Exercises
#
# **Exercise 1 (the dequantization bound of one pixel).** Three classes with $P = (0.6, 0.3, 0.1)$, numbered
# 0, 1, 2, and a flow whose density on $[0, 3)$ is the ramp $p(v) = 2(3 - v)/9$. What is its expected
# uniform-dequantization bound, $-\mathbb{E}_{x \sim P}\, \mathbb{E}_u[\log_2 p(x + u)]$, in bits? (Integrate by
# hand, or numerically with the helpers of the one-dimensional section.)
#
# **Exercise 2 (the order that costs least).** Four classes with $P = (0.5, 0.1, 0.3, 0.1)$, and the smooth
# density of width $\sigma = 0.2$ (`blurred`). Which numbering of the classes
# costs least? Answer with the probabilities in their new order, e.g. `(0.1, 0.5, 0.3, 0.1)`.
#
# **Exercise 3 (how much room each kind must empty).** The best density that knows nothing but the box the
# dequantized points live in is uniform on it: on $[0, 2)^K$ per pixel for the one-hot kind, on $[0, K)$ for the
# ordinal kind. With $K = 8$, what does each one's uniform-dequantization bound cost, in bits per pixel? Answer
# as a pair (one-hot, ordinal).

# %%
answer_1 = None  # bits
answer_2 = None  # a tuple of 4 probabilities
answer_3 = None  # (one-hot bits, ordinal bits)

# %%
check("exercise 1", answer_1, bound_bits((0.6, 0.3, 0.1), 2 * (3 - cells(3)) / 9), tol=1e-3)

P4 = (0.5, 0.1, 0.3, 0.1)
costs4 = {order: bound_bits(order, blurred(order, 0.2)) for order in set(itertools.permutations(P4))}
best = min(costs4.values())
check("exercise 2", answer_2, ok=lambda a: tuple(a) in costs4 and costs4[tuple(a)] < best + 1e-9
      or f"that order costs {costs4.get(tuple(a), float('nan')) - best:.4f} bits more than the best")
box_bits = {kind: flows[kind].channels * math.log2(flows[kind].upper) for kind in ("onehot", "ordinal")}  # log2 volume
check("exercise 3", answer_3, ok=lambda a: abs(a[0] - box_bits["onehot"]) < 1e-6 and abs(a[1] - box_bits["ordinal"]) < 1e-6
      or "a uniform density on a box of volume V costs log2 V bits")

# %% [markdown]
# <details><summary>Solution 1</summary>
#
# The bound is $-\sum_x P(x) \int_x^{x+1} \log_2 p(v)\, dv$. Numerically, on this notebook's grid:
#
# ```python
# ramp = 2 * (3 - cells(3)) / 9
# answer_1 = bound_bits((0.6, 0.3, 0.1), ramp)
# ```
#
# It comes to a little more than the entropy of $P$ (1.30 bits): the ramp is close to the staircase in
# its average over each cell, but it falls *within* each cell, where the staircase is flat, and the bound
# pays for that slope.
# </details>
#
# <details><summary>Solution 2</summary>
#
# ```python
# costs = {order: bound_bits(order, blurred(order, 0.2)) for order in set(itertools.permutations(P4))}
# answer_2 = min(costs, key=costs.get)
# ```
#
# The best orders sort the probabilities, so that neighbouring cells differ as little as possible, e.g.
# `(0.1, 0.1, 0.3, 0.5)` (or the same reversed): the smooth density then has only small steps to make.
# </details>
#
# <details><summary>Solution 3</summary>
#
# A uniform density on a box of volume $V$ is $1/V$ everywhere, so every point costs $\log_2 V$ bits:
# $\log_2 2^8 = 8$ bits per pixel for one-hot, $\log_2 8 = 3$ for ordinal (the uniform model's cost).
# `answer_3 = (8.0, 3.0)`: the one-hot flow has 5 bits per pixel more room to empty.
# </details>
