"""The architecture's rules that a tool can check (tools/structure.py): the product never
imports its test harness, and medtrt's modules and subpackages import each other without
cycles (function-level imports included)."""

from __future__ import annotations

import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def test_no_product_module_imports_the_harness_and_no_import_cycles(monkeypatch):
    monkeypatch.syspath_prepend(str(TOOLS))
    import structure

    report = structure.measure(TOOLS.parent, 80)
    assert report["product_modules_importing_medtrt_testing"] == []
    assert report["import_cycles"] == []
    assert report["package_import_cycles"] == []
    assert report["function_level_medtrt_imports"] == []
    sys.modules.pop("structure", None)


def test_the_measure_sees_a_cycle_and_a_harness_import(tmp_path, monkeypatch):
    """The checks above can fail: a made-up package with both faults is reported."""
    pkg = tmp_path / "python" / "medtrt"
    (pkg / "a").mkdir(parents=True)
    (tmp_path / "csrc").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "testing.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("from medtrt.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from medtrt.a import g\n    import medtrt.testing\n")
    monkeypatch.syspath_prepend(str(TOOLS))
    import structure

    report = structure.measure(tmp_path, 80)
    assert report["product_modules_importing_medtrt_testing"] == ["medtrt.b"]
    assert report["import_cycles"] == [["medtrt.a", "medtrt.b"]]
    assert report["function_level_medtrt_imports"] == ["medtrt.b:2 medtrt.a.g",
                                                      "medtrt.b:3 medtrt.testing"]
    sys.modules.pop("structure", None)
