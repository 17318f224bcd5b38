"""Unique names for the files of a site: no page or data folder ever silently replaces another.

A site names a run's pages and data after its store's folder (``explorer/<run>.html``,
``data/<run>/``), a dataset summary's page after its store (``classify/<summary>.html``, the same
folder as the runs' classifier pages), a comparison after its image's hash. Names come from
received files, so any two may coincide: ``a/ref.zarr`` and ``b/ref.zarr``, or a duplicate's
``ref-2`` and a store that is itself named ``ref-2``. Names are compared case-folded, since a
site is often copied to a case-insensitive file system (macOS, Windows), where ``Ref`` and
``ref`` are one file.
"""

from __future__ import annotations


def unique_ids(bases: list[str], taken: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """One id per base, all distinct (case-folded) and distinct from ``taken``.

    The first occurrence of each base keeps its name, so that permalinks stay what they were
    for every site without duplicates; a later duplicate gets the first ``<base>-N`` (N ≥ 2)
    that is neither taken nor the name of any other base of the build."""
    used = {t.casefold() for t in taken}
    reserved = {b.casefold() for b in bases}  # every base keeps its own name if it can
    ids = []
    for base in bases:
        key = base.casefold()
        if key not in used:
            ids.append(base)
            used.add(key)
            continue
        n = 2
        while f"{base}-{n}".casefold() in used or f"{base}-{n}".casefold() in reserved:
            n += 1
        ids.append(f"{base}-{n}")
        used.add(f"{base}-{n}".casefold())
    return ids
