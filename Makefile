# Every target that needs Python depends on setup: a fresh clone needs no other step.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast lint bench clean stack-up stack-down

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@echo "setting up $(VENV) (first run only: torch, ray, mlflow, ...)"
	$(BIN)/python -m pip install --quiet --upgrade pip 2>&1 | { grep -v 'is ignored: it is neither' || true; }
	$(BIN)/python -m pip install --quiet -e '.[dev]' 2>&1 | { grep -v 'is ignored: it is neither' || true; }
	@touch $(STAMP)

demo: setup
	$(BIN)/tcm demo

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow and not integration"

lint: setup
	$(BIN)/ruff check tcm pipelines jobs tests benchmarks

bench: setup
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/eval_speed.py
	$(BIN)/python benchmarks/model_step.py

# A real local stack on loopback: Ray head + 2 workers, S3 (moto), MLflow server. Safe to run twice.
stack-up: setup
	$(BIN)/python -m infra.local.stack up

stack-down: setup
	$(BIN)/python -m infra.local.stack down

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
