"""The whole-F analysis ``svd``: the top-k SVD of the linear interpreter, planned, run and checked.

``F(x0) v_i = σ_i u_i`` (paper §3 "Singular Value Decomposition", Figures 5, 6, 12, 14, 15).
This module is the analysis around the solvers: :class:`Plan` (``analyses.svd`` resolved: method,
block, tolerance, budget, and the operator — the F the store holds, or network passes),
its plan sentence and disk estimate, :func:`run` (solve, measure the residuals with the network,
write ``svd/`` and mark it complete last, docs/FORMAT.md), :func:`recheck` for ``precompute
verify``, and :func:`top_k` for Python users. The solvers are :mod:`precompute.svd_solvers`
(``dense``, block Krylov, the paper's Algorithm 1, :func:`finish`), their resumable state
:mod:`precompute.svd_state`; the stored F :mod:`precompute.stored_operator`.

``method: auto`` picks ``dense`` when N·n ≤ 10⁷ on network passes (≤ 10⁸ and a Gram matrix of
≤ 4096 on the stored F), else ``block``.
"""


from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from precompute.tile_store import open_tiles
from precompute.analysis import RunContext, WholeF, group_complete
from precompute.errors import UserError
from precompute.svd_solvers import (  # noqa: F401  (re-exported: precompute.svd.Operator, …)
    SIGN_CONVENTION, Operator, Solution, Triplets, block_krylov, dense, denominators, finish,
    power, zero_floor)
from precompute.svd_gram import gram_lanczos
from precompute.svd_state import State

DENSE_LIMIT = 10**7            # auto: dense when N·n ≤ this (F of ≤ 80 MB in float64)
STORE_DENSE_LIMIT = 10**8      # auto on the stored F: dense when N·n ≤ this ...
STORE_DENSE_SIDE = 4096        # ... and the Gram matrix of the smaller side is at most this wide
DEFAULT_TOL = {"float32": 1e-4, "float64": 1e-8}
BLOCK_MAX_CALLS = 100          # default pass budget of the block solver
POWER_CALLS_PER_TRIPLET = 2000  # default pass budget of Algorithm 1, per triplet


# ---------------------------------------------------------------------------------------------
# The whole-F analysis `svd` of `precompute run` (protocol of precompute/analysis.py).


@dataclass(frozen=True)
class Plan:
    """The resolved `analyses.svd` of a run (what the store records under ``analyses.svd``).

    ``operator``: ``store`` (sparse products with the F the store holds,
    :mod:`precompute.stored_operator`; ``source`` names the analysis, ``why`` says how the plan
    knows) or ``network`` (batched passes of the interpreter)."""

    k: int
    method: str
    block: int
    tol: float
    max_calls: int | None
    seed: int
    n: int
    N: int
    dtype: str
    operator: str = "network"
    source: str | None = None
    why: str = ""

    def attrs(self) -> dict:
        return {"k": self.k, "method": self.method, "block": self.block, "tol": self.tol,
                "max_calls": self.max_calls, "seed": self.seed, "operator": self.operator}

    @property
    def pass_size(self) -> int:
        """Vectors per pass: one block (block, power), or ≥ 64 impulses (dense, like the sweep's
        CPU batch)."""
        return max(self.block, 64) if self.method == "dense" else self.block


def default_block(k: int) -> int:
    """Block size of ``block: auto``: 2k between 32 and 64 (what a device runs for ~free)."""
    return min(64, max(32, 2 * k))


def store_block(k: int) -> int:
    """Block size of ``block: auto`` on the stored F: k between 8 and 32. A sparse product
    costs about the same for 8 or 32 vectors (it reads the matrix), but the solve's total work
    grows with the block (the iterations barely drop): on PixelShuffle at 144² (k = 16) blocks
    of 8, 16, 32, 64 took 28, 21, 18, 14 iterations and 6.2, 5.1–6.1, 9.5, 13.6 CPU seconds."""
    return min(32, max(8, k))


