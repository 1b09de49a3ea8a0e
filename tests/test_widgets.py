"""The widgets of notebook 04, driven from Python without a browser: coupled noise against
eq. 12, the explorers' data and pictures against independent computations."""

import base64
import io
import math

import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgb
from PIL import Image

pytest.importorskip("ipywidgets")

from IPython.core.formatters import DisplayFormatter  # noqa: E402

from mdiff_lite import make_schedule, q_marginal  # noqa: E402
from mdiff_lite.data import ToySegmentation  # noqa: E402
from mdiff_lite.schedules import SCHEDULE_NAMES  # noqa: E402
from mdiff_lite.widgets import (  # noqa: E402
    coupled_noise, draw_coupling, marginal_entropy_bits, noise_explorer, posterior_explorer,
)


@pytest.fixture(scope="module")
def toy_map():
    return ToySegmentation(32, 32).split("test", n=1)[0]


@pytest.fixture(scope="module")
def explorer(toy_map):
    return noise_explorer("toyseg", x0=toy_map, T=1000, t=100)


def shown_png(widget) -> bytes:
    """The PNG the Output widget holds: what a browser displays."""
    (output,) = widget.output.outputs
    return base64.b64decode(output["data"]["image/png"])


def displayed(widget) -> dict:
    """The bundle IPython sends when a cell ends with ``widget``: what a notebook file keeps."""
    data, _ = DisplayFormatter().format(widget)
    return data


