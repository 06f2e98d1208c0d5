# CloudPal: `make run` sets everything up and runs the node; `make test` runs every test.
PYTHON ?= python3
VENV   ?= .venv
HOME_DIR ?= /var/lib/cloudpal
BIN    := $(VENV)/bin

.PHONY: run test deps venv lint bench clean

deps:
	bash scripts/install-deps.sh

$(BIN)/cloudpal: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(BIN)/cloudpal

run: deps venv
	$(BIN)/cloudpal --home $(HOME_DIR) up

test: deps venv
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/pytest -q -p no:cacheprovider

lint: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

bench: deps venv
	$(BIN)/python bench/net_bench.py --write docs/benchmarks.md

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
