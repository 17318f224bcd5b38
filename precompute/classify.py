"""`analyses.classify`: the classifier analyses of the paper (§4 Case 1, §8.A), into ``classify/``.

For the top_k scores of a vector model (scores before any softmax):

* the class rows ``F[k, :]`` and the split of each score into the input term F·x0 and the
  residual r, with the residual share of Tables 3–4;
* the layer-wise contributions of Theorem 1 (eq. 8/16; Figures 4 and 8): one term per place where
  the frozen system adds a constant (:mod:`precompute.contributions`);
* the pixel discussions of eq. 18 and the pixel votes over all K labels (Figures 3, 9;
  :mod:`precompute.discussions`);
* with ``adversarial: {fgsm_eps: ε}``, the same on an FGSM copy of x0 (Figure 10,
  :mod:`precompute.fgsm`) under ``classify/adversarial/``.

A whole-F analysis of :mod:`precompute.run` (``planned``/``describe``/``done``/``run``): it runs in
the process of shard 0, writes its arrays and then marks its group complete in one atomic write of
the group's attributes, so a killed run redoes it whole (docs/FORMAT.md, "Classifier analyses").
With several images, :func:`summarize` writes the dataset summary (Table 4, Figure 8).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from precompute import store as S
from precompute import store_create as SC
from precompute.tile_store import open_tiles
from precompute.analysis import RunContext, WholeF, group_complete
from precompute.config import ClassifyConfig
from precompute.errors import StoreError, UserError
from precompute.contributions import decompose
from precompute.discussions import discussions, pixel_votes, row_chunks
from precompute.engine import CPU_MAX_BATCH, Engine, choose_batch, is_oom

GROUP = "classify"
ADVERSARIAL = "classify/adversarial"
SUMMARY_SUFFIX = ".summary.zarr"

#: The residual share of Tables 3–4 (FORMAT.md): the residual's part of the score's two parts.
SHARE_RULE = "|r| / (|F·x0| + |r|); NaN when both are 0"


def conservation_tolerance(dtype: torch.dtype) -> float:
    """Largest |input + Σ terms − score| / (|input| + Σ|terms|) accepted before refusing to
    store: rounding is orders of magnitude below it, a constant the scope missed far above."""
    return 1e-9 if dtype == torch.float64 else 1e-3


# ---------------------------------------------------------------------------------------------
# The analyses of one x0.


@dataclass
class Result:
    arrays: dict[str, np.ndarray]
    attrs: dict


def top_labels(scores: torch.Tensor, k: int) -> list[int]:
    """The k largest scores, decreasing; ties in favour of the lower label index."""
    order = torch.sort(-scores.detach().cpu().double(), stable=True).indices
    return [int(i) for i in order[:k]]


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def residual_share(input_term: np.ndarray, residual: np.ndarray) -> np.ndarray:
    """|r| / (|F·x0| + |r|), NaN where both parts are 0 (FORMAT.md)."""
    a, b = np.abs(input_term), np.abs(residual)
    den = a + b
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, b / np.where(den > 0, den, 1), np.nan)


def analyse(model, x0: torch.Tensor, scores: torch.Tensor, top_k: int, rule: str,
            rows_engine: Engine, chunk: int) -> Result:
    """Every classifier analysis of one x0 ``(1, C, H, W)`` whose plain scores are ``scores``."""
    K = int(scores.numel())
    top = top_labels(scores, top_k)
    try:
        d = decompose(model, x0, top, rule=rule)
    except Exception as e:
        if is_oom(e):
            raise UserError(f"out of memory in the contributions pass ({top_k + 1} probes): lower "
                            "analyses.classify.top_k or use another device") from None
        raise
    top_t = torch.as_tensor(top, device=scores.device)
    s_top = scores[top_t]
    error = (d.input_term + d.contributions.sum(1) - s_top).abs()
    rel = error / d.conservation_scale.clamp_min(torch.finfo(x0.dtype).tiny)
    if float(rel.max()) > conservation_tolerance(x0.dtype):
        k = int(rel.argmax())
        raise UserError(
            f"the layer-wise terms of label {top[k]} do not add up to its score (relative error "
            f"{float(rel[k]):.2e}): a constant of the frozen system was not observed; nothing of "
            "analyses.classify was stored (please report this model)")
    pd, alpha = discussions(x0[0], d.rows, d.back_projection, d.output_constant[top_t], s_top)
    known = {k: d.rows[i] for i, k in enumerate(top)}
    votes = pixel_votes(x0[0], d.back_projection, d.output_constant, scores,
                        row_chunks(K, known, lambda labels: rows_engine.probe(labels, "rows"),
                                   chunk))
    np_ = _numpy
    votes_np = np_(votes).astype(np.int32)
    input_term, residual = np_(d.input_term), np_(d.residual)
    arrays = {
        "scores": np_(scores),
        "top": np.asarray(top, np.int32),
        "rows": np_(d.rows),
        "input_term": input_term,
        "residual": residual,
        "residual_share": residual_share(input_term, residual).astype(input_term.dtype),
        "contributions": np.concatenate([input_term[:, None], np_(d.contributions)], 1),
        "discussions": np_(pd),
        "discussion_factor": np_(alpha),
        "back_projection": np_(d.back_projection),
        "output_constant": np_(d.output_constant),
        "votes": votes_np,
        "vote_counts": np.bincount(votes_np[votes_np >= 0].ravel(), minlength=K).astype(np.int32),
        "vote_masks": np.stack([votes_np == k for k in top]),
    }
    attrs = {
        "top_k": len(top),
        "terms": ["input"] + d.terms,
        "conservation": {"max_abs": float(error.max()), "max_rel": float(rel.max()),
                         "per_label_abs": [float(v) for v in error]},
    }
    return Result(arrays, attrs)


# ---------------------------------------------------------------------------------------------
# The store.


def write_group(path: Path, name: str, arrays: dict[str, np.ndarray], attrs: dict) -> None:
    """(Re)create group ``name`` of the store at ``path`` with ``arrays``, then mark it complete
    with one atomic write of its attributes (``complete: true`` last)."""
    tiles = open_tiles(path)
    tiles.remove(name)
    root = tiles.group("r+")
    g = root.create_group(name, attributes={})
    for key, arr in arrays.items():
        fill = _fill(arr.dtype)
        a = g.create_array(key, shape=arr.shape, chunks=arr.shape, dtype=arr.dtype,
                           fill_value=fill, compressors=SC.codecs(),
                           attributes={"terms": attrs["terms"]} if key == "contributions" else None)
        a[...] = arr
    g.attrs.put(dict(attrs, complete=True))


def _settings(ctx: RunContext, cfg: ClassifyConfig) -> tuple[int, int]:
    """(K, top_k) of this run; refuses image models."""
    if not ctx.vector:
        raise UserError(f"analyses.classify applies to classifiers (vector models); "
                        f"{ctx.prep.spec.model_id} is an image model")
    K = int(ctx.out_shape[0])
    return K, min(cfg.top_k, K)


def _image_norm(ctx: RunContext) -> tuple[torch.Tensor, torch.Tensor]:
    norm = ctx.prep.spec.image_norm()
    if norm is None:
        raise UserError(f"analyses.classify.adversarial: {ctx.prep.spec.model_id} does not declare "
                        "how x0 relates to the image in [0, 1] (ModelSpec.pixel_norm), which the "
                        "FGSM step needs")
    mean, std = (torch.tensor(v, dtype=torch.float64).view(-1, 1, 1) for v in norm)
    return mean, std


def _check(ctx: RunContext, cfg: ClassifyConfig) -> tuple[int, int]:
    K, top_k = _settings(ctx, cfg)
    if cfg.adversarial is not None:
        _image_norm(ctx)
        if cfg.adversarial.label is not None and cfg.adversarial.label >= K:
            raise UserError(f"analyses.classify.adversarial.label {cfg.adversarial.label} is not "
                            f"a label of this model (0 … {K - 1})")
    return K, top_k


def _interpreter(ctx: RunContext, x0: torch.Tensor, batch: int):
    from precompute.interpreter import LinearInterpreter

    c = ctx.config
    return LinearInterpreter(ctx.prep.spec.module, x0, rule=c.interpreter, batch=batch,
                             exact=c.precision == "ieee")


def _choose_batch(ctx: RunContext, K: int) -> int:
    """Rows per backward pass of the votes over all labels: the config's, or from free memory."""
    c = ctx.config
    if c.batch != "auto":
        return int(c.batch)
    if ctx.device.type != "cuda":
        return choose_batch(_Probe(ctx), "rows", K, ctx.prep.spec.module, ctx.prep.x0)
    eng = Engine(_interpreter(ctx, ctx.prep.x0, 2), ctx.device, ctx.prep.dtype)
    return choose_batch(eng, "rows", K, ctx.prep.spec.module, ctx.prep.x0)


