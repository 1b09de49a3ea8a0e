"""What every benchmark script records about where it ran, and how it writes its JSON."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch

import mdiff_lite


def environment(device: torch.device | str = "cpu") -> dict:
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {"device": str(device), "device_name": name, "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "mdiff_lite": mdiff_lite.__version__}


def write_json(path, result: dict) -> None:
    """Write ``result`` to ``path`` (creating folders) and say so."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
