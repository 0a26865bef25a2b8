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

DEMO ?= runs/demo

demo: setup
	$(BIN)/edgeq doctor
	$(BIN)/edgeq profiles show drone
	$(BIN)/edgeq eval-task --data examples/drone/test.jsonl
	$(BIN)/edgeq finetune --data examples/drone/train.jsonl --out $(DEMO)/finetune --force
	$(BIN)/edgeq merge --adapter $(DEMO)/finetune --out $(DEMO)/merged --force
	$(BIN)/edgeq eval-task --model $(DEMO)/merged --data examples/drone/test.jsonl
	$(BIN)/edgeq export --model $(DEMO)/merged --quant Q4_K_M --imatrix-data examples/drone/train.jsonl \
		--out $(DEMO)/drone.Q4_K_M.gguf --force
	$(BIN)/edgeq eval $(DEMO)/drone.Q4_K_M.gguf --reference $(DEMO)/merged --data examples/drone/test.jsonl

test: setup lint test-fast test-slow

test-fast: setup
	$(BIN)/pytest -m "not slow"

test-slow: setup
	$(BIN)/pytest -m slow

lint: setup
	$(BIN)/ruff check edgeq tests benchmarks examples

clean:
	rm -rf $(VENV)
