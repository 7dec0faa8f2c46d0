"""Every notebook runs top to bottom in a fresh kernel, and is committed without outputs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
TIME_LIMIT_S = 240  # per notebook
TIMINGS = Path(__file__).resolve().parents[1] / "build" / "notebook_times.json"


def test_there_are_notebooks() -> None:
    assert len(NOTEBOOKS) >= 5, [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: outputs committed"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=TIME_LIMIT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors[0].get("evalue")
    first = nb.cells[0].source.lower()
    last = nb.cells[-1].source.lower()
    assert "what you will see" in first and "what to try next" in last, path.name
    TIMINGS.parent.mkdir(exist_ok=True)
    times = json.loads(TIMINGS.read_text()) if TIMINGS.exists() else {}
    times[path.name] = round(elapsed, 2)
    TIMINGS.write_text(json.dumps(times, indent=1, sort_keys=True))
