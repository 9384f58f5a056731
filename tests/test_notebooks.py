"""Every notebook in notebooks/ is paired, stripped, and runs from top to bottom.

Each notebook is a jupytext pair: `name.py` (py:percent, what is reviewed and linted)
and `name.ipynb` (what Jupyter opens), kept with no outputs. The .py is the source of
truth: it is executed cell by cell in a fresh `python3` kernel (ipykernel, running this
interpreter) with a temporary directory as its working directory and TMPDIR, so a run
writes nothing into the repository. A failing cell is reported by notebook and cell
number, with its source and the kernel's traceback.

Re-sync and strip after editing either file: `make notebooks` (notebooks/README.md).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.py"))
KERNEL = "python3"
CELL_TIMEOUT_S = 120  # a hang guard, not a speed test (notebooks take seconds)


@pytest.fixture(autouse=True)
def _kernels_of_this_venv_first(monkeypatch):
    """Kernel specs are looked up in this venv first: a `python3` kernel of another
    Python (say, one in ~/.local/share/jupyter) must not run the notebooks."""
    monkeypatch.setenv("JUPYTER_PATH", str(Path(sys.prefix) / "share" / "jupyter"))


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 6, [p.name for p in NOTEBOOKS]


def _cells(notebook) -> list[tuple[str, str]]:
    return [(cell.cell_type, cell.source) for cell in notebook.cells]


@pytest.mark.parametrize("py", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_paired_and_stripped(py: Path):
    ipynb = py.with_suffix(".ipynb")
    sync = "run `make notebooks` (jupytext --sync, then strip outputs)"
    assert ipynb.is_file(), f"{ipynb.name} is missing: {sync}"
    raw = nbformat.read(ipynb, as_version=4)
    nbformat.validate(raw)
    formats = raw.metadata.get("jupytext", {}).get("formats", "")
    assert set(formats.split(",")) == {"ipynb", "py:percent"}, f"{ipynb.name}: formats {formats!r}"
    for index, cell in enumerate(raw.cells):
        if cell.cell_type == "code":
            where = f"{ipynb.name} cell {index}"
            assert cell.outputs == [], f"{where} has outputs ({sync})"
            assert cell.execution_count is None, f"{where} has an execution count ({sync})"
    from_py, from_ipynb = _cells(jupytext.read(py)), _cells(jupytext.read(ipynb))
    for index, (a, b) in enumerate(zip(from_py, from_ipynb, strict=False)):
        assert a == b, f"{py.stem}: cell {index} differs between .py and .ipynb ({sync})"
    assert len(from_py) == len(from_ipynb), f"{py.stem}: cell counts differ ({sync})"


def _client(notebook, workdir: Path) -> NotebookClient:
    return NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name=KERNEL,
        resources={"metadata": {"path": str(workdir)}},
    )


def _kernel_env(workdir: Path) -> dict[str, str]:
    """This process's environment, on CPU, temporary files in `workdir`, and matplotlib
    left to the kernel (inline figures)."""
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    env.update(JAX_PLATFORMS="cpu", TMPDIR=str(workdir), PYTHONUNBUFFERED="1")
    return env


def test_kernel_runs_this_interpreter(tmp_path):
    """The `python3` kernel is this venv's Python, so notebooks see the jaxlm under test."""
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("import sys, jaxlm\nprint(sys.prefix, jaxlm.__file__)")]
    )
    client = _client(notebook, tmp_path)
    client.execute(env=_kernel_env(tmp_path))
    prefix, module = notebook.cells[0].outputs[0]["text"].split()
    assert Path(prefix).resolve() == Path(sys.prefix).resolve()
    assert Path(module).resolve().is_relative_to(REPO)


# One notebook executes in the default run (the cheapest: ~12 s on 2 cores); the others
# take 12-72 s each (~200 s together) and run with the slow tests (`make test-all`).
# The pairing, stripping and kernel tests above cover every notebook by default.
DEFAULT_EXECUTED = {"data_and_packing"}


@pytest.mark.parametrize(
    "py",
    [
        p if p.stem in DEFAULT_EXECUTED else pytest.param(p, marks=pytest.mark.slow)
        for p in NOTEBOOKS
    ],
    ids=lambda p: p.stem,
)
def test_notebook_executes(py: Path, tmp_path, record_property):
    notebook = jupytext.read(py)
    client = _client(notebook, tmp_path)
    start = time.perf_counter()
    cell_seconds = []
    with client.setup_kernel(env=_kernel_env(tmp_path)):
        for index, cell in enumerate(notebook.cells):
            t0 = time.perf_counter()
            try:
                client.execute_cell(cell, index)
            except CellExecutionError as error:
                pytest.fail(
                    f"notebooks/{py.name}: cell {index} (0-based) failed:\n{error}", pytrace=False
                )
            cell_seconds.append((time.perf_counter() - t0, index))
    seconds = time.perf_counter() - start
    record_property("seconds", round(seconds, 1))
    slowest = ", ".join(f"cell {i} {s:.1f}s" for s, i in sorted(cell_seconds)[::-1][:3])
    print(f"\n{py.stem}: executed in {seconds:.1f}s (slowest: {slowest})")

    # Every notebook draws something, and a figure that never reaches the page (say,
    # after a library switched matplotlib to its file-only Agg backend) is a bug too.
    total = 0
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        images = sum("image/png" in out.get("data", {}) for out in cell.outputs)
        shown = cell.source.count("plt.show()") + cell.source.count("display(Image(")
        assert images >= shown, f"notebooks/{py.name}: cell {index} showed {images}/{shown} figures"
        total += images
    assert total, f"notebooks/{py.name} displayed no figure"
