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
# working model, built in plain view. You will:
#
# 1. read the denoiser level by level: a small U-Net that predicts each pixel from the others, and whose
#    decoder is, untrained, already a posterior (Bayes' rule with a uniform prior);
# 2. write one training step yourself in about 15 lines, check it against the package's `training_loss`,
#    and run it as a loop with AdamW, a learning-rate schedule and an exponential moving average (EMA)
#    of the weights; then meet `fit`, which is that loop with the plumbing around it;
# 3. train for two minutes on the toy street-scene maps (on a GPU if there is one, otherwise the CPU);
# 4. load the shipped checkpoint and look inside it: what it predicts for one map at several $t$, how
#    close it comes to the best possible denoiser, its samples (with their implausible patches marked),
#    what fewer sampling steps cost, and inpainting.
#
# The symbols are those of notebook 03's table ($x_0, x_t, \hat x_0, \bar\alpha_t, L_t, \ell_t$, bits per pixel).
#
# **Time:** the code runs in about 9 minutes on 2 CPU cores (about 3 with `MDIFF_SMOKE=1`). How many minutes the reading and the exercises take has not been measured: no reader has been timed yet.
# Set `RETRAIN = True` in the next cell to train today's network for 45 minutes yourself instead of
# loading the shipped one.

# %% tags=["parameters"]
import os

SMOKE = os.environ.get("MDIFF_SMOKE", "0") == "1"
RETRAIN = False                      # True: train for RETRAIN_MINUTES instead of loading the shipped weights
RETRAIN_MINUTES = 45
HAND_STEPS = 8 if SMOKE else 200     # steps of the hand-written training loop
TRAIN_SECONDS = 5 if SMOKE else 120  # the demonstration run of fit
N_SAMPLES = 4 if SMOKE else 64       # per point of the sampling-steps curve
STEP_COUNTS = [5, 20] if SMOKE else [10, 25, 50, 100, 250, 1000]

# %%
import copy
import json
import math
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from mdiff_lite import StratifiedTimeSampler, make_schedule, prior_kl, q_posterior, q_sample, training_loss
from mdiff_lite.data import Digits, ToySegmentation, unseen_windows
from mdiff_lite.diffusion import log_q_posterior
from mdiff_lite.evaluate import bound_breakdown, estimate_bound, evaluate_bound
from mdiff_lite.exercises import check
from mdiff_lite.models import Denoiser, DenoiserConfig, OracleDenoiser, count_parameters
from mdiff_lite.plots import class_cmap, plot_grid, plot_map
from mdiff_lite.sampling import inpaint, sample, time_grid
from mdiff_lite.train import TrainConfig, fit, load_pretrained, pick_device

torch.manual_seed(0)
device = pick_device()  # CUDA, then Apple MPS, then the CPU; MDIFF_DEVICE=cpu forces the CPU
RESULTS = Path("..") / "benchmarks" / "results"  # committed benchmark results, each with its command

# %% [markdown]
# ## The data
#
# Toy street scenes: 32 × 32 maps of 8 classes, drawn from a generator whose exact probability of
# every map is known. Its entropy, **0.1204 bits per pixel**, is the floor no model can go below.

# %%
data = ToySegmentation(32, 32)
train_maps, test_maps = data.split("train"), data.split("test")
K, D = data.num_classes, 32 * 32
print(f"{len(train_maps)} training maps, {len(test_maps)} test maps, K = {K}, "
      f"entropy {data.entropy_bits_per_pixel:.4f} bits per pixel")
plot_grid(train_maps[:8], data, ncols=8, suptitle="training maps");

# %% [markdown]
# ## The denoiser, level by level
#
# The network maps a noisy map $x_t$ (class ids, `[B, 32, 32]`) and its time $t$ (`[B]`) to logits of
# $\hat x_0$: one distribution over the $K$ classes per pixel (`[B, 32, 32, K]`, class axis last).
# It is a U-Net: it shrinks the map level by level so that each position can see far, then grows it
# back, joining each level to its mirror image by a skip connection so that fine detail is not lost.
# Its parts, and what each is for:
#
# - **Folded pixels.** Each 2 × 2 block of pixels is folded into channels (`pixel_unshuffle`): the one-hot
#   map `[K, 32, 32]` becomes `[4K, 16, 16]`, so every convolution runs on a quarter of the positions.
#   The last layer unfolds again. (A first design folded 4 × 4; it was cheaper per step but learned less
#   per CPU minute: the comparison is loaded just below.)
# - **The time embedding.** $t$ becomes sines and cosines of geometric frequencies (as a transformer
#   encodes positions), then a small MLP. Every residual block reads it and scales and shifts its
#   features with it: the same weights denoise at every $t$, told how noisy their input is.
# - **Residual blocks** (GroupNorm, SiLU, 3 × 3 convolution, twice, plus the input) at 16 × 16, 8 × 8 and
#   4 × 4, with strided convolutions between them, and **self-attention** at 4 × 4 only, where it is
#   cheap and lets the far sides of the map talk.
# - **A head that starts at zero**, so an untrained network outputs all-zero logits: $\hat x_0$ uniform.
#
# What is *not* in the network: the pixel's own evidence, $q(x_t \mid x_0 = k)$. Eq. 14 multiplies it
# in outside the network, at every $t$ (below). Here is the network traced on one batch, each stage
# with its output shape and its parameters:

