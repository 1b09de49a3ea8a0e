"""Training and evaluation speed of the default denoisers on this machine's device.

For each dataset's default model:

- ``fit`` steps per second: ``fit`` itself, timed between its first and last log step (so
  ``torch.compile``'s first steps are left out), with the batch size, mixed precision and t
  sampler given;
- the share of a step spent in the diffusion math: the same step (loss, backward, fused AdamW)
  against one whose loss is a plain sum of the logits, the two timed in turn (medians);
- evaluation throughput in map-terms per second (one term of the bound for one map: a network
  call plus eqs. 13-16), from which the time of an all-T evaluation of 1000 test maps at
  T = 1000 follows (10^6 map-terms).

With ``--target-ratio R --minutes M`` it also trains the toy-map default for up to M minutes (the
learning rate decays over M) and reports when the EMA weights first reach R times the maps' true
entropy: every ``--check-seconds`` of training they are scored with a Monte-Carlo estimate of the
bound (``--check-maps`` test maps, 4 draws of t each; the time this takes is not training time).

    python benchmarks/train_speed.py [--device auto] [--steps 30] [--batch-size 32] [--amp auto] [--compile]
        [--eval-compile] [--fold 4 --channels 56,80,96] [--t-sampler stratified] [--target-ratio 1.10 --minutes 10]
        [--json PATH]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
from _common import environment, write_json  # noqa: E402
from mdiff_lite import make_schedule, training_loss, vlb_terms  # noqa: E402
from mdiff_lite.cli import MODEL_DEFAULTS  # noqa: E402
from mdiff_lite.data import dataset_by_name  # noqa: E402
from mdiff_lite.evaluate import estimate_bound  # noqa: E402
from mdiff_lite.models import Denoiser, DenoiserConfig, count_parameters  # noqa: E402
from mdiff_lite.train import AMP_CHOICES, T_SAMPLERS, TrainConfig, autocast_dtype, fit, pick_device  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, n: int, device) -> float:
    """Seconds per call of ``fn``, after two warm-up calls."""
    for _ in range(2):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(n):
        fn()
    sync(device)
    return (time.perf_counter() - start) / n


def timed_pair(fn_a, fn_b, n: int, device) -> tuple[float, float]:
    """Median seconds per call of ``fn_a`` and of ``fn_b``, called in turn ``n`` times each after two
    warm-up calls: a slow spell of a shared machine then slows both alike, and a difference of the
    two (the diffusion math's share of a step) is not swamped by it."""
    for _ in range(2):
        fn_a(), fn_b()
    times = ([], [])
    for _ in range(n):
        for fn, out in zip((fn_a, fn_b), times):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


NETWORK = {}  # overrides of the default network (--fold, --channels)


def build(name: str, device):
    ds = dataset_by_name(name)
    config = DenoiserConfig(num_classes=ds.num_classes, height=ds.height, width=ds.width,
                            schedule={"name": "hoogeboom-cosine", "T": 1000}, **{**MODEL_DEFAULTS[name], **NETWORK})
    torch.manual_seed(0)
    return ds, config, Denoiser(config).to(device)


def measure(name: str, device, steps: int, eval_batch: int, train: TrainConfig, eval_compile: bool = False) -> dict:
    ds, config, model = build(name, device)
    T = config.schedule["T"]
    schedule = make_schedule(**config.schedule)
    sampler = T_SAMPLERS[train.t_sampler](T)
    amp_dtype = autocast_dtype(train.amp, device)
    net = torch.compile(model) if train.compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type in ("cuda", "cpu"))
    x0 = ds.split("train")[:train.batch_size].to(device)

    def step(loss_fn):
        with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
            loss = loss_fn()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    t = torch.randint(1, T + 1, (x0.shape[0],), device=device)
    x_t = x0  # the network's cost does not depend on the values
    full, net_only = timed_pair(lambda: step(lambda: training_loss(net, x0, schedule, sampler)),
                                lambda: step(lambda: net(x_t, t).float().sum() * 0), steps, device)

    # fit itself, as it trains: from its first log step to its last (compilation left out)
    fit_config = TrainConfig(**{**train.__dict__, "steps": max(4 * train.log_every, steps + train.log_every),
                                "max_seconds": None, "checkpoint_every": 0})
    _, _, fresh = build(name, device)
    history = fit(fresh, ds.split("train"), fit_config, device=device, progress=False)
    fit_steps_per_s = (history["step"][-1] - history["step"][0]) / (history["seconds"][-1] - history["seconds"][0])

    model.eval()
    maps = ds.split("test")[:eval_batch].to(device)
    terms_per_call = max(1, 512 // eval_batch)
    small = make_schedule("hoogeboom-cosine", terms_per_call * 4)  # 4 network calls of 512 maps

    def evaluate():
        with torch.no_grad():
            vlb_terms(model, maps, small, max_batch=512)

    per_call = timed(evaluate, 3, device)
    map_terms_per_s = eval_batch * small.T / per_call
    compiled = {}
    if eval_compile:  # evaluate_bound(compile=True): the same calls through torch.compile
        net_eval = torch.compile(model, dynamic=False)
        start = time.perf_counter()
        with torch.no_grad():
            vlb_terms(net_eval, maps, small, num_classes=ds.num_classes, max_batch=512)
        first = time.perf_counter() - start
        def evaluate_compiled():
            with torch.no_grad():
                vlb_terms(net_eval, maps, small, num_classes=ds.num_classes, max_batch=512)

        per_call_c = timed(evaluate_compiled, 3, device)
        rate = eval_batch * small.T / per_call_c
        compiled = {"eval_compiled_map_terms_per_s": rate, "seconds_all_t_eval_1000_maps_T1000_compiled": 1e6 / rate,
                    "seconds_to_compile_eval": first}
    return {
        "dataset": name, "height": ds.height, "width": ds.width, "K": ds.num_classes,
        "parameters": count_parameters(model), "model": config.to_dict(), "t_sampler": train.t_sampler,
        "batch_size": train.batch_size, "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else "float32",
        "compile": train.compile,
        "fit_steps_per_s": fit_steps_per_s, "fit_maps_per_s": fit_steps_per_s * train.batch_size,
        "train_steps_per_s": 1 / full, "ms_per_step": 1e3 * full, "ms_per_step_network_only": 1e3 * net_only,
        "diffusion_math_share": max(0.0, (full - net_only) / full),
        "eval_map_terms_per_s": map_terms_per_s,
        "seconds_all_t_eval_1000_maps_T1000": 1e6 / map_terms_per_s, **compiled,
    }


def time_to_target(device, train: TrainConfig, ratio: float, minutes: float, check_seconds: float,
                   check_maps: int) -> dict:
    """Train the toy-map default for up to ``minutes``; return when its EMA first scored
    ``ratio`` times the entropy (a Monte-Carlo estimate, 4 draws of t per map), and the curve."""
    ds, config, model = build("toyseg", device)
    schedule = make_schedule(**config.schedule)
    test = ds.split("test")[:check_maps]
    target = ratio * ds.entropy_bits_per_pixel
    curve, next_check = [], check_seconds

    def on_log(step, seconds, ema):
        nonlocal next_check
        if seconds < next_check:
            return False
        next_check = seconds + check_seconds
        est = estimate_bound(ema, schedule, test, k=4, progress=False)
        curve.append({"step": step, "seconds": round(seconds, 1), "bpd": est["bpd"], "stderr": est["stderr"],
                      "ratio": est["bpd"] / ds.entropy_bits_per_pixel})
        print(f"  {seconds:7.0f} s, step {step:6d}: {est['bpd']:.4f} +- {est['stderr']:.4f} bits/pixel "
              f"= {curve[-1]['ratio']:.3f}x", flush=True)
        return est["bpd"] <= target

    config_run = TrainConfig(**{**train.__dict__, "steps": None, "max_seconds": 60 * minutes, "checkpoint_every": 0})
    fit(model, ds.split("train"), config_run, device=device, progress=False, on_log=on_log)
    reached = next((c for c in curve if c["bpd"] <= target), None)
    return {"target_ratio": ratio, "budget_minutes": minutes, "check_maps": check_maps,
            "estimate": "Monte-Carlo estimate of the bound, 4 uniform t per map, +- one standard error",
            "reached": reached is not None, "seconds_to_target": reached["seconds"] if reached else None,
            "steps_to_target": reached["step"] if reached else None, "curve": curve}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--eval-batch", type=int, default=64)
    parser.add_argument("--data", default="toyseg,digits")
    parser.add_argument("--t-sampler", choices=tuple(T_SAMPLERS), default=TrainConfig.t_sampler,
                        help="how the training step draws t (default: fit's)")
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--amp", choices=AMP_CHOICES, default=TrainConfig.amp)
    parser.add_argument("--compile", action="store_true", help="torch.compile the network for training")
    parser.add_argument("--eval-compile", action="store_true", help="also time evaluation through torch.compile")
    parser.add_argument("--fold", type=int, help="another network than the default: pixels folded per side")
    parser.add_argument("--channels", help="another network than the default: channels per level, e.g. 56,80,96")
    parser.add_argument("--target-ratio", type=float, help="also train the toy default until this ratio to the entropy")
    parser.add_argument("--minutes", type=float, default=10.0, help="the budget of that run")
    parser.add_argument("--check-seconds", type=float, default=30.0)
    parser.add_argument("--check-maps", type=int, default=512)
    parser.add_argument("--json", help="default: benchmarks/results/train_speed_<device>.json")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    train = TrainConfig(batch_size=args.batch_size, amp=args.amp, compile=args.compile, t_sampler=args.t_sampler)
    train.validate()
    if args.fold:
        NETWORK["fold"] = args.fold
    if args.channels:
        NETWORK["channels"] = tuple(int(c) for c in args.channels.split(","))
    rows = [measure(name, device, args.steps, args.eval_batch, train, args.eval_compile) for name in args.data.split(",")]
    result = {"benchmark": "train_speed", **environment(device), "rows": rows}
    print(f"Training and evaluation speed on {device} ({result['device_name']}), {torch.get_num_threads()} threads, "
          f"{args.t_sampler} t, batch {args.batch_size}, {rows[0]['amp']}{', compiled' if args.compile else ''}")
    print(f"{'dataset':<8} {'params':>9} {'fit steps/s':>11} {'maps/s':>8} {'ms/step':>8} {'math %':>7} "
          f"{'map-terms/s':>12} {'1000 maps x T=1000':>19}")
    for r in rows:
        print(f"{r['dataset']:<8} {r['parameters']:>9,} {r['fit_steps_per_s']:>11.2f} {r['fit_maps_per_s']:>8.0f} "
              f"{r['ms_per_step']:>8.1f} {100 * r['diffusion_math_share']:>6.1f}% {r['eval_map_terms_per_s']:>12,.0f} "
              f"{r['seconds_all_t_eval_1000_maps_T1000']:>17.0f} s")
        if "eval_compiled_map_terms_per_s" in r:
            print(f"{'':<8} compiled evaluation: {r['eval_compiled_map_terms_per_s']:,.0f} map-terms/s, 1000 maps x "
                  f"T=1000 in {r['seconds_all_t_eval_1000_maps_T1000_compiled']:.0f} s "
                  f"(+ {r['seconds_to_compile_eval']:.0f} s to compile)")
    if args.target_ratio:
        print(f"Training the toy default for up to {args.minutes:g} min until {args.target_ratio:g}x the entropy:")
        result["time_to_target"] = time_to_target(device, train, args.target_ratio, args.minutes,
                                                  args.check_seconds, args.check_maps)
        reached = result["time_to_target"]
        print(f"reached {args.target_ratio:g}x after {reached['seconds_to_target']} s ({reached['steps_to_target']} steps)"
              if reached["reached"] else f"not reached in {args.minutes:g} min")
    write_json(args.json or Path(__file__).parent / "results" / f"train_speed_{device.type}.json", result)
    return result


if __name__ == "__main__":
    main()
