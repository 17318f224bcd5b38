"""Five ways to compute the columns and rows of F, side by side: one command, one process, one table.

    python benchmarks/bench_methods.py                          # shipped PixelShuffle ×3, 64² 128² 256²
    python benchmarks/bench_methods.py --model edsr-baseline --size 32 --sample 4
    python benchmarks/bench_methods.py --size 24 --sample 4 --no-run   # a quick check

On the same model, image (``examples/images/astronaut-144.png`` resized to SIZE×SIZE), device and
dtype, for every size:

1. **paper**: the paper's method, one ``[x0, δ]`` per pass (columns ``y1 − r`` with the
   constants on, rows one backward per probe), timed on a sample, extrapolated per filter;
2. **DFV**: record every ReLU mask of x0 in one pass, then replay the masked linear network per
   probe (one probe per pass, rows by a backward of the replay); its memory is the activations it
   stores, as the paper's Table 1 counts them (and the masks as bits);
3. **torch.func**: ``vmap`` over ``jvp`` (columns) and over ``vjp`` (rows) of the plain model,
   chunked (for ReLU networks the Jacobian is F);
4. **batched**: LinearScope, one impulse per probe, K probes per pass (``probing: single``);
5. **compressed**: LinearScope with compressed probing, every column and every row of the image
   (rows read out of columns), including the structural support analysis.

Each row of the table: filters/s for columns and rows, peak memory over the process's baseline
(RSS sampled every 5 ms on CPU, ``max_memory_allocated`` on CUDA), and the maximum error on a
sample of filters against a float64 torch.func oracle (relative to the oracle's largest entry;
method 5 over the stored windows). Then, unless ``--no-run``, **`precompute run`** of the same
image (columns window 36, rows window 12 for the PixelShuffle; all columns and rows, writing
included) and its ratio to the time methods 1 and 3 would need for the same filters — the
targets of issue 11 (≥ 100× the paper's method, ≥ 10× torch.func at 128²). ``--profile`` adds
where the compressed method spends its time (torch profiler, top ops; decode vs passes).

Timings are only meaningful on a quiet machine; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.overrides import TorchFunctionMode

from precompute import compressed as Cm
from precompute import probes as P
from precompute import layout as L
from precompute.engine import CPU_MAX_BATCH, Engine
from precompute.interpreter import LinearInterpreter
from precompute.models import load_model
from precompute.support import analyse, cross_check
from timing import cpu_model

REPO = Path(__file__).resolve().parents[1]
IMAGE = REPO / "examples" / "images" / "astronaut-144.png"
SHIPPED = REPO / "examples" / "weights" / "pixelshuffle_x3.pt"
#: (columns window, rows window) of a run, per model (examples/pixelshuffle.yaml, benchmarks/)
WINDOWS = {"pixelshuffle": (36, 12), "edsr-baseline": (48, 16)}


# --- measuring ----------------------------------------------------------------------------------


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Peak:
    """Peak memory of a block of code above the memory in use when it starts."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0

    def __enter__(self):
        import gc

        gc.collect()
        try:  # give freed heap back to the system, so the next method's growth shows in RSS
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return self
        self.base, self.top, self.stop = _rss(), _rss(), False

        def sample():
            while not self.stop:
                self.top = max(self.top, _rss())
                time.sleep(0.005)

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            self.stop = True
            self.thread.join()
            self.peak = max(self.top, _rss()) - self.base


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - t0


def mb(n: float) -> str:
    return f"{n / 1e6:,.0f} MB" if n >= 1e6 else f"{n / 1e3:,.0f} KB"


# --- the inputs -----------------------------------------------------------------------------------


def load(model: str, size: int, device, dtype):
    """(spec, x0) for ``model`` on the example image resized to size×size, and the PNG used."""
    if model == "pixelshuffle":
        spec = load_model("pixelshuffle", checkpoint=SHIPPED)
    else:
        spec = load_model(model, scale=4, random_weights=True)
    img = Image.open(IMAGE).convert("RGB").resize((size, size), Image.BICUBIC)
    png = Path(tempfile.mkdtemp(prefix="bench-methods-")) / f"img{size}.png"
    img.save(png)
    x0 = spec.prepare(img).x0.to(device, dtype)
    spec.module.to(device, dtype).eval()
    return spec, x0, png


