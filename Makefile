# Set-up and entry points. Every target creates .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The CPU build of torch: installed before the project so pip never pulls the CUDA build.
TORCH  ?= torch==2.13.0
export HF_HUB_OFFLINE = 1
export TOKENIZERS_PARALLELISM = false

.PHONY: demo test test-fast install clean

$(BIN)/align: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(BIN)/align

install: $(BIN)/align

demo: install
	$(BIN)/align run

# The whole suite (what CI runs, .ci/run), on every core (TEST_WORKERS=0: in this process).
TEST_WORKERS ?= auto
test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# Everything that trains no model: under a minute.
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf runs .pytest_cache
