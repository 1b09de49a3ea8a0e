"""Widgets that show noise eating a categorical map: the forward process (eqs. 11-13), live.

Two explorers, each an ``ipywidgets.VBox`` whose controls and current data are attributes, so
that they can be driven and checked from Python without a browser:

- :func:`noise_explorer`: a map ``x_0`` (toy street scene or digit) and its ``x_t``, with the
  schedule's ``alpha_bar_t``, ``beta_t``, survival probability and entropy against ``t``. Controls:
  the schedule (``description="schedule"``), its own parameters, ``T`` and ``t``
  (``description="t"``).
- :func:`posterior_explorer`: pick ``x_0``, ``x_t`` and ``t``; a bar chart of
  ``q(x_{t-1} | x_t, x_0)`` (eq. 13) with its two factors.

**Coupled noise.** Sampling ``x_t ~ q(x_t | x_0)`` afresh for every position of the ``t`` slider
would show unrelated samples: pixels would flicker back and forth. Instead, each pixel gets two
random numbers once, ``u ~ U(0, 1)`` and a replacement class ``n ~ Uniform{0 .. K-1}``, and
``x_t = x_0`` where ``u < alpha_bar_t``, else ``n`` (:func:`coupled_noise`). For each ``t`` this is
an exact draw from eq. 12 (the pixel is resampled with probability ``1 - alpha_bar_t``, and the new
class is uniform), and since ``alpha_bar_t`` only decreases, a pixel once resampled stays
resampled, with the same class: moving ``t`` forward only ever adds corruption. (The joint law of
``x_1 .. x_T`` is not the Markov chain of eq. 11, which may resample a pixel several times; only
the marginals are the paper's. That is what a picture of ``q(x_t | x_0)`` needs.)

**Speed.** An update of ``t`` must redraw in well under 100 ms. Each explorer owns one matplotlib
``Figure`` on an Agg canvas, outside pyplot (no figure leaks, and the inline backend does not
display a stray copy). The parts that change with ``t`` or with the schedule (the ``x_t`` image,
the curves, the markers, a title) are "animated" artists: a full draw happens only once, when the
figure is built (the curves are drawn against ``t / T``, so no update changes an axis); updates restore the saved background and draw just those artists
(blitting), then Pillow encodes the canvas as PNG. The PNG goes to an ``ipywidgets.Output`` as
its single ``image/png`` output, which a browser shows as an ``<img>`` that changes with every
update. ``benchmarks/widget_latency.py`` measures it.

**Static view.** Displayed, an explorer's bundle carries its current PNG as ``image/png`` beside
ipywidgets' ``text/plain`` and ``application/vnd.jupyter.widget-view+json``. A live frontend
prefers the widget view (JupyterLab ranks it above images), so a reader with a kernel gets the
controls; a notebook executed without a frontend (nbclient, ``make notebooks``) and read on
GitHub or nbviewer keeps the picture as it was when the cell displayed it.

Needs ``ipywidgets`` (the ``lab`` extra). Taught in notebook 04.
"""

from __future__ import annotations

import base64
import io
import math
import numbers
import time

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, NullLocator
from PIL import Image

from .data import DATASET_NAMES, dataset_by_name
from .diffusion import q_posterior
from .plots import class_cmap
from .schedules import SCHEDULE_NAMES, Schedule, make_schedule

__all__ = [
    "draw_coupling", "coupled_noise", "marginal_entropy_bits", "PARAMETER_RANGES",
    "NoiseExplorer", "PosteriorExplorer", "noise_explorer", "posterior_explorer",
]

# ---------------------------------------------------------------------------------------------
# Coupled noise and the curves the explorer draws: plain tensors, no widgets.
# ---------------------------------------------------------------------------------------------


