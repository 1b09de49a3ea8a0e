"""Checkpoint files: every reader refuses a bad file with one line naming it; writes follow the umask."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mdiff_lite.baselines as baselines
import mdiff_lite.train as train
from mdiff_lite.baselines import DequantizationFlow, load_flow, load_pretrained_flow, save_flow
from mdiff_lite.checkpoint import kind_of, read_checkpoint, update_meta
from mdiff_lite.models import Denoiser, DenoiserConfig
from mdiff_lite.train import load_checkpoint, load_denoiser, load_pretrained, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
PRETRAINED = ROOT / "mdiff_lite" / "pretrained"


def digits_denoiser():
    """A tiny denoiser of the digits' shape (17 classes, 8 x 8), so that its checkpoint can name them."""
    torch.manual_seed(0)
    return Denoiser(DenoiserConfig(num_classes=17, height=8, width=8, fold=1, channels=(8,), groups=4,
                                   attention=False, embed_dim=8, schedule={"name": "hoogeboom-cosine", "T": 10}))


def digits_flow():
    return DequantizationFlow("ordinal", 17, 8, 8, hidden=(8, 8), steps=(1, 1))


def _edited(source: Path, target: Path, **meta_changes) -> Path:
    """A copy of a real checkpoint with its metadata changed behind the writer's back (which refuses
    such metadata): what a hand-edited or foreign file looks like."""
    obj = torch.load(source, weights_only=True)
    obj["meta_json"] = json.dumps(dict(json.loads(obj["meta_json"]), **meta_changes))
    torch.save(obj, target)
    return target


