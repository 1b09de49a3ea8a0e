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
# # 07 · Text: uniform against absorbing noise
#
# The paper's headline numbers are on text (text8: multinomial diffusion 1.72 bits per character). Since
# then discrete diffusion has lived mostly in language, and mostly with another noise: instead of
# resampling a character uniformly, a step replaces it by a **mask** that never goes away (D3PM's
# "absorbing" process, Austin et al. 2021; MDLM, Sahoo et al. 2024). This notebook puts the two side by
# side, on the same English text, with the same network, the same schedule and the same training budget.
# You will:
#
# 1. meet the corpus (English Wikipedia cleaned as text8 was) and the exact yardsticks a model must beat:
#    the uniform code, unigram and bigram frequencies;
# 2. watch both noises eat one sentence, step by step;
# 3. derive the absorbing posterior the way notebook 02 derived eq. 13, check it against transition
#    matrices, and see its bound become a weighted cross-entropy on the masked characters;
# 4. meet the two models, a bidirectional transformer denoiser (one per noise) and a causal transformer
#    of the same size, the autoregressive reference whose likelihood is exact;
# 5. compare their test bits per character with each other, with the yardsticks and with the published
#    text8 numbers, and see which $t$ the bound is spent on;
# 6. sample text with several numbers of steps, and fill a masked span.
#
# The symbols are those of notebook 03's table.
#
# **Time:** the code runs in about 3 minutes on 2 CPU cores (under a minute with `MDIFF_SMOKE=1`). How many
# minutes the reading and the exercises take has not been measured: no reader has been timed yet.
# All models are loaded from the package; the benchmark that trained them is named below with its command.

# %% tags=["parameters"]
import os

SMOKE = os.environ.get("MDIFF_SMOKE", "0") == "1"
N_TEST = 32 if SMOKE else 577   # test sequences scored live (577: the whole test split, as the benchmark)
K_T = 1 if SMOKE else 4         # draws of t per sequence for the Monte-Carlo bounds
N_PER_T = 8 if SMOKE else 128   # sequences for the bound's breakdown over tenths of t
SAMPLE_STEPS = (2, 8) if SMOKE else (10, 100, 1000)
N_SAMPLES = 2 if SMOKE else 8  # samples per model and number of steps

# %%
import itertools
import json
import math
from pathlib import Path

import ipywidgets
import matplotlib.pyplot as plt
import torch
from IPython.display import display

from mdiff_lite import categorical_kl, make_schedule, prior_kl, q_sample, training_loss
from mdiff_lite.absorbing import AbsorbingProcess
from mdiff_lite.data import TEXT_ALPHABET, TextCorpus
from mdiff_lite.diffusion import UniformProcess
from mdiff_lite.evaluate import estimate_bound, exact_nll
from mdiff_lite.exercises import check
from mdiff_lite.models import count_parameters, process_of
from mdiff_lite.sampling import inpaint, sample
from mdiff_lite.train import load_pretrained

torch.manual_seed(0)
F64 = torch.float64
RESULTS = Path("..") / "benchmarks" / "results"  # committed benchmark results, each with its command

# %% [markdown]
# ## The corpus, and the numbers to beat
#
# `TextCorpus` reads the sample of English Wikipedia that the `gensim` package ships (its first articles,
# anarchism, autism, albedo, ...) and cleans it with text8's recipe: markup removed, lower case, digits
# spelled out, everything else a space. That leaves 27 symbols, space and a to z, the same alphabet as
# text8 (which is the first $10^8$ characters of Wikipedia cleaned this way), but about 3 million
# characters instead of 100 million. It is split **by position**: the first 90 % to train, the next 5 %
# to validate, the last 5 % to test, and each split is cut into sequences of 256 characters.

# %%
corpus = TextCorpus()
splits = {name: corpus.split(name) for name in ("train", "valid", "test")}
for name, seqs in splits.items():
    print(f"{name:>5}: {len(corpus.text(name)):>9,} characters, {seqs.shape[0]:>6,} sequences of {corpus.length}")
K, L = corpus.num_classes, corpus.length
test = splits["test"]
print(f"\nK = {K} symbols: {TEXT_ALPHABET!r}")
print("\nthe first test sequence:\n" + corpus.decode(test[0]))

# %% [markdown]
# Which bits per character should a model reach? Three exact yardsticks, each the cross-entropy of the
# test sequences under a simple model fitted on the training split (so each is an upper bound on the
# text's true entropy rate, and a model that cannot beat one has learnt less than counting does):
#
# - the **uniform code**, $\log_2 27 = 4.75$ bits: knowing nothing;
# - **unigram** frequencies: each character by how common it is;
# - **bigram** frequencies: each character given the one before it (the first of a sequence by its
#   unigram frequency).

