"""The transformers for text (models), trained by fit (train), scored (evaluate) and sampled
(sampling); the checks are independent of the code: prefixes run one by one for causality and the
exact likelihood, a fixed pattern for learning, a file round trip for checkpoints."""

import math

import pytest
import torch

from mdiff_lite import diffusion as D
from mdiff_lite.absorbing import AbsorbingProcess
from mdiff_lite.evaluate import estimate_bound, evaluate_bound, exact_nll
from mdiff_lite.models import CausalTransformer, TextDenoiser, TransformerConfig, count_parameters, process_of
from mdiff_lite.sampling import inpaint, sample
from mdiff_lite.train import TrainConfig, fit, load_text_model, save_checkpoint

K, L = 5, 12
SIZE = dict(width=16, depth=2, heads=2)


def denoiser(noise="absorbing", T=10):
    return TextDenoiser(TransformerConfig(K, L, noise=noise, schedule={"name": "jsd", "T": T}, **SIZE))


def causal():
    return CausalTransformer(TransformerConfig(K, L, noise=None, schedule=None, **SIZE))


def _randomise_head(model):
    torch.manual_seed(0)
    torch.nn.init.normal_(model.trunk.head.weight)  # the head starts at zero: make outputs differ


def test_shapes_vocabularies_and_a_uniform_start():
    for noise, vocab in (("uniform", K), ("absorbing", K + 1)):
        m = denoiser(noise)
        assert m.vocab == vocab and m.trunk.tokens.num_embeddings == vocab
        x_t = torch.randint(0, vocab, (3, L))
        logits = m(x_t, torch.tensor([1, 5, 10]))
        assert logits.shape == (3, L, K) and logits.dtype == torch.float32
        assert torch.equal(logits, torch.zeros_like(logits))  # zero head: x0_hat uniform at first
    assert causal()(torch.randint(0, K, (2, L))).shape == (2, L, K)


def test_same_trunk_same_size():
    sizes = {count_parameters(denoiser("uniform").trunk), count_parameters(denoiser("absorbing").trunk),
             count_parameters(causal().trunk)}
    assert max(sizes) - min(sizes) == SIZE["width"]  # one token row apart (the mask, the start token)


def test_the_denoiser_sees_both_sides_and_the_causal_model_only_the_past():
    m, c = denoiser(), causal()
    _randomise_head(m), _randomise_head(c)
    m.eval(), c.eval()
    x = torch.randint(0, K, (1, L))
    y = x.clone()
    y[0, 6] = (x[0, 6] + 1) % K
    t = torch.tensor([3])
    assert not torch.allclose(m(x, t)[0, :6], m(y, t)[0, :6])  # earlier positions see a later change
    # Position i of the causal model predicts x_i from x_<i: a change at 6 moves positions 7.. only.
    assert torch.allclose(c(x)[0, :7], c(y)[0, :7], atol=1e-6)
    assert not torch.allclose(c(x)[0, 7:], c(y)[0, 7:])


