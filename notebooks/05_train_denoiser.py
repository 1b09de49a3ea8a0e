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
# # 05 · Train the tiny denoiser, sample, inpaint
#
# Notebooks 01-03 built the forward process, its posterior and the bound. Here they become a
# working model. You will:
#
# 1. meet the denoiser: a small U-Net that predicts each pixel from the others, and whose decoder is,
#    untrained, already a posterior (Bayes' rule with a uniform prior), checked against a formula you
#    compute yourself;
# 2. train it for two minutes on the toy street-scene maps (on a GPU if there is one, otherwise the
#    CPU), watching the loss in bits per pixel;
# 3. load the shipped checkpoint (45 minutes of training on 2 CPU cores, with an earlier, coarser network)
#    and draw samples, watch one sample's reverse trajectory, and measure what fewer sampling steps cost;
# 4. inpaint: keep part of a map and let the model fill the rest.
#
# **Time:** about 4 minutes on 2 CPU cores (under a minute with `MDIFF_SMOKE=1`). Set `RETRAIN = True`
# in the next cell to train the full model yourself instead of loading it (45 minutes on a CPU).

# %% tags=["parameters"]
import os

SMOKE = os.environ.get("MDIFF_SMOKE", "0") == "1"
RETRAIN = False                      # True: train for RETRAIN_MINUTES instead of loading the shipped weights
RETRAIN_MINUTES = 45
TRAIN_SECONDS = 5 if SMOKE else 120  # the short demonstration run
N_SAMPLES = 4 if SMOKE else 64       # per point of the sampling-steps curve
STEP_COUNTS = [5, 20] if SMOKE else [10, 25, 50, 100, 250, 1000]

# %%
import math
import time

import matplotlib.pyplot as plt
import torch

from mdiff_lite import make_schedule, q_marginal, q_posterior
from mdiff_lite.data import Digits, ToySegmentation, unseen_windows
from mdiff_lite.evaluate import bound_breakdown, estimate_bound, evaluate_bound
from mdiff_lite.models import Denoiser, DenoiserConfig, OracleDenoiser, count_parameters
from mdiff_lite.plots import plot_grid, plot_map
from mdiff_lite.sampling import inpaint, sample, time_grid
from mdiff_lite.train import TrainConfig, fit, load_pretrained, pick_device

torch.manual_seed(0)
device = pick_device()  # CUDA, then Apple MPS, then the CPU; MDIFF_DEVICE=cpu forces the CPU

# %% [markdown]
# ## The data
#
# Toy street scenes: 32 × 32 maps of 8 classes, drawn from a generator whose exact probability of
# every map is known. Its entropy, **0.1204 bits per pixel**, is the floor no model can go below.

# %%
data = ToySegmentation(32, 32)
train_maps, test_maps = data.split("train"), data.split("test")
print(f"{len(train_maps)} training maps, {len(test_maps)} test maps, K = {data.num_classes}, "
      f"entropy {data.entropy_bits_per_pixel:.4f} bits per pixel")
plot_grid(train_maps[:8], data, ncols=8, suptitle="training maps");

# %% [markdown]
# ## The denoiser, and what it knows before training
#
# The network maps a noisy map $x_t$ and its time $t$ to logits of $\hat x_0$, one distribution over the
# $K$ classes per pixel. What should $\hat x_0$ be? Notebook 02 showed that eq. 14 weighs each candidate
# $x_0 = k$ by $\hat x_0(k) \cdot q(x_t \mid x_0 = k)$: it multiplies in the likelihood of the pixel's own
# $x_t$ by itself. So the best $\hat x_0$ predicts each pixel from the *other* pixels, and the network
# never has to copy its input. The same holds at $t = 1$, because the package decodes with eq. 14's step
# too (notebook 03, "Two decoders"):
#
# $$p(x_0 \mid x_1) \propto \hat x_0 \odot q(x_1 \mid x_0), \qquad
#   q(x_1 \mid x_0 = k) = \bar\alpha_1 [x_1 = k] + (1 - \bar\alpha_1)/K ,$$
#
# where the second factor is eq. 12 read as a function of $x_0$: what the observed $x_1$ alone says about
# each candidate class, and it says a lot, because $x_1$ is almost surely $x_0$. The network's last layer
# starts at zero, so an untrained network predicts the uniform $\hat x_0$ at every $t$, and its decoder is
# already the Bayesian posterior under a uniform prior, $p(x_0 = k \mid x_1) \propto q(x_1 \mid x_0 = k)$.
# Three lines check it:

