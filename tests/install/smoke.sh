#!/usr/bin/env bash
# What a user installing from PyPI gets: build the wheel and the sdist, install each with plain
# pip (and the wheel with uv) into a fresh virtualenv (no -e, no extra step), start `mcp-authz serve` with OTLP export
# aimed at a port nobody listens on, send one real ext_authz Check with `mcp-authz probe`, and
# stop it with SIGTERM, which must end it within --grace + 1 s. Run by .ci/run after `make test`.
set -euo pipefail
cd "$(dirname "$0")/../.."

PYTHON=${PYTHON:-.venv/bin/python}
GRACE=1
work=$(mktemp -d)
trap 'kill -9 "${server:-}" 2>/dev/null || true; rm -rf "$work"' EXIT

free_port() { "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

"$PYTHON" -m build --outdir "$work/dist" . >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }

UV=${UV:-.venv/bin/uv}
wheel=$(echo "$work"/dist/*.whl)
sdist=$(echo "$work"/dist/*.tar.gz)
# installer:artifact; uv takes the wheel, as `uv pip install mcp-authz` would.
for entry in "pip:$wheel" "pip:$sdist" "uv:$wheel"; do
  installer=${entry%%:*} artifact=${entry#*:}
  name="$installer $(basename "$artifact")"
  echo "== $name"
  "$PYTHON" -m venv "$work/venv"
  if [ "$installer" = uv ]; then
    "$UV" pip install -q --python "$work/venv/bin/python" "$artifact"
  else
    "$work/venv/bin/pip" install -q --disable-pip-version-check "$artifact"
  fi
  port=$(free_port)
  OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$(free_port)" \
    "$work/venv/bin/mcp-authz" serve --policy examples/policies/seed.json \
    --listen "127.0.0.1:$port" --grace "$GRACE" --audit-log off 2>"$work/serve.log" &
  server=$!
  # The probe waits for the port (wait_for_ready) up to its timeout: start-up included.
  if ! "$work/venv/bin/mcp-authz" probe "127.0.0.1:$port" --tool binance_us_create_listen_key \
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
  rm -rf "$work/venv"
done
echo "install check: wheel and sdist (pip, uv) install, serve, answer a Check and stop in time"
