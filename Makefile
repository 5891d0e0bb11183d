# Every routine task. `make test` and `make run` set everything up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TS_DIR := tests/e2e/ts

.PHONY: setup run test unit integration e2e lint fmt proto proto-check bench bench-store clean

setup: $(STAMP) $(TS_DIR)/node_modules

$(STAMP): pyproject.toml
	@command -v redis-server >/dev/null || { \
	  echo "redis-server is missing: installing it with apt-get (the tests start their own)"; \
	  apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

$(TS_DIR)/node_modules: $(TS_DIR)/package.json $(TS_DIR)/package-lock.json
	cd $(TS_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

run: setup            ## the demo: Envoy :10000 -> mcp-authz -> demo MCP server, seed policy
	$(BIN)/python examples/run_demo.py

test: setup           ## every test: unit, integration (real Redis, gRPC) and e2e (real Envoy, SDKs)
	$(BIN)/pytest

unit: setup
	$(BIN)/pytest tests/unit

integration: setup
	$(BIN)/pytest tests/integration

e2e: setup
	$(BIN)/pytest -m e2e tests/e2e

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Our own gRPC API lives in proto/; generated code goes to authz/_gen with type stubs. The
# include path maps proto/ onto authz/_gen, so generated modules import one another as
# authz._gen.mcpauthz...; the __init__.py files there are ours. grpcio-tools is pinned in
# pyproject.toml: another version writes other code, and proto-check would fail.
PROTOS := $(wildcard proto/*/*/*/*.proto)
proto: setup
	find authz/_gen -name '*_pb2*.py*' -delete
	$(BIN)/python -m grpc_tools.protoc -Iauthz/_gen=proto --python_out=. --pyi_out=. \
	  --grpc_python_out=. $(PROTOS)

proto-check: proto    ## CI: the checked-in generated code must match proto/
	git diff --exit-code -- authz/_gen
	@test -z "$$(git status --porcelain -- authz/_gen)" || { \
	  git status --porcelain -- authz/_gen; echo "authz/_gen: files not checked in"; exit 1; }

bench: setup          ## Envoy alone / Envoy's MCP+RBAC+local rate limit / mcp-authz (gRPC, HTTP), ~4 min
	$(BIN)/python bench/run.py

bench-store: setup    ## store benchmark: our Redis store vs the limits library
	$(BIN)/python bench/bench_store.py

clean:
	rm -rf $(VENV) $(TS_DIR)/node_modules .mypy_cache .ruff_cache .pytest_cache