def make_plan(k: int, n: int, N: int, dtype: str, method: str = "auto", block="auto",
              tol: float | None = None, max_calls: int | None = None, seed: int = 0,
              operator: str = "network", source: str | None = None, why: str = "") -> Plan:
    """Resolve ``auto`` method/block, the dtype's default tolerance and the default budgets for
    an F of N × n on the given operator (UserError if impossible)."""
    if k > min(n, N):
        raise UserError(f"analyses.svd.k = {k} is more than F ({N} × {n}) has singular "
                        f"values; use k ≤ {min(n, N)}")
    if method == "auto" and operator == "store":
        method = ("dense" if n * N <= STORE_DENSE_LIMIT and min(n, N) <= STORE_DENSE_SIDE
                  else "block")
    elif method == "auto":
        method = "dense" if n * N <= DENSE_LIMIT else "block"
    if block == "auto":
        block = default_block(k) if operator != "store" else store_block(k)
    block = int(block)
    tol = float(tol) if tol is not None else DEFAULT_TOL.get(dtype, 1e-3)
    if max_calls is None and method == "block":
        max_calls = BLOCK_MAX_CALLS
    elif max_calls is None and method == "power":
        max_calls = POWER_CALLS_PER_TRIPLET * k
    if method == "power" and max_calls < 2 * k:
        raise UserError(f"analyses.svd.max_calls = {max_calls} leaves the power method less than "
                        f"one step (2 passes) per triplet; use at least {2 * k}")
    return Plan(k, method, block, tol, max_calls if method != "dense" else None, seed, n, N, dtype,
                operator, source, why)


def resolve(ctx: RunContext, cfg, operator: str | None = None) -> Plan:
    """`analyses.svd` of the config for this run's shapes and dtype, and its operator: the
    stored F when the store will hold all of it (:func:`precompute.stored_operator
    .planned_source`), else network passes (``operator`` overrides the config's)."""
    from precompute import stored_operator as SO

    want = operator or getattr(cfg, "operator", "auto")
    source, why = None, "operator: network"
    if want != "network":
        source, why = SO.planned_source(ctx.layouts, ctx.support)
        if source is None and want == "store":
            raise UserError(f"analyses.svd.operator: store needs a store that holds all of F, "
                            f"but {why}; use operator: auto (or network)")
    op = "store" if source is not None else "network"
    return make_plan(cfg.k, math.prod(ctx.in_shape), math.prod(ctx.out_shape), ctx.config.dtype,
                     cfg.method, cfg.block, cfg.tol, cfg.max_calls, cfg.seed, op, source, why)


def top_k(li, k: int = 16, *, method: str = "auto", block="auto", tol: float | None = None,
          max_calls: int | None = None, seed: int = 0) -> Triplets:
    """The top-k SVD of a :class:`~precompute.interpreter.LinearInterpreter` in Python, exactly as
    ``precompute run`` computes it (same methods, defaults and sign convention; no store)."""
    from precompute.engine import Engine

    dtype = str(li.dtype).removeprefix("torch.")
    p = make_plan(k, li.n_inputs, li.n_outputs, dtype, method, block, tol, max_calls, seed)
    old = li.batch
    li.batch = p.pass_size
    try:
        op = Operator.from_engine(Engine(li, li.device, li.dtype), p.pass_size)
        return finish(op, solve(op, p))
    finally:
        li.batch = old


def planned(ctx: RunContext, cfg) -> dict:
    return resolve(ctx, cfg).attrs()


def _method_text(p: Plan) -> str:
    if p.operator == "store":
        return _store_method_text(p)
    if p.method == "dense":
        side, kind = (p.n, "column") if p.n <= p.N else (p.N, "row")
        return (f"the exact SVD of F materialised from {side:,} {kind} impulses "
                f"({-(-side // p.pass_size)} passes of ≤ {p.pass_size})")
    if p.method == "block":
        from precompute.text import fmt_bytes

        state = _state_bytes(p)
        return (f"block Krylov (blocks of {p.block}, at most {p.max_calls} passes; its saved "
                f"state for resuming takes up to {fmt_bytes(state)} on disk while it runs)")
    return (f"the paper's Algorithm 1 (power iteration with momentum, deflation of F; at most "
            f"{p.max_calls} passes)")


