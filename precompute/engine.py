"""Probe execution: batched passes of F·V (columns) and Fᵀ·U (rows) with out-of-memory back-off.

One pass runs the LinearScope on ``[x0, v_1 … v_K]`` (paper eq. 5, constants off on the probe
branch) or one backward pass for K output vectors (eq. 6). :class:`Engine` is what the sweep, the
SVD and the classifier analyses share; :func:`choose_batch` sizes passes from free memory.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from precompute.errors import UserError

CPU_MAX_BATCH = 64
GPU_MAX_BATCH = 512




def is_oom(e: BaseException) -> bool:
    if isinstance(e, torch.OutOfMemoryError):
        return True
    return isinstance(e, RuntimeError) and (
        "out of memory" in str(e) or "can't allocate memory" in str(e)
    )


class Engine:
    """Batched probes of one linear interpreter with out-of-memory back-off.

    ``probe(flat, "columns")`` returns F·δ for input impulses (eq. 5 with x1 = δ_k, the bias-free
    probe branch, so no y1 − r cancellation), ``probe(flat, "rows")`` Fᵀ·δ for output impulses
    (eq. 6); ``run(items, kind, build)`` the same for any probes (compressed probing carries many
    impulses per probe, :mod:`precompute.compressed`). One call with K ≤ batch probes is one pass. On out-of-memory a pass is split in halves (and later
    passes pre-split to the size that worked); each split is counted in ``oom_splits``.
    """

    def __init__(self, li, device: torch.device, dtype: torch.dtype):
        self.li = li
        self.device, self.dtype = device, dtype
        self.in_shape = tuple(li.in_shape)
        self.out_shape = tuple(li.out_shape)
        self.oom_splits = 0
        self.max_k: int | None = None

    def _impulses(self, flat: list[int], shape: tuple[int, ...]) -> torch.Tensor:
        v = torch.zeros((len(flat), math.prod(shape)), dtype=self.dtype, device=self.device)
        v[torch.arange(len(flat), device=self.device), torch.as_tensor(flat, device=self.device)] = 1
        return v.view(len(flat), *shape)

    def _apply(self, v: torch.Tensor, kind: str) -> torch.Tensor:
        return self.li.apply(v) if kind == "columns" else self.li.apply_transpose(v)

    def probe(self, flat: list[int], kind: str) -> torch.Tensor:
        """F·δ (columns) or Fᵀ·δ (rows) for the impulses ``flat``: (K, *other_shape)."""
        shape = self.in_shape if kind == "columns" else self.out_shape
        return self.run(list(flat), kind, lambda part: self._impulses(part, shape))

    def apply(self, vectors: torch.Tensor, kind: str) -> torch.Tensor:
        """F·V (``kind="columns"``, vectors ``(K, *in_shape)``) or Fᵀ·U (``"rows"``, vectors
        ``(K, *out_shape)``) for dense vectors, with the same out-of-memory back-off (the SVD's
        blocks)."""
        return self.run(vectors, kind, lambda part: part)

    def run(self, items: list, kind: str, build: Callable[[list], torch.Tensor]) -> torch.Tensor:
        """F·v (``columns``) or Fᵀ·v (``rows``) for the probes ``build(items)`` — one pass, with
        out-of-memory back-off over ``items`` (single impulses or compressed probes)."""
        if self.max_k is not None and len(items) > self.max_k:
            self.oom_splits += 1
            k = self.max_k
            return torch.cat([self.run(items[s:s + k], kind, build)
                              for s in range(0, len(items), k)])
        try:
            return self._apply(build(items), kind)
        except Exception as e:
            if not is_oom(e):
                raise
        # Out of memory: the exception is gone, its frames released; retry in halves.
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        if len(items) == 1:
            raise UserError(
                f"out of memory with a single probe on {self.device}: the model is too large for "
                "this device at this image size (crop the image or use another device)"
            )
        half = (len(items) + 1) // 2
        self.max_k = half
        self.oom_splits += 1
        return torch.cat([self.run(items[:half], kind, build), self.run(items[half:], kind, build)])


def activation_bytes(module: torch.nn.Module, x0: torch.Tensor) -> int:
    """Bytes of all module outputs of one forward of x0 (what a probe keeps alive at most)."""
    total = 0

    def hook(_m, _inp, out):
        nonlocal total
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()

    leaves = [m for m in module.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            module(x0)
    finally:
        for h in handles:
            h.remove()
    return max(total, x0.numel() * x0.element_size())


def mem_available() -> int:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def choose_batch(engine: Engine, kind: str, per_tile: int, module=None, x0=None) -> int:
    """Probes per pass from free memory (batch: auto), at most one tile's probes.

    CUDA: measure the peak memory of passes of 1 and 2 probes, then fill 70 % of free memory.
    CPU: per-pass overhead dominates small images, so batches are large (≤ 64: beyond, the
    gain is within noise and page faults of huge buffers cost system time), bounded by a
    quarter of the available RAM at ~4× the activations of one forward per probe (the frozen
    branch, and for rows the saved activations of the backward pass).
    """
    if engine.device.type != "cuda":
        per_probe = 4 * activation_bytes(module, x0) if module is not None else 1 << 20
        k = int(0.25 * mem_available() // per_probe)
        return max(1, min(k, CPU_MAX_BATCH, per_tile))
    n = math.prod(engine.in_shape if kind == "columns" else engine.out_shape)
    peaks = []
    for k in (1, 2):
        torch.cuda.synchronize(engine.device)
        torch.cuda.reset_peak_memory_stats(engine.device)
        base = torch.cuda.memory_allocated(engine.device)
        engine.probe(list(range(min(k, n))), kind)
        torch.cuda.synchronize(engine.device)
        peaks.append(torch.cuda.max_memory_allocated(engine.device) - base)
    per_probe = max(peaks[1] - peaks[0], 1 << 20)
    fixed = max(peaks[0] - per_probe, 0)
    free, _ = torch.cuda.mem_get_info(engine.device)
    k = int((0.7 * free - fixed) // per_probe)
    return max(1, min(k, GPU_MAX_BATCH, per_tile))


