"""The CLI's layout: one module per command, and no optional dependency imported to parse."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import medtrt
from medtrt.cli import build_parser

OPTIONAL = ("torch", "torchvision", "monai", "tensorrt", "tensorrt_rtx", "onnxruntime", "onnx",
            "cuda", "pynvml", "psutil", "matplotlib", "polygraphy", "pydicom")


def _leaf_parsers(parser: argparse.ArgumentParser):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield parser
    for action in subs:
        for child in action.choices.values():
            yield from _leaf_parsers(child)


def test_every_command_runs_from_its_own_module():
    leaves = list(_leaf_parsers(build_parser()))
    assert len(leaves) >= 8
    for leaf in leaves:
        func = leaf.get_default("func")
        module = sys.modules[func.__module__]
        assert module.__name__.startswith("medtrt.cli.") and module.__name__ != "medtrt.cli"
        assert func is module.run and callable(module.add_parser), leaf.prog


def test_info_runs_with_every_optional_dependency_blocked():
    code = (f"import runpy, sys\nfor name in {OPTIONAL!r}:\n    sys.modules[name] = None\n"
            "sys.argv = ['medtrt', 'info', '--json']\n"
            "runpy.run_module('medtrt', run_name='__main__', alter_sys=True)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["medtrt"] == medtrt.__version__
