"""Figures without a display: the pixels drawn have the dataset's colours, legends name the classes."""

import io

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgba

from mdiff_lite.data import Digits, PermutedLabels, ToySegmentation
from mdiff_lite.plots import add_legend, class_cmap, plot_grid, plot_map


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def toy():
    return ToySegmentation(32, 32)


def drawn_rgba(ax) -> np.ndarray:
    """The colours the image on ``ax`` maps its cells to, [H, W, 4]."""
    image = ax.get_images()[0]
    return image.to_rgba(image.get_array())


def test_each_cell_has_its_class_colour(toy):
    m = toy.sample(1, torch.Generator().manual_seed(0))[0]
    ax = plot_map(m, toy)
    rgba = drawn_rgba(ax)
    assert rgba.shape == (32, 32, 4)
    for r, c in [(0, 0), (31, 31), (16, 5), (20, 20), (10, 12)]:
        np.testing.assert_allclose(rgba[r, c], to_rgba(toy.colors[m[r, c]]), atol=1e-6)
    for k in range(8):   # every class, its own colour
        np.testing.assert_allclose(class_cmap(toy)(k), to_rgba(toy.colors[k]), atol=1e-6)


def test_rendered_pixels_have_the_class_colour(toy):
    # Through the Agg canvas, as in a saved PNG: the middle of each half of a two-class map.
    m = torch.zeros(32, 32, dtype=torch.long)
    m[:, 16:] = 6
    fig, ax = plt.subplots(figsize=(2, 2), dpi=100)
    plot_map(m, toy, ax=ax)
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())
    (x0, y0), (x1, y1) = ax.get_window_extent().get_points()
    height = pixels.shape[0]
    for fraction, k in [(0.25, 0), (0.75, 6)]:
        x, y = int(x0 + fraction * (x1 - x0)), int(height - (y0 + y1) / 2)
        np.testing.assert_allclose(pixels[y, x] / 255, to_rgba(toy.colors[k]), atol=2 / 255)


def test_grid_draws_every_map_with_a_legend_of_class_names(toy):
    maps = toy.sample(10, torch.Generator().manual_seed(1))
    fig = plot_grid(maps, toy, ncols=4, titles=[f"#{i}" for i in range(10)], suptitle="samples")
    with_images = [ax for ax in fig.axes if ax.get_images()]
    assert len(fig.axes) == 12 and len(with_images) == 10
    for i, ax in enumerate(with_images):
        assert ax.get_title() == f"#{i}"
        np.testing.assert_allclose(drawn_rgba(ax)[0, 0], to_rgba(toy.colors[maps[i, 0, 0]]), atol=1e-6)
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == list(toy.class_names)
    for patch, color in zip(legend.get_patches(), toy.colors):
        np.testing.assert_allclose(patch.get_facecolor(), to_rgba(color), atol=1e-6)
    fig.savefig(io.BytesIO(), format="png")   # no display needed
    assert not plot_grid(maps[:3], toy, legend=False).legends


def test_legend_on_axes(toy):
    ax = plot_map(toy.sample(1)[0], toy, legend=True, title="one map")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(toy.class_names)
    assert ax.get_title() == "one map"
    assert add_legend(ax.figure, toy) is ax.figure.legends[0]


def test_permuted_maps_look_the_same(toy):
    permuted = PermutedLabels(toy, seed=0)
    m = toy.sample(1, torch.Generator().manual_seed(2))[0]
    np.testing.assert_allclose(drawn_rgba(plot_map(permuted.permute(m), permuted)), drawn_rgba(plot_map(m, toy)))


def test_digits_grey_ramp():
    digits = Digits()
    ax = plot_map(digits.split("test")[0], digits)
    rgba = drawn_rgba(ax)
    m = digits.split("test")[0]
    assert np.allclose(rgba[m == 0], to_rgba("#ffffff")) and np.allclose(rgba[m == 16], to_rgba("#000000"))


def test_bad_input_raises(toy):
    maps = toy.sample(2)
    with pytest.raises(ValueError):
        plot_map(maps, toy)                    # a batch, not a map
    with pytest.raises(ValueError):
        plot_map(maps[0].float(), toy)
    with pytest.raises(ValueError):
        plot_map(maps[0] + 8, toy)            # ids out of range
    with pytest.raises(ValueError):
        plot_grid(maps[0], toy)
    with pytest.raises(ValueError):
        plot_grid(maps[:0], toy)
    with pytest.raises(ValueError):
        plot_grid(maps, toy, ncols=0)
    with pytest.raises(ValueError):
        plot_grid(maps, toy, titles=["only one"])
