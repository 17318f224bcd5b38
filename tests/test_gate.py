"""The run-time gate: LinearInterpreter.verify() and `precompute run` refuse an interpreter that
fails one of its identities, and stay silent on every correct zoo model in float32.

Broken rules are made on purpose by monkeypatching precompute.rules.RULES: each breaks a
different identity, so the test also shows which identity is the net for which kind of bug.
"""

from __future__ import annotations

import dataclasses
import re
import warnings

import pytest
import torch
from torch import nn

from precompute import LinearInterpreter, rules
from precompute.interpreter import IDENTITIES, IdentityError, gate_tolerance
from precompute.models import load_model
from sweep_helpers import cli, make_image, write_config


class ClampNet(nn.Module):
    """conv, clamp (saturating: c(x0) ≠ 0 where it saturates), sigmoid, conv."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 3, 3, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))

    def forward(self, x):
        return self.c2(torch.sigmoid(self.c1(x).clamp(-0.5, 0.5)))


def build():  # for python:test_gate.py:build
    return ClampNet().eval()


def _broken(family: str, change):
    """RULES with ``family``'s freeze rule post-processed by ``change(frozen) -> frozen``."""
    original = rules.RULES[family]

    def freeze(call):
        return change(original.freeze(call))

    return {**rules.RULES, family: dataclasses.replace(original, freeze=freeze)}


BROKEN = {
    # a forgotten c(x0): the clamp's saturation constant is lost (on x0's row too, since the
    # rule runs on the whole batch): the scope's f(x0) is no longer the model's
    "dropped_offset": ("piecewise_linear", lambda f: dataclasses.replace(f, offset=None),
                       "output_rel"),
    # a wrong A(x0): 10 % too much gain in every sigmoid (y0 stays right, the probes do not)
    "wrong_gain": ("smooth", lambda f: dataclasses.replace(
        f, linear=lambda x1, lin=f.linear: 1.1 * lin(x1)), "requirement3_rel"),
    # a path hidden from autograd: columns right, rows miss the unit
    "detached_path": ("smooth", lambda f: dataclasses.replace(
        f, linear=lambda x1, lin=f.linear: lin(x1.detach())), "adjoint_rel"),
}


@pytest.mark.parametrize("bug", sorted(BROKEN))
def test_gate_trips_on_a_broken_rule(monkeypatch, bug):
    family, change, identity = BROKEN[bug]
    x0 = torch.rand(1, 3, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    model = ClampNet().double().eval()
    assert LinearInterpreter(model, x0).verify()  # correct rules: silent
    monkeypatch.setattr(rules, "RULES", _broken(family, change))
    li = LinearInterpreter(model, x0)
    with pytest.raises(IdentityError) as err:
        li.verify()
    e = err.value
    assert e.identity == identity, str(e)
    assert e.value > 1e3 * e.tolerance  # not a round-off question
    assert e.tolerance == gate_tolerance(torch.float64)
    assert f"{identity} = " in str(e) and "tolerance" in str(e) and "audit" in str(e)
    assert "\n" not in str(e)


def test_check_reports_every_identity_and_verify_returns_them():
    x0 = torch.rand(1, 3, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    model = ClampNet().double().eval()
    li = LinearInterpreter(model, x0)
    checks = li.verify()  # without a reference: the plain model's f(x0) is computed
    assert set(IDENTITIES) <= set(checks)
    assert all(v < 1e-13 for k, v in checks.items() if k in IDENTITIES), checks
    assert "output_rel" not in li.check()  # no reference given
    # the output identity compares with the plain model: a wrong reference trips it
    with pytest.raises(IdentityError, match="output_rel"):
        li.verify(reference=li.output * 1.01)


def test_gate_stops_precompute_run_with_one_line_before_writing(tmp_path, monkeypatch):
    make_image(tmp_path / "img.png", 5, 5, seed=4)
    cfg = write_config(tmp_path / "c.yaml", name="gate", model={"arch": f"python:{__file__}:build"},
                       image="img.png", dtype="float64", batch=8,
                       analyses={"residual": True, "columns": {"window": "full"}},
                       output=str(tmp_path / "runs"))
    monkeypatch.setattr(rules, "RULES", _broken(*BROKEN["dropped_offset"][:2]))
    r = cli("run", cfg)
    assert r.exit_code == 2, r.output + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert re.fullmatch(
        r"error: the interpreter fails f\(x0\) of the scope = f\(x0\) of the plain model: output_rel = "
        r"\S+ > tolerance \S+ \(float64\), so some op is not frozen faithfully; run `precompute "
        rf"audit {re.escape(str(cfg))}` to list every intercepted call", lines[0]), lines[0]
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir())  # nothing written, not even the lock
    monkeypatch.undo()
    r = cli("run", "-q", cfg)  # the same run with the real rules goes through
    assert r.exit_code == 0, r.stderr
    from precompute import open_store

    checks = open_store(tmp_path / "runs" / "gate.zarr").checks
    assert set(IDENTITIES) <= set(checks) and max(checks[k] for k in IDENTITIES) < 1e-13


# Every fixed zoo model, and the deepest classifier of each torchvision family (round-off grows
# with depth; the shallower variants run the same ops: all 21 pass too, but take ~6 min on two
# cores — benchmarks/gate_margins.py measures them).
DEEPEST = ["alexnet", "vgg19_bn", "resnet152", "squeezenet1_1", "densenet201", "inception_v3"]
ZOO = ["bicubic", "pixelshuffle", "edsr-baseline", "edsr", "cyclegan"] + [
    f"torchvision:{n}" for n in DEEPEST]
SIDE = {"torchvision:inception_v3": 75, "torchvision:alexnet": 63, "edsr": 8, "edsr-baseline": 16,
        "cyclegan": 16}


@pytest.mark.slow
@pytest.mark.parametrize("arch", ZOO)
def test_gate_is_silent_on_every_zoo_model_in_float32(arch):
    """Random weights, small inputs in each model's value range, float32: every identity stays
    below the gate's tolerance (benchmarks/gate_margins.py prints the margins)."""
    scale = {"bicubic": 2, "pixelshuffle": 3, "edsr-baseline": 2, "edsr": 2}.get(arch)
    spec = load_model(arch, scale=scale, random_weights=True)
    lo, hi = spec.value_range
    side = SIDE.get(arch, 32)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(1, spec.in_channels, side, side, generator=g) * (hi - lo) + lo
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        li = LinearInterpreter(spec.module.float().eval(), x0, batch=8)
        checks = li.verify()
    worst = max(checks[k] for k in IDENTITIES)
    assert worst < gate_tolerance(torch.float32) / 100, checks  # a margin of 100 at least
