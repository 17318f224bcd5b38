"""The plan paragraph (``precompute run --dry-run`` stops after it): what will be computed, how,
and about how long."""

from __future__ import annotations


from precompute import compressed as Cm
from precompute import layout as L
from precompute.inputs import describe_device
from precompute.text import fmt_bytes, fmt_time
from precompute.run_plan import RunPlan, run_context, whole_f_analyses
from precompute.run_probing import largest_crop


def _about(s: float) -> str:
    return fmt_time(s) if s < 1 else f"about {fmt_time(s)}"


def describe(rp: RunPlan) -> str:
    """The plan as one paragraph: what will be computed, how, and about how long."""
    c, cfg, spec = rp.res.config, rp.cfg, rp.prep.spec
    shard_i, shard_n = rp.shard
    mode = ("resuming" if rp.exists
            else ("overwriting" if rp.path.exists() and rp.opts.overwrite else "creating"))
    lines = [
        f"{mode} {rp.path}: {spec.model_id} on {rp.image.name}"
        + (f" crop {cfg['crop']}" if cfg.get("crop") else "")
        + f", x0 {'×'.join(map(str, rp.in_shape))} → f(x0) {'×'.join(map(str, rp.out_shape))},"
        + f" {c.interpreter} interpreter, {c.dtype} on {describe_device(rp.device)}"
        + (f", shard {shard_i}/{shard_n}" if shard_n > 1 else "") + "."
    ]
    if rp.layouts:
        lines.append(_describe_support(rp))
    for lay in rp.layouts:
        n_pl = len(rp.planned[lay.name])
        lines.append(
            f"{lay.name}: window {lay.window[0]}×{lay.window[1]}{' (full)' if lay.full else ''}, "
            f"{len(rp.todo[lay.name])} of {n_pl} tiles of {lay.tile}×{lay.tile} px to do"
            + (f" (this process's share: {len(rp.mine[lay.name])})" if shard_n > 1 else "")
            + f", {rp.filters_todo[lay.name]:,} filters: " + _describe_method(rp, lay)
            + (f", {_about(rp.estimate[lay.name])}" if lay.name in rp.estimate else "")
            + "."
        )
    whole = whole_f_analyses(rp)
    for _name, mod, acfg in whole:
        lines.append(mod.describe(run_context(rp), acfg))
    # the whole-F analyses state their passes above; only the per-pixel sweep is timed ahead
    what = " of the rows and columns" if whole and rp.layouts else ""
    lines.append(
        f"To write: {fmt_bytes(rp.bytes_todo)} before compression ({fmt_bytes(rp.free)} free); "
        f"estimated compute time{what} {fmt_time(sum(rp.estimate.values()))}"
        + (f" (the {', '.join(n for n, _, _ in whole)} passes above come on top)" if what else "")
        + "."
    )
    return " ".join(lines)


def _describe_support(rp: RunPlan) -> str:
    if rp.res.config.probing == "single" and rp.support is None:
        return "Probing: one impulse per probe (probing: single)."
    sup = rp.support
    if sup is None:
        return "Probing: as recorded in the store."
    small = next((n for n in sup.notes if n.startswith("analysed on a")), None)
    found = (f"(found with {sup.probes} line probes in {fmt_time(sup.seconds)}"
             + (f", {small}" if small else "") + ")")
    if sup.is_global:
        return (f"Probing: one impulse per probe, the structural support is global {found}: "
                f"{sup.global_reason}.")
    (ry, rx), (cy, cx) = sup.period_in, sup.period_out
    return (f"Structural support {found}: a row reaches at most {ry}×{rx} input px, a column "
            f"{cy}×{cx} output px.")


def _describe_method(rp: RunPlan, lay: L.Layout) -> str:
    plan = rp.probing[lay.name]
    k, probes, passes = rp.batches[lay.name], rp.probes_todo[lay.name], rp.passes_todo[lay.name]
    costs = rp.probing_costs.get(lay.name, {})
    direction = "forward" if plan.kind == "columns" else "backward"
    if plan.method == "single":
        how = f"one impulse per probe, {probes:,} {direction} probes"
    else:
        what = ("compressed probes" if plan.method == "compressed"
                else "read out of columns (no backward pass)")
        side = largest_crop(rp, lay, plan)
        on = (f" on halo crops of x0 of ≤ {side[0]}×{side[1]} input px (crops start on "
              f"multiples of {plan.crop} px)" if side else "")
        how = (f"{what}, period {plan.period[0]}×{plan.period[1]} px, blocks of "
               f"{plan.block}×{plan.block} tiles ({len(rp.todo_blocks[lay.name])} to do){on}: "
               f"{probes:,} {direction} probes")
    how += f" in {passes:,} pass{'' if passes == 1 else 'es'} of ≤ {k}"
    if plan.method != "single" and "single" in costs:
        n_single = int(costs["single"] / (1 if lay.name == "columns" else Cm.BACKWARD_COST))
        how += f" (one impulse per probe: {n_single:,} {lay.name[:-1]} probes)"
    return how
