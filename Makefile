# Every target bootstraps .venv on first use; re-running is a no-op unless pyproject.toml changed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-unit test-kafka lint fmt bench schema lock clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m devtools.demo

test: lint
	$(BIN)/python -m pytest -q

# The inner loop: tests/unit (pure stages and collaborators over fakes, the SDK oracle; no sockets).
test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

# The integration, reliability and replay suites and the Apache-Kafka-only tests, on a real Apache Kafka
# (tests/apache_kafka.py: needs Java 17+, and Maven the first time on a machine). Lint is `make test`'s.
test-kafka: $(STAMP)
	TEST_BROKER=apache-kafka $(BIN)/python -m pytest -q -m "integration or apache_kafka" --durations=15

lint: $(STAMP)
	$(BIN)/ruff check schemas worker labelbox_sandbox devtools tests
	$(BIN)/ruff format --check schemas worker labelbox_sandbox devtools tests
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff format schemas worker labelbox_sandbox devtools tests
	$(BIN)/ruff check --fix schemas worker labelbox_sandbox devtools tests

bench: $(STAMP)
	$(BIN)/python -m tests.bench

schema: $(STAMP)
	$(BIN)/python -m schemas export-json-schema

# Pin the runtime dependencies (what the image installs) from a clean venv of the package alone.
lock:
	rm -rf .lockvenv && $(PYTHON) -m venv .lockvenv
	.lockvenv/bin/python -m pip install -q --upgrade pip
	.lockvenv/bin/python -m pip install -q .
	( echo "# Runtime dependencies of labelbox-prediction-worker, pinned (make lock). The image installs these."; \
	  .lockvenv/bin/python -m pip freeze --exclude labelbox-prediction-worker ) > deploy/requirements.lock
	rm -rf .lockvenv build *.egg-info

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