# %%
schedule = make_schedule("hoogeboom-cosine", 1000)
config = DenoiserConfig(num_classes=K, height=32, width=32, schedule=schedule.to_dict())
fresh = Denoiser(config)
stages = [("stem (folded one-hot in)", fresh.stem)] + [(f"down {i}: {type(m).__name__}", m) for i, m in enumerate(fresh.down)] \
    + [("middle: ResBlock", fresh.mid1), ("middle: Attention", fresh.mid_attn), ("middle: ResBlock", fresh.mid2)] \
    + [(f"up {i}: {type(m).__name__}", m) for i, m in enumerate(fresh.up)] + [("head (zero at start)", fresh.head)]
shapes = {}

def record(name):
    def hook(module, inputs, output):  # a forward hook that returns nothing leaves the output as it is
        shapes.setdefault(name, tuple(output.shape[1:]))
    return hook

hooks = [m.register_forward_hook(record(name)) for name, m in stages]
with torch.no_grad():
    out = fresh(test_maps[:2], torch.tensor([10, 500]))
for h in hooks:
    h.remove()
print(f"{'stage':<28}{'output (channels, height, width)':>34}{'parameters':>12}")
print(f"{'input x_t: class ids':<28}{str(tuple(test_maps.shape[1:])):>34}{'':>12}")
for name, m in stages:
    print(f"{name:<28}{str(shapes[name]):>34}{count_parameters(m):>12,}")
print(f"{'time embedding MLP':<28}{'(128,) per map, read by every ResBlock':>34}{count_parameters(fresh.time_mlp):>12,}")
print(f"{'output: logits of x0_hat':<28}{str(tuple(out.shape[1:])):>34}{count_parameters(fresh):>12,} in all")
assert out.shape == (2, 32, 32, K)

designs = json.loads((RESULTS / "quality_cpu_designs.json").read_text())
print(f"\nfold 4 against fold 2, the same 10 CPU minutes ({designs['rows'][0]['n_images']} test maps; "
      "benchmarks/results/quality_cpu_designs.json, whose note gives the commands):")
for r in designs["rows"][1:3]:
    print(f"  {r['model'].split(', Bayes')[0]:<30} {r['training']:<32} {r['steps']:>5} steps  {r['test_bpd']:.4f} ± {r['stderr']:.4f} bits per pixel")

# %% [markdown]
# ## What it knows before training
#
# What should $\hat x_0$ be? Notebook 02 showed that eq. 14 weighs each candidate $x_0 = k$ by
# $\hat x_0(k) \cdot q(x_t \mid x_0 = k)$: it multiplies in the likelihood of the pixel's own $x_t$
# by itself. So the best $\hat x_0$ predicts each pixel from the *other* pixels, and the network
# never has to copy its input. The same holds at $t = 1$, because the package decodes with eq. 14's step
# too (notebook 03, "Two decoders"):
#
# $$p(x_0 \mid x_1) \propto \hat x_0 \odot q(x_1 \mid x_0), \qquad
#   q(x_1 \mid x_0 = k) = \bar\alpha_1 [x_1 = k] + (1 - \bar\alpha_1)/K ,$$
#
# where the second factor is eq. 12 read as a function of $x_0$: what the observed $x_1$ alone says about
# each candidate class, and it says a lot, because $x_1$ is almost surely $x_0$. Since the head starts
# at zero, an untrained network predicts the uniform $\hat x_0$ at every $t$, and its decoder is
# already the Bayesian posterior under a uniform prior, $p(x_0 = k \mid x_1) \propto q(x_1 \mid x_0 = k)$.
# Three lines check it:

# %%
x0 = test_maps[:2]
t = torch.tensor([1, 700])
x_t = q_sample(x0, t[:, None, None], schedule, K, generator=torch.Generator().manual_seed(0))

a = schedule.alpha_bars[1]                                        # alpha_bar_1
likelihood = a * F.one_hot(x_t[0], K) + (1 - a) / K               # q(x_1 | x0 = k) for every k
naive = likelihood / likelihood.sum(-1, keepdim=True)
with torch.no_grad():
    untrained = torch.softmax(fresh(x_t, t).double(), -1)
torch.testing.assert_close(untrained, torch.full_like(untrained, 1 / K))   # x0_hat: uniform, at t = 1 and 700
decoder = q_posterior(F.one_hot(x_t[0], K).double(), untrained[0], 1, schedule)  # eq. 14 at t = 1
torch.testing.assert_close(decoder, naive)
print("untrained: x0_hat is 1/8 per class at every t, and its decoder is Bayes' rule with a uniform prior")

