"""The library's shape: imports run from higher stages to lower ones only, with no circle.

Every import of every module is read from its source (function-level ones included), so a late
import cannot hide an upward dependency."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "workflow_scripts" / "robrep"
# Lower stages first; a module may import its own stage and the ones below it.
STAGES = ("base", "io", "similarity", "learn", "store", "study", "pipeline")
BASE = {"robrep", "robrep.ids", "robrep.runtime", "robrep.workers"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage(module: str) -> str:
    if module in BASE:
        return "base"
    return module.split(".")[1]


def imports_of(path: Path) -> set[str]:
    """The robrep modules `path` imports, resolved to module names (relative ones included)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "robrep"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "robrep":
                continue
            for alias in node.names:  # `from robrep.learn import data` imports robrep.learn.data
                candidate = f"{target}.{alias.name}"
                found.add(
                    candidate
                    if (PACKAGE.parent / candidate.replace(".", "/")).with_suffix(".py").exists()
                    else target
                )
    return found - {name}


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {name: imports_of(path) for name, path in MODULES.items()}


def test_every_module_is_in_a_stage():
    assert {stage(m) for m in MODULES} <= set(STAGES)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_downwards(module):
    upward = {
        imported
        for imported in GRAPH[module]
        if imported in MODULES and STAGES.index(stage(imported)) > STAGES.index(stage(module))
    }
    assert not upward, f"{module} ({stage(module)}) imports a higher stage: {sorted(upward)}"


def test_no_import_circle():
    """Depth-first search over the module graph (package faces that only re-export lazily
    import nothing)."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in sorted(GRAPH.get(m, ())):
            if n not in MODULES:
                continue
            if state.get(n) == 1:
                circle = path[path.index(n) :] + [n]
                raise AssertionError("import circle: " + " -> ".join(circle))
            if n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(MODULES):
        if m not in state:
            visit(m)


def test_the_structure_test_sees_imports():
    """The walk finds real edges (so the tests above cannot pass over an empty graph)."""
    assert "robrep.similarity.gram" in GRAPH["robrep.store.extract"]
    assert "robrep.study.analyses" in GRAPH["robrep.pipeline.config"]  # a function-level import
    assert len(MODULES) > 30


def test_the_library_imports_no_package_face():
    """Inside the library, names come from the module that defines them, not from a package's
    lazy face (`robrep.similarity`), so the graph above is the real one."""
    faces = {m for m, p in MODULES.items() if p.name == "__init__.py" and m != "robrep"}
    through = {m: sorted(GRAPH[m] & faces) for m in MODULES if GRAPH[m] & faces}
    assert not through, through


def test_no_test_module_imports_another():
    """Shared test code lives in tests/helpers/; a test module never imports a test module."""
    tests = Path(__file__).parent
    offenders = {}
    for path in sorted(tests.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            bad = [n for n in names if n.split(".")[0].startswith("test_")]
            if bad:
                offenders[path.name] = bad
    assert not offenders, offenders


def test_the_recorded_torch_version_is_torchs_own():
    import torch

    from robrep.runtime import torch_version

    assert torch_version() == torch.__version__
    code = "from robrep.runtime import torch_version; import sys; print(torch_version(), 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [torch.__version__, "False"]
