"""Run by tests/test_train.py under torchrun: a few steps of DDP training on the CPU (gloo),
then each rank writes what it ended with, so that the test can compare the ranks."""

import sys

import torch

from mdiff_lite.models import Denoiser, DenoiserConfig
from mdiff_lite.train import TrainConfig, fit

out_dir = sys.argv[1]
torch.manual_seed(0)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
maps = torch.randint(0, 4, (64, 8, 8))
model = Denoiser(DenoiserConfig(num_classes=4, height=8, width=8, fold=1, channels=(16, 32), embed_dim=16,
                                schedule={"name": "hoogeboom-cosine", "T": 20}))
# history=1: the importance sampler warms up within these steps (every t of 20 seen once; 2 ranks x 8 losses a
# step), so p(t) turns non-uniform and would differ between ranks that did not share losses.
history = fit(model, maps, TrainConfig(steps=12, batch_size=8, warmup_steps=2, checkpoint_every=0,
                                       t_sampler="importance", importance_history=1),
              device="cpu", checkpoint_path=f"{out_dir}/ckpt.pt", progress=False)
rank = torch.distributed.get_rank()
torch.save({"params": torch.cat([p.detach().flatten() for p in model.parameters()]),
            "sampler_probs": history["sampler_probs"], "sampler_state": history["sampler_state"],
            "world_size": torch.distributed.get_world_size()},
           f"{out_dir}/rank{rank}.pt")
torch.distributed.destroy_process_group()
