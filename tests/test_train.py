"""Training on tiny budgets: devices, learning, checkpoints (atomic, resumable, checked), DDP."""

import json
import os
import shutil
import signal
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


def test_bad_training_input(tmp_path):
    model = Denoiser(tiny_config())
    with pytest.raises(ValueError, match="fit's meta: names dataset 'stripes', which does not exist"):
        fit(model, striped_maps(), TrainConfig(steps=1), checkpoint_path=tmp_path / "c.pt", meta={"dataset": "stripes"},
            progress=False)
    assert not (tmp_path / "c.pt").exists()  # refused before training, not at the first save
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
    assert meta["world_size"] == 2 and meta["steps"] == 12
    # The weights moved: training happened.
    torch.manual_seed(0)
    start = torch.cat([p.detach().flatten() for p in Denoiser(tiny_config()).parameters()])
    assert not torch.equal(start, r0["params"])


def tiny_dropout_config():
    """Three classes, dropout on: a resumed run must also restore torch's global generator."""
    return DenoiserConfig(num_classes=3, height=8, width=8, fold=1, channels=(8,), groups=4, attention=False,
                          embed_dim=8, dropout=0.1, schedule={"name": "hoogeboom-cosine", "T": 20})


def assert_identical(a, b, where="checkpoint"):
    """Equal to the bit: tensors with torch.equal (and the same dtype), containers entry by entry."""
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_identical(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_a_run_stopped_and_resumed_ends_bitwise_equal_to_one_that_never_stopped(tmp_path):
    maps = striped_maps() % 3
    config = TrainConfig(steps=24, batch_size=8, warmup_steps=4, t_sampler="importance", importance_history=2,
                         checkpoint_every=5)
    torch.manual_seed(0)
    straight = Denoiser(tiny_dropout_config())
    fit(straight, maps, config, device="cpu", checkpoint_path=tmp_path / "straight.pt", progress=False)

    torch.manual_seed(0)
    stopped = Denoiser(tiny_dropout_config())
    calls, forward = {"n": 0}, stopped.forward

    def interrupted(x_t, t):
        calls["n"] += 1
        if calls["n"] == 13:
            raise KeyboardInterrupt  # inside step 13, after it drew its batch, t and x_t
        return forward(x_t, t)

    stopped.forward = interrupted
    with pytest.raises(KeyboardInterrupt):
        fit(stopped, maps, config, device="cpu", checkpoint_path=tmp_path / "resumed.pt", progress=False)
    assert load_checkpoint(tmp_path / "resumed.pt")[2]["step"] == 12  # after the periodic save at 10
    torch.manual_seed(123)  # other work in between moves the global generator; the resume restores it
    resumed = Denoiser(tiny_dropout_config())  # other initial weights: the checkpoint's replace them
    fit(resumed, maps, config, device="cpu", checkpoint_path=tmp_path / "resumed.pt", progress=False)

    assert_identical(straight.state_dict(), resumed.state_dict(), "EMA weights in the model")
    (w1, m1, s1), (w2, m2, s2) = (load_checkpoint(tmp_path / f"{n}.pt") for n in ("straight", "resumed"))
    assert_identical(w1, w2, "EMA weights")
    h1, h2 = (json.loads(s.pop("history_json")) for s in (s1, s2))
    for h in (h1, h2):
        h.pop("seconds")  # wall-clock time: the one thing that differs
    assert_identical(h1, h2, "history")
    s1.pop("elapsed"), s2.pop("elapsed")
    assert_identical(s1, s2, "training state")  # raw weights, optimizer, sampler, random states, step
    assert s1["step"] == 24 and (s1["sampler"]["count"][1:] >= 2).all()  # p(t) left the warm-up
    assert m1["steps"] == m2["steps"] == 24


def test_resume_refuses_another_run_and_lists_every_difference(tmp_path):
    path = tmp_path / "ckpt.pt"
    maps = striped_maps()
    base = dict(batch_size=8, checkpoint_every=0)
    model = lambda **changes: Denoiser(tiny_config(num_classes=17, **changes))  # noqa: E731 (the digits' shape)
    meta = {"dataset": "digits", "permute_seed": None}
    fit(model(), maps, TrainConfig(steps=4, **base), device="cpu", checkpoint_path=path, meta=meta,
        progress=False)
    before = path.read_bytes()

    # Switching only the t sampler (once a KeyError: 'history'):
    with pytest.raises(ValueError, match="train_config.t_sampler: 'stratified' in the checkpoint, 'importance' now"):
        fit(model(), maps, TrainConfig(steps=8, t_sampler="importance", **base), device="cpu",
            checkpoint_path=path, meta=meta, progress=False)
    # Everything at once, every difference listed:
    with pytest.raises(ValueError) as info:
        fit(model(schedule={"name": "hoogeboom-cosine", "T": 10}), maps[:100],
            TrainConfig(steps=8, lr=1e-3, seed=1, t_sampler="importance", **base), device="cpu",
            checkpoint_path=path, meta={"dataset": "digits", "permute_seed": 3}, progress=False)
    message = str(info.value)
    for difference in ("permute_seed: None in the checkpoint, 3 now", "train_maps_shape: [256, 8, 8] in the "
                       "checkpoint, [100, 8, 8] now", "train_config.lr: 0.003 in the checkpoint, 0.001 now",
                       "train_config.seed: 0 in the checkpoint, 1 now", "train_config.t_sampler",
                       "model_config.schedule.T: 20 in the checkpoint, 10 now"):
        assert difference in message, message
    assert message.count(" in the checkpoint, ") == 6  # and nothing else: the budget may change
    assert "resume=False" in message and "--no-resume" in message
    assert path.read_bytes() == before

    # The budget may change: more steps, another clock, other checkpoint intervals.
    history = fit(model(), maps, TrainConfig(steps=6, max_seconds=600, **dict(base, checkpoint_every=3)),
                  device="cpu", checkpoint_path=path, meta=meta, progress=False)
    assert history["step"][-1] == 6 and load_checkpoint(path)[2]["step"] == 6
    # And a fresh run when asked for: it starts at 0 and overwrites the file.
    history = fit(model(), maps, TrainConfig(steps=3, t_sampler="importance", **base), device="cpu",
                  checkpoint_path=path, resume=False, meta=meta, progress=False)
    _, meta_now, state = load_checkpoint(path)
    assert state["step"] == 3 and meta_now["train_config"]["t_sampler"] == "importance"


def test_a_checkpoint_without_random_states_still_resumes(tmp_path, capsys):
    path = tmp_path / "ckpt.pt"
    fit(Denoiser(tiny_config()), striped_maps(), TrainConfig(steps=4, batch_size=8), device="cpu",
        checkpoint_path=path, progress=False)
    obj = torch.load(path, weights_only=True)  # as files written before random states were saved
    for key in ("random_states", "running_bpd"):
        del obj["training"][key]
    meta = json.loads(obj["meta_json"])
    del meta["train_maps_shape"]
    obj["meta_json"] = json.dumps(meta)
    torch.save(obj, path)
    history = fit(Denoiser(tiny_config()), striped_maps(), TrainConfig(steps=6, batch_size=8), device="cpu",
                  checkpoint_path=path, progress=False)
    assert history["step"][-1] == 6
    assert "drawing afresh" in capsys.readouterr().out
    obj = torch.load(path, weights_only=True)
    del obj["training"]["optimizer"]  # damaged beyond resuming: one line, not a KeyError
    torch.save(obj, path)
    with pytest.raises(ValueError, match="its training state lacks optimizer"):
        fit(Denoiser(tiny_config()), striped_maps(), TrainConfig(steps=8, batch_size=8), device="cpu",
            checkpoint_path=path, progress=False)


def test_ctrl_c_finishes_the_step_saves_it_and_raises(tmp_path):
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    path = tmp_path / "ckpt.pt"
    model = Denoiser(tiny_config())
    calls, forward = {"n": 0}, model.forward

    def interrupted(x_t, t):
        calls["n"] += 1
        if calls["n"] == 5:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C during the 5th step's forward pass
        return forward(x_t, t)

    model.forward = interrupted
    with pytest.raises(KeyboardInterrupt):
        fit(model, striped_maps(), TrainConfig(steps=50, batch_size=8, checkpoint_every=0), device="cpu",
            checkpoint_path=path, progress=False)
    assert calls["n"] == 5  # no step began after it
    _, meta, state = load_checkpoint(path)
    assert state["step"] == 5 and meta["final"] is False  # the 5th step finished, and was saved
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


SIGTERM_CHILD = """
import sys
import torch
from mdiff_lite.models import Denoiser, DenoiserConfig
from mdiff_lite.train import TrainConfig, fit
torch.manual_seed(0)
model = Denoiser(DenoiserConfig(num_classes=4, height=8, width=8, fold=1, channels=(16, 32), embed_dim=16,
                                schedule={"name": "hoogeboom-cosine", "T": 20}))
forward = model.forward
def counted(x_t, t):
    print("step", flush=True)  # one forward pass per step: the parent counts the steps begun
    return forward(x_t, t)
model.forward = counted
fit(model, torch.randint(0, 4, (64, 8, 8)), TrainConfig(steps=10**6, batch_size=8, checkpoint_every=10**6),
    device="cpu", checkpoint_path=sys.argv[1], progress=False)
"""


def test_sigterm_saves_the_steps_since_the_last_save_and_ends_the_process(tmp_path):
    path = tmp_path / "ckpt.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    child = subprocess.Popen([sys.executable, "-c", SIGTERM_CHILD, str(path)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    try:
        begun = 0
        for line in child.stdout:
            begun += line.strip() == "step"
            if begun == 20:
                break
        child.send_signal(signal.SIGTERM)
        rest, err = child.communicate(timeout=120)
    finally:
        child.kill()
    begun += rest.splitlines().count("step")
    assert child.returncode == -signal.SIGTERM, err[-2000:]  # ended as a SIGTERM'd process does
    assert "stopped by SIGTERM" in rest
    # No periodic save in 10**6 steps: only the signal's save can hold these steps, every one begun.
    _, meta, state = load_checkpoint(path)
    assert state["step"] == begun >= 20 and meta["final"] is False
    history = fit(Denoiser(tiny_config(num_classes=4)), torch.randint(0, 4, (64, 8, 8)),
                  TrainConfig(steps=begun + 3, batch_size=8, checkpoint_every=10**6), device="cpu",
                  checkpoint_path=path, progress=False)
    assert history["step"][-1] == begun + 3


class _ValueReads(torch.overrides.TorchFunctionMode):
    """Counts every read of a tensor's value into Python (``item``, ``bool``, ``float``, ``tolist``,
    a copy to the CPU...): on a GPU each is a wait for the device."""

    READS = {"item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy", "cpu"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.READS:
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("t_sampler", ["uniform", "stratified"])
def test_a_training_step_reads_nothing_back_between_log_steps(t_sampler):
    # Steps 1..10 and 1..40 of the same run differ by 30 steps and 3 log steps: between log steps
    # a step must read no value back from the device (the loss, t, an index check...).
    def reads(steps):
        with _ValueReads() as mode:
            fit(Denoiser(tiny_config()), striped_maps(), TrainConfig(steps=steps, batch_size=8, t_sampler=t_sampler,
                                                                     log_every=10, checkpoint_every=0),
                device="cpu", progress=False)
        return mode.count
    assert reads(40) - reads(10) == 3  # one read per log step: the running loss and the last one


def test_a_nan_loss_stops_training_at_the_next_log_step():
    class Broken(Denoiser):
        def forward(self, x_t, t):
            return super().forward(x_t, t) * float("nan")
    with pytest.raises(FloatingPointError, match="by step 5"):
        fit(Broken(tiny_config()), striped_maps(), TrainConfig(steps=20, batch_size=8, log_every=5),
            device="cpu", progress=False)


def test_mixed_precision_is_chosen_by_the_device():
    from mdiff_lite.train import autocast_dtype
    assert autocast_dtype("auto", torch.device("cpu")) is None  # float32 on the CPU unless asked
    assert autocast_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    assert autocast_dtype("fp16", torch.device("cuda")) == torch.float16
    assert autocast_dtype("off", torch.device("cuda")) is None
    assert TrainConfig(amp=True).amp == "auto" and TrainConfig(amp=False).amp == "off"  # older checkpoints
    with pytest.raises(ValueError, match="amp must be one of"):
        TrainConfig(amp="fp8").validate()


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_trains_on_the_cpu_too(amp):
    # The code paths a GPU takes (autocast; for float16, the gradient scaler), run where CI can.
    history = fit(Denoiser(tiny_config()), striped_maps(), TrainConfig(steps=30, batch_size=16, amp=amp),
                  device="cpu", progress=False)
    assert history["loss_bpd"][-1] < history["loss_bpd"][0]


def test_the_learning_rate_scales_with_the_square_root_of_the_batch():
    model = Denoiser(tiny_config())
    history = fit(model, striped_maps(), TrainConfig(steps=5, batch_size=256, lr=1e-3, lr_batch=64, warmup_steps=0, log_every=1),
                  device="cpu", progress=False)
    # at step 1 of 5 the cosine factor is 1; sqrt(256 / 64) = 2 (lr_batch 64 here)
    assert history["lr"][0] == pytest.approx(2e-3)


def test_on_log_sees_the_ema_at_every_log_step_and_can_end_training():
    seen = []

    def on_log(step, seconds, ema):
        assert not ema.training and seconds > 0
        seen.append(step)
        return step >= 20

    history = fit(Denoiser(tiny_config()), striped_maps(), TrainConfig(steps=100, batch_size=8, log_every=5),
                  device="cpu", progress=False, on_log=on_log)
    assert seen == [5, 10, 15, 20] and history["step"][-1] == 20


def test_compiled_training_and_evaluation_match_the_plain_ones():
    # torch.compile (inductor, on the CPU here) must change speed only: the same steps give the same
    # weights, and the same all-T estimate, up to float rounding (which Adam can turn into up to one
    # lr-sized step, 1.5e-3 here, where a gradient is near zero).
    s = make_schedule("hoogeboom-cosine", 20)
    config = TrainConfig(steps=3, batch_size=8, warmup_steps=1, checkpoint_every=0)
    plain, compiled = Denoiser(tiny_config()), Denoiser(tiny_config())
    compiled.load_state_dict(plain.state_dict())
    fit(plain, striped_maps(), config, device="cpu", progress=False)
    fit(compiled, striped_maps(), TrainConfig(**{**config.__dict__, "compile": True}), device="cpu", progress=False)
    for a, b in zip(plain.state_dict().values(), compiled.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-3)
    maps = striped_maps(16)
    a = evaluate_bound(plain, s, maps, progress=False)
    b = evaluate_bound(plain, s, maps, progress=False, compile=True)
    assert b["bpd"] == pytest.approx(a["bpd"], rel=1e-4)
