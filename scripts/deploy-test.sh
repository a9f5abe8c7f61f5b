#!/usr/bin/env bash
# Tests the deployment kit (deploy/) on this machine, without Docker:
#  1. validates the configs: systemd units (systemd-analyze verify), the NATS
#     node configs (nats-server -t), docker-compose.yml, every OPMAS_*
#     variable against `opmas --help`, the alert rules (promtool check + unit
#     tests; promtool is installed from Debian's `prometheus` package when
#     missing) and
#     the Grafana dashboard;
#  2. starts a 3-node NATS JetStream cluster from deploy/nats/ (free ports,
#     temp dir) and checks its client authentication (wrong passwords refused,
#     agents confined);
#  3. runs the commands of the three systemd units (migrate + api/relay,
#     projector, supervisor) with the example env file against the cluster
#     and a fresh database; registers agents through the API (API token and
#     JWT; one with a secret, sealed in the store and clear for the agent),
#     lets one crash until it fails;
#  4. checks that every series the alert rules and the dashboard use is in
#     the real /metrics;
#  5. backs up with deploy/backup/opmas-backup.sh, stops the services (the
#     agents keep running), restores into another fresh database and fresh
#     streams with opmas-restore.sh (migrate, load, replay, verify --repair,
#     replay --check), starts the services on it, and checks that the API
#     answers as before (agents, histories, audit trails, tokens), that the
#     running agent was adopted, not started again, and that its new log
#     lines all reach the read model (none hidden by restored rows).
# Everything it starts (processes, databases, temp dir with the NATS data)
# is removed on exit, failure included.
#
#   OPMAS_BIN=/path/to/opmas scripts/deploy-test.sh   (default: cargo build)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
t0=$(date +%s)
step() { echo "deploy-test [$(($(date +%s) - t0))s]: $*"; }
die() { echo "deploy-test: FAILED: $*" >&2; exit 1; }

if [ -z "${OPMAS_BIN:-}" ]; then
  cargo build --quiet --bin opmas
  OPMAS_BIN=$root/target/debug/opmas
fi
[ -x "$OPMAS_BIN" ] || die "no opmas binary at $OPMAS_BIN"
opmas() { "$OPMAS_BIN" "$@"; }
check() { python3 "$root/scripts/deploy_check.py" "$@"; }

