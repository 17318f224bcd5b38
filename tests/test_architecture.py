"""The import directions of docs/ARCHITECTURE.md, enforced.

Every module of ``precompute`` and ``sitegen`` belongs to one layer; a module may import modules
of its own layer or of layers below, never above. A new module must be placed here (and in
docs/ARCHITECTURE.md) before it can land. Read from the source with ``ast``: nothing is imported.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: precompute, bottom to top (docs/ARCHITECTURE.md, "Layers")
PRECOMPUTE_LAYERS = [
    ("foundation", {"errors", "text", "config", "probes", "batch_dims", "store_format",
                    "environment", "yaml_limits"}),
    ("rules and models", {"rules", "optable", "models", "models.base", "models.checkpoint",
                          "models.common", "models.bicubic", "models.classifiers",
                          "models.custom", "models.cyclegan", "models.digits", "models.digits_zoo",
                          "models.edsr", "models.pixelshuffle"}),
    ("scope", {"interception", "scope_writes", "scope"}),
    ("interpreter", {"interpreter", "support", "contributions", "discussions", "fgsm"}),
    ("probing", {"engine", "compressed", "memory", "freivalds", "halo", "support_crop"}),
    ("storage", {"layout", "integrity", "shards", "store_create", "store_resume", "local_tiles",
                 "tile_store", "store", "writer", "stored_operator"}),
    ("analyses", {"analysis", "svd_solvers", "svd_state", "svd_gram", "svd", "classify",
                   "whole_f"}),
    ("pipeline", {"inputs", "assemble", "sweep", "existing", "run_plan", "run_gate", "run_probing",
                  "run_describe", "run_stages", "run"}),
    ("front", {"report", "verify", "cli", ""}),
]

#: sitegen, bottom to top; sitegen reads stores without torch or the interpreter
SITEGEN_LAYERS = [
    ("readers", {"reader", "tiles", "util", "names"}),
    ("site parts", {"options", "writer", "filters", "svd_gallery", "page"}),
    ("pages", {"svd_page", "classify_page", "explorer_page", "index_page", "zoo_page"}),
    ("build", {"pages", "build"}),
    ("front", {"cli", "__main__", ""}),
]

#: the only precompute modules sitegen may import: torch-free, below the interpreter
SITEGEN_MAY_IMPORT = {"precompute.errors", "precompute.text", "precompute.store_format",
                      "precompute.yaml_limits", "precompute.shards"}


def _modules(package: str) -> dict[str, set[str]]:
    """module (relative to the package, "" for __init__) → the modules of ours it imports."""
    out = {}
    root = REPO / package
    for f in sorted(root.rglob("*.py")):
        rel = ".".join(f.relative_to(root).with_suffix("").parts)
        rel = "" if rel == "__init__" else rel.removesuffix(".__init__")
        deps = set()
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for n in names:
                if n.split(".")[0] in ("precompute", "sitegen"):
                    deps.add(n)
        out[rel] = deps
    return out


def _layer_of(layers) -> dict[str, int]:
    return {m: i for i, (_, mods) in enumerate(layers) for m in mods}


def _resolve(dep: str, package: str, known: set[str]) -> str | None:
    """The module of ours a dotted import names (``precompute.store.Layout`` → ``store``)."""
    if not dep.startswith(package + ".") and dep != package:
        return None
    rel = dep[len(package) + 1:] if dep != package else ""
    while rel and rel not in known:
        rel = rel.rpartition(".")[0]
    return rel


@pytest.mark.parametrize("package,layers", [("precompute", PRECOMPUTE_LAYERS),
                                            ("sitegen", SITEGEN_LAYERS)])
def test_every_module_has_a_layer_and_imports_point_down(package, layers):
    mods = _modules(package)
    layer = _layer_of(layers)
    unplaced = sorted(set(mods) - set(layer))
    assert not unplaced, f"place these {package} modules in a layer (docs/ARCHITECTURE.md): {unplaced}"
    upward = set()
    for mod, deps in mods.items():
        for dep in deps:
            target = _resolve(dep, package, set(mods))
            if target is None or target == mod or target == "":
                continue  # another package, itself, or the package (imported with any submodule)
            if layer[target] > layer[mod]:
                upward.add(f"{package}.{mod} ({layers[layer[mod]][0]}) imports "
                              f"{package}.{target} ({layers[layer[target]][0]})")
    assert not upward, "imports against the layers:\n" + "\n".join(sorted(upward))


def test_storage_imports_no_analysis():
    mods = _modules("precompute")
    storage = dict(PRECOMPUTE_LAYERS)["storage"]
    analyses = {f"precompute.{m}" for m in dict(PRECOMPUTE_LAYERS)["analyses"]}
    for mod in storage:
        assert not any(d == a or d.startswith(a + ".") for d in mods[mod] for a in analyses), mod


def test_sitegen_imports_only_torch_free_precompute_modules():
    for mod, deps in _modules("sitegen").items():
        ours = {d for d in deps if d.startswith("precompute.")}  # (the bare package: lazy)
        allowed = {d for d in ours if any(d == a or d.startswith(a + ".") for a in SITEGEN_MAY_IMPORT)}
        assert ours == allowed, f"sitegen.{mod} imports {sorted(ours - allowed)}"


def test_sitegen_runs_without_importing_torch():
    code = ("import sys, sitegen.build, sitegen.cli, sitegen.reader; "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]; "
            "print(len(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         check=True).stdout.strip()
    assert out == "0"
