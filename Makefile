# Every target bootstraps .venv on first use; re-running is a no-op unless pyproject.toml changed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-kafka lint fmt bench schema clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m worker demo

test: lint
	$(BIN)/python -m pytest -q

# The integration, reliability and replay suites and the Apache-Kafka-only tests, on a real Apache Kafka
# (tests/apache_kafka.py: needs Java 17+, and Maven the first time on a machine). Lint is `make test`'s.
test-kafka: $(STAMP)
	TEST_BROKER=apache-kafka $(BIN)/python -m pytest -q -m "integration or apache_kafka" --durations=15

lint: $(STAMP)
	$(BIN)/ruff check schemas worker tests
	$(BIN)/ruff format --check schemas worker tests
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff format schemas worker tests
	$(BIN)/ruff check --fix schemas worker tests

bench: $(STAMP)
	$(BIN)/python -m tests.bench

schema: $(STAMP)
	$(BIN)/python -m schemas export-json-schema

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