# %%
refs = corpus.reference_bits()
for key in ("uniform", "unigram", "bigram"):
    print(f"{key:>8}: {refs[key]:.4f} bits per character")
assert abs(refs["uniform"] - math.log2(27)) < 1e-12 and refs["bigram"] < refs["unigram"] < refs["uniform"]

counts = torch.bincount(splits["train"].flatten(), minlength=K).double()
fig, ax = plt.subplots(figsize=(9, 2.4))
ax.bar(range(K), counts / counts.sum(), color="#4682b4")
ax.set_xticks(range(K), ["␣"] + list(TEXT_ALPHABET[1:]))
ax.set_ylabel("share of characters")
ax.set_title("character frequencies in the training split (the unigram model)")
plt.show()

# %% [markdown]
# ## Two ways to destroy a sentence
#
# Both processes use one schedule, `"jsd"`: $\beta_t = 1/(T - t + 1)$, so that $\bar\alpha_t = 1 - t/T$
# falls in a straight line to exactly 0 at $t = T = 1000$. A character survives the first $t$ steps with
# probability $\bar\alpha_t$ under both; they differ in what happens to one that does not survive:
#
# | | uniform (multinomial diffusion, eq. 12) | absorbing |
# |---|---|---|
# | marginal | $q(x_t \mid x_0) = \mathcal C(\bar\alpha_t x_0 + (1 - \bar\alpha_t)/K)$ | $q(x_t \mid x_0) = \mathcal C(\bar\alpha_t x_0 + (1 - \bar\alpha_t)\, e_m)$ |
# | a corrupted character | a uniformly drawn one: it looks like any other | the mask $m$ (a 28th token, drawn `_`) |
# | states of $x_t$ | $K = 27$ | $K + 1 = 28$ |
# | $x_T$ | uniform noise | all mask |
#
# The difference matters to the denoiser. Under uniform noise it must find out *which* characters are
# wrong before it can fix them; a resampled character even keeps its value with probability $1/K$. Under
# absorbing noise it knows exactly which are missing and that all the others are right.

# %%
schedule = make_schedule("jsd", 1000)
uniform, absorbing = UniformProcess(schedule), AbsorbingProcess(schedule)
MASK = absorbing.mask_id(K)


def show(ids) -> str:
    """Token ids as text, the mask as `_`."""
    return "".join("_" if i == MASK else TEXT_ALPHABET[i] for i in ids.tolist())


sentence = test[1][:96]
# One draw of noise for every t, so that the rows below are one chain seen at seven times: each
# character gets a uniform number u and a replacement character, and it is corrupted (resampled to
# its replacement, or masked) once 1 - alpha_bar_t passes its u. Corrupted at t, it stays corrupted
# at every later t, as in the chain itself (a marginal q(x_t | x_0) per t, coupled across t).
u_draw = torch.rand(96, generator=torch.Generator().manual_seed(1), dtype=F64)
noise_chars = torch.randint(0, K, (96,), generator=torch.Generator().manual_seed(2))


def both_at(t):
    hit = u_draw < schedule.one_minus_alpha_bars[t]
    return torch.where(hit, noise_chars, sentence), torch.where(hit, MASK, sentence)


print(f"{'t':>5}  {'abar_t':>6}  uniform noise / absorbing noise")
for t in (0, 100, 250, 500, 750, 900, 1000):
    u_t, a_t = both_at(t)
    print(f"{t:>5}  {schedule.alpha_bars[t].item():>6.2f}  {show(u_t)}\n{'':>15}{show(a_t)}")

# %% [markdown]
# In the live notebook, move the slider: the same draw as the strip above, at any $t$, so you watch
# characters being eaten one by one. The strip is what a static rendering shows.

# %%
def on_t(t):
    u_t, a_t = both_at(t)
    print(f"t = {t}, alpha_bar_t = {schedule.alpha_bars[t].item():.3f}\nuniform:   {show(u_t)}\nabsorbing: {show(a_t)}")


display(ipywidgets.interactive(on_t, t=ipywidgets.IntSlider(value=500, min=0, max=1000, step=10,
                                                            continuous_update=True)))

# %% [markdown]
# Checks of the two marginals by simulation: under absorbing noise a share $1 - \bar\alpha_t$ of the
# characters is masked; under uniform noise a share $(1 - \bar\alpha_t)(1 - 1/K)$ has changed, since a
# resampled character keeps its value with probability $1/K$.

