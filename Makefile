# conveyor: `make run` starts the service with the example subscriptions, `make test` checks everything.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
BENCH_STAMP := $(VENV)/.installed-bench-stamp
AMQP_URL ?= amqp://guest:guest@localhost:5672/

.PHONY: help install run test test-uvloop test-unit test-integration test-cluster lint format bench chaos clean

help:
	@echo "make run    - install, then run conveyor with examples/subscriptions.toml on :8080"
	@echo "make test   - install, lint (ruff, mypy --strict), run every test against RabbitMQ"
	@echo "make test-uvloop - the in-process tests again, on uvloop (CONVEYOR_EVENT_LOOP=uvloop)"
	@echo "make lint   - ruff check, ruff format --check, mypy --strict"
	@echo "make bench  - conveyor against raw aio-pika and FastStream on the local broker (~10 min)"
	@echo "make chaos  - loss-accounting scenarios and fault injection (alarms); needs rabbitmqctl"
	@echo "make test-cluster - a 3-node RabbitMQ cluster on this machine loses a node mid-stream"

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "conveyor needs Python >= 3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,lint,uvloop,otel]'
	touch $(STAMP)

install: $(STAMP)

# The benchmark's peers (FastStream) only for `make bench`, so `make test` installs no more.
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,lint,uvloop,otel,bench]'
	touch $(BENCH_STAMP)

run: install
	@$(BIN)/python -c 'import socket, sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]); socket.create_connection((p.hostname, p.port or 5672), 2)' '$(AMQP_URL)' 2>/dev/null \
		|| { echo "No RabbitMQ answers at $(AMQP_URL). Start one: 'rabbitmq-server -detached' or 'docker run -d -p 5672:5672 rabbitmq:3.13', or set AMQP_URL=..."; exit 1; }
	CONVEYOR_AMQP_URL='$(AMQP_URL)' CONVEYOR_CONFIG=examples/subscriptions.toml \
		CONVEYOR_LOG_FORMAT=$${CONVEYOR_LOG_FORMAT:-console} $(BIN)/conveyor serve

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test-unit: install
	$(BIN)/pytest tests/unit -q

test-integration: install
	$(BIN)/pytest tests/integration -q

test: lint
	$(BIN)/pytest -q -ra

# The in-process tests again on uvloop, the opt-in loop (CONVEYOR_EVENT_LOOP=uvloop); make test
# runs them on asyncio's own loop. CI runs both. pytest-timeout's thread method: a test stuck
# while uvloop waits in epoll never sees the signal method's alarm; the thread method dumps
# every thread's stack and ends the run.
test-uvloop: install
	CONVEYOR_TEST_EVENT_LOOP=uvloop $(BIN)/pytest tests/unit tests/integration -q -ra -o timeout_method=thread

# Fault injection on the local broker itself (alarms); slower, and never run beside other tests.
chaos: install
	$(BIN)/pytest tests/integration/test_loss_accounting.py tests/chaos -q -ra

# Starts its own 3-node cluster (cv1..cv3@localhost, ports 5681-5683) beside the local broker,
# and removes it afterwards, failed or not; needs RabbitMQ installed and PostgreSQL.
test-cluster: install
	$(BIN)/pytest tests/cluster -q -ra

# Issue 7's table (bench/run.py, about 10 minutes, capped), then what the store's claims cost,
# what ordered partitions cost, and the AMQP client's floor under the consumer (bench/floor.py).
# BENCH_ARGS passes options to bench.run, e.g. BENCH_ARGS='--rounds 1'.
bench: $(BENCH_STAMP)
	$(BIN)/python -m bench.run $(BENCH_ARGS)
	$(BIN)/python -m bench.store_claims
	$(BIN)/python bench/ordered_partitions.py
	$(BIN)/python -m bench.floor

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