class _Probe:
    """What :func:`choose_batch` reads of an engine on a CPU (the device only)."""

    def __init__(self, ctx):
        self.device = ctx.device


def _votes_batch(ctx: RunContext, K: int) -> int:
    """Rows per backward pass of the votes: the config's ``batch``, else the one recorded when
    the store was created (a resumed run repeats the same passes)."""
    if ctx.config.batch != "auto":
        return int(ctx.config.batch)
    a = ctx.tiles.read_attrs().get("analyses", {}).get(GROUP, {})
    return int(a.get("batch") or min(CPU_MAX_BATCH, K))


# ---------------------------------------------------------------------------------------------
# The whole-F analysis (precompute.analysis; registered in precompute.whole_f).


def planned(ctx: RunContext, cfg: ClassifyConfig) -> dict:
    K, top_k = _check(ctx, cfg)
    return {"top_k": top_k, "labels": K,
            "adversarial": None if cfg.adversarial is None else cfg.adversarial.model_dump(),
            "batch": _choose_batch(ctx, K)}


def describe(ctx: RunContext, cfg: ClassifyConfig) -> str:
    K, top_k = _check(ctx, cfg)
    text = (f"classify: the top {top_k} of {K} scores — class rows, residual shares, layer-wise "
            f"contributions and pixel discussions (one backward pass), pixel votes over all {K} "
            f"labels ({K - top_k} more rows)")
    if cfg.adversarial is not None:
        a = cfg.adversarial
        text += (f"; the same on an FGSM copy of x0 (ε = {a.fgsm_eps:g} in [0, 1] pixels, true "
                 f"label {a.label if a.label is not None else 'the clean top-1'})")
    return text + "."