# %%
many = test[:64]
for t in (250, 750):
    masked = (q_sample(many, t, absorbing, K) == MASK).double().mean().item()
    changed = (q_sample(many, t, uniform, K) != many).double().mean().item()
    gone = schedule.one_minus_alpha_bars[t].item()
    print(f"t = {t}: masked {masked:.3f} (expected {gone:.3f}); changed {changed:.3f} (expected {gone * (1 - 1 / K):.3f})")
    assert abs(masked - gone) < 0.01 and abs(changed - gone * (1 - 1 / K)) < 0.01

# %% [markdown]
# ## The absorbing posterior, derived as eq. 13 was
#
# Bayes' rule and the Markov property give the same start as in notebook 02:
#
# $$q(x_{t-1} \mid x_t, x_0) \propto q(x_t \mid x_{t-1})\; q(x_{t-1} \mid x_0).$$
#
# The second factor is the marginal at $t - 1$, $\bar\alpha_{t-1} x_0 + (1 - \bar\alpha_{t-1}) e_m$: either
# still $x_0$, or masked. The first is one step read as a function of $x_{t-1}$, and here the kernel is
# **not symmetric** (a character can become the mask, the mask never becomes a character), so it is not
# eq. 11 with $x_t$ put in the place of $x_{t-1}$, as it was for uniform noise. Two cases:
#
# - **$x_t$ is a character.** It was never masked, so $x_{t-1} = x_t = x_0$: nothing to infer.
# - **$x_t = m$.** The first factor is $1 - \alpha_t$ for $x_{t-1} = x_0$ (masked just now) and $1$ for
#   $x_{t-1} = m$ (already masked). Times the prior $\bar\alpha_{t-1}$ and $1 - \bar\alpha_{t-1}$, and
#   normalised by their sum $1 - \bar\alpha_t$:
#
# $$q(x_{t-1} \mid x_t = m, x_0) = a_t\, x_0 + (1 - a_t)\, e_m, \qquad
#   a_t = \frac{\bar\alpha_{t-1} - \bar\alpha_t}{1 - \bar\alpha_t},$$
#
# the chance that the character was masked at step $t$ itself, given that it is masked by $t$. With
# `"jsd"`, $a_t = (1/T)/(t/T) = 1/t$. Notebook 02's third exercise computed one such number by hand.
#
# As for every formula in this course, the package's version is checked against an independent
# computation: here the $(K + 1) \times (K + 1)$ transition matrices, multiplied out, for a small $K$ and
# every case.

# %%
K_small, s_small = 3, make_schedule("jsd", 6)
proc_small = AbsorbingProcess(s_small)
I = torch.eye(K_small + 1, dtype=F64)


def step_matrix(t):
    """Q_t[j, i] = q(x_t = i | x_{t-1} = j): keep with alpha_t, else the mask; the mask stays."""
    a = s_small.alphas[t].item()
    Q = a * I.clone()
    Q[:, K_small] += 1 - a
    Q[K_small, K_small] = 1.0
    return Q


worst = 0.0
for t in range(1, s_small.T + 1):
    Q_bar_prev = torch.linalg.multi_dot([I, I] + [step_matrix(r) for r in range(1, t)])
    Q_bar = Q_bar_prev @ step_matrix(t)
    for x0, x_t in itertools.product(range(K_small), range(K_small + 1)):
        if Q_bar[x0, x_t] > 0:
            bayes = step_matrix(t)[:, x_t] * Q_bar_prev[x0] / Q_bar[x0, x_t]
            worst = max(worst, (proc_small.q_posterior(I[x_t], I[x0], t) - bayes).abs().max().item())
print(f"largest difference from the matrices over every t, x_0 and x_t: {worst:.1e}")
assert worst < 1e-12
print("a_t for t = 1..6:", [round(a, 4) for a in proc_small.unmask_weight(torch.arange(1, 7)).tolist()], "(1/t)")

# %% [markdown]
# The model's reverse step is the same construction with the network's $\hat x_0$ (a distribution over
# the 27 characters, none on the mask) in the place of $x_0$, as eq. 14 is for uniform noise:
# $p(x_{t-1} \mid x_t = m) = a_t \hat x_0 + (1 - a_t) e_m$, and an unmasked character stays. So each
# term of the bound is
#
# $$L_t = \mathrm{KL}\big(q(x_{t-1} \mid x_t, x_0)\,\|\,p(x_{t-1} \mid x_t)\big) =
#   a_t \cdot \big(-\log \hat x_0(x_0)\big) \text{ at a masked character, and } 0 \text{ elsewhere:}$$
#
# the two distributions agree on the mask ($1 - a_t$ each) and $q$ puts its other $a_t$ on $x_0$ alone.
# The bound is a **weighted cross-entropy on the masked characters**, and at $t = 1$ ($a_1 = 1$) it is the
# decoder's. One term, by the definition of the KL, against the formula:

# %%
x0_hat = torch.softmax(torch.randn(K, dtype=F64), 0)
t, x0_char = 40, 5
q_post = absorbing.q_posterior(torch.eye(K + 1, dtype=F64)[MASK], torch.eye(K + 1, dtype=F64)[x0_char], t)
p_post = absorbing.q_posterior(torch.eye(K + 1, dtype=F64)[MASK], torch.cat([x0_hat, torch.zeros(1, dtype=F64)]), t)
kl = categorical_kl(q_post, p_post).item()
formula = absorbing.unmask_weight(t).item() * -math.log(x0_hat[x0_char].item())
print(f"KL = {kl:.6f} nats; a_t * (-log x0_hat(x_0)) = {formula:.6f}; a_t = {absorbing.unmask_weight(t).item():.4f} = 1/{t}")
assert abs(kl - formula) < 1e-12

# %% [markdown]
# With `"jsd"` something neat happens. At time $t$ a share $t/T$ of the characters is masked and each
# masked one is weighted $1/t$: every $t$ carries the same expected weight, $1/T$ per character, so the
# bound is $\sum_t \frac1T\,\mathbb E[\text{cross-entropy of a masked character at } t]$, an average over
# how much of the text is hidden. The uniform bound has no such form; its terms are largest where the
# signal is ambiguous. (Exercise 2 shows what this means for a model that ignores the context.)
#
# ## The models
#
# One trunk for all three (`TransformerConfig`: width 64, 4 layers, 4 heads, learned positions, and before
# the first layer a convolution over 5 neighbouring characters, which the causal model's sees only to the
# left; without it the bidirectional denoisers stayed at the unigram level in a 300-step trial, as the
# `local` field of `TransformerConfig` records with the commands):
#
# - `TextDenoiser`, bidirectional and told $t$ (a sinusoidal embedding through a small MLP, added at every
#   position): one trained under uniform noise, reading 27 token ids, one under absorbing noise, reading
#   28. The same protocol as the U-Net: `model(x_t, t)` gives the logits of $\hat x_0$ at every position.
# - `CausalTransformer`, the autoregressive reference: position $i$ sees only $x_{<i}$ (a causal mask,
#   the input shifted behind a start token) and predicts $x_i$, so $-\log p(x) = -\sum_i \log p(x_i \mid
#   x_{<i})$ is **exact**, one pass, no bound.
#
# `benchmarks/text.py` trained each from scratch for the same minutes with the same loop (`fit`: AdamW,
# warm-up and cosine learning rate, clipping, EMA) and shipped them in float16. Their metadata keeps the
# command.

# %%
loaded = {name: load_pretrained(f"text-{name}") for name in ("uniform", "absorbing", "autoregressive")}
models = {name: model for name, (model, meta) in loaded.items()}
metas = {name: meta for name, (model, meta) in loaded.items()}
for name, model in models.items():
    m = metas[name]
    print(f"{name:>14}: {type(model).__name__}, {count_parameters(model):,} parameters, {m['steps']} steps in "
          f"{m['wall_seconds'] / 60:.1f} min")
print("\ntrained by:", metas["absorbing"]["command"])
for name in ("uniform", "absorbing"):
    assert process_of(models[name]).name == name

# %% [markdown]
# During training `fit` keeps a running estimate of the training loss: the one-draw estimate of each
# model's bound for the diffusion models (eq. 17, $t$ random), the exact negative log-likelihood for the
# causal model. The benchmark's JSON holds those curves.

# %%
bench = json.loads((RESULTS / "text_cpu.json").read_text())
print("benchmark:", bench["command"], f"\n({bench['device_name']}, {bench['torch_threads']} thread(s) per model)")
fig, ax = plt.subplots(figsize=(7, 3.6))
colors = {"uniform": "#dc143c", "absorbing": "#4682b4", "autoregressive": "#464646"}
for row in bench["rows"]:
    h = row["history"]
    ax.plot([s / 60 for s in h["seconds"]], h["loss_bpd"], color=colors[row["model"]], label=row["model"])
for key, style in (("bigram", ":"), ("unigram", "--")):
    ax.axhline(refs[key], color="grey", ls=style, lw=1, label=f"{key} (test)")
ax.set_ylim(1.5, 5)
ax.set_xlabel("training minutes (one CPU core each)")
ax.set_ylabel("bits per character")
ax.set_title("training loss (running estimate, training batches)")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## Test bits per character
#
# Scored here, live, on the test split: each diffusion model by a Monte-Carlo estimate of its whole
# $T = 1000$ bound (`estimate_bound`: `K_T` uniform draws of $t$ per sequence, an unbiased estimate, with
# its standard error over sequences), the causal model by its exact likelihood (`exact_nll`).

