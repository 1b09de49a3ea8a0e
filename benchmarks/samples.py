"""How good are a trained denoiser's samples, and what does sampling in fewer steps cost?

Draws ``--n`` maps at each number of sampling steps (network calls), then scores every map by the
share of its 4 x 4 windows (every position) that occur in no training map
(:func:`mdiff_lite.data.unseen_windows`): real test maps score about 0, and a single wrong pixel
makes up to 16 unseen windows. Mean over maps, +- one standard error over maps; the same seed at
every step count.

    python benchmarks/samples.py [--checkpoint PATH] [--n 48] [--steps 10,25,50,100,250,1000] [--json PATH]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
from _common import environment, write_json  # noqa: E402
from mdiff_lite import make_schedule  # noqa: E402
from mdiff_lite.data import dataset_by_name, unseen_windows  # noqa: E402
from mdiff_lite.sampling import sample  # noqa: E402
from mdiff_lite.train import load_denoiser, pick_device, pretrained_path  # noqa: E402


def _mean_and_stderr(values: torch.Tensor) -> tuple[float, float]:
    values = values.double()
    return values.mean().item(), (values.std() / math.sqrt(len(values))).item() if len(values) > 1 else math.nan


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(pretrained_path("toyseg")))
    parser.add_argument("--n", type=int, default=48, help="samples per step count")
    parser.add_argument("--steps", default="10,25,50,100,250,1000", help="comma-separated numbers of steps")
    parser.add_argument("--size", type=int, default=4, help="window side in pixels")
    parser.add_argument("--test-maps", type=int, default=256, help="real test maps scored the same way")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", help="default: benchmarks/results/samples_cpu.json")
    args = parser.parse_args(argv)
    if args.n < 2:
        parser.error("--n must be at least 2 (a standard error needs two maps)")

    device = pick_device(args.device)
    model, meta = load_denoiser(args.checkpoint, device)
    schedule = make_schedule(**model.config.schedule)
    steps = [int(s) for s in args.steps.split(",")]
    if any(not 1 <= s <= schedule.T for s in steps):
        parser.error(f"--steps must lie in 1..{schedule.T}")
    ds = dataset_by_name(meta["dataset"], meta.get("permute_seed"))
    share = unseen_windows(ds.split("train"), ds.num_classes, args.size)

    test = ds.split("test")[: args.test_maps]
    real, real_se = _mean_and_stderr(100 * share(test))
    rows = [{"what": f"real test maps ({len(test)})", "steps": None, "unseen_pct": real, "stderr_pct": real_se,
             "seconds": None}]
    for n_steps in steps:
        generator = torch.Generator(device=device).manual_seed(args.seed)
        start = time.perf_counter()
        maps = sample(model, schedule, args.n, steps=n_steps, generator=generator, progress=False).cpu()
        seconds = time.perf_counter() - start
        mean, se = _mean_and_stderr(100 * share(maps))
        rows.append({"what": f"samples ({args.n})", "steps": n_steps, "unseen_pct": mean, "stderr_pct": se,
                     "seconds": round(seconds, 1)})
        print(f"{n_steps:>5} steps: {mean:5.2f} +- {se:.2f} % unseen windows ({seconds:.1f} s)")

    result = {"benchmark": "samples", **environment(device), "checkpoint": args.checkpoint,
              "dataset": meta["dataset"], "T": schedule.T, "window": args.size, "seed": args.seed,
              "command": "python benchmarks/samples.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "rows": rows}
    print(markdown(result))
    path = Path(args.json or Path(__file__).resolve().parent / "results" / "samples_cpu.json")
    write_json(path, result)
    path.with_suffix(".md").write_text(markdown(result) + "\n")
    return result


def markdown(result: dict) -> str:
    size = result["window"]
    lines = [f"| maps | sampling steps | unseen {size} x {size} windows (%) | seconds |", "|---|---:|---:|---:|"]
    for row in result["rows"]:
        steps = "" if row["steps"] is None else row["steps"]
        seconds = "" if row["seconds"] is None else f"{row['seconds']:.1f}"
        lines.append(f"| {row['what']} | {steps} | {row['unseen_pct']:.2f} +- {row['stderr_pct']:.2f} | {seconds} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
