"""Memory a run will need, estimated before anything big is allocated, and refused with numbers.

The estimate runs the model once on x0 under PyTorch's ``FakeTensorMode``: every op computes
only shapes and dtypes (no data, no memory), and a dispatch mode tallies the bytes of each new
tensor (views and in-place results share memory and are not counted):

* ``peak``: the most bytes alive at once during one no-grad forward (tensors are freed when
  Python drops them, as in the real forward) — what ``f(x0)`` needs;
* ``total``: the bytes of every tensor the forward makes — what a backward pass keeps at most
  (autograd saves activations) and what the LinearScope keeps of the frozen branch at most.

A pass of K probes runs a batch of K + 1 (x0 and the probes, paper eq. 5): columns need about
``(K + 1)·peak + total``, rows (Fᵀ by one backward, eq. 6) about ``(K + 1)·total``. These are
estimates, meant to refuse what cannot fit (``scale: 1000`` on a 12×12 crop asks for gigabytes
per probe) rather than to predict exact use; ``batch: auto`` sizes passes more conservatively
(:func:`precompute.engine.choose_batch`).

``LINEARSCOPE_MEMORY_BYTES`` overrides the available memory (tests and planning for another
machine), as ``LINEARSCOPE_FREE_BYTES`` does for the disk.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils import _pytree
from torch.utils._python_dispatch import TorchDispatchMode

from precompute.errors import UserError


#: probes per pass of the run-time gate's column/row check (precompute/interpreter.py, m = 3)
GATE_PROBES = 3


@dataclass(frozen=True)
class Estimate:
    peak: int        # bytes alive at once in one forward (batch 1)
    total: int       # bytes of every tensor one forward makes (batch 1)
    output: int = 0  # bytes of f(x0)

    def columns_pass(self, k: int) -> int:
        """A forward pass of k probes under the scope: the batch of k + 1 twice at the peak (the
        scope's result and the tensor it is assembled into; measured on bicubic ×300, where
        outputs dominate: tests/test_received_round2.py), and the forward's tensors once."""
        return 2 * (k + 1) * self.peak + self.total

    def rows_pass(self, k: int) -> int:
        """A backward pass of k probes: the forward of k + 1 kept for autograd, the k
        output-sized impulses and the gradient of the batch slice (k + 1 outputs) — measured on
        bicubic ×300, where outputs dominate (tests/test_received_round2.py)."""
        return (k + 1) * (self.total + 2 * self.output)

    def whole_checks(self) -> int:
        """What every run does on the whole image, whatever its gate: f(x0), r and the reference
        f(x0) held, and one pass of x0 (F·x0 + r = f(x0), LinearInterpreter.check_whole)."""
        return 3 * self.output + self.columns_pass(1)

    def gate(self) -> int:
        """The run-time gate on the whole image (LinearInterpreter.check; a large image with a
        bounded support checks its rules on small crops instead, precompute/run_gate.py):
        f(x0), r and the reference f(x0) held throughout, then the larger of a pass of
        GATE_PROBES columns with two output-sized temporaries, and GATE_PROBES columns kept
        while rows are computed one at a time."""
        return 3 * self.output + max(self.columns_pass(GATE_PROBES) + 2 * self.output,
                                     GATE_PROBES * self.output + self.rows_pass(1))


class _Tally(TorchDispatchMode):
    """Counts the bytes of new (non-aliasing) tensors and how many are alive at once."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = self.total = 0

    def _free(self, n: int) -> None:
        self.live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(r.alias_info is not None for r in func._schema.returns):
            return out  # a view or an in-place result: no new memory
        for t in _pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                n = t.numel() * t.element_size()
                self.total += n
                self.live += n
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._free, n)
        return out


def estimate(module: torch.nn.Module, x0: torch.Tensor) -> Estimate | None:
    """Bytes of one forward of ``module`` on ``x0``, computed on fake tensors (no memory used).

    Returns None when the forward fails on fake tensors: data-dependent shapes, custom kernels,
    Python code that reads values, or an input the network cannot take. The real forward then
    decides (and reports the cause).
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    saved = _snapshot(module)
    try:
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            x = mode.from_tensor(x0)
            with _Tally() as tally, torch.no_grad():
                y = module(x)
                output = y.numel() * y.element_size() if isinstance(y, torch.Tensor) else 0
                del y
    except Exception:  # noqa: BLE001 — no estimate; the real forward reports real problems
        return None
    finally:
        _restore(module, saved)
    base = x0.numel() * x0.element_size()
    return Estimate(peak=tally.peak + base, total=tally.total + base, output=output)