# %%
live = {}
for name in ("uniform", "absorbing"):
    live[name] = estimate_bound(models[name], process_of(models[name]), test[:N_TEST], k=K_T, seed=0, progress=False)
live["autoregressive"] = exact_nll(models["autoregressive"], test[:N_TEST], progress=False)
for name, r in live.items():
    print(f"{name:>14}: {r['bpd']:.4f} +- {r['stderr']:.4f} bits per character  ({r['bound'][:40]}...)")
diff = live["uniform"]["bpd"] - live["absorbing"]["bpd"]
se = math.hypot(live["uniform"]["stderr"], live["absorbing"]["stderr"])
print(f"\nuniform minus absorbing: {diff:+.4f} bits per character, {diff / se:.1f} standard errors"
      f" ({N_TEST} sequences, k = {K_T})")

# %% [markdown]
# The benchmark's own table (all 577 test sequences, $k = 8$), as the README carries it:

# %%
print((RESULTS / "text_cpu.md").read_text())

# %%
fig, ax = plt.subplots(figsize=(8, 3.4))
bars = [("uniform code", refs["uniform"], 0, "#bbbbbb"), ("unigram", refs["unigram"], 0, "#bbbbbb"),
        ("bigram", refs["bigram"], 0, "#bbbbbb")]
bars += [(f"diffusion, {n}", live[n]["bpd"], live[n]["stderr"], colors[n]) for n in ("uniform", "absorbing")]
bars += [("autoregressive", live["autoregressive"]["bpd"], live["autoregressive"]["stderr"], colors["autoregressive"])]
ax.barh([b[0] for b in bars], [b[1] for b in bars], xerr=[b[2] for b in bars], color=[b[3] for b in bars])
for i, b in enumerate(bars):
    ax.text(b[1] + 0.05, i, f"{b[1]:.3f}", va="center", fontsize=8)
ax.invert_yaxis()
ax.set_xlabel("test bits per character (lower is better)")
ax.set_title("equal budgets; yardsticks exact, diffusion a bound (Monte-Carlo), autoregressive exact")
plt.show()

# %% [markdown]
# What the numbers say, each computed from the live scores above (the README's table is the benchmark's,
# on the same sequences with more draws of $t$):

# %%
ar = live["autoregressive"]["bpd"]
for name in ("uniform", "absorbing"):
    r = live[name]
    print(f"{name:>9} diffusion: {refs['bigram'] - r['bpd']:+.3f} bits below the bigram floor, "
          f"{r['bpd'] - ar:+.3f} bits above the autoregressive model ({r['bpd'] / ar:.2f}x)")
print(f"absorbing against uniform: {-diff:+.3f} +- {se:.3f} bits per character ({-diff / se:+.1f} standard errors,"
      " the two estimates taken as independent)")

# %% [markdown]
# - Both diffusion models get **under the bigram yardstick** (the "bigram floor" of the table: the bar a
#   model must get under to show it uses more than the previous character): each has learnt more than
#   which character tends to follow which. Their numbers are upper bounds, so the models themselves are
#   at least that good.
# - **Absorbing is below uniform** at the same budget, by 2 to 3 standard errors of the difference (2.0
#   here with $k = 4$, 2.8 in the benchmark with $k = 8$): D3PM's direction (1.45 against 1.61 on
#   text8), seen at a tiny scale. That standard error treats the two estimates as independent; scored on
#   the same sequences they covary (a hard sequence is hard for both), so it overstates the error of the
#   difference. What it does not cover is the training: one run, one seed, per model (the uniform
#   model's training curve above still jumps near the end). Its denoiser has the easier task: it knows
#   which characters are missing, and it never has to doubt the ones it sees.
# - Both **trail the autoregressive model**, at this size and budget the best of the three by a wide
#   margin. Not because of the independent choices within a step: at $T = 1000$ a step unmasks a
#   quarter of a character on average. Mostly because the denoiser's task is harder to learn (predict
#   any character from any subset of the others, at every noise level, where the causal model always
#   sees the same kind of context, everything to its left), and because the bound, an average over the
#   orders in which characters are revealed, is only an upper bound on the likelihood.
#
# The comparison is fair in its budget (same minutes, same loop, same trunk, same schedule) but it is
# one size, one schedule, one seed and one short budget: enough to see the directions, not to rank the
# methods at scale.
#
# Published text8 numbers, for scale only: text8 is more than 30 times as much text of the same kind, and
# the papers' models are 12-layer transformers trained far longer (figures from the papers, via `PAPER.md`;
# none of this is our data; ≤ marks a bound):
#
# | model (text8, bits per character, test) | published |
# |---|---:|
# | multinomial diffusion (Hoogeboom et al. 2021), uniform noise, T = 1000 | ≤ 1.72 |
# | D3PM uniform (Austin et al. 2021), T = 1000 | ≤ 1.61 |
# | D3PM absorbing, T = 1000 | ≤ 1.45 |
# | MDLM (Sahoo et al. 2024), absorbing, continuous time | ≤ 1.40 |
# | argmax flow, autoregressive (Hoogeboom et al. 2021) | ≤ 1.38 |
#
# ### Where the bound is spent
#
# Which $t$ cost the most? Every one of the 1000 terms for many sequences would take minutes here, so
# each tenth of $t$ gets its own Monte-Carlo estimate: `training_loss` with a time sampler that draws
# $t$ uniformly from one tenth only, $p(t) = 1/100$ there, so that $L_t / p(t)$ is an unbiased estimate of
# the tenth's **sum** of terms (eq. 17's trick, restricted to a range; `learns = False` tells
# `training_loss` not to feed the losses back to it, as it would to an importance sampler). The prior term is 0 for both
# noises here, since $\bar\alpha_T = 0$.

