#!/usr/bin/env bash
# Runs a load-test scenario against Switchyard and its peers on this machine.
#
#   loadtest/run.sh <fanout|scoped|reconnect|ingest|idle|all> [options]
#   loadtest/run.sh soak [--ci | --duration 600 --clients 2000]   (the chaos soak)
#   loadtest/run.sh quick [--save-baseline]   (~3 min, Switchyard only, vs results/quick-baseline.json)
#   loadtest/run.sh fanout --systems socketio,naive,rawtcp --connections 2000
#   loadtest/run.sh --help            (all options: target/release/switchyard-loadtest run --help)
#
# It raises the open-files limit, builds the generator and peers (and the
# Switchyard binaries when switchyard is measured; SWITCHYARD_LOADTEST_BUILD=0
# skips that), checks that PostgreSQL, Redis and tansu are there, and hands
# over to `switchyard-loadtest run`, which starts every server itself (tansu
# on a free port, a fresh database, a Redis prefix, the systems), measures,
# tears down, and writes loadtest/results/<scenario>.{json,md,svg} and the
# figures in loadtest/README.md. Exit 2 means events were lost or duplicated
# (pass --allow-loss to accept that), 1 any other failure.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

# 10,000 connections need 10,000 descriptors in the generator and as many in
# each server; children inherit this limit.
ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

if [ "${1:-}" = "" ] || [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi

# The chaos soak has its own options (loadtest/run.sh soak --help). It
# checks correctness under faults, not speed, so SWITCHYARD_SOAK_PROFILE=debug
# (what .ci/run uses, right after `cargo test` built the debug binaries)
# spares a release build; the default is release.
if [ "$1" = "soak" ]; then
  shift
  profile="${SWITCHYARD_SOAK_PROFILE:-release}"
  case "$profile" in
    release) profile_flag=(--release) ;;
    debug) profile_flag=() ;;
    *) echo "SWITCHYARD_SOAK_PROFILE must be debug or release, not '$profile'" >&2; exit 64 ;;
  esac
  # One cargo call for the three, so their dependencies' features resolve once.
  cargo build "${profile_flag[@]}" -q -p switchyard-loadtest -p switchyard-bridge -p switchyard-gateway --bins
  command -v "${TANSU_BIN:-tansu}" >/dev/null 2>&1 || [ -x "$HOME/.cargo/bin/tansu" ] \
    || { echo "tansu is missing: cargo install tansu --locked --features dynostore,postgres" >&2; exit 1; }
  # Built just now: the soak starts them from there, without cargo.
  export SWITCHYARD_BIN_DIR="${CARGO_TARGET_DIR:-target}/$profile"
  exec "${CARGO_TARGET_DIR:-target}/$profile/switchyard-loadtest" soak "$@"
fi

cargo build --release -q -p switchyard-loadtest --bins
bin="${CARGO_TARGET_DIR:-target}/release"

# Build Switchyard too when it is to be measured (named, or the default set).
wants_switchyard=1
prev=""
for a in "$@"; do
  case "$a" in
    --systems=*) [[ "${a#--systems=}" == *switchyard* ]] || wants_switchyard=0 ;;
  esac
  if [ "$prev" = "--systems" ] && [[ "$a" != *switchyard* ]]; then wants_switchyard=0; fi
  prev="$a"
done
if [ "$wants_switchyard" = 1 ] && [ "${SWITCHYARD_LOADTEST_BUILD:-1}" = 1 ]; then
  cargo build --release -q -p switchyard-bridge -p switchyard-gateway \
    || echo "warning: Switchyard did not build; it will be skipped" >&2
fi

command -v "${TANSU_BIN:-tansu}" >/dev/null 2>&1 || [ -x "$HOME/.cargo/bin/tansu" ] \
  || { echo "tansu is missing: cargo install tansu --locked (or run scripts/services.sh)" >&2; exit 1; }
pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null \
  || echo "warning: PostgreSQL is not answering on 127.0.0.1:5432 (scripts/services.sh starts it)" >&2
redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 \
  || echo "warning: Redis is not answering on 127.0.0.1:6379 (scripts/services.sh starts it)" >&2

if [ "$1" = quick ]; then
  shift
  exec "$bin/switchyard-loadtest" quick "$@"
fi
exec "$bin/switchyard-loadtest" run "$@"
