import os

import torch

# Two cores on the CI machines: keep torch from oversubscribing them.
torch.set_num_threads(int(os.environ.get("MDIFF_TEST_THREADS", min(2, os.cpu_count() or 1))))
