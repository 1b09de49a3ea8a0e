"""Multinomial diffusion against dequantization flows, in bits per pixel, at equal training budgets.

Every model is trained from scratch for the same wall-clock budget on this machine's device,
then scored on the same test maps:

- multinomial diffusion: the all-T estimate of the variational bound (eq. 3, every term per map,
  each at one draw of x_t);
- each dequantization flow (``mdiff_lite.baselines.KINDS``): the one-sample bound (k = 1) and the
  importance-weighted bound (k = ``--k``).

All are upper bounds on the true bits per pixel (in expectation over their noise), +- one
standard error over test maps. On the toy maps the true entropy is known, so the table gives
each model's ratio to it. The label-permutation experiment repeats the diffusion model and the
ordinal flow with the class ids shuffled: the diffusion model cannot tell, the ordinal flow can.

``--curve 1,2,4`` also scores every toy-map model on the original labels at those minutes of its
training and at its end, on the same test maps: the diffusion model's EMA by a Monte-Carlo estimate
(``--curve-k`` random t per map), each flow by its one-sample bound. The points before the end are
the model in the middle of its run, with the learning rate not yet annealed; the scoring time is
not counted in the budget. The curve is what notebook 06 plots.

    python benchmarks/likelihood.py [--minutes 6] [--digits-minutes 3] [--eval-maps 128] [--k 64]
                                    [--curve MINUTES,...] [--curve-k 4]
                                    [--save-dir DIR] [--json PATH] [--markdown PATH] [--fast]

Pin one core for a fair comparison while other work runs: ``taskset -c 0 python ... --threads 1``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
from _common import environment, write_json  # noqa: E402
from mdiff_lite import make_schedule  # noqa: E402
from mdiff_lite.baselines import KINDS, DequantizationFlow, evaluate_flow, fit_flow, save_flow  # noqa: E402
from mdiff_lite.cli import MODEL_DEFAULTS  # noqa: E402
from mdiff_lite.data import dataset_by_name  # noqa: E402
from mdiff_lite.evaluate import ALL_T_LABEL, estimate_bound, evaluate_bound  # noqa: E402
from mdiff_lite.models import Denoiser, DenoiserConfig, count_parameters  # noqa: E402
from mdiff_lite.train import TrainConfig, fit, pick_device, save_checkpoint  # noqa: E402

PERMUTE_SEED = 1
# What --fast shrinks the models to (the tests run it in seconds).
FAST_DENOISER = {"channels": (8, 8), "fold": 2, "blocks_per_level": 1, "attention": False, "groups": 4}
FAST_FLOW = {"hidden": (8, 8), "steps": (1, 1), "dequantizer_hidden": 8, "dequantizer_steps": 1}


def _minutes_list(text):
    try:
        minutes = [float(m) for m in text.split(",") if m.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected minutes separated by commas, got {text!r}") from None
    if not minutes or any(not m > 0 for m in minutes):
        raise argparse.ArgumentTypeError(f"expected positive minutes, got {text!r}")
    return minutes


def _budget(args, name):
    return {"steps": args.fast_steps if args.fast else None,
            "seconds": 60 * (args.minutes if name == "toyseg" else args.digits_minutes)}


def _curve_recorder(args, name, permuted, score):
    """``(on_log, points)``: an ``on_log`` for fit/fit_flow that appends ``score(model)`` to
    ``points`` each time training passes a minute of ``args.curve`` (None when no curve is asked)."""
    if not args.curve or name != "toyseg" or permuted:
        return None, None
    todo, points = sorted(m for m in args.curve if 60 * m < _budget(args, name)["seconds"]), []

    def on_log(step, seconds, model):
        while todo and seconds >= 60 * todo[0]:
            todo.pop(0)
            points.append({"minutes": seconds / 60, "steps": step, **score(model)})
    return on_log, points


def _score_diffusion(args, schedule, test):
    def score(model):
        r = estimate_bound(model, schedule, test, k=args.curve_k, seed=args.seed, progress=False)
        return {"bpd": r["bpd"], "stderr": r["stderr"], "bound": r["bound"]}
    return score


def _score_flow(args, test):
    def score(model):
        r = evaluate_flow(model, test, k=1, batch_size=256, seed=args.seed)
        return {"bpd": r["bpd"], "stderr": r["stderr"], "bound": r["bound"]}
    return score


def run_diffusion(ds, name, permuted, args, device) -> dict:
    overrides = FAST_DENOISER if args.fast else MODEL_DEFAULTS[name]
    config = DenoiserConfig(num_classes=ds.num_classes, height=ds.height, width=ds.width,
                            schedule=make_schedule("hoogeboom-cosine", args.T).to_dict(), **overrides)
    torch.manual_seed(args.seed)
    model = Denoiser(config)
    budget = _budget(args, name)
    schedule, test = make_schedule(**config.schedule), ds.split("test")[:args.eval_maps]
    score = _score_diffusion(args, schedule, test)
    on_log, curve = _curve_recorder(args, name, permuted, score)
    history = fit(model, ds.split("train"), TrainConfig(steps=budget["steps"], max_seconds=budget["seconds"],
                                                        seed=args.seed, checkpoint_every=0),
                  device=device, progress=not args.quiet, on_log=on_log)
    if curve is not None:
        curve.append({"minutes": history["seconds"][-1] / 60, "steps": history["step"][-1], **score(model)})
    result = evaluate_bound(model, schedule, test, progress=not args.quiet)
    row = {"model": "multinomial diffusion", "kind": "diffusion", "parameters": count_parameters(model),
           "steps": history["step"][-1], "train_seconds": history["seconds"][-1],
           "bounds": [{"k": None, "bpd": result["bpd"], "stderr": result["stderr"], "bound": result["bound"],
                       "label": ALL_T_LABEL.format(T=args.T), "eval_seconds": result["seconds"]}]}
    if curve is not None:
        row["curve"] = curve
    if args.save_dir:
        path = Path(args.save_dir) / f"diffusion_{name}{'_permuted' if permuted else ''}.pt"
        save_checkpoint(path, model, {"dataset": name, "permute_seed": PERMUTE_SEED if permuted else None,
                                      "steps": row["steps"], "train_seconds": row["train_seconds"],
                                      "test_bpd": result["bpd"], "test_stderr": result["stderr"],
                                      "command": " ".join(["python"] + sys.argv)}, weights_dtype=torch.float16)
    return row


def run_flow(ds, name, kind, permuted, args, device) -> dict:
    torch.manual_seed(args.seed)
    model = DequantizationFlow(kind, ds.num_classes, ds.height, ds.width, **(FAST_FLOW if args.fast else {}))
    model.to(device)
    budget = _budget(args, name)
    test = ds.split("test")[:args.eval_maps]
    score = _score_flow(args, test)
    on_log, curve = _curve_recorder(args, name, permuted, score)
    history = fit_flow(model, ds.split("train"), steps=budget["steps"], max_seconds=budget["seconds"],
                       seed=args.seed, progress=not args.quiet, on_log=on_log)
    if curve is not None:
        curve.append({"minutes": history["seconds"] / 60, "steps": history["steps"], **score(model)})
    bounds = []
    for k in (1, args.k):
        r = evaluate_flow(model, test, k=k, batch_size=max(1, 256 // k), seed=args.seed, progress=not args.quiet)
        bounds.append({"k": k, "bpd": r["bpd"], "stderr": r["stderr"], "bound": r["bound"],
                       "label": "one-sample bound" if k == 1 else f"importance-weighted bound, k = {k}",
                       "eval_seconds": r["seconds"]})
    row = {"model": f"flow, {kind} dequantization", "kind": kind, "parameters": model.num_parameters,
           "steps": history["steps"], "train_seconds": history["seconds"], "bounds": bounds}
    if curve is not None:
        row["curve"] = curve
    if args.save_dir:
        path = Path(args.save_dir) / f"flow_{name}{'_permuted' if permuted else ''}_{kind}.pt"
        save_flow(path, model.cpu(), {"dataset": name, "permute_seed": PERMUTE_SEED if permuted else None,
                                      "steps": row["steps"], "train_seconds": row["train_seconds"],
                                      "test_bpd": {str(b["k"]): b["bpd"] for b in bounds},
                                      "command": " ".join(["python"] + sys.argv)}, weights_dtype=torch.float16)
    return row


def markdown(result: dict) -> str:
    """The results as a Markdown table (what the README carries)."""
    lines = [f"Test bits per pixel (lower is better), {result['rows'][0]['n_test_maps'] if result['rows'] else 0} "
             f"test maps, equal training budgets on {result['device']} ({result['torch_threads']} thread(s)); "
             "every figure is an unbiased estimate of an upper bound on the true bits per pixel (the bound column "
             "says which), +- one standard error over maps.", "",
             "| data | labels | model | parameters | budget | steps | bound | test bits/pixel | x entropy |",
             "|---|---|---|---:|---:|---:|---|---:|---:|"]
    for r in result["rows"]:
        for b in r["bounds"]:
            ratio = f"{b['bpd'] / r['entropy']:.2f}" if r["entropy"] else "-"
            lines.append(f"| {r['dataset']} | {'permuted' if r['permuted'] else 'original'} | {r['model']} | "
                         f"{r['parameters'] / 1e6:.2f}M | {r['train_seconds'] / 60:.1f} min | {r['steps']} | "
                         f"{b['label']} | {b['bpd']:.4f} +- {b['stderr']:.4f} | {ratio} |")
    for name, entropy in result["entropy"].items():
        if entropy:
            lines.append(f"\nTrue entropy of {name}: {entropy:.4f} bits per pixel (exact).")
    reused = sorted({r["from_run"] for r in result["rows"] if r.get("from_run")})
    if reused:
        lines.append(f"\nThe flow rows come from an earlier run with the same settings ({', '.join(reused)}); "
                     "the diffusion rows were trained by this one.")
    for p in result["permutation"]:
        lines.append(f"Permuting the labels of {p['dataset']} changes {p['model']} by {p['relative_change']:+.1%} "
                     f"({p['original']:.4f} -> {p['permuted']:.4f}, {p['bound']}).")
    curves = [r for r in result["rows"] if r.get("curve")]
    if curves:
        lines += ["", "During training (`--curve`): test bits per pixel at each minute of each run, on the same maps; "
                  "the diffusion model's EMA by a Monte-Carlo estimate of its bound (random t), each flow by its "
                  "one-sample bound; the last point is the end of the run.", "",
                  "| model | " + " | ".join(f"{p['minutes']:.1f} min" for p in curves[0]["curve"]) + " |",
                  "|---|" + "---:|" * len(curves[0]["curve"])]
        for r in curves:
            lines.append(f"| {r['model']} | " + " | ".join(f"{p['bpd']:.3f} +- {p['stderr']:.3f}" for p in r["curve"])
                         + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=6.0, help="training budget per model, toy maps")
    parser.add_argument("--digits-minutes", type=float, default=3.0, help="per model on digits; 0 to skip")
    parser.add_argument("--kinds", default=",".join(KINDS), help="flow kinds on the toy maps")
    parser.add_argument("--digits-kinds", default="ordinal,onehot", help="flow kinds on digits")
    parser.add_argument("--no-permutation", action="store_true", help="skip the label-permutation runs")
    parser.add_argument("--eval-maps", type=int, default=128)
    parser.add_argument("--k", type=int, default=64, help="samples of the importance-weighted flow bound")
    parser.add_argument("--curve", type=_minutes_list, default=None, metavar="MINUTES,...",
                        help="also score the toy-map models at these minutes of training (notebook 06's curve)")
    parser.add_argument("--curve-k", type=int, default=4, help="random t per map for the diffusion curve's estimate")
    parser.add_argument("--T", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--save-dir", help="write every trained model here (the shipped baselines come from it)")
    parser.add_argument("--flows-from", metavar="JSON",
                        help="take the flow rows from an earlier run's JSON (same settings) and train only the "
                             "diffusion models, e.g. after a change to the denoiser")
    parser.add_argument("--json", help="default: benchmarks/results/likelihood_<device>.json")
    parser.add_argument("--markdown", help="default: the JSON's path with .md")
    parser.add_argument("--fast", action="store_true", help="tiny models, a few steps, T = 10 (for tests)")
    parser.add_argument("--fast-steps", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.fast:
        args.T, args.eval_maps, args.k = min(args.T, 10), min(args.eval_maps, 4), min(args.k, 2)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    kinds = {"toyseg": [k for k in args.kinds.split(",") if k],
             "digits": [k for k in args.digits_kinds.split(",") if k] if args.digits_minutes else []}
    for k in kinds["toyseg"] + kinds["digits"]:
        if k not in KINDS:
            parser.error(f"unknown flow kind {k!r}; choose from {', '.join(KINDS)}")
    plan = [("toyseg", False, "diffusion")] + [("toyseg", False, k) for k in kinds["toyseg"]]
    if not args.no_permutation:
        plan += [("toyseg", True, "diffusion")] + [("toyseg", True, "ordinal")] * ("ordinal" in kinds["toyseg"])
    if args.digits_minutes:
        plan += [("digits", False, "diffusion")] + [("digits", False, k) for k in kinds["digits"]]

    if args.curve_k < 1:
        parser.error(f"--curve-k must be at least 1, got {args.curve_k}")
    settings = {"minutes": args.minutes, "digits_minutes": args.digits_minutes, "T": args.T, "k": args.k,
                "eval_maps": args.eval_maps, "seed": args.seed, "fast": args.fast}
    earlier = {}
    if args.flows_from:
        previous = json.loads(Path(args.flows_from).read_text())
        differs = {k: (previous.get(k), v) for k, v in settings.items() if previous.get(k) != v}
        if differs:
            parser.error(f"{args.flows_from} was run with other settings: {differs}")
        earlier = {(r["dataset"], r["permuted"], r["kind"]): r for r in previous["rows"] if r["kind"] != "diffusion"}
    json_path = Path(args.json or Path(__file__).parent / "results" / f"likelihood_{device.type}.json")

    rows, entropy, start = [], {}, time.perf_counter()
    for i, (name, permuted, kind) in enumerate(plan):
        ds = dataset_by_name(name, permute_seed=PERMUTE_SEED if permuted else None)
        base = getattr(ds, "base", ds)
        entropy[name] = getattr(base, "entropy_bits_per_pixel", None)
        print(f"[{i + 1}/{len(plan)}] {name}{' (labels permuted)' if permuted else ''}: {kind}", flush=True)
        if kind != "diffusion" and args.flows_from:
            if (name, permuted, kind) not in earlier:
                parser.error(f"{args.flows_from} has no row for {name}, permuted={permuted}, {kind}")
            rows.append(dict(earlier[(name, permuted, kind)], from_run=args.flows_from))
            continue
        row = (run_diffusion(ds, name, permuted, args, device) if kind == "diffusion"
               else run_flow(ds, name, kind, permuted, args, device))
        rows.append({"dataset": name, "permuted": permuted, "entropy": entropy[name],
                     "n_test_maps": min(args.eval_maps, len(ds.split("test"))), **row})
        # Keep what is done: an interrupted run leaves its finished rows (marked incomplete).
        write_json(json_path, {"benchmark": "likelihood", **environment(device), **settings, "complete": False,
                               "rows": rows})

    permutation = []
    for kind in ("diffusion", "ordinal"):
        pair = {r["permuted"]: r for r in rows if r["dataset"] == "toyseg" and r["kind"] == kind}
        if len(pair) == 2:
            a, b = pair[False]["bounds"][-1], pair[True]["bounds"][-1]
            permutation.append({"dataset": "toyseg", "model": pair[False]["model"], "bound": b["label"],
                                "original": a["bpd"], "permuted": b["bpd"],
                                "relative_change": b["bpd"] / a["bpd"] - 1,
                                "change_in_stderrs": (b["bpd"] - a["bpd"]) / math.hypot(a["stderr"], b["stderr"])})
    result = {"benchmark": "likelihood", **environment(device), **settings, "complete": True,
              "command": " ".join(["python"] + sys.argv), "permute_seed": PERMUTE_SEED, "entropy": entropy,
              "rows": rows, "permutation": permutation, "total_seconds": time.perf_counter() - start}
    table = markdown(result)
    print("\n" + table)
    write_json(json_path, result)
    md_path = Path(args.markdown or json_path.with_suffix(".md"))
    md_path.write_text(table)
    print(f"wrote {md_path}")
    return result


if __name__ == "__main__":
    main()
