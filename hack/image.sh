#!/usr/bin/env bash
# Builds the images the local node runs, without Docker or a registry, as OCI archives from
# local files (hack/oci-image.py), and optionally imports them into a containerd.
#
#   hack/image.sh agentguard [--tag T] [--import SOCKET]
#                                                the Dockerfile's image: the static (musl)
#                                                release binary as /agentguard, user 65532,
#                                                no shell; tagged as the chart's image
#   hack/image.sh pause [--import SOCKET]        the sandbox image, from Kubernetes' pause.c
#   hack/image.sh etcd [--import SOCKET]         a database for the tests: the pinned etcd
#                                                (static), user 65532
#   hack/image.sh kubectl [--import SOCKET]      an agent's image: the pinned kubectl (static)
#                                                and kubectl-agentguard, user 65532
#
# Prints the archive's path. Archives go to target/images (git-ignored).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$("$ROOT/hack/build-tools.sh" --print)"
OUT="${AGENTGUARD_IMAGE_DIR:-$ROOT/target/images}"
mkdir -p "$OUT"

log() { printf '[image %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

version() { sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1; }
# The image the chart names by default: image.registry/image.repository.
chart_value() { sed -n "s/^  $1: *//p" "$ROOT/charts/agentguard/values.yaml" | head -1; }
chart_repository() { echo "$(chart_value registry)/$(chart_value repository)"; }

# The files of distroless/static's nonroot variant that a static binary relies on: the
# nonroot user and group, CA certificates, and a writable /tmp.
BASE_FILES=(
  --text "/etc/passwd:0644:root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
"
  --text "/etc/group:0644:root:x:0:
nobody:x:65534:
nonroot:x:65532:
"
  --dir "/tmp:1777"
  --dir "/home/nonroot:0700:65532:65532"
)
if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
  BASE_FILES+=(--file "/etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:0644")
fi

build_agentguard() {
  local target=x86_64-unknown-linux-musl
  log "building agentguard (release, $target)"
  (cd "$ROOT" && cargo build --release --locked --target "$target" --bin agentguard >&2)
  local tag archive
  tag="$(chart_repository):${TAG:-$(version)}"
  archive="$OUT/agentguard-${TAG:-$(version)}.oci.tar"
  python3 "$ROOT/hack/oci-image.py" --name "$tag" --out "$archive" \
    --entrypoint '["/agentguard"]' --cmd '["run"]' --user 65532:65532 \
    --expose 8443 --expose 8080 \
    --label "org.opencontainers.image.title=agentguard" \
    --label "org.opencontainers.image.version=$(version)" \
    "${BASE_FILES[@]}" \
    --file "$ROOT/target/$target/release/agentguard:/agentguard:0755" >/dev/null
  echo "$archive $tag"
}

build_pause() {
  [[ -x "$BIN/pause" ]] || die "no pause binary in $BIN: run hack/build-tools.sh"
  local archive="$OUT/pause.oci.tar"
  python3 "$ROOT/hack/oci-image.py" --name "registry.k8s.io/pause:3.10.1" --out "$archive" \
    --entrypoint '["/pause"]' --user 65535:65535 \
    --file "$BIN/pause:/pause:0755" >/dev/null
  echo "$archive registry.k8s.io/pause:3.10.1"
}

# The image an agent Pod runs in the tests: kubectl and the plugin, as an agent's tool would.
KUBECTL_IMAGE="agentguard.dev/e2e/kubectl:$("$ROOT/hack/build-tools.sh" --print-k8s-version)"
build_kubectl() {
  local target=x86_64-unknown-linux-musl
  log "building kubectl-agentguard (release, $target)"
  (cd "$ROOT" && cargo build --release --locked --target "$target" --bin kubectl-agentguard >&2)
  local archive="$OUT/kubectl.oci.tar"
  python3 "$ROOT/hack/oci-image.py" --name "$KUBECTL_IMAGE" --out "$archive" \
    --entrypoint '["/usr/local/bin/kubectl"]' --user 65532:65532 \
    --env "PATH=/usr/local/bin" --env "HOME=/home/nonroot" \
    "${BASE_FILES[@]}" \
    --file "$BIN/kubectl:/usr/local/bin/kubectl:0755" \
    --file "$ROOT/target/$target/release/kubectl-agentguard:/usr/local/bin/kubectl-agentguard:0755" >/dev/null
  echo "$archive $KUBECTL_IMAGE"
}

ETCD_IMAGE="agentguard.dev/e2e/etcd:$("$ROOT/hack/build-tools.sh" --print-etcd-version)"
build_etcd() {
  local archive="$OUT/etcd.oci.tar"
  python3 "$ROOT/hack/oci-image.py" --name "$ETCD_IMAGE" --out "$archive" \
    --entrypoint '["/usr/local/bin/etcd"]' --user 65532:65532 --expose 2379 \
    "${BASE_FILES[@]}" --dir "/var/lib/etcd:0700:65532:65532" \
    --file "$BIN/etcd:/usr/local/bin/etcd:0755" >/dev/null
  echo "$archive $ETCD_IMAGE"
}

what="${1:-}"; shift || true
socket=""
TAG=""
while (($#)); do
  case "$1" in
    --tag) TAG="${2:?--tag needs a tag}"; shift 2 ;;
    --import) socket="${2:?--import needs the containerd socket}"; shift 2 ;;
    *) die "unknown option $1" ;;
  esac
done
case "$what" in
  agentguard) read -r archive tag < <(build_agentguard) ;;
  pause) read -r archive tag < <(build_pause) ;;
  kubectl) read -r archive tag < <(build_kubectl) ;;
  etcd) read -r archive tag < <(build_etcd) ;;
  *) echo "usage: $0 agentguard|pause|kubectl|etcd [--import SOCKET]" >&2; exit 2 ;;
esac
if [[ -n "$socket" ]]; then
  "$BIN/ctr" --address "$socket" -n k8s.io images import --no-unpack=false "$archive" >&2 \
    || die "importing $archive into $socket failed"
  log "imported $tag"
fi
echo "$archive"
