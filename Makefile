# Two entry points: `make demo` (install + run the pipeline) and `make test` (install + all tests).
# torch is installed first and pinned so pip takes the CPU wheel, not a multi-GB CUDA build.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0

.PHONY: setup demo test test-all-but-acceptance test-acceptance test-fast test-slow lint clean

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

test: setup lint test-all-but-acceptance test-acceptance

# Every test but the acceptance build runs on every core (one test file per worker: module fixtures
# are built once; no test there times itself against a budget that sharing the CPU would break).
# The acceptance build runs alone: its time is a figure we record.
test-all-but-acceptance: setup
	$(BIN)/pytest -m "not acceptance" -n auto --dist loadfile --durations=25

test-acceptance: setup
	$(BIN)/pytest -m acceptance -s

# While developing: the quick tier alone, or the slow one.
test-fast: setup
	$(BIN)/pytest -m "not slow" -n auto --dist loadfile

test-slow: setup
	$(BIN)/pytest -m slow

lint: setup
	$(BIN)/ruff check edgeq tests benchmarks examples

clean:
	rm -rf $(VENV)