def sample_indices(n: int, m: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(n, size=min(m, n), replace=False))


def oracle(spec, x0, cols, rows):
    """float64 columns and rows of the Jacobian at x0 (CPU), by jvp and vjp."""
    net = spec.module
    dev, dt = x0.device, x0.dtype
    net.to("cpu", torch.float64)
    x = x0.detach().to("cpu", torch.float64)
    eye = lambda n, k: torch.zeros(n, dtype=torch.float64).index_fill_(0, torch.tensor([k]), 1)  # noqa: E731
    c = torch.stack([torch.func.jvp(net, (x,), (eye(x.numel(), k).view_as(x),))[1][0] for k in cols])
    y, pull = torch.func.vjp(net, x)
    r = torch.stack([pull(eye(y.numel(), k).view_as(y))[0][0] for k in rows])
    net.to(dev, dt)
    return c.detach(), r.detach()


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    got = got.detach().cpu().double()
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-300))


# --- the methods ----------------------------------------------------------------------------------


def impulses(idx, shape, dtype, device):
    v = torch.zeros((len(idx), math.prod(shape)), dtype=dtype, device=device)
    v[torch.arange(len(idx)), torch.as_tensor(idx)] = 1
    return v.view(len(idx), *shape)


def paper(spec, x0, cols, rows, device):
    """One [x0, δ] per pass: columns y1 − r with the constants on (eq. 5), rows one backward."""
    li = LinearInterpreter(spec.module, x0, batch=1)
    r = li.residual
    c, tc = timed(lambda: torch.cat([li.affine(impulses([k], li.in_shape, x0.dtype, device)) - r
                                     for k in cols]), device)
    w, tr = timed(lambda: torch.cat([li.apply_transpose(impulses([k], li.out_shape, x0.dtype, device))
                                     for k in rows]), device)
    return c, tc, w, tr, {}


class _DFVMode(TorchFunctionMode):
    """Record (x0) or replay (probes) the ReLU masks of a network, biases off on replay."""

    RELU = {F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_}
    BIASED = {F.conv2d, F.conv_transpose2d, F.linear}

    def __init__(self, masks: list, record: bool):
        super().__init__()
        self.masks, self.record, self.k, self.stored = masks, record, 0, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.RELU:
            x = args[0]
            if self.record:
                self.masks.append(x.detach() > 0)
                self.stored += x.numel() * 4  # DFV stores the activation (float32), Table 1
                return func(*args, **kwargs)
            m = self.masks[self.k]
            self.k += 1
            return x * m
        if not self.record and func in self.BIASED:
            a = list(args)
            if len(a) > 2:
                a[2] = None
            kwargs = {k: v for k, v in kwargs.items() if k != "bias"}
            return func(*a, **kwargs)
        return func(*args, **kwargs)


def dfv(spec, x0, cols, rows, device):
    """DFV: record every mask in one pass, replay the masked linear network per probe."""
    masks: list = []
    rec = _DFVMode(masks, record=True)
    with torch.no_grad(), rec:
        spec.module(x0)
    bits = sum(m.numel() for m in masks) / 8

    def replay(v):
        mode = _DFVMode(masks, record=False)
        with mode:
            return spec.module(v)

    def columns():
        with torch.no_grad():
            return torch.cat([replay(impulses([k], x0.shape[1:], x0.dtype, device)) for k in cols])

    def rows_():
        out = []
        for k in rows:
            v = torch.zeros_like(x0, requires_grad=True)
            y = replay(v)
            u = impulses([k], y.shape[1:], x0.dtype, device)
            out.append(torch.autograd.grad(y, v, u)[0])
        return torch.cat(out)

    c, tc = timed(columns, device)
    w, tr = timed(rows_, device)
    return c, tc, w, tr, {"stored": rec.stored, "bits": bits}


