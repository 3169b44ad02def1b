#!/usr/bin/env bash
# Runs every test: formatting, lints, unit and HTTP-edge tests, and the end-to-end suites
# against a real local control plane (started here when not already running, stopped after).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { printf '[test %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

log "building control-plane tools (cached after the first run)"
hack/build-tools.sh >/dev/null

started_here=0
if hack/cluster.sh status; then
  log "reusing the running control plane"
else
  hack/cluster.sh up >/dev/null
  started_here=1
fi
cleanup() { if ((started_here)); then hack/cluster.sh down; fi; }
trap cleanup EXIT

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
log "cargo test (unit, HTTP edge, end to end)"
cargo test --locked --all-targets
