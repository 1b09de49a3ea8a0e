"""Categorical maps to model: a toy street scene with an exact likelihood, digits, permuted labels.

The paper's segmentation benchmark (Cityscapes, 32 x 64, 8 classes) cannot ship with the course.
A toy dataset whose distribution is known exactly does more for a reader: every model's bits per
pixel can be held against the true entropy, the floor no model can beat. A small real dataset
(digits) shows the same method on data nobody designed. Three datasets, one surface:

- :class:`ToySegmentation`: procedural street scenes, K = 8 classes, exact ``log_prob`` and
  ``entropy_bits_per_pixel``, and exact ``posterior`` marginals of its pixels given evidence about
  each of them (from which :class:`mdiff_lite.models.OracleDenoiser` builds the best denoiser there is).
- :class:`Digits`: scikit-learn's bundled 8 x 8 digits, whose 17 grey levels are 17 classes
  (:func:`bin_levels` merges them into fewer).
- :class:`PermutedLabels`: any of the two with its class ids shuffled by a fixed permutation.
  Multinomial diffusion treats classes as unordered and is blind to it; a model that treats class
  ids as ordered values (a dequantization flow) is not.

And one corpus of text, for notebook 07: :class:`TextCorpus`, English Wikipedia cleaned as text8
was (27 symbols, split by position, sequences of 256 characters), with the exact cross-entropies
of the uniform code and of unigram and bigram frequencies (``reference_bits``).

The map datasets have ``num_classes``, ``class_names``, ``colors`` (one fixed colour per class, as hex strings;
:mod:`mdiff_lite.plots` draws with them), ``height``, ``width`` and ``split(name)`` returning a
``LongTensor[n, height, width]`` of class ids. This module knows nothing of diffusion.

Taught in notebook 04 (the maps that noise eats); notebook 05 trains on them and notebook 06
holds bits per pixel against ``entropy_bits_per_pixel`` and compares :class:`PermutedLabels`.
"""

from __future__ import annotations

import bz2
import functools
import html
import math
import numbers
import os
import re
from dataclasses import dataclass
from importlib import metadata
from xml.etree import ElementTree

import numpy as np
import torch
from sklearn.datasets import load_digits

__all__ = [
    "ToySegmentation", "Variable", "TOY_CLASS_NAMES", "TOY_COLORS",
    "Digits", "bin_levels", "PermutedLabels", "DATASET_NAMES", "dataset_by_name", "unseen_windows",
    "TEXT_ALPHABET", "TEXT_SPLIT_NAMES", "clean_wikitext", "TextCorpus",
]

SKY, BUILDING, WINDOW, ROAD, SIDEWALK, VEGETATION, CAR, PERSON = range(8)
TOY_CLASS_NAMES = ("sky", "building", "window", "road", "sidewalk", "vegetation", "car", "person")
# Cityscapes colours where Cityscapes has the class, so the figures read like the paper's.
TOY_COLORS = ("#4682b4", "#464646", "#f5d35a", "#804080", "#f423e8", "#6b8e23", "#00008e", "#dc143c")

SPLIT_NAMES = ("train", "test")


# ---------------------------------------------------------------------------------------------
# Checks at the boundary.
# ---------------------------------------------------------------------------------------------


def _check_count(n, name: str = "n") -> int:
    if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {name} = {n!r}")
    return int(n)


def _check_split_name(name) -> None:
    if name not in SPLIT_NAMES:
        raise ValueError(f"split name must be 'train' or 'test', got {name!r}")


def _check_maps(maps, height: int, width: int) -> torch.Tensor:
    """``maps`` as a LongTensor ``[n, height, width]``; any integer dtype is accepted."""
    if not isinstance(maps, torch.Tensor):
        raise TypeError(f"maps must be a torch.Tensor of class ids, got {type(maps).__name__}")
    if maps.dtype == torch.bool or maps.is_floating_point() or maps.is_complex():
        raise ValueError(f"maps must be an integer tensor of class ids, got dtype {maps.dtype}")
    if maps.ndim != 3 or tuple(maps.shape[1:]) != (height, width):
        raise ValueError(f"maps must have shape [n, {height}, {width}], got {tuple(maps.shape)} "
                         f"(a single map needs a leading axis: maps[None])")
    return maps.long()


# ---------------------------------------------------------------------------------------------
# The toy street scene.
#
# A scene is a handful of independent choices (the variables): the horizon row, the depth of the
# sidewalk, one building per 8-column lot, one person, tree or bush per 4-column stretch of the
# sidewalk, one car per 8-column slot of each lane. Every value of every variable draws a small
# patch ("stamp") at a place fixed by the variable and the horizon; later stamps cover earlier ones.
# Rendering is injective by design: people and trees only cover the lowest rows of a building,
# and a building says everything about itself (outline, windows, roof) above those rows. So a map
# can be decoded back into its choices, and
#     log p(map) = sum of the log-probabilities of the decoded choices
# when re-rendering the choices gives the map back, -inf otherwise (the map is not in the
# support). The entropy is the sum of the variables' entropies: exact, no Monte Carlo.
# ---------------------------------------------------------------------------------------------

BUILDING_LOT = 8   # columns per building variable
SIDEWALK_LOT = 4   # columns per person/tree/bush variable
CAR_SLOT = 8       # columns per car variable

# (name, weight): weights within a variable are relative; they make the distribution non-uniform.
ROOFS = (("flat", 0.35), ("gable", 0.20), ("tower", 0.15), ("chimney", 0.10), ("antenna", 0.20))
FACADES = (("grid", 0.30), ("grid shifted", 0.15), ("ribbon", 0.20), ("pairs", 0.10), ("columns", 0.10),
           ("blank", 0.15))
SIDEWALK_KINDS = (("empty", 0.30), ("person", 0.12), ("child", 0.05), ("walker", 0.08), ("arms out", 0.04),
                  ("arm up", 0.04), ("tree", 0.25), ("bush", 0.12))
# A car facing right, drawn by its top row ("-" nothing, "w" window, "c" car) over a full-length body.
CAR_KINDS = (("empty", 0.25, ""), ("compact", 0.15, "-wc-"), ("sedan", 0.20, "-wwc-"), ("hatchback", 0.10, "cwwc-"),
             ("van", 0.10, "cwwwc-"), ("pickup", 0.08, "---wc-"), ("truck", 0.07, "cccc-wc"), ("bus", 0.05, "cwwcwwcw"))
SMALL_CARS = ("compact", "sedan")   # the only ones drawn when a lane is 2 rows high


@dataclass(frozen=True, eq=False)
class Variable:
    """One independent choice of the generator.

    Attributes:
        name: e.g. ``"horizon"``, ``"building 2"``, ``"car near 0"``.
        values: a readable description of each value, e.g. ``("sedan", 2, "left")`` (kind,
            column offset in its slot, facing); ``values[i]`` has probability ``probs[i]``.
        probs: float64 tensor of the values' probabilities, summing to 1.
    """

    name: str
    values: tuple
    probs: torch.Tensor

    @property
    def entropy_bits(self) -> float:
        p = self.probs
        return float(-(p * torch.log2(p)).sum()) + 0.0   # + 0.0: a one-value variable has 0.0, not -0.0


@dataclass(frozen=True, eq=False)
class _Stamp:
    """How one variable draws: ``bank[value]`` is pasted with its top-left corner at
    ``(top_h * horizon + top_s * sidewalk_depth + top_c, left)``; -1 in the bank is transparent.
    ``probe`` marks the pixels of the patch no later stamp can cover; ``classes`` are the classes
    the variable draws. Decoding looks for the value that shows exactly what the map shows on the
    probe, once every class not in ``classes`` is replaced by "other"."""

    bank: torch.Tensor
    top: tuple[int, int, int]
    left: int
    probe: torch.Tensor
    classes: tuple[int, ...]
    seen: torch.Tensor   # [values, probe pixels]: what each value shows there, as _codes


