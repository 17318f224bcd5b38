"""Executing the probe plan: batched passes on the device, a writer thread for the store.

For one (model, image) this module prepares x0, builds the linear interpreter (paper eq. 5),
creates the store, then sweeps the planned tiles of ``columns`` (forward passes of
[x0, δ_1 … δ_K], eq. 5) and ``rows`` (one backward pass gives K rows, eq. 6). The plan itself
(tiles, passes, windows) is :mod:`precompute.probes`; the batched engine here
(:class:`Engine`, F·V and Fᵀ·U with out-of-memory back-off) is what SVD and classifier analyses
reuse.

Compute never waits on disk: finished tiles go through a bounded queue to writer threads (zstd
releases the GIL). Progress is the set of shards on disk, so a run killed at any moment resumes
with the same command, repeating exactly the same passes (bitwise-identical results).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import math
import os
import platform
import queue
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from precompute import probes as P
from precompute import store as S
from precompute.config import VALUE_KEYS, Resolved, UserError

CPU_MAX_BATCH = 64
GPU_MAX_BATCH = 512


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Device, model and image.


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    d = torch.device(device)
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        d = torch.device("cuda", int(os.environ["LOCAL_RANK"]))  # torchrun: one GPU per process
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {device} requested but CUDA is not available here (use cpu or auto)")
        if (d.index or 0) >= torch.cuda.device_count():
            raise UserError(f"device {device} does not exist ({torch.cuda.device_count()} CUDA devices)")
    return d


def set_precision(device: torch.device, precision: str) -> None:
    """Exact float32 by default: PyTorch would otherwise run convolutions in TF32 on NVIDIA GPUs
    (~1e-3 relative error, performance notes).

    Also deterministic kernels on CUDA: a resumed store must equal an uninterrupted one bitwise,
    and some cuDNN/cuBLAS algorithms (atomic adds in backward passes) vary from run to run. Ops
    without a deterministic CUDA kernel only warn (``warn_only``).
    """
    if device.type == "cuda":
        mode = "ieee" if precision == "ieee" else "tf32"
        torch.backends.cudnn.conv.fp32_precision = mode
        torch.backends.cuda.matmul.fp32_precision = mode
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before the first cuBLAS call
        torch.use_deterministic_algorithms(True, warn_only=True)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return "cpu"


@dataclass
class Prepared:
    """Everything about (model, image) that the run and `verify` need."""

    spec: object
    prepared: object  # models.base.Prepared
    x0: torch.Tensor  # (1, C, H, W) on device, dtype
    device: torch.device
    dtype: torch.dtype
    model_attrs: dict
    image_attrs: dict


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def prepare(cfg: dict, base_dir: Path | None, device: torch.device,
            random_weights: bool = False) -> Prepared:
    """Load the model and the (cropped) image of a resolved config dict (as stored in a store).

    Every problem (unknown model, bad checkpoint, unreadable image, crop outside the image, a
    size or channel count the model cannot take) raises UserError before any work.
    """
    from PIL import Image

    from precompute.models import ModelError, load_model

    m = cfg["model"]
    dtype = torch.float64 if cfg["dtype"] == "float64" else torch.float32
    try:
        kw = {"random_weights": True} if random_weights else {}  # benchmarks only
        spec = load_model(m["arch"], scale=m.get("scale"), checkpoint=m.get("checkpoint"),
                          weights=m.get("weights"), base_dir=base_dir,
                          preprocess=m.get("preprocess", "auto"), **kw)
    except ModelError as e:
        raise UserError(str(e)) from None
    image_path = Path(cfg["image"])
    try:
        with Image.open(image_path) as im:
            im.load()
            image = im.copy()
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read image {image_path}: {_first_line(e)}") from None
    crop = cfg.get("crop")
    if crop is not None:
        top, left, h, w = crop
        if top + h > image.height or left + w > image.width:
            raise UserError(
                f"crop {list(crop)} ([top, left, height, width]) does not fit in {image_path.name}, "
                f"which is {image.height}×{image.width} (height×width)"
            )
        image = image.crop((left, top, left + w, top + h))
    try:
        spec.check_input_size(image.height, image.width)
    except ModelError as e:
        raise UserError(f"{image_path.name}: {e}") from None
    try:
        prepared = spec.prepare(image)
    except (ModelError, ValueError, OSError) as e:
        raise UserError(f"{spec.model_id} cannot prepare {image_path.name}: {_first_line(e)}") from None
    x0 = prepared.x0
    if x0.dim() != 4 or x0.shape[0] != 1 or x0.shape[1] != spec.in_channels:
        raise UserError(
            f"{spec.model_id} expects {spec.in_channels}-channel input, but {image_path.name} gave "
            f"an input of shape {tuple(x0.shape)}"
        )
    spec.module.to(device=device, dtype=dtype).eval()
    x0 = x0.to(device=device, dtype=dtype)
    model_attrs = {
        "id": spec.model_id,
        "arch": m["arch"],
        "scale": spec.scale,
        "checkpoint": m.get("checkpoint"),
        "checkpoint_sha256": getattr(spec, "checkpoint_sha256", None)
        or (sha256_file(Path(m["checkpoint"])) if m.get("checkpoint") else None),
        "kind": spec.kind,
        "labels": spec.labels,
        "description": spec.description,
    }
    image_attrs = {
        "path": str(image_path),
        "sha256": sha256_file(image_path),
        "crop": list(crop) if crop is not None else None,
        "size": [int(x0.shape[2]), int(x0.shape[3])],
    }
    return Prepared(spec, prepared, x0, device, dtype, model_attrs, image_attrs)


def forward_checked(prep: Prepared) -> torch.Tensor:
    """f(x0), turning a crash of the network on this input into one clear UserError."""
    try:
        with torch.no_grad():
            y = prep.spec.module(prep.x0)
    except torch.OutOfMemoryError:
        raise
    except Exception as e:  # noqa: BLE001 — any failure here means "this input does not fit"
        raise UserError(
            f"{prep.spec.model_id} cannot take this image (input shape {tuple(prep.x0.shape)}): "
            f"{_first_line(e)}"
        ) from None
    if not torch.isfinite(y).all():
        raise UserError(f"{prep.spec.model_id} produced NaN/Inf on this image; nothing was stored")
    return y


# ---------------------------------------------------------------------------------------------
# The batched engine.


def _is_oom(e: BaseException) -> bool:
    if isinstance(e, torch.OutOfMemoryError):
        return True
    return isinstance(e, RuntimeError) and (
        "out of memory" in str(e) or "can't allocate memory" in str(e)
    )


class Engine:
    """Batched probes of one linear interpreter with out-of-memory back-off.

    ``columns(flat)`` returns F·δ for input impulses (eq. 5 with x1 = δ_k, the bias-free probe
    branch, so no y1 − r cancellation), ``rows(flat)`` Fᵀ·δ for output impulses (eq. 6). One call
    with K ≤ batch probes is one pass. On out-of-memory a pass is split in halves (and later
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

    def _run(self, flat: list[int], kind: str) -> torch.Tensor:
        if kind == "columns":
            return self.li.apply(self._impulses(flat, self.in_shape))
        u = self._impulses(flat, self.out_shape)
        return self.li.apply_transpose(u)

    def probe(self, flat: list[int], kind: str) -> torch.Tensor:
        """F·δ (columns) or Fᵀ·δ (rows) for the impulses ``flat``: (K, *other_shape)."""
        if self.max_k is not None and len(flat) > self.max_k:
            self.oom_splits += 1
            k = self.max_k
            return torch.cat([self.probe(flat[s:s + k], kind) for s in range(0, len(flat), k)])
        try:
            return self._run(flat, kind)
        except Exception as e:
            if not _is_oom(e):
                raise
        # Out of memory: the exception is gone, its frames released; retry in halves.
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        if len(flat) == 1:
            raise UserError(
                f"out of memory with a single probe on {self.device}: the model is too large for "
                "this device at this image size (crop the image or use another device)"
            )
        half = (len(flat) + 1) // 2
        self.max_k = half
        self.oom_splits += 1
        return torch.cat([self.probe(flat[:half], kind), self.probe(flat[half:], kind)])


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


def _mem_available() -> int:
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
        k = int(0.25 * _mem_available() // per_probe)
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


# ---------------------------------------------------------------------------------------------
# Writer threads.


class Writer:
    """Writes finished tiles from a bounded queue, so compression and disk never stall the device.

    The queue holds at most ``depth`` tiles (bounded memory); ``put`` blocks only when the disk
    is slower than the device. A writer error is re-raised in the computing thread.
    """

    def __init__(self, group, threads: int, depth: int):
        self.group = group
        self.q: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self.error: BaseException | None = None
        self.written = 0
        self.seconds = 0.0
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(threads)]
        for t in self.threads:
            t.start()

    def _loop(self):
        while True:
            item = self.q.get()
            if item is None:
                return
            if self.error is not None:
                continue
            lay, tile, block, origin, outside = item
            t0 = time.perf_counter()
            try:
                S.write_tile(self.group, lay, tile, block, origin, outside)
            except BaseException as e:  # noqa: BLE001 — handed to the computing thread
                self.error = e
            with self._lock:
                self.written += 1
                self.seconds += time.perf_counter() - t0

    def put(self, item) -> None:
        self.raise_error()
        self.q.put(item)

    def raise_error(self):
        if self.error is None:
            return
        if isinstance(self.error, OSError):  # disk full, permissions, ...: the user can fix it
            raise UserError(f"writing the store failed: {self.error}; finished tiles are kept, "
                            "fix this and run the same command to continue") from None
        raise RuntimeError(f"writing the store failed: {self.error!r}") from self.error

    def close(self) -> None:
        """Finish every queued tile (nothing computed is lost), then stop."""
        for _ in self.threads:
            self.q.put(None)
        for t in self.threads:
            t.join()
        self.raise_error()


# ---------------------------------------------------------------------------------------------
# One analysis over its tiles.


def tile_arrays(engine: Engine, lay: S.Layout, tile: P.Tile, k: int, np_dtype,
                on_pass: Callable[[int], None] | None = None):
    """Compute one tile: its windows (cropped from full columns/rows), origins and outside
    fractions. Returns (block, origin, outside) shaped as the tile's region of the arrays."""
    c_probe, h, w = lay.probe_shape
    th, tw = tile.shape
    block = np.full((th, tw) + lay.chunk[2:], np.nan, dtype=np_dtype)
    origin = np.full((th, tw, 2), -1, dtype=np.int32)
    outside = np.full((th, tw, c_probe), np.nan, dtype=np_dtype)
    wh, ww = lay.window
    for group in P.passes(P.tile_probes(tile, c_probe, h, w, lay.selection), k):
        full = engine.probe([pr.flat for pr in group], lay.name)  # (K, C_other, H_o, W_o)
        if not torch.isfinite(full).all():
            bad = [(pr.c, pr.i, pr.j) for pr, ok in zip(group, torch.isfinite(full).flatten(1).all(1)) if not ok]
            raise UserError(
                f"the interpreter produced NaN/Inf for the {lay.name} of (channel, y, x) {bad[:3]}; "
                "nothing of this tile was stored"
            )
        # crop every window at once on the device (one gather, not K small kernels per probe)
        origins = [lay.origin(pr.i, pr.j) for pr in group]
        dev = full.device
        oy = torch.tensor([o[0] for o in origins], device=dev)
        ox = torch.tensor([o[1] for o in origins], device=dev)
        ky = oy[:, None] + torch.arange(wh, device=dev)  # (K, wh)
        kx = ox[:, None] + torch.arange(ww, device=dev)  # (K, ww)
        k_idx = torch.arange(len(group), device=dev)[:, None, None, None]
        c_idx = torch.arange(full.shape[1], device=dev)[None, :, None, None]
        crops_np = full[k_idx, c_idx, ky[:, None, :, None], kx[:, None, None, :]].cpu().numpy()
        # squared norm outside the window, summed directly (not total − inside), so that it is
        # exactly 0 when nothing lies outside
        ys = torch.arange(full.shape[2], device=dev)[None]
        xs = torch.arange(full.shape[3], device=dev)[None]
        in_y = (ys >= oy[:, None]) & (ys < oy[:, None] + wh)  # (K, H_o)
        in_x = (xs >= ox[:, None]) & (xs < ox[:, None] + ww)  # (K, W_o)
        sq = full.square()
        total = sq.sum(dim=(1, 2, 3))
        out_sq = sq.masked_fill((in_y[:, :, None] & in_x[:, None, :])[:, None], 0).sum(dim=(1, 2, 3))
        frac = torch.where(total > 0, out_sq / torch.where(total > 0, total, 1), 0).cpu().numpy()
        for n, pr in enumerate(group):
            y, x = pr.i - tile.y0, pr.j - tile.x0
            block[y, x, pr.c] = crops_np[n]
            outside[y, x, pr.c] = frac[n]
            origin[y, x] = origins[n]
        if on_pass is not None:
            on_pass(len(group))
    return block, origin, outside


# ---------------------------------------------------------------------------------------------
# The run.


@dataclass
class Options:
    overwrite: bool = False
    dry_run: bool = False
    shard: tuple[int, int] = (0, 1)
    quiet: bool = False
    writer_threads: int = 2


@dataclass
class Plan:
    path: Path
    layouts: list[S.Layout]
    batches: dict[str, int]
    todo: dict[str, list[P.Tile]]
    planned: dict[str, list[P.Tile]]
    bytes_todo: int
    exists: bool
    probes_todo: dict[str, int] = field(default_factory=dict)
    passes_todo: dict[str, int] = field(default_factory=dict)


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _fmt_time(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def versions() -> dict:
    """Package versions (from metadata: importing torchvision just for its version takes seconds)."""
    from importlib.metadata import PackageNotFoundError, version

    import precompute

    def v(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": v("torchvision"), "zarr": v("zarr"), "numpy": np.__version__,
            "linearscope": precompute.__version__}


@contextlib.contextmanager
def store_lock(path: Path):
    """Serialise store creation and metadata updates between processes (``--shard``).

    An flock is released by the kernel when its holder dies, so a SIGKILL never leaves the store
    locked.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path.with_name(f".{path.name}.lock"), "a+")
    except OSError as e:
        raise UserError(f"cannot write to the output directory {path.parent}: {e.strerror}") from None
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _value_diff(stored: dict, now: dict) -> list[str]:
    return [k for k in VALUE_KEYS if stored.get(k) != now.get(k)]


def _mismatch(attrs: dict, cfg: dict, prep: Prepared) -> list[str]:
    """Value-affecting differences between a store and the config now (batch, device and output
    may change between runs)."""
    diff = _value_diff(attrs.get("config", {}), cfg)
    if attrs.get("image", {}).get("sha256") != prep.image_attrs["sha256"]:
        diff.append("image (file contents)")
    if attrs.get("model", {}).get("checkpoint_sha256") != prep.model_attrs["checkpoint_sha256"]:
        diff.append("model.checkpoint (file contents)")
    return diff


def _existing_attrs(path: Path) -> dict | None:
    """Attributes of a finished store at ``path``; None if there is none (or an interrupted
    creation); UserError if the directory is something else."""
    if not path.exists():
        return None
    if not (path / "zarr.json").is_file():
        if any(path.iterdir()):
            raise UserError(f"{path} exists and is not a LinearScope store; choose another name/output")
        return None
    import zarr

    attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    if "format_version" not in attrs:
        if attrs.get(S.CREATING):
            return None  # our creation was interrupted before the attributes: nothing computed
        raise UserError(f"{path} is a Zarr group but not a LinearScope store; choose another "
                        "name/output (it is never deleted)")
    if attrs["format_version"] > S.FORMAT_VERSION:
        raise UserError(
            f"{path} has format_version {attrs['format_version']}, newer than this LinearScope "
            f"writes ({S.FORMAT_VERSION}); upgrade linearscope or choose another name"
        )
    return attrs


def _check_writable(directory: Path) -> None:
    """Refuse early (before any work, without creating anything) an output we cannot write."""
    p = directory
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir() or not os.access(p, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to the output directory {directory}: "
                        f"{p} is {'not a directory' if not p.is_dir() else 'not writable'}")


def run_image(res: Resolved, image: Path, opts: Options) -> str:
    """Plan, create or resume, and sweep one store. Returns a one-line summary."""
    cfg = res.as_dict(image)
    c = res.config
    path = res.store_path(image)
    shard_i, shard_n = opts.shard
    _check_writable(path.parent)
    device = resolve_device(c.device)
    set_precision(device, c.precision)
    prep = prepare(cfg, res.config_path.parent, device)
    y0 = forward_checked(prep)
    spec = prep.spec
    vector = spec.kind != "image"
    np_dtype = np.dtype(c.dtype)

    # ---- layouts and validation (before any work) -----------------------------------------
    a = c.analyses
    if vector and (a.columns is not None or a.rows is not None):
        raise UserError(
            f"{spec.model_id} is a vector model (classifier): columns/rows of image layout do not "
            "apply; set `analyses: {residual: true, columns: false, rows: false}` (classifier "
            "analyses come later)"
        )
    in_shape = tuple(prep.x0.shape[1:])
    out_shape = tuple(y0.shape[1:])
    scale, offset = (spec.scale, spec.offset) if not vector else (None, None)
    layouts: list[S.Layout] = []
    for name, acfg in (("columns", a.columns), ("rows", a.rows)):
        if acfg is None:
            continue
        probe_shape = in_shape if name == "columns" else out_shape
        if acfg.pixels is not None:
            sel = P.Selection(acfg.pixels.region, acfg.pixels.stride)
            where = f"analyses.{name}.pixels"
        else:
            sel = P.Selection(c.pixels.region, c.pixels.stride)
            if name == "rows":
                sel = P.scaled_selection(sel, scale)
            where = "pixels"
        if sel.region is not None:
            top, left, h, w = sel.region
            H, W = probe_shape[1:]
            if top + h > H or left + w > W:
                unit = "input" if name == "columns" else "output"
                raise UserError(
                    f"`{where}` region {list(sel.region)} ([top, left, height, width]) leaves the "
                    f"{unit} image of {H}×{W} pixels (used for {name})"
                )
        lay = S.make_layout(name, acfg.window, acfg.tile, sel, in_shape, out_shape, scale, offset,
                            np_dtype.itemsize)
        layouts.append(lay)

    # ---- existing store? ---------------------------------------------------------------------
    attrs = _existing_attrs(path)
    if attrs is not None:
        diff = _mismatch(attrs, cfg, prep)
        if diff and not opts.overwrite:
            raise UserError(
                f"{path} was made with a different {', '.join(diff)}; resuming would mix two "
                "interpreters. Use --overwrite to start it again, or give the run another name"
            )
        if diff:
            attrs = None  # will be overwritten
    exists = attrs is not None

    # ---- batch sizes -------------------------------------------------------------------------
    li = None
    batches: dict[str, int] = {}
    engine = None

    def get_engine(k: int) -> Engine:
        nonlocal li, engine
        if engine is None:
            from precompute.interpreter import LinearInterpreter

            li = LinearInterpreter(spec.module, prep.x0, rule=c.interpreter, batch=k,
                                   exact=c.precision == "ieee")
            engine = Engine(li, device, prep.dtype)
        return engine

    for lay in layouts:
        per_tile = lay.tile * lay.tile * lay.probe_shape[0]
        stored = (attrs or {}).get("analyses", {}).get(lay.name, {}).get("batch")
        if c.batch != "auto":
            batches[lay.name] = int(c.batch)
            if stored is not None and stored != c.batch:
                _say(f"note: batch {c.batch} differs from the store's {stored}: tiles computed now "
                     "may differ from an uninterrupted run in the last bits (different passes)")
        elif stored is not None:
            batches[lay.name] = int(stored)  # same passes as before: bitwise-identical resume
        else:
            batches[lay.name] = choose_batch(get_engine(GPU_MAX_BATCH), lay.name, per_tile,
                                             spec.module, prep.x0)
    k_max = max(batches.values(), default=1)

    # ---- plan ----------------------------------------------------------------------------------
    planned = {lay.name: lay.tiles() for lay in layouts}
    mine = {n: P.share(t, shard_i, shard_n) for n, t in planned.items()}
    todo = {}
    for lay in layouts:
        if exists:
            import zarr

            g = zarr.open_group(str(path), mode="r")
            todo[lay.name] = [t for t in mine[lay.name] if not S.tile_done(path, g, lay, t)]
        else:
            todo[lay.name] = list(mine[lay.name])
    bytes_todo = 0
    probes_todo, passes_todo = {}, {}
    for lay in layouts:
        bpp = lay.bytes_per_pixel(np_dtype.itemsize) + (2 * 4 + lay.probe_shape[0] * np_dtype.itemsize)
        npr = nps = 0
        for t in todo[lay.name]:
            th, tw = t.shape
            bytes_todo += th * tw * bpp
            pr = P.tile_probes(t, lay.probe_shape[0], lay.probe_shape[1], lay.probe_shape[2], lay.selection)
            npr += len(pr)
            nps += -(-len(pr) // batches[lay.name])
        probes_todo[lay.name], passes_todo[lay.name] = npr, nps
    if not exists:
        bytes_todo += (2 * math.prod(out_shape) + math.prod(in_shape)) * np_dtype.itemsize
    free = S.free_disk_bytes(path.parent)
    if bytes_todo > free:
        raise UserError(
            f"the plan needs {_fmt_bytes(bytes_todo)} (before compression) but only "
            f"{_fmt_bytes(free)} is free at {path.parent}; use smaller windows, a pixel region or "
            "stride, or free some space"
        )

    # ---- timing estimate: one pass of each analysis ------------------------------------------
    est = {}
    for lay in layouts:
        if not todo[lay.name]:
            continue
        eng = get_engine(k_max)
        first = P.passes(P.tile_probes(todo[lay.name][0], *lay.probe_shape, lay.selection),
                         batches[lay.name])[0]
        flat = [pr.flat for pr in first]
        eng.probe(flat, lay.name)  # warm-up (kernel selection, allocator)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        eng.probe(flat, lay.name)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        est[lay.name] = (time.perf_counter() - t0) * passes_todo[lay.name]

    mode = ("resuming" if exists else ("overwriting" if path.exists() and opts.overwrite else "creating"))
    lines = [
        f"{mode} {path}: {spec.model_id} on {image.name}"
        + (f" crop {cfg['crop']}" if cfg.get("crop") else "")
        + f", x0 {'×'.join(map(str, in_shape))} → f(x0) {'×'.join(map(str, out_shape))},"
        + f" {c.interpreter} interpreter, {c.dtype} on {describe_device(device)}"
        + (f", shard {shard_i}/{shard_n}" if shard_n > 1 else "") + "."
    ]
    for lay in layouts:
        n_pl = len(planned[lay.name])
        lines.append(
            f"{lay.name}: window {lay.window[0]}×{lay.window[1]}{' (full)' if lay.full else ''}, "
            f"{len(todo[lay.name])} of {n_pl} tiles of {lay.tile}×{lay.tile} px to do"
            + (f" (this process's share: {len(mine[lay.name])})" if shard_n > 1 else "")
            + f", {probes_todo[lay.name]} probes in {passes_todo[lay.name]} passes of ≤ "
            f"{batches[lay.name]}"
            + (f", about {_fmt_time(est[lay.name])}" if lay.name in est else "") + "."
        )
    total_est = sum(est.values())
    lines.append(
        f"To write: {_fmt_bytes(bytes_todo)} before compression ({_fmt_bytes(free)} free); "
        f"estimated compute time {_fmt_time(total_est)}."
    )
    if not opts.quiet or opts.dry_run:
        _say(" ".join(lines))
    if opts.dry_run:
        return f"{path}: dry run, nothing written"
    if exists and all(not t for t in todo.values()):
        return f"{path}: already done (all planned tiles{' of this shard' if shard_n > 1 else ''} are on disk)"

    # ---- create (or adopt) the store under the lock ------------------------------------------
    eng = get_engine(k_max)
    timings: dict[str, float] = {}
    import zarr

    with store_lock(path):
        attrs_now = _existing_attrs(path)
        if attrs_now is not None and _mismatch(attrs_now, cfg, prep):
            if not opts.overwrite:
                raise UserError(f"{path} was just created by another process with a different config")
            attrs_now = None
        if attrs_now is None:
            if path.exists():
                shutil.rmtree(path)
            t0 = time.perf_counter()
            residual = li.residual.detach().reshape(out_shape)
            output = y0[0].detach()
            if not (torch.isfinite(residual).all() and torch.isfinite(output).all()):
                raise UserError(f"{spec.model_id} produced NaN/Inf in f(x0) or r(x0); nothing was stored")
            try:
                checks = {k: float(v) for k, v in li.check(seed=0).items()}
            except Exception as e:  # noqa: BLE001 — a failed check must not hide the cause
                raise UserError(f"the interpreter's self-check failed: {_first_line(e)}") from None
            timings["residual"] = time.perf_counter() - t0
            disp_out = None if vector else spec.display_output(y0.detach().cpu().float(), prep.prepared)
            new_attrs = {
                "format_version": S.FORMAT_VERSION,
                "name": path.name.removesuffix(".zarr"),
                "config": cfg,
                "model": prep.model_attrs,
                "image": prep.image_attrs,
                "interpreter": c.interpreter,
                "dtype": c.dtype,
                "geometry": None if vector else {"scale": float(scale), "offset": float(offset)},
                "checks": checks,
                "analyses": ({"residual": True} if a.residual else {})
                | {lay.name: lay.attrs(batches[lay.name]) for lay in layouts},
                "timings": {"residual": timings["residual"], "columns": 0.0, "rows": 0.0},
                "versions": versions(),
                "device": describe_device(device),
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "oom_splits": 0,
            }
            S.create_store(
                path, attrs=new_attrs, dtype=c.dtype,
                input=prep.x0[0].detach().cpu().numpy(), output=output.cpu().numpy(),
                residual=residual.cpu().numpy() if a.residual else None,
                display_input=spec.display_input(prep.prepared), display_output=disp_out,
                layouts=layouts,
            )
        # whoever created it, recount this process's tiles from disk now that we hold the lock
        g = zarr.open_group(str(path), mode="r")
        if c.batch == "auto":
            # another --shard process may have created the store: use its batch, so every tile
            # is computed with the same passes as in a single-process run
            for lay in layouts:
                batches[lay.name] = int(g.attrs["analyses"][lay.name].get("batch", batches[lay.name]))
        todo = {lay.name: [t for t in mine[lay.name] if not S.tile_done(path, g, lay, t)]
                for lay in layouts}
        owned = {(n, t.ty, t.tx) for n in todo for t in mine[n]}
        removed = S.remove_partials(path, [lay.name for lay in layouts],
                                    owned if shard_n > 1 else None, root=shard_i == 0)
        if removed and not opts.quiet:
            _say(f"removed {removed} partial file(s) left by a killed run")

    # ---- sweep ---------------------------------------------------------------------------------
    from tqdm import tqdm

    group = zarr.open_group(str(path), mode="r+")
    for lay in layouts:
        if not todo[lay.name]:
            continue
        tile_bytes = lay.tile * lay.tile * lay.bytes_per_pixel(np_dtype.itemsize)
        depth = int(max(1, min(8, (1 << 30) // max(tile_bytes, 1))))
        writer = Writer(group, opts.writer_threads, depth)
        bar = tqdm(total=probes_todo[lay.name], desc=lay.name, unit="probe", dynamic_ncols=True,
                   disable=opts.quiet, smoothing=0.1)
        t0 = time.perf_counter()
        try:
            for tile in todo[lay.name]:
                block, origin, outside = tile_arrays(eng, lay, tile, batches[lay.name], np_dtype,
                                                     bar.update)
                writer.put((lay, tile, block, origin, outside))
        finally:
            bar.close()
            writer.close()  # finish queued tiles even on Ctrl-C: nothing computed is lost
        timings[lay.name] = time.perf_counter() - t0

    # ---- metadata: one process at a time -------------------------------------------------------
    with store_lock(path):
        g = zarr.open_group(str(path), mode="r+")
        t_old = dict(g.attrs.get("timings", {}))
        for k, v in timings.items():
            if k != "residual":
                t_old[k] = float(t_old.get(k, 0.0)) + v
        g.attrs.update({"timings": t_old, "device": describe_device(device),
                        "oom_splits": int(g.attrs.get("oom_splits", 0)) + eng.oom_splits})
    if eng.oom_splits:
        _say(f"note: {eng.oom_splits} pass(es) were split after running out of memory (attr oom_splits)")
    done = sum(len(todo[n]) for n in todo)
    return f"{path}: done ({done} tile(s) written{' by this shard' if shard_n > 1 else ''})"


def parse_shard(text: str | None) -> tuple[int, int]:
    """``I/N`` from --shard, else RANK/WORLD_SIZE (torchrun), else 0/1."""
    if text is None:
        ws = int(os.environ.get("WORLD_SIZE", "1"))
        return (int(os.environ.get("RANK", "0")), ws) if ws > 1 else (0, 1)
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UserError(f"--shard: expected I/N such as 0/2, got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise UserError(f"--shard: expected 0 ≤ I < N, got {text!r}")
    return (i, n)


def run(config_path: str, opts: Options) -> list[str]:
    from precompute.config import load_config

    res = load_config(config_path)
    return [run_image(res, image, opts) for image in res.images]


def verify_store(path: str, samples: int = 8, seed: int = 0, device: str = "auto") -> tuple[str, bool]:
    """Recompute ``samples`` random stored columns and rows (all their channels) from the model
    and image recorded in the store; report the maximum differences. Returns (text, ok)."""
    from precompute.interpreter import LinearInterpreter

    st = S.open_store(path)
    cfg = st.attrs["config"]
    dev = resolve_device(device)
    set_precision(dev, cfg.get("precision", "ieee"))
    prep = prepare(cfg, None, dev)
    lines = []
    x_diff = float(np.abs(prep.x0[0].cpu().numpy() - st.array("input")).max())
    lines.append(f"input x0: max |rebuilt − stored| = {x_diff:.3g}"
                 + ("" if x_diff == 0 else "  (the image or preprocessing changed!)"))
    k = max(int(a.get("batch", 16)) for a in st.attrs["analyses"].values() if isinstance(a, dict)) \
        if st.layouts else 16
    li = LinearInterpreter(prep.spec.module, prep.x0, rule=st.attrs["interpreter"], batch=k,
                           exact=cfg.get("precision", "ieee") == "ieee")
    eng = Engine(li, dev, prep.dtype)
    if "residual" in st.group:
        r = li.residual.detach().reshape(st.out_shape).cpu().numpy()
        lines.append(f"residual: max |recomputed − stored| = {np.abs(r - st.array('residual')).max():.3g}")
    tol = 1e-9 if st.dtype == np.float64 else 1e-4
    ok = x_diff == 0
    rng = np.random.default_rng(seed)
    for name, lay in st.layouts.items():
        org = st.group[f"{name}_origin"][...]
        done = np.argwhere(org[..., 0] >= 0)
        if len(done) == 0:
            lines.append(f"{name}: nothing computed yet")
            continue
        pick = done[rng.choice(len(done), size=min(samples, len(done)), replace=False)]
        c_probe, h, w = lay.probe_shape
        worst = worst_rel = worst_out = 0.0
        for i, j in pick:
            flat = [(c * h + int(i)) * w + int(j) for c in range(c_probe)]
            full = eng.probe(flat, name).detach().cpu().numpy()
            oy, ox = lay.origin(int(i), int(j))
            if (oy, ox) != tuple(org[i, j]):
                lines.append(f"{name} ({i}, {j}): stored origin {tuple(org[i, j])} ≠ rule {(oy, ox)}")
                ok = False
            got = full[:, :, oy:oy + lay.window[0], ox:ox + lay.window[1]]
            want = st.group[name][int(i), int(j)]
            d = float(np.abs(got - want).max())
            scale = float(np.abs(want).max()) or 1.0
            worst, worst_rel = max(worst, d), max(worst_rel, d / scale)
            total = np.square(full, dtype=np.float64).sum(axis=(1, 2, 3))
            inside = np.square(got, dtype=np.float64).sum(axis=(1, 2, 3))
            frac = np.where(total > 0, 1 - inside / np.where(total > 0, total, 1), 0)
            worst_out = max(worst_out, float(np.abs(frac - st.outside(name, int(i), int(j))).max()))
        good = worst_rel <= tol and worst_out <= max(tol, 1e-6)
        ok &= good
        lines.append(f"{name}: {len(pick)} pixels × {c_probe} channels recomputed, max |Δ| = "
                     f"{worst:.3g} (relative {worst_rel:.3g}, tolerance {tol:g}), outside "
                     f"fraction max |Δ| = {worst_out:.2g} " + ("OK" if good else "MISMATCH"))
    lines.append("verify: " + ("OK" if ok else "FAILED"))
    return "\n".join(lines), ok
