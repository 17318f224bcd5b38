"""Pixel discussions and pixel votes of a classifier (paper eq. 18, §4 Case 1, Figures 3, 9, 10).

The discussion of score k before normalisation is

    D_k = x0 ⊙ row_k + B + o_k · row_k                                          (eq. 18)

with ``x0 ⊙ row_k`` the input term ``P_0 Fᵀ(x0)`` pixel by pixel, ``B = Σ_i P_i b̂_i`` the masked
biases back-projected to the input from where they are added (shared by every label, see
:mod:`precompute.contributions`), and ``o_k · row_k`` the back-projection of the constants that
reach the output directly (the last layer of the single-score view is the score itself). The
discussion is normalised so that its pixels sum to the score (§8.A):

    PD_k = α_k · D_k,    α_k = s_k / Σ D_k

α_k is *undefined* (NaN, and so is PD_k) when ``|Σ D_k| ≤ √eps · Σ|D_k|`` (or ``Σ|D_k| = 0``):
then the sum is indistinguishable from rounding noise and dividing by it would invent a scale.

A pixel's value is the sum of its channels. Every pixel votes for the label whose discussion value
is largest there, over all K labels; labels with an undefined α do not vote or receive votes; ties
go to the lowest label index; a pixel with no defined label gets −1.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor


def raw_discussions(x0: Tensor, rows: Tensor, back_projection: Tensor,
                    output_constant: Tensor) -> Tensor:
    """D_k for rows ``(L, *in_shape)`` and the output constants ``o_k`` of those labels (L,)."""
    o = output_constant.reshape((-1,) + (1,) * (rows.dim() - 1))
    return x0.reshape((1,) + tuple(rows.shape[1:])) * rows + back_projection + o * rows


def normalisation(raw: Tensor, scores: Tensor) -> Tensor:
    """α_k = s_k / Σ D_k, NaN where Σ D_k is within rounding noise of 0 (module docstring)."""
    flat = raw.flatten(1)
    total = flat.sum(1)
    mass = flat.abs().sum(1)
    tol = math.sqrt(torch.finfo(raw.dtype).eps)
    defined = (mass > 0) & (total.abs() > tol * mass)
    safe = torch.where(defined, total, torch.ones_like(total))
    return torch.where(defined, scores / safe, torch.full_like(total, float("nan")))


def discussions(x0: Tensor, rows: Tensor, back_projection: Tensor, output_constant: Tensor,
                scores: Tensor) -> tuple[Tensor, Tensor]:
    """(PD_k, α_k) for the labels of ``rows``: ``(L, *in_shape)`` and ``(L,)``."""
    raw = raw_discussions(x0, rows, back_projection, output_constant)
    alpha = normalisation(raw, scores)
    return alpha.reshape((-1,) + (1,) * (raw.dim() - 1)) * raw, alpha


def pixel_values(pd: Tensor) -> Tensor:
    """A discussion's value per pixel: the sum over channels, ``(L, C, H, W) → (L, H, W)``."""
    return pd.sum(1)


def row_chunks(K: int, known: dict[int, Tensor], compute: Callable[[list[int]], Tensor],
               chunk: int) -> Iterable[tuple[list[int], Tensor]]:
    """(labels, rows) covering all K labels: ``known`` rows first, the others computed by
    ``compute(labels)`` in chunks of ``chunk`` labels (batched backward passes)."""
    if known:
        labels = sorted(known)
        yield labels, torch.stack([known[k] for k in labels])
    rest = [k for k in range(K) if k not in known]
    for s in range(0, len(rest), max(1, chunk)):
        part = rest[s:s + chunk]
        yield part, compute(part)


def pixel_votes(x0: Tensor, back_projection: Tensor, output_constant: Tensor, scores: Tensor,
                chunks: Iterable[tuple[Sequence[int], Tensor]]) -> Tensor:
    """Votes ``(H, W)``: per pixel the label of the largest discussion value (module docstring).

    ``chunks`` yields (labels, rows) that together cover every label once.
    """
    best = vote = None
    for labels, rows in chunks:
        labels_t = torch.as_tensor(list(labels), dtype=torch.long, device=rows.device)
        pd, _ = discussions(x0, rows, back_projection, output_constant[labels_t],
                            scores[labels_t])
        values = pixel_values(pd)  # NaN where α is undefined
        if best is None:
            best = torch.full(values.shape[1:], -math.inf, dtype=values.dtype, device=values.device)
            vote = torch.full(values.shape[1:], -1, dtype=torch.long, device=values.device)
        for i, k in enumerate(labels_t.tolist()):
            v = values[i]
            better = (v > best) | ((v == best) & (vote > k))
            better &= ~torch.isnan(v)
            best = torch.where(better, v, best)
            vote = torch.where(better, torch.full_like(vote, k), vote)
    if vote is None:
        raise ValueError("no labels to vote for")
    return vote
