"""Training the denoiser: device choice, the loop, exponential moving average, checkpoints.

``fit`` minimises eq. 17 (:func:`mdiff_lite.diffusion.training_loss`) with AdamW, t drawn
uniformly or by importance sampling, gradient clipping and a warm-up then cosine learning rate; it keeps an
exponential moving average (EMA) of the weights, which is what gets evaluated and shipped
(averaging late iterates smooths out the noise of the one-sample loss). It stops after
``steps`` optimiser steps or ``max_seconds`` of wall time, whichever comes first; the learning
rate decays over whichever budget runs out first. Under ``torchrun`` it trains with
DistributedDataParallel, and all ranks keep the same weights and the same importance sampler.

Checkpoints are ``torch.save`` dicts of tensors plus JSON-able metadata, written atomically
(a temporary file, then ``os.replace``) and read with ``torch.load(weights_only=True)``.

Taught in notebook 05.
"""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from . import __version__
from .diffusion import ImportanceTimeSampler, UniformTimeSampler, bits_per_dim, training_loss
from .models import Denoiser, DenoiserConfig, count_parameters
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


@dataclass
class TrainConfig:
    """How to train. ``steps`` and ``max_seconds``: whichever budget ends first (None: no limit)."""

    steps: int | None = 2000
    max_seconds: float | None = None
    batch_size: int = 64
    # benchmarks/quality.py --compare importance:2.5,lr2e-3:2.5 (the README's quality table): on
    # the toy maps, uniform t and lr 3e-3 each reach a lower bound in a fixed CPU budget than
    # importance sampling and 2e-3, the first defaults.
    lr: float = 3e-3
    warmup_steps: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    t_sampler: str = "uniform"  # or "importance": p(t) ∝ sqrt(E[L_t^2]), as the official code
    x0_nll_weight: float = 0.0  # weight of the auxiliary -log p(x_0 | x_t) (diffusion.x0_nll) in the loss
    importance_history: int = 10  # losses kept per t; also the warm-up visits per t
    seed: int = 0
    amp: bool = True  # bfloat16 autocast, on CUDA only
    checkpoint_every: int = 500  # steps; 0 to save only at the end

    def validate(self) -> None:
        if self.steps is None and self.max_seconds is None:
            raise ValueError("give a budget: steps or max_seconds")
        if self.steps is not None and self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise ValueError(f"max_seconds must be > 0, got {self.max_seconds}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.t_sampler not in ("importance", "uniform"):
            raise ValueError(f"t_sampler must be 'importance' or 'uniform', got {self.t_sampler!r}")
        if not self.x0_nll_weight >= 0:
            raise ValueError(f"x0_nll_weight must be >= 0, got {self.x0_nll_weight}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


_UMASK = os.umask(0)  # read once at import (os.umask can only be read by setting it)
os.umask(_UMASK)


def _atomic_save(obj, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes files private; a checkpoint is an ordinary file
        os.replace(tmp, path)  # atomic: readers see the old file or the new one, never half of one
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(path, model: Denoiser, meta: dict, *, training_state: dict | None = None,
                    weights_dtype: torch.dtype = torch.float32) -> None:
    """Write ``{"model": weights, "meta": meta as JSON, "training": ...}`` atomically.

    ``model`` should hold the weights to evaluate (the EMA). ``training_state`` (optimizer,
    raw weights, sampler, step, ...) makes the file resumable; shipped checkpoints leave it out.
    ``weights_dtype=torch.float16`` halves the file for shipping.
    """
    weights = {k: (v.to(weights_dtype) if v.is_floating_point() else v).cpu()
               for k, v in model.state_dict().items()}
    meta = dict(meta, model_config=model.config.to_dict())
    json.dumps(meta)  # refuse metadata that is not JSON-able before writing anything
    obj = {"model": weights, "meta_json": json.dumps(meta)}
    if training_state is not None:
        obj["training"] = training_state
    _atomic_save(obj, path)


def _load(path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    obj = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(obj, dict) or "model" not in obj or "meta_json" not in obj:
        raise ValueError(f"{path} is not an mdiff_lite checkpoint (no 'model' and 'meta_json' entries)")
    return obj


def load_checkpoint(path, map_location="cpu") -> tuple[dict, dict, dict | None]:
    """``(weights, meta, training_state or None)`` from a checkpoint file."""
    obj = _load(path, map_location)
    return obj["model"], json.loads(obj["meta_json"]), obj.get("training")


def update_meta(path, **fields) -> dict:
    """Add or change metadata fields of a checkpoint file, atomically; returns the new metadata."""
    obj = _load(path)
    meta = dict(json.loads(obj["meta_json"]), **fields)
    obj["meta_json"] = json.dumps(meta)
    _atomic_save(obj, path)
    return meta


def _load_weights_into(model: Denoiser, weights: dict, meta: dict, source) -> None:
    mine = model.config.to_dict()
    saved = meta.get("model_config", {})
    try:  # compare in today's form (defaults filled in, old spellings converted)
        saved = DenoiserConfig.from_dict(saved).to_dict()
    except (TypeError, ValueError):
        pass
    differences = {k: (saved.get(k), mine.get(k)) for k in set(saved) | set(mine) if saved.get(k) != mine.get(k)}
    if differences:
        lines = ", ".join(f"{k}: checkpoint {a!r} vs model {b!r}" for k, (a, b) in sorted(differences.items()))
        raise ValueError(f"{source} was saved from a denoiser with another configuration ({lines}); "
                         "build the model with load_denoiser() or the checkpoint's model_config")
    ref = model.state_dict()
    model.load_state_dict({k: v.to(ref[k].dtype) for k, v in weights.items()}, strict=True)


def load_denoiser(path, device=None) -> tuple[Denoiser, dict]:
    """Rebuild the denoiser a checkpoint was saved from, with its weights, in eval mode:
    ``(model, meta)``. ``meta`` holds the config, schedule, dataset, steps, test bits per pixel..."""
    weights, meta, _ = load_checkpoint(path)
    model = Denoiser(DenoiserConfig.from_dict(meta["model_config"]))
    _load_weights_into(model, weights, meta, path)
    device = torch.device(device) if device is not None else torch.device("cpu")
    return model.to(device).eval(), meta


PRETRAINED = ("toyseg", "digits")


def pretrained_path(name: str) -> Path:
    """Where the shipped checkpoint for dataset ``name`` lies inside the package."""
    if name not in PRETRAINED:
        raise ValueError(f"no shipped checkpoint {name!r}; there are: {', '.join(PRETRAINED)}")
    return Path(__file__).resolve().parent / "pretrained" / f"{name}.pt"


def load_pretrained(name: str, device=None) -> tuple[Denoiser, dict]:
    """The shipped denoiser for ``"toyseg"`` or ``"digits"`` and its metadata (the commands
    that trained, exported and evaluated it, and its exact test bits per pixel)."""
    return load_denoiser(pretrained_path(name), device)


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


def fit(model: Denoiser, train_maps: torch.Tensor, config: TrainConfig | None = None, *,
        device=None, checkpoint_path=None, resume: bool = True, meta: dict | None = None,
        progress: bool = True) -> dict:
    """Train ``model`` on ``train_maps`` (LongTensor ``[N, H, W]`` of class indices).

    Args:
        config: a :class:`TrainConfig` (its budget, optimiser settings, seed...).
        device: as for :func:`pick_device` (``None``/``"auto"``: CUDA, MPS, CPU).
        checkpoint_path: where to save (every ``config.checkpoint_every`` steps and at the end);
            with ``resume=True`` an existing file there is resumed from, if it was made with
            the same model configuration.
        meta: extra JSON-able metadata for the checkpoint (dataset, command...).
    Returns:
        the history: ``{"step": [...], "loss_bpd": [...], "lr": [...], "seconds": [...], ...}``,
        where ``loss_bpd`` is the running (EMA-smoothed) estimate of the bound in bits per pixel.
        The EMA weights are loaded into ``model`` at the end.
    """
    config = config or TrainConfig()
    config.validate()
    if not isinstance(train_maps, torch.Tensor) or train_maps.is_floating_point() or train_maps.ndim != 3:
        raise ValueError("train_maps must be a LongTensor [N, H, W] of class indices")
    K = model.num_classes
    if train_maps.min() < 0 or train_maps.max() >= K:
        raise ValueError(f"train_maps hold class ids outside 0..{K - 1}")
    cfg_h, cfg_w = model.config.height, model.config.width
    if tuple(train_maps.shape[1:]) != (cfg_h, cfg_w):
        raise ValueError(f"train_maps are {tuple(train_maps.shape[1:])}, the model expects {(cfg_h, cfg_w)}")

    is_dist, rank, world = _distributed()
    device = pick_device(device, verbose=rank == 0) if not is_dist else torch.device(
        f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    schedule: Schedule = make_schedule(**model.config.schedule)
    model.to(device).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    net = model
    if is_dist:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sampler = (ImportanceTimeSampler(schedule.T, history=config.importance_history)
               if config.t_sampler == "importance" else UniformTimeSampler(schedule.T))
    history = {"step": [], "loss_bpd": [], "lr": [], "seconds": []}
    step, elapsed = 0, 0.0

    if checkpoint_path is not None and resume and Path(checkpoint_path).is_file():
        weights, old_meta, state = load_checkpoint(checkpoint_path)
        if state is None:
            raise ValueError(f"{checkpoint_path} holds no training state (a shipped checkpoint?); "
                             "pass resume=False or another path to train afresh")
        _load_weights_into(model, state["raw_model"], old_meta, checkpoint_path)
        _load_weights_into(ema, weights, old_meta, checkpoint_path)
        optimizer.load_state_dict(state["optimizer"])
        sampler.load_state_dict(state["sampler"])
        step, elapsed = int(state["step"]), float(state["elapsed"])
        history = json.loads(state["history_json"])
        if rank == 0:
            print(f"mdiff_lite: resuming from {checkpoint_path} at step {step}")

    g = torch.Generator(device=device).manual_seed(config.seed * 1000 + rank + 7919 * step)
    g_cpu = torch.Generator().manual_seed(config.seed * 1000 + rank + 7919 * step + 1)
    N, D = train_maps.shape[0], cfg_h * cfg_w
    use_amp = config.amp and device.type == "cuda"
    def sampler_update(t, losses):
        if is_dist:  # every rank must feed the same losses to the sampler, or their p(t) drift apart
            t_all = [torch.empty_like(t) for _ in range(world)]
            l_all = [torch.empty_like(losses) for _ in range(world)]
            dist.all_gather(t_all, t)
            dist.all_gather(l_all, losses)
            t, losses = torch.cat(t_all), torch.cat(l_all)
        sampler.update(t.cpu(), losses.cpu())

    # The sampler as training_loss sees it: its own draws, the synchronised update.
    synced_sampler = SimpleNamespace(T=sampler.T, sample=sampler.sample, update=sampler_update)

    def done() -> bool:
        return ((config.steps is not None and step >= config.steps)
                or (config.max_seconds is not None and elapsed >= config.max_seconds))

    def save(final: bool) -> None:
        if checkpoint_path is None or rank != 0:
            return
        info = dict(meta or {}, steps=step, wall_seconds=round(elapsed, 1), device=str(device),
                    world_size=world, train_config=asdict(config), schedule=schedule.to_dict(),
                    parameters=count_parameters(model), mdiff_lite=__version__, torch=torch.__version__,
                    python=platform.python_version(), final=final,
                    loss_bpd=history["loss_bpd"][-1] if history["loss_bpd"] else None)
        info.setdefault("command", " ".join([Path(sys.argv[0]).name] + sys.argv[1:]))
        state = {"raw_model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                 "optimizer": optimizer.state_dict(), "sampler": sampler.state_dict(),
                 "step": step, "elapsed": elapsed, "history_json": json.dumps(history)}
        save_checkpoint(checkpoint_path, ema, info, training_state=state)

    if done():  # resumed with nothing left to do: leave the checkpoint (and its results) alone
        if rank == 0:
            print(f"mdiff_lite: {checkpoint_path} has already used this budget ({step} steps); nothing to do")
        model.load_state_dict(ema.state_dict())
        model.eval()
        history["steps_per_second"] = None
        history["sampler_probs"] = sampler.probs().tolist()
        return history

    total = config.steps
    bar = tqdm(total=total, initial=step, disable=not progress or rank != 0, desc="training",
               unit="step", dynamic_ncols=True)
    running = history["loss_bpd"][-1] if history["loss_bpd"] else None
    start = time.perf_counter() - elapsed
    try:
        while not done():
            index = torch.randint(0, N, (config.batch_size,), generator=g_cpu)
            x0 = train_maps[index].to(device, non_blocking=True)
            progress_frac = max(step / config.steps if config.steps else 0.0,
                                elapsed / config.max_seconds if config.max_seconds else 0.0)
            lr = config.lr * _lr_factor(progress_frac, step, config.warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                if config.x0_nll_weight:
                    loss, nll = training_loss(net, x0, schedule, synced_sampler, num_classes=K, generator=g,
                                              with_x0_nll=True)
                    objective = loss + config.x0_nll_weight * nll
                else:
                    objective = loss = training_loss(net, x0, schedule, synced_sampler, num_classes=K, generator=g)
            optimizer.zero_grad(set_to_none=True)
            (objective / D).backward()  # nats per pixel: a scale that does not depend on the map size
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            with torch.no_grad():
                decay = min(config.ema_decay, (1 + step) / (10 + step))  # short memory at first
                torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - decay)
            step += 1
            elapsed = time.perf_counter() - start
            if is_dist:  # one clock for all ranks, or they disagree on the lr and on when to stop
                clock = torch.tensor([elapsed], dtype=torch.float64, device=device)
                dist.all_reduce(clock, op=dist.ReduceOp.MAX)
                elapsed = float(clock)
            loss = loss.detach()
            bpd = float(bits_per_dim(loss, D))
            if not math.isfinite(bpd):
                raise FloatingPointError(f"the loss became {bpd} at step {step}")
            running = bpd if running is None else 0.98 * running + 0.02 * bpd
            if step % 10 == 0 or done():
                history["step"].append(step)
                history["loss_bpd"].append(running)
                history["lr"].append(lr)
                history["seconds"].append(round(elapsed, 2))
                bar.set_postfix(bpd=f"{running:.3f}", loss=f"{float(loss) / D:.4f}", lr=f"{lr:.1e}")
            bar.update(1)
            if config.checkpoint_every and step % config.checkpoint_every == 0 and not done():
                save(final=False)
    except KeyboardInterrupt:
        save(final=False)  # an interrupted run keeps every finished step, resumable
        raise
    finally:
        bar.close()
    save(final=True)
    model.load_state_dict(ema.state_dict())
    model.eval()
    history["steps_per_second"] = step / elapsed if elapsed else None
    history["sampler_probs"] = sampler.probs().tolist()
    history["sampler_state"] = {k: (v.tolist() if isinstance(v, torch.Tensor) else v)
                                for k, v in sampler.state_dict().items()}
    return history
