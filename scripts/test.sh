#!/usr/bin/env bash
# The test command: services up (installed/started if needed), then every
# test of the workspace against the real PostgreSQL and nats-server.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
export OPMAS_TEST_DATABASE_URL="${OPMAS_TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"
export OPMAS_TEST_NATS_URL="${OPMAS_TEST_NATS_URL:-nats://127.0.0.1:4222}"
# Drop databases left by tests that panicked in an earlier run.
PGPASSWORD=postgres psql "$OPMAS_TEST_DATABASE_URL" -Atqc \
  "select 'drop database if exists \"' || datname || '\" with (force);' from pg_database where datname like 'opmas_test_%'" \
  | PGPASSWORD=postgres psql "$OPMAS_TEST_DATABASE_URL" -q >/dev/null 2>&1 || true
# Delete streams left on the shared nats-server by tests that panicked.
cargo run -q -p opmas-testkit --bin sweep-test-streams
cargo test --workspace --all-targets "$@"
