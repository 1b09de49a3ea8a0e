"""Test bits per pixel against the wall-clock training budget, on this machine's device.

For each budget, a fresh default denoiser is trained for that many minutes (the learning rate
decays over the budget), then its bound is evaluated with all T terms on test maps. On the
toy maps the table gives the ratio to the true entropy, the floor no model can beat; on
digits it compares with the uniform model's log2(17) = 4.09 bits per pixel.

    python benchmarks/quality.py [--budgets 2.5,10] [--compare fold4+uniform+batch64:10,importance:2.5]
        [--digits-budget 3] [--eval-maps 256] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
from _common import environment, write_json  # noqa: E402
from mdiff_lite import make_schedule  # noqa: E402
from mdiff_lite.cli import MODEL_DEFAULTS  # noqa: E402
from mdiff_lite.data import dataset_by_name  # noqa: E402
from mdiff_lite.evaluate import bound_breakdown, evaluate_bound  # noqa: E402
from mdiff_lite.models import Denoiser, DenoiserConfig, count_parameters  # noqa: E402
from mdiff_lite.train import TrainConfig, fit, pick_device  # noqa: E402


# Variants of the toy default for comparison (--compare NAME[+NAME...]:MINUTES), as (model,
# training) overrides of the defaults (fold 2, channels 32/64/96; stratified t, batch 32, lr 3e-3):
# fold4: the earlier default network, pixels folded 4 x 4, channels 56/80/96 (8 x 8 at its finest);
# f2-48-96-96, f2-24-64-96-128, f2-16-48-96-128: other fold-2 networks (wider; four levels);
# bayes-all: the Bayes term log q(x_t | x_0 = k) in the logits at every t, not only at t = 1;
# uniform: independent uniform t (the earlier default), not stratified across the batch;
# importance: t drawn by importance sampling (p(t) ∝ sqrt(E[L_t^2])) instead of uniformly;
# batch64: batches of 64 maps at the same lr, 3e-3 (the earlier default); batch16: 16 maps, lr 3e-3;
# lr2e-3: the learning rate of the first models;
# x0-nll: plus the auxiliary cross-entropy -log p(x_0 | x_t) (diffusion.x0_nll), weight 1.
VARIANTS = {
    "fold4": ({"fold": 4, "channels": (56, 80, 96)}, {}),
    "f2-48-96-96": ({"fold": 2, "channels": (48, 96, 96)}, {}),
    "f2-24-64-96-128": ({"fold": 2, "channels": (24, 64, 96, 128)}, {}),
    "f2-16-48-96-128": ({"fold": 2, "channels": (16, 48, 96, 128)}, {}),
    "bayes-all": ({"bayes_logits": "all"}, {}),
    "uniform": ({}, {"t_sampler": "uniform"}),
    "importance": ({}, {"t_sampler": "importance"}),
    "batch64": ({}, {"batch_size": 64, "lr_batch": 64}),
    "batch16": ({}, {"batch_size": 16, "lr_batch": 16}),
    "lr2e-3": ({}, {"lr": 2e-3}),
    "x0-nll": ({}, {"x0_nll_weight": 1.0}),
}


def run(name: str, minutes: float, device, T: int, eval_maps: int, seed: int, model: dict | None = None,
        train: dict | None = None) -> dict:
    ds = dataset_by_name(name)
    config = DenoiserConfig(num_classes=ds.num_classes, height=ds.height, width=ds.width,
                            schedule={"name": "hoogeboom-cosine", "T": T}, **(model or MODEL_DEFAULTS[name]))
    torch.manual_seed(seed)
    model = Denoiser(config)
    train_config = TrainConfig(steps=None, max_seconds=60 * minutes, seed=seed, **(train or {}))
    history = fit(model, ds.split("train"), train_config, device=device, progress=True)
    test = ds.split("test")[:eval_maps]
    result = evaluate_bound(model, make_schedule(**config.schedule), test, progress=True)
    entropy = getattr(ds, "entropy_bits_per_pixel", None)
    return {
        "dataset": name, "model": f"fold {config.fold}, channels {'/'.join(map(str, config.channels))}, "
                                  f"Bayes term: {config.bayes_logits}",
        "training": f"batch {train_config.batch_size}, lr {train_config.lr:g}, t {train_config.t_sampler}"
                    + (f", x0 NLL x {train_config.x0_nll_weight:g}" if train_config.x0_nll_weight else ""),
        "budget_minutes": minutes, "steps": history["step"][-1],
        "train_seconds": history["seconds"][-1], "parameters": count_parameters(model), "T": T,
        "test_bpd": result["bpd"], "stderr": result["stderr"], "bound": result["bound"],
        "n_images": result["n_images"], "eval_seconds": result["seconds"],
        "entropy_bits_per_pixel": entropy, "ratio_to_entropy": result["bpd"] / entropy if entropy else None,
        "uniform_bpd": math.log2(ds.num_classes),
        "breakdown": bound_breakdown(result["per_t_bpd"]), "per_map_bpd": result["per_map_bpd"],
        "loss_curve": {"step": history["step"], "loss_bpd": history["loss_bpd"], "seconds": history["seconds"]},
    }


def markdown_table(paths) -> str:
    """The rows of the result files at ``paths`` as one markdown table (the README's)."""
    lines = ["| network | training | budget | steps | test maps | test bits per pixel (all-T estimate) | x entropy |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for path in paths:
        for r in json.loads(Path(path).read_text())["rows"]:
            ratio = f"{r['ratio_to_entropy']:.2f}x" if r["ratio_to_entropy"] else "-"
            model = r["model"].replace(", Bayes term: decoder", "").replace("channels ", "")
            lines.append(f"| {model} | {r['training']} | {r['budget_minutes']:g} min | {r['steps']} | {r['n_images']} "
                         f"| {r['test_bpd']:.4f} +- {r['stderr']:.4f} | {ratio} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", nargs="+", metavar="JSON", help="only write the rows of these result files as "
                        "one markdown table (to --md) and stop")
    parser.add_argument("--md", help="where --table writes (default: print only)")
    parser.add_argument("--budgets", default="2.5,10", help="toy-segmentation budgets in minutes")
    parser.add_argument("--digits-budget", type=float, default=3.0, help="minutes; 0 to skip digits")
    parser.add_argument("--compare", default="", help="comma-separated NAME:MINUTES of toy-map variants of the "
                        f"default to train too; NAME in {', '.join(VARIANTS)}")
    parser.add_argument("--eval-maps", type=int, default=256)
    parser.add_argument("--T", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", help="default: benchmarks/results/quality_<device>.json")
    args = parser.parse_args(argv)
    if args.table:
        table = markdown_table(args.table)
        print(table)
        if args.md:
            Path(args.md).write_text(table + "\n")
            print(f"wrote {args.md}")
        return {"benchmark": "quality", "table": table}
    device = pick_device(args.device)
    rows = [run("toyseg", float(b), device, args.T, args.eval_maps, args.seed) for b in args.budgets.split(",") if b]
    for item in filter(None, args.compare.split(",")):
        name, _, minutes = item.partition(":")
        names = name.split("+")
        if not minutes or any(n not in VARIANTS for n in names):
            parser.error(f"--compare takes NAME[+NAME...]:MINUTES with NAME in {', '.join(VARIANTS)}, got {item!r}")
        model_overrides = {k: v for n in names for k, v in VARIANTS[n][0].items()}
        train_overrides = {k: v for n in names for k, v in VARIANTS[n][1].items()}
        rows.append(run("toyseg", float(minutes), device, args.T, args.eval_maps, args.seed,
                        {**MODEL_DEFAULTS["toyseg"], **model_overrides}, train_overrides))
    if args.digits_budget:
        rows.append(run("digits", args.digits_budget, device, args.T, args.eval_maps, args.seed))
    result = {"benchmark": "quality", **environment(device), "rows": rows}
    print(f"\nTest bits per pixel against training budget, {device} ({result['device_name']}), "
          f"{torch.get_num_threads()} threads; bound: all T = {args.T} terms, +- one standard error over maps")
    print(f"{'dataset':<8} {'model':<48} {'training':<36} {'budget':>7} {'steps':>6} {'test bpd':>17} "
          f"{'test maps':>9} {'entropy':>8} {'ratio':>6}")
    for r in rows:
        entropy = f"{r['entropy_bits_per_pixel']:.4f}" if r["entropy_bits_per_pixel"] else "-"
        ratio = f"{r['ratio_to_entropy']:.2f}x" if r["ratio_to_entropy"] else "-"
        print(f"{r['dataset']:<8} {r['model']:<48} {r['training']:<36} {r['budget_minutes']:>5.1f} m {r['steps']:>6} "
              f"{r['test_bpd']:>8.4f} +- {r['stderr']:.4f} {r['n_images']:>9} {entropy:>8} {ratio:>6}")
    write_json(args.json or Path(__file__).parent / "results" / f"quality_{device.type}.json", result)
    return result


if __name__ == "__main__":
    main()