def test_exact_nll_equals_prefixes_scored_one_by_one():
    c = causal()
    _randomise_head(c)
    c.eval()
    x = torch.randint(0, K, (3, L), generator=torch.Generator().manual_seed(2))
    expected = torch.zeros(3, dtype=torch.float64)
    with torch.no_grad():
        for i in range(L):
            # Only the prefix x_<i goes in (one token more than needed, which position i cannot see).
            logits = c(x[:, :i + 1])[:, i]
            expected += -torch.log_softmax(logits.double(), -1).gather(1, x[:, i:i + 1]).squeeze(1)
        got = c.nll(x).double()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    result = exact_nll(c, x, progress=False)
    assert result["bpd"] == pytest.approx((expected / L / math.log(2)).mean().item(), rel=1e-5)
    assert result["bound"].startswith("exact")


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="noise must be one of"):
        TransformerConfig(K, L, noise="gaussian").validate()
    with pytest.raises(ValueError, match="both noise and schedule"):
        TransformerConfig(K, L, noise="uniform", schedule=None).validate()
    with pytest.raises(ValueError, match="multiple of heads"):
        TransformerConfig(K, L, width=10, heads=4).validate()
    with pytest.raises(ValueError, match="needs a noise process"):
        TextDenoiser(TransformerConfig(K, L, noise=None, schedule=None))
    with pytest.raises(ValueError, match="no noise process"):
        CausalTransformer(TransformerConfig(K, L))
    with pytest.raises(ValueError, match="at most 12"):
        causal()(torch.zeros(1, 13, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown transformer config keys"):
        TransformerConfig.from_dict({"num_classes": K, "length": L, "colour": 1})


def _pattern(n, seed=0):
    """Sequences of one repeated token, drawn uniformly: log2 K bits per sequence, all in its first
    token (an autoregressive model's floor), and any one token tells a denoiser the rest."""
    return torch.randint(0, K, (n, 1), generator=torch.Generator().manual_seed(seed)).repeat(1, L)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["absorbing", "uniform", "autoregressive"])
def test_fit_learns_a_pattern_and_the_checkpoint_round_trips(tmp_path, kind):
    data = _pattern(256)
    model = causal() if kind == "autoregressive" else denoiser(kind, T=20)
    history = fit(model, data, TrainConfig(steps=150, batch_size=32, lr=3e-3, warmup_steps=10, checkpoint_every=0),
                  device="cpu", progress=False, checkpoint_path=tmp_path / "m.pt")
    test = _pattern(64, seed=1)
    if kind == "autoregressive":
        result = exact_nll(model, test, progress=False)
    else:
        result = estimate_bound(model, process_of(model), test, k=4, progress=False)
    floor = math.log2(K) / L  # the entropy per token; no model can go below it (the bound in expectation)
    assert history["loss_bpd"][-1] < history["loss_bpd"][0]
    assert result["bpd"] < 0.3 * math.log2(K), f"{kind}: {result['bpd']:.3f} bits per token after 150 steps"
    assert result["bpd"] > floor - 4 * result["stderr"] - 1e-9
    loaded, meta = load_text_model(tmp_path / "m.pt")
    assert meta["kind"] == ("autoregressive" if kind == "autoregressive" else "text-denoiser")
    for a, b in zip(loaded.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    save_checkpoint(tmp_path / "half.pt", model, {"corpus": "pattern"}, weights_dtype=torch.float16)
    half, _ = load_text_model(tmp_path / "half.pt")
    assert all(v.dtype == torch.float32 for v in half.state_dict().values() if v.is_floating_point())
    assert (tmp_path / "half.pt").stat().st_size < (tmp_path / "m.pt").stat().st_size


def test_a_text_checkpoint_is_not_a_u_net(tmp_path):
    from mdiff_lite.train import load_denoiser

    save_checkpoint(tmp_path / "t.pt", denoiser(), {})
    with pytest.raises(ValueError, match="holds a text denoiser"):
        load_denoiser(tmp_path / "t.pt")


def test_absorbing_sampler_unmasks_everything_and_inpainting_keeps_the_known_span():
    m = denoiser("absorbing", T=10)
    proc = process_of(m)
    g = torch.Generator().manual_seed(0)
    x, trajectory, grid = sample(m, proc, 4, steps=5, generator=g, return_trajectory=True, progress=False)
    assert x.shape == (4, L) and x.max() < K
    assert grid == [10, 8, 6, 4, 2, 0]
    assert (trajectory[0] == K).all()  # x_T: all mask ("jsd": alpha_bar_T = 0)
    masked = (trajectory == K).sum((1, 2))
    assert (masked[1:] <= masked[:-1]).all()  # a token once unmasked stays
    known = _pattern(2)
    keep = torch.arange(L) < 6
    y = inpaint(m, proc, known, keep, steps=4, generator=g, progress=False)
    assert torch.equal(y[:, :6], known[:, :6]) and y.max() < K


def test_all_t_and_monte_carlo_bounds_agree_for_a_text_model():
    m = denoiser("absorbing", T=10)
    _randomise_head(m)
    data = _pattern(64)
    proc = process_of(m)
    all_t = evaluate_bound(m, proc, data, progress=False)
    mc = estimate_bound(m, proc, data, k=16, progress=False)
    assert all_t["bpd"] == pytest.approx(mc["bpd"], abs=4 * math.hypot(all_t["stderr"], mc["stderr"]))
    # The absorbing terms vanish where nothing can be masked any more: none at t = 0 (no column),
    # and with "jsd" the prior costs nothing.
    assert all_t["per_t_bpd"][-1] == 0.0
    with pytest.raises(ValueError, match="absorbing noise"):
        estimate_bound(m, D.UniformProcess(proc.schedule), data, k=1, progress=False)
    assert isinstance(proc, AbsorbingProcess)
