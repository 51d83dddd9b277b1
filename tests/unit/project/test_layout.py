"""The house rules of the layout, checked: arrows run one way, no cycles, no module too big.

Read from the source with ``ast`` (nothing is imported), so a new module is checked as soon as
it exists. The rules are README's "How it fits together".
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = ("tasks", "flows", "blocks", "relay", "sandbox")
MAX_LINES = 500  # for tasks/, flows/ and relay/


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The project modules ``name`` imports, anywhere in the file (function-level too)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            # `from pkg import module` names the module; `from pkg import thing` names pkg
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _reaches(start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        for nxt in GRAPH[todo.pop()]:
            if nxt == goal:
                return True
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return False


def _is_package_of(a: str, b: str) -> bool:
    return b.startswith(a + ".")


def test_there_are_no_import_cycles():
    cycles = sorted(
        f"{a} -> {b}"
        for a, targets in GRAPH.items()
        for b in targets
        # a package's __init__ naming its own modules is not a cycle in the sense that matters
        if not _is_package_of(a, b) and not _is_package_of(b, a) and _reaches(b, a)
    )
    assert cycles == []


@pytest.mark.parametrize("forbidden", ["flows", "relay", "blocks"])
def test_tasks_imports_neither_flows_relay_nor_blocks(forbidden):
    offenders = sorted(
        f"{a} imports {b}"
        for a, targets in GRAPH.items()
        if a.split(".")[0] == "tasks"
        for b in targets
        if b.split(".")[0] == forbidden
    )
    assert offenders == []


def test_flows_load_their_steps_by_import_not_importlib():
    assert [p.name for p in (ROOT / "flows").glob("*.py") if "importlib" in p.read_text()] == []


def test_no_module_of_tasks_flows_or_relay_is_over_500_lines():
    long = sorted(
        f"{p.relative_to(ROOT)}: {n} lines"
        for name, p in MODULES.items()
        if name.split(".")[0] in ("tasks", "flows", "relay")
        and (n := len(p.read_text().splitlines())) > MAX_LINES
    )
    assert long == []


def test_no_two_functions_share_a_body():
    # The plainest case of six lines of the same shape in two places: a function copied whole
    # (a protocol's `...` stubs aside). One piece of code should serve both callers.
    bodies: dict[str, list[str]] = {}
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            body = node.body[1:] if ast.get_docstring(node) else node.body
            if (node.end_lineno or 0) - node.lineno < 5 or not body:
                continue
            if all(isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant) for s in body):
                continue
            dump = ast.dump(ast.Module(body=body, type_ignores=[]))
            bodies.setdefault(dump, []).append(f"{name}.{node.name}")
    assert sorted(places for places in bodies.values() if len(places) > 1) == []


def test_every_package_says_what_it_owns():
    silent = sorted(
        str(p.relative_to(ROOT))
        for name, p in MODULES.items()
        if p.name == "__init__.py"
        and name.split(".")[0] in PACKAGES
        and not ast.get_docstring(ast.parse(p.read_text()))
    )
    assert silent == []


def _may_import(path: Path) -> set[str] | None:
    """The modules and packages a package's docstring says it may import (None: it says none)."""
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    said = re.search(r"May import:(.*?)(?:\.\s|\.$)", doc, re.DOTALL)
    return set(re.findall(r"``([a-z_.]+)``", said.group(1))) if said else None


@pytest.mark.parametrize("package", PACKAGES)
def test_each_top_level_package_says_what_it_may_import(package):
    # Issue 10: each package's docstring says what it owns and what it may import; said as
    # "May import: ...", the test below holds the package to it.
    assert _may_import(MODULES[package]) is not None


def test_each_package_imports_only_what_its_docstring_says_it_may():
    wrong = []
    for package, path in MODULES.items():
        allowed = _may_import(path) if path.name == "__init__.py" else None
        if allowed is None:
            continue
        for module, targets in GRAPH.items():
            if module != package and not _is_package_of(package, module):
                continue
            wrong += [
                f"{module} imports {target} ({package}: 'May import' does not name it)"
                for target in sorted(targets)
                if target != package
                and not _is_package_of(package, target)
                and not any(target == a or _is_package_of(a, target) for a in allowed)
            ]
    assert wrong == []


def test_readme_names_every_part_of_tasks():
    # README's "How it fits together" is where a newcomer learns which stage a file belongs to
    # (issue 10): every package of tasks/, and every module at its top, is named there.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## How it fits together", 1)[1].split("\n## ", 1)[0]
    tasks = ROOT / "tasks"
    packages = [
        f"`tasks/{p.name}/`" for p in sorted(tasks.iterdir()) if (p / "__init__.py").exists()
    ]
    modules = [p.name for p in sorted(tasks.glob("*.py")) if p.name != "__init__.py"]
    unnamed = [p for p in packages if p not in section] + [
        m for m in modules if f"`{m}`" not in section and f"`tasks/{m}`" not in section
    ]
    assert unnamed == []
