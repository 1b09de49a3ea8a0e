"""Dequantization flows against independent computations: autograd's full Jacobian in float64 for
every log-determinant, and, for a fresh flow (whose density is a logit-normal per entry, in closed
form with scipy), numerical integrals for the bounds and the exact cell probabilities log P(x)."""

import math
import time

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from scipy.special import logit

from mdiff_lite.baselines import (KINDS, DequantizationFlow, evaluate_flow, fit_flow, load_flow, load_pretrained_flow,
                                  preprocess, preprocess_inverse, save_flow)

F64 = torch.float64
TINY = dict(hidden=(8, 8, 8), steps=(2, 1, 1), blocks=1, dequantizer_hidden=8, dequantizer_steps=2)


def tiny(kind, K=3, size=4, seed=0, perturb=0.0, **overrides):
    """A small float64 flow; ``perturb`` > 0 moves every parameter off its (identity) start."""
    torch.manual_seed(seed)
    model = DequantizationFlow(kind, K, size, size, **{**TINY, **overrides}).double().eval()
    with torch.no_grad():   # the 1 x 1 convolutions start as rotations in float32: make them exact
        for name, p in model.named_parameters():
            if name.endswith(".weight") and p.ndim == 2:
                p.copy_(torch.linalg.qr(p)[0])
    if perturb:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(perturb * torch.randn_like(p))
    return model


# ---- the fresh flow in closed form: each entry y = logit(s(v)) is N(0, 1) ----------------------

ALPHA = 0.05


def cdf(v, upper):
    """P(V <= v) for one entry of a fresh flow: Phi(logit(alpha + (1 - 2 alpha) v / upper))."""
    s = np.clip(ALPHA + (1 - 2 * ALPHA) * np.asarray(v, float) / upper, 0, 1)
    return stats.norm.cdf(logit(s))


def log_density(v, upper):
    """The derivative of ``cdf``, by the chain rule, in logs."""
    scale = (1 - 2 * ALPHA) / upper
    s = ALPHA + scale * v
    return stats.norm.logpdf(logit(s)) + math.log(scale) - math.log(s) - math.log1p(-s)


def log_logit_normal(u):
    """log q(u) when logit(u) is N(0, 1): the fresh variational dequantizer, per entry."""
    return stats.norm.logpdf(logit(u)) - math.log(u) - math.log1p(-u)


def corners(model, x0):
    """The cell corners of every entry of x0 (numpy), as the model's encoding lays them out."""
    if model.encoding == "ordinal":
        return x0.numpy().astype(float).ravel()
    return np.eye(model.num_classes)[x0.numpy()].ravel()


def elbo_entry(corner, upper):
    return integrate.quad(lambda u: log_density(corner + u, upper), 0, 1)[0]


def variational_elbo_entry(corner, upper):
    return integrate.quad(lambda u: math.exp(log_logit_normal(u)) * (log_density(corner + u, upper)
                                                                       - log_logit_normal(u)), 0, 1)[0]


# ---- preprocessing ------------------------------------------------------------------------------

