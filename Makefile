# Ferryman — every target installs what it is missing (uv, Python deps, Kafka jars).
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
KAFKA := $(PYTHON) tools/kafka/local_kafka.py

.PHONY: help setup demo test bench bench-mcp bench-tool-loop bench-openapi bench-storage bench-cache kafka-up kafka-down up down lint fmt asyncapi dashboards

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

setup:  ## install uv (if missing) and every Python dependency from uv.lock
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	@$(UV) sync --frozen --quiet
	@bash tools/setup_system.sh

demo: setup  ## a chat, an MCP tool call and a stored document through Kafka and the workers (starts what is missing)
	@$(UV) run --frozen python tools/demo.py

test: setup  ## run the whole test suite (starts a local Kafka if none is configured)
	@$(UV) run --frozen pytest

bench: setup  ## benchmark the LLM worker via Kafka vs a fake OpenAI (BENCH_ARGS="--quick", "--baseline-ref bf3a7e6"), then the MCP worker (bench-mcp), the tool loop (bench-tool-loop), OpenAPI tools (bench-openapi) storage (bench-storage) and the response cache (bench-cache); docs/benchmarks.md
	@$(UV) run --frozen python -m tests.bench.llm_bench $(BENCH_ARGS)
	@$(UV) run --frozen python -m tests.bench.mcp_bench $(MCP_BENCH_ARGS)
	@$(UV) run --frozen python -m tests.bench.tool_loop_bench $(TOOL_LOOP_BENCH_ARGS)
	@$(UV) run --frozen python -m tests.bench.openapi_bench $(OPENAPI_BENCH_ARGS)
	@$(UV) run --frozen python -m tests.bench.storage_bench $(STORAGE_BENCH_ARGS)
	@$(UV) run --frozen python -m tests.bench.cache_bench $(CACHE_BENCH_ARGS)

MCP_BENCH_ARGS ?= $(filter --quick,$(BENCH_ARGS))
bench-mcp: setup  ## benchmark the MCP worker via Kafka vs the bare MCP SDK (MCP_BENCH_ARGS="--quick"; docs/benchmarks.md)
	@$(UV) run --frozen python -m tests.bench.mcp_bench $(MCP_BENCH_ARGS)

TOOL_LOOP_BENCH_ARGS ?= $(filter --quick,$(BENCH_ARGS))
bench-tool-loop: setup  ## the tool loop's overhead per step: an MCP tool via the LLM worker and Kafka vs called directly (TOOL_LOOP_BENCH_ARGS="--quick"; docs/benchmarks.md)
	@$(UV) run --frozen python -m tests.bench.tool_loop_bench $(TOOL_LOOP_BENCH_ARGS)

OPENAPI_BENCH_ARGS ?= $(filter --quick,$(BENCH_ARGS))
bench-openapi: setup  ## an OpenAPI operation as a tool: direct httpx vs ApiCaller vs the mcp_worker via Kafka (OPENAPI_BENCH_ARGS="--quick"; docs/benchmarks.md)
	@$(UV) run --frozen python -m tests.bench.openapi_bench $(OPENAPI_BENCH_ARGS)

STORAGE_BENCH_ARGS ?= $(filter --quick,$(BENCH_ARGS))
bench-storage: setup  ## storage_worker put/get MiB/s via Kafka vs aiobotocore on moto, worker CPU per op, RSS during a 1 GiB copy (STORAGE_BENCH_ARGS="--quick"; docs/benchmarks.md)
	@$(UV) run --frozen python -m tests.bench.storage_bench $(STORAGE_BENCH_ARGS)

CACHE_BENCH_ARGS ?= $(filter --quick,$(BENCH_ARGS))
bench-cache: setup  ## a response-cache hit against a provider call: latency and worker CPU, memory and Redis backends (CACHE_BENCH_ARGS="--quick"; docs/benchmarks.md)
	@$(UV) run --frozen python -m tests.bench.cache_bench $(CACHE_BENCH_ARGS)

kafka-up:  ## start the local Kafka (KRaft, from Maven Central jars) on FERRYMAN_KAFKA_PORT (9092)
	@$(KAFKA) up

kafka-down:  ## stop the local Kafka
	@$(KAFKA) down

up:  ## run Kafka and the workers with Docker Compose
	docker compose up -d --build

down:  ## stop the Compose stack
	docker compose down

lint: setup  ## ruff (lint + format check) and pyright
	@$(UV) run --frozen ruff check .
	@$(UV) run --frozen ruff format --check .
	@$(UV) run --frozen pyright

fmt: setup  ## format and auto-fix
	@$(UV) run --frozen ruff format .
	@$(UV) run --frozen ruff check --fix .

asyncapi: setup  ## regenerate the AsyncAPI document from the contract models
	@$(UV) run --frozen ferryman asyncapi --output shared/asyncapi.json

dashboards: setup  ## regenerate the Grafana fleet dashboard (deploy/grafana/dashboards/ferryman-fleet.json) from tools/dashboards/fleet.py
	@$(UV) run --frozen python tools/dashboards/fleet.py
