"""The architecture, checked statically: no import cycle among ``benchmark.*`` / ``methods.*`` modules, and the layers
import only downwards. Imports are read with ``ast`` from every module, function-local imports included.

Layers: ``benchmark.data`` and ``benchmark.vq`` never import ``benchmark.report``, ``benchmark.runner``,
``benchmark.cli`` or ``benchmark.config``; ``methods/*`` import only ``benchmark.registry``, ``benchmark.params``,
``benchmark.vq*`` and ``benchmark.data*`` (and their own package).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("benchmark", "methods")
UPPER = ("benchmark.report", "benchmark.runner", "benchmark.cli", "benchmark.config")
METHOD_ALLOWED = ("benchmark.registry", "benchmark.params", "benchmark.vq", "benchmark.data", "methods")


def modules(root: Path = REPO) -> dict[str, Path]:
    """Module name -> file, for every .py under the packages (``pkg/__init__.py`` is ``pkg``)."""
    out = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports anywhere in its file (resolved to the longest known module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def add(target: str) -> None:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                full = f"{base}.{alias.name}"
                add(full if full in known else base)
    return found


def graph(root: Path = REPO) -> dict[str, set[str]]:
    mods = modules(root)
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def breaches(g: dict[str, set[str]]) -> list[str]:
    out = []
    for mod, deps in sorted(g.items()):
        for dep in sorted(deps):
            if (_within(mod, "benchmark.data") or _within(mod, "benchmark.vq")) and any(_within(dep, u) for u in UPPER):
                out.append(f"{mod} imports {dep}")
            if _within(mod, "methods") and not any(_within(dep, a) for a in METHOD_ALLOWED):
                out.append(f"{mod} imports {dep}")
    return out


def test_no_import_cycle():
    assert cycles(graph()) == []


def test_layers_import_only_downwards():
    assert breaches(graph()) == []


def test_the_checker_sees_local_relative_and_from_package_imports(tmp_path):
    files = {
        "benchmark/__init__.py": "",
        "benchmark/runner.py": "import benchmark.data\n",
        "benchmark/data/__init__.py": "from .dataset import X\n",
        "benchmark/data/dataset.py": "def f():\n    from benchmark import runner\n",  # a local import: a breach
        "benchmark/vq/__init__.py": "",
        "benchmark/vq/a.py": "from . import b\n",
        "benchmark/vq/b.py": "from benchmark.vq.a import thing\n",                # a cycle with a.py
        "methods/__init__.py": "",
        "methods/m.py": "from benchmark.vq import a\nfrom benchmark.harness import evaluate\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    (tmp_path / "benchmark/harness.py").write_text("")
    g = graph(tmp_path)
    assert g["benchmark.data"] == {"benchmark.data.dataset"}
    assert g["methods.m"] == {"benchmark.vq.a", "benchmark.harness"}
    assert sorted(cycles(g)) == [["benchmark.data", "benchmark.data.dataset", "benchmark.runner"],
                                 ["benchmark.vq.a", "benchmark.vq.b"]]
    assert breaches(g) == ["benchmark.data.dataset imports benchmark.runner", "methods.m imports benchmark.harness"]


@pytest.mark.parametrize("module", ["benchmark.data", "benchmark.vq", "benchmark.registry", "benchmark.config"])
def test_lower_layers_import_without_the_upper_ones(module):
    """Importing a lower layer for real loads none of report/runner/cli (a runtime check of the static one)."""
    import subprocess
    import sys
    code = (f"import sys, {module}; bad = [m for m in sys.modules if m.startswith(('benchmark.report', "
            f"'benchmark.runner', 'benchmark.cli'))]; print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
