"""The shape the code keeps: short functions, a short training pipeline, a code map naming every module."""

from __future__ import annotations

import ast

from conftest import ROOT

PACKAGE = ROOT / "nmt"


def test_no_function_is_longer_than_60_lines():
    long = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 60:
                    long.append(f"{path.name}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []


def test_training_pipeline_stays_short():
    assert len((PACKAGE / "train.py").read_text(encoding="utf-8").splitlines()) < 300


def test_code_map_names_every_module():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    code_map = readme[readme.index("## Code map") :].split("\n## ", 1)[0]
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    assert [m for m in sorted(modules) if f"{m}.py" not in code_map] == []