# %% [markdown]
# Why not let the network add $\log q(x_t \mid x_0 = k)$ to its logits itself? Because eq. 14 already
# multiplies it in: adding it would count the pixel's own evidence twice, leaving the network to learn to
# take it out again. The package's first models did that at every $t$ (`bayes_logits="all"`), and in the
# same 2.5 minutes of training it cost them dearly. (The rows' other label, "Bayes term: decoder", is the
# design of the checkpoint shipped with the package, loaded below: its network added $\log q(x_1 \mid x_0)$ to its own logits at $t = 1$
# only and decoded with $\hat x_0$ alone, which is the same decoder as today's, written inside the network.)

# %%
first = json.loads((RESULTS / "quality_cpu_importance_lr2e-3.json").read_text())["rows"]
print("python benchmarks/quality.py --budgets 2.5,10 --compare bayes-all:2.5 --digits-budget 0 --eval-maps 128"
      "   (at commit 63d8871, before the defaults changed)")
print("(benchmarks/results/quality_cpu_importance_lr2e-3.json: the first defaults and the earlier fold-4 network,")
print(" 2.5 minutes on 2 CPU cores, all-T estimates on 128 test maps)")
for r in (first[0], first[2]):
    print(f"  {r['model']:<48} {r['test_bpd']:.4f} ± {r['stderr']:.4f} bits per pixel ({r['ratio_to_entropy']:.2f} x the entropy)")
assert first[0]["budget_minutes"] == first[2]["budget_minutes"] and "all" in first[2]["model"]

# %% [markdown]
# All that training has to add is the prior over maps: which classes go where, given the rest of the
# (noisy) scene.
#
# ## One training step, written out
#
# Training minimises notebook 03's eq. 17: draw a time $t$ per map, noise the map to $x_t$, let the network
# guess $\hat x_0$, and score the guess by the term $\ell_t$ of the bound at that draw: the KL of eq. 15
# between the true posterior (eq. 13, with the real $x_0$) and the model's (eq. 14, with $\hat x_0$), or
# at $t = 1$ the decoder's $-\log p(x_0 \mid x_1)$ (eq. 16). Weighted by $1/p(t) = T$ and with the prior
# term added, the batch mean is an unbiased estimate of the whole bound. The times are uniform but
# *stratified*: a batch of 32 maps splits $1..T$ into 32 equal ranges and draws one $t$ from each, so
# every $t$ keeps the weight $1/T$ but no batch crowds into a few $t$. In log space, class axis last:

# %%
net = Denoiser(config)                         # a fresh network
batch = train_maps[:32]
sampler = StratifiedTimeSampler(schedule.T)
g = torch.Generator().manual_seed(0)

t, p_t = sampler.sample(len(batch), generator=g)                       # one t per map, stratified
tb = t[:, None, None]                                                  # broadcast over the pixels
x_t = q_sample(batch, tb, schedule, K, generator=g)                    # eq. 12: noise each map
log_x0_hat = torch.log_softmax(net(x_t, t), -1)                        # the network's guess, per pixel
log_model = log_q_posterior(x_t, log_x0_hat, tb, schedule)             # eq. 14: p(x_{t-1} | x_t)
# eq. 13 with the true x_0. At t = 1 it is x_0 itself, with exact zeros: 0 * log 0 would put NaN in the
# KL (and its gradient) even where torch.where discards it, so those maps get t = 2 here and the decoder below
log_true = log_q_posterior(x_t, batch, tb.clamp(min=2), schedule, num_classes=K)
kl = (log_true.exp() * (log_true - log_model)).sum(-1)                 # eq. 15, per pixel
decoder_nll = -log_model.gather(-1, batch[..., None]).squeeze(-1)      # eq. 16, per pixel (t = 1)
ell_t = torch.where(tb == 1, decoder_nll, kl).sum((1, 2))              # the term at this draw, nats per map
loss = (ell_t / p_t + prior_kl(batch, schedule, K)).mean()             # eq. 17: T * ell_t + prior, batch mean
loss.backward()                                                        # gradients for the optimiser

package = training_loss(net, batch, schedule, StratifiedTimeSampler(schedule.T), generator=torch.Generator().manual_seed(0))
torch.testing.assert_close(loss.float(), package.float())
print(f"by hand: {loss.item():.1f} nats per map = {loss.item() / D / math.log(2):.3f} bits per pixel; "
      f"training_loss on the same draws agrees ({package.item():.1f})")