def done(ctx: RunContext, cfg: ClassifyConfig) -> bool:
    if not group_complete(ctx.tiles, GROUP):
        return False
    return cfg.adversarial is None or group_complete(ctx.tiles, ADVERSARIAL)


def run(ctx: RunContext, cfg: ClassifyConfig) -> float:
    """Compute and write ``classify/`` (and ``classify/adversarial/``); returns seconds."""
    from precompute.text import say

    t0 = time.perf_counter()
    K, top_k = _check(ctx, cfg)
    spec, prep = ctx.prep.spec, ctx.prep
    model, x0 = spec.module, prep.x0
    rule = ctx.config.interpreter
    chunk = _votes_batch(ctx, K)
    labels = spec.labels or [str(k) for k in range(K)]
    common = {"labels": [str(v) for v in labels], "share_rule": SHARE_RULE}
    clean_top1 = top_labels(ctx.y0[0], 1)[0]
    if not group_complete(ctx.tiles, GROUP):
        eng = Engine(_interpreter(ctx, x0, chunk), ctx.device, prep.dtype)
        res = analyse(model, x0, ctx.y0[0].detach(), top_k, rule, eng, chunk)
        write_group(ctx.path, GROUP, res.arrays, dict(res.attrs, **common))
    if cfg.adversarial is not None and not group_complete(ctx.tiles, ADVERSARIAL):
        from precompute.fgsm import fgsm
        from precompute.models.base import Prepared

        label = cfg.adversarial.label if cfg.adversarial.label is not None else clean_top1
        mean, std = _image_norm(ctx)
        v_adv, x_adv = fgsm(model, x0, mean, std, cfg.adversarial.fgsm_eps, label)
        with torch.no_grad():
            scores = model(x_adv)[0]
        if not torch.isfinite(scores).all():
            raise UserError(f"{spec.model_id} produced NaN/Inf on the FGSM image")
        eng = Engine(_interpreter(ctx, x_adv, chunk), ctx.device, prep.dtype)
        res = analyse(model, x_adv, scores, top_k, rule, eng, chunk)
        adv_top1 = int(res.arrays["top"][0])
        arrays = dict(res.arrays,
                      input=x_adv[0].detach().cpu().numpy(),
                      image=v_adv[0].detach().cpu().numpy().astype(x_adv.cpu().numpy().dtype),
                      display_input=spec.display_input(Prepared(x_adv.detach().cpu(),
                                                                prep.prepared.extra))
                      .astype(np.uint8))
        attrs = dict(res.attrs, **common, attack="fgsm", fgsm_eps=cfg.adversarial.fgsm_eps,
                     label=int(label), clean_top1=int(clean_top1), top1=adv_top1,
                     changed=adv_top1 != clean_top1)
        write_group(ctx.path, ADVERSARIAL, arrays, attrs)
        if not ctx.quiet:
            say(f"FGSM ε = {cfg.adversarial.fgsm_eps:g}: top-1 {labels[clean_top1]} → "
                f"{labels[adv_top1]}")
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# Datasets: Table 4 and Figure 8 over the images of one config.


