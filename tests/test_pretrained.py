"""The shipped checkpoints: present, small, self-describing, and as good as their metadata says."""

import math

import pytest
import torch

from mdiff_lite import make_schedule
from mdiff_lite.data import dataset_by_name
from mdiff_lite.evaluate import estimate_bound
from mdiff_lite.train import load_checkpoint, load_pretrained, pretrained_path


QUICK_MAPS = 256  # about 5 s of estimate_bound per model on 2 cores; a standard error of 5-6 % of the bound


@pytest.mark.parametrize("name", ["toyseg", "digits"])
def test_shipped_checkpoint(name):
    path = pretrained_path(name)
    assert path.is_file(), f"{path} is missing"
    assert path.stat().st_size < 6e6
    weights, meta, training = load_checkpoint(path)
    assert training is None  # weights and metadata only
    for key in ("command", "export_command", "eval_command", "test_bpd", "test_bpd_stderr", "test_bpd_bound",
                "steps", "wall_seconds", "device", "mdiff_lite"):
        assert key in meta, key
    assert meta["command"].startswith("python -m mdiff_lite train") and meta["dataset"] == name
    assert meta["test_n_images"] == len(dataset_by_name(name).split("test"))

    # The file holds the model its metadata describes: a quick estimate of the same bound agrees
    # with the recorded one within 4 standard errors of their difference. Both are unbiased for the
    # bound; the quick maps are among the recorded ones, so the two covary positively and hypot()
    # overstates the difference's spread. One draw of t per map: the draws, not the maps, make
    # nearly all the variance. The draws are right-skewed (digits' skewness is 12), so a low mean
    # with a small standard error is likelier than under a normal law: resampling 100 000 sets of
    # 256 from 1000 (toyseg) and 891 (digits) single draws gave |z| > 4 with chance 1e-5 and 2e-4
    # (normal: 6e-5), the chance that the fixed seed of estimate_bound is one that fails.
    model, _ = load_pretrained(name)
    ds = dataset_by_name(name)
    test = ds.split("test")[:QUICK_MAPS]
    quick = estimate_bound(model, make_schedule(**meta["model_config"]["schedule"]), test, k=1, progress=False)
    z = (quick["bpd"] - meta["test_bpd"]) / math.hypot(quick["stderr"], meta["test_bpd_stderr"])
    assert abs(z) < 4, (f"quick estimate {quick['bpd']:.4f} +- {quick['stderr']:.4f} against the recorded "
                        f"{meta['test_bpd']:.4f} +- {meta['test_bpd_stderr']:.4f}: {z:+.1f} standard errors")
    # It learned: far below the uniform model's log2 K. (How close it is to the best possible is
    # a benchmark's business, not a test's.)
    assert meta["test_bpd"] < 0.5 * math.log2(ds.num_classes)
    if name == "toyseg":  # and no bound beats the true entropy beyond its standard error
        assert meta["test_bpd"] > ds.entropy_bits_per_pixel - 3 * meta["test_bpd_stderr"]


def test_unknown_name():
    with pytest.raises(ValueError, match="toyseg"):
        pretrained_path("cityscapes")


@pytest.mark.parametrize("kind", ["ordinal", "onehot", "variational-ordinal", "variational-onehot"])
def test_shipped_flow(kind):
    from mdiff_lite.baselines import evaluate_flow, load_pretrained_flow, pretrained_flow_path

    path = pretrained_flow_path("toyseg", kind)
    assert path.stat().st_size < 6e6
    flow, meta = load_pretrained_flow("toyseg", kind)
    assert meta["command"].startswith("python benchmarks/likelihood.py") and meta["dataset"] == "toyseg"
    assert flow.kind == kind and not flow.training
    # Trained: far below a uniform model's 3 bits per pixel, and consistent with its recorded bound.
    result = evaluate_flow(flow, dataset_by_name("toyseg").split("test")[:32], k=1)
    assert result["bpd"] < 2.8 and abs(result["bpd"] - meta["test_bpd"]["1"]) < 6 * result["stderr"] + 0.02


@pytest.mark.parametrize("name", ["uniform", "absorbing", "autoregressive"])
def test_shipped_text_model(name):
    """The text models of notebook 07: small (float16), the benchmark's own (its JSON has the same
    score and command), and the score holds on a quick look at the test split."""
    import json
    from pathlib import Path

    from mdiff_lite.data import TextCorpus
    from mdiff_lite.evaluate import exact_nll
    from mdiff_lite.models import process_of

    path = pretrained_path(f"text-{name}")
    assert path.is_file() and path.stat().st_size < 2e6
    weights, meta, training = load_checkpoint(path)
    assert training is None and all(not v.is_floating_point() or v.dtype == torch.float16 for v in weights.values())
    bench = json.loads((Path(__file__).resolve().parents[1] / "benchmarks/results/text_cpu.json").read_text())
    row = next(r for r in bench["rows"] if r["model"] == name)
    assert meta["command"] == bench["command"] and meta["test_bpc"] == row["bpc"] and meta["steps"] == row["steps"]
    model, _ = load_pretrained(f"text-{name}")
    corpus = TextCorpus()
    test = corpus.split("test")[:64]
    if name == "autoregressive":
        quick = exact_nll(model, test, progress=False)
    else:
        assert process_of(model).name == name
        quick = estimate_bound(model, process_of(model), test, k=2, progress=False)
    # 64 of the 577 sequences (the first ones, a few articles): within 5 standard errors of the
    # recorded score over all of them, and below the unigram cross-entropy (it learned context).
    z = (quick["bpd"] - meta["test_bpc"]) / math.hypot(quick["stderr"], meta["test_stderr"])
    assert abs(z) < 5, f"{quick['bpd']:.4f} +- {quick['stderr']:.4f} against {meta['test_bpc']:.4f}"
    assert meta["test_bpc"] < corpus.reference_bits()["unigram"]
