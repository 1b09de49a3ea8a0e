"""Text: uniform against absorbing diffusion, and both against an autoregressive transformer.

Three models of one size (``mdiff_lite.models.TransformerConfig``: the same trunk), each trained
from scratch for the same wall-clock budget by the same loop (``mdiff_lite.train.fit``: AdamW,
warm-up and cosine learning rate, clipping, EMA) on the training split of
``mdiff_lite.data.TextCorpus`` (English Wikipedia cleaned as text8 was, 27 symbols, sequences of
256 characters), then scored on every sequence of the test split, in bits per character:

- the two diffusion models, uniform and absorbing noise on the same schedule: a Monte-Carlo
  estimate of the whole T-step bound (``evaluate.estimate_bound``: ``--k`` uniform draws of t per
  sequence, unbiased), +- one standard error over sequences;
- the causal transformer: its exact negative log-likelihood (``evaluate.exact_nll``);
- the references, exact cross-entropies of models fitted on the training split
  (``TextCorpus.reference_bits``): the uniform code, unigram and bigram frequencies.

    python benchmarks/text.py [--minutes 10] [--threads 1] [--k 8] [--models uniform,absorbing,autoregressive] [--local 5]
                              [--save-dir DIR] [--json PATH] [--markdown PATH] [--fast]

``--save-dir mdiff_lite/pretrained`` writes the trained models there in float16
(``text-uniform.pt``, ``text-absorbing.pt``, ``text-autoregressive.pt``: what notebook 07 loads),
each with this command and its test score in its metadata. Pin one core for a fair comparison
while other work runs: ``taskset -c 1 python benchmarks/text.py --threads 1``.
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
from mdiff_lite.data import TextCorpus  # noqa: E402
from mdiff_lite.evaluate import estimate_bound, exact_nll  # noqa: E402
from mdiff_lite.models import CausalTransformer, TextDenoiser, TransformerConfig, count_parameters, process_of  # noqa: E402
from mdiff_lite.train import TrainConfig, fit, pick_device, save_checkpoint  # noqa: E402

MODELS = ("uniform", "absorbing", "autoregressive")
SCHEDULE = {"name": "jsd", "T": 1000}  # alpha_bar_t = 1 - t / T: both noises end at pure noise, prior KL 0
SIZE = {"width": 64, "depth": 4, "heads": 4}  # and TransformerConfig's other defaults (local = 5)
# What --fast shrinks everything to (the tests run it in seconds).
FAST_SIZE = {"width": 16, "depth": 1, "heads": 2}


def _model_list(text):
    names = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in names if m not in MODELS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"models must be some of {', '.join(MODELS)}, got {text!r}")
    return names


def build(name: str, length: int, fast: bool = False, local: int = 5):
    size = dict(FAST_SIZE if fast else SIZE, local=local)
    schedule = dict(SCHEDULE, T=20) if fast else SCHEDULE
    if name == "autoregressive":
        return CausalTransformer(TransformerConfig(27, length, noise=None, schedule=None, **size))
    return TextDenoiser(TransformerConfig(27, length, noise=name, schedule=schedule, **size))


def run_model(name: str, corpus: TextCorpus, train, test, args, device) -> dict:
    torch.manual_seed(args.seed)
    model = build(name, corpus.length, args.fast, args.local)
    config = TrainConfig(steps=args.steps, max_seconds=None if args.steps else args.minutes * 60,
                         batch_size=args.batch_size, lr=args.lr, lr_batch=args.batch_size, warmup_steps=100,
                         ema_decay=0.995, checkpoint_every=0, seed=args.seed, log_every=10)
    history = fit(model, train, config, device=device, progress=not args.quiet,
                  meta={"corpus": corpus.name, "length": corpus.length})
    if name == "autoregressive":
        score = exact_nll(model, test, progress=not args.quiet)
    else:
        score = estimate_bound(model, process_of(model), test, k=args.k, batch_size=64, seed=args.seed,
                               progress=not args.quiet)
    row = {"model": name, "parameters": count_parameters(model), "steps": history["step"][-1] if history["step"] else 0,
           "train_seconds": history["seconds"][-1] if history["seconds"] else 0.0,
           "history": {k: history[k] for k in ("step", "seconds", "loss_bpd")},
           "bpc": score["bpd"], "stderr": score["stderr"], "bound": score["bound"],
           "n_test_sequences": score["n_images"], "eval_seconds": round(score["seconds"], 1)}
    print(f"{name}: {row['bpc']:.4f} +- {row['stderr']:.4f} bits/char after {row['steps']} steps "
          f"({row['train_seconds'] / 60:.1f} min)")
    if args.save_dir:
        path = Path(args.save_dir) / f"text-{name}.pt"
        save_checkpoint(path, model, {"corpus": corpus.name, "length": corpus.length, "command": args.command,
                                      "steps": row["steps"], "wall_seconds": row["train_seconds"],
                                      "test_bpc": row["bpc"], "test_stderr": row["stderr"], "bound": row["bound"],
                                      "train_config": {"batch_size": config.batch_size, "lr": config.lr}},
                        weights_dtype=torch.float16)
        print(f"wrote {path}")
    return row


def markdown(result: dict) -> str:
    """The results as a Markdown table (what the README carries)."""
    refs = result["references"]
    rows = {r["model"]: r for r in result["rows"]}
    ar = rows.get("autoregressive")
    n = result["rows"][0]["n_test_sequences"] if result["rows"] else 0
    budget = (f"{result['steps_budget']} steps" if result.get("steps_budget") else f"{result['minutes']:g} minutes")
    lines = [f"Test bits per character (lower is better) on the {n} test sequences of {result['corpus']} "
             f"({result['length']} characters each); every model trained for the same "
             f"{budget} on {result['device']} ({result['torch_threads']} thread(s)), "
             "+- one standard error over sequences.", "",
             "| model | parameters | steps | what the number is | bits/char | below bigram | above autoregressive |",
             "|---|---:|---:|---|---:|---:|---:|"]
    for r in result["rows"]:
        what = "exact NLL" if r["model"] == "autoregressive" else f"bound, Monte-Carlo (k = {result['k']} t per sequence)"
        above = "-" if ar is None or r is ar else f"{r['bpc'] - ar['bpc']:+.3f}"
        label = r["model"] if r["model"] == "autoregressive" else f"diffusion, {r['model']} noise"
        lines.append(f"| {label} | {r['parameters'] / 1e3:.0f}k | {r['steps']} | {what} | "
                     f"{r['bpc']:.4f} +- {r['stderr']:.4f} | {refs['bigram'] - r['bpc']:+.3f} | {above} |")
    for key, label in (("bigram", "bigram frequencies, fitted on train"), ("unigram", "unigram frequencies, fitted on train"),
                       ("uniform", "uniform code, log2 27")):
        lines.append(f"| {label} | - | - | exact cross-entropy | {refs[key]:.4f} | "
                     f"{refs['bigram'] - refs[key]:+.3f} | - |")
    if "uniform" in rows and "absorbing" in rows:
        u, a = rows["uniform"], rows["absorbing"]
        diff, se = u["bpc"] - a["bpc"], math.hypot(u["stderr"], a["stderr"])
        lines.append(f"\nAbsorbing minus uniform: {-diff:+.4f} bits per character ({abs(diff) / se:.1f} standard errors).")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget per model")
    parser.add_argument("--steps", type=int, default=None, help="a step budget instead of minutes (tests)")
    parser.add_argument("--models", type=_model_list, default=list(MODELS))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--local", type=int, default=5, help="the convolution's width before the first layer (0: none)")
    parser.add_argument("--k", type=int, default=8, help="draws of t per test sequence for the diffusion bounds")
    parser.add_argument("--test-sequences", type=int, default=None, help="score only the first N (default: all)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-dir", default=None)
    parser.add_argument("--json", default="benchmarks/results/text_cpu.json")
    parser.add_argument("--markdown", default=None, help="default: the JSON path with .md")
    parser.add_argument("--fast", action="store_true", help="tiny models and data, for the tests")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if not args.minutes > 0:
        parser.error(f"--minutes must be > 0, got {args.minutes}")
    if args.k < 1:
        parser.error(f"--k must be >= 1, got {args.k}")
    args.command = "python benchmarks/text.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    corpus = TextCorpus(length=32 if args.fast else 256)
    train, test = corpus.split("train"), corpus.split("test")
    if args.fast:
        train, test = train[:256], test[:16]
    if args.test_sequences:
        test = test[:args.test_sequences]
    start = time.perf_counter()
    rows = [run_model(name, corpus, train, test, args, device) for name in args.models]
    result = {"benchmark": "text", "command": args.command, "corpus": corpus.name, "length": corpus.length,
              "minutes": args.minutes, "steps_budget": args.steps, "k": args.k, "schedule": SCHEDULE,
              "size": dict(FAST_SIZE if args.fast else SIZE, local=args.local), "batch_size": args.batch_size, "lr": args.lr,
              "references": corpus.reference_bits(), "rows": rows, "fast": args.fast,
              "total_seconds": round(time.perf_counter() - start, 1), **environment(device)}
    write_json(args.json, result)
    md = markdown(result)
    md_path = Path(args.markdown or Path(args.json).with_suffix(".md"))
    md_path.write_text(md)
    print(md)
    print(f"wrote {md_path}")
    return result


if __name__ == "__main__":
    main()
