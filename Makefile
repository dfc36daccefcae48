# imap-gateway developer and CI entry points.
#   make test       Debian deps (if missing, as root) + .venv + imaptest + lint + typecheck
#                   + the whole pytest suite
#   make lint       ruff (config: [tool.ruff] in pyproject.toml)
#   make typecheck  mypy over gateway/ (config: [tool.mypy]; strict for imap and proxy)
#   make demo       a throw-away Dovecot + the gateway on localhost:10993 / :10143 (Ctrl-C stops)
#   make bench      benchmarks (bench/)
#   make screenshots  docs/screenshots/*.png of the portal (Dovecot + gateway + headless Chromium)
#   make fuzz       1,000,000 fuzz inputs over the protocol core, the long differential run
#                   against Dovecot, imaptest's stress mode through the gateway (docs/fuzzing.md)
#   make fuzz-differential  the long differential run alone (FUZZ_DIFF_COUNT, FUZZ_DIFF_SEED)
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

.PHONY: venv deps imaptest test demo bench lint typecheck screenshots fuzz

# Reinstall only when pyproject.toml changed (the stamp lives inside the venv).
venv: $(STAMP)
$(STAMP): pyproject.toml
	@echo "venv: $(VENV) (pip install -e '.[test]')"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

deps:
	scripts/deps.sh

# Dovecot's IMAP tester for tests/e2e/test_imaptest.py, built once into .cache/imaptest.
imaptest: deps
	scripts/imaptest.sh

# The static checks run first: a lint or type error fails the build before the suite starts.
test: deps venv imaptest lint typecheck
	$(VENV)/bin/pytest $(PYTEST_ARGS)

demo: venv
	scripts/demo.sh

bench: venv
	$(PY) -m bench

screenshots: deps venv
	$(PY) scripts/portal_screenshots.py

lint: venv
	$(VENV)/bin/ruff check .

typecheck: venv
	$(VENV)/bin/mypy

# atheris (coverage-guided) when it installs; otherwise python -m fuzz uses its own mutator.
$(FUZZ_STAMP): pyproject.toml | $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,fuzz]' \
	  || echo "fuzz: atheris did not install; python -m fuzz uses its built-in mutator"
	touch $@

# The long run of tests/e2e/test_differential_framing.py (the default suite runs 150
# streams of a fixed seed):  make fuzz-differential FUZZ_DIFF_COUNT=20000 FUZZ_DIFF_SEED=7
# A failure prints seed and index; IGW_DIFF_STRICT=1 also fails on known disagreements.
FUZZ_DIFF_COUNT ?= 5000
FUZZ_DIFF_SEED ?= random
.PHONY: fuzz-differential
fuzz-differential: deps venv
	IGW_DIFF_COUNT=$(FUZZ_DIFF_COUNT) IGW_DIFF_SEED=$(FUZZ_DIFF_SEED) IGW_DIFF_CUTS=3 \
	  IGW_DIFF_MINIMIZE=$${IGW_DIFF_MINIMIZE:-5} \
	  $(VENV)/bin/pytest -q -s tests/e2e/test_differential_framing.py \
	  -k test_generated_streams

fuzz: deps venv imaptest $(FUZZ_STAMP)
	$(PY) -m fuzz --total $(FUZZ_TOTAL) --seed $(FUZZ_SEED)
	$(MAKE) fuzz-differential
	$(PY) scripts/imaptest_stress.py
