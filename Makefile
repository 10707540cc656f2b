# The template repository's commands. `make test` is the whole suite, Kafka and Redis included.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# `make new` needs copier alone: a small environment of its own, not the test environment.
NEW_VENV ?= .cache/new-venv
PEERS_VENV ?= .cache/peers-venv
DEST ?=
NEW_ARGS ?=

.PHONY: help install services stop-services test faults test-fast new lint docs bench bench-full peers wrk

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

install: $(VENV)/.installed  ## Shared environment: template test tools + the generated service's deps

$(VENV)/.installed: pyproject.toml template/pyproject.toml.jinja
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --group test --group bench
	$(PY) scripts/service_requirements.py > $(VENV)/service-requirements.txt
	$(PY) -m pip install -q -r $(VENV)/service-requirements.txt
	touch $@

services:  ## Start Kafka and Redis on 127.0.0.1 (installed on first use)
	scripts/services.sh start

stop-services:  ## Stop them (data is kept)
	scripts/services.sh stop

test: install services lint docs  ## Everything: render every variant, lint, type-check, run generated suites, faults
	. <(scripts/services.sh env) && $(PY) -m pytest -n 2 --dist loadgroup -m "not faults"
	. <(scripts/services.sh env) && $(PY) -m pytest -m faults

faults: install services  ## The fault suite alone: crashes, bad input, load; writes docs/reliability.md
	. <(scripts/services.sh env) && $(PY) -m pytest -m faults

lint:  ## ruff over the template repository's own Python (the template is checked as rendered)
	$(PY) -m ruff check tests hooks scripts bench
	$(PY) -m ruff format --check tests hooks scripts bench

test-fast: install  ## Only what needs no Kafka or Redis
	$(PY) -m pytest -m "not services and not faults"

docs: install  ## Build the documentation site (strict: broken links fail) into .venv/site
	$(VENV)/bin/mkdocs build --strict --quiet --site-dir $(VENV)/site
	@echo "docs: open $(abspath $(VENV))/site/index.html"

bench: install services wrk peers  ## Benchmarks, quick mode (a few minutes): ratios, plot, docs/benchmarks.md
	. <(scripts/services.sh env) && PEERS_PYTHON=$(PEERS_VENV)/bin/python $(PY) bench/run.py --quick

bench-full: install services wrk peers  ## Benchmarks with larger runs
	. <(scripts/services.sh env) && PEERS_PYTHON=$(PEERS_VENV)/bin/python $(PY) bench/run.py

peers: $(PEERS_VENV)/.installed  ## The bench's peers (FastStream, Quix Streams), in a venv of their own

$(PEERS_VENV)/.installed: pyproject.toml
	python3 -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install -q --upgrade pip
	$(PEERS_VENV)/bin/python -m pip install -q --group peers
	touch $@

wrk:  ## The HTTP load generator the query benchmark drives (Debian's wrk), installed if missing
	@command -v wrk >/dev/null || { echo "wrk: installing it with apt-get..."; \
		$(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq wrk || \
		{ $(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq && \
		  $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq wrk; }; }

new: $(NEW_VENV)/.installed  ## Scaffold a service, asking each question, into DEST (default ../<service_name>)
	$(NEW_VENV)/bin/python scripts/new.py $(DEST) $(NEW_ARGS)

$(NEW_VENV)/.installed: pyproject.toml
	python3 -m venv $(NEW_VENV)
	$(NEW_VENV)/bin/python -m pip install -q "$$(grep -o '"copier[^"]*"' pyproject.toml | tr -d '"')"
	touch $@
