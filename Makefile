# Two commands for a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8080
WRITE_KEY ?= dev-write-key=dev
DATA_DIR ?= .clickstream
USERS ?= 20
DURATION ?= 30
NPX ?= npx
# pip's output (and setuptools' editable-install notice) goes to a log, shown only if pip fails.
PIP_INSTALL = @echo "pip install $(1) (log: $(VENV)/pip.log)"; \
	$(BIN)/pip install --quiet $(1) > $(VENV)/pip.log 2>&1 || { cat $(VENV)/pip.log; exit 1; }
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export CDK_DISABLE_CLI_TELEMETRY := true

.PHONY: run test lint synth bootstrap deploy load clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(call PIP_INSTALL,--upgrade pip)

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(call PIP_INSTALL,-e .)
	@touch $@

$(VENV)/.installed-load: pyproject.toml | $(BIN)/python
	$(call PIP_INSTALL,-e '.[load]')
	@touch $@ $(VENV)/.installed-run

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(call PIP_INSTALL,-e '.[dev]')
	@touch $@ $(VENV)/.installed-run $(VENV)/.installed-load

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	@touch $@

## Synthesize the CDK app (templates in cdk.out/), offline; a throwaway key stands in for your writeKeys.
synth: $(VENV)/.installed-dev node_modules/.installed
	$(NPX) cdk synth -q --no-notices -c 'writeKeys={"synth-check-key-1":"web"}'

## Once per account and region: the CDK's bootstrap stack (AWS credentials from the usual chain).
bootstrap: $(VENV)/.installed-dev node_modules/.installed
	$(NPX) cdk bootstrap --no-notices $(CDK_ARGS)

## Deploy every stack. WRITE_KEYS='{"<key>":"<source>"}' sets the write keys (else cdk.json's);
## CDK_ARGS passes anything else, e.g. CDK_ARGS='-c createServerless=true'.
deploy: $(VENV)/.installed-dev node_modules/.installed
	$(NPX) cdk deploy --all --no-notices $(if $(WRITE_KEYS),-c 'writeKeys=$(WRITE_KEYS)') $(CDK_ARGS)

## Load-test the running local pipeline with Locust, headless: USERS users for DURATION seconds.
load: $(VENV)/.installed-load
	$(BIN)/locust -f benchmark/locustfile.py --headless -u $(USERS) -r $(USERS) -t $(DURATION)s --only-summary \
		--host http://127.0.0.1:$(PORT) --write-key $(firstword $(subst =, ,$(WRITE_KEY)))

## Start the local pipeline with a dev write key and print how to send events.
run: $(VENV)/.installed-run
	$(BIN)/clickstream local --port $(PORT) --data-dir $(DATA_DIR) --write-key $(WRITE_KEY)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/mypy

## Install everything the tests need, lint, type-check, and run the whole suite.
test: $(VENV)/.installed-dev node_modules/.installed | /usr/bin/chromium
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest

/usr/bin/chromium:  # the page tests drive Debian's chromium; never a browser download
	if [ "$$(id -u)" = 0 ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; else echo "no chromium: page tests will be skipped"; fi

clean:
	rm -rf $(VENV) .clickstream cdk.out .pytest_cache .hypothesis
