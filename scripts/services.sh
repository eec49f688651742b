#!/usr/bin/env bash
# Installs (when missing) and starts the servers Switchyard needs on this
# machine: PostgreSQL and Redis from Debian's packages, and the tansu
# Kafka-protocol broker from crates.io (cached in ~/.cargo/bin). Idempotent.
# Sourced by .ci/run and scripts/run-local.sh.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
export PATH="$HOME/.cargo/bin:$PATH"

log() { printf '\n== %s\n' "$*"; }

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then apt-get update -qq; apt_updated=1; fi
  apt-get install -y -qq "$@" >/dev/null
}

# --- PostgreSQL (127.0.0.1:5432, trust auth for local connections) ---------
if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  log "starting PostgreSQL"
  if ! command -v pg_ctlcluster >/dev/null 2>&1 || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
    apt_install postgresql postgresql-client
    ver=$(ls /etc/postgresql | sort -V | tail -1)
    hba=/etc/postgresql/$ver/main/pg_hba.conf
    # Tests connect as postgres over TCP without a password, like the
    # machine's own set-up: trust loopback only.
    sed -i -E 's/^(host\s+all\s+all\s+127\.0\.0\.1\/32\s+)\S+/\1trust/; s/^(host\s+all\s+all\s+::1\/128\s+)\S+/\1trust/; s/^(local\s+all\s+(postgres|all)\s+)\S+/\1trust/' "$hba"
  fi
  ver=$(ls /etc/postgresql | sort -V | tail -1)
  pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
  for _ in $(seq 1 60); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
fi
command -v psql >/dev/null 2>&1 || apt_install postgresql-client
pg_isready -h 127.0.0.1 -p 5432

# --- Redis (127.0.0.1:6379) -------------------------------------------------
if ! (command -v redis-cli >/dev/null 2>&1 && redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1); then
  log "starting Redis"
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 1 30); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 1; done
fi
redis-cli -h 127.0.0.1 -p 6379 ping

# --- tansu, the Kafka-protocol broker (cached in ~/.cargo/bin) ------------
if ! command -v tansu >/dev/null 2>&1; then
  log "installing tansu (first time only, about 10 minutes)"
  cargo install tansu --locked --features dynostore,postgres
fi
tansu --help >/dev/null

# --- build tools for librdkafka (rdkafka-sys builds it from source) --------
for tool in make gcc g++ perl; do
  command -v "$tool" >/dev/null 2>&1 || apt_install build-essential perl
done

