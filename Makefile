# The two commands of the README contract: `make demo` and `make test`.
# Each creates .venv on first use and installs what it needs (and again when pyproject.toml changes).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint typecheck pytest bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The demo needs the package and the embedded Postgres only.
$(VENV)/.installed-demo: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[embedded]'
	touch $@

# The tests need the linters, pytest and the test servers too.
$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[embedded,test]'
	touch $@ $(VENV)/.installed-demo

demo: $(VENV)/.installed-demo
	$(BIN)/mailerd demo

test: lint typecheck pytest

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy

pytest: $(VENV)/.installed-test
	$(BIN)/pytest -q -n 2  # two workers: most of the suite waits on servers and processes, not the CPU

bench: $(VENV)/.installed-test
	$(BIN)/python bench/import.py --rows 1000000
	$(BIN)/python bench/campaign.py --leads 1000000
	$(BIN)/python bench/nodes.py
	$(BIN)/python bench/webhooks.py
	$(BIN)/python bench/faults.py
	$(BIN)/python bench/reports.py --leads 1000000
	$(BIN)/python bench/windows.py --leads 200000
	$(BIN)/python bench/guards.py --leads 60000
	$(BIN)/python bench/relay.py --leads 1000000
	$(BIN)/python bench/reports_load.py --emails 1000000
	$(BIN)/python bench/reports_growth.py
	$(BIN)/python bench/soak.py

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