# %%
class OneTenth:
    """t uniform on lo..hi (a tenth of 1..T), with its probability 1 / (hi - lo + 1)."""

    learns = False

    def __init__(self, lo, hi):
        self.lo, self.hi, self.T = lo, hi, schedule.T

    def sample(self, batch_size, device="cpu", generator=None):
        t = torch.randint(self.lo, self.hi + 1, (batch_size,), generator=generator, device=device)
        return t, torch.full((batch_size,), 1.0 / (self.hi - self.lo + 1), dtype=F64, device=device)


assert all(prior_kl(test[:1], p, K).item() == 0 for p in (uniform, absorbing))
edges = [(100 * i + 1, 100 * (i + 1)) for i in range(10)]
fig, ax = plt.subplots(figsize=(8, 3.2))
width = 0.4
g = torch.Generator().manual_seed(0)
for j, name in enumerate(("uniform", "absorbing")):
    with torch.no_grad():
        per_tenth = [training_loss(models[name], test[:N_PER_T], process_of(models[name]), OneTenth(lo, hi),
                                   generator=g, reduction="none").double() / (L * math.log(2)) for lo, hi in edges]
    means = [x.mean().item() for x in per_tenth]
    errors = [x.std().item() / math.sqrt(len(x)) for x in per_tenth]
    ax.bar([i + (j - 0.5) * width for i in range(10)], means, width, yerr=errors, color=colors[name],
           label=f"{name}: the tenths add up to {sum(means):.3f}")
    print(f"{name:>9}: " + ", ".join(f"{m:.3f}" for m in means), f"(sum {sum(means):.3f})")
ax.axhline(refs["unigram"] / 10, color="grey", ls="--", lw=1, label=f"unigram / 10 = {refs['unigram'] / 10:.3f}")
print(f"a tenth at the unigram cross-entropy: {refs['unigram'] / 10:.3f}")
ax.set_xticks(range(10), [f"{lo}-{hi}" for lo, hi in edges], rotation=30, fontsize=7)
ax.set_xlabel("t")
ax.set_ylabel("bits per character")
ax.set_title(f"the bound by tenths of t ({N_PER_T} test sequences, one t each per tenth)")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# The two noises spend their bounds at opposite ends (the printed tenths above). For absorbing noise
# the expected weight is the same at every $t$, so the tenths differ only in how hard the hidden
# characters are to guess: cheap early, with few characters hidden and the rest of the sentence as
# context, and dear late, when almost everything is hidden and a guess is little better than the
# character frequencies (the dashed line: a tenth of the unigram cross-entropy). The uniform model pays most early: among mostly correct characters it must
# spot the few that were resampled, and a resampled character that happens to fit looks exactly like a
# right one. Late in the chain a step changes a text that is already almost noise, and there is little
# left to predict about it.
#
# ## Samples, with few and many steps
#
# `sample` starts from $x_T$ (all mask for absorbing noise, uniform characters for uniform noise) and
# jumps down a grid of times with the skip posterior, as in notebook 05. Under absorbing noise a jump from
# $t$ to $s$ unmasks each masked character with probability $(\bar\alpha_s - \bar\alpha_t)/(1 -
# \bar\alpha_t)$, to a character drawn from $\hat x_0$, **independently** of the others unmasked in the
# same jump: with few steps, many characters are decided at once without seeing each other. A crude
# measure of quality, over `N_SAMPLES` samples each: the share of the sampled words that occur in the
# training text (the words cut at both ends of a sample left out).

