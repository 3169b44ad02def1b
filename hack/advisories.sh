#!/usr/bin/env bash
# RustSec advisories for Cargo.lock (cargo deny check advisories), from one of two databases:
#   online    the live database, fetched from GitHub by cargo-deny (what every machine that
#             reaches GitHub should run);
#   snapshot  the dated snapshot in ../shared/supply-chain (or $AGENTGUARD_RUSTSEC_SNAPSHOT),
#             unpacked into the tool cache, never into the repository;
#   auto      (default) online when GitHub answers, the snapshot otherwise.
# Chosen with AGENTGUARD_ADVISORIES=online|snapshot|auto. Every result line names the database
# and, for the snapshot, its date and commit: advisories published after that date are not
# known to it.
#
# The snapshot is first shown to catch a known advisory (RUSTSEC-2020-0071, time 0.1.45, in a
# scratch project), so an empty or unreadable database cannot pass for "advisories ok".
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${AGENTGUARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/agentguard}"
SNAPSHOT="${AGENTGUARD_RUSTSEC_SNAPSHOT:-$ROOT/../shared/supply-chain/rustsec-advisory-db-2025-02-24.tar.gz}"
MODE="${AGENTGUARD_ADVISORIES:-auto}"
# cargo-deny names the checkout of https://github.com/rustsec/advisory-db by this hash.
DB_DIR_NAME="advisory-db-3157b0e258782691"

log() { printf '[advisories %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

command -v cargo-deny >/dev/null 2>&1 || cargo install --locked cargo-deny

if [[ "$MODE" == auto ]]; then
  if timeout 15 git ls-remote --exit-code https://github.com/rustsec/advisory-db HEAD >/dev/null 2>&1; then
    MODE=online
  else
    MODE=snapshot
    log "GitHub is unreachable: using the dated snapshot"
  fi
fi

case "$MODE" in
  online)
    cargo deny --locked check advisories
    log "advisories ok (live RustSec database, fetched $(date -u +%Y-%m-%d))"
    ;;
  snapshot)
    [[ -f "$SNAPSHOT" ]] || die "no snapshot at $SNAPSHOT (set AGENTGUARD_RUSTSEC_SNAPSHOT, or AGENTGUARD_ADVISORIES=online)"
    sum=$(sha256sum "$SNAPSHOT" | cut -c1-16)
    db_path="$CACHE/rustsec/$sum"
    if [[ ! -d "$db_path/$DB_DIR_NAME/.git" ]]; then
      rm -rf "$db_path"
      mkdir -p "$db_path"
      tar -xzf "$SNAPSHOT" -C "$db_path"
      mv "$db_path/advisory-db" "$db_path/$DB_DIR_NAME"
    fi
    db="$db_path/$DB_DIR_NAME"
    commit=$(git -C "$db" log -1 --format=%h)
    day=$(git -C "$db" log -1 --format=%cs)
    what="RustSec snapshot of $day (commit $commit)"
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    # The repository's policy with the snapshot as the database, fetched never.
    cp "$ROOT/deny.toml" "$scratch/deny.toml"
    printf '\n[advisories]\ndb-path = "%s"\n' "$db_path" >>"$scratch/deny.toml"
    # A scratch crate with a dependency the snapshot has an advisory for must fail.
    mkdir -p "$scratch/known/src"
    printf '[package]\nname = "known"\nversion = "0.0.0"\nedition = "2021"\npublish = false\n[dependencies]\ntime = "=0.1.45"\n' \
      >"$scratch/known/Cargo.toml"
    : >"$scratch/known/src/lib.rs"
    (cd "$scratch/known" && cargo generate-lockfile -q && cargo fetch -q)
    if (cd "$scratch/known" && cargo deny --offline --config "$scratch/deny.toml" check advisories) \
      >"$scratch/known.log" 2>&1; then
      die "the $what did not report RUSTSEC-2020-0071 for time 0.1.45: the database is not being read"
    fi
    grep -q RUSTSEC-2020-0071 "$scratch/known.log" \
      || { cat "$scratch/known.log" >&2; die "the $what failed the known crate for another reason"; }
    log "the $what reports RUSTSEC-2020-0071 for time 0.1.45, as it must"
    (cd "$ROOT" && cargo deny --offline --locked --config "$scratch/deny.toml" check advisories)
    log "advisories ok against the $what; advisories published since then are not checked here"
    ;;
  *) die "AGENTGUARD_ADVISORIES must be online, snapshot or auto, not '$MODE'" ;;
esac
