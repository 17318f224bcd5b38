"""sitegen's import directions (issue 16): no circles between its modules, and never torch or
precompute's interpreter (a store is read as docs/FORMAT.md describes it, without the model; the
only precompute modules it reads are the torch-free format checks shared with precompute)."""

from __future__ import annotations

import ast
from pathlib import Path

SITEGEN = Path(__file__).resolve().parents[1] / "sitegen"


def imports() -> dict[str, set[str]]:
    """Module → the modules it imports (every import statement, also inside functions)."""
    graph = {}
    for f in sorted(SITEGEN.glob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
                if node.module in ("sitegen", "precompute"):  # from sitegen import filters, …
                    names |= {f"{node.module}.{a.name}" for a in node.names}
        graph[f"sitegen.{f.stem}"] = names
    return graph


#: torch-free precompute modules sitegen shares (the store's format checks, bounded YAML, the
#: shard byte layout it reads filter tiles with)
SHARED = {"precompute.store_format", "precompute.yaml_limits", "precompute.shards"}


def test_sitegen_never_imports_torch_or_precompute_beyond_the_shared_format():
    bad = {m: sorted(n for n in names if n.split(".")[0] in ("torch", "precompute")
                     and n not in SHARED and n != "precompute")
           for m, names in imports().items()}
    assert not {m: n for m, n in bad.items() if n}


def test_sitegen_has_no_import_circle():
    found = imports()
    graph = {m: {n for n in names if n in found} for m, names in found.items()}
    assert not circle(graph), circle(graph)
    assert circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # it can see one
    assert "sitegen.build" in graph and "sitegen.page" in graph  # the walk saw the package


def circle(graph: dict[str, set[str]]) -> list[str]:
    """An import circle of ``graph`` (depth-first), or [] if there is none."""
    done: set[str] = set()

    def visit(m, path):
        if m in path:
            return path[path.index(m):] + [m]
        if m in done:
            return []
        for n in sorted(graph[m]):
            found = visit(n, path + [m])
            if found:
                return found
        done.add(m)
        return []

    for m in sorted(graph):
        found = visit(m, [])
        if found:
            return found
    return []
