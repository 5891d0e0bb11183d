#!/usr/bin/env bash
# What a user installing from PyPI gets: build the pure-Python wheel and the sdist, and the
# wheel with the hot path compiled (mypyc; what release.yml publishes per platform), install
# each with plain pip (and the pure wheel with uv) into a fresh virtualenv (no -e, no extra
# step), check that the compiled wheel's modules are compiled (tests/install/compiled_check.py),
# start `mcp-authz serve` with OTLP export aimed at a port nobody listens on, send one real
# ext_authz Check with `mcp-authz probe` (the compiled wheel over the HTTP transport too), and
# stop it with SIGTERM, which must end it within
# --grace + 1 s. Run by .ci/run after `make test`.
set -euo pipefail
cd "$(dirname "$0")/../.."

PYTHON=${PYTHON:-.venv/bin/python}
GRACE=1
work=$(mktemp -d)
trap 'kill -9 "${server:-}" 2>/dev/null || true; rm -rf "$work"' EXIT

free_port() { "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Serve from $work/venv, send one real Check (gRPC) or MCP call (HTTP transport), stop with
# SIGTERM within --grace + 1 s.
serve_probe_stop() {
  local name=$1 transport=$2 port target
  port=$(free_port)
  OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$(free_port)" \
    "$work/venv/bin/mcp-authz" serve --policy examples/policies/seed.json --transport "$transport" \
    --listen "127.0.0.1:$port" --grace "$GRACE" --audit-log off 2>"$work/serve.log" &
  server=$!
  if [ "$transport" = grpc ]; then
    # The probe waits for the port (wait_for_ready) up to its timeout: start-up included.
    target="127.0.0.1:$port"
  else
    target="http://127.0.0.1:$port/mcp"
    for _ in $(seq 600); do
      "$PYTHON" -c "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1)" \
        "$port" 2>/dev/null && break
      kill -0 "$server" 2>/dev/null || break
      sleep 0.1
    done
  fi
  if ! "$work/venv/bin/mcp-authz" probe "$target" --tool binance_us_create_listen_key \
      --timeout 60; then
    cat "$work/serve.log"; exit 1
  fi
  kill -TERM "$server"
  # The bound, in tenths of a second: --grace + 1 s, as a pod's terminationGracePeriod needs.
  for _ in $(seq $(( (GRACE + 1) * 10 ))); do
    kill -0 "$server" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$server" 2>/dev/null; then
    echo "$name: still running $((GRACE + 1)) s after SIGTERM"; cat "$work/serve.log"; exit 1
  fi
  wait "$server" || { echo "$name: serve exited $?"; cat "$work/serve.log"; exit 1; }
  server=
}

build() { "$PYTHON" -m build "$@" >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }; }
MCP_AUTHZ_PURE=1 build --outdir "$work/dist" .
build --wheel --outdir "$work/compiled" .

UV=${UV:-.venv/bin/uv}
wheel=$(echo "$work"/dist/*.whl)
sdist=$(echo "$work"/dist/*.tar.gz)
compiled=$(echo "$work"/compiled/*.whl)
case $wheel in *-py3-none-any.whl) ;; *) echo "the pure wheel is not pure: $wheel"; exit 1 ;; esac
case $compiled in *-py3-none-any.whl) echo "the compiled wheel is pure: $compiled"; exit 1 ;; esac
# installer:artifact; uv takes the wheel, as `uv pip install mcp-authz` would.
for entry in "pip:$wheel" "pip:$sdist" "uv:$wheel" "pip:$compiled"; do
  installer=${entry%%:*} artifact=${entry#*:}
  name="$installer $(basename "$artifact")"
  echo "== $name"
  "$PYTHON" -m venv "$work/venv"
  if [ "$installer" = uv ]; then
    "$UV" pip install -q --python "$work/venv/bin/python" "$artifact"
  else
    # Pure from the sdist too: compiling is the compiled wheel's test, below.
    MCP_AUTHZ_PURE=1 "$work/venv/bin/pip" install -q --disable-pip-version-check "$artifact"
  fi
  if [ "$artifact" = "$compiled" ]; then
    "$work/venv/bin/python" tests/install/compiled_check.py
  fi
  # The compiled wheel over both transports: a compiled module checks the types it declares,
  # and the HTTP transport once failed to start only there (uvloop's list for a tuple).
  transports=grpc
  [ "$artifact" = "$compiled" ] && transports="grpc http"
  for transport in $transports; do
    serve_probe_stop "$name ($transport)" "$transport"
  done
  rm -rf "$work/venv"
done
# The unit tests again, on the compiled modules: mypyc changes what a program may do (exact
# type checks of compiled classes, no async generators), and one such difference crashed only
# there. A copy of the tree with the wheel unpacked over it: an extension module is imported
# before the .py beside it, and the copy's root comes first on sys.path under pytest.
echo "== unit tests on the compiled wheel"
mkdir "$work/tree"
git ls-files -z --cached --others --exclude-standard | tar -c --null -T - | tar -x -C "$work/tree"
"$PYTHON" -m zipfile -e "$compiled" "$work/tree"
venv_bin=$PWD/.venv/bin
(cd "$work/tree" \
  && "$venv_bin/python" -c 'import authz.core.decision as m, sys; sys.exit(not m.__file__.endswith(".so") and f"{m.__file__} is not compiled")' \
  && "$venv_bin/pytest" -q -p no:cacheprovider tests/unit)
echo "install check: pure and compiled wheels and the sdist (pip, uv) install, serve, answer a Check and stop in time; the unit tests pass on the compiled modules"