# %%
train_words = set(corpus.text("train").split())


def known_words(texts) -> str:
    """The share of words that occur in the training text, +- its binomial standard error, and the count."""
    words = [w for text in texts for w in text.split()[1:-1]]  # the cut words at both ends left out
    n, p = len(words), sum(w in train_words for w in words) / max(1, len(words))
    return f"{p:.0%} +- {math.sqrt(p * (1 - p) / max(1, n)):.0%} of {n} words are real"


def bigram_text(n, generator) -> list[str]:
    """n sequences drawn from the training bigram frequencies: the yardstick, written out."""
    pairs = torch.bincount(splits["train"].flatten()[:-1] * K + splits["train"].flatten()[1:], minlength=K * K)
    table = (pairs.view(K, K) + 1).double()
    x = [torch.multinomial(counts, n, replacement=True, generator=generator)]
    for _ in range(L - 1):
        x.append(torch.multinomial(table[x[-1]], 1, generator=generator).squeeze(1))
    return corpus.decode(torch.stack(x, 1))


g = torch.Generator().manual_seed(0)
print(f"test text itself: {known_words(corpus.decode(test[:N_SAMPLES]))}")
print(f"bigram frequencies: {known_words(bigram_text(N_SAMPLES, g))}\n")
for name in ("uniform", "absorbing"):
    for steps in SAMPLE_STEPS:
        texts = corpus.decode(sample(models[name], process_of(models[name]), N_SAMPLES, steps=steps, generator=g,
                                     progress=False))
        print(f"{name}, {steps} steps ({known_words(texts)}):\n  {texts[0][:120]}")
texts = corpus.decode(models["autoregressive"].sample(N_SAMPLES, generator=g))
print(f"autoregressive, 256 steps ({known_words(texts)}):\n  {texts[0][:120]}")

# %% [markdown]
# None of the three writes English yet, after ten minutes on one core; the causal model comes closest,
# as its bits per character said it would. Compare the rows with their standard errors (each over a few
# hundred words):
#
# - For the diffusion models neither the noise nor the number of steps moves the share of real words by
#   much more than that error. With 10 steps a jump unmasks many characters at once (exercise 3 counts
#   them), each chosen without seeing the others, and one would expect a price; at this quality it does
#   not show beyond the noise.
# - Their samples have **no more** real words than text drawn from the bigram frequencies, although their
#   bounds are well below the bigram cross-entropy. The two measure different things: the bound scores
#   how well a model predicts the test text, the share how its own text reads; and the share is crude, it
#   rewards the short common words that bigram text is full of. A lower bound does not promise better
#   samples by every measure.
#
# ## Filling a masked span
#
# `inpaint` keeps the known characters and generates the rest. Here the middle 48 characters of a test
# sequence are hidden, and each diffusion model fills them given both sides; the causal model cannot
# do this directly, since it only ever looks left.

# %%
known = test[5:6].clone()
keep = torch.ones(L, dtype=torch.bool)
keep[104:152] = False
print("truth:     " + corpus.decode(known[0])[80:176])
print("hidden:    " + show(torch.where(keep, known[0], MASK))[80:176])
g = torch.Generator().manual_seed(0)
for name in ("uniform", "absorbing"):
    filled = inpaint(models[name], process_of(models[name]), known, keep, steps=SAMPLE_STEPS[-1], generator=g,
                     progress=False)
    assert torch.equal(filled[0][keep], known[0][keep])
    print(f"{name + ':':<11}" + corpus.decode(filled[0])[80:176])

# %% [markdown]
# ## Summary
#
# - Absorbing noise replaces a character by a mask that stays; its posterior is the one-line case
#   analysis above, and its bound a cross-entropy on the masked characters weighted by $a_t$ ($1/t$ with
#   `"jsd"`), checked against transition matrices.
# - At one size, one schedule and one budget, the absorbing model's bound is below the uniform one's,
#   both are below the bigram floor, and both trail the causal transformer's exact likelihood (the
#   numbers above and in `benchmarks/results/text_cpu.md`).
# - A diffusion sampler with few steps decides many characters independently at once; for models this
#   young that price does not show beyond the noise of the word counts. By the crude share of real words
#   the diffusion samples are no better than bigram text, and the causal model's are far better.
#
# ## Exercises
#
# 1. With `"jsd"` and $T = 1000$: what is $a_{250}$, and how many of a sequence's 256 characters are
#    masked at $t = 250$ on average? Give the product of the two (the expected weight of the masked
#    characters at that $t$).
# 2. A "denoiser" that ignores its input and predicts the training character frequencies $f$ at every
#    position. Under absorbing noise, what is its bound on the test sequences, in bits per character?
#    Work it out from the form of the bound (you may compute it from `corpus` and `splits`); the
#    solution then confirms it with `estimate_bound`.
# 3. The absorbing sampler with 10 steps jumps from $t$ to $s = t - 100$. How many characters of a
#    256-character sequence does one jump unmask, on average? Does it depend on $t$?

