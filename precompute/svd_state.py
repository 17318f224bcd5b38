"""Resumable SVD solver state in the store (``svd/state``, removed once the result is complete).

The block Krylov solver saves its bases and projected matrices after every block, the paper's
Algorithm 1 (power) every triplet found, so a killed ``precompute run`` resumes
bitwise-identically (docs/FORMAT.md, ``svd/state``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from precompute.svd_solvers import Basis, KrylovState, Operator

if TYPE_CHECKING:
    from precompute.tile_store import TileStore

KEY = "svd/state"


class State:
    """Solver state saved in ``svd/state`` of a store after every block (block) or triplet (power).

    Arrays are written first, then the group attribute ``progress`` in one atomic write: what
    ``progress`` describes is always on disk. ``key`` (method, k, block, seed, tol, budget, dtype,
    sizes) must match for a resume; any other state is discarded and the solver restarts.
    """

    def __init__(self, tiles: "TileStore", key: dict, say: Callable[[str], None] = lambda s: None):
        # the store through its tile store (the storage seam): no path of it is touched here
        self.tiles, self.key, self.say = tiles, dict(key), say
        self.group = None

    # -- common -----------------------------------------------------------------------------
    def _open(self, method: str):
        if not self.tiles.has_group(KEY):
            return None
        g = self.tiles.group("r+")[KEY]
        a = dict(g.attrs)
        if a.get("key") != self.key or "progress" not in a:
            self.say(f"svd: discarding saved state that does not match this {method} run; "
                     "restarting")
            return None
        self.group = g
        return g, a["progress"]

    def _begin(self, arrays: dict[str, tuple[tuple, tuple, str]]) -> None:
        from precompute.store_create import codecs

        self.remove()
        parent, name = KEY.rsplit("/", 1)
        g = self.tiles.group("r+").require_group(parent).create_group(
            name, attributes={"key": self.key})
        for name, (shape, chunks, dtype) in arrays.items():
            g.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0,
                           compressors=codecs())
        self.group = g

    def _commit(self, progress: dict) -> None:
        self.group.attrs.put({"key": self.key, "progress": progress})

    def remove(self) -> None:
        self.tiles.remove(KEY)

    # -- block --------------------------------------------------------------------------------
    def begin_krylov(self, op: Operator, block: int, max_passes: int) -> None:
        J = max(1, min(max_passes // 2, -(-op.n // block)))
        dt = str(op.dtype).removeprefix("torch.")
        self._begin({
            "v": ((J + 1, block, op.n), (1, block, op.n), dt),
            "u": ((J, block, op.N), (1, block, op.N), dt),
            "B": ((J * block, J * block), (block, block), "float64"),
            "G": (((J + 1) * block, J * block), (block, block), "float64"),
        })
        self.block = block

    def save_krylov(self, ks: KrylovState) -> None:
        g, t, b = self.group, ks.iterations, self.block

        def put(name, j, blk):
            a = np.zeros((b, blk.shape[1]), dtype=g[name].dtype)
            a[:blk.shape[0]] = blk.cpu().numpy()
            g[name][j] = a

        if t == 1:
            put("v", 0, ks.V.block(0))
        put("v", t, ks.V.block(t))
        put("u", t - 1, ks.U.block(t - 1))
        wu, wv = list(ks.U.widths), list(ks.V.widths)
        m_U, m_Vf, m_V = sum(wu), sum(wv[:t]), sum(wv)
        g["B"][:m_U, m_Vf - wv[t - 1]:m_Vf] = ks.B[:, m_Vf - wv[t - 1]:].numpy()
        g["G"][:m_V, m_U - wu[t - 1]:m_U] = ks.G[:, m_U - wu[t - 1]:].numpy()
        self._commit({"iterations": t, "widths_u": wu, "widths_v": wv, "scale": ks.scale,
                      "passes": ks.passes, "seconds": ks.seconds})

    def load_krylov(self, op: Operator) -> KrylovState | None:
        opened = self._open("block")
        if opened is None:
            return None
        g, p = opened
        self.block = g["v"].shape[1]

        def get(name, j, w):
            return torch.from_numpy(np.asarray(g[name][j][:w])).to(op.device)

        V, U = Basis(op.n, op.dtype, op.device), Basis(op.N, op.dtype, op.device)
        for j, w in enumerate(p["widths_v"]):
            V.append(get("v", j, w))
        for j, w in enumerate(p["widths_u"]):
            U.append(get("u", j, w))
        m_U, m_V = sum(p["widths_u"]), sum(p["widths_v"])
        m_Vf = m_V - p["widths_v"][-1]
        B = torch.from_numpy(np.asarray(g["B"][:m_U, :m_Vf]))
        G = torch.from_numpy(np.asarray(g["G"][:m_V, :m_U]))
        self.say(f"svd: resuming block Krylov after {p['iterations']} saved iteration(s) "
                 f"({p['passes']['forward'] + p['passes']['backward']} passes done)")
        return KrylovState(V=V, U=U, B=B, G=G, scale=p["scale"], passes=dict(p["passes"]),
                           seconds=p["seconds"])

    # -- power --------------------------------------------------------------------------------
    def begin_power(self, op: Operator, k: int) -> None:
        dt = str(op.dtype).removeprefix("torch.")
        self._begin({"v": ((k, op.n), (1, op.n), dt), "u": ((k, op.N), (1, op.N), dt)})

    def save_power(self, done: dict) -> None:
        i = len(done["sigma"]) - 1
        self.group["v"][i] = done["v"][i].cpu().numpy()
        self.group["u"][i] = done["u"][i].cpu().numpy()
        self._commit({key: done[key] for key in ("sigma", "converged", "iterations", "momentum",
                                                 "passes", "seconds")})

    def load_power(self, op: Operator, k: int) -> dict | None:
        opened = self._open("power")
        if opened is None:
            return None
        g, p = opened
        i = len(p["sigma"])
        done = dict(p)
        done["v"] = [torch.from_numpy(np.asarray(g["v"][j])).to(op.device) for j in range(i)]
        done["u"] = [torch.from_numpy(np.asarray(g["u"][j])).to(op.device) for j in range(i)]
        for key in ("sigma", "converged", "iterations", "momentum"):
            done[key] = list(done[key])
        self.say(f"svd: resuming the power method after {i} of {k} saved triplet(s)")
        return done

    # -- dense --------------------------------------------------------------------------------
    def begin_dense(self) -> None:
        if self.tiles.has_group(KEY):
            self.say("svd: the dense SVD keeps no intermediate state: restarting it")
        self._begin({})
        self._commit({"started": True})
