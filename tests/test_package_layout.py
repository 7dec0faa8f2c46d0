"""The package's house rules, read from its source: small files, no import circle, no file that
imports another file's private names.

* A package file has at most 300 lines, or its first docstring says why it needs more in a
  paragraph that starts with ``Size:``; none has more than 500.
* The modules' imports (every one: module level, inside functions, under ``TYPE_CHECKING``)
  form no circle.
* No module imports a name starting with one underscore from another module.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "himamba"
SOFT_LIMIT, HARD_LIMIT = 300, 500


def _modules(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of the package."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, str | None]]:
    """(imported module, imported name or None) for every import in the file that names a
    module of the package."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub, None) if sub in modules else (base, alias.name))
    return [(module, imported) for module, imported in found if module in modules and module != name]


def import_graph(package: Path = PACKAGE) -> tuple[dict[str, set[str]], list[str]]:
    """The package's import edges, and every private name one module imports from another."""
    modules = _modules(package)
    edges: dict[str, set[str]] = {m: set() for m in modules}
    private = []
    for name, path in modules.items():
        for module, imported in _imports(name, path, modules):
            edges[name].add(module)
            if imported and imported.startswith("_") and not imported.startswith("__"):
                private.append(f"{name} imports {imported} from {module}")
    return edges, private


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups = []
    for start in edges:
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                group = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    group.append(w)
                    if w == v:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return groups


def test_files_are_small_or_say_why() -> None:
    too_big, unexplained = [], []
    for name, path in _modules(PACKAGE).items():
        source = path.read_text(encoding="utf-8")
        lines = len(source.splitlines())
        if lines > HARD_LIMIT:
            too_big.append(f"{name}: {lines} lines")
        elif lines > SOFT_LIMIT:
            doc = ast.get_docstring(ast.parse(source)) or ""
            if not any(paragraph.startswith("Size:") for paragraph in doc.split("\n\n")):
                unexplained.append(f"{name}: {lines} lines")
    assert not too_big, f"over {HARD_LIMIT} lines (split them): {too_big}"
    assert not unexplained, f"over {SOFT_LIMIT} lines without a 'Size:' reason in the first docstring: {unexplained}"


def test_no_import_circle() -> None:
    edges, _ = import_graph()
    assert circles(edges) == []


def test_no_file_imports_another_files_private_names() -> None:
    _, private = import_graph()
    assert private == []


def test_the_checks_see_what_they_look_for(tmp_path: Path) -> None:
    """On a made-up package with a circle and a private import, both are found."""
    pkg = tmp_path / "himamba"
    (pkg / "core").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "__init__.py").write_text("")
    (pkg / "core" / "a.py").write_text("from himamba.core.b import _helper\n")
    (pkg / "core" / "b.py").write_text("def f():\n    from himamba.core import a\n")
    (pkg / "core" / "c.py").write_text("from . import b\n")
    edges, private = import_graph(pkg)
    assert circles(edges) == [["himamba.core.a", "himamba.core.b"]]
    assert private == ["himamba.core.a imports _helper from himamba.core.b"]
    assert edges["himamba.core.c"] == {"himamba.core.b"}
