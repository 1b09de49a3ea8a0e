"""How long the explorers of notebook 04 take to answer a control, end to end.

Each row sets a control's value from Python, as the kernel does when a browser moves it: the
observer recomputes (coupled ``x_t``, the schedule's curves, the posterior), redraws the figure
and puts the new PNG into the Output widget. What is left out is the websocket and the browser's
drawing of the PNG. The target is 100 ms per update for a 32 x 32 map at T = 1000.

    python benchmarks/widget_latency.py [--T 1000] [--repeats 50] [--dataset toyseg] [--json benchmarks/results/widget_latency.json]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
from _common import environment, write_json  # noqa: E402
from mdiff_lite.schedules import SCHEDULE_NAMES  # noqa: E402
from mdiff_lite.widgets import noise_explorer, posterior_explorer  # noqa: E402


def time_updates(control, values, repeats: int, warmup: int = 2) -> tuple[float, float, float]:
    """Median, 90th percentile and max in ms of ``control.value = v``, cycling through ``values``
    (consecutive values must differ, so that every assignment fires the observer)."""
    cycle = itertools.cycle(values)
    for _ in range(warmup):
        control.value = next(cycle)
    times = []
    for _ in range(repeats):
        value = next(cycle)
        start = time.perf_counter()
        control.value = value
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(0.9 * len(times)))], times[-1]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--T", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--dataset", default="toyseg", help="toyseg (32 x 32, K = 8) or digits (8 x 8, K = 17)")
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "widget_latency.json"))
    args = parser.parse_args(argv)

    T, R = args.T, args.repeats
    start = time.perf_counter()
    explorer = noise_explorer(args.dataset, T=T, t=T // 2)
    build_ms = (time.perf_counter() - start) * 1e3
    H, W = explorer.x0.shape
    # t: strides that land on different t each time, over the whole range.
    t_values = [(k * 37) % (T + 1) for k in range(1, 200)]
    t_values = [t for i, t in enumerate(t_values) if i == 0 or t != t_values[i - 1]]
    rows = []

    def row(what, control, values, repeats):
        median, p90, worst = time_updates(control, values, repeats)
        rows.append({"what": what, "T": T, "repeats": repeats, "median_ms": median, "p90_ms": p90, "max_ms": worst})

    row("noise explorer: t slider", explorer.t_slider, t_values, R)
    row("noise explorer: schedule dropdown", explorer.schedule_dropdown, SCHEDULE_NAMES, max(5, R // 2))
    row("noise explorer: T slider (T <-> T/2)", explorer.T_slider, [T // 2 or 1, T], max(5, R // 2))
    explorer.schedule_dropdown.value = "constant"
    beta = explorer.param_sliders["beta"]
    row("noise explorer: a parameter slider (beta)", beta, [beta.value, 2 * beta.value], max(5, R // 2))
    explorer.schedule_dropdown.value = "hoogeboom-cosine"
    posterior = posterior_explorer(args.dataset, T=T)
    row("posterior explorer: t slider", posterior.t_slider, [t for t in t_values if t >= 1], R)

    result = {
        "benchmark": "widget_latency",
        "input": {"dataset": args.dataset, "height": H, "width": W, "K": explorer.dataset.num_classes,
                  "png_bytes": len(explorer.png)},
        "build_ms": build_ms,
        **environment("cpu"), "rows": rows,
    }
    print(f"Explorer updates end to end (recompute + redraw + PNG into the Output widget), {args.dataset} "
          f"{H}x{W}, T = {T}, {torch.get_num_threads()} threads; building the explorer: {build_ms:.0f} ms")
    print(f"{'what':<44} {'median ms':>10} {'p90 ms':>8} {'max ms':>8}")
    for r in rows:
        print(f"{r['what']:<44} {r['median_ms']:>10.1f} {r['p90_ms']:>8.1f} {r['max_ms']:>8.1f}")
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