# %% [markdown]
# An untrained network scores, in expectation, exactly $\log_2 8 = 3$ bits per pixel: with a uniform
# $\hat x_0$ the model is the forward chain run backwards from uniformly random maps, so its bound is tight
# at the uniform model's cost; the printed value differs from 3 by the noise of one $t$ per map. The draws match because both computations ask the same
# generator for the same numbers in the same order: first the times, then the noise.
#
# ## The loop: AdamW, a learning-rate schedule, and an average of the weights
#
# A training run repeats that step, with three standard pieces:
#
# - **AdamW** updates each weight by its gradient divided by a running estimate of the gradient's size, so
#   every weight moves at about the rate `lr` however large its gradients are (the "W", a decoupled weight
#   decay, is off here and in `fit`'s defaults). Gradients are clipped to norm 1.
# - **The learning-rate schedule**: `lr` times two factors, a linear warm-up that rises from 0 to 1 over the
#   first 100 steps (Adam's first estimates are poor) and a cosine that falls from 1 to 0 over the whole
#   budget, so the last steps make small, careful moves. In a short run the two overlap, and the rate peaks
#   below `lr` (the left panel below).
# - **An exponential moving average (EMA)** of the weights, $\bar w \leftarrow d\, \bar w + (1 - d)\, w$ after
#   every step. With $d = 0.995$ it averages over about the last $1/(1 - d) = 200$ steps, but early on
#   $d = (1 + \text{step})/(10 + \text{step})$ is smaller, so that the average does not remember the random
#   start: until step 1790, where that formula reaches 0.995, the EMA averages over about the last tenth of
#   the steps so far. The raw weights jitter from step to step; their average is smoother, and it is the EMA
#   that gets evaluated and saved.
#
# Below, `HAND_STEPS` steps of it, scoring both the raw and the averaged weights on the same 32 test maps
# and the same draws of $t$ and $x_t$ every few steps. The score is `estimate_bound`: a Monte-Carlo estimate of
# the bound from 2 random $t$ per map, one draw of $x_t$ each (unbiased; `seed=0` makes both sets of weights
# see the same draws, so the two curves differ only through the weights):

# %%
lr_max, warmup = 3e-3, 100
net = Denoiser(config).to(device)
ema = copy.deepcopy(net).requires_grad_(False)
optimizer = torch.optim.AdamW(net.parameters(), lr=lr_max, weight_decay=0.0)
g_batches = torch.Generator().manual_seed(0)                 # which maps, on the CPU
g = torch.Generator(device=device).manual_seed(0)            # t and x_t, on the device
probe = test_maps[:32]

def probe_bpd(model):
    return estimate_bound(model, schedule, probe, k=2, seed=0, progress=False)["bpd"]

