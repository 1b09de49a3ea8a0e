"""Training and evaluation speed of the default denoisers on this machine's device.

For each dataset's default model: optimiser steps per second (batch 64, the whole step: loss,
backward, AdamW; the median step), the share of a step spent in the diffusion math (against the
same step with the loss replaced by a plain sum of the logits, the two timed in turn), and
evaluation throughput in map-terms per second (one term of the bound for one map: a network call
plus eqs. 13-16), from which the time of an all-T evaluation of 1000 test maps at T = 1000
follows (10^6 map-terms).

    python benchmarks/train_speed.py [--device auto] [--steps 30] [--t-sampler uniform|importance] [--json PATH]
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
from mdiff_lite import ImportanceTimeSampler, UniformTimeSampler, make_schedule, training_loss, vlb_terms  # noqa: E402
from mdiff_lite.cli import MODEL_DEFAULTS  # noqa: E402
from mdiff_lite.data import dataset_by_name  # noqa: E402
from mdiff_lite.models import Denoiser, DenoiserConfig, count_parameters  # noqa: E402
from mdiff_lite.train import TrainConfig, pick_device  # noqa: E402


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


def measure(name: str, device, steps: int, eval_batch: int, t_sampler: str) -> dict:
    ds = dataset_by_name(name)
    T = 1000
    config = DenoiserConfig(num_classes=ds.num_classes, height=ds.height, width=ds.width,
                            schedule={"name": "hoogeboom-cosine", "T": T}, **MODEL_DEFAULTS[name])
    torch.manual_seed(0)
    model = Denoiser(config).to(device)
    schedule = make_schedule("hoogeboom-cosine", T)
    sampler = ImportanceTimeSampler(T) if t_sampler == "importance" else UniformTimeSampler(T)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x0 = ds.split("train")[:64].to(device)
    use_amp = device.type == "cuda"

    def step(loss_fn):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss = loss_fn()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    t = torch.randint(1, T + 1, (64,), device=device)
    x_t = x0  # the network's cost does not depend on the values
    full, net_only = timed_pair(lambda: step(lambda: training_loss(model, x0, schedule, sampler)),
                                lambda: step(lambda: model(x_t, t).float().sum() * 0), steps, device)

    model.eval()
    maps = ds.split("test")[:eval_batch].to(device)
    terms_per_call = max(1, 512 // eval_batch)
    small = make_schedule("hoogeboom-cosine", terms_per_call * 4)  # 4 network calls of 512 maps

    def evaluate():
        with torch.no_grad():
            vlb_terms(model, maps, small, max_batch=512)

    per_call = timed(evaluate, 3, device)
    map_terms_per_s = eval_batch * small.T / per_call
    return {
        "dataset": name, "height": ds.height, "width": ds.width, "K": ds.num_classes,
        "parameters": count_parameters(model), "model": config.to_dict(), "t_sampler": t_sampler,
        "train_steps_per_s": 1 / full, "ms_per_step": 1e3 * full, "ms_per_step_network_only": 1e3 * net_only,
        "diffusion_math_share": max(0.0, (full - net_only) / full),
        "eval_map_terms_per_s": map_terms_per_s,
        "seconds_all_t_eval_1000_maps_T1000": 1e6 / map_terms_per_s,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--eval-batch", type=int, default=64)
    parser.add_argument("--data", default="toyseg,digits")
    parser.add_argument("--t-sampler", choices=("uniform", "importance"), default=TrainConfig.t_sampler,
                        help="how the training step draws t (default: fit's)")
    parser.add_argument("--json", help="default: benchmarks/results/train_speed_<device>.json")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    rows = [measure(name, device, args.steps, args.eval_batch, args.t_sampler) for name in args.data.split(",")]
    result = {"benchmark": "train_speed", **environment(device), "rows": rows}
    print(f"Training and evaluation speed on {device} ({result['device_name']}), {torch.get_num_threads()} threads, "
          f"{args.t_sampler} t")
    print(f"{'dataset':<8} {'params':>9} {'steps/s':>8} {'ms/step':>8} {'math %':>7} {'map-terms/s':>12} "
          f"{'1000 maps x T=1000':>19}")
    for r in rows:
        print(f"{r['dataset']:<8} {r['parameters']:>9,} {r['train_steps_per_s']:>8.2f} {r['ms_per_step']:>8.1f} "
              f"{100 * r['diffusion_math_share']:>6.1f}% {r['eval_map_terms_per_s']:>12,.0f} "
              f"{r['seconds_all_t_eval_1000_maps_T1000']:>17.0f} s")
    write_json(args.json or Path(__file__).parent / "results" / f"train_speed_{device.type}.json", result)
    return result


if __name__ == "__main__":
    main()
