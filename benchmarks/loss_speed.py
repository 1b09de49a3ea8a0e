"""How long the diffusion math takes, apart from any network.

Times ``training_loss`` (forward and backward) and ``vlb_terms`` on a 32 x 32, K = 8, batch-64
input. The denoiser is free (it returns a fixed logits tensor), so the figures are the cost of
eqs. 3 and 11-17 alone: sampling x_t, the log-space posteriors, the KLs, the time sampler.

    python benchmarks/loss_speed.py [--T 1000] [--repeats 20] [--json benchmarks/results/loss_speed.json]
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


def time_ms(fn, repeats: int, warmup: int = 3) -> tuple[float, float]:
    """Median and spread (interquartile half-range) of ``fn``'s wall time, in ms."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    q = statistics.quantiles(times, n=4)
    return statistics.median(times), (q[2] - q[0]) / 2


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--T", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--K", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--vlb-terms-T", type=int, default=100,
                        help="T of the schedule for the full vlb_terms timing (all T terms per call)")
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "loss_speed.json"))
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    B, H, K = args.batch, args.size, args.K
    x0 = torch.randint(0, K, (B, H, H))
    # Laid out as a convolutional network returns it: channels-first memory, class axis last in view.
    logits = torch.randn(B, K, H, H, requires_grad=True)

    def denoiser(x_t, t):  # free: a fixed tensor (repeated when several t share a call)
        out = logits.repeat(x_t.shape[0] // B, 1, 1, 1) if x_t.shape[0] != B else logits
        return out.permute(0, 2, 3, 1)

    schedule = make_schedule("hoogeboom-cosine", args.T)
    rows = []

    for name, sampler in [("uniform", UniformTimeSampler(args.T)), ("importance", ImportanceTimeSampler(args.T))]:
        if name == "importance":  # warmed up, so that it samples from the learned p(t)
            sampler.update(torch.arange(1, args.T + 1).repeat(sampler.history), torch.rand(args.T * sampler.history))

        def step():
            logits.grad = None
            training_loss(denoiser, x0, schedule, sampler, num_classes=K).backward()

        median, spread = time_ms(step, args.repeats)
        rows.append({"what": f"training_loss + backward ({name} t)", "T": args.T, "ms_per_call": median,
                     "spread_ms": spread})

    def one_column():
        with torch.no_grad():
            vlb_terms(denoiser, x0, make_schedule("hoogeboom-cosine", 1), num_classes=K)

    median, spread = time_ms(one_column, args.repeats)
    rows.append({"what": "vlb_terms, one t (T = 1: decoder + prior)", "T": 1, "ms_per_call": median,
                 "spread_ms": spread})

    small = make_schedule("hoogeboom-cosine", args.vlb_terms_T)

    def all_columns():
        with torch.no_grad():
            vlb_terms(denoiser, x0, small, num_classes=K)

    median, spread = time_ms(all_columns, max(3, args.repeats // 5), warmup=1)
    rows.append({"what": f"vlb_terms, all {args.vlb_terms_T} terms", "T": args.vlb_terms_T,
                 "ms_per_call": median, "spread_ms": spread,
                 "ms_per_term": median / args.vlb_terms_T})

    result = {
        "benchmark": "loss_speed",
        "input": {"batch": B, "height": H, "width": H, "K": K},
        **environment("cpu"), "rows": rows,
    }
    print(f"Diffusion math alone (free denoiser), batch {B} of {H}x{H}, K = {K}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'what':<48} {'ms per call':>12} {'+-':>7}")
    for r in rows:
        print(f"{r['what']:<48} {r['ms_per_call']:>12.2f} {r['spread_ms']:>7.2f}")
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