curve = {"step": [], "lr": [], "raw": [], "ema": []}
start = time.perf_counter()
for step in range(HAND_STEPS):
    lr = lr_max * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / HAND_STEPS))
    for group in optimizer.param_groups:
        group["lr"] = lr
    x0 = train_maps[torch.randint(len(train_maps), (32,), generator=g_batches)].to(device)
    loss = training_loss(net, x0, schedule, sampler, generator=g)      # the step above, in one call
    optimizer.zero_grad()
    (loss / D).backward()                                              # nats per pixel
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    optimizer.step()
    d = min(0.995, (1 + step) / (10 + step))
    with torch.no_grad():
        for w_bar, w in zip(ema.parameters(), net.parameters()):
            w_bar.lerp_(w, 1 - d)                                      # w_bar = d * w_bar + (1 - d) * w
    curve["lr"].append(lr)
    if step % max(1, HAND_STEPS // 10) == 0 or step == HAND_STEPS - 1:
        curve["step"].append(step + 1)
        curve["raw"].append(probe_bpd(net))
        curve["ema"].append(probe_bpd(ema))
print(f"{HAND_STEPS} steps in {time.perf_counter() - start:.0f} s (with the scoring); last probe: raw weights "
      f"{curve['raw'][-1]:.3f}, EMA {curve['ema'][-1]:.3f} bits per pixel")

fig, axes = plt.subplots(1, 2, figsize=(10, 3), layout="constrained")
axes[0].plot(range(1, HAND_STEPS + 1), curve["lr"])
axes[0].set(xlabel="step", ylabel="learning rate", title="lr x warm-up factor x cosine factor")
axes[1].plot(curve["step"], curve["raw"], "o-", ms=3, label="raw weights")
axes[1].plot(curve["step"], curve["ema"], "o-", ms=3, label="EMA of the weights")
axes[1].set(xlabel="step", ylabel="bits per pixel (estimate)", yscale="log",
            title="The same test maps and draws, two sets of weights")
axes[1].legend();

# %% [markdown]
# Read the right panel with the EMA's memory in mind. Here it averages over the last tenth of the steps, and
# it trails the raw weights all the way: it remembers slightly older, worse weights, and in so short a run,
# with the learning rate annealed to 0 at the end, the raw weights never settle into jittering around a good
# point (the last probe, printed above, shows what the average costs here). The EMA is meant for long runs,
# where the raw weights spend most of their time jittering from batch to batch and an average over the last
# few hundred steps is steadier than any one of them; `fit` evaluates and saves it (what it buys in a long
# run, this notebook does not measure).
#
# ## `fit`: the same loop, with the plumbing
#
# `mdiff_lite.train.fit` is that loop plus what a real run needs: a budget in steps or wall-clock seconds
# (the cosine then runs over the seconds), a progress bar with a running estimate of the bound, checkpoints
# that a stopped run resumes from bit for bit, Ctrl-C and SIGTERM handling that saves first, mixed precision
# and `torch.compile` on request, several GPUs with DDP (`torchrun`), and batches drawn on the device without
# waiting for it. (Notebook 03's importance sampling of $t$ is an option, `TrainConfig(t_sampler="importance")`;
# in a fixed CPU budget it did no better here: the README's quality table.) Two minutes of it:

# %%
model = Denoiser(config)
history = fit(model, train_maps, TrainConfig(steps=None, max_seconds=TRAIN_SECONDS, checkpoint_every=0),
              device=device)
print(f"{history['step'][-1]} steps in {history['seconds'][-1]:.0f} s on {device}")

fig, axes = plt.subplots(1, 2, figsize=(10, 3), layout="constrained")
axes[0].plot(history["seconds"], history["loss_bpd"], label="running estimate of the bound")
axes[0].axhline(data.entropy_bits_per_pixel, color="k", ls="--", lw=1, label="true entropy")
axes[0].axhline(3, color="gray", ls=":", lw=1, label="uniform model, log2 8")
axes[0].set(xlabel="training time (s)", ylabel="bits per pixel", yscale="log", title="Training on the toy maps")
axes[0].legend(fontsize=8)
axes[1].plot(history["seconds"], history["lr"])
axes[1].set(xlabel="training time (s)", ylabel="learning rate", title="fit's schedule, over the seconds of its budget");

# %% [markdown]
# The running loss is a noisy estimate of the bound on *training* maps. For a number to compare, score
# *test* maps. The all-T estimate (`evaluate_bound`) computes all 1000 terms per map, each at one draw of
# $x_t$ (1000 network calls per map: the oracle section below prints how long it takes); the Monte-Carlo
# estimate of `estimate_bound`, with $k$ random $t$ per map, is much cheaper and noisier. Both are unbiased estimates of the same bound, an upper bound on the true bits per pixel, and
# come with a standard error.

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
# ## What the network predicts
#
# The most instructive picture of a denoiser: one test map, noised to several $t$, and what the network
# makes of each. Row 2 is the most likely class of $\hat x_0$ at every pixel, row 3 how sure it is (the
# largest probability of $\hat x_0$). Remember that $\hat x_0$ is a prediction of each pixel from the
# *others*: a pixel whose own $x_t$ is still clean is not simply copied.

# %%
times = [50, 200, 400, 600, 800, 950]
x0 = test_maps[3]
x_t = q_sample(x0.expand(len(times), 32, 32), torch.tensor(times)[:, None, None], schedule, K,
               generator=torch.Generator().manual_seed(6))
with torch.no_grad():
    x0_hat = torch.softmax(model(x_t.to(device), torch.tensor(times, device=device)).float(), -1).cpu()
confidence, guess = x0_hat.max(-1)
fig, axes = plt.subplots(3, len(times) + 1, figsize=(1.6 * (len(times) + 1), 5.2), layout="constrained")
plot_map(x0, data, ax=axes[0, 0], title="x_0")
for ax in axes[1:, 0]:
    ax.set_axis_off()
for j, t in enumerate(times):
    kept = (x_t[j] == x0).float().mean()
    plot_map(x_t[j], data, ax=axes[0, j + 1], title=f"x_t, t = {t}\n{kept:.0%} pixels = x_0")
    plot_map(guess[j], data, ax=axes[1, j + 1], title=f"argmax x0_hat\n{(guess[j] == x0).float().mean():.0%} right")
    image = axes[2, j + 1].imshow(confidence[j], cmap="gray", vmin=1 / K, vmax=1)
    axes[2, j + 1].set(xticks=[], yticks=[])
    axes[2, j + 1].set_title(f"confidence\nmean {confidence[j].mean():.2f}", fontsize=9)
fig.colorbar(image, ax=axes[2, :], shrink=0.8, label="largest probability of x0_hat")
fig.suptitle("The shipped network on one test map: its input x_t, its guess, its certainty", fontsize=10);

# %% [markdown]
# At small $t$ the guess is right almost everywhere and uncertain only along edges, where a class boundary
# could sit a pixel either way. As $t$ grows the network falls back on what the scenes share (sky above,
# road below, buildings in between) and its certainty drops (the titles print its mean); by $t = 950$, with a
# fifth of the pixels of $x_0$ left, it still places the horizon, the road and the buildings' outline, but the
# small things (windows, people, cars) have become generic or gone.
#
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
best = evaluate_bound(oracle, schedule, few, batch_size=len(few), progress=False)
ours = evaluate_bound(model.cpu(), schedule, few, batch_size=len(few), progress=False)
model.to(device)
print(f"{len(few)} test maps, all-T estimates (ours: {ours['seconds'] / len(few):.1f} s per map): best denoiser {best['bpd']:.4f}, "
      f"ours {ours['bpd']:.4f}; these maps' exact -log2 p / pixel: {(-data.log_prob(few) / D / math.log(2)).mean():.4f}")

parts = [bound_breakdown(r["per_t_bpd"])[:-1] for r in (best, ours)]   # the prior term is ~0 for both
fig, ax = plt.subplots(figsize=(7, 3), layout="constrained")
x = torch.arange(len(parts[0]))
ax.bar(x - 0.2, [p["bpd"] for p in parts[0]], 0.4, label="best denoiser (OracleDenoiser)", color="0.6")
ax.bar(x + 0.2, [p["bpd"] for p in parts[1]], 0.4, label="the shipped network" if not RETRAIN else "our network")
ax.set_xticks(x, [p["t"] for p in parts[0]], rotation=30)
ax.set(xlabel="t", ylabel="bits per pixel", title="Where the bound is spent, by tenths of the chain")
ax.legend();

# %% [markdown]
# Four maps are few. The same comparison on 128 maps is a committed benchmark result:

# %%
oracle_run = json.loads((RESULTS / "oracle_cpu.json").read_text())
print(f"python benchmarks/oracle.py   ({oracle_run['eval_maps']} test maps, all-T estimates, ± one standard error)")
print(f"  best denoiser:        {oracle_run['oracle']['bpd']:.4f} ± {oracle_run['oracle']['stderr']:.4f} bits per pixel")
print(f"  exact -log2 p / pixel of the same maps: {oracle_run['eval_maps_nll_bpd']:.4f}; difference "
      f"{oracle_run['oracle_minus_nll']['bpd']:.4f} ± {oracle_run['oracle_minus_nll']['stderr']:.4f}")
print(f"  the shipped network:  {oracle_run['model']['bpd']:.4f} ± {oracle_run['model']['stderr']:.4f}")
print("  its excess over the best denoiser, by tenths of the chain (bits per pixel):")
print("   " + "  ".join(f"{r['t']}: {r['model_bpd'] - r['oracle_bpd']:.4f}" for r in oracle_run["rows"][:10]))
print(f"  alpha_bar_t at t = 500: {schedule.alpha_bars[500]:.2f}, at t = 800: {schedule.alpha_bars[800]:.2f}")

# %% [markdown]
# Two things to read off:
#
# - **The floor is the entropy.** The best denoiser's bound matches the maps' exact $-\log_2 p$, up to
#   the noise of one draw of $x_t$ per term (the difference printed above is within its standard error):
#   with $T = 1000$ small steps, treating pixels as independent within a step costs almost nothing.
#   Nothing in the method stops a network at 1.0 ×.
# - **The late steps are expensive for everyone.** Near $t = T$ the forward process destroys most of
#   the information, and even the best denoiser pays for it there. Our network's excess is largest in the
#   middle-to-late chain, about $t = 500$ to $800$, where $x_t$ still shows much of the map (the printed
#   $\bar\alpha_t$) and the generator's structure pins the corrupted pixels down: that is what more
#   training (or a GPU) buys.

# %% [markdown]
# ## Samples
#
# Sampling runs the reverse chain: $x_T$ uniform, then $x_{t-1} \sim$ eq. 14 down to $t = 1$, whose step is
# the decoder that draws $x_0$: a thousand network calls. How good are the samples? The toy generator
# knows the exact probability of every map, but that is a harsh judge: one wrong pixel (a window one
# pixel off) makes a map impossible. A gentler one: look at every 4 × 4 window of a map (all 29 × 29
# positions) and count the windows that occur nowhere in the 20 000 training maps
# (`mdiff_lite.data.unseen_windows`). Real test maps have almost none; a single wrong pixel makes up
# to 16. Below, the pixels covered by an unseen window are outlined in black: that is where a sample
# departs from anything in the training set. (`unseen_share.where(maps)` says which windows are unseen, one
# entry per window position; a transposed convolution with a 4 × 4 kernel of ones spreads each unseen window
# back over its 16 pixels.)

# %%
unseen_share = unseen_windows(train_maps, K, size=4)   # indexes the training windows once
print(f"real test maps: {unseen_share(test_maps[:256]).mean():.3%} unseen windows")
generator = torch.Generator(device=device).manual_seed(1)
maps, trajectory, grid = sample(model, schedule, 8 if SMOKE else 16, steps=20 if SMOKE else None,
                                generator=generator, return_trajectory=True)
maps = maps.cpu()
share = unseen_share(maps)
# a pixel is outlined if any unseen 4 x 4 window covers it
covered = F.conv_transpose2d(unseen_share.where(maps).float()[:, None], torch.ones(1, 1, 4, 4))[:, 0] > 0
fig = plot_grid(maps, data, ncols=8, titles=[f"{s:.0%} unseen" for s in share.tolist()], cell_inches=1.3,
                suptitle="Samples; outlined: pixels inside a 4 x 4 window that no training map contains")
for ax, mark in zip(fig.axes, covered):
    if mark.any():
        ax.contour(mark.float(), levels=[0.5], colors="k", linewidths=1)
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
# what each pixel's own $x_t$ says, since $\hat x_0$ predicts the pixel from the others. The times visited
# are `time_grid(T, steps)`, evenly spaced and rounded. What does skipping cost? The share of unseen windows
# again, for samples drawn with fewer and fewer calls.

# %%
print("time_grid(1000, 5) =", time_grid(1000, 5), "(5 jumps, 5 network calls)")
rows = []
for steps in STEP_COUNTS:
    start = time.perf_counter()
    maps = sample(model, schedule, N_SAMPLES, steps=steps, generator=torch.Generator(device=device).manual_seed(2),
                  progress=False).cpu()
    seconds = time.perf_counter() - start
    share = 100 * unseen_share(maps)
    rows.append((steps, share.mean().item(), (share.std() / len(share) ** 0.5).item(), seconds))
    print(f"{steps:>5} steps: {rows[-1][1]:5.2f} ± {rows[-1][2]:.2f} % unseen windows, {seconds:5.1f} s for {N_SAMPLES} maps")

before = json.loads((RESULTS / "samples_cpu_before_fix.json").read_text())
fig, ax = plt.subplots(figsize=(6.5, 3.2), layout="constrained")
ax.errorbar([r[0] for r in rows], [r[1] for r in rows], yerr=[r[2] for r in rows], marker="o", capsize=3,
            label=f"this sampler ({N_SAMPLES} samples each, ± one s.e.)")
old = [r for r in before["rows"] if r["steps"]]
ax.errorbar([r["steps"] for r in old], [r["unseen_pct"] for r in old], yerr=[r["stderr_pct"] for r in old],
            marker="s", capsize=3, color="0.6", label="an earlier sampler: last jump from x0_hat alone")
ax.axhline(0, color="k", ls="--", lw=1, label="real test maps")
ax.set(xscale="log", xlabel="sampling steps (network calls)", ylabel="unseen 4 x 4 windows (%)",
       title="Sample quality against the number of steps")
ax.legend(fontsize=8)
print(f"grey: {before['command']}\n  ({before['note']})")

# %% [markdown]
# The grey curve is a committed result: an earlier version of the package drew $x_0$ from $\hat x_0$ alone
# on the last jump, throwing away each pixel's own evidence, and with few steps its samples had about half
# as many unseen windows again. At 1000 steps the last jump is from $t = 1$, where the network of that version
# added the pixel's evidence to its own logits (the "Bayes term: decoder" design above), so there the two
# rules coincide.
#
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
fig = plot_grid(torch.cat([test_maps[:1], filled]), data, ncols=5, cell_inches=1.6,
                titles=["original"] + [f"fill {i + 1}\n{s:.0%} unseen" for i, s in enumerate(unseen_share(filled).tolist())],
                suptitle=f"Top half kept, bottom half inpainted ({20 if SMOKE else 250} steps)")
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
      f"(uniform model: log2 {digits.num_classes} = {math.log2(digits.num_classes):.2f})")
