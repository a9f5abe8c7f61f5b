#!/usr/bin/env bash
# Runs every ```sh block of README.md and docs/*.md against a real server
# (scripts/docs_check.py says how blocks are marked when they cannot simply
# run). The server is `opmas serve` with every role, on a fresh database and a
# private nats-server (free ports, temp dir); the blocks get OPMAS_SERVER,
# OPMAS_TOKEN (a bootstrap admin token), OPMAS_DATABASE_URL, OPMAS_NATS_URL
# and `opmas` on PATH, and run in a temp directory where deploy/, examples/
# and scripts/ are links to the repository's. The examples' agent `web-1`
# (a shell loop that prints a line a second) is registered and running before
# the first block. Everything is removed on exit, failure included.
#
#   OPMAS_BIN=/path/to/opmas scripts/docs-check.sh [FILE.md...]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
if [ -z "${OPMAS_BIN:-}" ]; then
  cargo build --quiet --bin opmas
  OPMAS_BIN=$root/target/debug/opmas
fi
[ -x "$OPMAS_BIN" ] || { echo "docs-check: no opmas binary at $OPMAS_BIN" >&2; exit 1; }
files=("$@")
[ ${#files[@]} -gt 0 ] || files=(README.md docs/*.md)

admin="${OPMAS_TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"
db="opmas_test_docs_$$"
work=$(mktemp -d /tmp/opmas-docs-check.XXXXXX)
pids=()
cleanup() {
  local rc=$?
  set +e
  for pid in $(psql "${admin%/*}/$db" -XAtqc 'select pid from agent_status where pid is not null' 2>/dev/null); do
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
  done
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null; done
  psql "$admin" -Xqc "drop database if exists $db with (force)" >/dev/null 2>&1
  [ "$rc" = 0 ] || tail -n 30 "$work/serve.log" >&2
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

read -r nats_port api_port <<< "$(python3 "$root/scripts/deploy_check.py" ports 2)"
nats-server -a 127.0.0.1 -p "$nats_port" -js -sd "$work/nats" -l "$work/nats.log" &
pids+=($!)
psql "$admin" -Xqc "create database $db"
mkdir -p "$work/bin" "$work/home" "$work/cwd"
ln -s "$OPMAS_BIN" "$work/bin/opmas"
for d in deploy examples scripts; do ln -s "$root/$d" "$work/cwd/$d"; done
export PATH="$work/bin:$PATH" HOME="$work/home"
export OPMAS_DATABASE_URL="${admin%/*}/$db" OPMAS_NATS_URL="nats://127.0.0.1:$nats_port"
export OPMAS_LOGS_MAX_BYTES=$((16 << 20)) OPMAS_LOG=warn OPMAS_NODE=docs OPMAS_LOG_DIR="$work/agents"
# `opmas serve` creates its secret key in the data directory
export OPMAS_DATA_DIR="$work/data"
# resource samples every second, so that a limit breach shows within seconds
export OPMAS_SAMPLE_INTERVAL=1s
export OPMAS_SERVER="http://127.0.0.1:$api_port"
for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break; sleep 0.1; done
opmas migrate > /dev/null
OPMAS_TOKEN=$(opmas bootstrap-token --name docs-check --role admin)
export OPMAS_TOKEN
opmas serve --listen "127.0.0.1:$api_port" > "$work/serve.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do curl -fs "$OPMAS_SERVER/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fs "$OPMAS_SERVER/readyz" >/dev/null

# The agent the examples talk about.
opmas agents register web-1 --reason 'docs example' --spec - > /dev/null <<'EOF'
{"agent_type": "web", "command": "sh",
 "args": ["-c", "n=0; while :; do n=$((n+1)); echo \"INFO served request $n\"; sleep 1; done"],
 "heartbeat": {"enabled": false}}
EOF
opmas agents start web-1 > /dev/null
for _ in $(seq 1 100); do
  opmas agents show web-1 -o json 2>/dev/null | grep -q '"status": *"running"' && break
  sleep 0.1
done
opmas agents show web-1 -o json | grep -q '"status": *"running"' || { echo "docs-check: web-1 did not start" >&2; exit 1; }

cd "$work/cwd"
python3 "$root/scripts/docs_check.py" "${files[@]/#/$root/}"
