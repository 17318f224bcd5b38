"""`precompute run`: one store per (model, image), in stages a reader can follow.

    plan      inputs (model, image, x0), layouts, batch sizes, what is left to do, the estimate,
              the gate (:func:`precompute.run_stages.plan`; probing and batches
              :mod:`precompute.run_probing`, the gate :mod:`precompute.run_gate`)
    describe  the plan paragraph (``--dry-run`` stops here; :mod:`precompute.run_describe`)
    create    create the store under the lock (or adopt the existing one), remove leftovers
              (:func:`precompute.run_stages.create`; the checks of an existing store:
              :mod:`precompute.existing`)
    sweep     every planned tile of ``columns`` and ``rows`` (:mod:`precompute.sweep`)
    whole-F   analyses of F as a whole — ``svd`` (:mod:`precompute.svd`) and ``classify``
              (:mod:`precompute.classify`) — in the process of shard 0
    finish    timings and device into the store's attributes

This module runs those stages for every image of every config. The plan itself is a
:class:`precompute.run_plan.RunPlan`. A whole-F analysis is a
:class:`precompute.analysis.WholeF` registered in :data:`precompute.whole_f.REGISTRY` (planned,
describe, disk_bytes, done, run); it reads the run through
:func:`precompute.run_plan.run_context` only.

The plan of probes is :mod:`precompute.probes`, their execution :mod:`precompute.engine`, tile
assembly :mod:`precompute.assemble` and writing :mod:`precompute.writer`. A run killed at any
moment resumes with the same command, repeating exactly the same passes (bitwise-identical
results); progress is the set of tile shards on disk (docs/FORMAT.md).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Sequence

from precompute.config import Resolved
from precompute.errors import UserError
from precompute.existing import WHOLE_F, existing_attrs  # noqa: F401  (WHOLE_F re-exported)
from precompute.inputs import check_images, say
from precompute.text import fmt_bytes, fmt_time  # noqa: F401  (re-exported: precompute.run.fmt_bytes)
# the stages, re-exported: ``precompute.run`` stays the pipeline's one entry point
from precompute.run_plan import (_SUPPORTS, Options, RunPlan, run_context,  # noqa: F401
                                 whole_f_analyses)
from precompute.run_gate import _gate_interpreters, gate, gate_whole  # noqa: F401
from precompute.run_describe import describe
from precompute.run_stages import adopt_whole_f, create, finish, plan


def run_image(res: Resolved, image: Path, opts: Options) -> str:
    """Plan, create or resume, and sweep one store. Returns a one-line summary."""
    from precompute.sweep import open_writer, sweep

    rp = plan(res, image, opts)
    shard_n = rp.shard[1]
    if not opts.quiet or opts.dry_run:
        say(describe(rp))
    if opts.dry_run:
        return f"{rp.path}: dry run, nothing written"
    # whole-F analyses run in the process of shard 0 only
    whole = [w for w in whole_f_analyses(rp) if rp.shard[0] == 0]
    if rp.exists and all(not t for t in rp.todo.values()) and all(
            not rp.whole_f_pending(n) and mod.done(run_context(rp), acfg) for n, mod, acfg in whole):
        return (f"{rp.path}: already done (all planned tiles"
                f"{' of this shard' if shard_n > 1 else ''} are on disk)")
    create(rp)
    if whole:
        adopt_whole_f(rp)
    timings: dict[str, float] = {}
    if any(rp.todo.values()):
        writer = open_writer(rp)
        try:
            timings.update(sweep(rp, writer))
        finally:
            t0 = time.perf_counter()
            writer.close()  # finish queued tiles even on Ctrl-C: nothing computed is lost
            last = rp.layouts[-1].name
            if last in timings:
                timings[last] += time.perf_counter() - t0
    for name, mod, acfg in whole:
        if not mod.done(run_context(rp), acfg):
            timings[name] = mod.run(run_context(rp), acfg)
    finish(rp, timings)
    done = sum(len(t) for t in rp.todo.values())
    return f"{rp.path}: done ({done} tile(s) written{' by this shard' if shard_n > 1 else ''})"


def parse_shard(text: str | None) -> tuple[int, int]:
    """``I/N`` from --shard, else RANK/WORLD_SIZE (torchrun), else 0/1."""
    if text is None:
        from precompute.environment import env_shard

        return env_shard()
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UserError(f"--shard: expected I/N such as 0/2, got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise UserError(f"--shard: expected 0 ≤ I < N, got {text!r}")
    return (i, n)


def run(config_paths: str | os.PathLike | Sequence[str | os.PathLike], opts: Options) -> list[str]:
    """Every run of the configs (each one run, or a `runs:` list: docs/RUN.md), in order, in one
    process (one start-up of torch for all). Every config is read and validated first, and no
    two runs may write the same store; each image and store of a config with several runs or
    images is checked before any work. One line per store and summary."""
    from precompute.config import load_configs

    paths = [config_paths] if isinstance(config_paths, (str, os.PathLike)) else list(config_paths)
    files = [load_configs(p) for p in paths]
    _distinct_stores([res for configs in files for res in configs])
    for configs in files:
        for res in configs:
            if len(res.images) > 1 or len(configs) > 1:  # every image and store checked first
                check_images(res, always=len(configs) > 1)
                for image in res.images:
                    existing_attrs(res.store_path(image))
    lines = []
    for configs in files:
        for res in configs:
            lines += run_config(res, opts)
    return lines


def _distinct_stores(runs: list[Resolved]) -> None:
    """Refuse two runs (of one config or of several) that would write the same store or the
    same dataset summary: the second would refuse the first's store after its work, or
    silently replace its summary."""
    from precompute.classify import summary_path

    seen: dict[Path, str] = {}

    def claim(path: Path, who: str) -> None:
        path = path.resolve()
        if path in seen:
            raise UserError(f"{who} and {seen[path]} would both write {path}; give the runs "
                            "different names or outputs")
        seen[path] = who

    for res in runs:
        for image in res.images:
            claim(res.store_path(image), f"{res.config_path} (run {res.config.name}, {image.name})")
        if res.config.analyses.classify is not None and (len(res.images) > 1 or res.dataset):
            claim(summary_path(res), f"{res.config_path} (run {res.config.name}, its summary)")


def run_config(res: Resolved, opts: Options) -> list[str]:
    """The stores of one run, then its dataset summary (classifiers with several images)."""
    lines = [run_image(res, image, opts) for image in res.images]
    if res.config.analyses.classify is not None and not opts.dry_run and opts.shard[0] == 0:
        from precompute.classify import summarize  # Table 4 / Figure 8 over the images

        line = summarize(res)
        if line:
            lines.append(line)
    return lines
