"""The shipped image-to-image model (CycleGAN ResnetGenerator, ngf 16, instance norm): its
interpreter against an independent float64 oracle of the frozen system, its quality against
simple baselines (recomputed), its reproducibility and its example run.

With instance norm frozen at x0's statistics (paper Figure 2) F(x0) is *not* the Jacobian of the
network, so the oracle is the frozen system itself, built here without LinearScope: a copy of the
generator whose InstanceNorm layers divide by x0's standard deviations and subtract x0's means as
constants and whose Tanh is the constant gain tanh(a0)/a0 (ReLU masks are what autograd gives at
x0). That copy is affine in x; torch.func.jacrev gives its matrix F and its value at 0 gives r.
"""

from __future__ import annotations

import copy
import importlib.util
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from precompute import LinearInterpreter, open_store
from precompute.models import load_model
from precompute.models.cyclegan import SHIPPED_WEIGHTS, ResnetGenerator, expected_keys
from sweep_helpers import REPO, cli_subprocess

EXAMPLES = REPO / "examples"
IMAGE = EXAMPLES / "images" / "astronaut-32.png"  # 32×32: room for the crops below


def _train_module():
    spec = importlib.util.spec_from_file_location("train_toon", EXAMPLES / "train_toon.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class _FrozenNorm(nn.Module):
    """Instance norm with x0's per-channel mean and biased variance as constants."""

    def __init__(self, mean: torch.Tensor, var: torch.Tensor, eps: float):
        super().__init__()
        self.mean, self.std = mean, (var + eps).sqrt()

    def forward(self, x):
        return (x - self.mean) / self.std


class _FrozenGain(nn.Module):
    """A pointwise unit frozen as a constant gain: ReLU's mask, Tanh's chord tanh(a0)/a0 (§3)."""

    def __init__(self, gain: torch.Tensor):
        super().__init__()
        self.gain = gain

    def forward(self, x):
        return self.gain * x


def frozen_copy(net: nn.Module, x0: torch.Tensor) -> nn.Module:
    """The generator with every InstanceNorm2d, ReLU and Tanh frozen at x0: an affine module."""
    seen: dict[str, torch.Tensor] = {}
    units = (nn.InstanceNorm2d, nn.Tanh, nn.ReLU)
    hooks = [m.register_forward_pre_hook(lambda m, i, name=name: seen.__setitem__(name, i[0].clone()))
             for name, m in net.named_modules() if isinstance(m, units)]
    with torch.no_grad():
        net(x0)
    for h in hooks:
        h.remove()
    frozen = copy.deepcopy(net)
    for name, m in list(frozen.named_modules()):
        if name not in seen:
            continue
        a0 = seen[name]
        if isinstance(m, nn.InstanceNorm2d):
            new = _FrozenNorm(a0.mean(dim=(2, 3), keepdim=True),
                              a0.var(dim=(2, 3), unbiased=False, keepdim=True), m.eps)
        elif isinstance(m, nn.ReLU):
            new = _FrozenGain((a0 > 0).to(a0.dtype))  # the mask of x0
        else:
            assert not (a0 == 0).any()  # the chord needs a0 ≠ 0 (true for this image)
            new = _FrozenGain(torch.tanh(a0) / a0)
        parent, _, child = name.rpartition(".")
        setattr(frozen.get_submodule(parent), child, new)
    assert sum(isinstance(m, _FrozenNorm) for m in frozen.modules()) == 3 + 2 * net.n_blocks + 2
    assert not any(isinstance(m, units) for m in frozen.modules())
    return frozen


def _shipped(h: int, w: int):
    spec = load_model("cyclegan", checkpoint=SHIPPED_WEIGHTS)
    net = spec.module.double()
    x0 = spec.prepare(Image.open(IMAGE)).x0.double()[..., 8:8 + h, 10:10 + w].contiguous()
    return spec, net, x0


def test_shipped_file_is_a_small_upstream_generator():
    assert SHIPPED_WEIGHTS.stat().st_size <= 2_000_000
    sd = torch.load(SHIPPED_WEIGHTS, weights_only=True)
    # upstream's key names and shapes (ConvTranspose weights [in, out, k, k]), at ngf 16, 4 blocks
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected_keys(ngf=16, n_blocks=4)
    assert sd["model.1.weight"].shape == (16, 3, 7, 7) and "model.14.conv_block.5.weight" not in sd
    spec = load_model("cyclegan", checkpoint=SHIPPED_WEIGHTS)
    assert (spec.kind, spec.scale, spec.value_range, spec.size_multiple) == ("image", 1.0, (-1.0, 1.0), 4)
    assert "resnet_4blocks generator, ngf 16 (toon)" in spec.description
    kinds = {type(m) for m in spec.module.modules()}
    assert {nn.ReflectionPad2d, nn.InstanceNorm2d, nn.ConvTranspose2d, nn.Tanh, nn.ReLU} <= kinds
    assert [c.stride for c in spec.module.modules() if type(c) is nn.Conv2d].count((2, 2)) == 2


def test_size_is_read_from_the_file(tmp_path):
    """ngf and the number of blocks come from the state dict; the same loader takes them all."""
    for ngf, blocks in ((8, 2), (12, 6)):
        torch.manual_seed(0)
        ref = ResnetGenerator(ngf=ngf, n_blocks=blocks)
        torch.save(ref.state_dict(), tmp_path / "g.pth")
        spec = load_model("cyclegan", checkpoint=tmp_path / "g.pth")
        assert len(spec.module.model) == 19 + blocks and spec.module.n_blocks == blocks
        x = torch.rand(1, 3, 12, 8) * 2 - 1
        with torch.no_grad():
            assert torch.equal(spec.module(x), ref.eval()(x))


def test_interpreter_is_the_frozen_system_float64():
    """Every column and row of F, and r, against jacrev / the value at 0 of the frozen copy."""
    _, net, x0 = _shipped(16, 12)
    frozen = frozen_copy(net, x0)
    with torch.no_grad():
        y0 = net(x0)
        assert (frozen(x0) - y0).abs().max() <= 1e-12  # the oracle is the frozen system at x0
        r_ref = frozen(torch.zeros_like(x0))[0]
    F_ref = torch.func.jacrev(lambda x: frozen(x))(x0).reshape(y0.numel(), x0.numel())
    li = LinearInterpreter(net, x0, batch=64)
    n = x0.numel()
    cols = li.columns(range(n)).reshape(n, -1).T  # (N, n)
    rows = li.rows(range(n)).reshape(n, -1)       # (N, n)
    scale = F_ref.abs().max()
    assert (cols - F_ref).abs().max() <= 1e-10 * scale
    assert (rows - F_ref).abs().max() <= 1e-10 * scale
    assert (li.residual - r_ref).abs().max() <= 1e-10 * r_ref.abs().max()
    c = li.check()
    # Requirement (3), x1 = x0 gives y0, to float64 round-off: a frozen instance norm computes
    # x1/σ0 − μ0/σ0 (linear part plus offset, kept apart for the probes), not (x1 − μ0)/σ0.
    assert c["requirement3_rel"] <= 1e-13
    assert c["reconstruction_rel"] < 1e-12
    # Frozen statistics are not derivatives: F differs from the network's Jacobian.
    J = torch.func.jacrev(lambda x: net(x))(x0).reshape(y0.numel(), n)
    assert (J - F_ref).abs().max() > 1e-2 * scale


def test_filters_are_global_and_the_residual_large():
    """What the page text points at, on toon.yaml's 16×16 face: a pixel's row reaches the whole
    image (no zero coefficient, a sizeable part far from the pixel), and r(x0) is a large part of
    the output."""
    spec = load_model("cyclegan", checkpoint=SHIPPED_WEIGHTS)
    net = spec.module.double()
    x0 = spec.prepare(Image.open(EXAMPLES / "images" / "astronaut-16.png")).x0.double()
    li = LinearInterpreter(net, x0, batch=64)
    row = li.rows([256 + 8 * 16 + 8]).reshape(3, 16, 16).abs().amax(0)  # G channel, pixel (8, 8)
    assert (row > 0).all()
    far = row.clone()
    far[4:13, 4:13] = 0  # more than 4 pixels away
    assert far.max() > 1e-2 * row.max()
    assert li.residual.abs().max() > li.output.abs().max()


def test_quality_is_the_readme_figure_and_beats_the_baselines():
    """Held-out PSNR recomputed with the training script's own data and baselines."""
    pytest.importorskip("skimage", reason="scikit-image is in the test extras")
    train = _train_module()
    photos, toons = train.training_crops(1024, np.random.default_rng(0))
    s = train.scores(load_model("cyclegan", checkpoint=SHIPPED_WEIGHTS).module, train.fit_affine(photos, toons))
    text = (EXAMPLES / "README.md").read_text()
    m = re.search(r"held-out PSNR: network ([\d.]+) dB, identity ([\d.]+) dB, affine colour map "
                  r"([\d.]+) dB", text)
    assert m, "examples/README.md does not state the toon model's held-out PSNR"
    assert (f"{s['network']:.2f}", f"{s['identity']:.2f}", f"{s['affine']:.2f}") == m.groups()
    assert s["network"] > max(s["identity"], s["affine"]) + 1.0, s
    assert not set(train.TRAIN) & set(train.HELD_OUT) and "astronaut" in train.HELD_OUT


@pytest.mark.slow
def test_training_script_reproduces_the_shipped_weights(tmp_path):
    pytest.importorskip("skimage", reason="scikit-image is in the test extras")
    out = tmp_path / "toon.pt"
    proc = subprocess.run([sys.executable, str(EXAMPLES / "train_toon.py"), "--out", str(out),
                           "--images", str(tmp_path / "img")],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr
    printed = re.search(r"held-out PSNR: .* dB", proc.stdout).group(0)
    assert printed in (EXAMPLES / "README.md").read_text()
    new = torch.load(out, weights_only=True)
    old = torch.load(SHIPPED_WEIGHTS, weights_only=True)
    assert list(new) == list(old)
    for k in old:
        assert new[k].dtype == old[k].dtype and torch.equal(new[k], old[k]), k
    assert [p.name for p in (tmp_path / "img").iterdir()] == ["astronaut-16.png"]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "img" / "astronaut-16.png")),
                          np.asarray(Image.open(EXAMPLES / "images" / "astronaut-16.png")))