def func(spec, x0, cols, rows, device, chunk):
    """torch.func: vmap over jvp (columns) and over vjp (rows), in chunks."""
    net = spec.module
    x = x0.detach()

    def columns():
        f = torch.func.vmap(lambda t: torch.func.jvp(net, (x,), (t,))[1])
        return torch.cat([f(impulses(cols[s:s + chunk], x.shape, x.dtype, device))[:, 0]
                          for s in range(0, len(cols), chunk)])

    def rows_():
        y, pull = torch.func.vjp(net, x)
        f = torch.func.vmap(lambda u: pull(u)[0])
        return torch.cat([f(impulses(rows[s:s + chunk], y.shape, x.dtype, device))[:, 0]
                          for s in range(0, len(rows), chunk)])

    with torch.no_grad():
        c, tc = timed(columns, device)
    w, tr = timed(rows_, device)
    return c, tc, w, tr, {}


def batched(spec, x0, cols, rows, device, k):
    """LinearScope, one impulse per probe, k probes per pass."""
    li = LinearInterpreter(spec.module, x0, batch=k)
    eng = Engine(li, device, x0.dtype)
    c, tc = timed(lambda: torch.cat([eng.probe(cols[s:s + k], "columns")
                                     for s in range(0, len(cols), k)]), device)
    w, tr = timed(lambda: torch.cat([eng.probe(rows[s:s + k], "rows")
                                     for s in range(0, len(rows), k)]), device)
    return c, tc, w, tr, {}


