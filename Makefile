# CloudPal: `make run` sets everything up and runs the node; `make test` runs every test.
PYTHON ?= python3
VENV   ?= .venv
HOME_DIR ?= /var/lib/cloudpal
BIN    := $(VENV)/bin

.PHONY: run test deps venv js lint bench clean

deps:
	bash scripts/install-deps.sh

$(BIN)/cloudpal: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(BIN)/cloudpal

# The JavaScript Hypercore stack the data pillar replicates with (pinned in js/package-lock.json).
js/node_modules/.package-lock.json: js/package.json js/package-lock.json
	cd js && npm ci --no-audit --no-fund --loglevel=error

js: js/node_modules/.package-lock.json

run: deps venv
	$(BIN)/cloudpal --home $(HOME_DIR) up

test: deps venv js
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/pytest -q -p no:cacheprovider

lint: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

bench: deps venv
	$(BIN)/python bench/net_bench.py --write docs/benchmarks.md
	$(BIN)/python bench/compute_bench.py --write docs/benchmarks.md
	$(BIN)/python bench/pay_bench.py --write docs/benchmarks.md

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