digit_samples = sample(digit_model, digit_schedule, 16, steps=20 if SMOKE else None,
                       generator=torch.Generator(device=device).manual_seed(4), progress=False).cpu()
plot_grid(digit_samples, digits, ncols=8, legend=False, suptitle="Digit samples");

# %% [markdown]
# ## Summary
#
# - The denoiser is a small U-Net on folded pixels, told the time by an embedding that scales and shifts
#   every block; it predicts $\hat x_0$ from $(x_t, t)$, and eq. 14, outside it, brings in each pixel's own
#   evidence at every $t$, $t = 1$ (the decoder) included. So it learns only what the rest of the map says.
# - A training step is fifteen lines: stratified $t$, $x_t$ from eq. 12, $\hat x_0$, the two posteriors in log
#   space, the KL (or the decoder term at $t = 1$), $T \cdot \ell_t$ plus the prior, backward. AdamW, a warm-up
#   and cosine learning rate and an EMA of the weights make it a training run; `fit` adds the plumbing.
# - Two CPU minutes take the bound far below the uniform model's 3 bits per pixel; the shipped model is at
#   about 1.5 × the entropy, and the best possible denoiser at 1.0 ×: the gap is the network's, not the method's.
# - Ancestral sampling takes $T$ network calls; skipping with $q(x_s \mid x_t, \hat x_0)$ trades calls for
#   sample quality; every jump, the last one to $x_0$ included, multiplies in each pixel's own evidence.
# - Inpainting is sampling with part of the map clamped (to its correctly noised value at each step).
#
# ## Exercises
#
# **Exercise 1 (the loss at one $t$).** For test map 0 and $t = 500$, draw $x_t$ with
# `q_sample(test_maps[:1], 500, schedule, K, generator=torch.Generator().manual_seed(0))` and compute, with
# the shipped `model`, the term $\ell_{500}$ of the bound at that draw in nats for the whole map (the eq. 15
# KL summed over pixels), as in "One training step, written out".
#
# **Exercise 2 (the sampler loop).** Write the few-step sampler yourself: `my_sample(model, schedule, n, steps,
# generator)` starts from $x_T$ uniform (`torch.randint(0, K, (n, 32, 32), generator=generator)`), walks the
# grid `time_grid(schedule.T, steps)` and at each pair $(t, s)$ draws $x_s$ from the skip posterior
# `q_posterior_skip(one_hot(x_t, K), x0_hat, t, s, schedule)` with `sample_index(probs, generator)` (both in
# `mdiff_lite.diffusion`; `sample_index` draws one class per pixel from `probs`, class axis last). Use the
# CPU, and keep `x0_hat` in float32 as `sample` does (the random numbers drawn depend on the dtype). The check
# runs yours and the package's `sample` with the same seed and compares the maps.
#
# **Exercise 3 (the EMA).** With a constant $d = 0.995$, what weight does the EMA give, after 1000 steps, to
# the raw weights of step 800 (the update $\bar w \leftarrow d\, \bar w + (1 - d)\, w$ applied 1000 times,
# step 1000 being the last)? And what total weight do the last 200 steps (801 to 1000) get? Answer both as a pair.

