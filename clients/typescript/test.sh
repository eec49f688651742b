#!/usr/bin/env bash
# The TypeScript SDK's tests, as CI runs them (.ci/run calls this after
# `cargo test --workspace`): installs what is missing (node modules with
# `npm ci`, Debian's chromium), builds the SDK and the Rust binaries the
# stacks need, then runs the unit tests, the end-to-end tests against a real
# stack (tansu, PostgreSQL, Redis, bridge, two gateways: started and torn
# down by testkit's `switchyard-stack`) and the demo page in headless
# Chromium. Expects PostgreSQL, Redis and tansu as scripts/services.sh
# leaves them. About two minutes once everything is built.
set -euo pipefail
cd "$(dirname "$0")"
root=$(cd ../.. && pwd)
export PATH="$HOME/.cargo/bin:$PATH"
export DEBIAN_FRONTEND=noninteractive
started=$(date +%s)
say() { printf '\n== %s (%ss)\n' "$*" "$(( $(date +%s) - started ))"; }

if ! command -v node >/dev/null 2>&1; then
  say "installing Node.js"
  apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
fi
if [ ! -x "${CHROMIUM_PATH:-/usr/bin/chromium}" ]; then
  say "installing chromium (Debian's; playwright-core drives it, nothing is downloaded)"
  apt-get update -qq && apt-get install -y -qq chromium >/dev/null
fi

say "npm ci"
npm ci --no-audit --no-fund --loglevel=error

say "building the SDK and its tests"
rm -rf dist build-test
npx tsc -p tsconfig.json
npx tsc -p tsconfig.test.json
mkdir -p test-results

say "building switchyard-bridge, switchyard-gateway, switchyard-stack, switchyard-demo"
(cd "$root" && cargo build -q -p switchyard-bridge -p switchyard-gateway -p switchyard-testkit --bins)

say "node --test: unit, end-to-end, browser"
# One file at a time: each end-to-end file starts its own stack, and this
# machine has two cores.
node --test --test-concurrency=1 build-test/test/unit/ build-test/test/e2e/ build-test/test/browser/
say "SDK tests done"
