"""Schedules against closed forms and plain-Python products, never against themselves."""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from mdiff_lite.schedules import SCHEDULE_NAMES, Schedule, make_schedule

BUFFERS = ["betas", "alphas", "alpha_bars", "log_alphas", "log_alpha_bars", "log_betas",
           "one_minus_alpha_bars", "log_one_minus_alpha_bars"]


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
@pytest.mark.parametrize("T", [1, 2, 7, 1000, 4000])
def test_buffers_are_float64_indexed_by_t(name, T):
    s = make_schedule(name, T)
    assert isinstance(s, Schedule) and s.T == T
    for buf in BUFFERS:
        value = getattr(s, buf)
        assert value.dtype == torch.float64 and value.shape == (T + 1,), buf
    assert s.betas[0] == 0 and s.alphas[0] == 1 and s.alpha_bars[0] == 1
    assert ((s.betas[1:] > 0) & (s.betas[1:] <= 1)).all()
    # alpha_bar_t is the product of alpha_1 .. alpha_t, computed here in plain Python.
    betas = s.betas.tolist()
    product = 1.0
    for t in range(1, T + 1):
        product *= 1.0 - betas[t]
        assert s.alpha_bars[t].item() == pytest.approx(product, rel=1e-9, abs=1e-300)
    assert torch.equal(s.alphas, 1 - s.betas)


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_log_buffers_match_logs(name):
    s = make_schedule(name, 300)
    for t in range(1, 301):
        a, ab = s.alphas[t].item(), s.alpha_bars[t].item()
        assert s.log_betas[t].item() == pytest.approx(math.log(s.betas[t].item()), rel=1e-12)
        if a > 0:
            assert s.log_alphas[t].item() == pytest.approx(math.log(a), rel=1e-9, abs=1e-15)
        if ab > 1e-300:
            assert s.log_alpha_bars[t].item() == pytest.approx(math.log(ab), rel=1e-9)
        assert s.one_minus_alpha_bars[t].item() == pytest.approx(1 - ab, rel=1e-9, abs=1e-15)
    assert s.log_one_minus_alpha_bars[0] == -math.inf


def test_jsd_closed_form():
    # beta_t = 1 / (T - t + 1) telescopes: alpha_bar_t = prod (T - tau) / (T - tau + 1) = 1 - t / T.
    T = 4000
    s = make_schedule("jsd", T)
    t = torch.arange(T + 1, dtype=torch.float64)
    torch.testing.assert_close(s.alpha_bars, 1 - t / T, rtol=0, atol=1e-12)
    # log(1 - alpha_bar_t) = log(t / T) to full relative precision, even at t = 1.
    torch.testing.assert_close(s.log_one_minus_alpha_bars[1:], torch.log(t[1:] / T), rtol=1e-12, atol=0)
    assert s.alpha_bars[T] == 0 and s.log_alpha_bars[T] == -math.inf


def test_constant_closed_form():
    s = make_schedule("constant", 50, beta=0.1)
    for t in range(51):
        assert s.alpha_bars[t].item() == pytest.approx(0.9 ** t, rel=1e-12)
    default = make_schedule("constant", 1000)
    assert default.alpha_bars[-1].item() == pytest.approx(1e-3, rel=1e-9)


def test_linear_is_linear_and_defaults_scale_with_T():
    s = make_schedule("linear", 11, beta_start=0.01, beta_end=0.11)
    torch.testing.assert_close(s.betas[1:], torch.linspace(0.01, 0.11, 11, dtype=torch.float64))
    ddpm = make_schedule("linear", 1000)  # DDPM's 1e-4 .. 0.02 at T = 1000
    assert ddpm.betas[1].item() == pytest.approx(1e-4) and ddpm.betas[-1].item() == pytest.approx(0.02)
    for T in (1, 2, 10, 50, 4000):  # the defaults stay valid for any T
        assert make_schedule("linear", T).T == T


def _nichol_dhariwal(t, T, s=0.008):
    f = lambda u: math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    return f(t) / f(0)


def test_cosine_follows_nichol_dhariwal():
    T = 1000
    s = make_schedule("cosine", T)
    for t in range(0, T):  # the last beta is clipped at 0.999
        assert s.alpha_bars[t].item() == pytest.approx(_nichol_dhariwal(t, T), rel=1e-9, abs=1e-15)
    assert s.betas[T].item() == pytest.approx(0.999)


def test_hoogeboom_cosine_is_the_square_root_with_clipped_alphas():
    T = 1000
    s = make_schedule("hoogeboom-cosine", T)
    clipped = 0
    for t in range(1, T + 1):
        ratio = _nichol_dhariwal(t, T) / _nichol_dhariwal(t - 1, T)
        expected = max(math.sqrt(ratio), math.sqrt(0.001))
        clipped += math.sqrt(ratio) < math.sqrt(0.001)
        assert s.alphas[t].item() == pytest.approx(expected, rel=1e-9)
    assert clipped >= 1  # the final step is clipped, as in the official code
    # Before any clipping, alpha_bar is exactly the square root of Nichol & Dhariwal's.
    assert s.alpha_bars[500].item() == pytest.approx(math.sqrt(_nichol_dhariwal(500, T)), rel=1e-9)


def test_to_dict_rebuilds_the_schedule():
    for name in SCHEDULE_NAMES:
        s = make_schedule(name, 37)
        again = make_schedule(**s.to_dict())
        assert torch.equal(s.betas, again.betas) and again.to_dict() == s.to_dict()
    assert "hoogeboom-cosine" in repr(make_schedule("hoogeboom-cosine", 10))


def test_buffer_cache_returns_cast_copies():
    s = make_schedule("cosine", 10)
    b = s.buffer("log_alphas", "cpu", torch.float32)
    assert b.dtype == torch.float32 and b is s.buffer("log_alphas", "cpu", torch.float32)
    assert s.log_alphas.dtype == torch.float64


@pytest.mark.parametrize("args, kwargs, fragment", [
    (("cosinus", 10), {}, "'cosinus'"),
    (("cosine", 0), {}, "got 0"),
    (("cosine", -3), {}, "got -3"),
    (("cosine", 2.5), {}, "2.5"),
    (("cosine", "10"), {}, "'10'"),
    (("cosine", True), {}, "True"),
    (("linear", 10), {"beta_start": 0.0}, "beta_1 = 0.0"),
    (("linear", 10), {"beta_end": 1.5}, "1.5"),
    (("linear", 10), {"beta_start": -0.1}, "-0.1"),
    (("constant", 10), {"beta": 1.01}, "1.01"),
    (("constant", 10), {"beta": float("nan")}, "nan"),
    (("cosine", 10), {"max_beta": 0.0}, "0.0"),
    (("hoogeboom-cosine", 10), {"min_alpha": 1.5}, "-0.5"),
    (("jsd", 10), {"beta": 0.1}, "beta"),
    (("cosine", 10), {"s": "small"}, "'small'"),
])
def test_bad_arguments_raise_value_error_naming_the_value(args, kwargs, fragment):
    with pytest.raises(ValueError) as info:
        make_schedule(*args, **kwargs)
    assert fragment in str(info.value)


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(SCHEDULE_NAMES), T=st.integers(1, 5000))
def test_alpha_bars_decrease_from_one(name, T):
    s = make_schedule(name, T)
    ab = s.alpha_bars
    assert ab[0] == 1 and (ab >= 0).all() and (ab[1:] <= ab[:-1]).all()
    assert torch.isfinite(s.log_betas[1:]).all()
