"""Apple's MPS has no float64: float64 work must stay on the CPU. Without a Mac, the same code
paths run here on tensors that refuse to become float64 until they leave the "device"."""

import pytest
import torch
from torch._C import DisableTorchFunctionSubclass

from mdiff_lite import make_schedule
from mdiff_lite.baselines import DequantizationFlow, evaluate_flow
from mdiff_lite.evaluate import estimate_bound, evaluate_bound
from mdiff_lite.models import Denoiser, DenoiserConfig
from mdiff_lite.sampling import inpaint, sample

LEAVE_THE_DEVICE = {torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.tolist, torch.Tensor.item}


class NoFloat64(torch.Tensor):
    """A CPU tensor that, like one on MPS, cannot be or become float64: every operation on it
    gives a NoFloat64 again, and one whose result is float64 raises (as MPS does), except after
    ``.cpu()`` (or ``.item()``, ``.tolist()``, ``.numpy()``), which leaves the pretend device."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in LEAVE_THE_DEVICE:
            with DisableTorchFunctionSubclass():
                out = func(*args, **kwargs)  # .cpu() of a CPU tensor is itself: make it a plain tensor
                return out.as_subclass(torch.Tensor) if isinstance(out, torch.Tensor) else out
        out = super().__torch_function__(func, types, args, kwargs)
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(tensor, cls) and tensor.dtype == torch.float64:
                raise TypeError(f"{getattr(func, '__name__', func)} made a float64 tensor on the device "
                                "(MPS has no float64)")
        return out


def on_device(x: torch.Tensor) -> NoFloat64:
    return x.as_subclass(NoFloat64)


def test_the_pretend_device_refuses_float64_like_mps():
    x = on_device(torch.ones(3))
    with pytest.raises(TypeError, match="MPS"):
        x.double()
    with pytest.raises(TypeError, match="MPS"):
        x.to(torch.float64)
    assert type(x * 2) is NoFloat64 and type(x.cpu()) is torch.Tensor and x.cpu().double().dtype == torch.float64


@pytest.fixture(scope="module")
def tiny_denoiser():
    config = DenoiserConfig(num_classes=4, height=8, width=8, fold=1, channels=(8,), groups=4, attention=False,
                            embed_dim=8, schedule={"name": "hoogeboom-cosine", "T": 6})
    torch.manual_seed(0)
    return Denoiser(config).eval(), make_schedule("hoogeboom-cosine", 6)


def test_evaluation_keeps_float64_off_the_device(tiny_denoiser):
    model, s = tiny_denoiser
    maps = on_device(torch.randint(0, 4, (3, 8, 8)))
    exact = evaluate_bound(model, s, maps, batch_size=2, progress=False)
    estimate = estimate_bound(model, s, maps, k=2, progress=False)
    plain = evaluate_bound(model, s, maps.cpu(), batch_size=2, progress=False)
    assert exact["bpd"] == pytest.approx(plain["bpd"], rel=1e-6) and estimate["bpd"] > 0


def test_sampling_keeps_float64_off_the_device(tiny_denoiser):
    model, s = tiny_denoiser
    known = on_device(torch.randint(0, 4, (2, 8, 8)))
    mask = on_device(torch.zeros(8, 8, dtype=torch.bool))
    mask[:4] = True
    filled = inpaint(model, s, known, mask, steps=3, progress=False)
    assert torch.equal(filled[:, :4].cpu(), known[:, :4].cpu())
    # sample() starts from a fresh uniform x_T, a factory call: route it through the pretend device.
    x_T = on_device(torch.randint(0, 4, (2, 8, 8)))
    assert inpaint(model, s, x_T, on_device(torch.zeros(8, 8, dtype=torch.bool)), progress=False).shape == (2, 8, 8)
    assert sample(model, s, 2, steps=2, progress=False).shape == (2, 8, 8)


def test_flow_evaluation_keeps_float64_off_the_device(monkeypatch):
    # evaluate_flow moves each batch to the flow's device itself, from the CPU: put the flow's
    # output on the pretend device, which is what it gets back on MPS.
    torch.manual_seed(0)
    flow = DequantizationFlow("ordinal", 4, 8, 8, hidden=(8, 8), steps=(1, 1), blocks=1).eval()
    bound = flow.log_prob_bound
    monkeypatch.setattr(flow, "log_prob_bound", lambda *args, **kwargs: on_device(bound(*args, **kwargs)))
    result = evaluate_flow(flow, torch.randint(0, 4, (3, 8, 8)), k=1, progress=False)
    assert result["bpd"] > 0