def _store_method_text(p: Plan) -> str:
    """The solver on the stored F (no state is saved: a killed run redoes it in seconds)."""
    if p.method == "dense":
        side, gram = (p.n, "FᵀF") if p.n <= p.N else (p.N, "FFᵀ")
        how = (f"the exact SVD (eigen-decomposition of the {side:,} × {side:,} Gram matrix {gram} "
               "in float64, then Rayleigh–Ritz on F)")
    elif p.method == "block":
        gram = "FᵀF" if p.n <= p.N else "FFᵀ"
        how = (f"block Lanczos on the Gram matrix {gram} (blocks of {p.block}, at most "
               f"{p.max_calls} sparse products; then Rayleigh–Ritz on F)")
    else:
        how = f"the paper's Algorithm 1 (at most {p.max_calls} sparse products)"
    return how


def _state_bytes(p: Plan) -> int:
    """The most disk the resumable solver state takes while it runs (block: every saved block of
    the Krylov basis, both sides; power: the triplets found so far; none on the stored F)."""
    itemsize = np.dtype(p.dtype).itemsize
    if p.operator == "store":
        return 0
    if p.method == "block":
        iters = max(1, min(p.max_calls // 2, -(-p.n // p.block)))
        return iters * p.block * (p.n + p.N) * itemsize
    if p.method == "power":
        return p.k * (p.n + p.N) * itemsize
    return 0


def disk_bytes(ctx: RunContext, cfg) -> int:
    """What this analysis may write (result and solver state), for the run's disk check."""
    if done(ctx, cfg) and "svd" not in ctx.pending:
        return 0
    p = resolve(ctx, cfg)
    return _state_bytes(p) + p.k * (p.n + p.N + 3) * np.dtype(p.dtype).itemsize


def describe(ctx: RunContext, cfg) -> str:
    p = resolve(ctx, cfg)
    finished = ctx.exists and group_complete(ctx.tiles, "svd") and "svd" not in ctx.pending
    state = "already done" if finished else f"tolerance {p.tol:g}"
    if p.operator == "store":
        where = (f" on the F the store holds ({p.why}; sparse products, no network pass; the "
                 f"residuals are measured with {-(-p.k // p.pass_size)} + "
                 f"{-(-p.k // p.pass_size)} network passes)")
    elif getattr(cfg, "operator", "auto") == "network":
        where = " by network passes (operator: network)"
    else:
        where = f" by network passes (the store does not hold all of F: {p.why})"
    return (f"svd: top-{p.k} singular triplets of F ({p.N:,} × {p.n:,}){where}, by "
            f"{_method_text(p)}, {state}.")


def done(ctx: RunContext, cfg) -> bool:
    resolve(ctx, cfg)  # refuse an impossible k before anything else
    return ctx.exists and group_complete(ctx.tiles, "svd")


def solve(op: Operator, p: Plan, state: State | None = None, progress=None) -> Solution:
    """Run the plan's solver on ``op``."""
    if p.method == "dense":
        if state is not None:
            state.begin_dense()
        return dense(op, p.k)
    if p.method == "block":
        return block_krylov(op, p.k, block=p.block, tol=p.tol, max_passes=p.max_calls,
                            seed=p.seed, state=state, progress=progress)
    if p.method == "power":
        return power(op, p.k, tol=p.tol, max_passes=p.max_calls, seed=p.seed, state=state,
                     progress=progress)
    raise ValueError(f"unknown SVD method {p.method!r}")


def _progress_bar(p: Plan, quiet: bool):
    from tqdm import tqdm

    if quiet:
        return None, None
    bar = tqdm(total=p.max_calls, desc=f"svd {p.method}", unit="pass", leave=False,
               dynamic_ncols=True)

    def update(passes: int, residual: float) -> None:
        bar.set_postfix_str(f"residual {residual:.1e} (tol {p.tol:g})", refresh=False)
        bar.update(passes - bar.n)  # redraws at most every mininterval

    return bar, update


def write_result(path: Path, p: Plan, sol: Solution, tri: Triplets, in_shape, out_shape,
                 attrs: dict) -> None:
    """The result arrays, then the group attributes with ``complete: true`` (one atomic write)."""
    from precompute.store_create import codecs

    g = open_tiles(path).group("r+").require_group("svd")
    g.attrs.put({"complete": False})
    k = p.k
    for name, data, shape in (("sigma", tri.sigma, (k,)), ("u", tri.u, (k, *out_shape)),
                              ("v", tri.v, (k, *in_shape)), ("residual", tri.residual, (k, 2))):
        chunks = (1, *shape[1:]) if name in ("u", "v") else shape
        a = g.create_array(name, shape=shape, chunks=chunks, dtype=p.dtype, fill_value=np.nan,
                           compressors=codecs(), overwrite=True)
        a[...] = np.asarray(data, np.float64).reshape(shape).astype(p.dtype)
    mark_complete(g, attrs)


def mark_complete(group, attrs: dict) -> None:
    """The last write of a result: its attributes with ``complete: true`` (``svd/zarr.json``,
    replaced atomically). Readers ignore ``svd/`` until then."""
    group.attrs.put(attrs | {"complete": True})


def run(ctx: RunContext, cfg) -> float:
    """Compute the top-k SVD of the run's interpreter into ``svd/`` (resumably); returns the
    seconds this process spent. On the stored F when the store holds all of it (else network
    passes, and it says why); the residuals are always measured with the network."""
    from precompute.engine import Engine
    from precompute.text import say
    from precompute.interpreter import LinearInterpreter

    t_start = time.perf_counter()
    p = resolve(ctx, cfg)
    c = ctx.config
    quiet = ctx.quiet
    tell = (lambda s: None) if quiet else say
    stored = None
    if p.operator == "store":
        stored, p = _stored_operator(ctx, cfg, p, tell)
    # an interpreter whose passes hold one block (the sweep's may hold a different batch)
    li = LinearInterpreter(ctx.prep.spec.module, ctx.prep.x0, rule=c.interpreter,
                           batch=p.pass_size, exact=c.precision == "ieee")
    eng = Engine(li, ctx.device, ctx.prep.dtype)
    net = Operator.from_engine(eng, p.pass_size)
    tiles = ctx.tiles
    state = State(tiles,
                  p.attrs() | {"dtype": p.dtype, "n": p.n, "N": p.N}, say=tell)
    g = tiles.group("r+").require_group("svd")
    if not g.attrs.get("complete"):
        g.attrs.put({"complete": False})
    bar, update = _progress_bar(p, quiet or p.method == "dense")
    try:
        if stored is None:
            op, sol = net, solve(net, p, state, update)
        else:  # seconds of work: no state to resume from
            op = Operator(stored.F, stored.Ft, p.n, p.N, stored.dtype, stored.device, p.pass_size)
            sol = solve_stored(stored, op, p, update)
    finally:
        if bar is not None:
            bar.close()
    tri = finish(net, sol)  # against the network: a wrong stored F cannot hide here
    passes = {kind: net.passes[kind] - tri.residual_passes[kind] for kind in net.passes}
    attrs = p.attrs() | {
        "calls": passes,
        "residual_calls": tri.residual_passes,
        "pass_size": net.pass_size,
        "iterations": sol.iterations,
        "wall_time": sol.seconds,
        "converged": bool(sol.converged),
        "max_residual": float(np.max(tri.residual)) if tri.residual.size else 0.0,
        "sign_convention": SIGN_CONVENTION,
        "oom_splits": eng.oom_splits,
        "device": str(ctx.device),
    } | ({"power_iterations": sol.extra["iterations"], "power_momentum": sol.extra["momentum"]}
         if sol.method == "power" else {}) | ({
             "operator_source": stored.source, "operator_nnz": stored.nnz,
             "operator_seconds": stored.seconds, "products": dict(op.passes)}
        if stored is not None else {})
    write_result(ctx.path, p, sol, tri, ctx.in_shape, ctx.out_shape, attrs)
    state.remove()
    if not quiet:
        how = (f"{attrs['calls']['forward']}+{attrs['calls']['backward']} passes"
               if stored is None else
               f"{op.passes['forward']}+{op.passes['backward']} sparse products"
               * (p.method != "dense") + f" on the stored {stored.source} (assembled in "
               f"{stored.seconds:.1f} s)")
        say(f"svd: σ_1 … σ_{p.k} = {tri.sigma[0]:.4g} … {tri.sigma[-1]:.4g} by {p.method} in "
            f"{how}, max residual {attrs['max_residual']:.2e} (measured with the network)"
            + ("" if sol.converged else f" — NOT converged to tol {p.tol:g}"))
    return time.perf_counter() - t_start


def _stored_operator(ctx: RunContext, cfg, p: Plan, tell):
    """The stored F of a plan on the store operator, or (None, the network plan) with a line
    saying why the store does not hold all of F after all."""
    from precompute import stored_operator as SO

    group = ctx.tiles.group("r")
    try:
        stored, why = SO.load_if_whole(ctx.path, group, ctx.layouts, ctx.prep.dtype, ctx.device,
                                       prefer=p.source)
    except MemoryError:
        stored, why = None, "assembling it ran out of memory"
    if stored is not None:
        return stored, p
    if getattr(cfg, "operator", "auto") == "store":
        raise UserError(f"analyses.svd.operator: store, but the store does not hold all of F "
                        f"({why}); use operator: auto (or network)")
    tell(f"svd: the store does not hold all of F ({why}): network passes instead")
    return None, resolve(ctx, cfg, operator="network")


def solve_stored(stored, op: Operator, p: Plan, progress=None) -> Solution:
    """Run the plan's solver on the stored F: ``dense`` is the exact SVD of
    :meth:`~precompute.stored_operator.StoredF.dense_svd`; ``block`` is block Lanczos on the Gram
    matrix of the smaller side (:func:`precompute.svd_gram.gram_lanczos`), ``power`` the paper's
    Algorithm 1 as on the network; both on sparse products (``op`` counts them). One thread
    (:func:`precompute.stored_operator.one_thread`) on the CPU."""
    if stored.device.type == "cpu":
        from precompute.stored_operator import one_thread

        with one_thread():
            return _solve_stored(stored, op, p, progress)
    return _solve_stored(stored, op, p, progress)


def _solve_stored(stored, op: Operator, p: Plan, progress=None) -> Solution:
    if p.method == "block":  # one basis, on the smaller side: see precompute.svd_gram
        return gram_lanczos(op, p.k, block=p.block, tol=p.tol, max_passes=p.max_calls,
                            seed=p.seed, progress=progress)
    if p.method != "dense":
        return solve(op, p, None, progress)
    t0 = time.perf_counter()
    s, u, v = stored.dense_svd(p.k)
    return Solution(s, u.to(op.device, op.dtype), v.to(op.device, op.dtype), True, "dense",
                    seconds=time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------
# `precompute verify`: recheck a few stored triplets against the recomputed interpreter.


def recheck(st, engine, samples: int = 4, seed: int = 0) -> tuple[list[str], bool]:
    """Recompute ``‖F v_i − σ_i u_i‖/σ_i`` and ``‖Fᵀ u_i − σ_i v_i‖/σ_i`` for up to ``samples``
    stored triplets (always the first and the last) with the interpreter rebuilt from the store's
    model and image; they must not exceed the stored residuals by more than the dtype's
    tolerance (that of the column/row check). Also checks unit norms and σ order."""
    g = st.group
    if "svd" not in g:
        return [], True
    a = dict(g["svd"].attrs)
    if not a.get("complete"):
        return ["svd: planned but not complete (run the same `precompute run` to finish it)"], True
    from precompute.integrity import missing_chunks
    from precompute.store import read_whole

    try:
        for name in ("svd/u", "svd/v"):
            problem = missing_chunks(g[name])
            if problem:
                return [f"svd: {problem} (the store is damaged) MISMATCH"], False
        sigma = np.asarray(read_whole(g["svd/sigma"]), np.float64)
        k = len(sigma)
        rng = np.random.default_rng(seed)
        pick = sorted({0, k - 1} | set(rng.choice(k, size=min(samples, k), replace=False).tolist()))
        pick = pick[:max(samples, 2)]
        dt = st.dtype
        u = torch.from_numpy(np.stack([g["svd/u"][i] for i in pick]).astype(dt))
        v = torch.from_numpy(np.stack([g["svd/v"][i] for i in pick]).astype(dt))
        stored = np.asarray(read_whole(g["svd/residual"]), np.float64)[pick]
    except Exception as e:  # noqa: BLE001 — a damaged chunk (checksum) or metadata
        return [f"svd: unreadable ({type(e).__name__}; the store is damaged) MISMATCH"], False
    tol = 1e-9 if dt == np.float64 else 1e-4
    op = Operator.from_engine(engine)
    U, V = u.reshape(len(pick), -1).to(op.device), v.reshape(len(pick), -1).to(op.device)
    s = torch.from_numpy(sigma[pick])
    den = denominators(torch.from_numpy(sigma), zero_floor(op.dtype, op.n, op.N))[pick]
    r1 = (torch.linalg.vector_norm(op.F(V).double().cpu() - s[:, None] * U.double().cpu(), dim=1)
          / den).numpy()
    r2 = (torch.linalg.vector_norm(op.Ft(U).double().cpu() - s[:, None] * V.double().cpu(), dim=1)
          / den).numpy()
    worst = float(np.max(np.stack([r1, r2], 1) - stored))
    norms = float(max(np.abs(np.linalg.norm(U.double().cpu().numpy(), axis=1) - 1).max(),
                      np.abs(np.linalg.norm(V.double().cpu().numpy(), axis=1) - 1).max()))
    ordered = bool(np.all(np.diff(sigma) <= 0))
    ok = worst <= tol and norms <= max(tol, 1e-6) and ordered
    lines = [f"svd: {len(pick)} of {k} triplets recomputed ({a.get('method')}), "
             f"max ‖Fv − σu‖/σ = {r1.max():.3g}, max ‖Fᵀu − σv‖/σ = {r2.max():.3g} "
             f"(stored ≤ {stored.max():.3g}; excess {max(worst, 0):.3g}, tolerance {tol:g}), "
             f"unit norms ±{norms:.1g}, σ {'descending' if ordered else 'NOT descending'} "
             + ("OK" if ok else "MISMATCH")]
    more, good = recheck_stored(st, sigma, tol)
    return lines + more, ok and good


def recheck_stored(st, sigma: np.ndarray, tol: float) -> tuple[list[str], bool]:
    """Every stored triplet against the F the store holds (when it holds all of it: sparse
    products, no network pass): its residuals must not exceed the stored ones (measured with
    the network) by more than ``tol``. Nothing when the store holds only part of F."""
    from precompute import stored_operator as SO

    try:
        stored, _why = SO.load_if_whole(st.path, st.group, list(st.layouts.values()),
                                        torch.from_numpy(np.zeros(0, st.dtype)).dtype, "cpu")
    except MemoryError:
        return [], True
    if stored is None:
        return [], True
    k = len(sigma)
    u = torch.from_numpy(np.asarray(st.array("svd/u"), np.float64).reshape(k, -1))
    v = torch.from_numpy(np.asarray(st.array("svd/v"), np.float64).reshape(k, -1))
    res = np.asarray(st.array("svd/residual"), np.float64)
    s = torch.from_numpy(sigma)
    den = denominators(s, zero_floor(stored.dtype, stored.n, stored.N))
    r1 = torch.linalg.vector_norm(stored.F(v.to(stored.dtype)).double() - s[:, None] * u,
                                  dim=1) / den
    r2 = torch.linalg.vector_norm(stored.Ft(u.to(stored.dtype)).double() - s[:, None] * v,
                                  dim=1) / den
    excess = float(np.max(torch.stack([r1, r2], 1).numpy() - res))
    ok = excess <= tol
    return [f"svd: all {k} triplets against the F of the stored {stored.source} (sparse, no "
            f"network pass): max ‖Fv − σu‖/σ = {float(r1.max()):.3g}, max ‖Fᵀu − σv‖/σ = "
            f"{float(r2.max()):.3g} (excess over stored {max(excess, 0):.3g}, tolerance "
            f"{tol:g}) " + ("OK" if ok else "MISMATCH")], ok


# ---------------------------------------------------------------------------------------------
# `precompute info`, and the analysis as registered (precompute.whole_f).


def info_lines(st) -> list[str]:
    """`precompute info` lines of the SVD (docs/FORMAT.md, section SVD)."""
    planned = st.attrs.get("analyses", {}).get("svd")
    if planned is None:
        return []
    head = f"svd       top-{planned['k']} by {planned['method']}"
    if not st.has_svd():
        return [head + ": not complete (run the same command to finish it)"]
    try:
        a, d = st.svd_attrs, st.svd()
    except Exception:  # noqa: BLE001 — a damaged chunk (checksum) or metadata
        return [head + ": unreadable (damaged; see precompute verify)"]
    sig, res = d["sigma"], d["residual"]
    c, rc = a["calls"], a.get("residual_calls", {})
    return [
        head + (f" (blocks of {a['block']})" if a["method"] == "block" else "")
        + f": σ_1 = {sig[0]:.4g} … σ_{len(sig)} = {sig[-1]:.4g}; "
        + (f"on the stored {a.get('operator_source')} ({a['products']['forward']} + "
           f"{a['products']['backward']} sparse products), " if a.get("operator") == "store"
           else "")
        + f"{c['forward']} forward + {c['backward']} backward passes"
        + (f" (+{rc.get('forward', 0)}+{rc.get('backward', 0)} to measure residuals)" if rc else "")
        + f", {a['wall_time']:.1f} s; "
        + ("converged" if a["converged"] else f"NOT converged to tol {a['tol']:g}"),
        f"          residuals max ‖Fv − σu‖/σ = {res[:, 0].max():.2e}, "
        f"max ‖Fᵀu − σv‖/σ = {res[:, 1].max():.2e} (tol {a['tol']:g})",
    ]


class SvdAnalysis(WholeF):
    """The top-k SVD as a whole-F analysis (:mod:`precompute.analysis`)."""

    name = "svd"

    def planned(self, ctx: RunContext, cfg) -> dict:
        return planned(ctx, cfg)

    def describe(self, ctx: RunContext, cfg) -> str:
        return describe(ctx, cfg)

    def disk_bytes(self, ctx: RunContext, cfg) -> int:
        return disk_bytes(ctx, cfg)

    def done(self, ctx: RunContext, cfg) -> bool:
        return done(ctx, cfg)

    def run(self, ctx: RunContext, cfg) -> float:
        return run(ctx, cfg)

    def info_lines(self, st) -> list[str]:
        return info_lines(st)

    def verify_lines(self, st, prep, engine, tol: float, samples: int, seed: int
                     ) -> tuple[list[str], bool]:
        return recheck(st, engine, samples=max(2, samples // 2), seed=seed)

