# conveyor: `make run` starts the service with the example subscriptions, `make test` checks everything.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
RUN_STAMP := $(VENV)/.installed-run-stamp
BENCH_STAMP := $(VENV)/.installed-bench-stamp
AMQP_URL ?= amqp://guest:guest@localhost:5672/
CONFIG ?= examples/subscriptions.toml

.PHONY: help install run test test-uvloop test-unit test-integration test-cluster lint format bench chaos clean

help:
	@echo "make run    - install what running needs, then run conveyor with $(CONFIG) on :8080"
	@echo "make test   - install the test and lint tools, lint (ruff, mypy --strict), run the unit"
	@echo "              and integration tests against RabbitMQ and PostgreSQL"
	@echo "make test-uvloop - the unit and integration tests again, on uvloop"
	@echo "make lint   - ruff check, ruff format --check, mypy --strict"
	@echo "make chaos  - the fault scenarios that restart, block or flood the local broker (needs rabbitmqctl)"
	@echo "make test-cluster - a 3-node RabbitMQ cluster on this machine loses a node mid-stream"
	@echo "make bench  - conveyor against raw aio-pika and FastStream on the local broker (~10 min)"

# `make run` installs what running needs (plus uvloop); `make test` the test and lint tools too.
$(RUN_STAMP): pyproject.toml constraints.txt
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "conveyor needs Python >= 3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[uvloop]'
	touch $(RUN_STAMP)

$(STAMP): $(RUN_STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,lint,uvloop,otel]'
	touch $(STAMP)

install: $(STAMP)

# The benchmark's peers (FastStream) only for `make bench`, so `make test` installs no more.
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,lint,uvloop,otel,bench]'
	touch $(BENCH_STAMP)

# A development admin token (unless CONVEYOR_ADMIN_TOKEN is set), printed once with the
# dashboard's address; `conveyor serve` itself never makes one up. Ordered subscriptions need
# the consistent-hash exchange: enabled here when this machine's rabbitmq-plugins can.
run: $(RUN_STAMP)
	@$(BIN)/python -c 'import socket, sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]); socket.create_connection((p.hostname, p.port or 5672), 2)' '$(AMQP_URL)' 2>/dev/null \
		|| { echo "No RabbitMQ answers at $(AMQP_URL). Start one: 'rabbitmq-server -detached' or 'docker run -d -p 5672:5672 rabbitmq:3.13', or set AMQP_URL=..."; exit 1; }
	@if grep -qE '^[[:space:]]*ordered_by' '$(CONFIG)' && command -v rabbitmq-plugins >/dev/null 2>&1; then \
		rabbitmq-plugins enable rabbitmq_consistent_hash_exchange >/dev/null 2>&1 \
		|| { echo "Ordered subscriptions need RabbitMQ's consistent-hash exchange, and enabling it failed; run: rabbitmq-plugins enable rabbitmq_consistent_hash_exchange"; exit 1; }; \
	fi
	@if [ -n "$${CONVEYOR_ADMIN_TOKEN:-}" ]; then token="$$CONVEYOR_ADMIN_TOKEN"; \
		echo "conveyor: dashboard at http://localhost:$${CONVEYOR_HTTP_PORT:-8080}/ (admin token: your CONVEYOR_ADMIN_TOKEN)"; \
	else token="dev-$$($(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(18))')"; \
		echo "conveyor: dashboard at http://localhost:$${CONVEYOR_HTTP_PORT:-8080}/  development admin token: $$token"; \
		echo "          e.g. .venv/bin/conveyor subscriptions --token $$token"; \
	fi; \
	CONVEYOR_ADMIN_TOKEN="$$token" CONVEYOR_AMQP_URL='$(AMQP_URL)' CONVEYOR_CONFIG='$(CONFIG)' \
		CONVEYOR_LOG_FORMAT=$${CONVEYOR_LOG_FORMAT:-console} exec $(BIN)/conveyor serve

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

# The unit and integration tests (pyproject's testpaths); the slower tiers have their own targets.
test: lint
	$(BIN)/pytest -q -ra

# The in-process tests again on uvloop, the opt-in loop (CONVEYOR_EVENT_LOOP=uvloop); make test
# runs them on asyncio's own loop. CI runs both. pytest-timeout's thread method: a test stuck
# while uvloop waits in epoll never sees the signal method's alarm; the thread method dumps
# every thread's stack and ends the run.
test-uvloop: install
	CONVEYOR_TEST_EVENT_LOOP=uvloop $(BIN)/pytest tests/unit tests/integration -q -ra -o timeout_method=thread

# Fault injection on the local broker itself (restarts, connection cuts, SIGKILL and SIGTERM
# mid-stream, memory alarms, a flood); slower, and never run beside other tests.
chaos: install
	$(BIN)/pytest tests/integration/test_loss_accounting.py tests/chaos -q -ra

# Starts its own 3-node cluster (cv1..cv3@localhost, ports 5681-5683) beside the local broker,
# and removes it afterwards, failed or not; needs RabbitMQ installed and PostgreSQL.
test-cluster: install
	$(BIN)/pytest tests/cluster -q -ra

# The performance table (bench/run.py, about 10 minutes, capped), then what the store's claims cost,
# what ordered partitions cost, the AMQP client's floor under the consumer (bench/floor.py), and
# what the archive costs ingest (bench/archive_cost.py).
# BENCH_ARGS passes options to bench.run, e.g. BENCH_ARGS='--rounds 1'.
bench: $(BENCH_STAMP)
	$(BIN)/python -m bench.run $(BENCH_ARGS)
	$(BIN)/python -m bench.store_claims
	$(BIN)/python bench/ordered_partitions.py
	$(BIN)/python -m bench.floor
	$(BIN)/python -m bench.archive_cost

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
