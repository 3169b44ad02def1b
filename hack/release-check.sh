#!/usr/bin/env bash
# Checks here, without a registry, GitHub or a Docker engine, what a tagged release
# (.github/workflows/release.yml, docs/release.md) relies on, one line per check saying what it
# proved:
#   1. the workflows pass actionlint (and shellcheck on their run: scripts, when installed), and
#      every action they use is pinned by a full commit SHA with its version in a comment;
#   2. the chart packages as agentguard-<Cargo version>.tgz and passes `helm lint --strict`;
#   3. cargo-cyclonedx writes CycloneDX JSON SBOMs of agentguard for the release's targets that
#      name agentguard at Cargo's version and kube and rustls as Cargo.lock pins them, and the
#      work tree stays as it was;
#   4. the krew manifest passes krew's own validator and hack/krew-validate (version, platforms,
#      uris, files), before and after the sums are filled in as the release does.
# Tools are built once into the tool cache (a versioned directory each) and reused.
#
#   hack/release-check.sh                 every check
#   hack/release-check.sh --sbom-dir DIR  only check 3, keeping the SBOMs in DIR (the release
#                                         workflow attaches these)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

sbom_dir=""
case "${1:-}" in
  "") ;;
  --sbom-dir) sbom_dir="${2:?--sbom-dir needs a directory}"; mkdir -p "$sbom_dir"; sbom_dir="$(cd "$sbom_dir" && pwd)" ;;
  *) echo "usage: hack/release-check.sh [--sbom-dir DIR]" >&2; exit 2 ;;
esac
cd "$ROOT"

log() { printf '[release-check %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
fail() { log "FAILED: $*"; exit 1; }

ACTIONLINT_VERSION="${ACTIONLINT_VERSION:-v1.7.12}"
CARGO_CYCLONEDX_VERSION="${CARGO_CYCLONEDX_VERSION:-0.5.9}"
# The targets the release builds binaries for: the image's (the Dockerfile's musl target, and its
# arm64 twin) and the kubectl plugin's (those two and macOS). One SBOM each.
SBOM_TARGETS=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl x86_64-apple-darwin aarch64-apple-darwin)

CACHE="${AGENTGUARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/agentguard}"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0