# %%
answer_1 = None  # ell_500 in nats, for the whole map
my_sample = None  # your function my_sample(model, schedule, n, steps, generator) -> LongTensor [n, 32, 32]
answer_3 = None  # (weight of step 800, total weight of steps 801..1000)

# %%
class AtOneTime(StratifiedTimeSampler):  # draws t = 500 for every map, consuming no random numbers
    def sample(self, batch_size, device="cpu", generator=None):
        return torch.full((batch_size,), 500, device=device), self._flat_probs(batch_size, device)

with torch.no_grad():
    one = training_loss(model.cpu(), test_maps[:1], schedule, AtOneTime(schedule.T),
                        generator=torch.Generator().manual_seed(0))
model.to(device)
check("exercise 1", answer_1, ((one - prior_kl(test_maps[:1], schedule, K)) / schedule.T).item(), tol=1e-4)

def same_as_package(my_sample):
    mine = my_sample(model.cpu(), schedule, 2, 5, torch.Generator().manual_seed(9))
    theirs = sample(model.cpu(), schedule, 2, steps=5, generator=torch.Generator().manual_seed(9), progress=False)
    model.to(device)
    agree = (mine == theirs).float().mean().item()
    return True if agree > 0.999 else f"{agree:.1%} of the pixels agree with sample(...) at the same seed"

