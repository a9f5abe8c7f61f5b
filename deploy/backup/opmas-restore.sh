#!/usr/bin/env bash
# Restores an opmas-backup.sh dump into a fresh, empty database and rebuilds
# everything else from the events:
#   1. `opmas migrate` creates the schema (the same version as the dump's);
#   2. the dump is loaded in one transaction, with the events' outbox
#      trigger disabled (nothing is re-sent blindly: step 4 decides);
#   3. `opmas replay` rebuilds the read models from the events;
#   4. `opmas events verify --repair` makes the JetStream stream match the
#      restored store (re-publishes what it lacks, purges and rebuilds an
#      agent whose stream holds events the store does not);
#   5. `opmas replay --check` proves the read models equal a fresh fold.
#
#   opmas-restore.sh IN.sql.gz
#
# Uses the opmas binary in $OPMAS_BIN (default: opmas on PATH) and its usual
# OPMAS_* environment (database URL, NATS URL, stream names). Stop the API,
# projector and supervisors of this database first; start them afterwards.
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: opmas-restore.sh IN.sql.gz" >&2; exit 2; }
in="$1"
opmas="${OPMAS_BIN:-opmas}"
url="${OPMAS_DATABASE_URL:?set OPMAS_DATABASE_URL to the (empty) target database}"
header=$(gzip -dc "$in" | head -n 1)
case "$header" in
  "-- opmas-backup schema_version="*) ;;
  *) echo "opmas-restore: $in is not an opmas-backup.sh dump" >&2; exit 1 ;;
esac
want=${header#*schema_version=}; want=${want%% *}
if [ "$(psql "$url" -XAtqc "select to_regclass('public.events') is not null")" = t ] &&
   [ "$(psql "$url" -XAtqc 'select exists (select 1 from events)')" = t ]; then
  echo "opmas-restore: the target database already holds events; restore into an empty one" >&2
  exit 1
fi
"$opmas" migrate
have=$(psql "$url" -XAtqc 'select max(version) from _sqlx_migrations where success')
if [ "$have" != "$want" ]; then
  echo "opmas-restore: the dump is schema $want, this opmas is at $have; restore with the opmas version that took it, then upgrade" >&2
  exit 1
fi
gzip -dc "$in" | psql "$url" -Xq -v ON_ERROR_STOP=1 --single-transaction \
  -c 'alter table public.events disable trigger events_to_outbox' \
  -f - \
  -c 'alter table public.events enable trigger events_to_outbox'
echo "opmas-restore: loaded $(psql "$url" -XAtqc 'select count(*) from events') events"
"$opmas" replay
"$opmas" events verify --repair
"$opmas" replay --check
echo "opmas-restore: done; start the services"
