"""The command line: ``python -m mdiff_lite train | eval | sample | export``.

    python -m mdiff_lite train --data toyseg --steps 2000 --device auto --out ckpt.pt
    python -m mdiff_lite eval ckpt.pt [--json]
    python -m mdiff_lite sample ckpt.pt --n 16 --png out.png
    python -m mdiff_lite export ckpt.pt mdiff_lite/pretrained/toyseg.pt --float16

``train`` also runs under ``torchrun --nproc_per_node=N`` (DistributedDataParallel: gloo on the
CPU, nccl on CUDA); each process draws its own batches, so the effective batch is N times
``--batch-size``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

from .data import DATASET_NAMES, dataset_by_name
from .evaluate import bound_breakdown, estimate_bound, evaluate_bound
from .models import Denoiser, DenoiserConfig
from .schedules import SCHEDULE_NAMES, make_schedule
from .train import AMP_CHOICES, T_SAMPLERS, TrainConfig, fit, load_denoiser, pick_device, save_checkpoint, update_meta

# The model for each dataset when no --channels/--fold is given.
MODEL_DEFAULTS = {
    "toyseg": {},  # DenoiserConfig's defaults: fold 2, channels (32, 64, 96)
    "digits": {"fold": 1, "channels": (64, 96)},
}


def _command(args) -> str:
    """The command line that ran, for the checkpoint's metadata."""
    return "python -m mdiff_lite " + " ".join(shlex.quote(a) for a in args.argv)


def _load(path, device):
    """The denoiser in ``path``, its metadata and the dataset it was trained on: eval and sample
    need that dataset (its test maps, its colours), so a checkpoint that names none is refused."""
    model, meta = load_denoiser(path, device)
    if meta.get("dataset") is None:
        raise ValueError(f"{path}: names no dataset (trained by fit() without meta['dataset']?), "
                         "so there are no test maps to use")
    return model, meta, dataset_by_name(meta["dataset"], meta.get("permute_seed"))


def _entropy(ds):
    value = getattr(ds, "entropy_bits_per_pixel", None)
    return float(value) if value is not None else None


def cmd_train(args) -> None:
    ds = dataset_by_name(args.data, args.permute_seed)
    train_maps = ds.split("train")
    overrides = dict(MODEL_DEFAULTS[args.data])
    if args.channels:
        overrides["channels"] = tuple(int(c) for c in args.channels.split(","))
    if args.fold:
        overrides["fold"] = args.fold
    config = DenoiserConfig(num_classes=ds.num_classes, height=ds.height, width=ds.width,
                            schedule=make_schedule(args.schedule, args.T).to_dict(), **overrides)
    torch.manual_seed(args.seed)
    model = Denoiser(config)
    steps = args.steps if args.steps is not None else (None if args.minutes else 2000)
    train_config = TrainConfig(steps=steps, max_seconds=args.minutes * 60 if args.minutes else None,
                               batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                               t_sampler=args.t_sampler, checkpoint_every=args.checkpoint_every,
                               amp=args.amp, compile=args.compile)
    meta = {"dataset": args.data, "permute_seed": args.permute_seed, "command": _command(args),
            "entropy_bits_per_pixel": _entropy(ds)}
    history = fit(model, train_maps, train_config, device=args.device, checkpoint_path=args.out,
                  resume=not args.no_resume, meta=meta)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()  # rank 0 has written the final checkpoint
        if torch.distributed.get_rank() != 0:
            return
    if history.get("steps_per_second"):
        print(f"trained {history['step'][-1]} steps in {history['seconds'][-1]:.0f} s "
              f"({history['steps_per_second']:.2f} steps/s); running bound estimate "
              f"{history['loss_bpd'][-1]:.4f} bits/pixel")
    else:
        return  # nothing was trained: the checkpoint and its results stay as they were
    if args.eval_maps:
        test = ds.split("test")[: args.eval_maps]
        result = estimate_bound(model, make_schedule(**config.schedule), test, k=args.eval_k, progress=True)
        update_meta(args.out, test_bpd_estimate=result["bpd"], test_bpd_estimate_stderr=result["stderr"],
                    test_bpd_estimate_bound=result["bound"], test_bpd_estimate_n_images=result["n_images"])
        print(f"test bits/pixel {result['bpd']:.4f} +- {result['stderr']:.4f} ({result['bound']}, "
              f"{result['n_images']} test maps)")
    print(f"wrote {args.out}")


