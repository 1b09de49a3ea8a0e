"""Datasets against enumeration of the whole support, a goodness-of-fit test and hand-made maps."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from mdiff_lite.data import (BUILDING, CAR, ROAD, SIDEWALK, SKY, WINDOW, Digits, PermutedLabels, ToySegmentation,
                             bin_levels)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def toy():
    return ToySegmentation(32, 32)


@pytest.fixture(scope="module")
def support_index(support):
    """Map (as bytes) -> its row in the enumeration: membership in the support, computed apart
    from log_prob and decode."""
    _, _, maps, _ = support
    return {m.tobytes(): i for i, m in enumerate(maps.to(torch.uint8).numpy())}


# -- the toy dataset: the whole support of 8 x 8 --------------------------------------------------


def test_small_support_is_enumerable_and_injective(support, support_index):
    ds, choices, maps, _ = support
    assert len(choices) == math.prod(len(v.values) for v in ds.variables) < 2e5
    assert len(support_index) == len(maps)   # distinct choices draw distinct maps


def test_enumerated_probabilities_sum_to_one_and_give_the_entropy(support):
    ds, choices, maps, log_p = support
    assert log_p.dtype == torch.float64 and torch.isfinite(log_p).all()
    p = log_p.exp()
    assert math.fsum(p.tolist()) == pytest.approx(1.0, abs=1e-9)
    entropy_bits = -math.fsum((p * log_p).tolist()) / math.log(2)
    assert entropy_bits / 64 == pytest.approx(ds.entropy_bits_per_pixel, abs=1e-9)
    # Each map's probability is the product of its choices' probabilities.
    product = torch.ones(len(choices), dtype=torch.float64)
    for i, v in enumerate(ds.variables):
        product *= v.probs[choices[:, i]]
    torch.testing.assert_close(p, product, rtol=1e-12, atol=0)


def _support_rows(samples: torch.Tensor, support_index: dict) -> torch.Tensor:
    return torch.tensor([support_index[m.tobytes()] for m in samples.to(torch.uint8).numpy()])


def _cells_pvalue(rows: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's test that samples (as rows of the enumeration) follow ``probs``: maps expected at
    least 5 times are cells of their own, the rest are pooled in order of probability into cells
    expected at least 5 times."""
    observed = torch.bincount(rows, minlength=len(probs)).double()
    expected = probs * len(rows)
    order = torch.argsort(expected, descending=True)
    big, small = order[expected[order] >= 5], order[expected[order] < 5]
    cell = (torch.cumsum(expected[small], 0) // 5).long()
    small_observed = torch.zeros(int(cell.max()) + 1, dtype=torch.float64).index_add_(0, cell, observed[small])
    small_expected = torch.zeros_like(small_observed).index_add_(0, cell, expected[small])
    f_obs = torch.cat([observed[big], small_observed]).numpy()
    f_exp = torch.cat([expected[big], small_expected]).numpy()
    return stats.chisquare(f_obs, f_exp * f_obs.sum() / f_exp.sum()).pvalue


def _marginal_pvalues(rows: torch.Tensor, probs: torch.Tensor, choices: torch.Tensor) -> list[float]:
    """One test per variable, on how often each of its values occurs: the expected frequencies sum
    exp(log_prob) over the enumerated maps drawn with that value. Far more power against a wrong
    probability of one value than the test over ~10^4 cells."""
    pvalues = []
    for column in choices.T:
        observed = torch.bincount(column[rows], minlength=int(column.max()) + 1).double()
        expected = torch.zeros_like(observed).index_add_(0, column, probs) * len(rows)
        if len(observed) > 1:
            pvalues.append(stats.chisquare(observed.numpy(), expected.numpy() * observed.sum().item()
                                           / expected.sum().item()).pvalue)
    return pvalues


def test_samples_follow_exp_log_prob(support, support_index):
    ds, choices, _, log_p = support
    rows = _support_rows(ds.sample(300_000, seeded(0)), support_index)   # KeyError: a sample off the support
    assert _cells_pvalue(rows, log_p.exp()) > 1e-3
    assert min(_marginal_pvalues(rows, log_p.exp(), choices)) > 1e-3 / len(ds.variables)


def test_goodness_of_fit_rejects_wrong_samplers(support, support_index):
    # The tests above have power. Uniform choices fail both; a sampler whose only fault is that
    # one value of one variable is 10 % too likely (probabilities renormalised) fails the marginals.
    ds, choices, _, log_p = support
    g = seeded(1)
    uniform = torch.stack([torch.randint(len(v.values), (300_000,), generator=g) for v in ds.variables], 1)
    rows = _support_rows(ds.render(uniform), support_index)
    assert _cells_pvalue(rows, log_p.exp()) < 1e-12
    assert min(_marginal_pvalues(rows, log_p.exp(), choices)) < 1e-12
    wrong = [v.probs.clone() for v in ds.variables]
    wrong[-1][0] *= 1.1
    u = torch.rand(300_000, len(wrong), generator=g, dtype=torch.float64)
    slightly_off = torch.stack([torch.searchsorted(torch.cumsum(p / p.sum(), 0), u[:, i].contiguous(), right=True)
                                .clamp(max=len(p) - 1) for i, p in enumerate(wrong)], 1)
    rows = _support_rows(ds.render(slightly_off), support_index)
    assert min(_marginal_pvalues(rows, log_p.exp(), choices)) < 1e-12


def test_log_prob_is_minus_inf_exactly_off_the_support(support, support_index):
    # One pixel of a sample set to another class: log_prob is finite iff the result is one of the
    # enumerated maps, and then it is that map's log-probability.
    ds, _, _, log_p = support
    g = seeded(2)
    maps = ds.sample(3000, g)
    n = torch.arange(len(maps))
    rows, cols = torch.randint(8, (2, len(maps)), generator=g)
    maps[n, rows, cols] = (maps[n, rows, cols] + torch.randint(1, 8, (len(maps),), generator=g)) % 8
    found = [support_index.get(m.tobytes()) for m in maps.to(torch.uint8).numpy()]
    got = ds.log_prob(maps)
    assert torch.equal(torch.isfinite(got), torch.tensor([i is not None for i in found]))
    assert 0 < sum(i is not None for i in found) < len(found)   # both cases occur
    for k, i in enumerate(found):
        if i is not None:
            assert got[k] == log_p[i]


def test_small_random_maps_are_off_the_support(support):
    ds = support[0]
    assert torch.isinf(ds.log_prob(torch.randint(8, (500, 8, 8), generator=seeded(3)))).all()


def test_posterior_is_bayes_over_the_enumerated_support(support, enumerated_posterior):
    ds = support[0]
    g = seeded(11)
    # Arbitrary per-pixel evidence, some of it ruling classes out, and the evidence of noisy maps.
    tables = torch.randn(4, 8, 8, 8, generator=g, dtype=torch.float64) * 3
    tables[0, 2, 3, SKY] = -math.inf   # a building must stand there
    tables[1, :, :, ROAD] = -math.inf   # no road anywhere: no map in the support explains it
    maps = ds.sample(3, g)
    noisy = torch.where(torch.rand(3, 8, 8, generator=g) < 0.4, torch.randint(8, (3, 8, 8), generator=g), maps)
    keep = torch.tensor([0.9, 0.5, 0.05], dtype=torch.float64).view(3, 1, 1, 1)
    tables = torch.cat([tables, torch.log(keep * torch.nn.functional.one_hot(noisy, 8) + (1 - keep) / 8)])
    log_evidence, marginals = ds.posterior(tables)
    expected_evidence, expected_marginals = enumerated_posterior(tables)
    assert log_evidence[1] == -math.inf
    ok = torch.arange(len(tables)) != 1
    torch.testing.assert_close(log_evidence[ok], expected_evidence[ok], rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(marginals[ok], expected_marginals[ok], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(marginals[ok].sum(-1), torch.ones(6, 8, 8, dtype=torch.float64))


def test_posterior_rejects_bad_input(support):
    ds = support[0]
    with pytest.raises(TypeError, match="floating-point"):
        ds.posterior(torch.zeros(1, 8, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="shape"):
        ds.posterior(torch.zeros(1, 8, 8, 5))
    with pytest.raises(ValueError, match="NaN"):
        ds.posterior(torch.full((1, 8, 8, 8), math.nan))


# -- the toy dataset at 32 x 32 and other sizes ------------------------------------------------------------


def test_entropy_at_32_is_in_the_target_range(toy):
    assert 0.1 <= toy.entropy_bits_per_pixel <= 0.5
    assert toy.entropy_bits_per_pixel == pytest.approx(sum(v.entropy_bits for v in toy.variables) / 1024, abs=1e-12)
    for v in toy.variables:
        assert v.probs.dtype == torch.float64 and len(v.probs) == len(v.values) and (v.probs > 0).all()
        assert v.probs.sum().item() == pytest.approx(1.0, abs=1e-12)


def test_posterior_at_32_from_exact_and_from_no_evidence(toy):
    K = toy.num_classes
    maps = toy.split("test", 200)   # more than one piece of 128
    broken = maps[:2].clone()
    broken[:, 0, 0] = WINDOW   # a window in the sky: off the support
    exact = torch.log(torch.nn.functional.one_hot(torch.cat([maps, broken]), K).double())
    log_evidence, marginals = toy.posterior(exact)
    # Seeing the map exactly: the evidence is its probability and the posterior is the map.
    torch.testing.assert_close(log_evidence[:200], toy.log_prob(maps), rtol=0, atol=1e-9)
    assert torch.isinf(log_evidence[200:]).all() and (log_evidence[200:] < 0).all()
    torch.testing.assert_close(marginals[:200], exact[:200].exp())
    # Seeing nothing: the marginals are the generator's class frequencies at each pixel, here
    # against 20 000 samples (binomial errors at most 0.0036; 0.02 is over five of them).
    log_evidence, marginals = toy.posterior(torch.zeros(1, 32, 32, K, dtype=torch.float64))
    frequencies = torch.nn.functional.one_hot(toy.split("train"), K).double().mean(0)
    assert log_evidence.abs().item() < 1e-9
    assert (marginals[0] - frequencies).abs().max() < 0.02


def test_every_value_of_every_variable_is_read_back(toy):
    # decode(render(c)) == c with each value of each variable drawn at least once, the other
    # variables at random: rendering is injective on these maps (an occluded choice would fail).
    sizes = [len(v.values) for v in toy.variables]
    n, g = max(sizes), seeded(4)
    choices = torch.stack([torch.arange(n)[torch.randperm(n, generator=g)] % s for s in sizes], 1)
    assert torch.equal(toy.decode(toy.render(choices)), choices)
    random = toy.sample_choices(5000, seeded(5))
    assert torch.equal(toy.decode(toy.render(random)), random)


@pytest.mark.parametrize("height,width", [(8, 13), (12, 20), (16, 16), (24, 40), (32, 64), (48, 32)])
def test_decode_inverts_render_at_other_sizes(height, width):
    ds = ToySegmentation(height, width)
    choices = ds.sample_choices(1000, seeded(height * 100 + width))
    maps = ds.render(choices)
    assert maps.shape == (1000, height, width)
    assert torch.equal(ds.decode(maps), choices)
    assert torch.isfinite(ds.log_prob(maps)).all()


def test_log_prob_of_a_sample_is_the_sum_over_its_choices(toy):
    choices = toy.sample_choices(200, seeded(6))
    expected = sum(torch.log(v.probs[choices[:, i]]) for i, v in enumerate(toy.variables))
    torch.testing.assert_close(toy.log_prob(toy.render(choices)), expected, rtol=1e-12, atol=0)


def test_broken_samples_have_minus_inf(toy):
    maps = toy.sample(64, seeded(7))
    assert torch.isfinite(toy.log_prob(maps)).all()
    breaks = {
        "id 8": lambda m: m.__setitem__((5, 5), 8),
        "id -1": lambda m: m.__setitem__((20, 3), -1),
        "building in the top row, always sky": lambda m: m.__setitem__((0, 7), BUILDING),
        "car in the bottom row, always road": lambda m: m.__setitem__((31, 12), CAR),
        "window in the top row": lambda m: m.__setitem__((0, 20), WINDOW),
        "a hole in the last sidewalk row": lambda m: m.__setitem__(
            (int((m == SIDEWALK).any(1).nonzero().max()), 9), ROAD),
        "upside down": lambda m: m.copy_(m.flip(0)),
    }
    for name, brk in breaks.items():
        broken = maps.clone()
        for m in broken:
            brk(m)
        assert torch.isinf(toy.log_prob(broken)).all(), name
        assert (toy.log_prob(broken) < 0).all(), name


def test_log_prob_accepts_any_integer_dtype(toy):
    maps = toy.sample(8, seeded(8))
    expected = toy.log_prob(maps)
    for dtype in (torch.uint8, torch.int16, torch.int32):
        assert torch.equal(toy.log_prob(maps.to(dtype)), expected)
    assert toy.log_prob(maps[:0]).shape == (0,)


def test_samples_are_seeded_and_typed(toy):
    a, b = toy.sample(50, seeded(9)), toy.sample(50, seeded(9))
    assert a.dtype == torch.long and a.shape == (50, 32, 32) and torch.equal(a, b)
    assert not torch.equal(a, toy.sample(50, seeded(10)))
    assert torch.equal(toy.sample(20, seeded(9)), a[:20])   # a smaller sample is a prefix
    assert a.min() >= 0 and a.max() < toy.num_classes
    assert toy.sample(0).shape == (0, 32, 32)
    torch.manual_seed(11)
    c = toy.sample(5)
    torch.manual_seed(11)
    assert torch.equal(toy.sample(5), c)   # no generator: torch's global one


def test_splits_are_deterministic_and_distinct(toy):
    train, test = toy.split("train", n=300), toy.split("test", n=300)
    assert train.shape == test.shape == (300, 32, 32) and train.dtype == torch.long
    assert torch.equal(train, toy.split("train", n=300)) and torch.equal(test, ToySegmentation().split("test", n=300))
    assert not torch.equal(train, test)
    assert not torch.equal(train, toy.split("train", n=300, seed=1))
    assert torch.equal(toy.split("test", n=300, seed=1), toy.sample(300, seeded(3)))   # documented seeds
    assert toy.split_sizes == {"train": 20_000, "test": 1_000}
    assert ToySegmentation(8, 8).split("test").shape == (1_000, 8, 8)


def test_surface(toy):
    assert toy.num_classes == 8 == len(toy.class_names) == len(toy.colors) == len(set(toy.colors))
    assert toy.class_names[SKY] == "sky" and toy.class_names[CAR] == "car"
    assert (toy.height, toy.width) == (32, 32)
    assert all(c.startswith("#") and len(c) == 7 for c in toy.colors)


@pytest.mark.parametrize("height,width", [(7, 32), (32, 7), (4, 4), (0, 32), (-8, 32), (32.0, 32), ("32", 32),
                                          (True, 32)])
def test_sizes_too_small_or_not_integers_raise(height, width):
    with pytest.raises(ValueError, match="height|width"):
        ToySegmentation(height, width)


@pytest.mark.parametrize("n", [-1, 2.0, "3", None, True])
def test_bad_counts_raise(toy, n):
    with pytest.raises(ValueError, match="n must be"):
        toy.sample(n)


def test_bad_maps_and_arguments_raise(toy):
    maps = toy.sample(2, seeded(12))
    for bad in (maps[0], maps[:, :, :31], maps[None], maps.float(), maps.bool()):
        with pytest.raises(ValueError):
            toy.log_prob(bad)
    with pytest.raises(TypeError):
        toy.log_prob(maps.numpy())
    with pytest.raises(ValueError):
        toy.split("validation")
    with pytest.raises(ValueError):
        toy.split("train", n=10, seed=-1)
    with pytest.raises(ValueError):
        toy.render(torch.zeros(3, len(toy.variables) - 1, dtype=torch.long))
    too_big = torch.zeros(1, len(toy.variables), dtype=torch.long)
    too_big[0, 2] = len(toy.variables[2].values)
    with pytest.raises(ValueError):
        toy.render(too_big)


# -- digits ----------------------------------------------------------------------------------------


def test_digits_split_and_surface():
    ds = Digits()
    train, test = ds.split("train"), ds.split("test")
    assert train.shape == (1500, 8, 8) and test.shape == (297, 8, 8) and train.dtype == torch.long
    assert train.min() == 0 and max(train.max(), test.max()) == 16
    assert ds.num_classes == 17 == len(ds.class_names) == len(set(ds.colors))
    assert ds.labels("test").shape == (297,) and set(ds.labels("train").tolist()) == set(range(10))
    assert torch.equal(ds.split("test"), Digits().split("test"))   # fixed
    from sklearn.datasets import load_digits
    images = load_digits().images
    assert np.array_equal(torch.cat([train, test]).numpy(), images)   # the grey levels themselves
    with pytest.raises(ValueError):
        ds.split("valid")


def test_bin_levels_rule():
    levels = torch.arange(17)
    assert torch.equal(bin_levels(levels, 17), levels)
    assert bin_levels(levels, 2).tolist() == [0] * 9 + [1] * 8
    for K in range(2, 18):
        classes = bin_levels(levels, K)
        assert classes[0] == 0 and classes[-1] == K - 1
        assert (classes.diff() >= 0).all()                  # order kept
        counts = torch.bincount(classes, minlength=K)
        assert counts.min() >= 17 // K and counts.max() <= -(-17 // K)   # every class used, equal widths


def test_binned_digits_and_names():
    four = Digits(4)
    assert torch.equal(four.split("train"), bin_levels(Digits().split("train"), 4))
    assert four.class_names == ("levels 0-4", "levels 5-8", "levels 9-12", "levels 13-16")
    assert four.num_classes == 4 == len(four.colors)
    assert four.colors[0] == "#ffffff" and four.colors[-1] == "#000000"


@pytest.mark.parametrize("K", [1, 18, 2.5, None])
def test_bad_binning_raises(K):
    with pytest.raises(ValueError):
        bin_levels(torch.arange(17), K)
    with pytest.raises(ValueError):
        Digits(K)


def test_bin_levels_rejects_bad_levels():
    for bad in (torch.tensor([0, 17]), torch.tensor([-1]), torch.tensor([1.0])):
        with pytest.raises(ValueError):
            bin_levels(bad, 4)


# -- permuted labels ------------------------------------------------------------------------------


def test_permutation_is_a_fixed_bijection(toy):
    permuted = PermutedLabels(toy, seed=0)
    perm, inv = permuted.permutation, permuted.inverse
    assert torch.equal(perm.sort().values, torch.arange(8)) and not torch.equal(perm, torch.arange(8))
    assert torch.equal(perm[inv], torch.arange(8)) and torch.equal(inv[perm], torch.arange(8))
    assert torch.equal(PermutedLabels(toy, seed=0).permutation, perm)
    assert not torch.equal(PermutedLabels(toy, seed=1).permutation, perm)
    for k in range(8):   # names and colours move with the ids
        assert permuted.class_names[perm[k]] == toy.class_names[k] and permuted.colors[perm[k]] == toy.colors[k]


def test_permuted_toy_keeps_its_likelihood(toy):
    permuted = PermutedLabels(toy, seed=0)
    maps = toy.sample(100, seeded(13))
    relabelled = permuted.permute(maps)
    assert torch.equal(permuted.log_prob(relabelled), toy.log_prob(maps))
    assert torch.isinf(permuted.log_prob(maps)).all()   # the labels matter
    assert permuted.entropy_bits_per_pixel == toy.entropy_bits_per_pixel
    assert torch.equal(permuted.sample(10, seeded(14)), permuted.permute(toy.sample(10, seeded(14))))
    assert torch.equal(permuted.split("test", n=10), permuted.permute(toy.split("test", n=10)))
    assert torch.equal(permuted.unpermute(relabelled), maps)
    out_of_range = relabelled[:2].clone()
    out_of_range[0, 0, 0], out_of_range[1, 3, 3] = 8, -1
    assert torch.isinf(permuted.log_prob(out_of_range)).all()
    with pytest.raises(ValueError):
        permuted.log_prob(relabelled.float())


def test_permuted_digits():
    digits = Digits(4)
    permuted = PermutedLabels(digits, seed=3)
    assert torch.equal(permuted.split("train"), permuted.permutation[digits.split("train")])
    assert sorted(permuted.class_names) == sorted(digits.class_names)
    assert (permuted.num_classes, permuted.height, permuted.width) == (4, 8, 8)


# ---- judging samples: windows no training map contains ---------------------------------------------

def test_unseen_windows_against_a_plain_set_of_windows():
    from mdiff_lite.data import unseen_windows
    g = torch.Generator().manual_seed(0)
    reference = torch.randint(0, 3, (40, 6, 7), generator=g)
    maps = torch.cat([reference[:2], torch.randint(0, 3, (5, 6, 7), generator=g)])
    size = 3
    seen = {tuple(m[y:y + size, x:x + size].flatten().tolist())
            for m in reference for y in range(6 - size + 1) for x in range(7 - size + 1)}
    expected = torch.tensor([sum(tuple(m[y:y + size, x:x + size].flatten().tolist()) not in seen
                                 for y in range(6 - size + 1) for x in range(7 - size + 1)) / 20 for m in maps])
    share = unseen_windows(reference, 3, size)
    got = share(maps)
    torch.testing.assert_close(got, expected.float())
    assert (got[:2] == 0).all() and (got[2:] > 0).any()
    where = torch.tensor([[[tuple(m[y:y + size, x:x + size].flatten().tolist()) not in seen
                            for x in range(7 - size + 1)] for y in range(6 - size + 1)] for m in maps])
    assert torch.equal(share.where(maps), where)


def test_unseen_windows_refuses_what_it_cannot_judge():
    from mdiff_lite.data import unseen_windows
    reference = torch.zeros(4, 8, 8, dtype=torch.long)
    with pytest.raises(ValueError, match="int64"):
        unseen_windows(reference, 17, 4)
    with pytest.raises(ValueError, match="do not fit"):
        unseen_windows(reference, 3, 9)
    with pytest.raises(ValueError, match="outside"):
        unseen_windows(reference + 5, 3)
    with pytest.raises(ValueError, match="shape"):
        unseen_windows(reference, 3)(torch.zeros(2, 8, 9, dtype=torch.long))
