"""The run-time gate (docs/INTERPRETER.md): the interpreter's identities (requirement (3),
F·x0 + r = f(x0), linearity, adjoint; paper eq. 2-6) measured before anything is written, on the
whole image or on two halo crops of it; one above its tolerance stops the run with one line."""

from __future__ import annotations


import torch

from precompute.errors import UserError
from precompute.inputs import first_line
from precompute.run_plan import RunPlan


def gate(rp: RunPlan) -> dict:
    """The run-time gate (docs/INTERPRETER.md): the interpreter's identities, measured before
    anything is written; one above its tolerance stops the run with one line.

    When the support was analysed on a small image, every identity is measured on two halo
    crops of x0 (top-left and bottom-right, each an image with its edges; f(x0) of the plain
    model on the crop as the reference) — a network with a bounded support computes every unit
    on a crop as on the image — and those about the stored f(x0) and r(x0) again on the whole
    image by :func:`gate_whole` (a real run, not ``--dry-run``). Otherwise on the whole image."""
    rp.get_engine(max(rp.batches.values(), default=1))
    lis = _gate_interpreters(rp)
    if lis == [rp.li]:
        from precompute import memory

        x0 = rp.prep.x0
        memory.check_gate(rp.prep.memory, device=rp.device, what=f"{rp.prep.spec.model_id} on x0 "
                          f"{'×'.join(map(str, x0.shape[1:]))}")
        rp.whole_checked = True
        return {k: float(v) for k, v in
                _gated(rp, lambda: rp.li.enforce(rp.li.check(seed=0, reference=rp.y0))).items()}
    worst: dict[str, float] = {}
    for li in lis:
        def measure(li=li):
            with torch.no_grad():
                ref = rp.prep.spec.module(li.x0)
            return li.enforce(li.check(seed=0, reference=ref))

        worst = {k: max(float(v), worst.get(k, 0.0)) for k, v in _gated(rp, measure).items()}
    return worst


def gate_whole(rp: RunPlan) -> dict:
    """The identities about f(x0) and r(x0) as stored (F·x0 + r = f(x0), the scope's f(x0)
    against the plain model's), on the whole image: one constants pass and one pass of x0."""
    rp.get_engine(max(rp.batches.values(), default=1))
    rp.whole_checked = True
    return {k: float(v) for k, v in
            _gated(rp, lambda: rp.li.enforce(rp.li.check_whole(reference=rp.y0))).items()}


def _gate_interpreters(rp: RunPlan) -> list:
    """The interpreters :func:`gate` checks: of x0's top-left and bottom-right crops of the
    small image's size (on the translation lattice: its side ≡ the image's mod the period), or
    of the whole image."""
    from precompute import halo

    small = rp.support_small if rp.support is not None and not rp.support.is_global else None
    if small is None or tuple(small.in_hw) == tuple(rp.in_shape[1:]):
        return [rp.li]
    (h, w), (H, W) = small.in_hw, rp.in_shape[1:]
    s = halo._fraction(rp.scale)
    out = []
    for y0, x0 in ((0, 0), (H - h, W - w)):
        oy, ox = y0 * s, x0 * s
        if oy.denominator != 1 or ox.denominator != 1:
            return [rp.li]
        crop = halo.Crop(y0, y0 + h, x0, x0 + w, int(oy), int(ox), (0, 0, 0, 0))
        out.append(_gated(rp, lambda crop=crop: halo.crop_engine(rp.engine, crop)).li)
    return out


def _gated(rp: RunPlan, measure):
    """``measure()`` with the gate's failures as one-line UserErrors."""
    from precompute.interpreter import IdentityError
    from precompute.scope import ScopeError

    try:
        return measure()
    except IdentityError as e:
        raise UserError(f"{e.summary}; run `precompute audit {rp.res.config_path}` to list every "
                        "intercepted call") from None
    except ScopeError:
        raise
    except torch.OutOfMemoryError:
        raise UserError("out of memory while checking the interpreter's identities (passes of "
                        "up to 4 probes): free device memory or use a smaller crop") from None
    except Exception as e:  # noqa: BLE001 — a failed check must not hide the cause
        raise UserError(f"the interpreter's self-check failed: {first_line(e)}") from None