@pytest.mark.parametrize("upper", [2.0, 5.0])
def test_preprocess_log_det_is_the_sum_of_log_derivatives(upper):
    v = (torch.rand(3, 2, 4, 4, dtype=F64) * upper).requires_grad_()
    y, log_det = preprocess(v, upper, ALPHA)
    (slope,) = torch.autograd.grad(y.sum(), v)   # the map is elementwise: its Jacobian is diagonal
    torch.testing.assert_close(log_det, slope.abs().log().flatten(1).sum(1), rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(preprocess_inverse(y, upper, ALPHA), v, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(y, torch.from_numpy(logit(ALPHA + (1 - 2 * ALPHA) * v.detach().numpy() / upper)))


# ---- exact change of variables: invertibility and log-determinants ------------------------------

def sample_v(model, n=2):
    return torch.rand(n, model.channels, model.height, model.width, dtype=F64) * model.upper


@pytest.mark.parametrize("kind", ["ordinal", "onehot"])
def test_flow_is_invertible(kind):
    model = tiny(kind, perturb=0.2)
    v = sample_v(model, 3)
    latents, _ = model.flow(v)
    torch.testing.assert_close(model.flow.inverse(latents), v, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kind, K", [("ordinal", 3), ("onehot", 2)])
def test_flow_log_det_equals_the_brute_force_jacobian(kind, K):
    model = tiny(kind, K=K, perturb=0.2)
    model.train()
    model.training_loss(torch.randint(0, K, (8, 4, 4)))   # ActNorm's data-dependent start, then perturb it
    model.eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    v = sample_v(model, 2)
    _, log_det = model.flow(v)
    for b in range(2):
        def flat_latents(vb):
            return torch.cat([z.flatten() for z in model.flow(vb.view(1, *v.shape[1:]))[0]])
        J = torch.autograd.functional.jacobian(flat_latents, v[b].flatten())
        assert J.shape == (v[b].numel(),) * 2
        torch.testing.assert_close(log_det[b], torch.linalg.slogdet(J)[1], rtol=1e-9, atol=1e-8)
        z = flat_latents(v[b])
        expected = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum() + torch.linalg.slogdet(J)[1]
        torch.testing.assert_close(model.log_density(v[b:b + 1])[0], expected, rtol=1e-9, atol=1e-8)


@pytest.mark.parametrize("kind, K", [("variational-ordinal", 3), ("variational-onehot", 2)])
def test_dequantizer_log_q_equals_the_brute_force_jacobian(kind, K):
    model = tiny(kind, K=K, perturb=0.2)
    x0 = torch.randint(0, K, (1, 4, 4))
    x_onehot = torch.nn.functional.one_hot(x0, K).permute(0, 3, 1, 2).to(F64)
    eps = torch.randn(1, model.channels, 4, 4, dtype=F64)
    u, log_det = model.dequantizer.transform(eps, x_onehot)
    assert 0 < u.min() and u.max() < 1
    J = torch.autograd.functional.jacobian(
        lambda e: model.dequantizer.transform(e.view(eps.shape), x_onehot)[0].flatten(), eps.flatten())
    torch.testing.assert_close(log_det[0], torch.linalg.slogdet(J)[1], rtol=1e-9, atol=1e-8)


# ---- the fresh flow's density and bounds against integrals --------------------------------------

@pytest.mark.parametrize("kind", ["ordinal", "onehot"])
def test_fresh_flow_density_is_the_closed_form_and_integrates_to_one(kind):
    model = tiny(kind, K=4)
    D = model.channels * model.height * model.width

    def entry_density(t):   # every entry at t: log p(v) = D log p1(t)
        v = torch.full((1, model.channels, 4, 4), float(t), dtype=F64)
        with torch.no_grad():
            return math.exp(model.log_density(v).item() / D)

    lo = -ALPHA * model.upper / (1 - 2 * ALPHA)          # where s(v) = 0 and 1: the support
    hi = (1 - ALPHA) * model.upper / (1 - 2 * ALPHA)
    assert integrate.quad(entry_density, lo, hi, limit=200)[0] == pytest.approx(1.0, abs=1e-7)
    for a in (0.0, 1.0):   # mass of a unit cell = the difference of the CDF
        assert integrate.quad(entry_density, a, a + 1)[0] == pytest.approx(cdf(a + 1, model.upper)
                                                                           - cdf(a, model.upper), rel=1e-7)


def mc_bound(model, x0, k, draws, seed=0):
    """``draws`` independent values of the bound with ``k``, summed over the maps of ``x0``."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bounds = model.log_prob_bound(x0.repeat(draws, 1, 1), k, generator)
    per_draw = bounds.view(draws, len(x0)).sum(1).numpy()
    return per_draw.mean(), per_draw.std(ddof=1) / math.sqrt(draws)


@pytest.mark.parametrize("kind", ["ordinal", "onehot"])
def test_uniform_bounds_match_the_integrals_and_tighten_with_k(kind):
    model = tiny(kind, K=4)
    x0 = torch.arange(16).view(1, 4, 4) % 4
    c = corners(model, x0)
    elbo = sum(elbo_entry(a, model.upper) for a in c)                    # E_u log p(x + u), by quadrature
    exact = np.log(cdf(c + 1, model.upper) - cdf(c, model.upper)).sum()  # log P(x), the cells' mass
    mean1, se1 = mc_bound(model, x0, 1, 2000)
    assert abs(mean1 - elbo) < 4 * se1
    mean8, se8 = mc_bound(model, x0, 8, 200, seed=1)
    mean64, se64 = mc_bound(model, x0, 64, 50, seed=2)
    assert mean1 + 4 * se1 < mean8 < mean64 + 4 * se64
    assert mean64 < exact + 4 * se64
    assert exact - mean64 < 0.5 * (exact - elbo)   # k = 64 closes most of the gap


def test_importance_weighted_bound_matches_a_double_integral_in_a_one_pixel_world():
    """One pixel, K = 5: E log((p(x + u1) + p(x + u2)) / 2) over two uniform draws, by quadrature."""
    model = tiny("ordinal", K=5, size=1, hidden=(8,), steps=(2,))
    for x in (0, 1):   # edge cells, where p varies within the cell and k matters
        x0 = torch.full((1, 1, 1), x)
        expected = integrate.dblquad(lambda u1, u2: np.logaddexp(log_density(x + u1, 5.0), log_density(x + u2, 5.0))
                                     - math.log(2), 0, 1, 0, 1)[0]
        mean, se = mc_bound(model, x0, 2, 4000)
        assert abs(mean - expected) < 4 * se
        exact = math.log(cdf(x + 1, 5.0) - cdf(x, 5.0))
        mean64, se64 = mc_bound(model, x0, 64, 500)
        assert mean < mean64 < exact + 4 * se64 and exact - mean64 < 5e-3


def test_variational_bound_matches_the_integral():
    model = tiny("variational-ordinal", K=4)   # fresh q: logit(u) ~ N(0, 1) per entry
    x0 = torch.arange(16).view(1, 4, 4) % 4
    expected = sum(variational_elbo_entry(a, model.upper) for a in corners(model, x0))
    mean, se = mc_bound(model, x0, 1, 2000)
    assert abs(mean - expected) < 4 * se
    exact = np.log(cdf(corners(model, x0) + 1, model.upper) - cdf(corners(model, x0), model.upper)).sum()
    assert mean < exact and mc_bound(model, x0, 16, 200, seed=3)[0] > mean


def test_ordinal_bound_depends_on_the_labels():
    """The same map with two classes swapped: a different ordinal bound, beyond the noise."""
    model = tiny("ordinal", K=4)
    x0 = torch.zeros(1, 4, 4, dtype=torch.long)
    swapped = torch.ones_like(x0)   # class 0 -> 1: same map, relabelled
    mean0, se0 = mc_bound(model, x0, 1, 500)
    mean1, se1 = mc_bound(model, swapped, 1, 500)
    assert abs(mean0 - mean1) > 4 * math.hypot(se0, se1)


# ---- units, labels, training --------------------------------------------------------------------

def test_evaluate_flow_reports_bits_per_pixel_and_names_the_bound():
    model = tiny("onehot", K=3)
    maps = torch.randint(0, 3, (6, 4, 4))
    one = evaluate_flow(model, maps, k=1, batch_size=4)
    iw = evaluate_flow(model, maps, k=64, batch_size=4)
    assert "one-sample" in one["bound"] and "one-hot" in one["bound"]
    assert "importance-weighted" in iw["bound"] and "k = 64" in iw["bound"]
    assert one["n_images"] == 6 and iw["k"] == 64
    bound = model.log_prob_bound(maps, 1, torch.Generator().manual_seed(0))
    # D counts pixels (16), not the 48 one-hot entries the flow sees.
    torch.testing.assert_close(one["bpd"], (-bound / (16 * math.log(2))).mean().item())
    assert np.mean(one["per_map_bpd"]) == pytest.approx(one["bpd"])


def test_a_few_steps_reduce_the_loss_and_are_reproducible():
    stripes = torch.tensor([[0, 0, 1, 1, 2, 2, 1, 1]]).expand(8, 8)
    maps = torch.stack([stripes.roll(s, 1) for s in range(8)] + [stripes.T.roll(s, 0) for s in range(8)])
    for kind in ("ordinal", "variational-onehot"):
        runs = []
        for _ in range(2):
            torch.manual_seed(0)
            model = DequantizationFlow(kind, 3, 8, 8, hidden=(8, 16, 16), steps=(1, 2, 2), dequantizer_hidden=8,
                                       dequantizer_steps=2)
            before = evaluate_flow(model, maps, k=1)["bpd"]
            history = fit_flow(model, maps, steps=40, batch_size=16, lr=3e-3, warmup_steps=5, progress=False)
            runs.append(history["loss_bpd"])
        after = evaluate_flow(model, maps, k=1)["bpd"]
        assert history["steps"] == 40 and runs[0] == runs[1]
        assert after < before - 0.3, (kind, before, after)


def test_on_log_sees_every_log_step_its_time_is_not_charged_and_it_can_stop():
    maps = torch.randint(0, 3, (16, 4, 4), generator=torch.Generator().manual_seed(0))
    model, calls = tiny("ordinal", K=3), []

    def on_log(step, seconds, flow):
        assert flow is model and flow.training
        calls.append((step, seconds))
        flow.eval()          # fit_flow puts the flow back in training mode
        time.sleep(0.2)      # not charged to the budget
        return step == 20

    history = fit_flow(model, maps, steps=50, batch_size=4, progress=False, on_log=on_log, log_every=5)
    assert [c[0] for c in calls] == [5, 10, 15, 20] and history["steps"] == 20
    assert history["seconds"] < 0.2 * len(calls)
    with pytest.raises(TypeError):
        fit_flow(model, maps, steps=1, on_log="not callable", progress=False)
    with pytest.raises(ValueError):
        fit_flow(model, maps, steps=1, log_every=0, progress=False)


@pytest.mark.parametrize("kind", KINDS)
def test_samples_are_class_maps(kind):
    model = tiny(kind, K=3)
    x = model.sample(5, torch.Generator().manual_seed(0))
    assert x.shape == (5, 4, 4) and x.dtype == torch.long and 0 <= x.min() and x.max() < 3


def test_bad_inputs_raise():
    model = tiny("ordinal", K=3)
    good = torch.zeros(2, 4, 4, dtype=torch.long)
    for bad in (good.double(), good[0], torch.zeros(2, 4, 5, dtype=torch.long), good + 3, good - 1):
        with pytest.raises(ValueError):
            model.log_prob_bound(bad)
    with pytest.raises(TypeError):
        model.log_prob_bound(good.numpy())
    for k in (0, 1.5, True):
        with pytest.raises(ValueError):
            model.log_prob_bound(good, k=k)
    with pytest.raises(ValueError):
        model.log_density(torch.zeros(2, 3, 4, 4, dtype=F64))
    for kwargs in (dict(kind="variational"), dict(num_classes=1), dict(height=6), dict(alpha=0.5),
                   dict(hidden=(8, 8)), dict(steps=(2, -1, 1))):
        with pytest.raises(ValueError):
            DequantizationFlow(**{**dict(kind="ordinal", num_classes=3, height=4, width=4, **TINY), **kwargs})
    with pytest.raises(ValueError):
        fit_flow(model, good)   # neither steps nor max_seconds
    with pytest.raises(ValueError):
        evaluate_flow(model, good[:0])


@pytest.mark.parametrize("kind", ["ordinal", "variational-onehot"])
def test_saved_flow_loads_with_the_same_bound(tmp_path, kind):
    torch.manual_seed(0)
    model = DequantizationFlow(kind, 4, 8, 8, hidden=(8, 8), steps=(1, 1), dequantizer_hidden=8, dequantizer_steps=1)
    maps = torch.randint(0, 4, (16, 8, 8))
    fit_flow(model, maps, steps=3, progress=False)  # ActNorm initialised, weights moved off their start
    save_flow(tmp_path / "f.pt", model, {"data": "random maps"})
    loaded, meta = load_flow(tmp_path / "f.pt")
    assert meta["data"] == "random maps" and meta["flow_config"]["kind"] == kind and not loaded.training
    assert meta["kind"] == "flow"
    model.eval()
    with torch.no_grad():
        expected = model.log_prob_bound(maps[:4], 2, torch.Generator().manual_seed(1))
        got = loaded.log_prob_bound(maps[:4], 2, torch.Generator().manual_seed(1))
    torch.testing.assert_close(got, expected)


def test_flow_checkpoint_errors(tmp_path):
    from mdiff_lite.models import Denoiser, DenoiserConfig
    from mdiff_lite.train import save_checkpoint

    save_checkpoint(tmp_path / "d.pt", Denoiser(DenoiserConfig(num_classes=4, height=8, width=8, channels=(8,),
                                                               fold=1, groups=4, attention=False)), {})
    with pytest.raises(ValueError, match="holds a denoiser, not a dequantization flow"):
        load_flow(tmp_path / "d.pt")
    with pytest.raises(ValueError, match="kind must be one of"):
        load_pretrained_flow("toyseg", "argmax")
    with pytest.raises(ValueError, match="no shipped flow"):
        load_pretrained_flow("nonexistent", "ordinal")
    with pytest.raises(TypeError):
        save_flow(tmp_path / "x.pt", torch.nn.Linear(2, 2))
