"""Where tensors live: the run config's `device` ("auto", "cpu", "cuda" or "cuda:N") -> torch.device.

"auto" is the GPU when this process sees one, else the CPU. In a Ray
simulation a client actor sees a GPU only if it was given one
(`client-gpus` > 0; Ray hides GPUs from actors that asked for none), so
"auto" keeps CPU-only sweeps exactly as they were. Asking for "cuda" where no
GPU is visible is a usage error with one clear line, never a silent CPU run.
"""

from __future__ import annotations

import re

from fedalign.errors import UsageError

_VALID = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device_name(name: str) -> None:
    if not _VALID.match(str(name)):
        raise UsageError(f"device={name!r} is not valid; use auto, cpu, cuda or cuda:N")


def resolve_device(name: str):
    """The torch.device for `name`; UsageError for an unknown name or a missing GPU."""
    import torch

    check_device_name(name)
    if name == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if name == "auto":
        return torch.device("cuda" if available else "cpu")
    if not available:
        raise UsageError(
            f"device={name!r} but no CUDA GPU is visible to this process (torch.cuda.is_available() is False); "
            "use device=auto or cpu, and in a simulation give clients GPUs with client-gpus"
        )
    index = int(name.split(":")[1]) if ":" in name else 0
    if index >= torch.cuda.device_count():
        raise UsageError(f"device={name!r} but only {torch.cuda.device_count()} GPU(s) are visible; use cuda:0..")
    return torch.device(name)