# %%
schedule = make_schedule("hoogeboom-cosine", 1000)
config = DenoiserConfig(num_classes=data.num_classes, height=32, width=32, schedule=schedule.to_dict())
fresh = Denoiser(config)
print(f"{count_parameters(fresh) / 1e6:.2f}M parameters; pixels folded {config.fold} x {config.fold}, "
      f"channels {config.channels}: the finest level works at {32 // config.fold} x {32 // config.fold}")

x0 = test_maps[:2]
t = torch.tensor([1, 700])
x_t = torch.stack([torch.multinomial(q_marginal(torch.nn.functional.one_hot(m, 8).double(), int(s), schedule)
                                     .reshape(-1, 8), 1).reshape(32, 32) for m, s in zip(x0, t)])

a = schedule.alpha_bars[1]                                           # alpha_bar_1
likelihood = a * torch.nn.functional.one_hot(x_t[0], 8) + (1 - a) / 8  # q(x_1 | x0 = k) for every k
naive = likelihood / likelihood.sum(-1, keepdim=True)
with torch.no_grad():
    untrained = torch.softmax(fresh(x_t, t).double(), -1)
torch.testing.assert_close(untrained, torch.full_like(untrained, 1 / 8))   # x0_hat: uniform, at t = 1 and 700
decoder = q_posterior(torch.nn.functional.one_hot(x_t[0], 8).double(), untrained[0], 1, schedule)  # eq. 14 at t = 1
torch.testing.assert_close(decoder, naive)
print(f"untrained: x0_hat is 1/8 per class; its decoder is Bayes' rule, trusting x_1 with probability "
      f"{decoder.max(-1).values.mean():.5f}")

# %% [markdown]
# Why not let the network add $\log q(x_t \mid x_0 = k)$ to its logits itself? Because eq. 14 already
# multiplies it in: adding it would count the pixel's own evidence twice, leaving the network to learn to
# take it out again. The package's first models did that at every $t$ (`bayes_logits="all"`);
# `python benchmarks/quality.py --compare bayes-all:2.5` measures the cost (the README's results
# table). A later design added it at $t = 1$ only, with $\hat x_0$ itself as the decoder: the same bound,
# but a sampler that jumps from $t > 1$ straight to $x_0$ then loses each pixel's evidence (see "Fewer
# steps" below).
#
# All that training has to add is the prior over maps: which classes go where, given the rest of the
# (noisy) scene.
#
# ## Train for two minutes
#
# `fit` minimises the training objective of notebook 03 (eq. 17: $T \cdot L_t$ at a random $t$ plus
# the prior term) with AdamW and an exponential moving average (EMA) of the weights, which is what
# gets evaluated. The times are uniform, but *stratified* across the batch: a batch of 32 maps splits
# $1..T$ into 32 equal ranges and draws one $t$ from each. Every $t$ keeps the weight $1/T$, so the
# batch mean of $T \cdot L_t$ is still unbiased for the bound, but no batch crowds into a few $t$.
# (Notebook 03's importance sampling of $t$ is an option, `TrainConfig(t_sampler="importance")`; in a
# fixed CPU budget it did no better here, see `benchmarks/quality.py --compare importance:2.5` in the
# README.) The progress bar shows a running estimate of the bound in bits per pixel. The budget is
# wall-clock time, so the learning rate decays over the two minutes.

# %%
model = Denoiser(config)
history = fit(model, train_maps, TrainConfig(steps=None, max_seconds=TRAIN_SECONDS, checkpoint_every=0),
              device=device)
print(f"{history['step'][-1]} steps in {history['seconds'][-1]:.0f} s on {device}")

fig, ax = plt.subplots(figsize=(6, 3), layout="constrained")
ax.plot(history["seconds"], history["loss_bpd"], label="running training bound")
ax.axhline(data.entropy_bits_per_pixel, color="k", ls="--", lw=1, label="true entropy")
ax.axhline(3, color="gray", ls=":", lw=1, label="uniform model, log2 8")
ax.set(xlabel="training time (s)", ylabel="bits per pixel", yscale="log", title="Training on the toy maps")
ax.legend();

# %% [markdown]
# The running loss is a noisy estimate of the bound on *training* maps. For a number to compare, score
# *test* maps. The all-T estimate computes all 1000 terms per map, each at one draw of $x_t$ (about half a
# second per map here); a Monte-Carlo estimate with $k$ random $t$ per map is much cheaper and noisier.
# Both are unbiased estimates of the same bound, an upper bound on the true bits per pixel, and come
# with a standard error.

