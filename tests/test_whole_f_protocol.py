"""Whole-F analyses behind one protocol (issue 16): an explicit registry, a typed run context,
and no import by name in the pipeline."""

from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path

from precompute import analysis, classify, run, svd, whole_f

REPO = Path(__file__).resolve().parents[1]


def test_registry_in_run_order_and_every_entry_is_a_wholef():
    assert list(whole_f.REGISTRY) == ["svd", "classify"]
    assert run.WHOLE_F == ("svd", "classify")
    for name, a in whole_f.REGISTRY.items():
        assert isinstance(a, analysis.WholeF) and a.name == name
    assert isinstance(whole_f.REGISTRY["svd"], svd.SvdAnalysis)
    assert isinstance(whole_f.REGISTRY["classify"], classify.ClassifyAnalysis)


def test_pipeline_imports_no_analysis_by_name():
    """The pipeline (run.py and its stages, run_*.py) reaches the analyses through the registry:
    no importlib.import_module, and no direct import of an analysis module's run/plan
    functions."""
    files = sorted((REPO / "precompute").glob("run*.py"))
    assert len(files) >= 6, files
    for f in files:
        _registry_only(f)


def _registry_only(f):
    tree = ast.parse(f.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "import_module":
            raise AssertionError(f"{f.name} imports by name (line {node.lineno})")
        if isinstance(node, ast.ImportFrom) and node.module in ("precompute.svd",
                                                                  "precompute.classify"):
            names = {a.name for a in node.names}
            assert not names & {"run", "planned", "describe", "done", "disk_bytes"}, names


def test_analyses_read_a_typed_context_not_the_run_plan():
    """Every protocol method of every registered analysis takes a RunContext, whose fields are
    the ones run_context fills (a field added to one and not the other fails here)."""
    fields = {f.name for f in dataclasses.fields(analysis.RunContext)}
    src = inspect.getsource(run.run_context)
    assert all(f"{f}=" in src for f in fields), fields
    for a in whole_f.REGISTRY.values():
        for method in ("planned", "describe", "disk_bytes", "done", "run"):
            sig = inspect.signature(getattr(type(a), method))
            ann = list(sig.parameters.values())[1].annotation
            assert ann in ("RunContext", analysis.RunContext), (a.name, method, ann)
