"""Pictures of categorical maps, each class in its dataset's fixed colour.

A dataset here is anything with ``class_names`` and ``colors`` (one hex colour per class), as the
datasets of :mod:`mdiff_lite.data` have; the colours are defined there, once, and every figure of
the course takes them from the dataset, so a class keeps its colour from notebook to notebook.
Class ``k`` is drawn in ``colors[k]``: pixels are cells, not intensities (no interpolation, no
colour bar).

Functions return the Axes or Figure they drew and never call ``plt.show()``. Without a display
matplotlib falls back to its Agg backend by itself, so this works in scripts and CI; in a notebook
the figures appear inline.

Used in notebooks 04-06 and by ``benchmarks/data_stats.py``.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

__all__ = ["class_cmap", "plot_map", "plot_grid", "add_legend"]


def class_cmap(dataset) -> ListedColormap:
    """The dataset's colours as a colormap whose entry ``k`` is class ``k``."""
    return ListedColormap(list(dataset.colors), name=type(dataset).__name__)


def _as_array(maps, ndim: int, num_classes: int, name: str) -> np.ndarray:
    if isinstance(maps, torch.Tensor):
        maps = maps.detach().cpu().numpy()
    maps = np.asarray(maps)
    if maps.ndim != ndim or not np.issubdtype(maps.dtype, np.integer):
        shape = "[H, W]" if ndim == 2 else "[n, H, W]"
        raise ValueError(f"{name} must be an integer array of class ids of shape {shape}, "
                         f"got dtype {maps.dtype} and shape {maps.shape}")
    if maps.size and (maps.min() < 0 or maps.max() >= num_classes):
        raise ValueError(f"{name} holds class ids outside 0..{num_classes - 1}: found {maps.min()}..{maps.max()}")
    return maps


def plot_map(map, dataset, ax=None, title: str | None = None, legend: bool = False):
    """Draw one map ``[H, W]`` of class ids in the dataset's colours; returns the Axes.

    Args:
        map: LongTensor or integer array ``[H, W]``.
        dataset: gives ``colors`` and ``class_names``.
        ax: where to draw; a new figure when None.
        title: above the map.
        legend: add the class names, outside the map on the right.
    """
    image = _as_array(map, 2, len(dataset.colors), "map")
    if ax is None:
        _, ax = plt.subplots(figsize=(3, 3 * image.shape[0] / image.shape[1]), layout="constrained")
    ax.imshow(image, cmap=class_cmap(dataset), vmin=-0.5, vmax=len(dataset.colors) - 0.5,
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title, fontsize=9)
    if legend:
        add_legend(ax, dataset)
    return ax


def plot_grid(maps, dataset, ncols: int = 8, titles=None, legend: bool = True, suptitle: str | None = None,
              cell_inches: float = 1.1):
    """Draw maps ``[n, H, W]`` in a grid, ``ncols`` maps per row; returns the Figure.

    Args:
        maps: LongTensor or integer array ``[n, H, W]``, n >= 1.
        dataset: gives ``colors`` and ``class_names``.
        ncols: maps per row (fewer if there are fewer maps).
        titles: optional list of n strings, one above each map (e.g. its log-probability).
        legend: add one legend of class names for the whole figure, on the right.
        suptitle: a title for the figure.
        cell_inches: width of one map in inches.
    """
    images = _as_array(maps, 3, len(dataset.colors), "maps")
    n = len(images)
    if n == 0:
        raise ValueError("maps must hold at least one map")
    if not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"ncols must be a positive integer, got ncols = {ncols!r}")
    if titles is not None and len(titles) != n:
        raise ValueError(f"titles must have one entry per map: {n}, got {len(titles)}")
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    height, width = images.shape[1:]
    legend_inches = 1.4 if legend else 0.0
    title_inches = 0.25 if titles is not None else 0.0
    fig, axes = plt.subplots(nrows, ncols, squeeze=False, layout="constrained",
                             figsize=(ncols * cell_inches + legend_inches,
                                      nrows * (cell_inches * height / width + title_inches) + 0.4 * bool(suptitle)))
    for i, ax in enumerate(axes.flat):
        if i < n:
            plot_map(images[i], dataset, ax=ax, title=None if titles is None else titles[i])
        else:
            ax.set_axis_off()
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    if legend:
        add_legend(fig, dataset)
    return fig


def add_legend(target, dataset, **kwargs):
    """A legend of class names with their colours, on an Axes (outside it, on the right) or a
    Figure (in a column of its own, on the right); returns the Legend. ``kwargs`` go to
    ``legend()``."""
    handles = [Patch(facecolor=color, edgecolor="0.5", linewidth=0.5, label=name)
               for name, color in zip(dataset.class_names, dataset.colors)]
    options = dict(frameon=False, fontsize=8, handlelength=1.2)
    if isinstance(target, plt.Figure):
        options["loc"] = "outside right center"
    else:
        options.update(loc="center left", bbox_to_anchor=(1.02, 0.5))
    options.update(kwargs)
    return target.legend(handles=handles, **options)
