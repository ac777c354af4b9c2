# Every target that needs Python depends on setup: a fresh clone needs no other step.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
comma := ,
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast lint bench clean stack-up stack-down

setup: $(STAMP)

# uv installs the ~7 GB of wheels (torch + its CUDA libraries, ray, mlflow) in parallel: 1.3 min where pip took
# 3.7 on a 2-core machine. uv does not read pip's configuration, so the extra indexes and find-links set there
# (a local mirror: `pip config get ...`) are handed over; pip's "best version across all indexes" is
# --index-strategy unsafe-best-match. torch and torchvision are pinned in pyproject.toml.
pip_setting = $(shell $(PY) -m pip config get global.$(1) 2>/dev/null)
UV_ARGS = --python $(BIN)/python --quiet --compile-bytecode --index-strategy unsafe-best-match \
	$(foreach u,$(call pip_setting,extra-index-url),--extra-index-url $(u)) \
	$(foreach u,$(call pip_setting,find-links),--find-links $(u))
# install(EXTRAS): uv when it can be had from the index, else pip (slower, same result)
install = if $(BIN)/python -m pip install --quiet uv 2>/dev/null; then $(BIN)/uv pip install $(UV_ARGS) -e '.[$(1)]'; \
	else echo "uv unavailable: installing with pip (a few minutes)"; $(BIN)/python -m pip install --quiet -e '.[$(1)]'; fi

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@echo "setting up $(VENV) (first run only: torch, ray, mlflow, ...)"
	@$(call install,dev)
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
	@$(call install,dev$(comma)bench)
	$(BIN)/python benchmarks/eval_speed.py
	$(BIN)/python benchmarks/model_step.py

# A real local stack on loopback: Ray head + 2 workers, S3 (moto), MLflow server. Safe to run twice. Buckets and
# MLflow store survive stack-down + stack-up together; `make stack-down WIPE=1` forgets both.
stack-up: setup
	$(BIN)/python -m infra.local.stack up

stack-down: setup
	$(BIN)/python -m infra.local.stack down $(if $(WIPE),--wipe)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
