# The two commands a newcomer runs (see README): `make demo` and `make test`.
# Both create ./.venv (or reuse it) and install with torch pinned to the 2.13.0 CPU build:
# an unpinned torch would pull a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test install install-dev lint docs bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[all]"

install-dev: $(BIN)/python
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[dev]"

demo: install
	$(BIN)/python examples/demo.py

lint:
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

test: install-dev lint
	$(BIN)/python -m pytest
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d .cache/site

bench: install-dev
	$(BIN)/python benchmarks/bench_scorer.py

clean:
	rm -rf $(VENV) .cache build dist site