# `version = "..."` of Cargo.toml's [package] table.
VERSION=$(sed -n '/^\[package\]/,/^\[/s/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
[[ -n "$VERSION" ]] || fail "no [package] version in Cargo.toml"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/agentguard-release-check.XXXXXX")
# cargo-cyclonedx writes next to Cargo.toml; anything it left there on a failure goes too.
trap 'rm -rf "$TMP"; rm -f "$ROOT"/release-check-sbom-$$-*' EXIT

# --- 1. actionlint -------------------------------------------------------------------------
check_workflows() {
  local bin="$CACHE/tools/actionlint-$ACTIONLINT_VERSION/bin"
  if [[ ! -x "$bin/actionlint" ]]; then
    log "building actionlint $ACTIONLINT_VERSION into $bin"
    mkdir -p "$bin"
    GOBIN="$bin" go install -trimpath -ldflags "-s -w" \
      "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION"
  fi
  local workflows=(.github/workflows/*.yml)
  [[ -e "${workflows[0]}" ]] || fail "no workflows in .github/workflows"
  local shellcheck="shellcheck not installed, so run: scripts were not linted"
  if command -v shellcheck >/dev/null 2>&1; then
    shellcheck="run: scripts through shellcheck $(shellcheck --version | sed -n 's/^version: //p')"
  fi
  "$bin/actionlint" -no-color "${workflows[@]}" || fail "actionlint found problems (above)"

  # Every `uses:` of another repository's action names a full commit SHA and, in a comment,
  # the version that SHA is (a tag can be moved; a SHA cannot). Local actions (./...) are ours.
  local line bad=0 pins=0
  while IFS= read -r line; do
    [[ "$line" =~ uses:[[:space:]]*\./ ]] && continue
    pins=$((pins + 1))
    if ! [[ "$line" =~ uses:[[:space:]]*[^@[:space:]]+@[0-9a-f]{40}[[:space:]]+#[[:space:]]*v[0-9] ]]; then
      log "not pinned by SHA with a version comment: $line"
      bad=1
    fi
  done < <(grep -hE '^[[:space:]]*(-[[:space:]]+)?uses:' "${workflows[@]}")
  ((bad == 0)) || fail "pin every action as owner/repo@<40-hex SHA> # vX.Y.Z"
  log "ok 1/4 actionlint $ACTIONLINT_VERSION: ${workflows[*]} (syntax, expressions, contexts, action inputs, needs, permissions; $shellcheck); all $pins actions pinned by commit SHA with a version comment"
}

# --- 2. helm package + lint ----------------------------------------------------------------
check_chart() {
  local helm
  helm="$(hack/build-tools.sh --print)/helm"
  if [[ ! -x "$helm" ]]; then
    log "helm is not built yet: running hack/build-tools.sh (builds every pinned tool that is missing)"
    hack/build-tools.sh >/dev/null
  fi
  local out="$TMP/chart" pkg lint
  mkdir -p "$out"
  "$helm" package charts/agentguard -d "$out" >/dev/null
  pkg=$(cd "$out" && ls)
  [[ "$pkg" == "agentguard-$VERSION.tgz" ]] \
    || fail "helm package wrote $pkg, want agentguard-$VERSION.tgz (Chart.yaml's version must be Cargo.toml's $VERSION)"
  lint=$("$helm" lint --strict "$out/$pkg" 2>&1) || { printf '%s\n' "$lint" >&2; fail "helm lint --strict $pkg"; }
  # Where the release pushes it: oci://<image.registry>/<owner of image.repository>/charts.
  local registry repository
  registry=$(sed -n '/^image:/,/^[^ #]/s/^  registry: *//p' charts/agentguard/values.yaml | tr -d "\"'")
  repository=$(sed -n '/^image:/,/^[^ #]/s/^  repository: *//p' charts/agentguard/values.yaml | tr -d "\"'")
  log "ok 2/4 helm $("$helm" version --template '{{.Version}}'): charts/agentguard packages as $pkg (the release pushes it as oci://$registry/${repository%%/*}/charts/agentguard:$VERSION) and the package passes helm lint --strict ($(grep -Eo '[0-9]+ chart\(s\) linted, [0-9]+ chart\(s\) failed' <<<"$lint"))"
}

# --- 3. CycloneDX SBOM ---------------------------------------------------------------------
check_sbom() {
  local root="$CACHE/tools/cargo-cyclonedx-$CARGO_CYCLONEDX_VERSION"
  if [[ ! -x "$root/bin/cargo-cyclonedx" ]]; then
    log "installing cargo-cyclonedx $CARGO_CYCLONEDX_VERSION from crates.io into $root (a few minutes, once)"
    cargo install --locked --quiet cargo-cyclonedx --version "$CARGO_CYCLONEDX_VERSION" --root "$root"
  fi
  # Written to a scratch directory first: DIR may be inside the work tree, whose git status
  # must not change while cargo-cyclonedx runs.
  local out="$TMP/sbom" target name before after
  mkdir -p "$out"
  before=$(git status --porcelain --untracked-files=all)
  # The SBOM's timestamp is the commit's, so the same commit gives the same document (but its
  # serial number, a random UUID).
  local epoch
  epoch=$(git log -1 --format=%ct 2>/dev/null || date +%s)
  for target in "${SBOM_TARGETS[@]}"; do
    # It writes <override-filename>.json next to Cargo.toml (no output directory option; a path
    # is refused), so a name of this run's own, moved out at once.
    name="release-check-sbom-$$-$target"
    SOURCE_DATE_EPOCH="$epoch" "$root/bin/cargo-cyclonedx" cyclonedx --manifest-path Cargo.toml \
      --format json --spec-version 1.5 --target "$target" --override-filename "$name" --quiet
    mv "$ROOT/$name.json" "$out/agentguard-$VERSION-$target.cdx.json"
  done
  after=$(git status --porcelain --untracked-files=all)
  # Entries that appeared (one that went away is someone's commit, not cargo-cyclonedx's).
  local added
  added=$(comm -13 <(sort <<<"$before") <(sort <<<"$after"))
  if [[ -n "$added" ]]; then
    printf '%s\n' "$added" >&2
    fail "generating the SBOM changed the work tree (new in git status, above)"
  fi
  local proved
  proved=$(python3 - "$VERSION" "$out" "${SBOM_TARGETS[@]}" <<'PY'
import json, sys, tomllib

version, out, targets = sys.argv[1], sys.argv[2], sys.argv[3:]
with open("Cargo.lock", "rb") as f:
    locked = {}
    for p in tomllib.load(f)["package"]:
        locked.setdefault(p["name"], set()).add(p["version"])

def fail(msg):
    sys.exit(f"SBOM {path}: {msg}")

summary = []
for target in targets:
    path = f"{out}/agentguard-{version}-{target}.cdx.json"
    with open(path) as f:
        bom = json.load(f)
    if bom.get("bomFormat") != "CycloneDX" or bom.get("specVersion") != "1.5":
        fail(f"not CycloneDX 1.5 JSON: bomFormat {bom.get('bomFormat')!r}, specVersion {bom.get('specVersion')!r}")
    meta = bom["metadata"]
    top = meta["component"]
    if (top.get("name"), top.get("version")) != ("agentguard", version):
        fail(f"describes {top.get('name')} {top.get('version')}, want agentguard {version}")
    bins = {c["name"] for c in top.get("components", []) if c.get("type") == "application"}
    if not {"agentguard", "kubectl-agentguard"} <= bins:
        fail(f"binaries {sorted(bins)}, want agentguard and kubectl-agentguard")
    props = {p["name"]: p["value"] for p in meta.get("properties", [])}
    if props.get("cdx:rustc:sbom:target:triple") != target:
        fail(f"target {props.get('cdx:rustc:sbom:target:triple')!r}, want {target}")
    comps = {}
    for c in bom["components"]:
        if not c.get("purl", "").startswith("pkg:cargo/"):
            fail(f"component {c.get('name')} has no cargo purl")
        comps.setdefault(c["name"], set()).add(c["version"])
    for dep in ("kube", "rustls"):
        if dep not in comps:
            fail(f"does not list {dep}")
        if comps[dep] != locked[dep]:
            fail(f"lists {dep} {sorted(comps[dep])}, Cargo.lock pins {sorted(locked[dep])}")
    for dev in ("criterion", "proptest"):
        if dev in comps:
            fail(f"lists the dev-dependency {dev}, which no released binary contains")
    summary.append(f"{target} {len(bom['components'])}")
print(f"{', '.join(summary)} components; kube {' '.join(sorted(comps['kube']))} and rustls "
      f"{' '.join(sorted(comps['rustls']))} as Cargo.lock pins them; no dev-dependencies")
PY
) || fail "the SBOM check (above)"
  local where="the work tree unchanged (git status)"
  if [[ -n "$sbom_dir" ]]; then
    cp "$out"/*.cdx.json "$sbom_dir/"
    where="$where; kept in $sbom_dir"
  fi
  log "ok 3/4 cargo-cyclonedx $CARGO_CYCLONEDX_VERSION: CycloneDX 1.5 JSON SBOMs of agentguard $VERSION (binaries agentguard, kubectl-agentguard) for ${#SBOM_TARGETS[@]} targets: $proved; $where"
}

# --- 4. krew manifest ----------------------------------------------------------------------
check_krew() {
  local src=hack/krew-validate manifest=deploy/krew/agentguard.yaml
  local krew hash bin
  krew=$(sed -n 's/^[[:space:]]*sigs\.k8s\.io\/krew \(v[^[:space:]]*\).*/\1/p' "$src/go.mod" | head -n1)
  [[ -n "$krew" ]] || fail "$src/go.mod requires no sigs.k8s.io/krew"
  # Keyed by the sources too, so an edit to the program rebuilds it.
  hash=$(cat "$src/go.mod" "$src/go.sum" "$src/main.go" | sha256sum | cut -c1-12)
  bin="$CACHE/tools/krew-validate-krew-$krew-$hash"
  if [[ ! -x "$bin/krew-validate" || ! -x "$bin/validate-krew-manifest" || ! -x "$bin/krew" ]]; then
    log "building hack/krew-validate and krew $krew's validate-krew-manifest and krew into $bin"
    mkdir -p "$bin"
    # -mod=readonly: go.mod and go.sum as committed (its tool directives pin krew's two
    # commands), never rewritten by the build.
    (cd "$src" && export GOFLAGS=-mod=readonly \
      && go build -trimpath -ldflags "-s -w" -o "$bin/krew-validate" . \
      && go build -trimpath -ldflags "-s -w" -o "$bin/validate-krew-manifest" sigs.k8s.io/krew/cmd/validate-krew-manifest \
      && go build -trimpath -ldflags "-s -w" -o "$bin/krew" sigs.k8s.io/krew/cmd/krew)
  fi

  # spec.version, read here too: v + Cargo.toml's version.
  local spec_version
  spec_version=$(sed -n '/^spec:/,$s/^  version: *"\{0,1\}\([^" ]*\)"\{0,1\} *$/\1/p' "$manifest" | head -n1)
  [[ "$spec_version" == "v$VERSION" ]] \
    || fail "$manifest spec.version is '$spec_version', want v$VERSION (v + Cargo.toml's version)"

  local home release_url license=() krew_log
  home=$(sed -n 's/^home: *//p' charts/agentguard/Chart.yaml)
  release_url="$home/releases/download"
  [[ -f LICENSE ]] && license=(-license)
  # krew's own validation (ValidatePlugin, every platform selector matches a supported
  # <os,arch> and none overlap). -skip-install: installing downloads the archives.
  krew_log=$("$bin/validate-krew-manifest" -manifest "$manifest" -skip-install 2>&1) \
    || { printf '%s\n' "$krew_log" >&2; fail "krew's validate-krew-manifest rejected $manifest"; }
  "$bin/krew-validate" -manifest "$manifest" -version "v$VERSION" -release-url "$release_url" \
    "${license[@]}" >/dev/null || fail "hack/krew-validate rejected $manifest"

  # The release's path, with a stand-in plugin (a script printing its version) packed as the
  # workflow packs the real one: an archive per platform, their sums, the manifest filled in by
  # the same program, both validators again, then krew itself installing each platform's
  # archive (--archive: no download) and the installed plugin answering.
  local dir="$TMP/krew" os arch a files=(kubectl-agentguard) out
  mkdir -p "$dir/stage" "$dir/assets" "$dir/out"
  printf '#!/bin/sh\necho "kubectl-agentguard %s"\n' "$VERSION" >"$dir/stage/kubectl-agentguard"
  chmod +x "$dir/stage/kubectl-agentguard"
  if [[ -f LICENSE ]]; then cp LICENSE "$dir/stage/"; files+=(LICENSE); fi
  for os in linux darwin; do
    for arch in amd64 arm64; do
      tar -C "$dir/stage" -czf "$dir/assets/kubectl-agentguard-v$VERSION-$os-$arch.tar.gz" "${files[@]}"
    done
  done
  (cd "$dir/assets" && sha256sum -- *.tar.gz) >"$dir/SHA256SUMS"
  "$bin/krew-validate" -manifest "$manifest" -version "v$VERSION" -release-url "$release_url" \
    "${license[@]}" -sums "$dir/SHA256SUMS" -fill "$dir/out/agentguard.yaml" >/dev/null \
    || fail "filling $manifest with the archives' sums"
  krew_log=$("$bin/validate-krew-manifest" -manifest "$dir/out/agentguard.yaml" -skip-install 2>&1) \
    || { printf '%s\n' "$krew_log" >&2; fail "krew's validate-krew-manifest rejected the filled-in manifest"; }
  for os in linux darwin; do
    for arch in amd64 arm64; do
      a="$dir/assets/kubectl-agentguard-v$VERSION-$os-$arch.tar.gz"
      krew_log=$(KREW_ROOT="$dir/root-$os-$arch" KREW_OS="$os" KREW_ARCH="$arch" \
        "$bin/krew" install --manifest="$dir/out/agentguard.yaml" --archive="$a" </dev/null 2>&1) \
        || { printf '%s\n' "$krew_log" >&2; fail "krew install of the filled-in manifest for $os/$arch"; }
      out=$("$dir/root-$os-$arch/bin/kubectl-agentguard")
      [[ "$out" == "kubectl-agentguard $VERSION" ]] \
        || fail "krew installed $os/$arch, but its kubectl-agentguard printed '$out'"
    done
  done
  log "ok 4/4 krew $krew validate-krew-manifest (ValidatePlugin; platforms supported, none overlapping) and hack/krew-validate (strict decode): $manifest is plugin agentguard $spec_version = v + Cargo.toml's version, linux and darwin amd64/arm64, uris $release_url/v$VERSION/kubectl-agentguard-v$VERSION-<os>-<arch>.tar.gz, files ${files[*]}, zeros for sums; filled with the sums of archives packed as the release packs them, it validates again and krew installs all 4 (sha256 checked, bin linked)"
}

if [[ -n "$sbom_dir" ]]; then
  check_sbom
  exit 0
fi
check_workflows
check_chart
check_sbom
check_krew