# %%
def report(name, model):
    r = estimate_bound(model.to(device), schedule, test_maps[:32 if SMOKE else 256], k=2 if SMOKE else 8,
                       progress=False)
    print(f"{name}: {r['bpd']:.4f} ± {r['stderr']:.4f} bits per pixel ({r['bound']}, {r['n_images']} test maps), "
          f"{r['bpd'] / data.entropy_bits_per_pixel:.2f} x the entropy")

report(f"after {TRAIN_SECONDS} s", model)

# %% [markdown]
# ## The shipped model
#
# Two minutes is a start. The package ships a checkpoint trained for 45 minutes on 2 CPU cores, with the
# defaults of its day, not today's: a coarser network (pixels folded 4 × 4, channels 56/80/96) and
# batches of 64 with independent uniform $t$. Its metadata records the whole configuration, the commands
# that trained and evaluated it, and its all-T estimate of the test bound over all 1000 test maps.
# With `RETRAIN = True` (first code cell) this notebook trains today's network for `RETRAIN_MINUTES`
# instead.

# %%
if RETRAIN:
    model = Denoiser(config)
    fit(model, train_maps, TrainConfig(steps=None, max_seconds=60 * RETRAIN_MINUTES, checkpoint_every=0),
        device=device)
    meta = {"command": "this notebook, RETRAIN = True"}
else:
    model, meta = load_pretrained("toyseg", device=device)
    tc = meta["train_config"]
    print(f"network:      pixels folded {model.config.fold} x {model.config.fold}, channels {model.config.channels} "
          f"(today's default: {config.fold} x {config.fold}, {config.channels}); batch {tc['batch_size']}, "
          f"t {tc['t_sampler']}, lr {tc['lr']:g}")
    print(f"trained by:   {meta['command']}")
    print(f"evaluated by: {meta['eval_command']}")
    print(f"all-T estimate of the test bound: {meta['test_bpd']:.4f} ± {meta['test_bpd_stderr']:.4f} bits per pixel over "
          f"{meta['test_n_images']} maps = {meta['test_bpd'] / data.entropy_bits_per_pixel:.2f} x the entropy")
model = model.to(device).eval()
schedule = make_schedule(**model.config.schedule)
report("shipped model" if not RETRAIN else "retrained model", model)

# %% [markdown]
# ## How good could it be?
#
# Is 1.5 × the entropy the network's fault, or the method's? The toy maps answer it, because their
# generator's posterior can be computed exactly: `data.posterior` takes the evidence that $x_t$ gives
# about each pixel, $q(x_t \mid x_0 = k)$, and sums over the generator's choices (each building with the
# people in front of it, each car, the horizon) to get every pixel's $p(x_0 \mid x_t)$. The reverse
# step of eq. 14 treats pixels as independent given $x_t$, so the best $\hat x_0$ any network could
# output is that posterior with the pixel's own evidence divided out again, $p(x_0 \mid x_t) / q(x_t \mid x_0)$,
# since eq. 14 multiplies it back in. That is `OracleDenoiser`. Below, both denoisers are scored
# with all 1000 terms on the same few test maps, and the bound is split by tenths of the chain.

# %%
few = test_maps[:1 if SMOKE else 4]
oracle = OracleDenoiser(data, schedule)
start = time.perf_counter()
best = evaluate_bound(oracle, schedule, few, batch_size=len(few), progress=False)
ours = evaluate_bound(model.cpu(), schedule, few, batch_size=len(few), progress=False)
model.to(device)
print(f"{len(few)} test maps, all-T estimates ({time.perf_counter() - start:.0f} s): best denoiser {best['bpd']:.4f}, "
      f"ours {ours['bpd']:.4f}; these maps' exact -log2 p / pixel: {(-data.log_prob(few) / (data.height * data.width) / math.log(2)).mean():.4f}")

parts = [bound_breakdown(r["per_t_bpd"])[:-1] for r in (best, ours)]   # the prior term is ~0 for both
fig, ax = plt.subplots(figsize=(7, 3), layout="constrained")
x = torch.arange(len(parts[0]))
ax.bar(x - 0.2, [p["bpd"] for p in parts[0]], 0.4, label="best denoiser (OracleDenoiser)", color="0.6")
ax.bar(x + 0.2, [p["bpd"] for p in parts[1]], 0.4, label="the shipped network" if not RETRAIN else "our network")
ax.set_xticks(x, [p["t"] for p in parts[0]], rotation=30)
ax.set(xlabel="t", ylabel="bits per pixel", title="Where the bound is spent, by tenths of the chain")
ax.legend();