def bad_files(directory: Path) -> dict:
    """name -> (path, words the refusal must contain) for every kind of bad file; also the good
    denoiser and flow files they were made from, under "denoiser" and "flow". Used by test_cli too."""
    d = Path(directory)
    save_checkpoint(d / "denoiser.pt", digits_denoiser(), {"dataset": "digits", "permute_seed": None})
    save_flow(d / "flow.pt", digits_flow(), {"dataset": "digits", "permute_seed": None})
    good = (d / "denoiser.pt").read_bytes()
    (d / "half.pt").write_bytes(good[: len(good) // 2])
    (d / "random.pt").write_bytes(random.Random(0).randbytes(4096))
    (d / "text.pt").write_text("epoch 3: loss 0.12\n")
    (d / "empty.pt").write_bytes(b"")
    torch.save({"weights": torch.zeros(3)}, d / "other_dict.pt")
    torch.save(torch.zeros(3), d / "tensor.pt")
    torch.save(torch.nn.Linear(2, 2), d / "module.pt")  # a pickled object: weights_only refuses it
    files = {
        "denoiser": (d / "denoiser.pt", None),
        "flow": (d / "flow.pt", None),
        "truncated": (d / "half.pt", "truncated"),
        "random bytes": (d / "random.pt", "not a file written by torch.save"),
        "text": (d / "text.pt", "not a file written by torch.save"),
        "empty": (d / "empty.pt", "empty"),
        "another dict": (d / "other_dict.pt", "no 'model' and 'meta_json'"),
        "a tensor": (d / "tensor.pt", "no 'model' and 'meta_json'"),
        "a module": (d / "module.pt", "objects other than tensors"),
    }
    for kind in ("denoiser", "flow"):  # metadata a writer refuses, on a file of each kind
        prefix = "" if kind == "denoiser" else "flow "
        source = d / f"{kind}.pt"
        files[prefix + "unknown dataset"] = (_edited(source, d / f"{kind}_cityscapes.pt", dataset="cityscapes"),
                                             "dataset 'cityscapes', which does not exist")
        files[prefix + "config misfit"] = (_edited(source, d / f"{kind}_misfit.pt", dataset="toyseg"),
                                           "17 classes at 8 x 8, but dataset 'toyseg' has 8 classes at 32 x 32")
        files[prefix + "unknown kind"] = (_edited(source, d / f"{kind}_gan.pt", kind="gan"), "kind 'gan'")
    return files


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return bad_files(tmp_path_factory.mktemp("checkpoints"))


def refusal(reader, path) -> str:
    with pytest.raises(ValueError) as info:
        reader(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message, message  # one line, naming the file
    return message


BAD = ["truncated", "random bytes", "text", "empty", "another dict", "a tensor", "a module", "unknown dataset",
       "config misfit", "unknown kind"]


@pytest.mark.parametrize("case", BAD)
@pytest.mark.parametrize("reader", [load_denoiser, load_flow, load_checkpoint], ids=lambda f: f.__name__)
def test_every_reader_refuses_a_bad_file_in_one_line(files, case, reader):
    path, words = files[f"flow {case}" if reader is load_flow and f"flow {case}" in files else case]
    assert words in refusal(reader, path)


def test_weights_that_do_not_fit_their_config_are_refused_in_one_line(files, tmp_path):
    for name, reader in (("denoiser", load_denoiser), ("flow", load_flow)):
        obj = torch.load(files[name][0], weights_only=True)
        first = sorted(obj["model"])[0]
        obj["model"]["extra.weight"] = obj["model"].pop(first)
        torch.save(obj, tmp_path / f"{name}.pt")
        message = refusal(reader, tmp_path / f"{name}.pt")
        assert f"missing: {first}" in message and "unexpected: extra.weight" in message


def test_the_wrong_kind_is_refused_and_says_which_loader_fits(files):
    assert "holds a dequantization flow, not a denoiser; load it with mdiff_lite.baselines.load_flow" in refusal(
        load_denoiser, files["flow"][0])
    assert "holds a denoiser, not a dequantization flow; load it with mdiff_lite.train.load_denoiser" in refusal(
        load_flow, files["denoiser"][0])
    assert "not a denoiser" in refusal(lambda p: read_checkpoint(p, kind="denoiser"), files["flow"][0])


def test_a_missing_file_is_named(tmp_path):
    for reader in (load_denoiser, load_flow, load_checkpoint):
        with pytest.raises(FileNotFoundError, match=f"no checkpoint at {tmp_path / 'missing.pt'}"):
            reader(tmp_path / "missing.pt")


def test_a_pretrained_loader_refuses_another_dataset_or_kind(monkeypatch):
    # The shipped files, read in place (not rewritten), each put where another one should be.
    monkeypatch.setattr(train, "pretrained_path", lambda name: PRETRAINED / "digits.pt")
    message = refusal(lambda _: load_pretrained("toyseg"), PRETRAINED / "digits.pt")
    assert "holds a model of dataset 'digits', not 'toyseg'" in message
    ordinal = PRETRAINED / "flow_toyseg_ordinal.pt"
    monkeypatch.setattr(baselines, "pretrained_flow_path", lambda dataset, kind: ordinal)
    assert "dataset 'toyseg', not 'digits'" in refusal(lambda _: load_pretrained_flow("digits", "ordinal"), ordinal)
    assert "holds a 'ordinal' flow, not 'onehot'" in refusal(lambda _: load_pretrained_flow("toyseg", "onehot"),
                                                           ordinal)


def test_shipped_files_without_a_kind_still_load():
    shipped = sorted(p for p in PRETRAINED.glob("*.pt") if not p.name.startswith("text-"))
    assert len(shipped) == 6
    for path in shipped:
        _, meta, _ = load_checkpoint(path)
        assert "kind" not in meta  # written before there was one, and left as they were
        assert kind_of(meta) == ("flow" if path.name.startswith("flow_") else "denoiser")
    model, meta = load_pretrained("digits")
    assert model.num_classes == 17 and meta["dataset"] == "digits"
    flow, _ = load_flow(PRETRAINED / "flow_toyseg_ordinal.pt")
    assert flow.kind == "ordinal"


def test_new_files_say_what_they_hold(files):
    assert load_checkpoint(files["denoiser"][0])[1]["kind"] == "denoiser"
    assert load_checkpoint(files["flow"][0])[1]["kind"] == "flow"
    # The text models shipped for notebook 07 were written with their kind.
    kinds = {p.name: load_checkpoint(p)[1]["kind"] for p in sorted(PRETRAINED.glob("text-*.pt"))}
    assert kinds == {"text-absorbing.pt": "text-denoiser", "text-autoregressive.pt": "autoregressive",
                     "text-uniform.pt": "text-denoiser"}


def test_writers_refuse_what_readers_would(tmp_path):
    with pytest.raises(ValueError, match="'cityscapes', which does not exist"):
        save_checkpoint(tmp_path / "a.pt", digits_denoiser(), {"dataset": "cityscapes"})
    with pytest.raises(ValueError, match="but dataset 'toyseg' has 8 classes"):
        save_flow(tmp_path / "b.pt", digits_flow(), {"dataset": "toyseg"})
    assert list(tmp_path.iterdir()) == []  # nothing written
    save_checkpoint(tmp_path / "c.pt", digits_denoiser(), {"dataset": "digits"})
    before = (tmp_path / "c.pt").read_bytes()
    with pytest.raises(ValueError, match="dataset 'toyseg' has 8 classes"):
        update_meta(tmp_path / "c.pt", dataset="toyseg")
    assert (tmp_path / "c.pt").read_bytes() == before
    assert update_meta(tmp_path / "c.pt", test_bpd=0.5)["test_bpd"] == 0.5


def test_the_oracle_benchmark_refuses_a_bad_file_in_one_line(files):
    for case in ("flow", "truncated", "config misfit"):
        path = files[case][0]
        done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "oracle.py"), "--checkpoint", str(path)],
                              capture_output=True, text=True, timeout=120)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and str(path) in lines[0], done.stderr


def test_import_leaves_the_umask_alone_and_files_follow_it(tmp_path):
    # A fresh process: os.umask is watched from before the package is imported.
    script = f"""
import os
real_umask = os.umask
real_umask(0o027)
calls = []
os.umask = lambda mask: calls.append(mask) or real_umask(mask)
import mdiff_lite.train, mdiff_lite.baselines, mdiff_lite.cli
from mdiff_lite.models import Denoiser, DenoiserConfig
from mdiff_lite.train import save_checkpoint, update_meta
model = Denoiser(DenoiserConfig(num_classes=3, height=8, width=8, fold=1, channels=(8,), groups=4, attention=False,
                                embed_dim=8))
save_checkpoint({str(tmp_path / 'a.pt')!r}, model, {{}})
real_umask(0o002)
save_checkpoint({str(tmp_path / 'b.pt')!r}, model, {{}})
update_meta({str(tmp_path / 'b.pt')!r}, note="rewritten")
print(calls)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"  # nothing set the umask, not even to read it
    assert (tmp_path / "a.pt").stat().st_mode & 0o777 == 0o666 & ~0o027 == 0o640
    assert (tmp_path / "b.pt").stat().st_mode & 0o777 == 0o666 & ~0o002 == 0o664
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "b.pt"]  # no temporaries left
