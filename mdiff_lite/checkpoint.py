"""Checkpoint files: one format for every kind of model, denoisers (``train``) and flows (``baselines``).

A checkpoint is a ``torch.save`` dict: ``"model"``, the weights (a dict of tensors);
``"meta_json"``, the metadata as JSON (``"kind"``: ``"denoiser"``, ``"flow"``, or for text
``"text-denoiser"`` or ``"autoregressive"``; the model's config,
the dataset, how it was made and measured); and for a resumable run ``"training"``, the optimiser,
the raw weights, the random states... (tensors and plain values). Files are written atomically (a
temporary file, then ``os.replace``: a reader sees the old file or the new one, never half of one)
and read with ``torch.load(weights_only=True)``, which can build nothing but tensors and plain
containers, so opening a file cannot run code.

Every reader checks a file before building anything from it and answers a bad one with a one-line
``ValueError`` that names the file and what is wrong: empty, not a torch file, truncated, holding
something other than a checkpoint, holding another kind of model, naming a dataset that does not
exist or does not fit the model's config, or another dataset than the one asked for; a missing
file gives ``FileNotFoundError``. Files written before there was a ``"kind"`` (the shipped ones
among them) say what they hold by their config: ``model_config`` for a denoiser, ``flow_config``
for a flow.

Taught in notebook 05.
"""

from __future__ import annotations

import functools
import json
import numbers
import os
import pickle
import secrets
import zipfile
from pathlib import Path

import torch

__all__ = ["MODEL_KINDS", "kind_of", "check_meta", "write_checkpoint", "read_checkpoint", "update_meta",
           "load_weights"]

# The kinds of model a checkpoint can hold: the metadata key of each one's config, its name in
# messages, and the function that loads it.
MODEL_KINDS = {
    "denoiser": ("model_config", "a denoiser", "mdiff_lite.train.load_denoiser"),
    "flow": ("flow_config", "a dequantization flow", "mdiff_lite.baselines.load_flow"),
    # The transformers of notebook 07 keep their TransformerConfig under model_config too; their
    # files always say their kind, so the legacy guess by config key never meets them.
    "text-denoiser": ("model_config", "a text denoiser", "mdiff_lite.train.load_text_model"),
    "autoregressive": ("model_config", "an autoregressive transformer", "mdiff_lite.train.load_text_model"),
}


def kind_of(meta: dict) -> str | None:
    """What a checkpoint's metadata says it holds: its ``"kind"``, or for a file written before
    there was one, the kind whose config it carries (None when neither)."""
    if "kind" in meta:
        return meta["kind"]
    return next((kind for kind, (key, _, _) in MODEL_KINDS.items() if key in meta), None)


@functools.lru_cache(maxsize=None)
def _dataset_shape(name: str) -> tuple[int, int, int]:
    """``(num_classes, height, width)`` of a dataset, built once per process and only for the
    dataset asked about (toyseg takes half a second). Imported here, not at the top: data imports
    scikit-learn (seconds)."""
    from .data import dataset_by_name

    ds = dataset_by_name(name)
    return ds.num_classes, ds.height, ds.width


def check_meta(meta: dict, source, *, kind: str | None = None, dataset: str | None = None) -> None:
    """Refuse metadata that does not describe a model of ``kind`` (any kind if None) trained on
    ``dataset`` (any if None), with one line naming ``source``. A named dataset must exist, and the
    model's config must have its number of classes and its map size."""
    found = kind_of(meta)
    if found not in MODEL_KINDS:
        what = f"kind {found!r}" if found is not None else "no kind and no model_config or flow_config"
        raise ValueError(f"{source}: not an mdiff_lite checkpoint (its metadata has {what})")
    key, noun, loader = MODEL_KINDS[found]
    if kind is not None and found != kind:
        raise ValueError(f"{source}: holds {noun}, not {MODEL_KINDS[kind][1]}; load it with {loader}")
    config = meta.get(key)
    if not isinstance(config, dict):
        raise ValueError(f"{source}: says it holds {noun} but has no {key}")
    name, seed = meta.get("dataset"), meta.get("permute_seed")
    if dataset is not None and name != dataset:
        raise ValueError(f"{source}: holds a model of dataset {name!r}, not {dataset!r}")
    if name is None:
        return  # trained on data of the user's own: nothing to check it against
    from .data import DATASET_NAMES

    if not isinstance(name, str) or name not in DATASET_NAMES:
        raise ValueError(f"{source}: names dataset {name!r}, which does not exist (there are: "
                         f"{', '.join(DATASET_NAMES)})")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0):
        raise ValueError(f"{source}: permute_seed must be None or an integer >= 0, got {seed!r}")
    expected = _dataset_shape(name)
    got = tuple(config.get(k) for k in ("num_classes", "height", "width"))
    if got != expected:
        raise ValueError(f"{source}: its {key} is for {got[0]} classes at {got[1]} x {got[2]}, but dataset "
                         f"{name!r} has {expected[0]} classes at {expected[1]} x {expected[2]}")


