"""The shipped checkpoints: present, small, self-describing, and as good as their metadata says."""

import math

import pytest

from mdiff_lite import make_schedule
from mdiff_lite.data import dataset_by_name
from mdiff_lite.evaluate import estimate_bound
from mdiff_lite.train import load_checkpoint, load_pretrained, pretrained_path


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

    # A quick Monte-Carlo estimate on a few test maps agrees with the recorded exact figure.
    model, _ = load_pretrained(name)
    ds = dataset_by_name(name)
    test = ds.split("test")[:48]
    quick = estimate_bound(model, make_schedule(**meta["model_config"]["schedule"]), test, k=4, progress=False)
    spread = 5 * math.hypot(quick["stderr"], meta["test_bpd_stderr"]) + 0.05 * meta["test_bpd"]
    assert abs(quick["bpd"] - meta["test_bpd"]) < spread, (quick["bpd"], meta["test_bpd"])
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
