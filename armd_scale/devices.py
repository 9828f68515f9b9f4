"""Which device a command computes on: `--device auto` (the default of `armd eval` and `armd generate`).

`auto` is the first CUDA device when torch sees one, else the CPU, so an evaluation job that holds a
GPU uses it without being told. Anything else is a torch device string (`cpu`, `cuda`, `cuda:1`);
asking for CUDA where torch sees none is an error, not a silent fall-back to the CPU. Commands print
the device they chose (`describe`), so a log always says where the numbers were computed.
"""

from __future__ import annotations

import torch

AUTO = "auto"


def resolve_device(name: str | torch.device) -> torch.device:
    """`auto` -> cuda when available, else cpu; other names are checked against what torch can see."""
    if isinstance(name, torch.device):
        device = name
    elif name == AUTO:
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    else:
        try:
            device = torch.device(name)
        except (RuntimeError, TypeError):
            raise ValueError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {name}: torch {torch.__version__} sees no CUDA device (CUDA build: {torch.version.cuda}); "
                "use --device auto or cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device


def describe(device: torch.device) -> str:
    """One line naming the device, e.g. `cuda:0 (NVIDIA H100 80GB HBM3)` or `cpu (8 threads)`."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(device)
