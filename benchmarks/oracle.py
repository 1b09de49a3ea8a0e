"""How far a trained toy-map denoiser is from the best there is, range of t by range of t.

For each tenth of the chain (t = 1-100, ..., 901-1000 at T = 1000) and the prior term:

- information: ``I(x_0; x_{lo-1}) - I(x_0; x_hi)`` in bits per pixel, what the forward process
  destroys over the range, so the least any reverse process pays there (they sum to the entropy).
  A Monte-Carlo estimate over test maps and draws of x_t, with its standard error; each
  ``log q(x_t)`` in it is exact (``ToySegmentation.posterior``), and ``I(x_0; x_0)`` is the entropy.
- oracle: ``models.OracleDenoiser``'s part of the all-T estimate of the bound (every term, one draw
  of x_t each), the least any denoiser of eq. 14's form pays (pixels independent given x_t);
- model: a checkpoint's part (the shipped ``toyseg.pt`` unless ``--checkpoint``), on the same maps
  and the same draws of x_t, so that model minus oracle is a paired difference.

    python benchmarks/oracle.py [--checkpoint PATH | --checkpoint none --T 1000] [--eval-maps 128] [--info-maps 1000] [--json PATH]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
from _common import environment, write_json  # noqa: E402
from mdiff_lite import make_schedule, q_sample  # noqa: E402
from mdiff_lite.data import dataset_by_name  # noqa: E402
from mdiff_lite.evaluate import bound_breakdown, evaluate_bound, tenths  # noqa: E402
from mdiff_lite.models import OracleDenoiser  # noqa: E402
from mdiff_lite.train import load_denoiser, pretrained_path  # noqa: E402

LOG2 = math.log(2)


def information(oracle: OracleDenoiser, maps: torch.Tensor, ts: list, seed: int, batch: int = 256) -> dict:
    """Per map, ``log q(x_t | x_0) - log q(x_t)`` in bits per pixel at one draw of x_t for each t in
    ``ts`` (t >= 1): their mean over maps estimates I(x_0; x_t)."""
    ds, schedule = oracle.dataset, oracle.schedule
    g = torch.Generator().manual_seed(seed)
    D = maps[0].numel()
    out = {}
    for t in tqdm(ts, desc="I(x0; x_t)"):
        values = []
        for x0 in maps.split(batch):
            t_b = torch.full((len(x0),), t)
            x_t = q_sample(x0, t_b.view(-1, 1, 1), schedule, ds.num_classes, g)
            log_likelihood = oracle.log_likelihood(x_t, t_b)
            log_q_given_x0 = log_likelihood.gather(3, x0.unsqueeze(3)).sum((1, 2, 3))
            log_evidence, _ = ds.posterior(log_likelihood)
            values.append((log_q_given_x0 - log_evidence) / (D * LOG2))
        out[t] = torch.cat(values)
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(pretrained_path("toyseg")),
                        help="a toy-map denoiser checkpoint, or 'none' for the oracle alone")
    parser.add_argument("--T", type=int, help="steps, when there is no checkpoint (else the checkpoint's)")
    parser.add_argument("--eval-maps", type=int, default=128, help="test maps for the all-T estimates of the bound")
    parser.add_argument("--info-maps", type=int, default=1000, help="test maps for the information estimates")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="default: benchmarks/results/oracle_cpu.json")
    args = parser.parse_args(argv)

    ds = dataset_by_name("toyseg")
    model = None
    if args.checkpoint != "none":
        try:
            model, meta = load_denoiser(args.checkpoint)
        except (ValueError, OSError) as err:  # a bad file: one line naming it, as the CLI answers
            parser.exit(2, f"error: {err}\n")
        if meta.get("dataset") != "toyseg" or meta.get("permute_seed") is not None:
            parser.exit(2, f"error: {args.checkpoint} was not trained on the toy maps as they are "
                           f"(dataset {meta.get('dataset')!r}, permute_seed {meta.get('permute_seed')!r})\n")
        if args.T is not None and args.T != model.T:
            parser.error(f"--T {args.T} differs from the checkpoint's T = {model.T}")
        schedule = make_schedule(**model.config.schedule)
    else:
        schedule = make_schedule("hoogeboom-cosine", args.T or 1000)
    T = schedule.T
    test = ds.split("test")
    maps = test[:args.eval_maps]
    D = maps[0].numel()
    edges = tenths(T)

    # All-T estimates, same maps, same draws of x_t (same seed, same batching).
    kwargs = dict(batch_size=16, max_batch=512, seed=args.seed)
    best = OracleDenoiser(ds, schedule)
    oracle = evaluate_bound(best, schedule, maps, **kwargs)
    trained = evaluate_bound(model, schedule, maps, **kwargs) if model is not None else None
    nll = -ds.log_prob(maps) / (D * LOG2)   # these maps' exact negative log-likelihood, bits per pixel

    # I(x_0; x_t) at the range edges; I(x_0; x_0) is the entropy itself.
    start = time.perf_counter()
    per_map = information(best, test[:args.info_maps], edges, args.seed + 1)
    info_seconds = time.perf_counter() - start
    entropy = ds.entropy_bits_per_pixel

    def mean_se(x: torch.Tensor) -> tuple[float, float]:
        return x.mean().item(), (x.std() / math.sqrt(len(x))).item() if len(x) > 1 else float("nan")

    rows, lo = [], 1
    oracle_parts = {r["t"]: r["bpd"] for r in bound_breakdown(oracle["per_t_bpd"], edges)}
    model_parts = {r["t"]: r["bpd"] for r in bound_breakdown(trained["per_t_bpd"], edges)} if trained else {}
    for hi in edges:
        if lo == 1:   # I(x_0; x_0) is the entropy, exactly
            info, info_se = entropy - per_map[hi].mean().item(), mean_se(per_map[hi])[1]
        else:         # per map, so the standard error is that of the difference
            info, info_se = mean_se(per_map[lo - 1] - per_map[hi])
        key = f"{lo}-{hi}"
        rows.append({"t": key, "information_bpd": info, "information_stderr": info_se,
                     "oracle_bpd": oracle_parts[key], "model_bpd": model_parts.get(key)})
        lo = hi + 1
    info_T, info_T_se = mean_se(per_map[T])
    rows.append({"t": "prior", "information_bpd": info_T, "information_stderr": info_T_se,
                 "oracle_bpd": oracle_parts["prior"], "model_bpd": model_parts.get("prior")})

    oracle_gap = torch.tensor(oracle["per_map_bpd"], dtype=torch.float64) - nll
    result = {
        "benchmark": "oracle", **environment("cpu"), "T": T, "checkpoint": None if model is None else args.checkpoint,
        "eval_maps": len(maps), "info_maps": min(args.info_maps, len(test)), "seed": args.seed,
        "entropy_bits_per_pixel": entropy, "eval_maps_nll_bpd": nll.mean().item(),
        "oracle": {k: oracle[k] for k in ("bpd", "stderr", "bound", "n_images", "seconds", "per_map_bpd")},
        "oracle_minus_nll": dict(zip(("bpd", "stderr"), mean_se(oracle_gap))),
        "model": None if trained is None else {k: trained[k] for k in ("bpd", "stderr", "bound", "n_images", "seconds",
                                                                      "per_map_bpd")},
        "model_minus_oracle": None if trained is None else dict(zip(("bpd", "stderr"), mean_se(
            torch.tensor(trained["per_map_bpd"], dtype=torch.float64)
            - torch.tensor(oracle["per_map_bpd"], dtype=torch.float64)))),
        "information_note": "Monte-Carlo estimates (one draw of x_t per map and t) with their standard errors; "
                            "each log q(x_t) exact",
        "information_seconds": info_seconds,
        "rows": rows,
    }

    print(f"\nToy maps, T = {T}: where the bound is spent, bits per pixel ({len(maps)} test maps for the bounds, "
          f"{result['info_maps']} for the information)")
    print(f"{'t':<10} {'information lost':>20} {'oracle':>8} {'model':>8} {'model - oracle':>15}")
    for r in rows:
        model_cell = f"{r['model_bpd']:8.4f}" if r["model_bpd"] is not None else f"{'-':>8}"
        gap = f"{r['model_bpd'] - r['oracle_bpd']:15.4f}" if r["model_bpd"] is not None else f"{'-':>15}"
        print(f"{r['t']:<10} {r['information_bpd']:>10.4f} +- {r['information_stderr']:.4f} {r['oracle_bpd']:8.4f} "
              f"{model_cell} {gap}")
    model_total = f"{trained['bpd']:8.4f}" if trained else f"{'-':>8}"
    print(f"{'total':<10} {entropy:>20.4f} {oracle['bpd']:8.4f} {model_total}")
    print(f"oracle bound {oracle['bpd']:.4f} +- {oracle['stderr']:.4f} against these maps' exact NLL "
          f"{nll.mean().item():.4f}: the price of independent pixels is {result['oracle_minus_nll']['bpd']:.4f} "
          f"+- {result['oracle_minus_nll']['stderr']:.4f}")
    if trained:
        print(f"model bound {trained['bpd']:.4f} +- {trained['stderr']:.4f}; model - oracle "
              f"{result['model_minus_oracle']['bpd']:.4f} +- {result['model_minus_oracle']['stderr']:.4f} (paired)")
    path = Path(args.json or Path(__file__).parent / "results" / "oracle_cpu.json")
    write_json(path, result)
    path.with_suffix(".md").write_text(markdown(result) + "\n")   # the README's table
    return result


def markdown(result: dict) -> str:
    """The table as the README shows it."""
    model = result["model"]
    lines = ["| t | information lost (Monte Carlo, {} maps) | best denoiser, all-T estimate | {} | model - best |"
             .format(result["info_maps"], "model, all-T estimate" if model else "model"), "|---|---|---|---|---|"]
    for r in result["rows"]:
        cells = [r["t"], f"{r['information_bpd']:.4f} +- {r['information_stderr']:.4f}", f"{r['oracle_bpd']:.4f}"]
        cells += ([f"{r['model_bpd']:.4f}", f"{r['model_bpd'] - r['oracle_bpd']:.4f}"] if model else ["-", "-"])
        lines.append("| " + " | ".join(cells) + " |")
    o, gap = result["oracle"], result["model_minus_oracle"]
    total = [f"**{result['entropy_bits_per_pixel']:.4f}** (the entropy)", f"**{o['bpd']:.4f} +- {o['stderr']:.4f}**"]
    total += ([f"**{model['bpd']:.4f} +- {model['stderr']:.4f}**", f"**{gap['bpd']:.4f} +- {gap['stderr']:.4f}**"]
              if model else ["-", "-"])
    lines.append("| **total** | " + " | ".join(total) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