def static_view(widget) -> np.ndarray:
    """The displayed bundle's PNG, decoded: what GitHub or nbviewer shows for the cell."""
    with Image.open(io.BytesIO(base64.b64decode(displayed(widget)["image/png"]))) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def pixels(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"))


def map_in_picture(explorer, rgb: np.ndarray) -> np.ndarray:
    """The classes the noise explorer's x_t panel shows in the picture ``rgb``: the colour at each
    map cell's centre (found through the axes' transform), matched to the nearest class colour."""
    H, W = explorer.x_t.shape
    rows, cols = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    x, y = explorer.image.axes.transData.transform(np.c_[cols.ravel(), rows.ravel()]).T
    seen = rgb[np.floor(rgb.shape[0] - y).astype(int), np.floor(x).astype(int)].astype(float)
    colours = np.array([to_rgb(c) for c in explorer.dataset.colors]) * 255
    return ((seen[:, None, :] - colours[None]) ** 2).sum(-1).argmin(1).reshape(H, W)


# -- coupled noise ----------------------------------------------------------------------------


@pytest.mark.parametrize("name, t", [("hoogeboom-cosine", 1), ("hoogeboom-cosine", 300), ("linear", 500),
                                     ("jsd", 900), ("constant", 1000)])
def test_coupled_noise_marginal_is_eq_12(name, t):
    """Over fresh (u, n), the class frequencies of one pixel match eq. 12 within 5 standard errors."""
    K, N, schedule = 8, 200_000, make_schedule(name, 1000)
    x0 = torch.full((N,), 3)
    u, n = draw_coupling((N,), K, torch.Generator().manual_seed(t))
    x_t = coupled_noise(x0, t, schedule, u, n)
    freq = torch.bincount(x_t, minlength=K).double() / N
    p = q_marginal(torch.nn.functional.one_hot(torch.tensor(3), K).double(), t, schedule)
    stderr = torch.sqrt(p * (1 - p) / N)
    assert ((freq - p).abs() <= 5 * stderr + 1e-12).all(), (freq, p)


def test_coupled_noise_agrees_with_closed_form_probability_exactly():
    """Where u takes K * M evenly spaced values and n runs over all classes, the share of
    pixels equal to x_0 is alpha_bar_t + (1 - alpha_bar_t) / K up to the grid's resolution."""
    K, M, schedule, t = 4, 10_000, make_schedule("cosine", 200), 77
    u = ((torch.arange(M, dtype=torch.float64) + 0.5) / M).repeat_interleave(K)
    n = torch.arange(K).repeat(M)
    x0 = torch.zeros(K * M, dtype=torch.long)
    share = (coupled_noise(x0, t, schedule, u, n) == 0).double().mean().item()
    a = schedule.alpha_bars[t].item()
    assert share == pytest.approx(a + (1 - a) / K, abs=1 / M)


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_coupled_noise_only_adds_corruption(name, toy_map):
    """Resampled pixels at t1 < t2 stay resampled, with the same class; x_0 at t = 0."""
    schedule = make_schedule(name, 1000)
    u, n = draw_coupling(toy_map.shape, 8, torch.Generator().manual_seed(1))
    ts = torch.tensor([0, 1, 10, 100, 250, 500, 750, 999, 1000])
    frames = coupled_noise(toy_map, ts.view(-1, 1, 1), schedule, u, n)
    assert torch.equal(frames[0], toy_map)
    changed = frames != toy_map
    for i in range(len(ts) - 1):
        assert not (changed[i] & ~changed[i + 1]).any(), "a pixel came back to x_0"
        assert torch.equal(frames[i][changed[i]], frames[i + 1][changed[i]]), "a changed pixel changed again"
    assert changed.sum((1, 2)).diff().min() >= 0


def test_coupled_noise_rejects_bad_input(toy_map):
    schedule = make_schedule("linear", 50)
    u, n = draw_coupling(toy_map.shape, 8)
    with pytest.raises(ValueError, match="51"):
        coupled_noise(toy_map, 51, schedule, u, n)
    with pytest.raises(ValueError, match="shape"):
        coupled_noise(toy_map, 5, schedule, u[:3], n)
    with pytest.raises(TypeError):
        coupled_noise(toy_map.float(), 5, schedule, u, n)
    with pytest.raises(TypeError):
        coupled_noise(toy_map, 5.0, schedule, u, n)
    with pytest.raises(ValueError, match="num_classes"):
        draw_coupling((2, 2), 1)


def test_marginal_entropy_by_enumeration():
    K, schedule = 5, make_schedule("hoogeboom-cosine", 40)
    for t in (0, 1, 20, 40):
        a = schedule.alpha_bars[t].item()
        p = [a + (1 - a) / K] + [(1 - a) / K] * (K - 1)
        expected = -sum(q * math.log2(q) for q in p if q > 0)
        assert marginal_entropy_bits(schedule, K)[t].item() == pytest.approx(expected, abs=1e-12)
    assert marginal_entropy_bits(make_schedule("jsd", 10), K)[-1].item() == pytest.approx(math.log2(K))


# -- the noise explorer ----------------------------------------------------------------------


def test_t_slider_changes_x_t_and_the_picture(explorer):
    explorer.t_slider.value = 100
    before_x, before_png, before_pixels = explorer.x_t.clone(), shown_png(explorer), explorer.image.get_array().copy()
    explorer.t_slider.value = 500
    assert explorer.t == 500
    assert not torch.equal(explorer.x_t, before_x)
    assert shown_png(explorer) != before_png and shown_png(explorer) == explorer.png
    assert not np.array_equal(explorer.image.get_array(), before_pixels)
    assert np.array_equal(explorer.image.get_array(), explorer.x_t.numpy())
    # Its x_t is the coupled sample of its own random numbers.
    assert torch.equal(explorer.x_t, coupled_noise(explorer.x0, 500, explorer.schedule, explorer.u, explorer.n))
    # One step of t still changes the picture (the title and the markers move).
    png = shown_png(explorer)
    explorer.t_slider.value = 501
    assert shown_png(explorer) != png


def test_explorer_noise_is_coupled(explorer):
    seen = []
    for t in (50, 200, 400, 600, 800, 1000):
        explorer.t_slider.value = t
        seen.append(explorer.x_t.clone())
    for early, late in zip(seen, seen[1:]):
        changed_early, changed_late = early != explorer.x0, late != explorer.x0
        assert not (changed_early & ~changed_late).any()
        assert torch.equal(early[changed_early], late[changed_early])
    explorer.t_slider.value = 0
    assert torch.equal(explorer.x_t, explorer.x0)


def test_curves_follow_the_schedule(explorer):
    K = 8
    s = explorer.schedule
    c = explorer.curves
    np.testing.assert_allclose(c["alpha_bar"], s.alpha_bars.numpy())
    np.testing.assert_allclose(c["survival"], (s.alpha_bars + (1 - s.alpha_bars) / K).numpy(), atol=1e-15)
    # This map's unchanged share, pixel by pixel, at a few t.
    for t in (0, 300, 1000):
        x_t = torch.where(explorer.u < s.alpha_bars[t], explorer.x0, explorer.n)
        assert c["unchanged"][t] == pytest.approx((x_t == explorer.x0).double().mean().item())
    xdata, ydata = explorer.lines["alpha_bar"].get_data()
    np.testing.assert_allclose(ydata, s.alpha_bars.numpy())
    np.testing.assert_allclose(xdata, np.arange(s.T + 1) / s.T)


def test_curves_and_marker_pass_under_the_legend(toy_map):
    """Under `constant` the curves cross the legend's corner, and so does the marker of t: the
    legend's box in the picture stays as it is, whatever t."""
    explorer = noise_explorer("toyseg", x0=toy_map, schedule="constant", T=1000, t=20)
    box = explorer.lines["alpha_bar"].axes.get_legend().get_window_extent()
    height = explorer.figure.canvas.get_width_height()[1]
    inside = (slice(math.ceil(height - box.y1), math.floor(height - box.y0)),
              slice(math.ceil(box.x0), math.floor(box.x1)))
    first = pixels(explorer.png)
    explorer.t_slider.value = 250
    later = pixels(explorer.png)
    assert not np.array_equal(later, first)
    np.testing.assert_array_equal(later[inside], first[inside])


def test_schedule_dropdown_changes_curves_controls_and_picture(toy_map):
    explorer = noise_explorer("toyseg", x0=toy_map, T=1000, t=300)
    assert set(explorer.param_sliders) == {"s", "min_alpha"}
    alpha_bar, png = explorer.curves["alpha_bar"].copy(), shown_png(explorer)
    explorer.schedule_dropdown.value = "linear"
    assert explorer.schedule.name == "linear"
    assert not np.allclose(explorer.curves["alpha_bar"], alpha_bar)
    np.testing.assert_allclose(explorer.lines["alpha_bar"].get_ydata(), make_schedule("linear", 1000).alpha_bars.numpy())
    assert set(explorer.param_sliders) == {"beta_start", "beta_end"}
    assert list(explorer.param_box.children) == list(explorer.param_sliders.values())
    assert shown_png(explorer) != png
    explorer.schedule_dropdown.value = "jsd"
    assert explorer.param_sliders == {} and explorer.curves["alpha_bar"][-1] == 0
    assert torch.equal(explorer.x_t, coupled_noise(explorer.x0, 300, make_schedule("jsd", 1000), explorer.u, explorer.n))


def test_parameter_slider_rebuilds_the_schedule(toy_map):
    explorer = noise_explorer("toyseg", x0=toy_map, schedule="constant", T=1000, t=500)
    png = shown_png(explorer)
    explorer.param_sliders["beta"].value = 0.01
    assert explorer.schedule.params["beta"] == pytest.approx(0.01)
    assert explorer.curves["alpha_bar"][500] == pytest.approx(0.99 ** 500)
    assert shown_png(explorer) != png and explorer.status.value == ""


def test_T_slider_keeps_t_over_T(toy_map):
    explorer = noise_explorer("toyseg", x0=toy_map, schedule="cosine", T=1000, t=400)
    explorer.T_slider.value = 200
    assert explorer.schedule.T == 200 and explorer.t_slider.max == 200
    assert explorer.t == explorer.t_slider.value == 80
    assert len(explorer.curves["alpha_bar"]) == 201
    explorer.T_slider.value = 2000
    assert explorer.t_slider.max == 2000 and explorer.t == explorer.t_slider.value == 800
    explorer.t_slider.value = 2000
    assert explorer.curves["alpha_bar"][explorer.t] == make_schedule("cosine", 2000).alpha_bars[-1].item()


def test_digits_and_figures_do_not_leak():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    explorer = noise_explorer("digits", index=3, schedule="jsd", T=50)
    assert explorer.x0.shape == (8, 8) and explorer.curves["entropy"][-1] == pytest.approx(math.log2(17))
    posterior_explorer("digits", T=50)
    assert plt.get_fignums() == before


def test_bad_input_raises():
    with pytest.raises(ValueError, match="cifar"):
        noise_explorer("cifar")
    with pytest.raises(ValueError, match="quadratic"):
        noise_explorer("toyseg", schedule="quadratic")
    with pytest.raises(ValueError, match="t"):
        noise_explorer("toyseg", T=100, t=101)
    with pytest.raises(ValueError, match="index"):
        noise_explorer("digits", index=10_000)
    with pytest.raises(ValueError, match="quadratic"):
        posterior_explorer(schedule="quadratic")
    with pytest.raises(ValueError, match="x0_class"):
        posterior_explorer("toyseg", x0_class=8)
    with pytest.raises(ValueError, match="t"):
        posterior_explorer("toyseg", T=10, t=0)


# -- the static view ---------------------------------------------------------------------------


def test_display_bundle_holds_the_live_widget_and_its_picture(toy_map):
    explorer = noise_explorer("toyseg", x0=toy_map, T=1000, t=100)
    bundle = displayed(explorer)
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == explorer.model_id
    assert "text/plain" in bundle
    width, height = explorer.figure.canvas.get_width_height()
    first = static_view(explorer)
    assert first.shape == (height, width, 3)
    np.testing.assert_array_equal(first, pixels(shown_png(explorer)))
    np.testing.assert_array_equal(map_in_picture(explorer, first), explorer.x_t.numpy())
    # After a move of t the bundle shows the new state, not the one first displayed.
    explorer.t_slider.value = 900
    later = static_view(explorer)
    assert not np.array_equal(later, first)
    np.testing.assert_array_equal(later, pixels(shown_png(explorer)))
    np.testing.assert_array_equal(map_in_picture(explorer, later), explorer.x_t.numpy())
    assert displayed(explorer)["image/png"] == base64.b64encode(explorer.png).decode("ascii")


def test_posterior_display_bundle_follows_its_controls():
    explorer = posterior_explorer("toyseg", T=200, x0_class=0, xt_class=1, t=2)
    bundle = displayed(explorer)
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == explorer.model_id
    first = static_view(explorer)
    np.testing.assert_array_equal(first, pixels(shown_png(explorer)))
    explorer.t_slider.value = 150
    later = static_view(explorer)
    assert not np.array_equal(later, first)
    np.testing.assert_array_equal(later, pixels(shown_png(explorer)))


# -- the posterior explorer ------------------------------------------------------------------


def bayes_posterior(schedule, K, x0, x_t, t):
    """q(x_{t-1} | x_t, x_0) by Bayes with transition matrices in float64:
    Q_t[i, j] = q(x_t = j | x_{t-1} = i), Qbar_{t-1} = Q_1 ... Q_{t-1}."""
    eye, uniform = torch.eye(K, dtype=torch.float64), torch.full((K, K), 1.0 / K, dtype=torch.float64)
    Q = [None] + [schedule.alphas[s].item() * eye + schedule.betas[s].item() * uniform for s in range(1, t + 1)]
    Qbar = eye.clone()
    for s in range(1, t):
        Qbar = Qbar @ Q[s]
    joint = Qbar[x0, :] * Q[t][:, x_t]   # q(x_{t-1} = k | x_0) q(x_t | x_{t-1} = k)
    return (joint / joint.sum()).numpy()


def test_posterior_bars_are_eq_13():
    explorer = posterior_explorer("toyseg", schedule="hoogeboom-cosine", T=200, x0_class=0, xt_class=3, t=20)
    schedule = make_schedule("hoogeboom-cosine", 200)
    for x0, x_t, t in [(0, 3, 20), (2, 2, 1), (5, 1, 2), (7, 4, 150), (3, 3, 200)]:
        explorer.x0_dropdown.value, explorer.xt_dropdown.value = x0, x_t
        png = shown_png(explorer)
        explorer.t_slider.value = t
        expected = bayes_posterior(schedule, 8, x0, x_t, t)
        heights = np.array([bar.get_height() for bar in explorer.bars])
        np.testing.assert_allclose(explorer.probs, expected, rtol=1e-9, atol=1e-14)
        np.testing.assert_allclose(heights, expected, rtol=1e-9, atol=1e-14)
        assert heights.sum() == pytest.approx(1.0)
        if t != 20:
            assert shown_png(explorer) != png


def test_posterior_factors_multiply_to_the_posterior():
    explorer = posterior_explorer("digits", schedule="linear", T=100, x0_class=4, xt_class=11, t=30)
    product = explorer.likelihood * explorer.prior
    np.testing.assert_allclose(product / product.sum(), explorer.probs, rtol=1e-12)