# %% [markdown]
# Two things to read off (`benchmarks/oracle.py` does the same on 128 maps; the README has its table):
#
# - **The floor is the entropy.** The best denoiser's bound matches the maps' exact $-\log_2 p$, up to
#   the noise of one draw of $x_t$ per term (on 128 maps the difference is 0.0001 ± 0.0001 bits per
#   pixel): with $T = 1000$ small steps, treating pixels as independent within a step costs almost
#   nothing. Nothing in the method stops a network at 1.0 ×.
# - **The late steps are expensive for everyone.** Near $t = T$ the forward process destroys most of
#   the information, and even the best denoiser pays for it there. Our network's excess is in the
#   middle of the chain, where $x_t$ still shows much of the map ($\bar\alpha_t$ is 0.70 at $t = 500$)
#   and the generator's structure pins the corrupted pixels down: that is what more training (or a
#   GPU) buys.

# %% [markdown]
# ## Samples
#
# Sampling runs the reverse chain: $x_T$ uniform, then $x_{t-1} \sim$ eq. 14 down to $t = 1$, whose step is
# the decoder that draws $x_0$: a thousand network calls. How good are the samples? The toy generator
# knows the exact probability of every map, but that is a harsh judge: one wrong pixel (a window one
# pixel off) makes a map impossible. A gentler one: look at every 4 × 4 window of a map (all 29 × 29
# positions) and count the windows that occur nowhere in the 20 000 training maps
# (`mdiff_lite.data.unseen_windows`). Real test maps have almost none; a single wrong pixel makes up
# to 16.

# %%
unseen_share = unseen_windows(train_maps, data.num_classes, size=4)   # indexes the training windows once
print(f"real test maps: {unseen_share(test_maps[:256]).mean():.3%} unseen windows")
generator = torch.Generator(device=device).manual_seed(1)
maps, trajectory, grid = sample(model, schedule, 8 if SMOKE else 16, steps=20 if SMOKE else None,
                                generator=generator, return_trajectory=True)
maps = maps.cpu()
share = unseen_share(maps)
plot_grid(maps, data, ncols=8, titles=[f"{s:.0%} unseen" for s in share.tolist()],
          suptitle="Samples (title: share of 4 x 4 windows found in no training map)");
print(f"samples: {share.mean():.2%} unseen windows; {torch.isfinite(data.log_prob(maps)).sum()} of {len(maps)} "
      f"are exactly maps the generator can produce")

# %% [markdown]
# ### One sample, backwards in time
#
# The trajectory shows the first sample at a few of the times the sampler visited. Large structures
# (horizon, road) settle first; small objects (windows, people) last.

# %%
frames = [round(i * (len(grid) - 1) / 7) for i in range(8)]
plot_grid(trajectory[frames, 0].long(), data, ncols=8, titles=[f"t = {grid[i]}" for i in frames],
          legend=False, suptitle="Reverse trajectory of sample 1");

# %% [markdown]
# ## Fewer steps
#
# The sampler can skip: from $x_t$ straight to $x_s$ ($s < t$) with $q(x_s \mid x_t, \hat x_0)$, the
# skip posterior of notebook 02, so the same network samples in $n$ calls instead of $T$. The last jump,
# to $x_0$, is no exception: $q(x_0 \mid x_t, \hat x_0) \propto \hat x_0 \odot q(x_t \mid x_0)$ multiplies in
# what each pixel's own $x_t$ says, since $\hat x_0$ predicts the pixel from the others. (An earlier
# version of the package drew $x_0$ from $\hat x_0$ alone on that jump, and its few-step samples had
# about half as many unseen windows again: `python benchmarks/samples.py`, in the README.) What does
# skipping cost? The share of unseen windows again, for samples drawn with fewer and fewer calls.

# %%
rows = []
for steps in STEP_COUNTS:
    start = time.perf_counter()
    maps = sample(model, schedule, N_SAMPLES, steps=steps, generator=torch.Generator(device=device).manual_seed(2),
                  progress=False).cpu()
    seconds = time.perf_counter() - start
    share = 100 * unseen_share(maps)
    rows.append((steps, share.mean().item(), (share.std() / len(share) ** 0.5).item(), seconds))
    print(f"{steps:>5} steps: {rows[-1][1]:5.2f} ± {rows[-1][2]:.2f} % unseen windows, {seconds:5.1f} s for {N_SAMPLES} maps")

fig, ax = plt.subplots(figsize=(6, 3), layout="constrained")
ax.errorbar([r[0] for r in rows], [r[1] for r in rows], yerr=[r[2] for r in rows], marker="o", capsize=3,
            label="samples (± one standard error)")