def _snapshot(module: torch.nn.Module) -> list:
    """Every submodule's attributes (and its parameter, buffer and submodule tables) as they
    are: a forward on fake tensors may cache a fake tensor in the model (``if self.pos is None
    or self.pos.shape[2:] != (h, w): self.pos = ...``), which the real forward would then use."""
    tables = ("_parameters", "_buffers", "_modules")
    # (TorchScript modules run compiled code, which caches nothing in Python attributes)
    return [(m, dict(m.__dict__), {k: dict(m.__dict__[k]) for k in tables
                                   if isinstance(m.__dict__.get(k), dict)})
            for m in {id(m): m for m in module.modules()}.values()
            if not isinstance(m, torch.jit.ScriptModule)]


def _restore(module: torch.nn.Module, saved: list) -> None:
    """Put back what :func:`_snapshot` saw: attributes added by the forward are removed,
    replaced ones restored (the tables in place, as ``nn.Module`` holds them)."""
    for m, attrs, tables in saved:
        for k in [k for k in m.__dict__ if k not in attrs]:
            del m.__dict__[k]
        for k, v in attrs.items():
            if k in tables:
                v.clear()
                v.update(tables[k])
            m.__dict__[k] = v


def available(device: torch.device) -> int:
    """Free bytes for tensors on ``device``: free GPU memory, or the RAM this process may still
    take (MemAvailable, bounded by a cgroup limit when there is one)."""
    from precompute.environment import env_int

    env = env_int("LINEARSCOPE_MEMORY_BYTES")
    if env is not None:
        return env
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    from precompute.engine import mem_available

    free = mem_available()
    cgroup = Path("/sys/fs/cgroup")
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            free = min(free, int(limit) - int((cgroup / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return free


def check_gate(est: Estimate | None, *, what: str, device: torch.device) -> None:
    """Refuse (UserError with the numbers) a run-time gate on the whole image that cannot fit:
    f(x0), r and the reference held, columns and rows of GATE_PROBES probes, forward and
    backward (:meth:`Estimate.gate`). Called before the gate runs on the whole image."""
    from precompute.text import fmt_bytes as _fmt

    if est is None:
        return
    free = available(device)
    if est.gate() > free:
        raise UserError(
            f"{what} needs about {_fmt(est.gate())} of {_where(device)} memory for the identity "
            f"checks (f(x0), r, columns and rows of {GATE_PROBES} probes on the whole image), "
            + _too_little(free, device))


def _where(device: torch.device) -> str:
    return "GPU" if device.type == "cuda" else "CPU"


def _too_little(free: int, device: torch.device) -> str:
    from precompute.text import fmt_bytes

    return (f"but only {fmt_bytes(free)} is available on {device}; use a smaller image or crop, "
            "a smaller scale, or a device with more memory")


def check(est: Estimate | None, *, what: str, device: torch.device, rows: bool, columns: bool,
          batch: int | str) -> None:
    """Refuse (UserError with the numbers) a run whose forward, or whose smallest pass, cannot
    fit the memory available on ``device``; on the CPU also an explicit ``batch`` too large
    (there is no out-of-memory back-off there: the system would kill the process).

    ``what`` names the model and input for the message.
    """
    from precompute.text import fmt_bytes as _fmt

    if est is None:
        return
    e, peak = est, est.peak

    def need(k: int) -> int:
        return max(e.rows_pass(k) if rows else 0, e.columns_pass(k) if columns else 0, peak)

    free = available(device)
    # every run checks F·x0 + r = f(x0) on the whole image (a residual-only run too); the rest
    # of the gate is checked by check_gate once the run knows where it runs (crops or image)
    gate = e.whole_checks()
    if max(need(1), gate) > free:
        passes = " and a pass of one probe about " + _fmt(need(1)) if (rows or columns) else ""
        raise UserError(
            f"{what} needs about {_fmt(peak)} of {_where(device)} memory for one "
            f"forward{passes}, and about {_fmt(gate)} for the identity checks (f(x0), r and a "
            "pass of x0), " + _too_little(free, device))
    if device.type != "cuda" and batch != "auto" and need(int(batch)) > free:
        # the largest k with need(k) <= free, from the pass formulas of Estimate
        fits = min(free // (e.total + 2 * e.output) - 1 if rows else free,
                   (free - e.total) // (2 * e.peak) - 1 if columns else free)
        raise UserError(
            f"{what}: a pass of batch {batch} probes needs about {_fmt(need(int(batch)))} of "
            f"CPU memory but only {_fmt(free)} is available; use batch: auto or at most {fits}")