check("exercise 2", my_sample, ok=same_as_package)
d = 0.995
check("exercise 3", answer_3, ok=lambda a: abs(a[0] - (1 - d) * d ** 200) < 1e-6 and abs(a[1] - (1 - d ** 200)) < 1e-4
      or "each step's weight is (1 - d) d^(steps since)")

# %% [markdown]
# <details><summary>Solution 1</summary>
#
# ```python
# x0 = test_maps[:1]
# x_t = q_sample(x0, 500, schedule, K, generator=torch.Generator().manual_seed(0))
# t = torch.tensor([500])
# with torch.no_grad():
#     log_x0_hat = torch.log_softmax(model.cpu()(x_t, t), -1)
# log_model = log_q_posterior(x_t, log_x0_hat, 500, schedule)
# log_true = log_q_posterior(x_t, x0, 500, schedule, num_classes=K)
# answer_1 = (log_true.exp() * (log_true - log_model)).sum().item()
# model.to(device)
# ```
#
# The check computes the same term with `training_loss` and a sampler that always draws $t = 500$:
# the loss is $T \cdot \ell_{500}$ plus the prior term, so it subtracts the prior and divides by $T$.
# </details>
#
# <details><summary>Solution 2</summary>
#
# ```python
# from mdiff_lite.diffusion import one_hot, q_posterior_skip, sample_index
#
# @torch.no_grad()
# def my_sample(model, schedule, n, steps, generator):
#     x = torch.randint(0, model.num_classes, (n, 32, 32), generator=generator)
#     grid = time_grid(schedule.T, steps)
#     for t, s in zip(grid[:-1], grid[1:]):
#         x0_hat = torch.softmax(model(x, torch.full((n,), t)).float(), -1)
#         probs = q_posterior_skip(one_hot(x, model.num_classes), x0_hat, t, s, schedule)
#         x = sample_index(probs, generator)
#     return x
# ```
#
# The last jump ($s = 0$) is the same call: the skip posterior multiplies in each pixel's own evidence.
# </details>
#
# <details><summary>Solution 3</summary>
#
# Step $j$'s weights enter with the factor $1 - d$ and are then multiplied by $d$ at each of the $1000 - j$
# later steps: weight $(1 - d)\, d^{1000 - j}$. For $j = 800$ that is $0.005 \cdot 0.995^{200} \approx 0.00184$.
# The last 200 steps together: $(1 - d)(1 + d + \dots + d^{199}) = 1 - d^{200} \approx 0.633$, so
# "averages over about the last 200 steps" means about two thirds of the weight.
#
# `answer_3 = (0.005 * 0.995 ** 200, 1 - 0.995 ** 200)`
# </details>
