#!/bin/sh
# Container entrypoint: the first argument chooses the binary, the rest are
# passed on. `exec` keeps the binary as PID 1 so SIGTERM reaches it directly.
set -eu

usage() {
  cat <<'USAGE'
usage: switchyard <command> [args...]

commands:
  bridge     run switchyard-bridge   (Kafka -> PostgreSQL cursor log -> Redis)
  gateway    run switchyard-gateway  (WebSocket / long-poll clients)
  topology   run switchyard-topology (inspect / check a topology file)
  <other>    exec any other command, e.g. `sh`

Configuration is read from SWITCHYARD_* environment variables.
USAGE
}

if [ "$#" -eq 0 ]; then
  usage
  exit 64
fi

cmd=$1
shift
case "$cmd" in
  bridge | switchyard-bridge) exec /usr/local/bin/switchyard-bridge "$@" ;;
  gateway | switchyard-gateway) exec /usr/local/bin/switchyard-gateway "$@" ;;
  topology | switchyard-topology) exec /usr/local/bin/switchyard-topology "$@" ;;
  -h | --help | help)
    usage
    exit 0
    ;;
  *) exec "$cmd" "$@" ;;
esac
