#!/usr/bin/env bash
# Browser test of the web dashboard: a real `opmas serve` (api, relay,
# projector and supervisor) on a database and streams of its own, one agent
# that really runs, and headless Chromium driven by playwright-core
# (ui/tests/dashboard.test.mjs). Screenshots go to ui/tests/artifacts/.
# Cleans up the server, the agent's processes, the database and the streams.
#
#   scripts/ui-test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

if [ ! -x /usr/bin/chromium ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get install -y chromium >/dev/null || { $sudo apt-get update >/dev/null && $sudo apt-get install -y chromium >/dev/null; }
fi
(cd ui/tests && npm ci --silent --no-audit --no-fund)
cargo build --quiet --bin opmas
bin="${CARGO_TARGET_DIR:-target}/debug/opmas"

tag="ui_$$"
admin_db="${OPMAS_TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"
db="${admin_db%/*}/opmas_test_${tag}"
psql "$admin_db" -qc "create database opmas_test_${tag}"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
logs=$(mktemp -d /tmp/opmas-ui-logs.XXXXXX)
export OPMAS_DATABASE_URL="$db" OPMAS_NATS_URL="${OPMAS_TEST_NATS_URL:-nats://127.0.0.1:4222}"
export OPMAS_EVENTS_STREAM="OPMAS_EVENTS_${tag^^}" OPMAS_EVENTS_SUBJECT_PREFIX="opmas_${tag}.events"
export OPMAS_METRICS_STREAM="OPMAS_METRICS_${tag^^}" OPMAS_METRICS_SUBJECT_PREFIX="opmas_${tag}.metrics"
export OPMAS_LOGS_STREAM="OPMAS_LOGS_${tag^^}" OPMAS_LOGS_SUBJECT_PREFIX="opmas_${tag}.logs" OPMAS_LOGS_MAX_BYTES=$((16<<20))
export OPMAS_PROJECTOR_NAME="proj_${tag}" OPMAS_RELAY_NAME="relay_${tag}" OPMAS_LOG="${OPMAS_LOG:-warn}"
export OPMAS_NODE="ui-test-node" OPMAS_LOG_DIR="$logs" OPMAS_DATA_DIR="$logs" OPMAS_SAMPLE_INTERVAL=1s
api="http://127.0.0.1:${port}"
token=$("$bin" bootstrap-token --name ui-admin --role admin)
"$bin" serve --roles api,relay,projector,supervisor --listen "127.0.0.1:${port}" \
  --management-api-url "$api" > "$logs/server.log" 2>&1 &
server=$!

agent="ui-ticker"
call() { # method path [json] -> body
  curl -fsS -X "$1" "${api}/api/v1$2" -H "Authorization: Bearer ${token}" \
    ${3:+-H 'content-type: application/json' -d "$3"}
}
cleanup() {
  status=$?
  # Stop the agent through the control plane, then make sure no process of it is left.
  pids=$(call GET "/agents/${agent}" 2>/dev/null | python3 -c 'import json,sys; p=json.load(sys.stdin).get("pid"); print(p or "")' 2>/dev/null || true)
  call POST "/agents/${agent}/stop" '{"reason":"ui test cleanup"}' >/dev/null 2>&1 || true
  call POST "/agents/ui-broken/stop" '{"reason":"ui test cleanup"}' >/dev/null 2>&1 || true
  for _ in $(seq 1 50); do
    [ "$(call GET "/agents/${agent}/status" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])' 2>/dev/null)" = stopped ] && break
    sleep 0.1
  done
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  for pid in $pids $(pgrep -f "opmas-ui-test-${tag}" || true); do
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  done
  psql "$admin_db" -qc "drop database if exists opmas_test_${tag} with (force)" >/dev/null 2>&1 || true
  cargo run --quiet -p opmas-testkit --bin sweep-test-streams -- "${tag}" 2>/dev/null || true
  if [ "$status" != 0 ] && [ -f "$logs/server.log" ]; then
    echo "--- server log (last 40 lines)"; tail -40 "$logs/server.log"
  fi
  rm -rf "$logs"
  exit "$status"
}
trap cleanup EXIT

for _ in $(seq 1 200); do curl -fs "${api}/readyz" >/dev/null && break; sleep 0.1; done
curl -fs "${api}/readyz" >/dev/null

viewer=$(call POST /tokens '{"name":"ui-viewer","role":"viewer"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
# `opmas-ui-test-${tag}` marks the process so cleanup finds it whatever happens.
script='trap "echo reloaded config" HUP; i=0; while true; do i=$((i+1)); echo "tick $i"; if [ $((i % 5)) -eq 0 ]; then echo "WARN slow tick $i"; fi; sleep 1; done'
call POST /agents "$(python3 -c 'import json,sys; print(json.dumps({"agent_id": sys.argv[1], "reason": "ui test",
  "spec": {"agent_type": "ticker", "command": "sh", "args": ["-c", sys.argv[2], sys.argv[3]],
            "heartbeat": {"enabled": False}}}))' "$agent" "$script" "opmas-ui-test-${tag}")" >/dev/null
# Two more config versions (the test rolls back to the first one it set).
etag() { curl -fsS -o /dev/null -D - "${api}/api/v1/agents/${agent}/config" -H "Authorization: Bearer ${token}" | tr -d '\r' | awk 'tolower($1)=="etag:"{print $2}'; }
set_config() {
  curl -fsS -o /dev/null -X PUT "${api}/api/v1/agents/${agent}/config" -H "Authorization: Bearer ${token}" \
    -H 'content-type: application/json' -H "If-Match: $(etag)" -d "$1"
}
set_config '{"config":{"greeting":"hello"},"reason":"first config"}'
set_config '{"config":{"greeting":"bonjour","extra":1},"reason":"second config"}'
call POST "/agents/${agent}/start" '{"reason":"ui test"}' >/dev/null
# An agent whose command does not exist: its spawn failures are recorded errors.
call POST /agents '{"agent_id":"ui-broken","reason":"ui test","spec":{"agent_type":"broken","command":"/nonexistent/opmas-ui-broken","heartbeat":{"enabled":false}}}' >/dev/null
call POST /agents/ui-broken/start '{"reason":"ui test"}' >/dev/null

if [ -n "${OPMAS_UI_HOLD:-}" ]; then # development: keep the server up to look at the dashboard by hand
  echo "dashboard: ${api}/  admin token: ${token}  viewer token: ${viewer}  (Ctrl-C to stop)"
  wait "$server"
fi
start=$(date +%s)
OPMAS_UI_URL="$api" OPMAS_UI_TOKEN="$token" OPMAS_UI_VIEWER_TOKEN="$viewer" OPMAS_UI_AGENT="$agent" \
  OPMAS_UI_ARTIFACTS="${root}/ui/tests/artifacts" node ui/tests/dashboard.test.mjs
echo "ui-test: browser test took $(( $(date +%s) - start ))s; screenshots in ui/tests/artifacts/"