@dataclass(frozen=True)
class _Layout:
    """Sizes of the construction, scaled from the map's height and width (see ``_layout``)."""

    horizons: tuple[int, ...]   # possible rows of the horizon, the first ground row
    depths: tuple[int, ...]     # possible depths of the sidewalk, in rows
    building_rows: int          # rows above the horizon open to a building and its roof
    roof_rows: int
    cover_rows: int             # rows above the horizon that people and trees can cover
    person_rows: int
    tree_rows: int
    car_rows: int
    lanes: tuple[tuple[str, tuple[int, int, int]], ...]   # (name, top row as (top_h, top_s, top_c))


def _layout(height: int, width: int) -> _Layout:
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            raise ValueError(f"{name} must be an integer, got {name} = {value!r}")
        if value < 8:
            raise ValueError(f"{name} must be at least 8 for the street-scene construction, got {name} = {value}")
    H = int(height)
    # At 32 x 32: horizon rows 15..19, sidewalk 2..4 rows deep, people 5 and trees 6 rows tall, cars
    # 3 rows, two lanes. Every size is scaled from H and rounded; 8 x 8 keeps one of most things.
    h_lo = 17 * H // 32 - H // 16
    horizons = tuple(range(h_lo, h_lo + max(1, H // 8) + 1))
    d_lo = max(1, H // 16)
    depths = tuple(range(d_lo, d_lo + H // 16 + 1))
    person_rows, tree_rows = max(2, 5 * H // 32), max(2, 6 * H // 32)
    cover_rows = max(person_rows, tree_rows) - 1
    car_rows, gap = max(2, 3 * H // 32), H // 32
    building_rows = horizons[0] - 1            # keep one row of sky above the tallest building
    near_top = H - gap - car_rows              # the near lane sits at the bottom of the map
    lowest_road = horizons[-1] + depths[-1]    # first road row when horizon and sidewalk are lowest
    if building_rows < cover_rows + 2 or near_top < lowest_road:
        raise ValueError(f"height = {height} leaves no room for buildings above the people and a lane "
                         f"below the sidewalk")
    lanes = (("near", (0, 0, near_top)),)
    if lowest_road + gap + car_rows <= near_top - 1:   # a far lane follows the horizon
        lanes = (("far", (1, 1, gap)),) + lanes
    return _Layout(horizons, depths, building_rows, max(1, H // 16), cover_rows, person_rows, tree_rows,
                   car_rows, lanes)


def _roofs(w: int, rows: int) -> list:
    """(name, weight, columns drawn in each row above the wall) for a building ``w`` columns wide."""
    out = []
    for name, weight in ROOFS:
        if name == "flat":
            out.append((name, weight, []))
        elif name == "gable":
            out.append((name, weight, [range(k, w - k) for k in range(1, rows + 1) if k < w - k]))
        elif name == "tower":
            out.append((name, weight, [range(w // 2 - 1, w // 2 + 1)] * rows))
        else:   # a one-row chimney at either end, or an antenna on any inner column
            places = (1, w - 2) if name == "chimney" else range(1, w - 1)
            tall = 1 if name == "chimney" else rows
            out += [(f"{name} {c}", weight / len(places), [[c]] * tall) for c in places]
    return out


def _window(facade: str, d: int, c: int) -> bool:
    """Is there a window ``d`` rows above the horizon, ``c`` columns into the building? Floors are
    two rows high and counted from the ground, so windows line up across the street."""
    floor = d % 2 == 0
    return {"grid": floor and c % 2 == 1, "grid shifted": floor and c % 2 == 0, "ribbon": floor,
            "pairs": floor and c % 3 != 0, "columns": c % 2 == 1, "blank": False}[facade]


def _building_patches(L: _Layout) -> list:
    """(value, weight, patch) for every building of one lot; the patch's bottom row is the row just
    above the horizon. Windows only in rows above those people and trees can cover, so that a
    building's facade is always in sight."""
    rows, out = L.building_rows, []
    for w in range(4, BUILDING_LOT + 1):
        for x0 in range(BUILDING_LOT - w + 1):
            for wall in range(L.cover_rows + 2, rows + 1):
                for roof, roof_weight, roof_cols in _roofs(w, L.roof_rows):
                    if wall + len(roof_cols) > rows:
                        continue
                    for facade, facade_weight in FACADES:
                        patch = np.full((rows, BUILDING_LOT), -1)
                        patch[rows - wall:, x0:x0 + w] = BUILDING
                        for d in range(L.cover_rows + 1, wall):   # d = wall is the top row: no windows
                            for c in range(1, w - 1):
                                if _window(facade, d, c):
                                    patch[rows - d, x0 + c] = WINDOW
                        for k, cols in enumerate(roof_cols, start=1):
                            patch[rows - wall - k, [x0 + c for c in cols]] = BUILDING
                        # Lower walls are likelier; positions and widths are uniform.
                        weight = roof_weight * facade_weight * 0.85 ** (wall - L.cover_rows)
                        out.append((("building", x0, w, wall, roof, facade), weight, patch))
    return out


def _person(kind: str, rows: int) -> np.ndarray | None:
    """A person ``rows`` tall (a child two rows less), head on top; None if too small to draw."""
    if kind in ("person", "child"):
        return np.full((rows if kind == "person" else max(2, rows - 2), 1), PERSON)
    if rows < 4:
        return None
    shape = np.full((rows, 3), -1)
    shape[:, 1] = PERSON
    shape[-1] = [PERSON, -1, PERSON]       # legs apart
    if kind == "arms out":
        shape[1] = PERSON
    elif kind == "arm up":
        shape[0, 2] = shape[1, 2] = PERSON
    return shape


def _tree(rows: int, crown_rows: int, crown_cols: int) -> np.ndarray:
    """A crown with rounded top corners on a one-column trunk."""
    shape = np.full((rows, crown_cols), -1)
    shape[:crown_rows] = VEGETATION
    if crown_rows >= 2:
        shape[0, [0, -1]] = -1
    shape[crown_rows:, (crown_cols - 1) // 2] = VEGETATION
    return shape


def _sidewalk_patches(L: _Layout) -> list:
    """(value, weight, patch) for one 4-column stretch of sidewalk; the patch's bottom row is the
    horizon row (the back edge of the sidewalk), where people and trees stand. Every shape leaves
    a column of that row uncovered, so the horizon stays in sight."""
    rows, out = L.cover_rows + 1, []
    for kind, weight in SIDEWALK_KINDS:
        if kind == "empty":
            out.append(("empty", weight, np.full((rows, SIDEWALK_LOT), -1)))
            continue
        if kind == "tree":   # two heights, two crown depths; a crown as wide as the lot needs height
            shapes = {(t, c, w): _tree(t, c, w) for t in (L.tree_rows, L.tree_rows - 1) if t >= 2
                      for c in sorted({(t + 1) // 2, t - 1}) for w in (3, 4) if w == 3 or t >= 4}
        elif kind == "bush":   # lower than a third of a tree: none when trees are 2 rows tall
            low = L.tree_rows // 3
            shapes = {(h, w): np.full((h, w), VEGETATION) for h in (low, low + 1) if low >= 1 for w in (2, 3)}
        elif kind == "arm up":
            shapes = {(side,): _person(kind, L.person_rows) for side in ("right", "left")}
            shapes = {key: s if s is None or key[0] == "right" else s[:, ::-1] for key, s in shapes.items()}
        else:
            shapes = {(): _person(kind, L.person_rows)}
        shapes = {key: s for key, s in shapes.items() if s is not None}
        choices = [(key, x0) for key, s in shapes.items() for x0 in range(SIDEWALK_LOT - s.shape[1] + 1)]
        for key, x0 in choices:
            s = shapes[key]
            patch = np.full((rows, SIDEWALK_LOT), -1)
            patch[rows - s.shape[0]:, x0:x0 + s.shape[1]] = s
            out.append(((kind, *key, x0), weight / len(choices), patch))
    return out


def _car(top: str, rows: int) -> np.ndarray:
    """A car facing right (its front is the last column): ``top`` over a body, wheels below."""
    shape = np.full((rows, len(top)), CAR)
    shape[0] = [{"-": -1, "w": WINDOW, "c": CAR}[ch] for ch in top]
    if rows >= 3:   # wheels: the underbody shows road between them
        shape[-1] = -1
        shape[-1, [1, len(top) - 2]] = CAR
    return shape


def _car_patches(L: _Layout, lane: str) -> list:
    """(value, weight, patch) for one 8-column slot of a lane. Most cars in the far lane face left,
    most in the near lane face right (traffic keeps to the right)."""
    out = []
    for kind, weight, top in CAR_KINDS:
        if kind == "empty":
            out.append(("empty", weight, np.full((L.car_rows, CAR_SLOT), -1)))
            continue
        if L.car_rows < 3 and kind not in SMALL_CARS:
            continue
        shape = _car(top, L.car_rows)
        offsets = range(CAR_SLOT - shape.shape[1] + 1)
        for facing, facing_weight in (("left", 0.75 if lane == "far" else 0.25),
                                      ("right", 0.25 if lane == "far" else 0.75)):
            for x0 in offsets:
                patch = np.full((L.car_rows, CAR_SLOT), -1)
                patch[:, x0:x0 + shape.shape[1]] = shape if facing == "right" else shape[:, ::-1]
                out.append(((kind, x0, facing), weight * facing_weight / len(offsets), patch))
    return out


def _merge_identical(entries: list) -> tuple[tuple, torch.Tensor, torch.Tensor]:
    """Values that draw the same patch are one value (their weights add up): at small sizes some
    choices cannot be told apart, and distinct values must draw distinct maps."""
    merged: dict[bytes, list] = {}
    for value, weight, patch in entries:
        key = np.ascontiguousarray(patch).tobytes()
        if key in merged:
            merged[key][1] += weight
        else:
            merged[key] = [value, weight, patch]
    values = tuple(v for v, _, _ in merged.values())
    weights = torch.tensor([w for _, w, _ in merged.values()], dtype=torch.float64)
    bank = torch.from_numpy(np.stack([p for _, _, p in merged.values()])).long()
    return values, weights / weights.sum(), bank


def _codes(patch: torch.Tensor, classes: tuple[int, ...], num_classes: int) -> torch.Tensor:
    """Class ids -> 1 + position in ``classes``, or 0 ("other") for any other id, in range or not."""
    lut = torch.zeros(num_classes + 1, dtype=torch.long)
    lut[list(classes)] = torch.arange(1, len(classes) + 1)
    inside = (patch >= 0) & (patch < num_classes)
    return lut[torch.where(inside, patch, num_classes)]


_IMPOSSIBLE = -1e200   # stands in for log 0 in ToySegmentation.posterior's sums


def _overlap_groups(rects: list, size: int) -> list:
    """Stamps (by index, in drawing order) grouped by overlapping rectangles. Each group must be
    one stamp (the base) and later stamps that meet it but not each other: the shape that
    ToySegmentation.posterior sums over."""
    owner = torch.full((size,), -1, dtype=torch.long)   # group of each pixel
    groups = []
    for i, rect in enumerate(rects):
        met = owner[rect].unique()
        met = met[met >= 0].tolist()
        if not met:
            groups.append([i])
        elif len(met) > 1 or not torch.isin(rect, rects[groups[met[0]][0]]).any() \
                or any(torch.isin(rect, rects[j]).any() for j in groups[met[0]][1:]):
            raise RuntimeError(f"stamp {i} does not just cover one other stamp: posterior() cannot sum over this layout")
        else:
            groups[met[0]].append(i)
        owner[rect] = met[0] if met else len(groups) - 1
    return groups


def _group_posterior(plan: dict, L: torch.Tensor) -> tuple[torch.Tensor, list]:
    """Sum over the values of a group of stamps (``ToySegmentation._group_plan``) given per-pixel
    log-likelihoods ``L [n, pixels, K]``: ``(log p(o on the group's pixels) [n],
    [(pixels, marginals [n, len(pixels), K]), ...])``."""
    n, K = L.shape[0], L.shape[2]
    log_w = plan["log_prior"] + L[:, plan["free"]].reshape(n, -1) @ plan["onehot"].T   # [n, base values]
    covers = []
    for cover in plan["covers"]:
        log_joint = (L[:, cover["pixels"]].reshape(n, -1) @ cover["onehot"].T).view(n, cover["patterns"], -1) \
            + cover["log_prior"]                                                          # [n, patterns, values]
        log_z = torch.logsumexp(log_joint, 2)
        log_w = log_w + log_z[:, cover["which"]]
        covers.append((cover, log_joint, log_z))
    log_z_group = torch.logsumexp(log_w, 1)
    weights = (log_w - log_z_group[:, None]).exp()
    parts = [(plan["free"], (weights @ plan["onehot"]).view(n, -1, K))]
    for cover, log_joint, log_z in covers:
        per_pattern = torch.zeros(n, cover["patterns"], dtype=torch.float64).index_add_(1, cover["which"], weights)
        joint = per_pattern[:, :, None] * (log_joint - log_z[:, :, None]).exp()
        parts.append((cover["pixels"], (joint.reshape(n, -1) @ cover["onehot"]).view(n, -1, K)))
    return log_z_group, parts


class ToySegmentation:
    """Street-scene segmentation maps with a known distribution: exact ``log_prob`` and entropy.

    A scene is drawn from independent discrete choices (``variables``): the horizon row, shared by
    the whole width; the depth of the sidewalk; one building per 8-column lot (width, offset, wall
    height, roof, window pattern), standing on the horizon, windows aligned floor by floor across the
    street; one person, tree or bush per 4-column stretch of the sidewalk, covering the foot of the
    buildings; one car per 8-column slot in each lane (kind, offset, facing); the far lane follows
    the horizon, the near lane sits at the bottom. Distinct choices draw distinct maps.

    At 32 x 32 the entropy is 0.120 bits per pixel (123 bits per map, see
    ``entropy_bits_per_pixel``); at 8 x 8 the same construction has one building, two stretches of
    sidewalk, one lane and 130 340 maps in its support, few enough to enumerate (``variables`` and
    ``render`` make that easy).

    Args:
        height, width: map size, each at least 8. Sizes of rows (horizon range, people, cars) scale
            with ``height``; the number of lots and slots with ``width``.

    Used in notebooks 04-06; ``benchmarks/data_stats.py`` times it.
    """

    num_classes = 8
    class_names = TOY_CLASS_NAMES
    colors = TOY_COLORS
    split_sizes = {"train": 20_000, "test": 1_000}

    def __init__(self, height: int = 32, width: int = 32):
        L = _layout(height, width)
        self.height, self.width = int(height), int(width)
        lots, stretches = _building_patches(L), _sidewalk_patches(L)
        specs = []   # (name, entries, top, left, probe rows from the top, classes)
        for i in range(self.width // BUILDING_LOT):
            specs.append((f"building {i}", lots, (1, 0, -L.building_rows), BUILDING_LOT * i,
                          L.building_rows - L.cover_rows, (BUILDING, WINDOW)))
        for i in range(self.width // SIDEWALK_LOT):
            specs.append((f"sidewalk {i}", stretches, (1, 0, -L.cover_rows), SIDEWALK_LOT * i,
                          L.cover_rows + 1, (VEGETATION, PERSON)))
        for lane, top in L.lanes:
            slots = _car_patches(L, lane)
            for i in range(self.width // CAR_SLOT):
                specs.append((f"car {lane} {i}", slots, top, CAR_SLOT * i, L.car_rows, (CAR, WINDOW)))

        # The horizon prefers the middle of its range; the sidewalk is most often of middle depth.
        horizon_w = torch.tensor([1.0 + min(i, len(L.horizons) - 1 - i) for i in range(len(L.horizons))],
                                 dtype=torch.float64)
        depth_w = torch.tensor([2.0 if 0 < i < len(L.depths) - 1 else 1.0 for i in range(len(L.depths))],
                               dtype=torch.float64)
        self.variables = [Variable("horizon", L.horizons, horizon_w / horizon_w.sum()),
                          Variable("sidewalk depth", L.depths, depth_w / depth_w.sum())]
        self._stamps = []
        for name, entries, top, left, probe_rows, classes in specs:
            values, probs, bank = _merge_identical(entries)
            probe = torch.zeros(bank.shape[1:], dtype=torch.bool)
            probe[:probe_rows] = True
            stamp = _Stamp(bank, top, left, probe, classes, _codes(bank, classes, self.num_classes)[:, probe])
            if len(torch.unique(stamp.seen, dim=0)) != len(values):   # a bug in the construction, not in the input
                raise RuntimeError(f"{name}: two values draw the same pixels where they are in sight")
            self.variables.append(Variable(name, values, probs))
            self._stamps.append(stamp)
        self._layout = L
        self._log_probs = [torch.log(v.probs) for v in self.variables]
        self._cdfs = [torch.cumsum(v.probs, 0) for v in self.variables]
        self._plan = None   # built by the first call of posterior()

    # -- the distribution ------------------------------------------------------------------------

    @property
    def entropy_bits_per_pixel(self) -> float:
        """The generator's exact entropy (the sum of the variables' entropies) / (H * W), in bits."""
        return sum(v.entropy_bits for v in self.variables) / (self.height * self.width)

    def sample_choices(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``LongTensor[n, len(variables)]`` of value indices, one column per variable.

        Drawn by inverse CDF from one ``torch.rand(n, len(variables))``, so the first ``m`` rows
        do not depend on ``n``: a smaller sample from the same seed is a prefix of a larger one.
        """
        n = _check_count(n)
        u = torch.rand(n, len(self.variables), generator=generator, dtype=torch.float64)
        columns = [torch.searchsorted(cdf, u[:, i].contiguous(), right=True).clamp_(max=len(cdf) - 1)
                   for i, cdf in enumerate(self._cdfs)]
        return torch.stack(columns, 1) if columns else torch.zeros(n, 0, dtype=torch.long)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``LongTensor[n, H, W]`` of maps; the same ``generator`` seed gives the same maps."""
        return self.render(self.sample_choices(n, generator))

    def split(self, name: str, n: int | None = None, seed: int = 0) -> torch.Tensor:
        """The ``"train"`` or ``"test"`` maps: ``n`` maps (default ``split_sizes[name]``: 20 000 and
        1 000) drawn from a generator seeded with ``2 * seed`` (train) or ``2 * seed + 1`` (test),
        so the two splits of a seed are independent draws and every (seed, name) is reproducible.
        With a finite support, a very likely map can appear in both."""
        _check_split_name(name)
        n = self.split_sizes[name] if n is None else _check_count(n)
        if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got seed = {seed!r}")
        generator = torch.Generator().manual_seed(2 * int(seed) + SPLIT_NAMES.index(name))
        return self.sample(n, generator)

    def log_prob(self, maps: torch.Tensor) -> torch.Tensor:
        """Exact log-probability in nats of each map: float64 ``[n]``.

        ``-inf`` for a map the generator cannot produce, class ids out of range included.
        ``maps``: an integer tensor (any integer dtype) of shape ``[n, H, W]``; another shape or a
        floating-point or bool dtype raises ``ValueError``.
        """
        maps = _check_maps(maps, self.height, self.width)
        choices = self.decode(maps)
        in_support = (self.render(choices) == maps).flatten(1).all(1)
        log_p = torch.zeros(len(maps), dtype=torch.float64)
        for i, log_probs in enumerate(self._log_probs):
            log_p += log_probs[choices[:, i]]
        return log_p.masked_fill(~in_support, -math.inf)

    # -- drawing and reading back ---------------------------------------------------------------------

    def render(self, choices: torch.Tensor) -> torch.Tensor:
        """Maps ``LongTensor[n, H, W]`` drawn from explicit choices ``LongTensor[n, len(variables)]``
        (value indices, as from :meth:`sample_choices`): background, then every stamp in turn."""
        if not isinstance(choices, torch.Tensor) or choices.dtype != torch.long:
            raise ValueError(f"choices must be a LongTensor, got {getattr(choices, 'dtype', type(choices))}")
        sizes = torch.tensor([len(v.values) for v in self.variables])
        if choices.ndim != 2 or choices.shape[1] != len(sizes):
            raise ValueError(f"choices must have shape [n, {len(sizes)}], got {tuple(choices.shape)}")
        if ((choices < 0) | (choices >= sizes)).any():
            raise ValueError("choices hold a value index outside 0 .. len(variable.values) - 1")
        return torch.cat([self._render(c) for c in choices.split(4096)]) if len(choices) else \
            torch.zeros(0, self.height, self.width, dtype=torch.long)

    def _render(self, choices: torch.Tensor) -> torch.Tensor:
        horizon = torch.tensor(self._layout.horizons)[choices[:, 0]]
        depth = torch.tensor(self._layout.depths)[choices[:, 1]]
        maps = self._background(horizon, depth)
        for i, stamp in enumerate(self._stamps):
            index = self._patch_index(stamp, horizon, depth)
            patch = stamp.bank[choices[:, 2 + i]]
            maps[index] = torch.where(patch >= 0, patch, maps[index])
        return maps

    def _background(self, horizon: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """``[n, H, W]``: sky above the horizon, then the sidewalk, then road; no stamps yet."""
        rows = torch.arange(self.height)[None, :, None]
        maps = torch.where(rows < horizon[:, None, None], SKY,
                           torch.where(rows < (horizon + depth)[:, None, None], SIDEWALK, ROAD))
        return maps.expand(len(horizon), self.height, self.width).contiguous()

    def _patch_index(self, stamp: _Stamp, horizon: torch.Tensor, depth: torch.Tensor):
        """Advanced index of every map's patch: ``maps[index]`` is ``[n, patch_rows, patch_cols]``."""
        rows, cols = stamp.bank.shape[1:]
        top_h, top_s, top_c = stamp.top
        top = top_h * horizon + top_s * depth + top_c
        return (torch.arange(len(horizon))[:, None, None], (top[:, None] + torch.arange(rows))[:, :, None],
                (stamp.left + torch.arange(cols))[None, None, :])

    def decode(self, maps: torch.Tensor) -> torch.Tensor:
        """Choices ``LongTensor[n, len(variables)]`` read back from maps: ``decode(render(c)) == c``
        for all choices ``c``. For a map outside the support it returns some valid choices (whose
        rendering differs from the map); :meth:`log_prob` relies on both facts."""
        maps = _check_maps(maps, self.height, self.width)
        L = self._layout
        # The sidewalk's first and last rows: nothing draws sidewalk elsewhere and no shape hides
        # a whole row of it.
        on_sidewalk = (maps == SIDEWALK).any(2).long()
        first = on_sidewalk.argmax(1)
        last = self.height - 1 - on_sidewalk.flip(1).argmax(1)
        h_index = (first - L.horizons[0]).clamp(0, len(L.horizons) - 1)
        d_index = (last - first + 1 - L.depths[0]).clamp(0, len(L.depths) - 1)
        horizon, depth = torch.tensor(L.horizons)[h_index], torch.tensor(L.depths)[d_index]
        columns = [h_index, d_index]
        for stamp in self._stamps:
            seen = _codes(maps[self._patch_index(stamp, horizon, depth)], stamp.classes, self.num_classes)
            # Group identical rows among the values' and the maps' probe pixels: a map in the support
            # shares its group with exactly one value. A map alone in its group gets value 0.
            _, group = torch.unique(torch.cat([stamp.seen, seen[:, stamp.probe]]), dim=0, return_inverse=True)
            value_of_group = torch.zeros(int(group.max()) + 1, dtype=torch.long)
            value_of_group[group[:len(stamp.seen)]] = torch.arange(len(stamp.seen))
            columns.append(value_of_group[group[len(stamp.seen):]])
        return torch.stack(columns, 1)

    # -- exact inference from noisy evidence -------------------------------------------------------

    def posterior(self, log_likelihood: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the generator says about a map seen through independent per-pixel noise.

        ``log_likelihood[n, y, x, k]`` is ``log p(o_yx | the map's pixel (y, x) is class k)`` for an
        observation ``o`` of each of ``n`` maps, pixels observed independently given the map (as
        eq. 12 corrupts them). Returns, exactly and in float64:

        - ``log_evidence`` ``[n]``: ``log sum_maps p(map) prod_pixels p(o_yx | map_yx)`` in nats
          (``-inf`` where no map in the support explains ``o``);
        - ``marginals`` ``[n, H, W, K]``: each pixel's posterior over classes given all of ``o``
          (meaningless where the evidence is ``-inf``).

        Sum-product over the choices: given the horizon and the sidewalk depth (15 pairs at
        32 x 32), a building and the people and trees standing in front of it are summed over
        jointly, every other stamp on its own, and the pairs are then mixed by their posterior
        weights. Computed on the CPU. ``tests/test_data.py`` checks it against the enumerated support
        of 8 x 8 maps.
        Used by :class:`mdiff_lite.models.OracleDenoiser`.
        """
        K, H, W = self.num_classes, self.height, self.width
        if not isinstance(log_likelihood, torch.Tensor) or not log_likelihood.is_floating_point():
            raise TypeError("log_likelihood must be a floating-point tensor [n, H, W, K]")
        if log_likelihood.ndim != 4 or tuple(log_likelihood.shape[1:]) != (H, W, K):
            raise ValueError(f"log_likelihood must have shape [n, {H}, {W}, {K}], got {tuple(log_likelihood.shape)}")
        if torch.isnan(log_likelihood).any() or (log_likelihood == math.inf).any():
            raise ValueError("log_likelihood holds NaN or +inf")
        if len(log_likelihood) > 128:   # in pieces: the sums' temporaries grow with the number of maps
            pieces = [self.posterior(piece) for piece in log_likelihood.split(128)]
            return torch.cat([e for e, _ in pieces]), torch.cat([m for _, m in pieces])
        n = log_likelihood.shape[0]
        # One-hot matrix products sum log-likelihoods; -inf would turn 0 * -inf into NaN there, so an
        # impossible class gets a finite stand-in that still sends exp() to 0, and -inf comes back at
        # the end.
        L = log_likelihood.detach().cpu().double().clamp(min=_IMPOSSIBLE).reshape(n, H * W, K)
        best = torch.full((n,), -math.inf, dtype=torch.float64)   # running max of the log weights
        total = torch.zeros(n, dtype=torch.float64)               # sum of exp(log weight - best)
        marginals = torch.zeros(n, H * W, K, dtype=torch.float64)
        done = {}   # a group's sums, shared by the (horizon, depth) pairs that place it alike
        for (log_prior, background, free, groups) in self._posterior_plan():
            log_w = log_prior + L[:, free].gather(2, background[free].expand(n, -1).unsqueeze(2)).sum((1, 2))
            margin = torch.nn.functional.one_hot(background, K).double().expand(n, H * W, K).clone()
            for key, plan in groups:
                if key not in done:
                    done[key] = _group_posterior(plan, L)
                log_z, parts = done[key]
                log_w = log_w + log_z
                for pixels, probs in parts:
                    margin[:, pixels] = probs
            # Mix the pairs by their posterior weights, one pair at a time (a running log-sum-exp).
            new_best = torch.maximum(best, log_w)
            scale_old, scale_new = (best - new_best).exp(), (log_w - new_best).exp()
            total = total * scale_old + scale_new
            marginals = marginals * scale_old[:, None, None] + margin * scale_new[:, None, None]
            best = new_best
        log_evidence = best + total.log()
        log_evidence = torch.where(log_evidence < _IMPOSSIBLE / 2, -math.inf, log_evidence)
        return log_evidence, (marginals / total[:, None, None]).view(n, H, W, K)

    def _posterior_plan(self) -> list:
        """What :meth:`posterior` sums over, worked out once: for each (horizon, depth) pair its log
        prior, background, pixels outside every stamp, and its groups of stamps (see ``_group_plan``),
        each with a key that is equal for groups placed alike over the same background."""
        if self._plan is None:
            H, W = self.height, self.width
            plan, plans_by_key, one_hots = [], {}, {}
            for i_h, horizon in enumerate(self._layout.horizons):
                for i_d, depth in enumerate(self._layout.depths):
                    h, d = torch.tensor([horizon]), torch.tensor([depth])
                    background = self._background(h, d).reshape(-1)
                    rects = []   # each stamp's rectangle as flat pixel indices
                    for stamp in self._stamps:
                        _, rows, cols = self._patch_index(stamp, h, d)
                        rects.append((rows * W + cols).reshape(-1))
                    in_stamp = torch.zeros(H * W, dtype=torch.bool)
                    groups = []
                    for group in _overlap_groups(rects, H * W):
                        pixels = torch.cat([rects[i] for i in group])
                        in_stamp[pixels] = True
                        key = (tuple(group), tuple(pixels.tolist()), background[pixels].numpy().tobytes())
                        if key not in plans_by_key:
                            plans_by_key[key] = self._group_plan(group, rects, background, one_hots)
                        groups.append((key, plans_by_key[key]))
                    log_prior = self._log_probs[0][i_h] + self._log_probs[1][i_d]
                    plan.append((log_prior, background, (~in_stamp).nonzero().squeeze(1), groups))
            self._plan = plan
        return self._plan

    def _group_plan(self, group: list, rects: list, background: torch.Tensor, one_hots: dict) -> dict:
        """One stamp (the base) and the stamps drawn over it (the covers, which do not meet each
        other), as one-hot matrices: what each base value shows on the pixels no cover reaches, and
        for each cover, what each of its values shows over each distinct pattern the base leaves
        under it (few patterns among a building's thousands of values). Equal matrices are kept
        once in ``one_hots`` (every lot at every horizon draws the same buildings)."""
        K = self.num_classes

        def one_hot(classes: torch.Tensor) -> torch.Tensor:
            """``[m, pixels]`` class ids -> float64 ``[m, pixels * K]``: a matrix product with a row
            of per-pixel log-likelihoods sums them over the pixels."""
            key = (tuple(classes.shape), classes.numpy().tobytes())
            if key not in one_hots:
                one_hots[key] = torch.nn.functional.one_hot(classes, K).double().reshape(len(classes), -1)
            return one_hots[key]

        base, covers = group[0], group[1:]
        bank = self._stamps[base].bank.reshape(len(self._stamps[base].bank), -1)
        rect = rects[base]
        covered = torch.zeros(len(rect), dtype=torch.bool)
        for j in covers:
            covered |= torch.isin(rect, rects[j])
        free = rect[~covered]
        shown = torch.where(bank[:, ~covered] >= 0, bank[:, ~covered], background[free])
        plan = {"free": free, "onehot": one_hot(shown), "log_prior": self._log_probs[2 + base],
                "covers": []}
        for j in covers:
            pixels = rects[j]
            inside = torch.isin(pixels, rect)
            under = torch.full((len(bank), len(pixels)), -1, dtype=torch.long)
            under[:, inside] = bank[:, (pixels[inside][:, None] == rect[None]).long().argmax(1)]
            patterns, which = torch.unique(under, dim=0, return_inverse=True)
            patterns = torch.where(patterns >= 0, patterns, background[pixels])
            cover_bank = self._stamps[j].bank.reshape(len(self._stamps[j].bank), -1)
            drawn = torch.where(cover_bank[None] >= 0, cover_bank[None], patterns[:, None])   # [patterns, values, px]
            plan["covers"].append({"pixels": pixels, "which": which, "patterns": len(patterns),
                                   "onehot": one_hot(drawn.reshape(-1, len(pixels))),
                                   "log_prior": self._log_probs[2 + j]})
        return plan

    def __repr__(self) -> str:
        return (f"ToySegmentation(height={self.height}, width={self.width}): {len(self.variables)} variables, "
                f"{self.entropy_bits_per_pixel:.4f} bits per pixel")


# ---------------------------------------------------------------------------------------------
# Judging samples without a likelihood: windows no training map contains.
# ---------------------------------------------------------------------------------------------


def _window_codes(maps: torch.Tensor, num_classes: int, size: int) -> np.ndarray:
    """Every ``size x size`` window of every map (stride 1) as one integer, base ``num_classes``:
    int64 ``[n, windows per map]``."""
    windows = maps.unfold(1, size, 1).unfold(2, size, 1).reshape(len(maps), -1, size * size)
    place = torch.tensor([num_classes ** i for i in range(size * size)], dtype=torch.long)
    return (windows * place).sum(-1).numpy()


def unseen_windows(reference: torch.Tensor, num_classes: int, size: int = 4):
    """A judge of samples: ``share = unseen_windows(train_maps, K); share(maps)`` is, for each map,
    the fraction of its ``size x size`` windows (every position, stride 1) that occur nowhere in
    ``reference``: a FloatTensor ``[n]``.

    A likelihood is a harsh judge of samples from the toy generator (one pixel off and a map is
    impossible); this one counts how much of a sample is locally new. Real test maps score about
    0; a single wrong pixel makes up to ``size^2`` unseen windows. The reference's windows are
    indexed once, so judging many sets of samples against the same training maps is cheap.
    ``num_classes ** (size * size)`` must fit in 63 bits (the windows are coded as integers).

    ``share.where(maps)`` says which windows are unseen: a BoolTensor ``[n, height - size + 1,
    width - size + 1]``, entry ``[i, y, x]`` for the window whose top-left pixel is ``(y, x)``
    (notebook 05 marks them on the samples).
    """
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if size * size * math.log2(num_classes) > 63:
        raise ValueError(f"{size} x {size} windows of {num_classes} classes do not fit in an int64 code; "
                         "use smaller windows")
    if not isinstance(reference, torch.Tensor) or reference.ndim != 3:
        raise ValueError(f"reference must be maps [n, height, width], got {getattr(reference, 'shape', reference)!r}")
    reference = _check_maps(reference, *reference.shape[1:]).cpu()
    if reference.numel() and (reference.min() < 0 or reference.max() >= num_classes):
        raise ValueError(f"reference maps hold class ids outside 0..{num_classes - 1}")
    height, width = reference.shape[1:]
    if size > min(height, width):
        raise ValueError(f"{size} x {size} windows do not fit in {height} x {width} maps")
    seen = np.unique(np.concatenate([np.unique(_window_codes(part, num_classes, size))
                                     for part in reference.split(1000)]))

    def where(maps: torch.Tensor) -> torch.Tensor:
        maps = _check_maps(maps, height, width).cpu()
        if maps.numel() and (maps.min() < 0 or maps.max() >= num_classes):
            raise ValueError(f"maps hold class ids outside 0..{num_classes - 1}")
        codes = _window_codes(maps, num_classes, size)
        unseen = torch.from_numpy(~np.isin(codes, seen, assume_unique=False))
        return unseen.reshape(len(maps), height - size + 1, width - size + 1)

    def share(maps: torch.Tensor) -> torch.Tensor:
        return where(maps).flatten(1).float().mean(1)

    share.where = where
    return share


# ---------------------------------------------------------------------------------------------
# Digits.
# ---------------------------------------------------------------------------------------------

DIGIT_LEVELS = 17   # grey levels 0 (paper) .. 16 (full ink) of scikit-learn's digits


def bin_levels(maps: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Merge the 17 grey levels of the digits into ``num_classes`` classes of equal width.

    Level ``l`` goes to class ``l * num_classes // 17``: classes keep the order of the levels, hold
    ``floor(17 / K)`` or ``ceil(17 / K)`` levels each, and level 0 (blank paper) stays class 0,
    level 16 (full ink) class ``K - 1``. ``num_classes = 17`` is the identity.

    Args:
        maps: integer tensor of levels in 0..16, any shape.
        num_classes: 2..17.
    Returns: LongTensor of the same shape.
    """
    if not isinstance(num_classes, numbers.Integral) or isinstance(num_classes, bool) \
            or not 2 <= num_classes <= DIGIT_LEVELS:
        raise ValueError(f"num_classes must be an integer in 2..{DIGIT_LEVELS}, got num_classes = {num_classes!r}")
    if not isinstance(maps, torch.Tensor) or maps.dtype == torch.bool or maps.is_floating_point() \
            or maps.is_complex():
        raise ValueError(f"maps must be an integer tensor of grey levels, got {getattr(maps, 'dtype', type(maps))}")
    if maps.numel() and (maps.min() < 0 or maps.max() >= DIGIT_LEVELS):
        raise ValueError(f"grey levels must lie in 0..{DIGIT_LEVELS - 1}, "
                         f"found {maps.min().item()}..{maps.max().item()}")
    return maps.long() * int(num_classes) // DIGIT_LEVELS


class Digits:
    """scikit-learn's 1 797 handwritten digits as 8 x 8 categorical maps; no download.

    Each of the 17 grey levels is a class (``num_classes = 17``), or :func:`bin_levels` merges them
    into fewer. The split is fixed: the last 297 images are the test set, the first 1 500 the
    training set. The true distribution is unknown, so there is no ``log_prob``.

    Args:
        num_classes: 2..17.

    Used in notebook 04 (noise on digits) and notebook 06.
    """

    height = width = 8
    num_test = 297

    def __init__(self, num_classes: int = DIGIT_LEVELS):
        digits = load_digits()
        self._maps = bin_levels(torch.from_numpy(digits.images.astype(np.int64)), num_classes)
        self._labels = torch.from_numpy(digits.target.astype(np.int64))
        self.num_classes = K = int(num_classes)
        names = []
        for c in range(K):
            lo, hi = -(-DIGIT_LEVELS * c // K), -(-DIGIT_LEVELS * (c + 1) // K) - 1   # levels of class c
            names.append(f"level {lo}" if lo == hi else f"levels {lo}-{hi}")
        self.class_names = tuple(names)
        # Paper white to ink black: the order of the classes is the order of the grey levels.
        self.colors = tuple("#{0:02x}{0:02x}{0:02x}".format(round(255 * (1 - c / (K - 1)))) for c in range(K))

    def split(self, name: str) -> torch.Tensor:
        """``LongTensor[n, 8, 8]``: 1 500 training maps or 297 test maps."""
        return self._maps[self._rows(name)].clone()

    def labels(self, name: str) -> torch.Tensor:
        """Which digit (0-9) each map of the split shows, in the order of :meth:`split`."""
        return self._labels[self._rows(name)].clone()

    def _rows(self, name: str) -> slice:
        _check_split_name(name)
        cut = len(self._maps) - self.num_test
        return slice(0, cut) if name == "train" else slice(cut, None)

    def __repr__(self) -> str:
        return f"Digits(num_classes={self.num_classes})"


# ---------------------------------------------------------------------------------------------
# Permuted labels.
# ---------------------------------------------------------------------------------------------


class PermutedLabels:
    """A dataset whose class ids are shuffled by a fixed random permutation.

    Class ``k`` of ``base`` becomes class ``permutation[k]``; ``inverse`` undoes it. Names and
    colours move with the ids, so a permuted map is drawn exactly as the original. The
    distribution is the same up to relabelling: same entropy, and ``log_prob(permute(x)) ==
    base.log_prob(x)``. Multinomial diffusion is blind to the permutation; a model that reads
    class ids as ordered values is not (notebook 06 measures it).

    Args:
        base: a dataset of this module.
        seed: seeds the permutation; a permutation that happens to be the identity is redrawn.
    """

    def __init__(self, base, seed: int = 0):
        if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got seed = {seed!r}")
        self.base = base
        K = base.num_classes
        generator = torch.Generator().manual_seed(seed)
        permutation = torch.randperm(K, generator=generator)
        while K > 1 and torch.equal(permutation, torch.arange(K)):
            permutation = torch.randperm(K, generator=generator)
        self.permutation = permutation
        self.inverse = torch.argsort(permutation)
        self.class_names = tuple(base.class_names[k] for k in self.inverse.tolist())
        self.colors = tuple(base.colors[k] for k in self.inverse.tolist())

    num_classes = property(lambda self: self.base.num_classes)
    height = property(lambda self: self.base.height)
    width = property(lambda self: self.base.width)

    def permute(self, maps: torch.Tensor) -> torch.Tensor:
        """Base class ids -> permuted ids (ids must be in range)."""
        return self.permutation[maps]

    def unpermute(self, maps: torch.Tensor) -> torch.Tensor:
        """Permuted ids -> base ids; an id out of range stays out of range (it becomes -1)."""
        K = self.num_classes
        inside = (maps >= 0) & (maps < K)
        return torch.where(inside, self.inverse[maps.clamp(0, K - 1)], -1)

    def split(self, name: str, *args, **kwargs) -> torch.Tensor:
        """The base's split, relabelled; arguments as for the base's ``split``."""
        return self.permute(self.base.split(name, *args, **kwargs))

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """The base's samples, relabelled (the base must have ``sample``)."""
        return self.permute(self.base.sample(n, generator))

    def log_prob(self, maps: torch.Tensor) -> torch.Tensor:
        """The base's exact log-probability of the relabelled-back maps (the base must have it)."""
        maps = _check_maps(maps, self.height, self.width)
        return self.base.log_prob(self.unpermute(maps))

    @property
    def entropy_bits_per_pixel(self) -> float:
        """Unchanged by relabelling."""
        return self.base.entropy_bits_per_pixel

    def __repr__(self) -> str:
        return f"PermutedLabels({self.base!r}, permutation={self.permutation.tolist()})"


# ---------------------------------------------------------------------------------------------
# By name, for the command line and for checkpoints' metadata.
# ---------------------------------------------------------------------------------------------

DATASET_NAMES = ("toyseg", "digits")


def dataset_by_name(name: str, permute_seed: int | None = None):
    """``"toyseg"``: ``ToySegmentation(32, 32)``; ``"digits"``: ``Digits()`` (17 classes).
    With ``permute_seed``, wrapped in :class:`PermutedLabels`."""
    if name == "toyseg":
        ds = ToySegmentation(32, 32)
    elif name == "digits":
        ds = Digits()
    else:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    return ds if permute_seed is None else PermutedLabels(ds, permute_seed)


# ---------------------------------------------------------------------------------------------
# English text: Wikipedia cleaned as text8 was.
#
# text8 (Matt Mahoney's benchmark, the paper's text data set) is the first 10^8 characters of an
# English Wikipedia dump, cleaned by his wikifil.pl down to 27 symbols: space and a-z. The same
# source and the same recipe, at 1/30 of the size, ship offline: gensim (a dependency of the
# course) carries the first articles of an English Wikipedia dump among its test data. We read
# that file where gensim installed it and never copy it; the cleaning below is our own code.
# ---------------------------------------------------------------------------------------------

TEXT_ALPHABET = " abcdefghijklmnopqrstuvwxyz"   # class id = index: space is 0, a is 1, ..., z is 26
TEXT_SPLIT_NAMES = ("train", "valid", "test")

ENWIKI_FILE = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"

_COMMENT = re.compile(r"<!--.*?(?:-->|$)", re.S)
_REF = re.compile(r"<ref\b[^>]*?/>|<ref\b[^>]*>.*?</ref\s*>", re.S | re.I)
# Tags whose content is not English prose: LaTeX, lists of files, program code.
_NOT_PROSE = re.compile(r"<(math|chem|gallery|source|syntaxhighlight|timeline)\b[^>]*>.*?</\1\s*>", re.S | re.I)
_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")                      # innermost: no brace inside
_TABLE = re.compile(r"\{\|(?:(?!\{\||\|\}).)*\|\}", re.S)      # innermost: no table inside
_EXTERNAL_LINK = re.compile(r"\[(?:https?:|ftp:)?//[^\s\]]*\s*([^\]]*)\]", re.I)
# Innermost: a caption may hold links, and single brackets ("Bicyclo[1.1.0]butane").
_INTERNAL_LINK = re.compile(r"\[\[((?:(?!\[\[|\]\]).)*)\]\]", re.S)
_HIDDEN_NAMESPACES = ("category", "file", "image")
_LANGUAGE_CODE = re.compile(r"[a-z]{2,3}(?:-[a-z]+)*")         # de, fr, be-x-old
_BARE_URL = re.compile(r"(?:https?|ftp)://\S+", re.I)
_LINE_BREAK = re.compile(r"<br\s*/?>", re.I)
_TAG = re.compile(r"</?[a-z][^<>]*>", re.I)
_MAGIC_WORD = re.compile(r"__[A-Z]+__")
_HEADING = re.compile(r"^=+[ \t]*|[ \t]*=+[ \t]*$", re.M)
_DIGITS = str.maketrans({d: f" {word} " for d, word in zip(
    "0123456789", ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"))})
_NOT_LETTERS = re.compile(r"[^a-z]+")


def _link_text(match: re.Match) -> str:
    """What a reader sees of ``[[target|label]]``: the label, else the target; nothing of a
    category, a file or an interlanguage link. ``[[:Category:X|X]]`` (leading colon) is a plain link."""
    target, _, label = match.group(1).partition("|")
    visible = target.startswith(":")
    target = target.lstrip(":")
    prefix, colon, _ = target.partition(":")
    prefix = prefix.strip().lower()
    if colon and not visible and (prefix in _HIDDEN_NAMESPACES or (not label and _LANGUAGE_CODE.fullmatch(prefix))):
        return ""
    return label or target


def clean_wikitext(markup: str) -> str:
    """One article's wikitext -> the text a reader sees, in :data:`TEXT_ALPHABET`, as text8 was made.

    Dropped with their content: HTML comments, ``<ref>`` footnotes (paired and self-closing),
    ``<math>``, ``<chem>``, ``<gallery>``, ``<source>``, ``<syntaxhighlight>``, ``<timeline>``,
    ``{{templates}}`` and ``{| tables |}`` (nested ones from the innermost out), categories,
    files and images with their captions, interlanguage links (``[[de:...]]``), bare URLs and
    magic words (``__TOC__``). Kept without their markup: the label of ``[[target|label]]``,
    the target of ``[[target]]``, the label of ``[http://url label]``, the content of other HTML
    tags, the words of ``== headings ==`` and of ``''italic''`` and ``'''bold'''``. Then HTML
    entities are unescaped, letters lowercased, digits spelt out (``"42"`` -> ``" four two "``),
    every other character becomes a space, and runs of spaces one space, none at either end.

    Unbalanced markup is not repaired: what is left of it becomes spaces.
    """
    if not isinstance(markup, str):
        raise TypeError(f"markup must be a str of wikitext, got {type(markup).__name__}")
    text = _COMMENT.sub("", markup)
    text = _REF.sub("", text)
    text = _NOT_PROSE.sub("", text)
    # A template may hold a table and a table templates: strip whichever is innermost, until none.
    while True:
        text, templates = _TEMPLATE.subn("", text)
        text, tables = _TABLE.subn("", text)
        if templates == tables == 0:
            break
    text = _EXTERNAL_LINK.sub(r"\1", text)
    links = 1
    while links:
        text, links = _INTERNAL_LINK.subn(_link_text, text)
    text = _BARE_URL.sub("", text)
    text = _LINE_BREAK.sub(" ", text)
    text = _TAG.sub("", text)
    text = _MAGIC_WORD.sub("", text)
    text = text.replace("'''", "").replace("''", "")
    text = _HEADING.sub("", text)
    text = html.unescape(text).lower().translate(_DIGITS)
    return _NOT_LETTERS.sub(" ", text).strip()


def _enwiki_path() -> str:
    """Where gensim installed its Wikipedia dump; found without importing gensim (slow to import)."""
    try:
        gensim = metadata.distribution("gensim")
    except metadata.PackageNotFoundError:
        raise ModuleNotFoundError("TextCorpus reads an English Wikipedia dump shipped inside gensim, which "
                                  "is not installed: pip install gensim (make install does)") from None
    path = gensim.locate_file(ENWIKI_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"gensim {gensim.version} does not ship {ENWIKI_FILE}; TextCorpus was built "
                                f"against gensim 4.4.0")
    return os.fspath(path)


@functools.lru_cache(maxsize=None)
def _enwiki_text(path: str) -> str:
    """The articles of the dump (namespace 0, no redirects) in file order, each cleaned by
    :func:`clean_wikitext`, joined by one space. Cached per process: cleaning takes seconds."""
    articles = []
    with bz2.open(path) as dump:
        for _, element in ElementTree.iterparse(dump):
            if element.tag.rpartition("}")[2] != "page":
                continue
            if element.findtext("{*}ns") == "0" and element.find("{*}redirect") is None:
                text = clean_wikitext(element.findtext("{*}revision/{*}text") or "")
                if text:
                    articles.append(text)
            element.clear()   # keep memory flat: the pages already read are not needed
    return " ".join(articles)


_TEXT_IDS = np.full(128, -1, dtype=np.int64)   # ASCII code -> class id, -1 outside the alphabet
_TEXT_IDS[[ord(c) for c in TEXT_ALPHABET]] = np.arange(len(TEXT_ALPHABET))


class TextCorpus:
    """English Wikipedia, cleaned as text8 was: 27 symbols, split by position.

    The paper's text data set is text8, the first 10^8 characters of English Wikipedia cleaned to
    space and a-z. The same source, cleaned by the same recipe (:func:`clean_wikitext`), ships
    offline inside a maintained package: gensim 4.4.0's test data hold the first 106 articles of a
    2016 English Wikipedia dump (Anarchism, Autism, Albedo, ..., Algorithm), which we read where
    gensim installed it and never redistribute. The articles' text is Wikipedia's, under CC BY-SA
    3.0 and the GFDL; gensim itself is LGPL-2.1.

    Cleaned, the articles make 2 956 564 characters (text8 has 10^8). By position, no shuffling, the
    cuts rounded to the nearest character: ``train`` is the first 90 % (2 660 908 characters),
    ``valid`` the next 5 % (147 828), ``test`` the last 5 % (147 828); with the default
    ``length = 256`` that is 10 394, 577 and 577 sequences. The cuts fall inside articles, as
    text8's usual 90/5/5 cut does. The text is read and cleaned once per process (about 2 s).

    Class ids are positions in :data:`TEXT_ALPHABET`: space is 0, ``a`` 1, ..., ``z`` 26.
    :meth:`reference_bits` gives the yardsticks a model's bits per character is held against.

    Args:
        length: characters per sequence of :meth:`split`, at least 2.
        fractions: shares of train, valid and test, positive and summing to 1.

    Taught in notebook 07.
    """

    name = "enwiki"
    num_classes = len(TEXT_ALPHABET)
    class_names = tuple(TEXT_ALPHABET)

    def __init__(self, length: int = 256, fractions=(0.90, 0.05, 0.05)):
        if isinstance(length, bool) or not isinstance(length, numbers.Integral) or length < 2:
            raise ValueError(f"length must be an integer >= 2, got length = {length!r}")
        try:
            fractions = tuple(fractions)
        except TypeError:
            raise ValueError(f"fractions must be three numbers (train, valid, test), got {fractions!r}") from None
        if len(fractions) != 3 or any(isinstance(f, bool) or not isinstance(f, numbers.Real) or not f > 0
                                      for f in fractions) or not math.isclose(math.fsum(fractions), 1.0):
            raise ValueError(f"fractions must be three positive numbers (train, valid, test) summing to 1, "
                             f"got {fractions!r}")
        self.length = int(length)
        self.fractions = tuple(float(f) for f in fractions)
        self._text = _enwiki_text(_enwiki_path())
        n = len(self._text)
        cuts = (0, round(self.fractions[0] * n), round((self.fractions[0] + self.fractions[1]) * n), n)
        self._bounds = {name: (cuts[i], cuts[i + 1]) for i, name in enumerate(TEXT_SPLIT_NAMES)}
        self._ids = self.encode(self._text)
        self._reference_bits = None

    def text(self, name: str) -> str:
        """The whole split as one string."""
        start, stop = self._split_bounds(name)
        return self._text[start:stop]

    def split(self, name: str) -> torch.Tensor:
        """``LongTensor[n, length]``: the split cut into consecutive windows of ``length``
        characters from its start; the tail shorter than ``length`` is dropped."""
        start, stop = self._split_bounds(name)
        n = (stop - start) // self.length
        return self._ids[start:start + n * self.length].view(n, self.length).clone()

    def _split_bounds(self, name) -> tuple[int, int]:
        if name not in TEXT_SPLIT_NAMES:
            raise ValueError(f"split name must be one of {', '.join(map(repr, TEXT_SPLIT_NAMES))}, got {name!r}")
        return self._bounds[name]

    @staticmethod
    def encode(text: str) -> torch.Tensor:
        """``LongTensor[len(text)]`` of class ids."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        ids = np.where(points < 128, _TEXT_IDS[np.minimum(points, 127)], -1)
        bad = np.flatnonzero(ids < 0)
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"character {text[i]!r} at position {i} is not in the alphabet (space and a-z)")
        return torch.from_numpy(ids)

    @staticmethod
    def decode(ids) -> str | list[str]:
        """Class ids ``[L]`` -> a str of ``L`` characters; ``[n, L]`` -> a list of ``n`` of them."""
        ids = torch.as_tensor(ids)
        if ids.numel() == 0:
            ids = ids.long()
        if ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
            raise ValueError(f"ids must be integer class ids, got dtype {ids.dtype}")
        if ids.ndim not in (1, 2):
            raise ValueError(f"ids must have shape [L] or [n, L], got {tuple(ids.shape)}")
        ids = ids.cpu().long().numpy()
        bad = np.flatnonzero((ids < 0) | (ids >= len(TEXT_ALPHABET)))
        if bad.size:
            raise ValueError(f"class id {ids.flat[bad[0]]} is outside 0..{len(TEXT_ALPHABET) - 1}")
        chars = np.frombuffer(TEXT_ALPHABET.encode("ascii"), dtype=np.uint8)[ids]
        if ids.ndim == 1:
            return chars.tobytes().decode("ascii")
        return [row.tobytes().decode("ascii") for row in chars]

    def reference_bits(self) -> dict:
        """Bits per character of three fitted models on the test sequences (``split("test")``):

        - ``"uniform"``: ``log2 27``, every symbol alike;
        - ``"unigram"``: each character under the character frequencies of the train text,
          add-one (Laplace) smoothed: ``(count(c) + 1) / (N + 27)``;
        - ``"bigram"``: a sequence's first character under that unigram, every later one under
          ``(count(b, c) + 1) / (count(b, .) + 27)``, pairs counted on the train text;
        - ``"n_chars"``: how many characters were scored.

        Each is an exact cross-entropy of a model fitted on the train text, not an estimate of
        one; so each bounds the text's entropy rate from above, as any model's bits per character do.
        With ``length = 256``: 4.755, 4.128 and 3.408 bits per character on 147 712 characters.
        """
        if self._reference_bits is None:
            K = self.num_classes
            start, stop = self._bounds["train"]
            train = self._ids[start:stop].numpy()
            test = self.split("test").numpy()
            unigram = np.log2((np.bincount(train, minlength=K) + 1) / (len(train) + K))
            pairs = np.bincount(train[:-1] * K + train[1:], minlength=K * K).reshape(K, K) + 1
            bigram = np.log2(pairs / pairs.sum(1, keepdims=True))
            # Counts times log-probabilities: 27 or 729 terms to add, not one per character.
            test_unigram = np.bincount(test.ravel(), minlength=K) @ unigram
            test_bigram = np.bincount(test[:, 0], minlength=K) @ unigram \
                + (np.bincount((test[:, :-1] * K + test[:, 1:]).ravel(), minlength=K * K) @ bigram.ravel())
            n = test.size
            self._reference_bits = {"uniform": math.log2(K), "unigram": float(-test_unigram / n),
                                    "bigram": float(-test_bigram / n), "n_chars": int(n)}
        return dict(self._reference_bits)

    def __repr__(self) -> str:
        return f"TextCorpus(length={self.length}, fractions={self.fractions})"
