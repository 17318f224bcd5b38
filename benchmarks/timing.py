"""What every benchmark script shares: the machine's name and timed repeats that wait for the
device (CUDA kernels run asynchronously; a timer must not stop before they finish)."""

from __future__ import annotations

import platform
import time
from pathlib import Path

import torch


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo``), for the tables in docs/benchmarks.md."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn, repeat: int, device: torch.device) -> float:
    """Mean wall time of ``fn()`` over ``repeat`` calls, after one warm-up call."""
    fn()  # warm-up (kernel selection, allocator)
    sync(device)
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync(device)
    return (time.perf_counter() - t) / repeat
