# The two commands that matter: `make demo` (the whole loop) and `make test` (the suite, both venvs).
SHELL := /bin/bash
.DEFAULT_GOAL := help

# The builder needs Python 3.12 (onnx2tf 2.x); the agent must work on 3.11 (Raspberry Pi OS Bookworm).
# pyenv's shims refuse versions that aren't selected, so look for real interpreters by path first.
PYENV_ROOT ?= $(shell pyenv root 2>/dev/null || echo $$HOME/.pyenv)
PY312 ?= $(firstword $(wildcard $(PYENV_ROOT)/versions/3.12*/bin/python3.12) $(shell command -v python3.12 2>/dev/null))
PY311 ?= $(firstword $(wildcard $(PYENV_ROOT)/versions/3.11*/bin/python3.11) $(shell command -v python3.11 2>/dev/null))
VENV := .venv
AVENV := .venv-agent
PYTEST_ARGS ?=

.PHONY: help install install-agent test test-bundle test-builder test-agent lint demo bench clean

help:
	@echo "make demo   - set up, then train → quantize → sign → publish → a node detects, over a real broker"
	@echo "make test   - set up both venvs and run lint + the whole test suite"
	@echo "make bench  - benchmarks (bench/), results in bench/results/; fails when one misses its target"
	@echo "make install / install-agent - just the environments"

$(VENV)/.installed: pyproject.toml
	@test -n "$(PY312)" || { echo "Python 3.12 not found: install it (pyenv install 3.12) or set PY312=/path/to/python3.12"; exit 1; }
	test -x $(VENV)/bin/python || $(PY312) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[builder,dev]'
	touch $@

$(AVENV)/.installed: pyproject.toml
	@test -n "$(PY311)" || { echo "Python 3.11 not found: set PY311=/path/to/python3.11"; exit 1; }
	test -x $(AVENV)/bin/python || $(PY311) -m venv $(AVENV)
	$(AVENV)/bin/python -m pip install -q --upgrade pip
	$(AVENV)/bin/python -m pip install -q -e '.[agent,dev]'
	touch $@

install: $(VENV)/.installed $(AVENV)/.installed
install-agent: $(AVENV)/.installed

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check agent builder tests bench
	$(VENV)/bin/mypy agent builder

# The trained bundle many tests share: built (or found in .cache/) before pytest, outside any test timeout.
test-bundle: $(VENV)/.installed
	$(VENV)/bin/python tests/fixtures/build_test_bundle.py --ensure .cache/test-bundle

test-builder: $(VENV)/.installed $(AVENV)/.installed test-bundle
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# The Pi's view: only .[agent] installed on 3.11; builder-only tests skip themselves.
# Each run ends with its skips counted by reason; with CI or EDGE_STRICT_SKIPS=1 set, a skip for something
# this setup provides (mosquitto, chromium, the test bundle, ...) fails it (tests/skip_policy.py).
test-agent: $(AVENV)/.installed
	$(AVENV)/bin/python -m pytest -m "not slow" $(PYTEST_ARGS)

test: lint test-builder test-agent

demo: $(VENV)/.installed
	$(VENV)/bin/python -m builder.demo

# Every benchmark runs even when one misses its target (exit 3) or fails; make fails at the end, naming them.
# Results: bench/results/*.json (ignored by git); bench/results/reference/ holds the committed ones.
bench: $(VENV)/.installed
	@failed=""; for b in bench/bench_*.py; do echo "== $$b"; $(VENV)/bin/python $$b || failed="$$failed $$b($$?)"; done; \
	if [ -n "$$failed" ]; then echo "bench: missed a target (exit 3) or failed:$$failed"; exit 1; fi

clean:
	rm -rf demo-out .cache test-artifacts bench/results/*.json .pytest_cache .mypy_cache .ruff_cache
