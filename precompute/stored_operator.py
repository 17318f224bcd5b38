"""F from the store: the exact filter matrix as a sparse matrix of the stored windows.

A store whose ``columns`` hold every input pixel with nothing outside its window
(``columns_outside`` exactly 0 everywhere: always for ``full`` windows, and whenever the window
covers the structural support, :func:`covers_support`) holds F itself, entry for entry:
``F[(b, oy+y, ox+x), (a, i, j)] = columns[i, j, a, b, y, x]`` (docs/FORMAT.md), and zero elsewhere.
The same holds for ``rows``. :class:`StoredF` assembles that sparse matrix — n·(window)² entries
per channel pair at most, exact zeros dropped — and applies ``F·V`` and ``Fᵀ·U`` to blocks of
vectors (paper eq. 5 and 6 with the constants off) without any network pass: a whole-F analysis
after a sweep (the SVD, :mod:`precompute.svd`; the SVD recheck of ``precompute verify``) then
costs sparse products instead of batched passes of the network.

torch's sparse CSR kernels do the products (cuSPARSE on a GPU), in the store's dtype, with 32-bit
indices where they fit; scipy.sparse assembles the matrix and serves the exact dense SVD. Assembling reads
every shard once with :func:`precompute.shards.decode_shard` (checksums checked), far faster than
zarr's per-chunk pipeline for one-pixel inner chunks.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from precompute import probes as P
from precompute import shards
from precompute import layout as L
from precompute import store_create as SC
from precompute.tile_store import open_tiles

SOURCES = ("columns", "rows")


# ---------------------------------------------------------------------------------------------
# Does (will) the store hold all of F?


def _interval_ok(lo: np.ndarray, hi: np.ndarray, origin: np.ndarray, w: int) -> bool:
    """Every non-empty [lo_i, hi_i] lies inside [origin_i, origin_i + w)."""
    empty = lo > hi
    return bool(np.all(empty | ((lo >= origin) & (hi < origin + w))))


def covers_support(lay: L.Layout, support) -> bool:
    """Whether every window of ``lay`` contains its filter's whole structural support
    (:class:`precompute.support.Support`): then nothing can lie outside it, whatever x0 is."""
    if lay.full:
        return True
    if support is None or support.is_global:
        return False
    lo, hi = ((support.col_lo, support.col_hi) if lay.name == "columns"
              else (support.row_lo, support.row_hi))
    rule = P.column_origin if lay.name == "columns" else P.row_origin
    _, hp, wp = lay.probe_shape
    _, ho, wo = lay.other_shape
    for axis, (n, other) in enumerate(((hp, ho), (wp, wo))):
        w = lay.window[axis]
        origin = np.array([rule(i, lay.scale, lay.offset, w, other) for i in range(n)])
        if not _interval_ok(np.asarray(lo[axis]), np.asarray(hi[axis]), origin, w):
            return False
    return True


def whole_selection(lay: L.Layout) -> bool:
    """The layout stores a filter for every pixel of its domain (no region, stride 1)."""
    _, h, w = lay.probe_shape
    return lay.selection.as_list(h, w) == [0, 0, h, w] and lay.selection.stride == 1


def planned_source(layouts, support) -> tuple[str | None, str]:
    """At plan time: the analysis (``columns`` or ``rows``) whose stored windows will hold all of
    F, and why — or (None, why not)."""
    why_not = []
    by_name = {lay.name: lay for lay in layouts}
    for name in SOURCES:
        lay = by_name.get(name)
        if lay is None:
            continue
        if not whole_selection(lay):
            why_not.append(f"the {name} cover part of the image only")
            continue
        if lay.full:
            return name, f"the full-window {name}"
        win = f"{lay.window[0]}×{lay.window[1]}"
        if support is None:  # (probing: single, or a resumed store): known after the sweep
            return name, (f"the {name} if nothing lies outside their {win} windows (checked "
                          "after the sweep)")
        if covers_support(lay, support):
            return name, f"the {name}: their {win} windows cover the structural support"
        if support.is_global:
            why_not.append(f"the {name} are cut to {win} windows and the structural support is "
                           "global")
        else:
            why_not.append(f"the {name} are cut to {win} windows, smaller than their structural "
                           "support")
    if not why_not:
        why_not.append("the store has no columns or rows")
    return None, "; ".join(why_not)


def holds_all(path: Path, group, lay: L.Layout) -> str | None:
    """After the sweep: why the stored ``lay`` does not hold all of F, or None when it does
    (every pixel selected and done, every ``*_outside`` fraction exactly 0)."""
    if not whole_selection(lay):
        return f"the {lay.name} cover part of the image only"
    arrays = SC.tiled_arrays(group)
    tiles = open_tiles(path)
    for t in lay.tiles():
        if not tiles.tile_done(arrays, lay, t, full=False):
            return f"{lay.name} tile ({t.ty}, {t.tx}) is not on disk"
    out = np.asarray(group[f"{lay.name}_outside"][...])
    if np.isnan(out).any():
        return f"{int(np.isnan(out).any(-1).sum())} {lay.name} were not computed"
    if (out != 0).any():
        n = int((out != 0).any(-1).sum())
        return (f"{n} of {out.shape[0] * out.shape[1]} {lay.name} have part of their norm "
                f"outside their {lay.window[0]}×{lay.window[1]} window (up to "
                f"{float(out.max()):.2g})")
    return None


# ---------------------------------------------------------------------------------------------
# Reading the windows.


def _tile_values(path: Path, arr, lay: L.Layout, t: P.Tile) -> np.ndarray:
    """The stored windows of one tile, (th, tw, C_probe, C_other, wh, ww)."""
    level = shards.fast_path(arr)
    if level is None:
        return np.asarray(arr[t.y0:t.y1, t.x0:t.x1])
    data = open_tiles(path).read(SC.shard_key(arr, lay.name, t))
    inner = arr.metadata.codecs[0].chunk_shape
    block = shards.decode_shard(data, tuple(arr.shards), tuple(inner), arr.dtype, level)
    th, tw = t.shape
    return block[:th, :tw]


def _window_index(lay: L.Layout, origin: np.ndarray) -> np.ndarray:
    """The flat index (in the other domain) of every window entry of every probe pixel,
    ``(hp·wp, co·wh·ww)``: ``(c·ho + oy + y)·wo + ox + x`` (docs/FORMAT.md), increasing along
    each row (C order of the window), so the compressed matrix has sorted indices."""
    co, ho, wo = lay.other_shape
    wh, ww = lay.window
    itype = np.int32 if math.prod(lay.other_shape) < 2**31 else np.int64
    oy = origin[..., 0].astype(itype)[:, :, None, None, None]
    ox = origin[..., 1].astype(itype)[:, :, None, None, None]
    c = np.arange(co, dtype=itype)[None, None, :, None, None]
    y = np.arange(wh, dtype=itype)[None, None, None, :, None]
    x = np.arange(ww, dtype=itype)[None, None, None, None, :]
    idx = (c * ho + oy + y) * wo + ox + x                                # (hp, wp, co, wh, ww)
    return idx.reshape(origin.shape[0] * origin.shape[1], -1)


# ---------------------------------------------------------------------------------------------
# The operator.


@contextmanager
def one_thread():
    """Run the linear algebra of a whole-F analysis on the stored F with one thread (torch and
    every BLAS). Its work is sparse products (one thread in scipy anyway) and small dense
    factorisations: on two cores one thread is as fast, and 10–60× faster than two when the
    machine is busy (OpenBLAS/OpenMP threads spin waiting for each other; measured: a 576 × 576
    eigh 2.9 s against 0.18 s, LAPACK's eigh of a 1,024 Gram matrix 4.5 s against 0.1 s).
    scipy.linalg is imported first: threadpoolctl limits only the BLAS libraries already loaded
    when it is entered, and scipy ships its own."""
    import scipy.linalg  # noqa: F401
    from threadpoolctl import threadpool_limits

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(old)


@dataclass
class StoredF:
    """F (N × n) assembled from a store's ``columns`` or ``rows``: ``F(V)`` maps ``(K, n) →
    (K, N)`` and ``Ft(U)`` maps ``(K, N) → (K, n)`` (torch tensors on ``device``, the store's
    dtype), like :class:`precompute.svd.Operator`'s callables."""

    matrix: object            # scipy.sparse CSR/CSC array (N × n)
    source: str               # "columns" or "rows"
    dtype: torch.dtype
    device: torch.device
    seconds: float = 0.0      # reading and assembling
    threads: int = field(default_factory=torch.get_num_threads)  # for the CPU products
    _torch: tuple | None = None

    @property
    def n(self) -> int:
        return int(self.matrix.shape[1])

    @property
    def N(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def nnz(self) -> int:
        return int(self.matrix.nnz)

    @classmethod
    def load(cls, path: Path, group, lay: L.Layout, dtype: torch.dtype,
             device: torch.device | str = "cpu") -> "StoredF":
        """Assemble F from every tile of ``lay`` (call :func:`holds_all` first)."""
        import scipy.sparse as sp

        t0 = time.perf_counter()
        path = Path(path)
        arr = group[lay.name]
        org = group[f"{lay.name}_origin"]
        n, N = math.prod(lay.probe_shape), math.prod(lay.other_shape)
        if lay.name == "rows":
            n, N = N, n
        cp, hp, wp = lay.probe_shape
        # the windows of every probe pixel, dense (about the size of the sparse F: the windows
        # are mostly non-zero), then compressed by probe pixel directly — CSC for columns, CSR
        # for rows — without a COO detour (int64 triplets and a conversion: 2× the memory, and
        # 60 % of the assembly time on PixelShuffle at 144²)
        values = np.empty((hp, wp, cp, *lay.other_shape[:1], *lay.window), arr.dtype)
        for t in lay.tiles():
            block = _tile_values(path, arr, lay, t)
            if np.isnan(block).any():
                raise ValueError(f"{lay.name} tile ({t.ty}, {t.tx}) holds NaN")
            values[t.y0:t.y1, t.x0:t.x1] = block
        index = _window_index(lay, np.asarray(org[...]))                 # (hp·wp, L)
        values = values.reshape(hp * wp, cp, -1)
        indptr = [np.zeros(1, np.int64)]
        data, indices = [], []
        for a in range(cp):  # probe index (a·hp + i)·wp + j: channel-major
            v = values[:, a]
            nz = v != 0
            data.append(v[nz])
            indices.append(index[nz])
            indptr.append(nz.sum(1).astype(np.int64))
        data = np.concatenate(data)
        indices = np.concatenate(indices)
        indptr = np.cumsum(np.concatenate(indptr))
        if len(data) < 2**31 and max(N, n) < 2**31:  # 32-bit indices: less to read per product
            indices, indptr = indices.astype(np.int32, copy=False), indptr.astype(np.int32)
        if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= N):
            raise ValueError(f"{lay.name} windows reach outside the image")
        fmt = sp.csc_array if lay.name == "columns" else sp.csr_array
        matrix = fmt((data, indices, indptr), shape=(N, n))
        if not matrix.has_sorted_indices:
            matrix.sort_indices()
        return cls(matrix, lay.name, dtype, torch.device(device), time.perf_counter() - t0)

    # -- products -----------------------------------------------------------------------------
    def _on_torch(self) -> tuple:
        """F and Fᵀ as torch sparse CSR tensors on the device, built once. A CSC matrix's arrays
        are the CSR arrays of its transpose, so one of the two shares the scipy matrix's memory
        (on the CPU) and only the other is converted."""
        if self._torch is None:
            import warnings

            def csr(m, shape):
                with warnings.catch_warnings():  # "sparse CSR support is in beta state"
                    warnings.simplefilter("ignore", UserWarning)
                    # indices were range-checked and sorted in load(): no invariant check
                    return torch.sparse_csr_tensor(
                        torch.from_numpy(m.indptr), torch.from_numpy(m.indices),
                        torch.from_numpy(np.asarray(m.data)), size=shape,
                        check_invariants=False).to(self.device, self.dtype)

            m = self.matrix
            by_row, by_column = (m.tocsr(), m) if m.format == "csc" else (m, m.tocsc())
            self._torch = (csr(by_row, (self.N, self.n)), csr(by_column, (self.n, self.N)))
        return self._torch

    def _apply(self, X: Tensor, transpose: bool) -> Tensor:
        """``(K, n) → (K, N)`` (or back): torch's CSR kernel on every device. Each output entry
        is summed over its row's entries in index order whatever the thread count (so results
        are the same with one thread or many, and the same as scipy's, bit for bit), and on the
        CPU it is 1.5× faster than scipy's with one thread and 3× with two (PixelShuffle at
        144², 21.7 M entries, 16 vectors: 0.055 / 0.029 s against 0.09 s), so the products run
        with the thread count of the run, not under :func:`one_thread`."""
        A = self._on_torch()[1 if transpose else 0]
        x = X.detach().to(self.device, self.dtype).T.contiguous()
        if self.device.type != "cpu":
            return (A @ x).T
        old = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            return (A @ x).T
        finally:
            torch.set_num_threads(old)

    def F(self, V: Tensor) -> Tensor:
        return self._apply(V.reshape(V.shape[0], self.n), False)

    def Ft(self, U: Tensor) -> Tensor:
        return self._apply(U.reshape(U.shape[0], self.N), True)

    # -- the exact SVD ------------------------------------------------------------------------
    def dense_svd(self, k: int) -> tuple[Tensor, Tensor, Tensor]:
        """Exact top-k SVD (σ float64 descending, u (k, N), v (k, n) float64) from the
        eigen-decomposition of the smaller Gram matrix (FᵀF or FFᵀ, float64), block by block of
        its connected components (e.g. one block per colour channel of bicubic), followed by a
        Rayleigh–Ritz step on F itself (an SVD of F·V_k), which gives the singular values to
        the precision of F rather than of the squared Gram matrix."""
        with one_thread():
            return self._dense_svd(k)

    def _dense_svd(self, k: int) -> tuple[Tensor, Tensor, Tensor]:
        import scipy.linalg as la
        from scipy.sparse.csgraph import connected_components

        A = self.matrix.astype(np.float64)
        small = self.n <= self.N
        G = (A.T @ A) if small else (A @ A.T)
        G = G.tocsr()
        m = G.shape[0]
        n_comp, labels = connected_components(abs(G) + abs(G.T), directed=False)
        cand_w, cand_q = [], []
        for c in range(n_comp):
            idx = np.flatnonzero(labels == c)
            sub = G[idx][:, idx].toarray()
            kk = min(k, len(idx))
            w, q = la.eigh(sub, subset_by_index=[len(idx) - kk, len(idx) - 1])
            Q = np.zeros((m, kk))
            Q[idx] = q
            cand_w.append(w)
            cand_q.append(Q)
        w = np.concatenate(cand_w)
        Q = np.concatenate(cand_q, axis=1)
        top = np.argsort(-w, kind="stable")[:k]
        Q = Q[:, top]                                  # (m, k) orthonormal
        Y = (A @ Q) if small else (A.T @ Q)            # F·V or Fᵀ·U: (other side, k)
        P_, s, Wt = np.linalg.svd(Y, full_matrices=False)
        other = Q @ Wt.T                               # rotated Ritz vectors of the small side
        v, u = (other, P_) if small else (P_, other)
        return (torch.from_numpy(s.copy()), torch.from_numpy(np.ascontiguousarray(u.T)),
                torch.from_numpy(np.ascontiguousarray(v.T)))


def load_if_whole(path: Path, group, layouts, dtype: torch.dtype, device,
                  prefer: str | None = None) -> tuple[StoredF | None, str]:
    """The stored F from the first analysis that holds all of it (``prefer`` first), or
    (None, why none does)."""
    by_name = {lay.name: lay for lay in layouts}
    order = ([prefer] if prefer in by_name else []) + [n for n in SOURCES
                                                       if n in by_name and n != prefer]
    why = []
    for name in order:
        lay = by_name[name]
        problem = holds_all(path, group, lay)
        if problem is not None:
            why.append(problem)
            continue
        try:
            return StoredF.load(path, group, lay, dtype, device), f"the stored {name}"
        except (OSError, ValueError, shards.ShardError) as e:
            why.append(f"the stored {name} could not be read ({e})")
    return None, "; ".join(why) or "the store has no columns or rows"


def verify_lines(st) -> tuple[list[str], bool]:
    """``precompute verify``: when both the stored columns and the stored rows hold all of F,
    they must be the same matrix entry for entry (they were computed by different passes)."""
    import torch as _t

    dtype = _t.from_numpy(np.zeros(0, st.dtype)).dtype
    mats = {}
    for name in SOURCES:
        lay = st.layouts.get(name)
        if lay is None or holds_all(st.path, st.group, lay) is not None:
            continue
        try:
            mats[name] = StoredF.load(st.path, st.group, lay, dtype).matrix
        except (OSError, ValueError, MemoryError):
            return [], True  # the integrity report says what is damaged
    if len(mats) < 2:
        return [], True
    a, b = mats["columns"].tocsr(), mats["rows"].tocsr()
    scale = max(float(abs(a).max()) if a.nnz else 0.0, 1e-300)
    diff = float(abs(a - b).max()) / scale if (a.nnz or b.nnz) else 0.0
    tol = 1e-9 if st.dtype == np.float64 else 1e-4
    ok = diff <= tol
    return [f"stored F: the columns and the rows hold the same F ({a.nnz:,} non-zero entries), "
            f"max |Δ| relative {diff:.3g} (tolerance {tol:g}) " + ("OK" if ok else "MISMATCH")], ok
