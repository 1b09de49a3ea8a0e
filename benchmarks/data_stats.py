"""The datasets in numbers, and the sample grids the README shows.

For the toy street scenes at 32 x 32 and 8 x 8: the exact entropy (bits per map and per pixel),
the size of the support where it can be counted, the seconds to sample 10 000 maps and to score
1 000 maps with the exact ``log_prob``. For the digits: the split sizes and classes. Writes a JSON
file and three PNGs: a 4 x 8 grid of 32 x 32 toy samples, a grid of 8 x 8 toy samples and one of
test digits.

    python benchmarks/data_stats.py [--json benchmarks/results/data_stats.json] [--png-dir benchmarks/results]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")   # a script: never open a window

import torch  # noqa: E402

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
from _common import environment, write_json  # noqa: E402
from mdiff_lite.data import Digits, ToySegmentation  # noqa: E402
from mdiff_lite.plots import plot_grid  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def seconds(fn, repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def toy_row(height: int, width: int, n_sample: int, n_score: int, repeats: int) -> dict:
    ds = ToySegmentation(height, width)
    bits_per_map = sum(v.entropy_bits for v in ds.variables)
    maps = ds.sample(n_score, torch.Generator().manual_seed(0))
    by_kind = {}   # "building 0" .. "building 3" -> "building"; "horizon" and "sidewalk depth" stay
    for v in ds.variables:
        kind = v.name if v.name in ("horizon", "sidewalk depth") else v.name.split()[0]
        by_kind[kind] = by_kind.get(kind, 0.0) + v.entropy_bits
    return {
        "dataset": "ToySegmentation", "height": height, "width": width, "num_classes": ds.num_classes,
        "variables": len(ds.variables),
        "support_size": math.prod(len(v.values) for v in ds.variables),
        "entropy_bits_per_map": bits_per_map, "entropy_bits_per_pixel": ds.entropy_bits_per_pixel,
        f"seconds_to_sample_{n_sample}": seconds(lambda: ds.sample(n_sample, torch.Generator().manual_seed(1)),
                                                 repeats),
        f"seconds_for_log_prob_of_{n_score}": seconds(lambda: ds.log_prob(maps), repeats),
        "bits_per_map_by_kind": by_kind,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=str(RESULTS / "data_stats.json"), help="where to write the JSON ('' to skip)")
    parser.add_argument("--png-dir", default=str(RESULTS), help="where to write the PNG grids ('' to skip)")
    parser.add_argument("--n-sample", type=int, default=10_000, help="maps per timed sample() call")
    parser.add_argument("--n-score", type=int, default=1_000, help="maps per timed log_prob() call")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))

    toys = [toy_row(32, 32, args.n_sample, args.n_score, args.repeats),
            toy_row(8, 8, args.n_sample, args.n_score, args.repeats)]
    digits = Digits()
    digits_row = {"dataset": "Digits", "height": 8, "width": 8, "num_classes": digits.num_classes,
                  "train": len(digits.split("train")), "test": len(digits.split("test"))}
    result = {
        "benchmark": "data_stats", **environment("cpu"), "toy": toys, "digits": digits_row,
    }

    sample_key, score_key = f"seconds_to_sample_{args.n_sample}", f"seconds_for_log_prob_of_{args.n_score}"
    print(f"Datasets, {torch.get_num_threads()} CPU threads, torch {torch.__version__}")
    print(f"{'dataset':<16} {'H x W':>7} {'K':>3} {'bits/map':>9} {'bits/pixel':>11} {'support':>9} "
          f"{f'sample {args.n_sample} (s)':>18} {f'log_prob {args.n_score} (s)':>18}")
    for r in toys:
        print(f"{r['dataset']:<16} {r['height']:>3} x {r['width']:<3} {r['num_classes']:>3} "
              f"{r['entropy_bits_per_map']:>9.2f} {r['entropy_bits_per_pixel']:>11.4f} {r['support_size']:>9.3g} "
              f"{r[sample_key]:>18.3f} {r[score_key]:>18.3f}")
    print(f"{'Digits':<16} {'8 x 8':>7} {digits.num_classes:>3} {'unknown':>9} {'unknown':>11} "
          f"{'':>9} train {digits_row['train']}, test {digits_row['test']}")
    print("bits per map at 32 x 32, by kind of variable: "
          + ", ".join(f"{k} {v:.1f}" for k, v in toys[0]["bits_per_map_by_kind"].items()))

    if args.png_dir:
        out = Path(args.png_dir)
        out.mkdir(parents=True, exist_ok=True)
        for size, name, ncols in ((32, "toyseg_samples.png", 8), (8, "toyseg_8x8_samples.png", 8)):
            ds = ToySegmentation(size, size)
            fig = plot_grid(ds.sample(32 if size == 32 else 16, torch.Generator().manual_seed(0)), ds, ncols=ncols,
                            cell_inches=1.3 if size == 32 else 0.8,
                            suptitle=f"ToySegmentation {size} x {size}: true entropy "
                                     f"{ds.entropy_bits_per_pixel:.3f} bits per pixel")
            fig.savefig(out / name, dpi=100)
            print(f"wrote {out / name}")
        fig = plot_grid(digits.split("test")[:32], digits, ncols=8, cell_inches=0.8,
                        suptitle="Digits, test split: 17 grey levels as 17 classes")
        fig.savefig(out / "digits_samples.png", dpi=100)
        print(f"wrote {out / 'digits_samples.png'}")
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