ax.axhline(0, color="k", ls="--", lw=1, label="real test maps")
ax.set(xscale="log", xlabel="sampling steps (network calls)", ylabel="unseen 4 x 4 windows (%)",
       title="Sample quality against the number of steps")
ax.legend();

# %% [markdown]
# ## Inpainting
#
# Keep some pixels and let the model invent the rest. After every step, the known pixels are replaced
# by a fresh draw of $q(x_s \mid x_0 = \text{known})$, so they carry exactly the noise the network expects
# at time $s$; at the end they are the known values themselves. Here we keep the top half of a test map
# (sky and buildings) and ask for four different streets.

# %%
known = test_maps[:1].repeat(4, 1, 1).to(device)
mask = torch.zeros(32, 32, dtype=torch.bool, device=device)
mask[:16] = True
filled = inpaint(model, schedule, known, mask, steps=20 if SMOKE else 250,
                 generator=torch.Generator(device=device).manual_seed(3), progress=False).cpu()
assert torch.equal(filled[:, :16], known[:, :16].cpu()), "known pixels are kept"
fig = plot_grid(torch.cat([test_maps[:1], filled]), data, ncols=5,
                titles=["original"] + [f"fill {i + 1}: {s:.0%} unseen"
                                       for i, s in enumerate(unseen_share(filled).tolist())],
                suptitle="Top half kept, bottom half inpainted (250 steps)")
for ax in fig.axes[1:5]:
    ax.axhline(15.5, color="white", lw=2, ls="--")

# %% [markdown]
# ## The same on digits
#
# The second shipped model learned 8 × 8 digit images whose 16 grey levels plus a background are 17
# classes (notebook 04 shows them).

# %%
digits = Digits()
digit_model, digit_meta = load_pretrained("digits", device=device)
digit_schedule = make_schedule(**digit_model.config.schedule)
print(f"all-T estimate of the test bound {digit_meta['test_bpd']:.3f} ± {digit_meta['test_bpd_stderr']:.3f} bits per pixel "
      f"(uniform model: log2 17 = {math.log2(17):.2f})")
digit_samples = sample(digit_model, digit_schedule, 16, steps=20 if SMOKE else None,
                       generator=torch.Generator(device=device).manual_seed(4), progress=False).cpu()
plot_grid(digit_samples, digits, ncols=8, legend=False, suptitle="Digit samples");

# %% [markdown]
# ## Summary
#
# - The denoiser predicts $\hat x_0$ from $(x_t, t)$; at every $t$, $t = 1$ (the decoder) included, eq. 14
#   brings the pixel's own evidence in, so the decoder is sharp from the first step and the network learns
#   only what the rest of the map says: the prior over maps.
# - Training minimises eq. 17 at uniformly drawn $t$; two CPU minutes already take the bound far below
#   the uniform model's 3 bits per pixel (how far depends on how many steps the machine managed: printed
#   above), and the shipped model is at 1.5 × the entropy.
# - Ancestral sampling takes $T$ network calls; skipping with $q(x_s \mid x_t, \hat x_0)$ trades calls for
#   sample quality, measured here by the share of 4 × 4 windows no training map contains; every jump,
#   the last one to $x_0$ included, multiplies in each pixel's own evidence.
# - Inpainting is sampling with part of the map clamped (to its correctly noised value at each step).
#
# ## Exercises
#
# 1. How many network calls does `sample(..., steps=50)` make with $T = 1000$? (Hint: `time_grid`.)
# 2. For the untrained denoiser at $t = 1$ (hoogeboom-cosine, $T = 1000$), what probability does its decoder
#    give a pixel's own class $x_1$? Compute it from $\bar\alpha_1$ with the formula above and check with
#    `decoder`.
# 3. (Open) Inpaint the left half instead of the top half. Which classes does the model find hardest to
#    continue, and why?

# %%
answer_1 = None  # number of network calls for steps=50
answer_2 = None  # probability of class x_1 at t = 1 under the untrained denoiser's decoder

# %%
def check(name, answer, truth, tol=1e-3):
    if answer is None:
        print(f"{name}: fill in your answer above")
    else:
        print(f"{name}: {'correct' if abs(answer - truth) <= tol else 'not yet'}")

check("exercise 1", answer_1, len(time_grid(1000, 50)) - 1)
a_1 = schedule.alpha_bars[1].item()
check("exercise 2", answer_2, a_1 + (1 - a_1) / 8, tol=1e-6)
