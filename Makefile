# The whole set-up is two targets: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --disable-pip-version-check -c constraints.txt
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test install install-dev migrate lint web web-client web-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check --quiet --upgrade pip

# torch first, on its own: constraints.txt pins the CPU build so nothing pulls a CUDA one.
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) --quiet torch==2.13.0
	$(PIP) --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

migrate: install
	$(BIN)/pigeonhole migrate

## Build the web app (web/, Svelte) into src/pigeonhole/web_dist, which the API serves at /.
web/node_modules/.installed: web/package.json web/package-lock.json
	cd web && npm ci --no-audit --no-fund
	touch $@

web: web/node_modules/.installed
	cd web && npm run build

## Regenerate the web app's typed API client from the app's OpenAPI document (after any API change).
web-client: install web/node_modules/.installed
	$(BIN)/python web/scripts/dump_openapi.py web/src/lib/api/openapi.json
	cd web && npm run generate:client

## Start Pigeonhole on http://$(HOST):$(PORT) with the embedded defaults (SQLite + files under ./data).
run: web migrate
	$(BIN)/pigeonhole serve --host $(HOST) --port $(PORT)

lint: install-dev
	$(BIN)/ruff check src tests

## The web app's type check and unit tests (Vitest).
web-test: web/node_modules/.installed
	cd web && npm run check && npm test

## Run the whole test suite (PostgreSQL too when PIGEONHOLE_TEST_POSTGRES_URL is set); tests/e2e drive the
## built web app in Chromium.
test: install-dev lint web web-test
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache web/node_modules src/pigeonhole/web_dist test-output
