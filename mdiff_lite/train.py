"""Training the denoiser: device choice, the loop, exponential moving average, checkpoints.

``fit`` minimises eq. 17 (:func:`mdiff_lite.diffusion.training_loss`) with AdamW, t drawn
uniformly or by importance sampling, gradient clipping and a warm-up then cosine learning rate; it keeps an
exponential moving average (EMA) of the weights, which is what gets evaluated and shipped
(averaging late iterates smooths out the noise of the one-sample loss). It stops after
``steps`` optimiser steps or ``max_seconds`` of wall time, whichever comes first; the learning
rate decays over whichever budget runs out first. Under ``torchrun`` it trains with
DistributedDataParallel, and all ranks keep the same weights and the same importance sampler.

Written to keep a GPU busy: the maps live on the device and each batch is drawn there; a step
reads nothing back to the host (its inputs were checked once, before the loop; the loss is read
every ``log_every`` steps, for the history, the progress bar and the NaN check; only the
importance sampler, which learns from the losses, reads them every step); AdamW is fused; the
mixed-precision type follows the device (:func:`autocast_dtype`); ``compile=True`` compiles the
network; the learning rate scales with the square root of the batch size.

Checkpoints (:mod:`mdiff_lite.checkpoint`) are ``torch.save`` dicts of tensors plus JSON-able
metadata, written atomically and read with ``torch.load(weights_only=True)``.

Taught in notebook 05.
"""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from . import __version__
from .checkpoint import check_meta, load_weights, read_checkpoint, update_meta, write_checkpoint
from .diffusion import ImportanceTimeSampler, StratifiedTimeSampler, UniformTimeSampler, _training_loss, bits_per_dim
from .models import (CausalTransformer, Denoiser, DenoiserConfig, TextDenoiser, TransformerConfig, count_parameters,
                     example_shape, process_of, sequence_nll)
from .schedules import Schedule, make_schedule

__all__ = ["pick_device", "TrainConfig", "fit", "init_distributed", "save_checkpoint", "load_checkpoint",
           "load_denoiser", "update_meta", "pretrained_path", "load_pretrained"]


def pick_device(device: str | torch.device | None = None, verbose: bool = True) -> torch.device:
    """The device to train on: ``device`` if given (other than ``"auto"``), else the
    ``MDIFF_DEVICE`` environment variable, else CUDA, then Apple MPS, then the CPU.
    Prints the choice (``verbose=False`` to keep quiet)."""
    requested = device if device not in (None, "auto") else os.environ.get("MDIFF_DEVICE", "auto")
    if requested in ("", "auto"):
        if torch.cuda.is_available():
            chosen = torch.device("cuda")
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            chosen = torch.device("mps")
        else:
            chosen = torch.device("cpu")
    else:
        try:
            chosen = torch.device(requested)
        except RuntimeError as err:
            raise ValueError(f"unknown device {requested!r}: {err}") from None
        if chosen.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {requested!r} was asked for, but CUDA is not available here")
        if chosen.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"device {requested!r} was asked for, but MPS is not available here")
    if verbose:
        name = torch.cuda.get_device_name(chosen) if chosen.type == "cuda" else chosen.type
        print(f"mdiff_lite: using device {chosen} ({name})")
    return chosen


AMP_CHOICES = ("auto", "bf16", "fp16", "off")


