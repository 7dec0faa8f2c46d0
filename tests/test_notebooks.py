"""Every notebook runs top to bottom in a fresh kernel from a copy outside the repository, and
shows a reader what it promises: a figure for every plotting cell, an SVG for every drawn tree, a
widget for every stepper, and no error or traceback anywhere. Notebooks are committed without
outputs. The README's tour runs too and ends by drawing its tree.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
TIME_LIMIT_S = 240  # per notebook
TIMINGS = ROOT / "build" / "notebook_times.json"

#: A cell whose last line draws a tree, plots, or builds a stepper / comparison.
DRAWS_TREE = re.compile(r"^(hm\.render\(|hm\.render_|.*\bhm\.render\(.*\) if )")
PLOTS = re.compile(r"\b(plt\.subplots|plt\.show|sim\.plot_\w+|\.plot(\.\w+)?\()")
STEPPER = re.compile(r"^(hm\.Stepper\(|stepper$|hm\.compare\()")


def test_there_are_notebooks() -> None:
    assert len(NOTEBOOKS) >= 5, [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: outputs committed"


def _last_line(source: str) -> str:
    lines = [ln for ln in source.strip().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return lines[-1].strip() if lines else ""


def _mimetypes(cell) -> set[str]:
    return {m for o in cell.outputs for m in o.get("data", {})}


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_shows_what_it_promises(path: Path, tmp_path: Path) -> None:
    copy = tmp_path / path.name  # outside the repository: nothing may rely on the folder it runs in
    shutil.copy(path, copy)
    nb = nbformat.read(copy, as_version=4)
    client = NotebookClient(nb, timeout=TIME_LIMIT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{errors[0].get('ename')}: {errors[0].get('evalue')}"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        where = f"{path.name} cell {i}: {_last_line(cell.source)[:60]!r}"
        text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
        assert "Traceback" not in text, where
        kinds = _mimetypes(cell)
        last = _last_line(cell.source)
        if DRAWS_TREE.match(last):
            assert "image/svg+xml" in kinds, f"{where}: no tree drawn"
            svg = next(o["data"]["image/svg+xml"] for o in cell.outputs if "image/svg+xml" in o.get("data", {}))
            assert 'class="node"' in svg, f"{where}: an empty drawing"
        if PLOTS.search(cell.source):
            assert "image/png" in kinds, f"{where}: no figure shown"
        if STEPPER.match(last):
            assert "application/vnd.jupyter.widget-view+json" in kinds, f"{where}: no stepper shown"
    first, last_md = nb.cells[0].source.lower(), nb.cells[-1].source.lower()
    assert "what you will see" in first and "what to try next" in last_md, path.name
    TIMINGS.parent.mkdir(exist_ok=True)
    times = json.loads(TIMINGS.read_text()) if TIMINGS.exists() else {}
    times[path.name] = round(elapsed, 2)
    TIMINGS.write_text(json.dumps(times, indent=1, sort_keys=True))


def test_readme_tour_ends_by_drawing_its_tree(tmp_path: Path, monkeypatch) -> None:
    import graphviz

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    tour = re.search(r"## A ten-line tour\s+```python\n(.*?)```", readme, re.S).group(1)
    tree = ast.parse(tour)
    *body, last = tree.body
    assert isinstance(last, ast.Expr), "the tour's last line must be an expression a notebook displays"
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(ast.Module(body, []), "README tour", "exec"), scope)  # noqa: S102 - our own README
    shown = eval(compile(ast.Expression(last.value), "README tour", "eval"), scope)  # noqa: S307
    assert isinstance(shown, graphviz.Digraph)
    assert shown.pipe(format="svg", encoding="utf-8").count('class="node"') >= 2
