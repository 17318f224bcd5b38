"""Stores of small random ReLU / max-pool networks against torch.func Jacobians (float64).

For piecewise-linear networks the frozen interpreter F equals the Jacobian, and jacrev/jacfwd
compute it without any of LinearScope's machinery: an independent oracle.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import torch

import precompute
from sweep_helpers import TINY, cli, make_image, write_config


def _net(func: str):
    spec = importlib.util.spec_from_file_location("tiny_models_oracle", TINY)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return getattr(mod, func)().double()


def _x0(img_path) -> torch.Tensor:
    """The image as RGB in [0, 1]; prepared in float32 like the zoo's default, then widened."""
    from PIL import Image

    a = np.asarray(Image.open(img_path).convert("RGB"), dtype=np.float32) / np.float32(255)
    return torch.from_numpy(a.astype(np.float64)).permute(2, 0, 1)[None].contiguous()


def _jacobian(func: str, img_path) -> np.ndarray:
    net, x0 = _net(func), _x0(img_path)
    J = torch.func.jacrev(lambda x: net(x[None])[0])(x0[0])  # (C', H', W', C, H, W)
    return J.detach().numpy()


def _run(tmp_path, func, h, w, columns, rows, batch=5, name="tiny"):
    img = make_image(tmp_path / "img.png", h, w, seed=3)
    cfg = write_config(
        tmp_path / "c.yaml", name=name, model={"arch": f"python:{TINY}:{func}"}, image="img.png",
        analyses={"residual": True, "columns": columns, "rows": rows}, dtype="float64",
        batch=batch, output=str(tmp_path / "runs"),
    )
    r = cli("run", "-q", cfg)
    assert r.exit_code == 0, r.output + r.stderr
    return precompute.open_store(tmp_path / "runs" / f"{name}.zarr"), img


def test_relu_maxpool_full_windows_equal_jacobian(tmp_path):
    st, img = _run(tmp_path, "relu_pool_up", 5, 6, {"window": "full", "tile": 4},
                   {"window": "full", "tile": 8}, batch=24)
    J = _jacobian("relu_pool_up", img)
    cols = st.group["columns"][...]  # [i, j, a, b, y, x] = F[(b, y, x), (a, i, j)]
    np.testing.assert_allclose(cols.transpose(3, 4, 5, 2, 0, 1), J, atol=1e-12, rtol=0)
    rows = st.group["rows"][...]  # [p, q, b, a, y, x] = F[(b, p, q), (a, y, x)]
    np.testing.assert_allclose(rows.transpose(2, 0, 1, 3, 4, 5), J, atol=1e-12, rtol=0)
    assert np.abs(J).max() > 0.1  # a non-trivial F
    # r = f(x0) − F·x0 for a piecewise-linear network, and F·x0 + r = f(x0) is recorded
    net, x0 = _net("relu_pool_up"), _x0(img)
    np.testing.assert_array_equal(st.array("input"), x0[0].numpy())
    y0 = net(x0)[0].detach().numpy()
    r_oracle = y0 - np.einsum("bpqaij,aij->bpq", J, x0[0].numpy())
    np.testing.assert_allclose(st.array("residual"), r_oracle, atol=1e-12)
    np.testing.assert_allclose(st.array("output"), y0, atol=1e-12)
    assert np.abs(r_oracle).max() > 1e-3  # biases make r ≠ 0
    assert st.checks["reconstruction_rel"] < 1e-12


def test_rows_and_columns_agree_where_both_hold(tmp_path):
    # Windowed, same-size network: compare every entry of F stored by both a column and a row.
    st, img = _run(tmp_path, "relu_same", 7, 7, {"window": 5, "tile": 4}, {"window": 4, "tile": 4},
                   batch=12)
    cols, corg = st.group["columns"][...], st.group["columns_origin"][...]
    rows, rorg = st.group["rows"][...], st.group["rows_origin"][...]
    n_compared = 0
    for i in range(7):
        for j in range(7):
            oy, ox = corg[i, j]
            for y in range(5):
                for x in range(5):
                    p, q = oy + y, ox + x
                    ry, rx = rorg[p, q]
                    if ry <= i < ry + 4 and rx <= j < rx + 4:
                        # columns[i, j, a, b, y, x] vs rows[p, q, b, a, i - ry, j - rx]
                        np.testing.assert_allclose(
                            cols[i, j, :, :, y, x], rows[p, q, :, :, i - ry, j - rx].T, atol=1e-13)
                        n_compared += 1
    assert n_compared > 300
    J = _jacobian("relu_same", img)
    got = np.stack([st.column(2, 5)[a] for a in range(3)])  # (C, C', H', W'), zeros off-window
    oy, ox = corg[2, 5]
    np.testing.assert_allclose(got[:, :, oy:oy + 5, ox:ox + 5],
                               J[:, oy:oy + 5, ox:ox + 5, :, 2, 5].transpose(3, 0, 1, 2), atol=1e-12)
    # outside fraction: the part of the Jacobian column the window cut off
    colJ = J[:, :, :, 1, 2, 5]
    inside = np.square(colJ[:, oy:oy + 5, ox:ox + 5]).sum()
    np.testing.assert_allclose(st.outside("columns", 2, 5)[1], 1 - inside / np.square(colJ).sum(),
                               atol=1e-12)


def test_taylor_interpreter_of_a_smooth_network_is_its_jacobian(tmp_path):
    img = make_image(tmp_path / "img.png", 5, 5, seed=8)
    stores = {}
    for rule in ("taylor", "freeze"):
        cfg = write_config(
            tmp_path / f"{rule}.yaml", name=rule, model={"arch": f"python:{TINY}:tanh_net"},
            image="img.png", interpreter=rule, dtype="float64", batch=16,
            analyses={"residual": True, "columns": {"window": "full"}, "rows": False},
            output=str(tmp_path / "runs"),
        )
        r = cli("run", "-q", cfg)
        assert r.exit_code == 0, r.stderr
        stores[rule] = precompute.open_store(tmp_path / "runs" / f"{rule}.zarr")
    J = _jacobian("tanh_net", img).reshape(3 * 25, 3 * 25)
    np.testing.assert_allclose(stores["taylor"].dense(), J, atol=1e-12, rtol=0)
    assert stores["taylor"].attrs["interpreter"] == "taylor"
    # the frozen (gain) rule is a different interpreter: the key really reaches the engine
    assert np.abs(stores["freeze"].dense() - J).max() > 1e-3
