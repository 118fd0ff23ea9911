# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The whole suite must finish well inside CI's limit; a hung test is killed by pytest-timeout.
SUITE_TIMEOUT ?= 900
# Test processes (pytest-xdist), each with its own embedded broker: most tests wait on workers,
# brokers and timers, so two halve the suite's time even on two cores.
TEST_WORKERS ?= 2

.PHONY: run test lint typecheck bench-ingest bench bench-scale soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

## Embedded broker + one worker on this machine (Ctrl-C stops both).
run: $(STAMP)
	NMSTREAM_SLACK_API_URL=$${NMSTREAM_SLACK_API_URL:-http://127.0.0.1:18082/api/} \
	NMSTREAM_DINGTALK_API_URL=$${NMSTREAM_DINGTALK_API_URL:-http://127.0.0.1:18083/} \
	$(BIN)/nmstream dev --config-dir examples --loglevel info

## Lint, type-check, then the whole test suite against the real embedded broker.
test: lint typecheck
	timeout --kill-after=30 $(SUITE_TIMEOUT) $(BIN)/pytest -n $(TEST_WORKERS)

lint: $(STAMP)
	$(BIN)/ruff check nmstream tests bench

typecheck: $(STAMP)
	$(BIN)/mypy nmstream tests bench

## Ingest throughput against the bare-aiohttp ceiling.
bench-ingest: $(STAMP)
	$(BIN)/python bench/ingest.py

## Alerts posted -> delivered to a webhook: nmstream vs. a real Alertmanager vs. the ceiling.
bench: $(STAMP)
	$(BIN)/python bench/e2e.py

## A large cluster (5,000 tenant receivers) and an alert storm (a 5,000-alert group).
bench-scale: $(STAMP)
	$(BIN)/python bench/scale.py

## A steady alert rate for 10 minutes: fails if the worker's RSS grows or exceeds 300 MiB.
soak: $(STAMP)
	$(BIN)/python bench/soak.py

clean:
	rm -rf $(VENV) .nmstream-data .pytest_cache .mypy_cache .ruff_cache