def _amp_choice(amp):
    """``TrainConfig.amp`` as today's choices spell it: earlier versions (and their checkpoints'
    metadata) had a bool, True meaning bfloat16 on CUDA only, which is what "auto" does there."""
    return ("auto" if amp else "off") if isinstance(amp, bool) else amp


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``TrainConfig.amp`` on ``device``, or None for float32."""
    device = torch.device(device)
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    if device.type != "cuda":  # "auto" off CUDA
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


# How t is drawn for each example of a batch (diffusion.UniformTimeSampler and its kin).
T_SAMPLERS = {"uniform": UniformTimeSampler, "stratified": StratifiedTimeSampler, "importance": ImportanceTimeSampler}


@dataclass
class TrainConfig:
    """How to train. ``steps`` and ``max_seconds``: whichever budget ends first (None: no limit)."""

    steps: int | None = 2000
    max_seconds: float | None = None
    # benchmarks/quality.py --compare (the README's quality table): on 2 CPU cores, batches of 32
    # took the bound lower in 10 minutes than batches of 64 (twice the steps, each half the cost).
    # A GPU wants far larger batches (benchmarks/train_speed.py --batch-size).
    batch_size: int = 32
    # The learning rate is ``lr`` at batches of ``lr_batch`` maps and scales with the square root
    # of the whole batch (batch_size times the processes under torchrun; Adam's usual rule), so a
    # larger batch needs no new lr to start from.
    lr_batch: int = 32
    # benchmarks/quality.py --compare importance:2.5,lr2e-3:2.5 (the README's quality table, with
    # the earlier fold-4 network): on the toy maps, uniform t and lr 3e-3 each reach a lower bound
    # in a fixed CPU budget than importance sampling and 2e-3, the first defaults.
    lr: float = 3e-3
    warmup_steps: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    # "stratified": uniform t, one draw from each of batch_size equal ranges of 1..T
    # (diffusion.StratifiedTimeSampler); "uniform": independent draws; "importance":
    # p(t) ∝ sqrt(E[L_t^2]) (diffusion.ImportanceTimeSampler).
    t_sampler: str = "stratified"
    x0_nll_weight: float = 0.0  # weight of the auxiliary -log p(x_0 | x_t) (diffusion.x0_nll) in the loss
    importance_history: int = 10  # losses kept per t; also the warm-up visits per t
    seed: int = 0
    # Mixed precision: "auto" picks by device (CUDA: bfloat16 where the GPU has it, else float16
    # with a gradient scaler; the CPU and MPS: float32, since a CPU without bfloat16 instructions,
    # like the AVX2 machines this was built on, only emulates it); or "bf16", "fp16", "off".
    amp: str = "auto"
    compile: bool = False  # torch.compile the network for training (a minute to compile; time it with
    # benchmarks/train_speed.py --compile)
    log_every: int = 10  # steps between reads of the loss (history, progress bar, the NaN check)
    checkpoint_every: int = 500  # steps; 0 to save only at the end

    def __post_init__(self):
        self.amp = _amp_choice(self.amp)

    def validate(self) -> None:
        if self.steps is None and self.max_seconds is None:
            raise ValueError("give a budget: steps or max_seconds")
        if self.steps is not None and self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise ValueError(f"max_seconds must be > 0, got {self.max_seconds}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.lr_batch < 1:
            raise ValueError(f"lr_batch must be >= 1, got {self.lr_batch}")
        if self.amp not in AMP_CHOICES:
            raise ValueError(f"amp must be one of {', '.join(map(repr, AMP_CHOICES))}, got {self.amp!r}")
        if self.log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {self.log_every}")
        if self.t_sampler not in T_SAMPLERS:
            raise ValueError(f"t_sampler must be one of {', '.join(map(repr, T_SAMPLERS))}, got {self.t_sampler!r}")
        if not self.x0_nll_weight >= 0:
            raise ValueError(f"x0_nll_weight must be >= 0, got {self.x0_nll_weight}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")


# ---------------------------------------------------------------------------------------------
# Checkpoints (the file format and its checks: mdiff_lite.checkpoint, shared with the flows)
# ---------------------------------------------------------------------------------------------


def save_checkpoint(path, model: Denoiser, meta: dict, *, training_state: dict | None = None,
                    weights_dtype: torch.dtype = torch.float32) -> None:
    """Write ``{"model": weights, "meta": meta as JSON, "training": ...}`` atomically.

    ``model`` should hold the weights to evaluate (the EMA). ``training_state`` (optimizer,
    raw weights, sampler, step, random states...) makes the file resumable; shipped checkpoints
    leave it out. ``weights_dtype=torch.float16`` halves the file for shipping.
    """
    weights = {k: (v.to(weights_dtype) if v.is_floating_point() else v).cpu()
               for k, v in model.state_dict().items()}
    write_checkpoint(path, weights, dict(meta, model_config=model.config.to_dict()), kind=_kind_of_model(model),
                     training_state=training_state)


def _kind_of_model(model) -> str:
    """The checkpoint kind of a model fit trains: the U-Net, a text denoiser, the causal model."""
    if isinstance(model, CausalTransformer):
        return "autoregressive"
    return "text-denoiser" if isinstance(model, TextDenoiser) else "denoiser"


def load_checkpoint(path, map_location="cpu") -> tuple[dict, dict, dict | None]:
    """``(weights, meta, training_state or None)`` from a checkpoint file of any kind; a file that
    is none is refused with one line (:func:`mdiff_lite.checkpoint.read_checkpoint`)."""
    return read_checkpoint(path, map_location)


def _load_weights_into(model: Denoiser, weights: dict, meta: dict, source) -> None:
    mine = model.config.to_dict()
    saved = meta.get("model_config", {})
    try:  # compare in today's form (defaults filled in, old spellings converted)
        saved = type(model.config).from_dict(saved).to_dict()
    except (TypeError, ValueError):
        pass
    differences = {k: (saved.get(k), mine.get(k)) for k in set(saved) | set(mine) if saved.get(k) != mine.get(k)}
    if differences:
        lines = ", ".join(f"{k}: checkpoint {a!r} vs model {b!r}" for k, (a, b) in sorted(differences.items()))
        raise ValueError(f"{source} was saved from a denoiser with another configuration ({lines}); "
                         "build the model with load_denoiser() or the checkpoint's model_config")
    load_weights(model, weights, source)


def _load_denoiser(path, device, dataset: str | None = None) -> tuple[Denoiser, dict]:
    weights, meta, _ = read_checkpoint(path, kind="denoiser", dataset=dataset)
    try:
        model = Denoiser(DenoiserConfig.from_dict(meta["model_config"]))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: its model_config describes no denoiser ({err})") from None
    _load_weights_into(model, weights, meta, path)
    device = torch.device(device) if device is not None else torch.device("cpu")
    return model.to(device).eval(), meta


def load_text_model(path, device=None):
    """Rebuild a text denoiser or the autoregressive transformer from its checkpoint, in eval mode:
    ``(model, meta)`` (notebook 07; ``benchmarks/text.py`` writes them)."""
    weights, meta, _ = read_checkpoint(path)
    kind = meta.get("kind")
    if kind not in ("text-denoiser", "autoregressive"):
        raise ValueError(f"{path}: holds {kind!r}, not a text model; load it with load_denoiser or load_flow")
    try:
        config = TransformerConfig.from_dict(meta["model_config"])
        model = TextDenoiser(config) if kind == "text-denoiser" else CausalTransformer(config)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: its model_config describes no {kind} ({err})") from None
    _load_weights_into(model, weights, meta, path)
    device = torch.device(device) if device is not None else torch.device("cpu")
    return model.to(device).eval(), meta


def load_denoiser(path, device=None) -> tuple[Denoiser, dict]:
    """Rebuild the denoiser a checkpoint was saved from, with its weights, in eval mode:
    ``(model, meta)``. ``meta`` holds the config, schedule, dataset, steps, test bits per pixel...
    Any other file is refused with one line: see :mod:`mdiff_lite.checkpoint`."""
    return _load_denoiser(path, device)


PRETRAINED = ("toyseg", "digits")
# The text models of notebook 07 (benchmarks/text.py --export): both noises and the causal reference.
TEXT_PRETRAINED = ("text-uniform", "text-absorbing", "text-autoregressive")


def pretrained_path(name: str) -> Path:
    """Where the shipped checkpoint for dataset ``name`` lies inside the package."""
    if name not in PRETRAINED + TEXT_PRETRAINED:
        raise ValueError(f"no shipped checkpoint {name!r}; there are: {', '.join(PRETRAINED + TEXT_PRETRAINED)}")
    return Path(__file__).resolve().parent / "pretrained" / f"{name}.pt"


def load_pretrained(name: str, device=None) -> tuple[Denoiser, dict]:
    """The shipped denoiser for ``"toyseg"`` or ``"digits"`` and its metadata (the commands
    that trained, exported and evaluated it, and the all-T estimate of its test bits per pixel).
    A file there that holds a model of another dataset is refused. The text models
    (``"text-uniform"``, ``"text-absorbing"``, ``"text-autoregressive"``) load with :func:`load_text_model`."""
    if name in TEXT_PRETRAINED:
        return load_text_model(pretrained_path(name), device)
    return _load_denoiser(pretrained_path(name), device, dataset=name)


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


def _lr_factor(progress: float, step: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine from 1 to 0 over ``progress`` in [0, 1]."""
    warm = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    return warm * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def init_distributed() -> bool:
    """Join the process group that ``torchrun`` describes in the environment (gloo on the CPU,
    nccl on CUDA), if there is one and it has more than one process. Returns whether it did."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend)
    return True


def _distributed() -> tuple[bool, int, int]:
    init_distributed()
    if dist.is_available() and dist.is_initialized():
        return True, dist.get_rank(), dist.get_world_size()
    return False, 0, 1


# The training config's budget, and how the run is watched and compiled: a resumed run may change
# them (to extend the run, say). Everything else in the config, the data and the network defines
# the run, and a resume must not mix two runs.
_BUDGET_FIELDS = ("steps", "max_seconds", "checkpoint_every", "log_every", "compile")


def _run_of(meta: dict) -> dict:
    """What defines the run a checkpoint's metadata describes, one entry per field:
    ``{"dataset": "toyseg", "train_config.lr": 0.003, "model_config.schedule.T": 1000, ...}``."""
    model_config = meta.get("model_config") or {}
    try:  # in today's form (defaults filled in, old spellings converted)
        model_config = DenoiserConfig.from_dict(model_config).to_dict()
    except (TypeError, ValueError):
        pass
    train_config = {k: v for k, v in (meta.get("train_config") or {}).items() if k not in _BUDGET_FIELDS}
    if "amp" in train_config:
        train_config["amp"] = _amp_choice(train_config["amp"])
    run = {k: meta[k] for k in ("dataset", "permute_seed", "train_maps_shape") if k in meta}
    for part, fields in (("train_config", train_config), ("model_config", model_config)):
        for k, v in fields.items():
            if isinstance(v, dict):  # the schedule: an entry per field, so a message names the one that differs
                run.update({f"{part}.{k}.{kk}": vv for kk, vv in v.items()})
            else:
                run[f"{part}.{k}"] = v
    return run


def _run_differences(saved: dict, now: dict) -> list[str]:
    """``"field: X in the checkpoint, Y now"`` for each field that defines the run and differs.
    A field the checkpoint does not record (a file from an older version) cannot be compared."""
    old, new = _run_of(saved), _run_of(json.loads(json.dumps(now)))  # both in JSON's types
    return [f"{k}: {old[k]!r} in the checkpoint, {new.get(k)!r} now" for k in sorted(old) if old[k] != new.get(k)]


def _random_states(generators, device: torch.device) -> dict:
    """Every random state a training step draws from: fit's generators, and torch's global
    generators (dropout draws from those)."""
    states = {"device": device.type, "generators": [g.get_state() for g in generators],
              "torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def _set_random_states(states, generators, device: torch.device) -> bool:
    """Restore what :func:`_random_states` saved, if it was saved on this kind of device (a CUDA
    generator's state means nothing to the CPU's); returns whether it could."""
    if not isinstance(states, dict) or states.get("device") != device.type:
        return False
    for g, state in zip(generators, states["generators"]):
        g.set_state(state)
    torch.set_rng_state(states["torch"])
    if device.type == "cuda":
        torch.cuda.set_rng_state(states["cuda"], device)
    return True


def _catch_stop_signals(handler) -> dict:
    """Route Ctrl-C (SIGINT) and SIGTERM to ``handler`` where Python's own handlers are in place
    (one that someone else installed, a job runner's say, stays in charge), and only in the main
    thread (the only one Python lets set handlers). Returns the handlers it replaced."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
    return {s: signal.signal(s, handler) for s, default in defaults.items() if signal.getsignal(s) is default}


def fit(model: Denoiser, train_maps: torch.Tensor, config: TrainConfig | None = None, *,
        device=None, checkpoint_path=None, resume: bool = True, meta: dict | None = None,
        progress: bool = True, on_log=None) -> dict:
    """Train ``model`` on ``train_maps`` (LongTensor ``[N, H, W]`` of class indices).

    The same loop trains the transformers of notebook 07 on sequences (``[N, L]``): a
    :class:`~mdiff_lite.models.TextDenoiser` on the bound of its own noise process, and the
    :class:`~mdiff_lite.models.CausalTransformer` on its exact negative log-likelihood (no t, no
    sampler), with the same optimiser, learning rate, clipping and EMA, so budgets compare.

    Args:
        config: a :class:`TrainConfig` (its budget, optimiser settings, seed...).
        device: as for :func:`pick_device` (``None``/``"auto"``: CUDA, MPS, CPU).
        checkpoint_path: where to save (every ``config.checkpoint_every`` steps and at the end).
            With ``resume=True`` an existing file there is resumed from: its random states too,
            so that a run stopped and resumed ends bitwise equal (on the CPU) to one that never
            stopped. A file of another run (other data, permutation, network, schedule, t
            sampler, optimiser settings or seed: anything but the budget, ``steps``,
            ``max_seconds`` and ``checkpoint_every``, and ``log_every`` and ``compile``) is
            refused with every difference listed;
            ``resume=False`` trains afresh and overwrites it.
        meta: extra JSON-able metadata for the checkpoint (dataset, permute_seed, command...).
        on_log: called at every log step as ``on_log(step, seconds, ema_model)``; if it returns
            True, training ends there as if its budget were spent. Its own time is not counted in
            the budget (``benchmarks/train_speed.py --target-ratio`` evaluates the EMA with it).
    Returns:
        the history: ``{"step": [...], "loss_bpd": [...], "lr": [...], "seconds": [...], ...}``,
        where ``loss_bpd`` is the running (EMA-smoothed) estimate of the bound in bits per pixel.
        The EMA weights are loaded into ``model`` at the end.

    Ctrl-C or SIGTERM (a job scheduler, ``docker stop``): the step in progress finishes, the
    checkpoint is saved, and then fit raises ``KeyboardInterrupt`` (Ctrl-C), or the signal is sent
    again with the handler that was there before fit, so that by default the process ends as one
    killed by SIGTERM (a scheduler sees what it expects). A second Ctrl-C stops at once, saving the
    last finished step. This holds where Python's own handlers are in place, in the main thread;
    the handlers are put back when fit ends.
    """
    config = config or TrainConfig()
    config.validate()
    shape = example_shape(model)
    if (not isinstance(train_maps, torch.Tensor) or train_maps.is_floating_point()
            or train_maps.ndim != 1 + len(shape)):
        raise ValueError(f"train_maps must be a LongTensor [N, {', '.join(('H', 'W') if len(shape) == 2 else ('L',))}] "
                         "of class indices")
    K = model.num_classes
    if train_maps.min() < 0 or train_maps.max() >= K:
        raise ValueError(f"train_maps hold class ids outside 0..{K - 1}")
    if tuple(train_maps.shape[1:]) != shape:
        raise ValueError(f"train_maps are {tuple(train_maps.shape[1:])}, the model expects {shape}")
    kind = _kind_of_model(model)
    autoregressive = kind == "autoregressive"
    # What defines this run, as the checkpoint records it.
    run_meta = dict(meta or {}, train_config=asdict(config), model_config=model.config.to_dict(),
                    train_maps_shape=list(train_maps.shape))
    if checkpoint_path is not None:
        check_meta(dict(run_meta, kind=kind), "fit's meta", kind=kind)  # now, not at the first save

    is_dist, rank, world = _distributed()
    device = pick_device(device, verbose=rank == 0) if not is_dist else torch.device(
        f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    if kind == "denoiser":
        schedule = make_schedule(**model.config.schedule)
    elif kind == "text-denoiser":
        schedule = process_of(model)  # the loss takes the process where it takes a schedule
    else:  # the causal model draws no t: a one-step sampler stands in, never used
        schedule = SimpleNamespace(T=1, to_dict=lambda: None)
    model.to(device).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    net = model
    if is_dist:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        net = torch.compile(net)
    # Fused AdamW: one kernel for all parameters, and no read of its step count on the host.
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                  fused=device.type in ("cuda", "cpu"))
    amp_dtype = autocast_dtype(config.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    sampler = (ImportanceTimeSampler(schedule.T, history=config.importance_history)
               if config.t_sampler == "importance" else T_SAMPLERS[config.t_sampler](schedule.T))
    history = {"step": [], "loss_bpd": [], "lr": [], "seconds": []}
    step, elapsed, running = 0, 0.0, None
    g = torch.Generator(device=device).manual_seed(config.seed * 1000 + rank)
    g_cpu = torch.Generator().manual_seed(config.seed * 1000 + rank + 1)

    if checkpoint_path is not None and resume and Path(checkpoint_path).is_file():
        weights, old_meta, state = read_checkpoint(checkpoint_path, kind=kind)
        if state is None:
            raise ValueError(f"{checkpoint_path}: holds no training state (a shipped checkpoint?); "
                             "pass resume=False or another path to train afresh")
        needed = ("raw_model", "optimizer", "sampler", "step", "elapsed", "history_json")
        missing = [k for k in needed if k not in state]
        if missing:
            raise ValueError(f"{checkpoint_path}: its training state lacks {', '.join(missing)}; "
                             "pass resume=False or another path to train afresh")
        differences = _run_differences(old_meta, run_meta)
        if differences:
            raise ValueError(f"{checkpoint_path}: holds another run, so it cannot be resumed "
                             f"({'; '.join(differences)}); pass resume=False (on the command line: "
                             "--no-resume) to train afresh and overwrite it, or choose another path")
        _load_weights_into(model, state["raw_model"], old_meta, checkpoint_path)
        _load_weights_into(ema, weights, old_meta, checkpoint_path)
        optimizer.load_state_dict(state["optimizer"])
        sampler.load_state_dict(state["sampler"])
        if state.get("grad_scaler"):
            scaler.load_state_dict(state["grad_scaler"])
        step, elapsed = int(state["step"]), float(state["elapsed"])
        history = json.loads(state["history_json"])
        running = state.get("running_bpd", history["loss_bpd"][-1] if history["loss_bpd"] else None)
        saved_rng = state.get("random_states")
        restored = (isinstance(saved_rng, list) and len(saved_rng) == world
                    and _set_random_states(saved_rng[rank], (g, g_cpu), device))
        if not restored:  # an older file, an interrupted multi-process run, or another kind of device
            g.manual_seed(config.seed * 1000 + rank + 7919 * step)
            g_cpu.manual_seed(config.seed * 1000 + rank + 7919 * step + 1)
        if rank == 0:
            print(f"mdiff_lite: resuming from {checkpoint_path} at step {step}" + (
                "" if restored else " (its random states do not fit this run: drawing afresh, so the run will "
                                    "not repeat an uninterrupted one bit for bit)"))

    N, D = train_maps.shape[0], math.prod(shape)
    train_maps = train_maps.to(device)  # once: a step draws its batch on the device
    lr_scale = math.sqrt(config.batch_size * world / config.lr_batch)  # the whole batch, over all ranks
    acc_dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64

    def sampler_update(t, losses):
        if is_dist:  # every rank must feed the same losses to the sampler, or their p(t) drift apart
            t_all = [torch.empty_like(t) for _ in range(world)]
            l_all = [torch.empty_like(losses) for _ in range(world)]
            dist.all_gather(t_all, t)
            dist.all_gather(l_all, losses)
            t, losses = torch.cat(t_all), torch.cat(l_all)
        sampler.update(t.cpu(), losses.cpu())

    # The sampler as training_loss sees it: its own draws, the synchronised update.
    synced_sampler = SimpleNamespace(T=sampler.T, sample=sampler.sample, update=sampler_update,
                                     learns=getattr(sampler, "learns", True))

    def done() -> bool:
        return ((config.steps is not None and step >= config.steps)
                or (config.max_seconds is not None and elapsed >= config.max_seconds))

    def save(final: bool, random_states: dict, every_rank: bool) -> None:
        """``random_states``: this rank's at the end of the last finished step; ``every_rank``: all
        ranks are here together, so rank 0 can collect theirs."""
        if checkpoint_path is None:
            return
        if not is_dist:
            all_states = [random_states]
        elif every_rank:
            all_states = [None] * world
            dist.all_gather_object(all_states, random_states)
        else:
            all_states = None  # the other ranks are elsewhere: a resume draws afresh
        if rank != 0:
            return
        info = dict(run_meta, steps=step, wall_seconds=round(elapsed, 1), device=str(device),
                    world_size=world, schedule=schedule.to_dict(), parameters=count_parameters(model),
                    mdiff_lite=__version__, torch=torch.__version__, python=platform.python_version(),
                    final=final, loss_bpd=history["loss_bpd"][-1] if history["loss_bpd"] else None)
        info.setdefault("command", " ".join([Path(sys.argv[0]).name] + sys.argv[1:]))
        state = {"raw_model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                 "optimizer": optimizer.state_dict(), "sampler": sampler.state_dict(),
                 "step": step, "elapsed": elapsed, "history_json": json.dumps(history),
                 "running_bpd": None if running is None else float(running), "random_states": all_states,
                 "grad_scaler": scaler.state_dict() if scaler.is_enabled() else None}
        save_checkpoint(checkpoint_path, ema, info, training_state=state)

    if done():  # resumed with nothing left to do: leave the checkpoint (and its results) alone
        if rank == 0:
            print(f"mdiff_lite: {checkpoint_path} has already used this budget ({step} steps); nothing to do")
        model.load_state_dict(ema.state_dict())
        model.eval()
        history["steps_per_second"] = None
        history["sampler_probs"] = sampler.probs().tolist()
        return history

    received = []  # stop signals, honoured at the end of the step in progress

    def on_signal(signum, frame):
        if received and signum == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: stop at once
        received.append(int(signum))

    total = config.steps
    bar = tqdm(total=total, initial=step, disable=not progress or rank != 0, desc="training",
               unit="step", dynamic_ncols=True)
    start = time.perf_counter() - elapsed
    stop_signal = 0
    random_states = _random_states((g, g_cpu), device)
    replaced = _catch_stop_signals(on_signal)
    try:
        while not done():
            random_states = _random_states((g, g_cpu), device)  # as the last finished step left them
            index = torch.randint(0, N, (config.batch_size,), device=device, generator=g)
            x0 = train_maps[index]
            progress_frac = max(step / config.steps if config.steps else 0.0,
                                elapsed / config.max_seconds if config.max_seconds else 0.0)
            lr = config.lr * lr_scale * _lr_factor(progress_frac, step, config.warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
                if autoregressive:  # exact: -log p(x) by one causal pass
                    objective = loss = sequence_nll(net(x0), x0).mean()
                elif config.x0_nll_weight:
                    loss, nll = _training_loss(net, x0, schedule, synced_sampler, K, g, with_x0_nll=True)
                    objective = loss + config.x0_nll_weight * nll
                else:
                    objective = loss = _training_loss(net, x0, schedule, synced_sampler, K, g)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(objective / D).backward()  # nats per pixel: a scale that does not depend on the map size
            if config.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip, foreach=True)
            scaler.step(optimizer)
            scaler.update()
            with torch.no_grad():
                decay = min(config.ema_decay, (1 + step) / (10 + step))  # short memory at first
                torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - decay)
            step += 1
            elapsed = time.perf_counter() - start
            stop_signal = max(received, default=0)
            if is_dist:  # one clock for all ranks, or they disagree on the lr and on when to stop;
                # and a signal to any rank stops them all at the same step
                clock = torch.tensor([elapsed, stop_signal], dtype=torch.float64, device=device)
                dist.all_reduce(clock, op=dist.ReduceOp.MAX)
                elapsed, stop_signal = float(clock[0]), int(clock[1])
            # The running estimate stays on the device; it is read (and the host waits for the
            # device) only every log_every steps.
            bpd = bits_per_dim(loss.detach().to(acc_dtype), D)
            running = bpd if running is None else 0.98 * running + 0.02 * bpd
            if step % config.log_every == 0 or done() or stop_signal:
                running_now, bpd_now = torch.stack([torch.as_tensor(running, dtype=acc_dtype, device=device),
                                                    bpd]).tolist()
                if not math.isfinite(bpd_now) or not math.isfinite(running_now):
                    raise FloatingPointError(f"the loss became {bpd_now if not math.isfinite(bpd_now) else running_now}"
                                             f" by step {step}")
                running = running_now
                history["step"].append(step)
                history["loss_bpd"].append(running)
                history["lr"].append(lr)
                history["seconds"].append(round(elapsed, 2))
                bar.set_postfix(bpd=f"{running:.3f}", loss=f"{bpd_now:.3f}", lr=f"{lr:.1e}")
                if on_log is not None:
                    paused = time.perf_counter()
                    reached = on_log(step, elapsed, ema)
                    start += time.perf_counter() - paused  # the callback's time is not training time
                    if reached:
                        bar.update(1)
                        break
            bar.update(1)
            if stop_signal:
                break
            if config.checkpoint_every and step % config.checkpoint_every == 0 and not done():
                save(final=False, random_states=_random_states((g, g_cpu), device), every_rank=True)
    except KeyboardInterrupt:
        # Raised inside a step (a second Ctrl-C, or where fit could not catch the signal): the
        # finished steps are kept, with the random states from before the unfinished one.
        save(final=False, random_states=random_states, every_rank=False)
        raise
    finally:
        bar.close()
        for signum, previous in replaced.items():
            signal.signal(signum, previous)
    save(final=done(), random_states=_random_states((g, g_cpu), device), every_rank=True)
    if stop_signal:
        if rank == 0:
            print(f"mdiff_lite: stopped by {signal.Signals(stop_signal).name} after step {step}"
                  + (f"; {checkpoint_path} is saved, run the same again to resume" if checkpoint_path else ""))
        if is_dist:
            dist.barrier()  # no rank ends before rank 0 has written the checkpoint
        if stop_signal == signal.SIGTERM:
            signal.raise_signal(signal.SIGTERM)  # the handler from before fit: by default, the end
        raise KeyboardInterrupt
    model.load_state_dict(ema.state_dict())
    model.eval()
    history["steps_per_second"] = step / elapsed if elapsed else None
    history["sampler_probs"] = sampler.probs().tolist()
    history["sampler_state"] = {k: (v.tolist() if isinstance(v, torch.Tensor) else v)
                                for k, v in sampler.state_dict().items()}
    return history