def normalised_contributions(contributions: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Each term divided by its score (Figure 8); NaN where the score is within rounding noise
    of 0 relative to the terms (√eps · Σ|terms|)."""
    c = np.asarray(contributions, np.float64)
    s = np.asarray(scores, np.float64)
    eps = math.sqrt(np.finfo(contributions.dtype).eps)
    ok = np.abs(s) > eps * np.abs(c).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok[:, None], c / np.where(ok, s, 1)[:, None], np.nan)


def summary_path(res) -> Path:
    return res.output_dir / f"{res.config.name}{SUMMARY_SUFFIX}"


def _collect(stores: list[Path], group: str) -> dict | None:
    """Top-1 residual shares and normalised contributions of ``group`` in every store, aligned
    by term name (terms in first-seen forward order); None if a store lacks the group."""
    rows, terms = [], []
    for p in stores:
        if not group_complete(open_tiles(p), group):
            return None
        g = open_tiles(p).group("r")[group]
        names = list(g.attrs["terms"])
        contrib = S.read_whole(g["contributions"])
        top = S.read_whole(g["top"])
        score = S.read_whole(g["scores"])[top[:1]]
        norm = normalised_contributions(contrib[:1], score)[0]
        rows.append((dict(zip(names, norm)), float(g["residual_share"][0]), float(score[0]),
                     int(top[0])))
        terms += [t for t in names if t not in terms]
    table = np.array([[r[0].get(t, np.nan) for t in terms] for r in rows], np.float64)
    return {"terms": terms, "contributions": table,
            "residual_share": np.array([r[1] for r in rows]),
            "score": np.array([r[2] for r in rows]), "top1": np.array([r[3] for r in rows],
                                                                      np.int32)}


def _stats(data: dict) -> tuple[dict, dict]:
    import warnings

    share = data["residual_share"]
    table = data["contributions"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the mean of an all-NaN column is NaN
        arrays = {
            "residual_share": share, "score": data["score"], "top1": data["top1"],
            "contributions": table,
            "contributions_mean": np.nanmean(table, 0), "contributions_std": np.nanstd(table, 0),
            "contributions_count": np.isfinite(table).sum(0).astype(np.int32),
        }
        attrs = {"terms": data["terms"], "count": int(len(share)),
                 "residual_share_mean": float(np.nanmean(share)),
                 "residual_share_std": float(np.nanstd(share))}
    return arrays, attrs


def summarize(res) -> str | None:
    """Write ``<output>/<name>.summary.zarr`` from the stores of a config with several images
    (FORMAT.md "Dataset summary"); returns a line for the user, or None when not applicable."""
    if len(res.images) < 2 and not res.dataset:
        return None
    stores = [res.store_path(image) for image in res.images]
    clean = _collect(stores, GROUP)
    out = summary_path(res)
    tiles = open_tiles(out)
    if clean is None:  # an older summary would describe other stores: it goes
        if _is_summary(tiles):
            tiles.remove()
        return f"{out}: not written (not every store has complete classifier analyses)"
    adv = _collect(stores, ADVERSARIAL)
    first = open_tiles(stores[0]).read_attrs()
    arrays, attrs = _stats(clean)
    if not tiles.is_empty() and not _is_summary(tiles):
        raise UserError(f"{out} exists and is not a dataset summary: not replaced (the stores are "
                        "complete; move it away and run again to write the summary)")
    # rewritten in place, its real attributes last (one atomic write): until then it says it is
    # being created, so no reader takes a half-written summary for a finished one
    g = tiles.create({SC.CREATING: True})
    for key, arr in arrays.items():
        _small(g, key, arr)
    if adv is not None:
        a_arrays, a_attrs = _stats(adv)
        ag = g.create_group("adversarial", attributes=a_attrs)
        for key, arr in a_arrays.items():
            _small(ag, key, arr)
    g.attrs.put({
        "format_version": SC.FORMAT_VERSION, "kind": "summary", "analysis": GROUP,
        "name": res.config.name, "model": first.get("model"), "interpreter": first.get("interpreter"),
        "dtype": first.get("dtype"),
        "stores": [p.name for p in stores],
        "images": [{"path": str(i), "store": p.name, "sha256": _image_sha(p)}
                   for i, p in zip(res.images, stores)],
        "label": "top-1", "share_rule": SHARE_RULE, "std": "population (ddof 0), NaN skipped",
        **attrs,
    })
    return (f"{out}: top-1 residual share {100 * attrs['residual_share_mean']:.1f} % ± "
            f"{100 * attrs['residual_share_std']:.1f} over {attrs['count']} images")


def _is_summary(tiles) -> bool:
    """A dataset summary (possibly an interrupted one) is at the tile store's location: what
    may be replaced or removed (never anything else found under that name)."""
    if not tiles.has_group():
        return False
    try:
        attrs = tiles.read_attrs()
    except StoreError:
        return False
    return attrs.get("kind") == "summary" or attrs.get(SC.CREATING) is True


def _image_sha(store: Path) -> str | None:
    """The sha256 of a store's image file, as its ``image`` attribute records it: what tells
    that summaries of several models describe the same images (sitegen's comparison page)."""
    return S.read_attrs(store).get("image", {}).get("sha256")


def _small(group, key: str, arr: np.ndarray) -> None:
    arr = np.asarray(arr)
    a = group.create_array(key, shape=arr.shape, chunks=arr.shape, dtype=arr.dtype,
                           fill_value=_fill(arr.dtype), compressors=SC.codecs())
    a[...] = arr


def _fill(dtype: np.dtype):
    """Fill values as FORMAT.md states them: NaN (float), −1 (int), 0 (uint8), False (bool)."""
    return {"b": False, "u": 0, "i": -1}.get(dtype.kind, np.nan)


# ---------------------------------------------------------------------------------------------
# `precompute info` and `precompute verify`.


def info_lines(group) -> list[str]:
    """Lines of ``precompute info`` for the ``classify/`` group of a store (a zarr group)."""
    if "classify" not in group:
        return []
    lines = []
    for name, title in ((GROUP, "classify"), (ADVERSARIAL, "FGSM")):
        if name not in group:
            continue
        g = group[name]
        a = dict(g.attrs)
        if not a.get("complete"):
            lines.append(f"{title:9} incomplete (the next run redoes it)")
            continue
        labels = a["labels"]
        top, scores = S.read_whole(g["top"]), S.read_whole(g["scores"])
        share = S.read_whole(g["residual_share"])
        votes = S.read_whole(g["vote_counts"])
        head = (f"ε = {a['fgsm_eps']:g}, label {labels[a['label']]}: " if name == ADVERSARIAL
                else "")
        lines.append(f"{title:9} {head}top-{len(top)} " + ", ".join(
            f"{labels[k]} {scores[k]:.4g} (residual share {100 * s:.1f} %, {votes[k]} votes)"
            for k, s in zip(top, share)))
        lines.append(f"{'':9} {len(a['terms'])} terms (input + {len(a['terms']) - 1} sites); "
                     f"conservation error max {a['conservation']['max_abs']:.2e} "
                     f"(relative {a['conservation']['max_rel']:.2e})")
    return lines


def summary_info(path: Path) -> str:
    """``precompute info`` of a dataset summary store."""
    from precompute import store_format

    g = open_tiles(path).group("r")
    a = dict(g.attrs)
    try:  # the schema sitegen checks too
        store_format.validate_attrs(a, summary=True)
    except store_format.FormatError as e:
        raise S.StoreError(f"{path}: {e}; the dataset summary is damaged") from None
    lines = [f"{path}  (dataset summary of {a['count']} stores, format_version "
             f"{a['format_version']})",
             f"model     {(a.get('model') or {}).get('id', '?')}; top-1 residual share "
             f"{100 * a['residual_share_mean']:.1f} % ± {100 * a['residual_share_std']:.1f}"]
    if "adversarial" in g:
        b = dict(g["adversarial"].attrs)
        lines.append(f"FGSM      top-1 residual share {100 * b['residual_share_mean']:.1f} % ± "
                     f"{100 * b['residual_share_std']:.1f}")
    mean, std = S.read_whole(g["contributions_mean"]), S.read_whole(g["contributions_std"])
    lines.append("terms     " + ", ".join(f"{t} {m:+.3f}±{s:.3f}"
                                         for t, m, s in zip(a["terms"], mean, std)))
    return "\n".join(lines)


def verify_lines(st, prep, tol: float) -> tuple[list[str], bool]:
    """``precompute verify`` of ``classify/``: the scores, the class rows (recomputed with
    :meth:`LinearInterpreter.rows`, not the contributions pass), the terms and their sum."""
    from precompute.interpreter import LinearInterpreter

    if not group_complete(st.tiles, GROUP):
        return [], True
    g = st.group[GROUP]
    rule = st.attrs["interpreter"]
    top = [int(k) for k in S.read_whole(g["top"])]
    li = LinearInterpreter(prep.spec.module, prep.x0, rule=rule, batch=len(top))
    with torch.no_grad():
        scores = prep.spec.module(prep.x0)[0].cpu().numpy()
    rows = li.rows(top).cpu().numpy()
    d = decompose(prep.spec.module, prep.x0, top, rule=rule)
    contrib = np.concatenate([d.input_term.cpu().numpy()[:, None],
                              d.contributions.cpu().numpy()], 1)
    stored = S.read_whole(g["contributions"])

    def rel(a, b):
        return float(np.abs(a - b).max() / (np.abs(b).max() or 1.0))

    checks = {"scores": rel(scores, S.read_whole(g["scores"])), "rows": rel(rows, S.read_whole(g["rows"])),
              "contributions": rel(contrib, stored),
              "sum of terms − score": rel(stored.sum(1), S.read_whole(g["scores"])[top])}
    ok = all(v <= tol for v in checks.values())
    line = ("classify: " + ", ".join(f"{k} {v:.2g}" for k, v in checks.items())
            + f" (relative; tolerance {tol:g}) " + ("OK" if ok else "MISMATCH"))
    return [line], ok


class ClassifyAnalysis(WholeF):
    """The classifier decompositions as a whole-F analysis (:mod:`precompute.analysis`)."""

    name = "classify"

    def planned(self, ctx: RunContext, cfg: ClassifyConfig) -> dict:
        return planned(ctx, cfg)

    def describe(self, ctx: RunContext, cfg: ClassifyConfig) -> str:
        return describe(ctx, cfg)

    def done(self, ctx: RunContext, cfg: ClassifyConfig) -> bool:
        return done(ctx, cfg)

    def run(self, ctx: RunContext, cfg: ClassifyConfig) -> float:
        return run(ctx, cfg)

    def info_lines(self, st) -> list[str]:
        return info_lines(st.group)

    def verify_lines(self, st, prep, engine, tol: float, samples: int, seed: int
                     ) -> tuple[list[str], bool]:
        return verify_lines(st, prep, tol)

