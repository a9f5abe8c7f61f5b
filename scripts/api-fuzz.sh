#!/usr/bin/env bash
# Property-based run of schemathesis over the generated OpenAPI document:
# every operation gets generated valid and invalid requests; the run fails
# on any 5xx, any response outside the documented schema, status code or
# content type. The server runs without a supervisor (generated specs must
# never be executed) on a database and streams of its own.
#
#   scripts/api-fuzz.sh [max-examples-per-operation]   (default 30)
set -euo pipefail
cd "$(dirname "$0")/.."
examples="${1:-30}"
# Pinned: a new release may change what is generated and checked.
python3 -c 'import schemathesis, sys; sys.exit(schemathesis.__version__ != "4.32.5")' 2>/dev/null ||
  python3 -m pip install --quiet 'schemathesis==4.32.5' 'hypothesis==6.170.17'
cargo build --quiet --bin opmas
tag="fuzz_$$"
admin="${OPMAS_TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"
db="${admin%/*}/opmas_test_${tag}"
psql "$admin" -qc "create database opmas_test_${tag}"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export OPMAS_DATABASE_URL="$db" OPMAS_NATS_URL="${OPMAS_TEST_NATS_URL:-nats://127.0.0.1:4222}"
export OPMAS_EVENTS_STREAM="OPMAS_EVENTS_${tag^^}" OPMAS_EVENTS_SUBJECT_PREFIX="opmas_${tag}.events"
export OPMAS_METRICS_STREAM="OPMAS_METRICS_${tag^^}" OPMAS_METRICS_SUBJECT_PREFIX="opmas_${tag}.metrics"
export OPMAS_LOGS_STREAM="OPMAS_LOGS_${tag^^}" OPMAS_LOGS_SUBJECT_PREFIX="opmas_${tag}.logs" OPMAS_LOGS_MAX_BYTES=$((16<<20))
export OPMAS_PROJECTOR_NAME="proj_${tag}" OPMAS_LOG=warn
token=$(target/debug/opmas bootstrap-token --name fuzz --role admin)
target/debug/opmas serve --roles api,relay,projector --listen "127.0.0.1:${port}" --rate-limit 100000 --rate-burst 100000 &
server=$!
cleanup() {
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  psql "$admin" -qc "drop database if exists opmas_test_${tag} with (force)" || true
  cargo run --quiet -p opmas-testkit --bin sweep-test-streams -- "${tag}" >/dev/null 2>&1 || true
}
trap cleanup EXIT
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:${port}/healthz" >/dev/null && break; sleep 0.1; done
# One agent so that generated requests on existing ids reach the handlers.
curl -fs -o /dev/null -X POST "http://127.0.0.1:${port}/api/v1/agents" -H "Authorization: Bearer ${token}" \
  -H 'content-type: application/json' -d '{"agent_id":"fuzz-target","spec":{"agent_type":"t","command":"true"}}'
python3 scripts/st.py run "http://127.0.0.1:${port}/api/v1/openapi.json" \
  --header "Authorization: Bearer ${token}" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --exclude-path /api/v1/ws --exclude-path /api/v1/stream \
  --max-examples "$examples" --workers 2 --seed "${OPMAS_FUZZ_SEED:-1}" "${@:2}"
