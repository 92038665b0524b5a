# hagan-kit: `make demo` runs the main job, `make test` the test suite. Both set up .venv first.
# `make setup` alone installs the kit with its dev and notebooks extras (jupyterlab included):
#   .venv/bin/jupyter lab notebooks/
PYTHON ?= python3
VENV ?= .venv
# torch is installed only when the venv cannot import it; ask for a CUDA build with e.g.
#   make TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124" setup
TORCH_SPEC ?= torch==2.13.0
# Reuse a torch already installed system-wide (Colab, clusters): make VENV_FLAGS=--system-site-packages
VENV_FLAGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.hagan-installed

.PHONY: setup demo test test-fast lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install $(TORCH_SPEC)
	$(BIN)/python -m pip install -e ".[dev,notebooks]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	$(BIN)/jupyter lab --version >/dev/null  # students open the notebooks with it
	touch $(STAMP)

demo: setup
	$(BIN)/python -m hagan.demo_job --out outputs

test: setup
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

lint: setup
	$(BIN)/python -m pip install -q ruff mypy
	$(BIN)/ruff check hagan tests benchmarks data_scripts
	$(BIN)/python -m mypy hagan

clean:
	rm -rf $(VENV) outputs build
