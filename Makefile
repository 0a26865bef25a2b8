# Two entry points: `make demo` (install + run the pipeline) and `make test` (install + all tests).
# torch is installed first and pinned so pip takes the CPU wheel, not a multi-GB CUDA build.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0

.PHONY: setup demo test test-fast test-slow lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install "$(TORCH)"
	$(BIN)/pip install -e ".[full,dev]"
	touch $@

DEMO ?= builds/drone

demo: setup
	$(BIN)/edgeq doctor
	$(BIN)/edgeq build --profile drone --out $(DEMO)

test: setup lint test-fast test-slow

test-fast: setup
	$(BIN)/pytest -m "not slow"

test-slow: setup
	$(BIN)/pytest -m slow

lint: setup
	$(BIN)/ruff check edgeq tests benchmarks examples

clean:
	rm -rf $(VENV)
