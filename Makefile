# The project's gates, one command each. `make run` and `make test` build the virtualenv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-fast lint typecheck unit format clean bench chaos

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "webhook-worker needs Python >= 3.11 (set PYTHON=python3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

## run: the service on the embedded SQLite default (API + worker in one process)
run: $(STAMP)
	$(BIN)/webhook-worker run

## test: lint, type-check, then the whole test suite against real PostgreSQL and Redis
test: lint typecheck unit

## test-fast: lint, type-check, then the tests without the chaos, bench, deploy and slow markers
test-fast: lint typecheck
	$(BIN)/pytest -m "not chaos and not bench and not deploy and not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

## chaos: the fault-injection suite (tests/chaos) at full size; `make test` runs it at CI size
chaos: $(STAMP)
	CHAOS_LABEL=full CHAOS_EVENTS=20000 CHAOS_KILL_INTERVAL=3 CHAOS_REDIS_OUTAGE=10 \
		CHAOS_PG_OUTAGE=30 CHAOS_FORWARD_EVENTS=3000 CHAOS_HANG_TIMEOUT=30 \
		$(BIN)/pytest tests/chaos $(PYTEST_ARGS)

## bench: the load benchmark (docs/performance.md); e.g. BENCH_ARGS="--start postgres-redis --duration 20"
bench: $(STAMP)
	$(BIN)/webhook-worker bench $(BENCH_ARGS)

format: $(STAMP)
	$(BIN)/ruff check --fix src tests
	$(BIN)/ruff format src tests

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
