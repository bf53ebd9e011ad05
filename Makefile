# The words README, CI and scripts share: make demo | make test | make down
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo down test lint unit

setup: $(VENV)/.installed

# Pinned install (constraints.txt); re-runs only when the dependency files change.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	# the optimize stage's `pruned` variant: tfmot pins absl-py~=1.2, TensorFlow 2.21 needs newer,
	# and tfmot runs with it, so it goes in without its dependencies (maas/optimize/prune.py)
	$(BIN)/pip install -q --no-deps -c constraints.txt tensorflow-model-optimization
	touch $@

demo: setup
	bash scripts/demo.sh

down:
	bash scripts/down.sh

lint: setup
	$(BIN)/ruff check .

unit: setup
	$(BIN)/python -m pytest -q tests/unit

test: setup lint
	$(BIN)/python -m pytest -q -rs --durations=15
