#!/usr/bin/env bash
# Builds Kyverno's admission controller (github.com/kyverno/kyverno/cmd/kyverno) from its Go
# module into the bench cache, within a time box, refusing to start (or stopping) when the disk
# runs low: its dependency graph (cosign, notation, cloud SDKs) is large.
#
#   bench/peers/kyverno/build.sh   prints the binary's path on success; exit 1 with the reason
#
# Environment: KYVERNO_VERSION (v1.19.1), KYVERNO_BUILD_TIMEOUT seconds (900),
# BENCH_MIN_FREE_GB (3, checked before and during the build).
set -euo pipefail

KYVERNO_VERSION="${KYVERNO_VERSION:-v1.19.1}"
TIMEOUT="${KYVERNO_BUILD_TIMEOUT:-900}"
MIN_FREE_GB="${BENCH_MIN_FREE_GB:-3}"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/agentguard/bench"
SRC="$CACHE/src/kyverno-$KYVERNO_VERSION"
OUT="$CACHE/bin/kyverno-$KYVERNO_VERSION"
# A build cache of its own (several GB), deleted after a successful build so that it does not
# stay on the shared disk; a stopped build keeps it, so that a retry resumes.
export GOCACHE="$CACHE/gocache-kyverno"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0

log() { printf '[kyverno-build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
free_gb() { df -P -BG "${1:-$HOME}" | awk 'NR==2 {sub("G","",$4); print $4}'; }

if [[ -x "$OUT" ]]; then echo "$OUT"; exit 0; fi
mkdir -p "$SRC" "$CACHE/bin"
if (( $(free_gb "$(go env GOMODCACHE | xargs dirname)") < MIN_FREE_GB )); then
  log "not building: less than ${MIN_FREE_GB} GB free on the Go module cache's disk"
  exit 1
fi

gomod=$(cd "$SRC" && go mod download -json "github.com/kyverno/kyverno@$KYVERNO_VERSION" \
  | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
[[ -f "$gomod" ]] || { log "cannot download github.com/kyverno/kyverno@$KYVERNO_VERSION"; exit 1; }
{
  echo "module agentguard.dev/bench/kyverno-build"
  echo
  echo "go $(sed -n 's/^go //p' "$gomod")"
  echo
  echo "require github.com/kyverno/kyverno $KYVERNO_VERSION"
  echo
  # A dependency's replace directives do not apply to the module that requires it: copy them.
  grep -E '^replace ' "$gomod" || true
} >"$SRC/go.mod"
cat >"$SRC/tools.go" <<'GO'
//go:build tools

package tools

import _ "github.com/kyverno/kyverno/cmd/kyverno"
GO

log "resolving and building kyverno $KYVERNO_VERSION (time box ${TIMEOUT}s)"
started=$SECONDS
(
  cd "$SRC"
  go mod tidy && go build -trimpath -ldflags "-s -w" -o "$OUT.tmp" github.com/kyverno/kyverno/cmd/kyverno
) >"$SRC/build.log" 2>&1 &
pid=$!
status=0
while kill -0 "$pid" 2>/dev/null; do
  sleep 5
  if (( SECONDS - started > TIMEOUT )); then
    log "time box of ${TIMEOUT}s exceeded; stopping the build"
    pkill -TERM -P "$pid" 2>/dev/null || true; kill "$pid" 2>/dev/null || true
    status=124
    break
  fi
  if (( $(free_gb "$(go env GOMODCACHE | xargs dirname)") < MIN_FREE_GB )); then
    log "disk almost full; stopping the build"
    pkill -TERM -P "$pid" 2>/dev/null || true; kill "$pid" 2>/dev/null || true
    status=28
    break
  fi
done
if (( status == 0 )); then
  wait "$pid" || status=$?
fi
log "build took $((SECONDS - started))s, exit $status; log in $SRC/build.log"
if (( status != 0 )); then
  tail -n 20 "$SRC/build.log" >&2
  exit 1
fi
mv "$OUT.tmp" "$OUT"
rm -rf "$GOCACHE"
echo "$OUT"
