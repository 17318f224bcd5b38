"""Classifier pages without a browser: byte-deterministic rebuilds, names escaped, states shown.

The classify group is written onto a fixture classifier store with precompute's own writer
(`write_group`), from synthetic arrays whose shapes follow FORMAT.md; label and term names are
hostile HTML.
"""

from __future__ import annotations

import numpy as np

from precompute.classify import write_group
from site_fixtures import make_vector_store
from sitegen.build import Options, build

EVIL_LABEL = '<img src=x onerror="alert(1)">'
EVIL_TERM = "features.0</script><script>alert(2)</script>"


def _classify(path, K=5, H=8, W=8, L=2, adversarial=True):
    rng = np.random.default_rng(0)
    top = np.array([3, 1], np.int32)
    votes = rng.integers(0, K, (H, W)).astype(np.int32)

    def group(extra=None):
        contrib = rng.standard_normal((L, 3)).astype(np.float32)
        arrays = {
            "scores": rng.standard_normal(K).astype(np.float32), "top": top,
            "rows": rng.standard_normal((L, 3, H, W)).astype(np.float32),
            "input_term": contrib[:, 0].copy(), "residual": contrib[:, 1:].sum(1),
            "residual_share": np.array([0.25, np.nan], np.float32),
            "contributions": contrib,
            "discussions": rng.standard_normal((L, 3, H, W)).astype(np.float32),
            "discussion_factor": np.array([0.5, np.nan], np.float32),
            "back_projection": rng.standard_normal((3, H, W)).astype(np.float32),
            "output_constant": rng.standard_normal(K).astype(np.float32),
            "votes": votes, "vote_counts": np.bincount(votes.ravel(), minlength=K).astype(np.int32),
            "vote_masks": np.stack([votes == k for k in top]),
        }
        arrays.update(extra or {})
        return arrays

    attrs = {"top_k": L, "terms": ["input", EVIL_TERM, "fc"],
             "labels": [f"class {k}" for k in range(K - 1)] + [EVIL_LABEL],
             "conservation": {"max_abs": 1e-7, "max_rel": 1e-8, "per_label_abs": [1e-7, 0.0]},
             "share_rule": "|r| / (|F·x0| + |r|)"}
    attrs["labels"][3] = EVIL_LABEL  # the top-1 label
    write_group(path, "classify", group(), attrs)
    if adversarial:
        extra = {"input": rng.random((3, H, W)).astype(np.float32),
                 "image": rng.random((3, H, W)).astype(np.float32),
                 "display_input": rng.integers(0, 255, (H, W, 3)).astype(np.uint8)}
        write_group(path, "classify/adversarial", group(extra),
                    dict(attrs, attack="fgsm", fgsm_eps=0.01, label=3, clean_top1=3, top1=1,
                         changed=True))


def test_rebuilds_are_byte_identical_and_names_escaped(tmp_path):
    store = make_vector_store(tmp_path / "stores" / "cls.zarr")
    _classify(store)
    build([tmp_path / "stores"], tmp_path / "a", Options(progress=False))
    build([tmp_path / "stores"], tmp_path / "b", Options(progress=False))
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*")
                   if p.is_file())
    assert {"classify/cls.html", "data/cls/classify.js", "data/cls/adversarial.png"} <= {
        str(f) for f in files}
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    html = (tmp_path / "a" / "classify" / "cls.html").read_text()
    data = (tmp_path / "a" / "data" / "cls" / "classify.js").read_text()
    assert "<img src=x" not in html and "<script>alert" not in html
    assert "</script" not in data  # a data script: names are JSON strings, `</` escaped
    assert "&lt;img src=x onerror=" in html and "features.0&lt;/script&gt;" in html
    assert html.count('class="share">undefined</td>') == 2  # NaN share, clean and FGSM
    assert html.count('class="factor">undefined</td>') == 2
    assert "true label &lt;img src=x" in html  # the attack's summary names labels, escaped


def test_explorer_and_index_without_classifier_analyses(tmp_path):
    make_vector_store(tmp_path / "stores" / "cls.zarr")
    build([tmp_path / "stores"], tmp_path / "site", Options(progress=False))
    assert not (tmp_path / "site" / "classify").exists()
    explorer = (tmp_path / "site" / "explorer" / "cls.html").read_text()
    assert "not computed" in explorer and "analyses: {classify: {top_k: 5}}" in explorer
    index = (tmp_path / "site" / "index.html").read_text()
    assert "classify: not computed" in index and 'id="datasets"' not in index
