#!/usr/bin/env bash
# Brings up the whole local system on this machine and shows events flowing:
# PostgreSQL, Redis, a tansu Kafka broker (127.0.0.1:9092), the bridge
# (admin :9090) and two gateways (clients :8080 and :8081, admin :9091 and
# :9093), then runs a demo client that produces to Kafka and prints what it
# receives over WebSocket. While the system runs it also serves the live
# demo page (http://127.0.0.1:8090/, built from clients/typescript/demo with
# the TypeScript SDK; needs Node) and produces a demo event every two
# seconds. Stop with Ctrl-C; logs are in .local/logs/.
# Set KEEP_RUNNING=0 to stop after the command-line demo.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh

log "building (release)"
cargo build --release -q -p switchyard-bridge -p switchyard-gateway -p switchyard-testkit --bins

bin=${CARGO_TARGET_DIR:-target}/release
mkdir -p .local/logs
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

export SWITCHYARD_POSTGRES_URL=${SWITCHYARD_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/switchyard}
export SWITCHYARD_REDIS_URL=${SWITCHYARD_REDIS_URL:-redis://127.0.0.1:6379}
export SWITCHYARD_TOPOLOGY=${SWITCHYARD_TOPOLOGY:-$PWD/deploy/topology.example.json}
export SWITCHYARD_KAFKA_BROKERS=${SWITCHYARD_KAFKA_BROKERS:-127.0.0.1:9092}
export SWITCHYARD_JWT_HS256_SECRET=${SWITCHYARD_JWT_HS256_SECRET:-local-demo-secret-0123456789abcdef}

psql postgres://postgres@127.0.0.1:5432/postgres -qtc "SELECT 1 FROM pg_database WHERE datname='switchyard'" | grep -q 1 \
  || psql postgres://postgres@127.0.0.1:5432/postgres -qc "CREATE DATABASE switchyard"

if ! (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null; then
  log "starting tansu on 127.0.0.1:9092"
  tansu broker --listener-url tcp://127.0.0.1:9092 --advertised-listener-url tcp://127.0.0.1:9092 \
    --storage-engine memory://tansu/ > .local/logs/tansu.log 2>&1 &
  pids+=($!)
  for _ in $(seq 1 50); do (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null && break; sleep 0.2; done
fi
tansu topic create --broker tcp://127.0.0.1:9092 --partitions 3 switchyard.events >/dev/null 2>&1 || true
tansu topic create --broker tcp://127.0.0.1:9092 --partitions 1 switchyard.events.dlq >/dev/null 2>&1 || true

log "starting bridge and two gateways"
SWITCHYARD_ADMIN_LISTEN=127.0.0.1:9090 $bin/switchyard-bridge > .local/logs/bridge.log 2>&1 &
pids+=($!)
SWITCHYARD_LISTEN=127.0.0.1:8080 SWITCHYARD_ADMIN_LISTEN=127.0.0.1:9091 $bin/switchyard-gateway > .local/logs/gateway-1.log 2>&1 &
pids+=($!)
SWITCHYARD_LISTEN=127.0.0.1:8081 SWITCHYARD_ADMIN_LISTEN=127.0.0.1:9093 $bin/switchyard-gateway > .local/logs/gateway-2.log 2>&1 &
pids+=($!)
for port in 9090 9091 9093; do
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.2
  done
  curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null || { echo "service on :$port not ready; see .local/logs"; exit 1; }
done

log "demo: produce to Kafka, receive on gateway 2 over WebSocket"
DEMO_GATEWAY=ws://127.0.0.1:8081/v1/ws DEMO_KAFKA=127.0.0.1:9092 DEMO_TOPIC=switchyard.events \
  $bin/switchyard-demo

if [ "${KEEP_RUNNING:-1}" = 1 ]; then
  if command -v npm >/dev/null 2>&1; then
    log "building the TypeScript SDK for the live demo page"
    (cd clients/typescript && npm ci --no-audit --no-fund --loglevel=error && npx tsc -p tsconfig.json)
    # The dev-only demo server mints tokens with the token tool; the secret
    # stays in its environment and never reaches the page.
    DEMO_PORT=${DEMO_PORT:-8090} DEMO_GATEWAYS=http://127.0.0.1:8080,http://127.0.0.1:8081 \
      DEMO_TOKEN_BIN=$bin/switchyard-demo node clients/typescript/demo/server.mjs > .local/logs/demo-web.log 2>&1 &
    pids+=($!)
    for _ in $(seq 1 50); do grep -q '^demo: ' .local/logs/demo-web.log 2>/dev/null && break; sleep 0.1; done
    demo_url=$(sed -n 's/^demo: //p' .local/logs/demo-web.log | head -1)
  else
    echo "npm not found: the live demo page is skipped (install Node.js >= 18 for it)"
  fi
  $bin/switchyard-demo produce --every-ms "${DEMO_EVERY_MS:-2000}" > .local/logs/demo-producer.log 2>&1 &
  pids+=($!)
  log "system running: ws://127.0.0.1:8080/v1/ws and ws://127.0.0.1:8081/v1/ws (Ctrl-C stops)"
  if [ -n "${demo_url:-}" ]; then
    echo "live demo: ${demo_url}  (pick a user; a News event is produced every ${DEMO_EVERY_MS:-2000} ms)"
  fi
  echo "mint a token (with the gateways' SWITCHYARD_JWT_HS256_SECRET exported): $bin/switchyard-demo token --sub alice --products CHLT,Sfc --ttl 3600"
  wait
fi
