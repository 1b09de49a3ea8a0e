"""Training on tiny budgets: devices, learning, checkpoints (atomic, resumable, checked), DDP."""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mdiff_lite import make_schedule
from mdiff_lite.evaluate import evaluate_bound
from mdiff_lite.models import Denoiser, DenoiserConfig
from mdiff_lite.train import (TrainConfig, fit, load_checkpoint, load_denoiser, pick_device, save_checkpoint,
                              update_meta)

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(**changes):
    base = dict(num_classes=4, height=8, width=8, fold=1, channels=(16, 32), embed_dim=16,
                schedule={"name": "hoogeboom-cosine", "T": 20})
    return DenoiserConfig(**{**base, **changes})


def striped_maps(n=256, seed=0):
    """Maps with structure to learn: each map is one of 4 stripe patterns."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.arange(8).view(8, 1).expand(8, 8)
    patterns = torch.stack([rows % 4, (rows // 2) % 4, rows.T % 4, torch.zeros(8, 8, dtype=torch.long)])
    return patterns[torch.randint(0, 4, (n,), generator=g)]


no_accelerator = pytest.mark.skipif(torch.cuda.is_available() or torch.backends.mps.is_available(),
                                    reason="checks the CPU fallback")


@no_accelerator
def test_pick_device_falls_back_and_obeys(monkeypatch, capsys):
    monkeypatch.delenv("MDIFF_DEVICE", raising=False)
    assert pick_device() == torch.device("cpu")
    assert "using device cpu" in capsys.readouterr().out
    monkeypatch.setenv("MDIFF_DEVICE", "cpu")
    assert pick_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        pick_device("cuda")
    monkeypatch.setenv("MDIFF_DEVICE", "cuda:0")
    with pytest.raises(ValueError, match="CUDA is not available"):
        pick_device()
    with pytest.raises(ValueError, match="unknown device"):
        pick_device("tpu-please")


def test_fit_learns_and_returns_the_history():
    torch.manual_seed(0)
    maps = striped_maps()
    model = Denoiser(tiny_config())
    s = make_schedule("hoogeboom-cosine", 20)
    before = evaluate_bound(model, s, maps[:32], progress=False)["bpd"]
    history = fit(model, maps, TrainConfig(steps=150, batch_size=32, lr=3e-3, warmup_steps=10),
                  device="cpu", progress=False)
    after = evaluate_bound(model, s, maps[:32], progress=False)
    assert history["step"][-1] == 150 and len(history["loss_bpd"]) == len(history["step"])
    assert after["bpd"] < 0.6 * before, (before, after["bpd"])
    assert not model.training  # the EMA weights, ready to evaluate


def test_fit_stops_on_wall_clock():
    history = fit(Denoiser(tiny_config()), striped_maps(), TrainConfig(steps=None, max_seconds=1.0, batch_size=8),
                  device="cpu", progress=False)
    assert 1.0 <= history["seconds"][-1] < 10


def test_bad_training_input():
    model = Denoiser(tiny_config())
    with pytest.raises(ValueError, match="outside 0..3"):
        fit(model, striped_maps() + 4, TrainConfig(steps=1), progress=False)
    with pytest.raises(ValueError, match="expects"):
        fit(model, torch.zeros(4, 16, 16, dtype=torch.long), TrainConfig(steps=1), progress=False)
    with pytest.raises(ValueError, match="budget"):
        TrainConfig(steps=None).validate()


def test_checkpoints_round_trip_resume_and_refuse_other_configs(tmp_path):
    path = tmp_path / "ckpt.pt"
    maps = striped_maps()
    model = Denoiser(tiny_config())
    fit(model, maps, TrainConfig(steps=10, batch_size=8, checkpoint_every=5), device="cpu",
        checkpoint_path=path, meta={"data": "stripes"}, progress=False)
    weights, meta, state = load_checkpoint(path)  # torch.load(weights_only=True) inside
    assert meta["steps"] == 10 and meta["data"] == "stripes" and state["step"] == 10
    assert {"model_config", "schedule", "wall_seconds", "device", "mdiff_lite", "command"} <= set(meta)

    loaded, meta2 = load_denoiser(path)
    x, t = maps[:4], torch.tensor([1, 5, 10, 20])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t), model(x, t))

    # Resume: a second call with a larger budget starts at step 10, not 0.
    history = fit(Denoiser(tiny_config()), maps, TrainConfig(steps=16, batch_size=8, checkpoint_every=0),
                  device="cpu", checkpoint_path=path, progress=False)
    assert history["step"][0] == 10 and history["step"][-1] == 16
    assert load_checkpoint(path)[1]["steps"] == 16

    with pytest.raises(ValueError, match="channels"):
        fit(Denoiser(tiny_config(channels=(16, 16))), maps, TrainConfig(steps=20), device="cpu",
            checkpoint_path=path, progress=False)

    # Resuming with a budget already spent changes nothing, results recorded since included;
    # the model comes back with the saved EMA weights.
    update_meta(path, test_bpd=1.234)
    again = Denoiser(tiny_config())
    fit(again, maps, TrainConfig(steps=16, batch_size=8), device="cpu", checkpoint_path=path, progress=False)
    assert load_checkpoint(path)[1]["test_bpd"] == 1.234
    saved = load_checkpoint(path)[0]
    assert all(torch.equal(again.state_dict()[k], v) for k, v in saved.items())


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    model = Denoiser(tiny_config())
    save_checkpoint(path, model, {"note": "first"})
    original = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, {"note": "second"})
    assert path.read_bytes() == original  # the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]  # no temporary left behind
    with pytest.raises(TypeError):
        save_checkpoint(path, model, {"not json": object()})


def test_an_interrupted_run_keeps_its_finished_steps(tmp_path):
    path = tmp_path / "ckpt.pt"
    model = Denoiser(tiny_config())
    calls = {"n": 0}
    forward = model.forward

    def interrupted(x_t, t):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt  # Ctrl-C during the 8th step
        return forward(x_t, t)

    model.forward = interrupted
    with pytest.raises(KeyboardInterrupt):
        fit(model, striped_maps(), TrainConfig(steps=50, batch_size=8, checkpoint_every=0), device="cpu",
            checkpoint_path=path, progress=False)
    _, meta, state = load_checkpoint(path)
    assert state["step"] == 7 and meta["final"] is False  # resumable from there


def test_loading_something_else_fails_clearly(tmp_path):
    bogus = tmp_path / "bogus.pt"
    torch.save({"weights": torch.zeros(1)}, bogus)
    with pytest.raises(ValueError, match="not an mdiff_lite checkpoint"):
        load_denoiser(bogus)
    with pytest.raises(FileNotFoundError):
        load_denoiser(tmp_path / "missing.pt")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun is not installed")
def test_two_cpu_processes_stay_in_sync(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    with socket.socket() as sock:  # a free loopback port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={port}",
           str(ROOT / "tests" / "ddp_worker.py"), str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["world_size"] == 2
    assert torch.equal(r0["params"], r1["params"])  # DDP averaged the same gradients on both ranks
    assert r0["sampler_state"] == r1["sampler_state"]  # both saw every rank's losses...
    assert r0["sampler_probs"] == r1["sampler_probs"]
    assert len(set(r0["sampler_probs"][1:])) > 1  # ...and p(t) has left the uniform warm-up
    meta = load_checkpoint(tmp_path / "ckpt.pt")[1]
    assert meta["world_size"] == 2 and meta["steps"] == 6
    # The weights moved: training happened.
    torch.manual_seed(0)
    start = torch.cat([p.detach().flatten() for p in Denoiser(tiny_config()).parameters()])
    assert not torch.equal(start, r0["params"])
