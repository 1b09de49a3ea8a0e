"""Where the time of one training step and of one evaluation call goes: torch.profiler's
operators, by self time, for a dataset's default denoiser on this machine's device.

The training step is fit's (loss, backward, fused AdamW, batch 64); the evaluation call is one
network call of ``vlb_terms`` on 512 map-terms (8 times for 64 maps), as ``evaluate_bound`` makes
it. The table groups operators into the network's convolutions, its other layers, and the rest.

    python benchmarks/profile_step.py [--data toyseg] [--device auto] [--repeats 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
from _common import environment, write_json  # noqa: E402
from mdiff_lite import UniformTimeSampler, make_schedule, training_loss, vlb_terms  # noqa: E402
from mdiff_lite.cli import MODEL_DEFAULTS  # noqa: E402
from mdiff_lite.data import dataset_by_name  # noqa: E402
from mdiff_lite.models import Denoiser, DenoiserConfig  # noqa: E402
from mdiff_lite.train import pick_device  # noqa: E402

CONVOLUTIONS = ("convolution", "conv2d", "_convolution", "mkldnn_convolution", "cudnn_convolution",
                "convolution_backward", "mkldnn_convolution_backward", "slow_conv2d")


def profile(fn, repeats: int, device) -> list[dict]:
    fn()  # warm-up
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(repeats):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    rows = [{"op": e.key, "ms": getattr(e, attr) / 1e3 / repeats, "calls": e.count // repeats}
            for e in prof.key_averages()]
    rows = [r for r in rows if r["ms"] > 0]
    total = sum(r["ms"] for r in rows)
    for r in rows:
        r["share"] = r["ms"] / total
    return sorted(rows, key=lambda r: -r["ms"])


def summarise(rows) -> dict:
    conv = sum(r["share"] for r in rows if r["op"].removeprefix("aten::") in CONVOLUTIONS)
    return {"ms": sum(r["ms"] for r in rows), "convolution_share": conv}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="toyseg")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--json", help="default: benchmarks/results/profile_<device>.json")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    ds = dataset_by_name(args.data)
    config = DenoiserConfig(num_classes=ds.num_classes, height=ds.height, width=ds.width, **MODEL_DEFAULTS[args.data])
    torch.manual_seed(0)
    model = Denoiser(config).to(device)
    schedule = make_schedule(**config.schedule)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type in ("cuda", "cpu"))
    x0 = ds.split("train")[:64].to(device)
    sampler = UniformTimeSampler(schedule.T)

    def train_step():
        loss = training_loss(model, x0, schedule, sampler)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    small = make_schedule(config.schedule["name"], 8)  # 8 t per call x 64 maps = one call of 512

    def eval_call():
        with torch.no_grad():
            vlb_terms(model.eval(), x0, small, max_batch=512)
        model.train()

    result = {"benchmark": "profile_step", **environment(device), "dataset": args.data, "rows": []}
    for name, fn in (("training step", train_step), ("evaluation call", eval_call)):
        rows = profile(fn, args.repeats, device)
        result["rows"].append({"what": name, **summarise(rows), "ops": rows[:40]})
        print(f"\n{name} ({args.data} default, {device}, {torch.get_num_threads()} threads): "
              f"{summarise(rows)['ms']:.1f} ms, convolutions {100 * summarise(rows)['convolution_share']:.0f} %")
        print(f"{'operator':<44} {'ms':>8} {'share':>6} {'calls':>6}")
        for r in rows[:args.top]:
            print(f"{r['op']:<44} {r['ms']:>8.2f} {100 * r['share']:>5.1f}% {r['calls']:>6}")
    write_json(args.json or Path(__file__).parent / "results" / f"profile_{device.type}.json", result)
    return result


if __name__ == "__main__":
    main()