def _atomic_save(obj, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            # Mode 0o666 under the umask, as for any new file; mkstemp would make it private, and
            # reading the umask to undo that means setting it, which races with other threads.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic: readers see the old file or the new one, never half of one
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_checkpoint(path, weights: dict, meta: dict, *, kind: str, training_state: dict | None = None) -> None:
    """Write ``weights`` (a dict of tensors), ``meta`` (JSON-able, with the config of ``kind``) and
    ``training_state`` if given, atomically. Refuses metadata a reader would refuse."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"kind must be one of {', '.join(MODEL_KINDS)}, got {kind!r}")
    meta = dict(meta, kind=kind)
    meta_json = json.dumps(meta)  # refuse metadata that is not JSON-able before writing anything
    check_meta(meta, path, kind=kind)
    obj = {"model": weights, "meta_json": meta_json}
    if training_state is not None:
        obj["training"] = training_state
    _atomic_save(obj, path)


def _read(path, map_location="cpu") -> dict:
    """The file's dict, checked to have the structure of a checkpoint; its metadata is not checked."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as err:
        raise ValueError(f"{path}: cannot be read ({err.strerror})") from None
    if not head:
        raise ValueError(f"{path}: empty, not a checkpoint")
    if head != b"PK\x03\x04":  # torch.save writes a zip archive
        raise ValueError(f"{path}: not a checkpoint (not a file written by torch.save)")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: truncated or damaged (a torch file without the end of its archive)")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(f"{path}: not a checkpoint (it holds objects other than tensors and plain "
                         "containers, which torch.load(weights_only=True) refuses)") from None
    except Exception as err:  # torch's reader raises RuntimeError, EOFError, KeyError... on damage
        first = str(err).splitlines()[0].split(". ")[0] if str(err) else type(err).__name__
        raise ValueError(f"{path}: damaged, torch cannot read it ({first})") from None
    if not isinstance(obj, dict) or "model" not in obj or "meta_json" not in obj:
        raise ValueError(f"{path}: not an mdiff_lite checkpoint (no 'model' and 'meta_json' entries)")
    if not isinstance(obj["model"], dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj["model"].items()):
        raise ValueError(f"{path}: not an mdiff_lite checkpoint (its 'model' entry is not a dict of tensors)")
    try:
        meta = json.loads(obj["meta_json"])
    except (TypeError, ValueError):
        meta = None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: not an mdiff_lite checkpoint (its 'meta_json' is not a JSON object)")
    if not isinstance(obj.get("training", {}), dict):
        raise ValueError(f"{path}: not an mdiff_lite checkpoint (its 'training' entry is not a dict)")
    obj["meta"] = meta
    return obj


def read_checkpoint(path, map_location="cpu", *, kind: str | None = None,
                    dataset: str | None = None) -> tuple[dict, dict, dict | None]:
    """``(weights, meta, training_state or None)`` from a checkpoint file, refused with one line
    (see the module docstring) unless it holds a model of ``kind`` on ``dataset`` (None: any)."""
    obj = _read(path, map_location)
    check_meta(obj["meta"], path, kind=kind, dataset=dataset)
    return obj["model"], obj["meta"], obj.get("training")


def update_meta(path, **fields) -> dict:
    """Add or change metadata fields of a checkpoint file, atomically; returns the new metadata."""
    obj = _read(path)
    meta = dict(obj["meta"], **fields)
    kind = kind_of(meta)
    check_meta(meta, path)
    write_checkpoint(path, obj["model"], meta, kind=kind, training_state=obj.get("training"))
    return dict(meta, kind=kind)


def load_weights(model: torch.nn.Module, weights: dict, source) -> None:
    """``model.load_state_dict(weights)`` in the model's dtypes, refusing weights that do not fit
    with one line naming ``source`` (torch's own message spans many)."""
    ref = model.state_dict()
    problems = [(what, names) for what, names in (
        ("missing", sorted(set(ref) - set(weights))),
        ("unexpected", sorted(set(weights) - set(ref))),
        ("of another shape", sorted(k for k in set(ref) & set(weights) if ref[k].shape != weights[k].shape)),
    ) if names]
    if problems:
        listed = "; ".join(f"{what}: {', '.join(names[:3])}" + (f" and {len(names) - 3} more" if len(names) > 3 else "")
                           for what, names in problems)
        raise ValueError(f"{source}: its weights do not fit the model its config describes ({listed})")
    model.load_state_dict({k: v.to(ref[k].dtype) for k, v in weights.items()}, strict=True)
