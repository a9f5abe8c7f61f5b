#!/usr/bin/env bash
# The run command: installs nats-server and PostgreSQL from Debian's packages
# if missing, builds OPMAS and runs `opmas dev`, which starts a private
# nats-server and PostgreSQL in ./.opmas (unless OPMAS_DATABASE_URL /
# OPMAS_NATS_URL point elsewhere), with the example agents of
# examples/agents running. Ctrl-C stops everything but the agents (they are
# adopted at the next start).
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
need=()
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || need+=(nats-server)
ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1 || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
# OPMAS and the example agents' programs (examples/agents: their manifests
# name them as programs on PATH).
cargo build --release --bin opmas -p opmas-example-agents --bins
export PATH="$PWD/target/release:$PATH"
# As root, the private PostgreSQL runs as the `postgres` user, which must be
# able to reach its data directory: a checkout under /root is closed to it.
if [ "$(id -u)" = 0 ] && [ -z "${OPMAS_DATA_DIR:-}" ]; then
  export OPMAS_DATA_DIR=/var/lib/opmas
fi
# The example packages are discovered, registered and started; add your own
# roots with --package-root DIR (or OPMAS_PACKAGE_ROOTS).
exec target/release/opmas dev --package-root examples/agents "$@"