def cmd_eval(args) -> None:
    device = pick_device(args.device, verbose=not args.json)
    model, meta, ds = _load(args.checkpoint, device)
    test = ds.split("test")
    if args.n:
        test = test[: args.n]
    schedule = make_schedule(**meta["model_config"]["schedule"])
    if args.mc:
        result = estimate_bound(model, schedule, test, k=args.mc, seed=args.seed, progress=not args.json)
    else:
        result = evaluate_bound(model, schedule, test, batch_size=args.batch_size, max_batch=args.max_batch,
                                seed=args.seed, progress=not args.json, compile=args.compile)
    entropy = meta.get("entropy_bits_per_pixel")
    out = {
        "checkpoint": str(args.checkpoint), "dataset": meta["dataset"], "permute_seed": meta.get("permute_seed"),
        "test_bpd": result["bpd"], "stderr": result["stderr"], "bound": result["bound"],
        "n_images": result["n_images"], "T": result["T"], "seconds": round(result["seconds"], 1),
        "device": str(device), "entropy_bits_per_pixel": entropy,
        "ratio_to_entropy": result["bpd"] / entropy if entropy else None,
        "train_steps": meta.get("steps"), "train_seconds": meta.get("wall_seconds"),
    }
    if "per_t_bpd" in result:
        out["breakdown"] = bound_breakdown(result["per_t_bpd"])
        out["maps_per_second"] = result["maps_per_second"]
    if args.update:
        update_meta(args.checkpoint, test_bpd=out["test_bpd"], test_bpd_stderr=out["stderr"],
                    test_bpd_bound=out["bound"], test_n_images=out["n_images"], eval_command=_command(args),
                    eval_seconds=out["seconds"], eval_device=out["device"])
    if args.json:
        print(json.dumps(out))
        return
    print(f"{meta['dataset']}: test {out['test_bpd']:.4f} +- {out['stderr']:.4f} bits per pixel "
          f"on {out['n_images']} maps, T = {out['T']} ({out['seconds']:.0f} s)")
    print(f"  {out['bound']}")
    if entropy:
        print(f"  true entropy {entropy:.4f} bits per pixel: the bound is {out['ratio_to_entropy']:.3f} x the entropy")
    if "breakdown" in out:
        print("  where the bound is spent:")
        for row in out["breakdown"]:
            print(f"    t {row['t']:>10}: {row['bpd']:.4f} bits/pixel ({100 * row['share']:.1f} %)")


def cmd_sample(args) -> None:
    from .plots import plot_grid  # matplotlib only where a picture is asked for
    from .sampling import sample

    device = pick_device(args.device)
    model, meta, ds = _load(args.checkpoint, device)
    schedule = make_schedule(**meta["model_config"]["schedule"])
    generator = torch.Generator(device=device).manual_seed(args.seed)
    maps = sample(model, schedule, args.n, steps=args.steps, generator=generator).cpu()
    if hasattr(ds, "log_prob"):
        valid = torch.isfinite(ds.log_prob(maps)).sum().item()
        print(f"{valid} of {args.n} samples are scenes the generator can draw (finite log_prob)")
    if args.png:
        steps = args.steps or schedule.T
        fig = plot_grid(maps, ds, ncols=min(8, args.n), suptitle=f"Samples, {meta['dataset']}, {steps} steps")
        Path(args.png).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.png, dpi=100, bbox_inches="tight")
        print(f"wrote {args.png}")


