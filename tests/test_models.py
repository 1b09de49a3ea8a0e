"""The denoiser: shapes, the protocol of mdiff_lite.diffusion, and its Bayes starting point."""

import math

import pytest
import torch

from mdiff_lite import log_categorical, make_schedule, one_hot, q_marginal, q_posterior, q_sample, vlb_terms
from mdiff_lite.diffusion import log_q_posterior
from mdiff_lite.evaluate import evaluate_bound
from mdiff_lite.models import Denoiser, DenoiserConfig, OracleDenoiser, count_parameters, folded_one_hot

SMALL = dict(channels=(16, 32), embed_dim=16, schedule={"name": "hoogeboom-cosine", "T": 50})


def test_default_denoiser_is_small_and_class_last():
    model = Denoiser(DenoiserConfig(num_classes=8, height=32, width=32))
    assert count_parameters(model) <= 2_300_000
    x = torch.randint(0, 8, (3, 32, 32))
    out = model(x, torch.tensor([1, 500, 1000]))
    assert out.shape == (3, 32, 32, 8) and out.dtype == torch.float32


@pytest.mark.parametrize("height, width, fold, K", [(8, 8, 1, 17), (16, 8, 2, 3), (32, 32, 2, 8)])
def test_sizes_and_folds(height, width, fold, K):
    model = Denoiser(DenoiserConfig(num_classes=K, height=height, width=width, fold=fold, **SMALL))
    out = model(torch.randint(0, K, (2, height, width)), torch.tensor([1, 50]))
    assert out.shape == (2, height, width, K)


def _likelihood_of_x0(x_t, t, s, K):
    """q(x_t | x_0 = k) for every class k, [B, H, W, K], from eq. 12 in probability space (float64)."""
    return torch.stack([q_marginal(one_hot(torch.full_like(x_t, k), K, torch.float64), t.view(-1, 1, 1), s)
                        .gather(-1, x_t.unsqueeze(-1)).squeeze(-1) for k in range(K)], -1)


@pytest.mark.parametrize("where", ["all", "decoder"])
def test_untrained_denoiser_predicts_uniformly_and_its_decoder_is_bayes_rule(where):
    # The last layer starts at zero, so x0_hat is uniform, except that "all" adds
    # log q(x_t | x_0 = k) at t >= 2 (x0_hat ∝ eq. 12 there). Either way the decoder,
    # eq. 14 at t = 1, is Bayes' rule under a uniform prior: q(x_0 = k | x_1) ∝ q(x_1 | x_0 = k).
    K, T = 5, 50
    model = Denoiser(DenoiserConfig(num_classes=K, height=8, width=8, fold=1, bayes_logits=where, **SMALL))
    s = make_schedule("hoogeboom-cosine", T)
    x_t = torch.randint(0, K, (4, 8, 8))
    t = torch.tensor([1, 10, 30, 50])
    logits = model(x_t, t).double()
    likelihood = _likelihood_of_x0(x_t, t, s, K)
    bayes = likelihood / likelihood.sum(-1, keepdim=True)
    expected = torch.full_like(bayes, 1 / K)
    if where == "all":
        expected[1:] = bayes[1:]
    torch.testing.assert_close(torch.softmax(logits, -1), expected, rtol=1e-5, atol=1e-6)
    decoder = log_q_posterior(x_t[:1], torch.log_softmax(logits[:1], -1), 1, s).exp()
    torch.testing.assert_close(decoder, bayes[:1], rtol=1e-5, atol=1e-6)


def test_decoder_term_is_bayes_rule_applied_to_the_networks_prediction():
    # A trained-looking head: vlb_terms' column 0 must be -log of x0_hat(k) q(x_1 | x_0 = k),
    # normalised over k, at the drawn x_1, which is also the first design's eq. 16 with the Bayes
    # term inside the network (so its checkpoints score the same bound). Same draws of x_1 here.
    K = 6
    torch.manual_seed(0)
    model = Denoiser(DenoiserConfig(num_classes=K, height=8, width=8, fold=2, **SMALL))
    torch.nn.init.normal_(model.head[-1].weight, std=0.3)
    s = make_schedule(**model.config.schedule)
    x0 = torch.randint(0, K, (3, 8, 8))
    with torch.no_grad():
        terms = vlb_terms(model, x0, s, generator=torch.Generator().manual_seed(5))
        x_1 = q_sample(x0, 1, s, K, torch.Generator().manual_seed(5))  # the first draw vlb_terms makes
        one = torch.ones(3, dtype=torch.long)
        posterior = torch.softmax(model(x_1, one).double(), -1) * _likelihood_of_x0(x_1, one, s, K)
    posterior /= posterior.sum(-1, keepdim=True)
    expected = -posterior.log().gather(-1, x0.unsqueeze(-1)).sum((1, 2, 3))
    torch.testing.assert_close(terms[:, 0].double(), expected, rtol=1e-4, atol=1e-4)


def test_the_first_designs_bayes_term_lands_on_the_rows_at_t_2_and_later_only():
    # Same weights: "all" differs from "decoder" by log q(x_t | x_0 = k) on the rows where
    # t >= 2, wherever they sit in the batch, and not at t = 1 (the decoder adds it there).
    K = 6
    torch.manual_seed(0)
    decoder = Denoiser(DenoiserConfig(num_classes=K, height=8, width=8, fold=2, **SMALL))
    torch.nn.init.normal_(decoder.head[-1].weight, std=0.1)
    everywhere = Denoiser(DenoiserConfig(num_classes=K, height=8, width=8, fold=2, bayes_logits="all", **SMALL))
    everywhere.load_state_dict(decoder.state_dict())
    x_t = torch.randint(0, K, (4, 8, 8))
    for t in (torch.tensor([7, 1, 50, 1]), torch.tensor([2, 3, 4, 5])):
        diff = (everywhere(x_t, t) - decoder(x_t, t)).detach()
        later = t >= 2
        torch.testing.assert_close(diff[later], _likelihood_of_x0(x_t, t, make_schedule("hoogeboom-cosine", 50), K)
                                   [later].log().float())
        assert torch.equal(diff[~later], torch.zeros_like(diff[~later]))


