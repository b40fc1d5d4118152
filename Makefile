# Two commands for a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8080
WRITE_KEY ?= dev-write-key=dev
DATA_DIR ?= .clickstream
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export CDK_DISABLE_CLI_TELEMETRY := true

.PHONY: run test lint synth clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed-run

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

## Synthesize the CDK app (templates in cdk.out/), offline.
synth: $(VENV)/.installed-dev node_modules/.installed
	npx cdk synth -q --no-notices

## Start the local pipeline with a dev write key and print how to send events.
run: $(VENV)/.installed-run
	$(BIN)/clickstream local --port $(PORT) --data-dir $(DATA_DIR) --write-key $(WRITE_KEY)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .

## Install everything the tests need, lint, and run the whole suite.
test: $(VENV)/.installed-dev node_modules/.installed | /usr/bin/chromium
	$(BIN)/ruff check .
	$(BIN)/pytest

/usr/bin/chromium:  # the page tests drive Debian's chromium; never a browser download
	if [ "$$(id -u)" = 0 ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; else echo "no chromium: page tests will be skipped"; fi

clean:
	rm -rf $(VENV) .clickstream cdk.out .pytest_cache .hypothesis
