# The words README, CI and scripts share: make demo | make test | make down
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo down test lint unit chaos cluster-local

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

# The chaos tests run in a pytest process of their own: they talk to token-authenticated clusters,
# and Ray's client keeps the auth settings it first read for the life of a process, which broke
# every in-process training run of the integration session that came after them.
test: setup lint
	$(BIN)/python -m pytest -q -rs --durations=15 -m "not slow" --ignore=tests/chaos
	$(BIN)/python -m pytest -q -rs --durations=8 -m "not slow" tests/chaos

# The fault tests that take minutes (a killed worker node, ...) besides the short ones make test
# runs; the figures come from bench/chaos.py (every fault under load) and bench/soak.py (10 min).
chaos: setup
	$(BIN)/python -m pytest -q -rs --durations=15 tests/chaos

# A head and two worker nodes on this machine, each its own `ray start`; Ctrl-C stops exactly them.
cluster-local: setup
	$(BIN)/python -m maas.localcluster up --workers 2
