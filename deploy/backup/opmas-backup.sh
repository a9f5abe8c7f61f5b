#!/usr/bin/env bash
# Dumps what OPMAS cannot rebuild: the event store (`events`) and the API
# tokens (`api_tokens`); with --telemetry also metric samples and rollups
# (they come from a stream with a max age, so older ones exist only here).
# Everything else — snapshots, the outbox, the read models — is derived and
# is rebuilt by opmas-restore.sh. Log lines are not dumped: their rows are
# keyed by the logs stream's sequence, so restored rows would hide the lines
# a new stream numbers alike (the lines stay in the agents' log files).
#
#   opmas-backup.sh [--telemetry] OUT.sql.gz
#
# Not in the dump: the secret key (OPMAS_SECRET_KEY_FILE, or
# <data-dir>/secret.key) that sealed the agents' secrets in the events.
# Without it a restored installation cannot open them (its agents with
# secrets fail to start): keep a copy of the key file with the dumps,
# as protected as the secrets themselves (docs/security.md).
#
# The database is OPMAS_DATABASE_URL (or --database-url URL). The dump is one
# consistent snapshot (pg_dump), plain SQL, gzip-compressed, and starts with
# a line naming the schema version it was taken at.
set -euo pipefail
telemetry=0
url="${OPMAS_DATABASE_URL:-}"
while [ $# -gt 1 ]; do
  case "$1" in
    --telemetry) telemetry=1; shift ;;
    --database-url) url="$2"; shift 2 ;;
    *) echo "opmas-backup: unknown option $1" >&2; exit 2 ;;
  esac
done
[ $# -eq 1 ] || { echo "usage: opmas-backup.sh [--telemetry] [--database-url URL] OUT.sql.gz" >&2; exit 2; }
[ -n "$url" ] || { echo "opmas-backup: set OPMAS_DATABASE_URL or --database-url" >&2; exit 2; }
out="$1"
tables=(events api_tokens)
[ "$telemetry" = 1 ] && tables+=(agent_metric_samples agent_metric_rollups)
version=$(psql "$url" -XAtqc 'select max(version) from _sqlx_migrations where success')
[ -n "$version" ] || { echo "opmas-backup: no applied migrations in that database" >&2; exit 1; }
args=()
for t in "${tables[@]}"; do args+=(--table="public.$t"); done
tmp="$out.partial"
trap 'rm -f "$tmp"' EXIT
{
  echo "-- opmas-backup schema_version=$version tables=${tables[*]}"
  pg_dump --dbname="$url" --data-only --no-owner --no-privileges "${args[@]}"
} | gzip -c > "$tmp"
mv "$tmp" "$out"
trap - EXIT
events=$(psql "$url" -XAtqc 'select count(*) from events')
echo "opmas-backup: $out (schema $version, $events events, tables: ${tables[*]})"
echo "opmas-backup: the secret key file is not in the dump: keep a copy of it with the dumps"