def draw_coupling(shape, num_classes: int, generator: torch.Generator | None = None):
    """The fixed random numbers behind :func:`coupled_noise`, one pair per pixel of ``shape``:
    ``u ~ U(0, 1)`` (float64: ``1 - alpha_bar_1`` can be 1e-7, finer than float32's grid) and a
    replacement class ``n ~ Uniform{0 .. K-1}`` (LongTensor). Returns ``(u, n)``."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    shape = tuple(shape)
    u = torch.rand(shape, generator=generator, dtype=torch.float64)
    n = torch.randint(0, int(num_classes), shape, generator=generator)
    return u, n


def coupled_noise(x0: torch.Tensor, t, schedule: Schedule, u: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """``x_t`` driven by fixed per-pixel random numbers: ``x_0`` where ``u < alpha_bar_t``, else ``n``.

    For every ``t`` this is a draw from eq. 12, ``q(x_t | x_0) = C(alpha_bar_t x_0 + (1 - alpha_bar_t) / K)``:
    the pixel keeps ``x_0`` with probability ``alpha_bar_t`` and is otherwise replaced by a uniform
    class. Across ``t`` the draws are coupled: the resampled pixels at ``t`` are
    ``{u >= alpha_bar_t}``, which only grows with ``t``, and a resampled pixel always shows the
    same ``n``. So a larger ``t`` only ever adds corruption.

    Args:
        x0: integer tensor of class indices, any shape.
        t: 0 .. T, an int or an integer tensor broadcasting against ``x0.shape`` (e.g. ``[F, 1, 1]``
            for F frames of an ``[H, W]`` map).
        schedule: from :func:`~mdiff_lite.schedules.make_schedule`.
        u, n: from :func:`draw_coupling`, both of the shape of ``x0``; ``n`` in ``0 .. K-1``.
    Returns:
        LongTensor of class indices, of the broadcast shape of ``t`` and ``x0``.
    """
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a Schedule from make_schedule(), got {type(schedule).__name__}")
    for name, value in (("x0", x0), ("n", n)):
        if not isinstance(value, torch.Tensor) or value.is_floating_point() or value.is_complex() \
                or value.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer tensor of class indices, got {getattr(value, 'dtype', type(value))}")
    if not isinstance(u, torch.Tensor) or not u.is_floating_point():
        raise TypeError(f"u must be a floating tensor of uniforms in [0, 1), got {getattr(u, 'dtype', type(u))}")
    if u.shape != x0.shape or n.shape != x0.shape:
        raise ValueError(f"u and n must have the shape of x0, {tuple(x0.shape)}; got {tuple(u.shape)} and {tuple(n.shape)}")
    if isinstance(t, torch.Tensor):
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"t must be an int or an integer tensor, got a tensor of dtype {t.dtype}")
        t = t.long().cpu()
    elif isinstance(t, numbers.Integral) and not isinstance(t, bool):
        t = torch.tensor(int(t))
    else:
        raise TypeError(f"t must be an int or an integer tensor, got {t!r}")
    if t.numel() and (t.min() < 0 or t.max() > schedule.T):
        bad = t[(t < 0) | (t > schedule.T)].flatten()[0].item()
        raise ValueError(f"t must lie in 0..{schedule.T}, got t = {bad}")
    alpha_bar = schedule.alpha_bars[t].to(device=u.device, dtype=u.dtype)
    return torch.where(u < alpha_bar, x0.long(), n.long())


def marginal_entropy_bits(schedule: Schedule, num_classes: int) -> torch.Tensor:
    """Entropy of ``q(x_t | x_0)`` (eq. 12) in bits per pixel for ``t = 0 .. T``: float64 ``[T + 1]``.

    The distribution puts ``a = alpha_bar_t + (1 - alpha_bar_t) / K`` on ``x_0`` and
    ``b = (1 - alpha_bar_t) / K`` on each of the ``K - 1`` others, whatever ``x_0`` is, so the
    entropy ``-a log2 a - (K - 1) b log2 b`` is the same for every pixel. It rises from 0 at
    ``t = 0`` to ``log2 K`` (uniform noise) as ``alpha_bar_t`` falls to 0.
    """
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a Schedule from make_schedule(), got {type(schedule).__name__}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    K = int(num_classes)
    b = schedule.one_minus_alpha_bars / K
    a = schedule.alpha_bars + b
    return -(torch.xlogy(a, a) + (K - 1) * torch.xlogy(b, b)) / math.log(2)


# ---------------------------------------------------------------------------------------------
# Rendering: one Agg figure, redrawn by blitting, shown as a PNG in an Output widget.
# ---------------------------------------------------------------------------------------------


class _Canvas:
    """A matplotlib Figure outside pyplot whose animated artists are redrawn over a cached
    background; :meth:`render` returns PNG bytes."""

    def __init__(self, figsize, dpi: int):
        self.figure = Figure(figsize=figsize, dpi=dpi)
        self._agg = FigureCanvasAgg(self.figure)
        self._animated = []
        self._on_top = []
        self._top_patches = []  # their patches of the first full draw
        self._background = None

    def animate(self, *artists):
        for artist in artists:
            artist.set_animated(True)   # left out of full draws, drawn by render() on top
            self._animated.append(artist)

    def keep_on_top(self, *artists):
        """Static artists (legends) that the animated ones must not cross out: their patch of the
        background is pasted back over them, which costs no text rendering."""
        self._on_top.extend(artists)

    def render(self) -> bytes:
        """The first time a full draw, whose background is kept; then only the animated artists."""
        if self._background is None:
            self._agg.draw()
            self._background = self._agg.copy_from_bbox(self.figure.bbox)
            renderer = self._agg.get_renderer()
            self._top_patches = [self._agg.copy_from_bbox(a.get_window_extent(renderer)) for a in self._on_top]
        else:
            self._agg.restore_region(self._background)
        for artist in self._animated:
            artist.axes.draw_artist(artist)
        for patch in self._top_patches:
            self._agg.restore_region(patch)
        # Animated texts should avoid mathtext: parsing a new string costs ~15 ms, a plain one ~1 ms.
        # Pillow at a low compression level: ~5 ms where savefig would redraw everything.
        rgba = Image.frombuffer("RGBA", self._agg.get_width_height(), self._agg.buffer_rgba(), "raw", "RGBA", 0, 1)
        out = io.BytesIO()
        rgba.convert("RGB").save(out, format="png", compress_level=1)
        return out.getvalue()


def _show_png(output: widgets.Output, png: bytes, what: str) -> None:
    """Make ``png`` the single output of ``output``. Setting ``outputs`` works with or without a
    kernel (``with output: display(...)`` needs one) and replaces the image in one message."""
    output.outputs = ({"output_type": "display_data", "metadata": {},
                       "data": {"image/png": base64.b64encode(png).decode("ascii"), "text/plain": f"<{what}>"}},)


def _resolve_dataset(dataset):
    if isinstance(dataset, str):
        return dataset_by_name(dataset)   # ValueError naming an unknown dataset
    if not all(hasattr(dataset, a) for a in ("num_classes", "class_names", "colors")):
        raise TypeError(f"dataset must be one of {', '.join(DATASET_NAMES)} or a dataset with num_classes, "
                        f"class_names and colors, got {type(dataset).__name__}")
    return dataset


def _check_schedule_name(name) -> str:
    if name not in SCHEDULE_NAMES:
        raise ValueError(f"unknown schedule name {name!r}; choose one of {', '.join(SCHEDULE_NAMES)}")
    return name


def _check_int(value, lo: int, hi: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in {lo}..{hi}, got {name} = {value!r}")
    return int(value)


# Slider ranges for each schedule parameter (see make_schedule): (log scale?, low, high).
# Every value in these ranges gives a valid schedule, so the sliders cannot produce an error.
PARAMETER_RANGES = {
    "beta_start": (True, 1e-6, 1.0),
    "beta_end": (True, 1e-5, 1.0),
    "beta": (True, 1e-6, 1.0),
    "s": (True, 1e-4, 1.0),
    "max_beta": (False, 0.5, 1.0),
    "min_alpha": (False, 0.0, 0.5),
}


def _parameter_slider(name: str, value: float):
    log, low, high = PARAMETER_RANGES[name]
    common = dict(value=value, description=name, readout_format=".3g", continuous_update=True,
                  style={"description_width": "initial"})
    if log:
        return widgets.FloatLogSlider(base=10, min=math.log10(low), max=math.log10(high), step=0.01, **common)
    return widgets.FloatSlider(min=low, max=high, step=0.001, **common)


class _StaticView:
    """Mixed into a widget with a ``png`` attribute: its display bundle also holds that PNG, the
    picture a renderer without widgets shows (see "Static view" above)."""

    def _repr_mimebundle_(self, **kwargs):
        bundle = super()._repr_mimebundle_(**kwargs)
        if bundle is not None:   # None: a widget without a view, which displays nothing
            bundle["image/png"] = base64.b64encode(self.png).decode("ascii")
        return bundle


# ---------------------------------------------------------------------------------------------
# The noise explorer.
# ---------------------------------------------------------------------------------------------


class NoiseExplorer(_StaticView, widgets.VBox):
    """A map and its coupled ``x_t``, with the schedule's curves; build with :func:`noise_explorer`.

    Controls (ipywidgets): ``schedule_dropdown`` (description ``"schedule"``), ``T_slider``
    (``"T"``), ``t_slider`` (``"t"``), ``param_sliders`` (a dict, parameter name -> slider, in
    ``param_box``; rebuilt when the schedule changes). ``output`` is the ``Output`` widget showing
    the figure, ``readout`` an ``HTML`` line with the values at ``t``, ``status`` one for messages.

    Current data: ``dataset``, ``x0`` (LongTensor ``[H, W]``), ``u`` and ``n`` (the coupling, see
    :func:`coupled_noise`), ``schedule``, ``t``, ``x_t`` (LongTensor ``[H, W]``), ``curves`` (dict
    of float64 numpy arrays indexed by t: ``"alpha_bar"``, ``"beta"``, ``"survival"`` =
    ``P(x_t = x_0)``, ``"unchanged"`` = this map's fraction of pixels with ``x_t = x_0``,
    ``"entropy"`` in bits per pixel), ``png`` (bytes of the image on show), ``figure`` (the
    matplotlib Figure), ``image`` (the ``x_t`` AxesImage), ``lines`` (dict of the curves' Line2D),
    ``last_update_ms`` (recompute and redraw time of the last update).

    Changing the schedule or ``T`` resets the parameters to that schedule's defaults for that ``T``
    (those of ``linear`` and ``constant`` scale with ``T``); changing ``T`` keeps ``t / T``.
    """

    def __init__(self, dataset="toyseg", index: int = 0, schedule: str = "hoogeboom-cosine", T: int = 1000,
                 t: int | None = None, seed: int = 0, max_T: int = 4000, x0: torch.Tensor | None = None):
        self.dataset = _resolve_dataset(dataset)
        schedule = _check_schedule_name(schedule)
        max_T = _check_int(max_T, 1, 100_000, "max_T")
        T = _check_int(T, 1, max_T, "T")
        t = T // 2 if t is None else _check_int(t, 0, T, "t")
        K = self.dataset.num_classes
        if x0 is None:
            maps = self.dataset.split("test")
            index = _check_int(index, 0, len(maps) - 1, "index")
            x0 = maps[index]
        if not isinstance(x0, torch.Tensor) or x0.ndim != 2 or x0.is_floating_point() or x0.dtype == torch.bool:
            raise ValueError(f"x0 must be an integer tensor [H, W] of class ids, got {getattr(x0, 'shape', x0)!r}")
        if x0.min() < 0 or x0.max() >= K:
            raise ValueError(f"x0 holds class ids outside 0..{K - 1}")
        self.x0 = x0.long().cpu()
        self.u, self.n = draw_coupling(self.x0.shape, K, torch.Generator().manual_seed(seed))
        self.schedule = make_schedule(schedule, T)
        self.t = t
        self._busy = False   # set while one update moves several controls: one redraw, not several

        self.schedule_dropdown = widgets.Dropdown(options=SCHEDULE_NAMES, value=schedule, description="schedule")
        self.T_slider = widgets.IntSlider(value=T, min=1, max=max_T, description="T", continuous_update=False)
        self.t_slider = widgets.IntSlider(value=t, min=0, max=T, description="t", continuous_update=True,
                                          layout=widgets.Layout(width="60%"))
        self.param_box = widgets.HBox()
        self.status = widgets.HTML()
        self.readout = widgets.HTML()
        self.output = widgets.Output()
        self._build_param_sliders()
        self._build_figure()
        self._recompute_curves()
        self._update()

        self.schedule_dropdown.observe(self._on_schedule, "value")
        self.T_slider.observe(self._on_T, "value")
        self.t_slider.observe(self._on_t, "value")
        super().__init__([widgets.HBox([self.schedule_dropdown, self.T_slider]), self.param_box, self.t_slider,
                          self.readout, self.output, self.status])

    # -- figure ----------------------------------------------------------------------------------

    def _build_figure(self):
        K, cmap = self.dataset.num_classes, class_cmap(self.dataset)
        self._canvas = _Canvas(figsize=(10, 2.7), dpi=80)
        fig = self.figure = self._canvas.figure
        grid = fig.add_gridspec(1, 5, width_ratios=[1.1, 1.1, 1.4, 1.4, 1.4], left=0.005, right=0.99,
                                bottom=0.16, top=0.9, wspace=0.32)
        ax0, ax_t, ax_p, ax_b, ax_h = (fig.add_subplot(grid[0, i]) for i in range(5))
        image_options = dict(cmap=cmap, vmin=-0.5, vmax=K - 0.5, interpolation="nearest")
        ax0.imshow(self.x0.numpy(), **image_options)
        ax0.set_title("x₀", fontsize=9)
        self.image = ax_t.imshow(self.x0.numpy(), **image_options)
        for ax in (ax0, ax_t):
            ax.set_xticks([])
            ax.set_yticks([])
        # Unicode rather than mathtext throughout: the same look, and much cheaper to draw.
        lines = self.lines = {}
        lines["alpha_bar"], = ax_p.plot([], [], color="C0", lw=1.2, label="ᾱₜ (never resampled)")
        lines["survival"], = ax_p.plot([], [], color="C1", lw=1.2, label="P(xₜ = x₀)")
        lines["unchanged"], = ax_p.plot([], [], color="k", lw=0.8, ls=":", label="this map")
        ax_p.set_ylim(-0.02, 1.02)
        # Lower left, where the curves of the cosine schedules never come; the others' run under it.
        legend = ax_p.legend(fontsize=7, loc="lower left", framealpha=1, edgecolor="0.85", borderpad=0.3)
        ax_p.set_title("survival probability", fontsize=8)
        lines["beta"], = ax_b.plot([], [], color="C2", lw=1.2)
        ax_b.set_yscale("log")
        ax_b.set_ylim(1e-7, 1.5)   # fixed, so that a new schedule needs no full redraw
        ax_b.yaxis.set_major_locator(LogLocator(numticks=4))
        ax_b.yaxis.set_minor_locator(NullLocator())
        ax_b.set_title("βₜ, resampling probability of step t", fontsize=8)
        lines["entropy"], = ax_h.plot([], [], color="C3", lw=1.2)
        ax_h.axhline(math.log2(K), color="0.6", lw=0.8, ls="--")
        ax_h.text(0.03, math.log2(K), "uniform: log₂ K", transform=ax_h.get_yaxis_transform(), fontsize=7,
                  va="bottom", color="0.4")
        ax_h.set_ylim(0, 1.15 * math.log2(K))
        ax_h.set_title("entropy of q(xₜ | x₀), bits", fontsize=8)
        self._curve_axes = (ax_p, ax_b, ax_h)
        self._markers = [ax.axvline(0, color="0.3", lw=0.8) for ax in self._curve_axes]
        self._dots = {name: ax.plot([], [], "o", ms=3.5, color=lines[name].get_color())[0]
                      for name, ax in (("alpha_bar", ax_p), ("survival", ax_p), ("beta", ax_b), ("entropy", ax_h))}
        for ax in self._curve_axes:
            # Against t / T, so that a change of T changes no axis (and needs no full redraw);
            # a schedule whose defaults scale with T keeps its shape there.
            ax.set_xlim(0, 1)
            ax.set_xticks([0, 0.25, 0.5, 0.75, 1], ["0", "", "0.5", "", "1"])
            ax.set_xlabel("t / T", fontsize=8, labelpad=1)
            ax.tick_params(labelsize=7)
        # Only these change without a change of axes. Text in the figure is costly to redraw
        # (~5-10 ms a line), so the values at t go to an HTML readout instead.
        self._canvas.animate(self.image, ax_t.title, *lines.values(), *self._markers, *self._dots.values())
        self._canvas.keep_on_top(legend)

    # -- recompute -------------------------------------------------------------------------------

    def _recompute_curves(self):
        s, K = self.schedule, self.dataset.num_classes
        alpha_bar = s.alpha_bars.numpy()
        # This map's pixels that can change (n != x_0) change at the first t with alpha_bar_t <= u.
        movable = np.sort(self.u[self.n != self.x0].numpy())
        changed = len(movable) - np.searchsorted(movable, alpha_bar, side="left")
        self.curves = {
            "alpha_bar": alpha_bar,
            "beta": s.betas.numpy(),
            "survival": alpha_bar + s.one_minus_alpha_bars.numpy() / K,
            "unchanged": 1 - changed / self.x0.numel(),
            "entropy": marginal_entropy_bits(s, K).numpy(),
        }
        ts = np.arange(s.T + 1) / s.T
        for name, line in self.lines.items():
            if name == "beta":
                line.set_data(ts[1:], self.curves[name][1:])   # beta_0 = 0 has no place on a log axis
            else:
                line.set_data(ts, self.curves[name])

    def _update(self):
        """Recompute x_t at the current t and redraw."""
        start = time.perf_counter()
        t, T = self.t, self.schedule.T
        self.x_t = coupled_noise(self.x0, t, self.schedule, self.u, self.n)
        self.image.set_data(self.x_t.numpy())
        changed = (self.x_t != self.x0).float().mean().item()
        self.image.axes.set_title(f"xₜ, t = {t} / {T}", fontsize=9)
        for marker in self._markers:
            marker.set_xdata([t / T, t / T])
        c = self.curves
        for name, dot in self._dots.items():
            dot.set_data([t / T], [c[name][t]])
        self.readout.value = (
            f"t = {t} of {T}: ᾱ<sub>t</sub> = {c['alpha_bar'][t]:.4f}, "
            f"P(x<sub>t</sub> = x<sub>0</sub>) = {c['survival'][t]:.4f}, "
            f"β<sub>t</sub> = {c['beta'][t]:.3g}, entropy {c['entropy'][t]:.3f} bits per pixel "
            f"(at most log<sub>2</sub> K = {math.log2(self.dataset.num_classes):.3f}); "
            f"this map: {changed:.1%} of pixels changed")
        self.png = self._canvas.render()
        _show_png(self.output, self.png, f"noise explorer: {self.schedule.name}, T = {T}, t = {t}")
        self.last_update_ms = (time.perf_counter() - start) * 1e3

    # -- controls --------------------------------------------------------------------------------

    def _build_param_sliders(self):
        self.param_sliders = {name: _parameter_slider(name, value) for name, value in self.schedule.params.items()}
        for slider in self.param_sliders.values():
            slider.observe(self._on_param, "value")
        self.param_box.children = tuple(self.param_sliders.values()) or (
            widgets.HTML(f"<i>{self.schedule.name} has no parameters</i>"),)

    def _set_schedule(self, name: str, T: int, **params) -> bool:
        try:
            self.schedule = make_schedule(name, T, **params)
        except ValueError as error:   # keep the last valid schedule and say why
            self.status.value = f"<span style='color:#b00'>{error}</span>"
            return False
        self.status.value = ""
        return True

    def _on_schedule(self, change):
        if self._busy:
            return
        if self._set_schedule(change["new"], self.schedule.T):
            self._build_param_sliders()
            self._recompute_curves()
            self._update()

    def _on_param(self, change):
        if self._busy:
            return
        params = {name: slider.value for name, slider in self.param_sliders.items()}
        if self._set_schedule(self.schedule.name, self.schedule.T, **params):
            self._recompute_curves()
            self._update()

    def _on_T(self, change):
        if self._busy:
            return
        old_T, new_T = self.schedule.T, change["new"]
        if not self._set_schedule(self.schedule.name, new_T):
            return
        self._busy = True
        try:
            self.t = round(self.t * new_T / old_T)
            # Order matters: a max below the current value would clamp the value first.
            if new_T >= self.t_slider.max:
                self.t_slider.max = new_T
                self.t_slider.value = self.t
            else:
                self.t_slider.value = self.t
                self.t_slider.max = new_T
            self._build_param_sliders()
        finally:
            self._busy = False
        self._recompute_curves()
        self._update()

    def _on_t(self, change):
        if self._busy:
            return
        self.t = change["new"]
        self._update()


def noise_explorer(dataset="toyseg", index: int = 0, schedule: str = "hoogeboom-cosine", T: int = 1000,
                   t: int | None = None, seed: int = 0, **kwargs) -> NoiseExplorer:
    """The noise explorer: map ``index`` of ``dataset``'s test split (``"toyseg"``, ``"digits"``
    or a dataset object) under ``schedule`` with ``T`` steps, shown at ``t`` (default ``T // 2``);
    ``seed`` fixes the coupled noise. ``kwargs``: ``max_T`` (the T slider's end, 4000), ``x0``
    (a map ``[H, W]`` to use instead of the test split's). Display it as the last line of a cell.

    Raises:
        ValueError: an unknown dataset or schedule (naming it), or ``T``, ``t``, ``index`` out of range.
    """
    return NoiseExplorer(dataset, index=index, schedule=schedule, T=T, t=t, seed=seed, **kwargs)


# ---------------------------------------------------------------------------------------------
# The posterior explorer.
# ---------------------------------------------------------------------------------------------


class PosteriorExplorer(_StaticView, widgets.VBox):
    """A bar chart of ``q(x_{t-1} | x_t, x_0)`` (eq. 13); build with :func:`posterior_explorer`.

    Controls: ``x0_dropdown`` (description ``"x_0"``) and ``xt_dropdown`` (``"x_t"``), whose values
    are class indices, and ``t_slider`` (``"step t"``, 1 .. T). ``output`` shows the figure.

    Current data: ``schedule``, ``probs`` (float64 numpy ``[K]``, the posterior, via
    :func:`~mdiff_lite.diffusion.q_posterior`), ``likelihood`` and ``prior`` (its two factors,
    ``q(x_t | x_{t-1} = k)`` and ``q(x_{t-1} = k | x_0)``, each normalised to sum to 1 for the
    picture), ``bars`` (the BarContainer of the posterior), ``png``, ``figure``, ``last_update_ms``.
    """

    def __init__(self, dataset="toyseg", schedule: str = "hoogeboom-cosine", T: int = 1000,
                 x0_class: int = 0, xt_class: int = 1, t: int | None = None):
        self.dataset = _resolve_dataset(dataset)
        K = self.dataset.num_classes
        self.schedule = make_schedule(_check_schedule_name(schedule), _check_int(T, 1, 100_000, "T"))
        T = self.schedule.T
        t = max(1, T // 10) if t is None else _check_int(t, 1, T, "t")
        x0_class = _check_int(x0_class, 0, K - 1, "x0_class")
        xt_class = _check_int(xt_class, 0, K - 1, "xt_class")
        options = [(f"{k}: {name}", k) for k, name in enumerate(self.dataset.class_names)]
        self.x0_dropdown = widgets.Dropdown(options=options, value=x0_class, description="x_0")
        self.xt_dropdown = widgets.Dropdown(options=options, value=xt_class, description="x_t")
        self.t_slider = widgets.IntSlider(value=t, min=1, max=T, description="step t", continuous_update=True,
                                          layout=widgets.Layout(width="60%"))
        self.output = widgets.Output()

        self._canvas = _Canvas(figsize=(9, 2.7), dpi=80)
        self.figure = self._canvas.figure
        ax = self._ax = self.figure.add_axes((0.06, 0.27, 0.64, 0.6))
        colors = [to_rgb(c) for c in self.dataset.colors]
        self.bars = ax.bar(np.arange(K), np.zeros(K), color=colors, edgecolor="0.4", linewidth=0.6,
                           label="q(xₜ₋₁ | xₜ, x₀), eq. 13")
        self._likelihood_line, = ax.plot(np.arange(K), np.zeros(K), "v", color="0.15", ms=5,
                                         label="q(xₜ | xₜ₋₁) as a function of xₜ₋₁,\nnormalised (eq. 11)")
        self._prior_line, = ax.plot(np.arange(K), np.zeros(K), "^", color="C3", ms=5,
                                    label="q(xₜ₋₁ | x₀) (eq. 12 at t - 1)")
        short = [name if len(name) <= 10 else name[:9] + "." for name in self.dataset.class_names]
        ax.set_xticks(np.arange(K), short, rotation=40 if K <= 8 else 90, ha="right" if K <= 8 else "center",
                      fontsize=7)
        ax.set_xlabel("class of xₜ₋₁", fontsize=8, labelpad=1)
        ax.set_ylabel("probability", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_xlim(-0.6, K - 0.4)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.02, 0.5))
        self._canvas.animate(*self.bars, self._likelihood_line, self._prior_line, ax.title)
        self._update()

        for control in (self.x0_dropdown, self.xt_dropdown, self.t_slider):
            control.observe(lambda change: self._update(), "value")
        super().__init__([widgets.HBox([self.x0_dropdown, self.xt_dropdown]), self.t_slider, self.output])

    def _update(self):
        start = time.perf_counter()
        s, K, t = self.schedule, self.dataset.num_classes, self.t_slider.value
        x0 = torch.zeros(K, dtype=torch.float64)
        x0[self.x0_dropdown.value] = 1
        x_t = torch.zeros(K, dtype=torch.float64)
        x_t[self.xt_dropdown.value] = 1
        self.probs = q_posterior(x_t, x0, t, s).numpy()
        likelihood = s.alphas[t] * x_t + s.betas[t] / K
        prior = s.alpha_bars[t - 1] * x0 + s.one_minus_alpha_bars[t - 1] / K
        self.likelihood = (likelihood / likelihood.sum()).numpy()
        self.prior = prior.numpy()
        for bar, p in zip(self.bars, self.probs):
            bar.set_height(p)
        self._likelihood_line.set_ydata(self.likelihood)
        self._prior_line.set_ydata(self.prior)
        names = self.dataset.class_names
        self._ax.set_title(f"t = {t}: xₜ = {names[self.xt_dropdown.value]}, x₀ = {names[self.x0_dropdown.value]}"
                           f"  →  P(xₜ₋₁ = xₜ) = {self.probs[self.xt_dropdown.value]:.3f}, "
                           f"P(xₜ₋₁ = x₀) = {self.probs[self.x0_dropdown.value]:.3f}", fontsize=8)
        self.png = self._canvas.render()
        _show_png(self.output, self.png, f"posterior explorer: t = {t}")
        self.last_update_ms = (time.perf_counter() - start) * 1e3


def posterior_explorer(dataset="toyseg", schedule: str = "hoogeboom-cosine", T: int = 1000,
                       x0_class: int = 0, xt_class: int = 1, t: int | None = None) -> PosteriorExplorer:
    """The posterior explorer for ``dataset``'s classes (``"toyseg"``, ``"digits"`` or a dataset
    object) under ``schedule`` with ``T`` steps, starting at ``x_0 = x0_class``,
    ``x_t = xt_class`` and ``t`` (default ``T // 10``).

    Raises:
        ValueError: an unknown dataset or schedule (naming it), a class or ``t`` out of range.
    """
    return PosteriorExplorer(dataset, schedule=schedule, T=T, x0_class=x0_class, xt_class=xt_class, t=t)