def test_the_decoder_is_cheap_from_the_start():
    # At t = 1 the observed x_1 is almost surely x_0: the untrained net already pays little for
    # the decoder term, whereas eq. 16 read with x0_hat alone would cost log K per pixel.
    K = 8
    x0 = torch.randint(0, K, (4, 8, 8))
    s = make_schedule("hoogeboom-cosine", 50)
    model = Denoiser(DenoiserConfig(num_classes=K, height=8, width=8, fold=1, **SMALL))
    with torch.no_grad():
        cheap = vlb_terms(model, x0, s)[:, 0].mean() / 64
        x0_hat = torch.softmax(model(q_sample(x0, 1, s, K), torch.ones(4, dtype=torch.long)), -1)
        costly = -log_categorical(one_hot(x0, K), x0_hat).mean()
    assert cheap < 0.01 and costly == pytest.approx(math.log(K), rel=1e-4)


@pytest.mark.parametrize("fold", [1, 2, 4])
def test_folded_one_hot_is_the_one_hot_map_unshuffled(fold):
    K = 5
    x = torch.randint(0, K, (3, 8, 16))
    expected = torch.nn.functional.pixel_unshuffle(torch.nn.functional.one_hot(x, K).permute(0, 3, 1, 2).float(), fold)
    assert torch.equal(folded_one_hot(x, K, fold), expected)


def test_config_round_trip_and_validation():
    cfg = DenoiserConfig(num_classes=8, height=32, width=32)
    assert DenoiserConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="multiples"):
        DenoiserConfig(num_classes=8, height=30, width=32).validate()
    with pytest.raises(ValueError, match="num_classes"):
        DenoiserConfig(num_classes=1, height=32, width=32).validate()
    with pytest.raises(ValueError, match="unknown"):
        DenoiserConfig.from_dict({**cfg.to_dict(), "depth": 3})
    with pytest.raises(ValueError, match="bayes_logits"):
        DenoiserConfig(num_classes=8, height=32, width=32, bayes_logits="sometimes").validate()
    # The first checkpoints stored a bool; False (no term, x0_hat alone as decoder) is not built.
    assert DenoiserConfig.from_dict({**cfg.to_dict(), "bayes_logits": True}).bayes_logits == "all"
    for gone in (False, "none"):
        with pytest.raises(ValueError, match="not built any more"):
            DenoiserConfig.from_dict({**cfg.to_dict(), "bayes_logits": gone}).validate()
    with pytest.raises(ValueError, match="groups"):
        DenoiserConfig(num_classes=8, height=32, width=32, channels=(20, 40, 40)).validate()


def test_oracle_reverse_step_is_the_exact_marginal_of_the_reverse_process(support, enumerated_posterior):
    # On the 8 x 8 toy maps, whose 130 340 maps can be enumerated: for x_t drawn from a real map,
    # eq. 14 with the oracle's x0_hat must give each pixel's q(x_{t-1} | x_t) =
    # sum over maps of p(map | x_t) q(x_{t-1} | x_t, map) (eq. 13); at t = 1 (the decoder) that is
    # p(x_0 | x_1) itself.
    ds, K, T = support[0], 8, 20
    s = make_schedule("hoogeboom-cosine", T)
    oracle = OracleDenoiser(ds, s)
    g = torch.Generator().manual_seed(5)
    x0 = ds.sample(4, g)
    t = torch.tensor([1, 2, 9, 20])
    keep = s.alpha_bars[t].view(4, 1, 1)
    x_t = torch.where(torch.rand(4, 8, 8, generator=g, dtype=torch.float64) < keep, x0, torch.randint(K, (4, 8, 8), generator=g))
    x0_hat = torch.softmax(oracle(x_t, t), -1)
    assert x0_hat.dtype == torch.float64
    # q(x_t | x_0 = k) at each pixel (eq. 12), from plain floats; then p(x_0 | x_t) by enumeration.
    a = keep.view(4, 1, 1, 1).double()
    likelihood = a * one_hot(x_t, K, torch.float64) + (1 - a) / K
    _, marginals = enumerated_posterior(likelihood.log())
    for b in range(4):
        marginal = marginals[b].reshape(64, K)
        x_t_onehot = one_hot(x_t[b].reshape(-1), K, torch.float64)
        per_class = torch.stack([q_posterior(x_t_onehot, one_hot(torch.full((64,), k), K, torch.float64), t[b], s)
                                 for k in range(K)], 1)                               # [pixels, k, K]
        expected = (marginal[:, :, None] * per_class).sum(1)
        got = q_posterior(x_t_onehot, x0_hat[b].reshape(-1, K), t[b], s)
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="schedule"):
        evaluate_bound(oracle, make_schedule("hoogeboom-cosine", 10), x0, progress=False)


def test_oracle_needs_an_exact_posterior():
    from mdiff_lite.data import Digits
    with pytest.raises(TypeError, match="posterior"):
        OracleDenoiser(Digits(), make_schedule("hoogeboom-cosine", 10))