admin="${OPMAS_TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"
tag="deploytest_$$"
work=$(mktemp -d "/tmp/opmas-deploy-test.XXXXXX")
pids=()
dbs=()
cleanup() {
  local rc=$?
  set +e
  # Agents outlive the supervisor by design: kill those the databases know.
  for db in "${dbs[@]}"; do
    for pid in $(psql "${admin%/*}/$db" -XAtqc 'select pid from agent_status where pid is not null' 2>/dev/null); do
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
    done
  done
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null; done
  for db in "${dbs[@]}"; do psql "$admin" -Xqc "drop database if exists $db with (force)" >/dev/null 2>&1; done
  if [ "$rc" != 0 ]; then
    for f in "$work"/*.log; do [ -f "$f" ] && { echo "--- $f"; tail -n 20 "$f"; } >&2; done
  fi
  [ -n "${DEPLOY_TEST_KEEP:-}" ] && echo "deploy-test: kept $work" >&2 || rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- 1. configs
step "configs"
for c in "" serve api project supervisor relay migrate; do opmas $c --help; done > "$work/help.txt"
check static "$work/help.txt"

mkdir -p "$work/units"
: > "$work/units/opmas.env"
for unit in deploy/systemd/*.service; do
  sed -e "s#/usr/local/bin/opmas#$OPMAS_BIN#g" -e "s#/etc/opmas/opmas.env#$work/units/opmas.env#" \
    "$unit" > "$work/units/$(basename "$unit")"
done
if command -v systemd-analyze >/dev/null; then
  # verify prints warnings (unknown keys, bad values) but exits 0 on them
  out=$(cd "$work/units" && systemd-analyze verify ./*.service 2>&1) || die "systemd-analyze verify: $out"
  [ -z "$out" ] || die "systemd-analyze verify: $out"
  for unit in api projector; do
    score=$(systemd-analyze security --offline=yes "$work/units/opmas-$unit.service" 2>&1 | sed -n 's/.*exposure level for .*: \([0-9.]*\).*/\1/p')
    python3 -c "import sys; sys.exit(float('$score') > 2.0)" || die "opmas-$unit.service exposure $score > 2.0"
  done
  step "systemd units verified"
else
  step "systemd-analyze not installed: units not verified"
fi
grep -q '^KillMode=process' deploy/systemd/opmas-supervisor.service || die "the supervisor unit must not kill agents"
grep -q '^Delegate=yes' deploy/systemd/opmas-supervisor.service || die "the supervisor unit needs Delegate=yes"

# NATS parses a variable's value as a config value: a password must not
# start with a digit (it would be read as a number).
pw() { python3 -c 'import secrets; print("pw" + secrets.token_hex(12))'; }
export OPMAS_NATS_PASSWORD AGENT_NATS_PASSWORD NATS_ROUTE_USER=route NATS_ROUTE_PASSWORD
OPMAS_NATS_PASSWORD=$(pw) AGENT_NATS_PASSWORD=$(pw) NATS_ROUTE_PASSWORD=$(pw)
read -r -a port <<< "$(check ports 10)"
# port[0..2] clients, port[3..5] routes, port[6..8] monitoring, port[9] API
for i in 1 2 3; do
  export "NATS_ROUTE_$i=nats-route://route:$NATS_ROUTE_PASSWORD@127.0.0.1:${port[$((i + 2))]}"
done
for i in 1 2 3; do
  sed -e "s#0.0.0.0:4222#127.0.0.1:${port[$((i - 1))]}#" -e "s#0.0.0.0:6222#127.0.0.1:${port[$((i + 2))]}#" \
    -e "s#127.0.0.1:8222#127.0.0.1:${port[$((i + 5))]}#" -e "s#/var/lib/nats/jetstream#$work/nats-$i#" \
    "deploy/nats/nats-$i.conf" > "$work/nats-$i.conf"
  out=$(nats-server -t --config "$work/nats-$i.conf" 2>&1) || die "nats-$i.conf: $out"
done
(unset OPMAS_NATS_PASSWORD; ! nats-server -t --config "$work/nats-1.conf" >/dev/null 2>&1) ||
  die "nats-1.conf is valid without its password variable"
if ! command -v promtool >/dev/null; then
  # promtool comes with Debian's prometheus package (no daemon is started
  # where there is no systemd; none is needed).
  step "installing promtool (Debian's prometheus package, without recommends)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null ||
    die "cannot install promtool (Debian's prometheus package)"
fi
promtool check config deploy/prometheus/prometheus.yml >/dev/null
promtool check rules deploy/prometheus/opmas-alerts.yml >/dev/null
(cd deploy/prometheus && promtool test rules opmas-alerts.test.yml >/dev/null)
step "prometheus config, rules and rule tests pass"
for f in deploy/backup/*.sh scripts/*.sh; do bash -n "$f"; done

# ---------------------------------------------------------------- 2. NATS
step "starting a 3-node NATS cluster"
for i in 1 2 3; do
  nats-server --config "$work/nats-$i.conf" -l "$work/nats-$i.log" &
  pids+=($!)
done
# Formed: every node healthy with routes to both others and a JetStream
# meta leader, twice in a row (duplicate routes are dropped in the first
# second; a reply crossing a route being replaced is lost).
stable=0
for _ in $(seq 1 100); do
  ok=0
  for i in 1 2 3; do
    m="http://127.0.0.1:${port[$((i + 5))]}"
    routes=$(curl -fs "$m/routez" | python3 -c 'import json,sys; print(json.load(sys.stdin)["num_routes"])' 2>/dev/null || echo 0)
    curl -fs "$m/healthz" >/dev/null && [ "$routes" = 2 ] && ok=$((ok + 1))
  done
  leader=$(curl -fs "http://127.0.0.1:${port[6]}/jsz" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("meta_cluster",{}).get("leader",""))' 2>/dev/null || true)
  if [ "$ok" = 3 ] && [ -n "$leader" ]; then stable=$((stable + 1)); else stable=0; fi
  [ "$stable" -ge 2 ] && break
  sleep 0.5
done
[ "$stable" -ge 2 ] || die "the NATS cluster did not form ($ok of 3 nodes with 2 routes, leader '$leader')"
check nats-badpw 127.0.0.1 "${port[1]}" opmas
check nats-badpw 127.0.0.1 "${port[0]}" agent
check nats-perm 127.0.0.1 "${port[2]}" agent "$AGENT_NATS_PASSWORD" opmas.events.agent.x.Forged
step "cluster up: 3 nodes, JetStream leader $leader"

# ---------------------------------------------------------------- 3. services
db_a="opmas_test_${tag}_a"
db_b="opmas_test_${tag}_b"
psql "$admin" -Xqc "create database $db_a"
dbs+=("$db_a")
set -a
# shellcheck disable=SC1091
. deploy/systemd/opmas.env.example
set +a
nats_url="nats://127.0.0.1:${port[1]}"
printf '%s' "$(pw)$(pw)" > "$work/jwt-main.key"
(umask 077; python3 -c 'import secrets; print(secrets.token_hex(64))' > "$work/secret.key")
export OPMAS_DATABASE_URL="${admin%/*}/$db_a" OPMAS_NATS_URL="$nats_url" OPMAS_DB_MAX_CONNECTIONS=8 \
  OPMAS_JWT_KEYS="main:HS256:secret-file=$work/jwt-main.key" OPMAS_SECRET_KEY_FILE="$work/secret.key" \
  OPMAS_MANAGEMENT_API_URL="http://127.0.0.1:${port[9]}" OPMAS_LOGS_MAX_BYTES=$((16 << 20)) OPMAS_SAMPLE_INTERVAL=1s
[ "$OPMAS_EVENTS_REPLICAS" = 3 ] || die "the env example should ask for 3 replicas"
export OPMAS_SERVER="http://127.0.0.1:${port[9]}"

# Runs a unit's ExecStartPre and ExecStart with its Environment= lines, the
# test's overrides on top (addresses, node name, log directory).
run_unit() {
  local unit="$work/units/opmas-$1.service" log="$work/$1.log" line
  (
    while IFS= read -r line; do export "${line#Environment=}"; done < <(grep '^Environment=' "$unit")
    export OPMAS_LISTEN="127.0.0.1:${port[9]}" OPMAS_NODE="deploytest" OPMAS_LOG_DIR="$work/agents"
    while IFS= read -r line; do ${line#ExecStartPre=}; done < <(grep '^ExecStartPre=' "$unit")
    exec $(sed -n 's/^ExecStart=//p' "$unit")
  ) >> "$log" 2>&1 &
  pids+=($!)
  eval "pid_$1=$!"
}
start_api() {
  run_unit api
  for _ in $(seq 1 150); do curl -fs "$OPMAS_SERVER/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -fs "$OPMAS_SERVER/readyz" >/dev/null || die "the API is not ready: $(curl -s "$OPMAS_SERVER/readyz")"
}
stop_services() {
  local p
  for p in "$pid_api" "$pid_projector" "$pid_supervisor"; do kill "$p"; done
  for p in "$pid_api" "$pid_projector" "$pid_supervisor"; do wait "$p" || true; done
}
step "services: migrate, api+relay, projector, supervisor (the units' commands)"
start_api
run_unit projector
run_unit supervisor
for _ in $(seq 1 100); do
  stream_replicas=$(curl -fs "http://127.0.0.1:${port[6]}/jsz?streams=true&config=true" | python3 -c '
import json, sys
for a in json.load(sys.stdin).get("account_details", []):
    for s in a.get("stream_detail", []):
        if s["name"] == "OPMAS_EVENTS": print(s["config"]["num_replicas"])')
  [ -n "$stream_replicas" ] && break
  sleep 0.2
done
[ "$stream_replicas" = 3 ] || die "OPMAS_EVENTS has ${stream_replicas:-no} replicas, not 3"

export OPMAS_TOKEN
OPMAS_TOKEN=$(opmas bootstrap-token --name deploy-test --role admin)
quiet='"heartbeat": {"enabled": false}'
curl -fs -o /dev/null -X POST "$OPMAS_SERVER/api/v1/agents" -H "Authorization: Bearer $OPMAS_TOKEN" \
  -H 'content-type: application/json' -d '{"agent_id": "ticker", "reason": "deploy test",
  "spec": {"agent_type": "ticker", "command": "sh", "args": ["-c", "while :; do echo tick; sleep 0.2; done"], "stop_grace_ms": 1000,
  "env": {"TICK_TOKEN": "deploy-s3cret"}, "secret_env": ["TICK_TOKEN"], '"$quiet"'}}' ||
  die "register through the API"
jwt_viewer=$(check jwt "$work/jwt-main.key" main viewer)
jwt_operator=$(check jwt "$work/jwt-main.key" main operator)
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$OPMAS_SERVER/api/v1/agents/ticker/start" -H "Authorization: Bearer $jwt_viewer")
[ "$code" = 403 ] || die "a viewer JWT could start an agent (HTTP $code)"
curl -fs -o /dev/null -X POST "$OPMAS_SERVER/api/v1/agents/ticker/start" -H "Authorization: Bearer $jwt_operator" \
  -H 'content-type: application/json' -d '{"reason": "started with a JWT"}' || die "start with an operator JWT"
opmas agents register crasher --spec - > /dev/null <<EOF
{"agent_type": "crasher", "command": "sh", "args": ["-c", "echo boom >&2; exit 3"], $quiet,
 "restart": {"initial_delay_ms": 50, "max_delay_ms": 100, "intensity": 2, "period_ms": 60000}}
EOF
opmas agents start crasher > /dev/null
opmas config set ticker --set greeting=hello --reason 'deploy test' > /dev/null

wait_for() { # agent field value
  for _ in $(seq 1 150); do
    [ "$(opmas agents show "$1" -o json 2>/dev/null | python3 -c "import json,sys; print(json.load(sys.stdin)['$2'])" 2>/dev/null)" = "$3" ] && return 0
    sleep 0.1
  done
  die "agent $1: $2 never became $3"
}
wait_for ticker status running
wait_for crasher status failed
for _ in $(seq 1 100); do
  [ "$(opmas logs ticker -n 5 | grep -c tick)" -ge 3 ] && break
  sleep 0.2
done
ticker_pid=$(opmas agents show ticker -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')
kill -0 "$ticker_pid" || die "ticker's pid $ticker_pid is not running"
# Its secret: sealed by the API with the env file's key, opened by the supervisor's.
tr '\0' '\n' < "/proc/$ticker_pid/environ" | grep -qx 'TICK_TOKEN=deploy-s3cret' ||
  die "the supervisor did not give ticker its secret"
[ "$(psql "$OPMAS_DATABASE_URL" -XAtqc "select count(*) from events where payload::text like '%deploy-s3cret%'")" = 0 ] ||
  die "ticker's secret is in clear in the event store"
[ "$(opmas logs ticker -n 5 | grep -c tick)" -ge 3 ] || die "ticker's output did not reach opmas logs"
step "agents: ticker running (pid $ticker_pid), crasher failed"

curl -fs "$OPMAS_SERVER/metrics" > "$work/metrics.txt"
grep -q '^opmas_agents{status="failed",health="[a-z]*"} 1' "$work/metrics.txt" || die "/metrics does not count the failed agent"
check series "$work/metrics.txt"

# The API's view of everything the restore must bring back.
snapshot() { # dir
  mkdir -p "$1"
  local a
  curl -fs "$OPMAS_SERVER/api/v1/agents?sort=agent_id" -H "Authorization: Bearer $OPMAS_TOKEN" > "$1/agents.json"
  for a in ticker crasher; do
    for what in "" /history /events /recovery /errors /config/versions; do
      curl -fs "$OPMAS_SERVER/api/v1/agents/$a$what" -H "Authorization: Bearer $OPMAS_TOKEN" > "$1/$a${what//\//_}.json"
    done
  done
  opmas audit crasher -o json > "$1/audit.json"
}
# wait until the stream and the read models have every event, then take
# the picture
caught_up="select count(*) = 0 from (select aggregate_id, max(sequence) as m from events group by 1) e
  left join agent_status s on s.agent_id = e.aggregate_id where s.last_sequence is distinct from e.m"
for _ in $(seq 1 100); do
  [ "$(opmas events verify -o json | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["pending"] == 0 and not r["diffs"])')" = True ] &&
    [ "$(psql "$OPMAS_DATABASE_URL" -XAtqc "$caught_up")" = t ] && break
  sleep 0.1
done
[ "$(psql "$OPMAS_DATABASE_URL" -XAtqc "$caught_up")" = t ] || die "the read models did not catch up"
starts_before=$(opmas agents events ticker --type ProcessStarted | grep -c ProcessStarted)
opmas replay --check > /dev/null || die "replay --check before the backup"
snapshot "$work/before"
for _ in $(seq 1 50); do
  [ "$(psql "$OPMAS_DATABASE_URL" -XAtqc 'select count(*) from agent_metric_samples')" -gt 0 ] && break
  sleep 0.2
done
samples_before=$(psql "$OPMAS_DATABASE_URL" -XAtqc 'select count(*) from agent_metric_samples')
[ "$samples_before" -gt 0 ] || die "no metric samples to back up"

# ---------------------------------------------------------------- 5. backup, restore
step "backup"
deploy/backup/opmas-backup.sh --telemetry "$work/backup.sql.gz"
stop_services
kill -0 "$ticker_pid" || die "stopping the supervisor stopped the agent"

step "restore into a fresh database and fresh streams"
psql "$admin" -Xqc "create database $db_b"
dbs+=("$db_b")
export OPMAS_DATABASE_URL="${admin%/*}/$db_b" OPMAS_EVENTS_STREAM=OPMAS_EVENTS_RESTORED \
  OPMAS_EVENTS_SUBJECT_PREFIX=restored.events OPMAS_METRICS_STREAM=OPMAS_METRICS_RESTORED \
  OPMAS_METRICS_SUBJECT_PREFIX=restored.metrics OPMAS_LOGS_STREAM=OPMAS_LOGS_RESTORED \
  OPMAS_LOGS_SUBJECT_PREFIX=restored.logs
OPMAS_BIN="$OPMAS_BIN" deploy/backup/opmas-restore.sh "$work/backup.sql.gz" > "$work/restore.log" 2>&1 ||
  die "opmas-restore.sh: $(tail -n 5 "$work/restore.log")"
grep -q 'ok: the stream holds every published event' "$work/restore.log" || die "verify --repair did not end clean"
(! OPMAS_BIN="$OPMAS_BIN" deploy/backup/opmas-restore.sh "$work/backup.sql.gz" > /dev/null 2>&1) ||
  die "a second restore into a non-empty database was accepted"
# the API alone first: what it answers comes from the restore, nothing else
start_api
snapshot "$work/after"
for f in "$work"/before/*.json; do check same "$f" "$work/after/$(basename "$f")"; done
# then the others; the supervisor must adopt the agent, not start it again,
# and its new output must reach the new logs stream and the read model
restored_at=$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)
run_unit projector
run_unit supervisor
# (a fresh stream set-up in the cluster can take a few retries)
for _ in $(seq 1 300); do
  [ "$(opmas logs ticker --since "$restored_at" -n 5 | grep -c tick || true)" -ge 2 ] && break
  sleep 0.2
done
[ "$(opmas logs ticker --since "$restored_at" -n 5 | grep -c tick)" -ge 2 ] || die "no log lines of the adopted agent after the restore"
# every line of the new logs stream is a row (a restored row must not
# shadow a new line: rows are keyed by the stream's sequence)
stream_msgs() {
  curl -fs "http://127.0.0.1:${port[6]}/jsz?streams=true" | python3 -c '
import json, sys
for a in json.load(sys.stdin).get("account_details", []):
    for s in a.get("stream_detail", []):
        if s["name"] == sys.argv[1]: print(s["state"]["last_seq"])' "$1"
}
for _ in $(seq 1 50); do
  last=$(stream_msgs "$OPMAS_LOGS_STREAM")
  rows=$(psql "$OPMAS_DATABASE_URL" -XAtqc "select count(*) from agent_logs where created_at >= '$restored_at'")
  [ "$rows" = "$last" ] && break
  sleep 0.2
done
[ "$rows" = "$last" ] || die "the new logs stream has $last lines, agent_logs only $rows new rows"
kill -0 "$ticker_pid" || die "the adopted ticker died"
[ "$(opmas agents events ticker --type ProcessStarted | grep -c ProcessStarted)" = "$starts_before" ] ||
  die "ticker was started again instead of adopted"
[ "$(opmas agents show ticker -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')" = "$ticker_pid" ] ||
  die "ticker was not adopted"
[ "$(psql "$OPMAS_DATABASE_URL" -XAtqc 'select count(*) from agent_metric_samples')" -ge "$samples_before" ] ||
  die "metric samples lost"
opmas events verify > /dev/null || die "events verify after the restore"
opmas agents stop ticker --reason 'deploy test done' > /dev/null
wait_for ticker status stopped
# gone, or a zombie: this container's init may not reap adopted orphans
state=$(sed -n 's/^[0-9]* (.*) \([A-Z]\).*/\1/p' "/proc/$ticker_pid/stat" 2>/dev/null || true)
[ -z "$state" ] || [ "$state" = Z ] || die "ticker still runs after stop (state $state)"
step "restored: $(ls "$work/before" | wc -l) API answers equal, agent adopted and stopped; ok"
