# imap-gateway developer and CI entry points.
#   make test    Debian deps (if missing, as root) + .venv + the whole pytest suite
#   make demo    a throw-away Dovecot + the gateway on 127.0.0.1:10993 / :10143 (Ctrl-C stops)
#   make bench   benchmarks (bench/)      make lint   ruff
#   make fuzz    1,000,000 fuzz inputs over the protocol core (docs/fuzzing.md)
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?= -q

FUZZ_TOTAL ?= 1000000
FUZZ_SEED ?= 1
FUZZ_STAMP := $(VENV)/.installed-fuzz

.PHONY: venv deps test demo bench lint fuzz

# Reinstall only when pyproject.toml changed (the stamp lives inside the venv).
venv: $(STAMP)
$(STAMP): pyproject.toml
	@echo "venv: $(VENV) (pip install -e '.[test]')"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

deps:
	scripts/deps.sh

test: deps venv
	$(VENV)/bin/pytest $(PYTEST_ARGS)

demo: venv
	scripts/demo.sh

bench: venv
	$(PY) -m bench

lint: venv
	$(VENV)/bin/ruff check .

# atheris (coverage-guided) when it installs; otherwise python -m fuzz uses its own mutator.
$(FUZZ_STAMP): pyproject.toml | $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,fuzz]' \
	  || echo "fuzz: atheris did not install; python -m fuzz uses its built-in mutator"
	touch $@

fuzz: venv $(FUZZ_STAMP)
	$(PY) -m fuzz --total $(FUZZ_TOTAL) --seed $(FUZZ_SEED)
