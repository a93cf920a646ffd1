# Every target creates .venv on first use, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint type format bench protos clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/cvm demo

# The full suite: what CI runs (`bash .ci/run`).
test: $(STAMP)
	$(BIN)/pytest -q

# The edit-test loop: everything but the slow tests (subprocess servers, SB3 training,
# a fresh serving-only install).
test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

type: $(STAMP)
	$(BIN)/mypy

protos: $(STAMP)
	$(BIN)/python -m server.gen_protos

bench: $(STAMP)
	$(BIN)/python -m bench.cli
	$(BIN)/python -m bench.simulator
	$(BIN)/python -m bench.training
	$(BIN)/python -m bench.policies
	$(BIN)/python -m bench.serve
	$(BIN)/python -m bench.serve_stages
	$(BIN)/python -m bench.log_floor
	$(BIN)/python -m bench.replay
	$(BIN)/python -m bench.ope
	$(BIN)/python -m bench.ope_export
	$(BIN)/python -m bench.paired --ref 1a8c4e9

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
