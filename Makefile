# Every target creates .venv on first use, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all lint type format bench protos clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/cvm demo

test: $(STAMP)
	$(BIN)/pytest -m "not slow" -q

test-all: $(STAMP)
	$(BIN)/pytest -q

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
	$(BIN)/python -m bench.simulator
	$(BIN)/python -m bench.training
	$(BIN)/python -m bench.policies
	$(BIN)/python -m bench.serve

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