# %%
answer_1 = None   # a_250 * expected number masked at t = 250

# %%
check("exercise 1", answer_1, absorbing.unmask_weight(250).item() * L * schedule.one_minus_alpha_bars[250].item(),
      tol=1e-6);

# %%
answer_2 = None   # bits per character on the test sequences

# %%
test_counts = torch.bincount(test.flatten(), minlength=K).double()
check("exercise 2", answer_2, -(test_counts / test_counts.sum() * torch.log2(counts / counts.sum())).sum().item(),
      tol=0.01);

# %%
answer_3 = None   # characters unmasked per jump, on average

# %%
jumps = [(t, t - 100) for t in range(1000, 0, -100)]
# From the marginals alone: the characters masked at t and not at s, L (1 - abar_t) - L (1 - abar_s) on average.
per_jump = [L * (schedule.alpha_bars[s].item() - schedule.alpha_bars[t].item()) for t, s in jumps]
check("exercise 3", answer_3, ok=lambda a: all(abs(a - n) < 1e-6 for n in per_jump)
      or f"the expected counts per jump are {sorted(set(round(n, 4) for n in per_jump))}");

# %% [markdown]
# Solutions: open one only after trying its exercise.
#
# <details><summary>Solution 1</summary>
#
# $a_t = 1/t$, so $a_{250} = 0.004$; a share $1 - \bar\alpha_{250} = 250/1000$ of the characters is
# masked, 64 of 256 on average. The product is $0.004 \cdot 64 = 0.256 = 256/1000$: every $t$ gives the
# masked characters the same total weight, $L/T$.
#
# ```python
# answer_1 = (1 / 250) * 256 * (250 / 1000)
# ```
#
# </details>
#
# <details><summary>Solution 2</summary>
#
# At every $t$ the term is $a_t \sum_{\text{masked}} -\log \hat x_0(x_0)$, and $\hat x_0 = f$ everywhere,
# so its expectation is $a_t \cdot (1 - \bar\alpha_t) \cdot \sum_i -\log f(x_{0,i})$. With `"jsd"`,
# $a_t (1 - \bar\alpha_t) = 1/T$, and the $T$ terms add up to $\sum_i -\log f(x_{0,i})$: the bound is
# **exactly the unigram cross-entropy** of the sequence (the prior term is 0). And that is also this
# model's exact $-\log p(x_0)$: its sampler unmasks every character exactly once, each to a draw from $f$
# whatever the others are, so $p(x_0) = \prod_i f(x_{0,i})$. No bound is lost for a model that ignores
# context; the gap between bound and likelihood opens only where context is used. The number is the
# cross-entropy of the test characters under the training frequencies, without the add-one smoothing of
# `reference_bits` (the two agree to the fourth decimal).
#
# ```python
# test_counts = torch.bincount(test.flatten(), minlength=K).double()
# answer_2 = -(test_counts / test_counts.sum() * torch.log2(counts / counts.sum())).sum().item()
#
# log_f = torch.log(counts / counts.sum()).float()
#
# class UnigramDenoiser:          # the confirmation: its bound, estimated
#     num_classes = K
#     def __call__(self, x_t, t):
#         return log_f.expand(x_t.shape + (K,))
#
# print(answer_2, estimate_bound(UnigramDenoiser(), absorbing, test, k=1, progress=False))
# ```
#
# </details>
#
# <details><summary>Solution 3</summary>
#
# At $t$ a share $1 - \bar\alpha_t = t/T$ of the characters is masked, and a jump to $s$ unmasks each of
# them with probability $(\bar\alpha_s - \bar\alpha_t)/(1 - \bar\alpha_t) = ((t - s)/T)/(t/T) = (t - s)/t$.
# On average $L \cdot (t/T) \cdot (t - s)/t = L (t - s)/T = 256 \cdot 100/1000 = 25.6$ characters, at every
# $t$: the schedule reveals the text at an even pace. (With all $T$ steps, $0.256$ per step: the
# "quarter of a character" above.)
#
# ```python
# answer_3 = 256 * 100 / 1000
# ```
#
# </details>
