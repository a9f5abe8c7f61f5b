#!/usr/bin/env bash
# Makes sure a PostgreSQL (127.0.0.1:5432) and a nats-server with JetStream
# (127.0.0.1:4222) are reachable for the test suite: installs Debian's
# packages when missing, starts them when stopped. Idempotent. Run as root
# (or with sudo available).
set -euo pipefail

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

need=()
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || need+=(nats-server)
[ -n "$(pg_bin)" ] || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  echo "services: installing ${need[*]} from Debian's packages"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! port_open 5432; then
  echo "services: starting PostgreSQL"
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$version" ]; then
    version=$(basename "$(dirname "$(pg_bin)")")
    $SUDO pg_createcluster "$version" main >/dev/null
  fi
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start
  for _ in $(seq 1 50); do port_open 5432 && break; sleep 0.2; done
fi

# The tests log in as postgres/postgres over TCP: trust auth ignores the
# password, Debian's default (scram) needs it set once.
if ! PGPASSWORD=postgres psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1; then
  echo "services: setting the postgres role's password for TCP logins"
  $SUDO runuser -u postgres -- psql -qc "alter user postgres password 'postgres'" >/dev/null
fi

if ! port_open 4222; then
  echo "services: starting nats-server with JetStream"
  $SUDO mkdir -p /var/lib/nats-server
  $SUDO start-stop-daemon --start --oknodo --background --exec "$(command -v nats-server || echo /usr/sbin/nats-server)" \
    -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
  for _ in $(seq 1 50); do port_open 4222 && break; sleep 0.2; done
fi

port_open 5432 || { echo "services: PostgreSQL is not reachable on 127.0.0.1:5432" >&2; exit 1; }
port_open 4222 || { echo "services: nats-server is not reachable on 127.0.0.1:4222" >&2; exit 1; }
echo "services: PostgreSQL on 127.0.0.1:5432 and NATS on 127.0.0.1:4222 are up"
