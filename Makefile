# Two front-door targets (see README.md):
#   make quickstart   set up .venv and run the quickstart experiment
#   make test         set up .venv and run the default test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

.PHONY: setup quickstart test test-all lint notebooks bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The hf extra (torch + transformers: the reference the HF interop tests compare
	# with). torch is pinned exactly in pyproject and constraints.txt: this machine
	# image's pip serves that version as the CPU build, any looser spec pulls CUDA.
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev,hf]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

quickstart: setup
	$(PY) -m experiments.quickstart --workdir runs/quickstart

# Two workers (a 2-core machine's both cores), each test file whole on one worker so its
# module fixtures are built once.
PYTEST_WORKERS ?= -n 2 --dist loadfile

test: setup
	$(PY) -m pytest -q -m "not slow" $(PYTEST_WORKERS)

test-all: setup
	$(PY) -m pytest -q $(PYTEST_WORKERS)

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# Re-pair notebooks/*.py with their .ipynb (inputs come from whichever was edited
# last), then strip outputs and execution counts, keeping cell ids (notebooks/README.md).
define STRIP_NOTEBOOKS
import glob, nbformat
for path in sorted(glob.glob("notebooks/*.ipynb")):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.write(nb, path)
endef
export STRIP_NOTEBOOKS

notebooks: setup
	$(VENV)/bin/jupytext --sync notebooks/*.py
	$(PY) -c "$$STRIP_NOTEBOOKS"

bench: setup
	$(PY) -m pip install --quiet -c constraints.txt -e ".[bench]"
	$(PY) benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) runs