def test_example_config_end_to_end(tmp_path):
    """examples/toon.yaml as shipped (16×16, full windows, SVD): run, verify, build; the explorer
    and SVD pages of an I2I run say what to look for."""
    import yaml
    from click.testing import CliRunner

    from sitegen.cli import main as sitegen

    cfg = yaml.safe_load((EXAMPLES / "toon.yaml").read_text())
    assert cfg["model"] == {"arch": "cyclegan", "checkpoint": "weights/toon.pt"}
    assert cfg["analyses"]["svd"] == {"k": 16} and cfg["image"] == "images/astronaut-16.png"
    # one thread: two would only contend on the 2-core test machine (the result is the same)
    proc = cli_subprocess("run", EXAMPLES / "toon.yaml", "-q", cwd=tmp_path,
                          env_extra={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    store = tmp_path / "runs" / f"{cfg['name']}.zarr"
    st = open_store(store)
    assert st.attrs["checks"]["requirement3_rel"] < 1e-5 and st.svd_attrs["k"] == 16
    for name in ("columns", "rows"):
        assert not np.isnan(st.group[name][...]).any(), name
    verify = cli_subprocess("verify", store, "--samples", "4", cwd=tmp_path)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    result = CliRunner().invoke(sitegen, ["build", str(tmp_path / "runs"), "-o", str(tmp_path / "site"),
                                          "--quiet"])
    assert result.exit_code == 0, result.output
    explorer = (tmp_path / "site" / "explorer" / f"{cfg['name']}.html").read_text()
    svd = (tmp_path / "site" / "svd" / f"{cfg['name']}.html").read_text()
    assert "Image-to-image: what to look for" in explorer and "off-diagonal" in explorer
    assert "Image-to-image: what to look for" in svd and "less\nsparse" in svd
