"""The architecture comparison page (paper Table 3 / Table 4 and Figure 8; docs/FORMAT.md
"Dataset summary").

    classify/zoo-<group>.html   every dataset summary over the same images (the same multiset of
                                image sha256s), one row and one contribution chart per model:
                                top-1 residual share mean ± std, clean and FGSM, and the
                                layer-wise contributions divided by the score (mean ± std band)

A group needs two summaries or more; a summary whose images' sha256 are unknown (written before
summaries recorded them, and whose run stores are not in the build) joins no group. Numbers are
written into the HTML at build time: as text with the dataset page's formatting and, exactly, as
``data-*`` attributes (what the browser test compares with the stores).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from sitegen.classify_page import exact, pct, slug_summary, summary_view
from sitegen.page import Page, Site
from sitegen.reader import Summary


def _image_shas(s: Summary, sha_by_store: dict[str, str]) -> tuple[str, ...] | None:
    """The sorted sha256s of a summary's images (from the summary, else from the run stores of
    this build); None when one is unknown."""
    shas = []
    for im in s.attrs.get("images") or []:
        sha = im.get("sha256") or sha_by_store.get(im.get("store"))
        if not sha:
            return None
        shas.append(str(sha))
    return tuple(sorted(shas)) or None


def groups(summaries: list[Summary], runs: list[dict]) -> list[tuple[str, list[Summary]]]:
    """(id, summaries) of each set of summaries over the same images, two or more per group;
    groups and members by name. The id is the first 12 hex digits of the sha256 of the sorted
    image sha256s: the same images give the same page name in every build."""
    sha_by_store = {r["store"].path.name: r["sha"] for r in runs}
    by_images: dict[tuple[str, ...], list[Summary]] = {}
    for s in summaries:
        key = _image_shas(s, sha_by_store)
        if key is not None:
            by_images.setdefault(key, []).append(s)
    out = [(hashlib.sha256("\n".join(key).encode()).hexdigest()[:12],
            sorted(g, key=lambda s: (s.name, str(s.path))))
           for key, g in by_images.items() if len(g) > 1]
    return sorted(out, key=lambda g: g[1][0].name)


def _share(attrs: dict | None) -> dict | None:
    if attrs is None:
        return None
    return {"mean": pct(attrs["residual_share_mean"]), "std": pct(attrs["residual_share_std"]),
            "mean_exact": exact(attrs["residual_share_mean"]),
            "std_exact": exact(attrs["residual_share_std"]), "n": int(attrs["count"])}


def model_view(s: Summary, by_store: dict[str, dict]) -> dict:
    """One model of the comparison: its dataset page's view (the Figure 8 chart) and its
    residual shares, clean and FGSM."""
    view = summary_view(s, by_store)
    return {"id": slug_summary(s), "name": s.name, "model": view["model"],
            "store": s.path.name, "terms": len(s.attrs.get("terms") or []) - 1,
            "clean": _share(s.attrs),
            "adversarial": _share(s.adversarial[0] if s.adversarial is not None else None),
            "plot": view["plot"]}


def _dataset_name(members: list[Summary]) -> str:
    """The images' folder when every summary names the same one (e.g. ``digits``), else ''."""
    folders = {Path(str(im.get("path", ""))).parent.name
               for s in members for im in s.attrs.get("images") or []}
    return folders.pop() if len(folders) == 1 else ""


def write(w, env, summaries: list[Summary], datasets: list[dict], runs: list[dict],
          common: dict) -> list[dict]:
    """Write one comparison page per group; mark each member's dataset view (``datasets``, in
    the order of ``summaries``) with ``comparison`` for the index. Returns the groups' views."""
    by_store = {r["store"].path.name: r for r in runs}
    view_of = {id(s): d for s, d in zip(summaries, datasets)}
    views = []
    for key, members in groups(summaries, runs):
        gid = f"zoo-{key}"
        models = [model_view(s, by_store) for s in members]
        for s, m in zip(members, models):  # the dataset page's own (unique) id
            if id(s) in view_of:
                m["id"] = view_of[id(s)]["id"]
        view = {"id": gid, "dataset": _dataset_name(members), "models": models,
                "count": models[0]["clean"]["n"],
                "adversarial": any(m["adversarial"] for m in models)}
        html = env.get_template("zoo.html").render(root="../", zoo=view, **common)
        w.write(f"classify/{gid}.html", html.encode())
        for s in members:
            if id(s) in view_of:
                view_of[id(s)]["comparison"] = {"id": gid, "models": len(models)}
        views.append(view)
    return views


class ZooPage(Page):
    """Architecture comparison pages (``classify/zoo-<group>.html``), after the classifier pages
    (it reads their dataset views from ``site.shared["datasets"]`` and marks the ones it
    compares, for the index)."""

    name = "zoo"

    def write(self, site: Site) -> None:
        write(site.w, site.env, site.summaries, site.shared.get("datasets", []), site.runs,
              site.common)