def cmd_export(args) -> None:
    model, meta = load_denoiser(args.checkpoint)
    meta = {k: v for k, v in meta.items() if k != "model_config"}
    meta["export_command"] = _command(args)
    meta["weights_dtype"] = "float16" if args.float16 else "float32"
    for key in [k for k in meta if k.startswith(("test_bpd", "test_n_images", "eval_"))]:
        meta.pop(key)  # measured on other weights: evaluate the exported file anew
    save_checkpoint(args.to, model, meta, weights_dtype=torch.float16 if args.float16 else torch.float32)
    print(f"wrote {args.to} ({Path(args.to).stat().st_size / 1e6:.1f} MB); evaluate it with "
          f"python -m mdiff_lite eval {args.to} --update")


def _threads(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mdiff_lite", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a denoiser and save a checkpoint")
    p.add_argument("--data", choices=DATASET_NAMES, required=True)
    p.add_argument("--steps", type=int, help="optimiser steps (default 2000, or no limit with --minutes)")
    p.add_argument("--minutes", type=float, help="wall-clock budget; training stops at whichever comes first")
    p.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU; or $MDIFF_DEVICE), cpu, cuda, mps")
    p.add_argument("--threads", type=_threads, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--out", required=True, help="checkpoint path; an existing one is resumed unless --no-resume")
    p.add_argument("--no-resume", action="store_true", help="train afresh, overwriting --out")
    p.add_argument("--T", type=int, default=1000)
    p.add_argument("--schedule", choices=SCHEDULE_NAMES, default="hoogeboom-cosine")
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size,
                   help="maps per step (per process under torchrun); the learning rate scales with the "
                        f"square root of the whole batch, from --lr at {TrainConfig.lr_batch}")
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--amp", choices=AMP_CHOICES, default=TrainConfig.amp,
                   help="mixed precision (auto: bfloat16 or float16 on CUDA by what the GPU has, float32 elsewhere)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (a minute to compile)")
    p.add_argument("--t-sampler", choices=tuple(T_SAMPLERS), default=TrainConfig.t_sampler)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--channels", help="comma-separated channels per level, e.g. 56,80,96")
    p.add_argument("--fold", type=int, help="pixels folded into channels per side (1, 2, 4)")
    p.add_argument("--permute-seed", type=int, help="train on the dataset with class ids permuted")
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--eval-maps", type=int, default=200, help="test maps for the closing estimate (0: none)")
    p.add_argument("--eval-k", type=int, default=4, help="draws of t per test map for that estimate")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="test bits per pixel: the all-T estimate of the bound (every term, one "
                                    "draw of x_t each) on every test map")
    p.add_argument("checkpoint")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--n", type=int, help="only the first N test maps")
    p.add_argument("--mc", type=int, metavar="K", help="a Monte-Carlo estimate with K draws of t per map instead")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-batch", type=int, default=512)
    p.add_argument("--compile", action="store_true", help="torch.compile the network first (about a minute; "
                   "faster calls after)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=_threads, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--update", action="store_true", help="record the result in the checkpoint's metadata")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("sample", help="draw maps from a trained denoiser")
    p.add_argument("checkpoint")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--png", help="write a grid of the samples here")
    p.add_argument("--steps", type=int, help="network calls (default T)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("export", help="a slim copy of a checkpoint for shipping (weights and metadata only)")
    p.add_argument("checkpoint")
    p.add_argument("to")
    p.add_argument("--float16", action="store_true", help="store the weights in float16 (half the size)")
    p.set_defaults(func=cmd_export)
    return parser


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    if getattr(args, "threads", None) is not None:
        torch.set_num_threads(args.threads)
    try:
        args.func(args)
    except (ValueError, OSError) as err:  # a bad file or argument: one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # train has saved its checkpoint and said so
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