def compressed(spec, x0, device, k, windows, cols, rows):
    """Every column and row of the image with compressed probing, through the code `precompute
    run` uses (support analysis and its cross-check, method choice, blocks, shared passes when a
    columns block and a rows block have the same probes, decoding into stored windows, no
    writing); returns the sampled filters' windows, times and a breakdown."""
    li = LinearInterpreter(spec.module, x0, batch=k)
    eng = Engine(li, device, x0.dtype)
    in_shape, out_shape = tuple(li.in_shape), tuple(li.out_shape)
    eps = 1e-12 if x0.dtype == torch.float64 else 1e-5
    (sup, t_sup) = timed(lambda: cross_check(
        analyse(spec.module, in_shape, x0.dtype, device, batch=16),
        lambda flat: eng.probe(flat, "columns"), in_shape, eps,
        lambda flat: eng.probe(flat, "rows"), out_shape), device)
    itemsize = torch.finfo(x0.dtype).bits // 8
    np_dtype = np.dtype(str(x0.dtype).split(".")[1])
    budget = int(min(1 << 30, _rss_avail() // 4))
    out = {"support": sup, "t_support": t_sup, "stats": {}, "plans": {}, "t": {}}
    samples = {"columns": set(cols), "rows": set(rows)}
    got = {"columns": {}, "rows": {}}
    units = []  # (probes or None, targets)
    for name, win in (("columns", windows[0]), ("rows", windows[1])):
        lay = L.make_layout(name, win, "auto", P.Selection(), in_shape, out_shape, spec.scale,
                            spec.offset, itemsize)
        plan, _ = Cm.choose(lay, sup, itemsize, budget)
        out["plans"][name], out[f"lay_{name}"] = plan, lay
        if plan.method == "single":
            continue  # one impulse per probe: method 4's rate (not run again over the image)
        geo = Cm.geometry(lay, sup, plan)
        for b in P.blocks(lay.tiles(), plan.block):
            probes = Cm.block_probes(lay, plan, sup, b)
            target = Cm.Target(lay, plan, geo, b)
            shared = next((u for u in units if u[0] == probes and plan.method == "from_columns"),
                          None)
            if shared is not None:  # the same passes as a columns block: decoded together
                shared[1].append(target)
            else:
                units.append((probes, [target]))
    for probes, targets in units:
        t0 = time.perf_counter()
        stats = out["stats"].setdefault("+".join(t.lay.name for t in targets), {})
        Cm.run_probes(eng, sup, probes, targets, k, np_dtype, stats=stats)
        for t in targets:
            _keep(got[t.lay.name], samples[t.lay.name], t.lay, t.block.y0, t.block.y1,
                  t.block.x0, t.block.x1, t.buf.values)
            t.buf = None
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        key = "+".join(dict.fromkeys(t.lay.name for t in targets))
        out["t"][key] = out["t"].get(key, 0.0) + time.perf_counter() - t0
    out["got"] = got
    return out


def _rss_avail() -> int:
    from precompute.engine import mem_available

    return mem_available()


def _keep(store: dict, wanted: set, lay, y0, y1, x0, x1, values) -> None:
    """Keep the windows of the sampled filters (flat probe-domain indices) of one unit."""
    c, h, w = lay.probe_shape
    for flat in wanted:
        a, rem = divmod(flat, h * w)
        i, j = divmod(rem, w)
        if y0 <= i < y1 and x0 <= j < x1:
            store[flat] = (values[i - y0, j - x0, a].copy(), lay.origin(i, j))


def windowed_err(got: dict, oracle_full: torch.Tensor, idx: list, lay) -> float:
    """Max error of stored windows against the oracle cropped the same way."""
    worst, top = 0.0, 0.0
    wh, ww = lay.window
    for n, flat in enumerate(idx):
        vals, (oy, ox) = got[flat]
        ref = oracle_full[n][:, oy:oy + wh, ox:ox + ww].numpy()
        worst = max(worst, float(np.abs(vals - ref).max()))
        top = max(top, float(oracle_full[n].abs().max()))
    return worst / max(top, 1e-300)


def run_cli(model: str, png: Path, dtype: str, windows, batch) -> tuple[float, str]:
    """`precompute run` of every column and row of the image (writing included), in process."""
    from precompute.config import load_config
    from precompute.run import Options, run_image

    d = Path(tempfile.mkdtemp(prefix="bench-run-"))
    if model == "pixelshuffle":
        arch = f"{{arch: pixelshuffle, scale: 3, checkpoint: {SHIPPED}}}"
    else:  # no weights are shipped: the same seeded random weights as --model
        arch = f"{{arch: 'python:{Path(__file__).with_name('random_models.py')}:edsr_baseline_x4'}}"
    (d / "c.yaml").write_text(
        f"name: bench\nmodel: {arch}\nimage: {png}\ndtype: {dtype}\nbatch: {batch}\n"
        f"output: {d / 'runs'}\nanalyses: {{residual: true, columns: {{window: {windows[0]}}}, "
        f"rows: {{window: {windows[1]}}}}}\n")
    res = load_config(d / "c.yaml")
    t0 = time.perf_counter()
    line = run_image(res, res.images[0], Options(quiet=True))
    return time.perf_counter() - t0, line


# --- the table ------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="pixelshuffle", choices=["pixelshuffle", "edsr-baseline"])
    ap.add_argument("--size", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--sample", type=int, default=64,
                    help="sampled columns and rows per method (≥ --batch for method 4)")
    ap.add_argument("--batch", type=int, default=CPU_MAX_BATCH, help="probes per pass (4, 5)")
    ap.add_argument("--chunk", type=int, default=CPU_MAX_BATCH, help="torch.func vmap chunk")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--no-run", action="store_true", help="skip the end-to-end `precompute run`")
    ap.add_argument("--profile", action="store_true", help="where the compressed method's time goes")
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    if device.type == "cuda":
        from precompute.inputs import set_precision

        set_precision(device, "ieee")
        where = torch.cuda.get_device_name(device)
    else:
        where = f"{cpu_model()}, {torch.get_num_threads()} threads"
    print(f"# {args.model}{' (random weights)' if args.model != 'pixelshuffle' else ''}, {args.dtype}, "
          f"{where}, torch {torch.__version__}; sample {args.sample} filters, K = {args.batch}")
    for size in args.size:
        spec, x0, png = load(args.model, size, device, dtype)
        with torch.no_grad():
            y0 = spec.module(x0)
        n_in, n_out = x0.numel(), y0.numel()
        cols = sample_indices(n_in, args.sample, 0)
        rows = sample_indices(n_out, args.sample, 1)
        ref_c, ref_r = oracle(spec, x0, cols, rows)
        print(f"\n## {size}×{size}: x0 {tuple(x0.shape[1:])} → {tuple(y0.shape[1:])}: "
              f"{n_in:,} columns, {n_out:,} rows\n")
        print("| method | columns/s | rows/s | peak memory | max error (rel.) | note |")
        print("|---|---:|---:|---:|---:|---|")
        rates = {}
        methods = [("1. paper [x0, δ] per pass", lambda: paper(spec, x0, cols, rows, device)),
                   ("2. DFV (replay masks)", lambda: dfv(spec, x0, cols, rows, device)),
                   ("3. torch.func vmap jvp/vjp", lambda: func(spec, x0, cols, rows, device, args.chunk)),
                   (f"4. LinearScope batched (K={args.batch})",
                    lambda: batched(spec, x0, cols, rows, device, args.batch))]
        for label, fn in methods:
            with Peak(device) as pk:
                c, tc, w, tr, extra = fn()
            err = max(rel_err(c.reshape(len(cols), -1), ref_c.reshape(len(cols), -1)),
                      rel_err(w.reshape(len(rows), -1), ref_r.reshape(len(rows), -1)))
            rates[label[:2]] = (len(cols) / tc, len(rows) / tr)
            note = ""
            if "stored" in extra:
                note = f"stores {mb(extra['stored'])} of activations (masks: {mb(extra['bits'])})"
            print(f"| {label} | {len(cols) / tc:,.1f} | {len(rows) / tr:,.1f} | {mb(pk.peak)} | "
                  f"{err:.1e} | {note} |", flush=True)
        prof = None
        if args.profile:
            prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]
                                          + ([torch.profiler.ProfilerActivity.CUDA]
                                             if device.type == "cuda" else []))
            prof.__enter__()
        with Peak(device) as pk:
            res = compressed(spec, x0, device, args.batch, WINDOWS[args.model], cols, rows)
        if prof is not None:
            prof.__exit__(None, None, None)
        sup, pl, tt = res["support"], res["plans"], res["t"]
        errs, single = [], []
        for name, ref, idx in (("columns", ref_c, cols), ("rows", ref_r, rows)):
            if pl[name].method == "single":  # falls back: method 4's numbers
                single.append(name)
            else:
                errs.append(windowed_err(res["got"][name], ref, idx, res[f"lay_{name}"]))
        r4 = rates["4."]
        shared = tt.get("columns+rows", 0.0)
        t_c = res["t_support"] + (n_in / r4[0] if "columns" in single
                                  else tt.get("columns", 0.0) + shared)
        t_r = n_out / r4[1] if "rows" in single else tt.get("rows", 0.0) + shared
        if single:
            tt["single (method 4, extrapolated)"] = (t_c - res["t_support"] if "columns" in single
                                                     else 0.0) + (t_r if "rows" in single else 0.0)
        err_text = f"{max(errs):.1e}" if errs else "(as 4)"
        note = (f"support {'global' if sup.is_global else sup.period_in}; columns "
                f"{pl['columns'].method}, rows {pl['rows'].method}"
                + ("; columns and rows from the same passes (both rates count them)" if shared else "")
                + (f"; {' and '.join(single)} fall back to one impulse per probe (method 4's rate"
                   f"{': ' + sup.global_reason if sup.is_global else ''})" if single else "")
                + f"; support analysis {res['t_support']:.1f} s (counted with the columns)")
        print(f"| 5. LinearScope compressed, rows from columns | {n_in / t_c:,.1f} | "
              f"{n_out / t_r:,.1f} | {mb(pk.peak)} | {err_text} | {note} |", flush=True)
        total = {m: n_in / rates[m][0] + n_out / rates[m][1] for m in rates}
        ours = res["t_support"] + sum(tt.values())
        print(f"\nAll {n_in:,} columns + {n_out:,} rows: paper {total['1.']:,.0f} s (extrapolated), "
              f"DFV {total['2.']:,.0f} s, torch.func {total['3.']:,.0f} s, batched "
              f"{total['4.']:,.0f} s, compressed {ours:,.1f} s in memory "
              f"({total['1.'] / ours:,.0f}× the paper's method, {total['3.'] / ours:,.1f}× torch.func).")
        for name, st in res["stats"].items():
            if st:
                print(f"  compressed {name}: passes {st['passes']:.1f} s, decoding {st['decode']:.1f} s")
        if prof is not None:
            print("\nTop ops of the compressed method (torch profiler, self CPU time):\n")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
        if not args.no_run:
            wall, line = run_cli(args.model, png, args.dtype, WINDOWS[args.model], "auto")
            print(f"\n`precompute run` (plan, support, checks, all columns and rows, writing): "
                  f"{wall:,.1f} s wall → {total['1.'] / wall:,.0f}× the paper's method "
                  f"(target ≥ 100×), {total['3.'] / wall:,.1f}× torch.func (target ≥ 10×). {line}",
                  flush=True)


if __name__ == "__main__":
    main()
