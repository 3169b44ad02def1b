#!/usr/bin/env bash
# Builds the pinned control-plane tools (etcd, kube-apiserver, kube-controller-manager,
# kubectl, helm), cert-manager's controllers (hack/cert-manager-controller, for
# tests/e2e_cert_manager.rs) and Prometheus 3 with promtool (the alert rule and dashboard
# tests) from their Go modules into a versioned cache outside the
# repository, and copies third-party CRDs out of those projects' Go modules: the ones the
# chart's optional objects are checked against (prometheus-operator's ServiceMonitor and
# PrometheusRule, cert-manager's Certificate and Issuer, with the ClusterIssuer and
# CertificateRequest its controller watches) and the ones deletion-by-proxy rules act on (CSI
# VolumeSnapshot, VolumeSnapshotContent, VolumeSnapshotClass; Velero Backup and
# DeleteBackupRequest), the wgpolicyk8s.io PolicyReport CRDs agentguard writes (as Kyverno
# ships them), and published CRDs of data-holding kinds from catalog/data-kinds.yaml
# (CloudNativePG's Cluster, ACK's S3 Bucket). Reuses what is already there; rebuilds what is
# missing. Prints the bin directory last.
#
#   hack/build-tools.sh               build what is missing, print the bin directory
#   hack/build-tools.sh --print       only print the bin directory (no build)
#   hack/build-tools.sh --print-crds  only print the third-party CRD directory (no build)
#   hack/build-tools.sh --print-prometheus  only print Prometheus's bin directory (no build)
#   hack/build-tools.sh --print-catalog-crds  only print the catalog kinds' CRD directory
set -euo pipefail

# renovate: datasource=go depName=k8s.io/kubernetes
K8S_VERSION="${K8S_VERSION:-v1.36.3}"
STAGING_VERSION="v0.${K8S_VERSION#v1.}"
# renovate: datasource=go depName=go.etcd.io/etcd/server/v3
ETCD_VERSION="${ETCD_VERSION:-v3.6.8}"     # the version k8s.io/kubernetes v1.36.3 pins
# renovate: datasource=go depName=helm.sh/helm/v3
HELM_VERSION="${HELM_VERSION:-v3.19.0}"
PROMETHEUS_OPERATOR_VERSION="${PROMETHEUS_OPERATOR_VERSION:-v0.85.0}"
CERT_MANAGER_VERSION="${CERT_MANAGER_VERSION:-v1.21.2}"
SNAPSHOTTER_VERSION="${SNAPSHOTTER_VERSION:-v8.7.0}"
VELERO_VERSION="${VELERO_VERSION:-v1.18.3}"
KYVERNO_VERSION="${KYVERNO_VERSION:-v1.19.1}"
# Prometheus 3 (the major line kube-prometheus-stack ships), from its Go module: release
# 3.16.0 is module version v0.316.0. Built without the web UI's assets (not needed here).
# renovate: datasource=github-tags depName=prometheus/prometheus extractVersion=^v(?<version>.+)$
PROMETHEUS_VERSION="${PROMETHEUS_VERSION:-3.16.0}"
# Published CRDs of data-holding kinds (catalog/data-kinds.yaml names the same module@version).
CNPG_VERSION="${CNPG_VERSION:-v1.27.0}"
ACK_S3_VERSION="${ACK_S3_VERSION:-v1.14.0}"
KCC_VERSION="${KCC_VERSION:-v1.155.1}"
# The node's container runtime (containerd's LTS line; kubelet 1.36 pairs with 2.2+) and the
# OCI runtime under it (Debian 12's runc 1.1.5 cannot start containerd 2.3's containers here).
CONTAINERD_VERSION="${CONTAINERD_VERSION:-v2.3.7}"
RUNC_VERSION="${RUNC_VERSION:-v1.4.4}"

CACHE="${AGENTGUARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/agentguard}"
BIN="$CACHE/tools/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION/bin"

PROMETHEUS_BIN="$CACHE/tools/prometheus-$PROMETHEUS_VERSION/bin"
CATALOG_CRDS="$CACHE/tools/crds-catalog-cloudnative-pg-$CNPG_VERSION-ack-s3-$ACK_S3_VERSION-config-connector-$KCC_VERSION"
CRDS="$CACHE/tools/crds-prometheus-operator-$PROMETHEUS_OPERATOR_VERSION-cert-manager-$CERT_MANAGER_VERSION-snapshotter-$SNAPSHOTTER_VERSION-velero-$VELERO_VERSION-kyverno-$KYVERNO_VERSION"

if [[ "${1:-}" == "--print" ]]; then
  echo "$BIN"
  exit 0
fi
if [[ "${1:-}" == "--print-etcd-version" ]]; then
  echo "$ETCD_VERSION"
  exit 0
fi
if [[ "${1:-}" == "--print-k8s-version" ]]; then
  echo "$K8S_VERSION"
  exit 0
fi
if [[ "${1:-}" == "--print-crds" ]]; then
  echo "$CRDS"
  exit 0
fi
if [[ "${1:-}" == "--print-prometheus" ]]; then
  echo "$PROMETHEUS_BIN"
  exit 0
fi
if [[ "${1:-}" == "--print-catalog-crds" ]]; then
  echo "$CATALOG_CRDS"
  exit 0
fi

export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
mkdir -p "$BIN"
log() { printf '[build-tools %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

have() { [[ -x "$BIN/$1" ]]; }
have_prometheus() { [[ -x "$PROMETHEUS_BIN/prometheus" && -x "$PROMETHEUS_BIN/promtool" ]]; }

# Downloads module@version through the module proxy (run from a scratch directory) and prints
# the directory it is unpacked in; $2 = GoMod prints its go.mod file instead.
module_path() {
  local field="${2:-Dir}" out
  out=$(go mod download -json "$1" | sed -n "s/^[[:space:]]*\"$field\": \"\\(.*\\)\",\$/\\1/p")
  [[ -e "$out" ]] || { log "cannot download $1"; exit 1; }
  echo "$out"
}

build_kubernetes() {
  local src="$CACHE/src/kubernetes-$K8S_VERSION"
  mkdir -p "$src"
  log "preparing wrapper module for k8s.io/kubernetes $K8S_VERSION in $src"
  local gomod
  gomod=$(cd "$src" && module_path "k8s.io/kubernetes@$K8S_VERSION" GoMod)
  {
    echo "module agentguard.dev/hack/kubernetes-tools"
    echo
    echo "go $(sed -n 's/^go //p' "$gomod")"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    # k8s.io/kubernetes replaces each staging module with a path inside its own tree;
    # outside that tree each one must point at its published release instead.
    grep -oE '^[[:space:]]*k8s\.io/[a-z0-9-]+ => \./staging' "$gomod" \
      | awk -v v="$STAGING_VERSION" '{print "replace " $1 " => " $1 " " v}'
  } >"$src/go.mod"
  cat >"$src/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
GO
  log "resolving modules (go mod tidy; first run downloads ~1-2 GB)"
  (cd "$src" && go mod tidy)
  local minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  local ld="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ld+=" -X $pkg.gitTreeState=clean -X $pkg.gitCommit=0000000000000000000000000000000000000000"
    ld+=" -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet; do
    if have "$cmd"; then continue; fi
    log "building $cmd $K8S_VERSION (cold build takes several minutes)"
    (cd "$src" && go build -trimpath -ldflags "$ld" -o "$BIN/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd")
    mv "$BIN/$cmd.tmp" "$BIN/$cmd"
  done
  # The sandbox ("pause") container's program, from the same release's source: a static C
  # binary that sleeps and reaps. hack/image.sh wraps it into the pause image.
  if ! have pause; then
    local dir
    dir=$(cd "$src" && module_path "k8s.io/kubernetes@$K8S_VERSION")
    log "building pause from $K8S_VERSION build/pause/linux/pause.c"
    cc -Os -static -DVERSION="$K8S_VERSION" -o "$BIN/pause.tmp" "$dir/build/pause/linux/pause.c"
    strip "$BIN/pause.tmp" 2>/dev/null || true
    mv "$BIN/pause.tmp" "$BIN/pause"
  fi
}

# containerd 2.x, the runtime the node's kubelet talks to (containerd's support table pairs
# kubelet 1.36 with 2.2+; Debian 12's 1.6 is outside it): daemon, runc shim and ctr, built
# without cgo from the module the proxy serves.
build_containerd() {
  local src="$CACHE/src/containerd-$CONTAINERD_VERSION"
  mkdir -p "$src"
  log "building containerd $CONTAINERD_VERSION (daemon, shim, ctr)"
  cat >"$src/go.mod" <<GOMOD
module agentguard.dev/hack/containerd-tools

go 1.26

require github.com/containerd/containerd/v2 $CONTAINERD_VERSION
GOMOD
  cat >"$src/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
)
GO
  (cd "$src" && go mod tidy)
  local cmd
  for cmd in containerd containerd-shim-runc-v2 ctr; do
    have "$cmd" && continue
    (cd "$src" && CGO_ENABLED=0 go build -trimpath -tags no_btrfs \
      -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" \
      -o "$BIN/$cmd.tmp" "github.com/containerd/containerd/v2/cmd/$cmd")
    mv "$BIN/$cmd.tmp" "$BIN/$cmd"
  done
}

build_etcd() {
  local src="$CACHE/src/etcd-$ETCD_VERSION"
  mkdir -p "$src"
  log "building etcd $ETCD_VERSION"
  cat >"$src/go.mod" <<GOMOD
module agentguard.dev/hack/etcd-tools

go 1.24

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
GOMOD
  cat >"$src/tools.go" <<'GO'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3"
GO
  (cd "$src" && go mod tidy && go build -trimpath -ldflags "-s -w" -o "$BIN/etcd.tmp" go.etcd.io/etcd/server/v3)
  mv "$BIN/etcd.tmp" "$BIN/etcd"
}

# cert-manager's controller binary lives in its cmd/controller module, which the Go module proxy
# does not serve; hack/cert-manager-controller/main.go starts the same controllers from the main
# module's packages. It is built in a wrapper module pinned to CERT_MANAGER_VERSION.
build_cert_manager() {
  local src="$CACHE/src/cert-manager-$CERT_MANAGER_VERSION"
  mkdir -p "$src"
  log "preparing wrapper module for github.com/cert-manager/cert-manager $CERT_MANAGER_VERSION in $src"
  local gomod
  gomod=$(cd "$src" && module_path "github.com/cert-manager/cert-manager@$CERT_MANAGER_VERSION" GoMod)
  {
    echo "module agentguard.dev/hack/cert-manager-controller"
    echo
    echo "go $(sed -n 's/^go //p' "$gomod")"
    echo
    echo "require github.com/cert-manager/cert-manager $CERT_MANAGER_VERSION"
  } >"$src/go.mod"
  cp "$(dirname "${BASH_SOURCE[0]}")/cert-manager-controller/main.go" "$src/main.go"
  log "building cert-manager-controller $CERT_MANAGER_VERSION (cold build takes a few minutes)"
  (cd "$src" && go mod tidy && go build -trimpath \
    -ldflags "-s -w -X github.com/cert-manager/cert-manager/pkg/util.AppVersion=$CERT_MANAGER_VERSION" \
    -o "$BIN/cert-manager-controller.tmp.$$" .)
  mv "$BIN/cert-manager-controller.tmp.$$" "$BIN/cert-manager-controller"
}

# runc needs cgo (its nsenter is C) and libseccomp (Debian: gcc, pkg-config, libseccomp-dev).
build_runc() {
  local src="$CACHE/src/runc-$RUNC_VERSION"
  mkdir -p "$src"
  log "building runc $RUNC_VERSION (cgo, seccomp)"
  cat >"$src/go.mod" <<GOMOD
module agentguard.dev/hack/runc-tools

go 1.24

require github.com/opencontainers/runc $RUNC_VERSION
GOMOD
  cat >"$src/tools.go" <<'GO'
//go:build tools

package tools

import _ "github.com/opencontainers/runc"
GO
  (cd "$src" && go mod tidy)
  (cd "$src" && CGO_ENABLED=1 go build -trimpath -tags "seccomp urfave_cli_no_docs" \
    -ldflags "-s -w -X main.version=${RUNC_VERSION#v}" -o "$BIN/runc.tmp" github.com/opencontainers/runc)
  mv "$BIN/runc.tmp" "$BIN/runc"
}

build_helm() {
  log "building helm $HELM_VERSION"
  GOBIN="$BIN" go install -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
}

# Copies the CRDs, exactly as each project publishes them in its Go module, into $CRDS.
fetch_crds() {
  log "fetching third-party CRDs (prometheus-operator, cert-manager, CSI snapshots, Velero, PolicyReports)"
  local tmp="$CRDS.tmp" dir
  rm -rf "$tmp" && mkdir -p "$tmp"
  dir=$(cd "$tmp" && module_path "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION")
  for kind in servicemonitors prometheusrules; do
    cp "$dir/example/prometheus-operator-crd/monitoring.coreos.com_$kind.yaml" "$tmp/"
  done
  dir=$(cd "$tmp" && module_path "github.com/cert-manager/cert-manager@$CERT_MANAGER_VERSION")
  for kind in certificates issuers clusterissuers certificaterequests; do
    cp "$dir/deploy/crds/cert-manager.io_$kind.yaml" "$tmp/"
  done
  dir=$(cd "$tmp" && module_path "github.com/kubernetes-csi/external-snapshotter/client/v8@$SNAPSHOTTER_VERSION")
  for kind in volumesnapshots volumesnapshotcontents volumesnapshotclasses; do
    cp "$dir/config/crd/snapshot.storage.k8s.io_$kind.yaml" "$tmp/"
  done
  dir=$(cd "$tmp" && module_path "github.com/vmware-tanzu/velero@$VELERO_VERSION")
  for kind in backups deletebackuprequests; do
    cp "$dir/config/crd/v1/bases/velero.io_$kind.yaml" "$tmp/"
  done
  dir=$(cd "$tmp" && module_path "github.com/kyverno/kyverno@$KYVERNO_VERSION")
  for kind in policyreports clusterpolicyreports; do
    cp "$dir/config/crds/policyreport/wgpolicyk8s.io_$kind.yaml" "$tmp/"
  done
  chmod 0644 "$tmp"/*.yaml
  rm -rf "$CRDS" && mv "$tmp" "$CRDS"
}

# Compiling Kubernetes fills a Go build cache of 4-5 GB that is never needed again once the
# binaries exist; keep it in a scratch directory and drop it after, so a fresh machine (and CI)
# does not carry it. AGENTGUARD_KEEP_GOCACHE=1 keeps Go's usual cache instead.
NODE_TOOLS=(kube-scheduler kubelet pause containerd containerd-shim-runc-v2 ctr runc)
have_all() { local t; for t in "$@"; do have "$t" || return 1; done; }
if ! { have_all etcd kube-apiserver kube-controller-manager kubectl helm cert-manager-controller \
  "${NODE_TOOLS[@]}" && have_prometheus; } \
  && [[ -z "${AGENTGUARD_KEEP_GOCACHE:-}" ]]; then
  GOCACHE=$(mktemp -d "${TMPDIR:-/tmp}/agentguard-gocache.XXXXXX")
  export GOCACHE
  trap 'rm -rf "$GOCACHE"' EXIT
fi
have etcd || build_etcd
have_all kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet pause || build_kubernetes
have_all containerd containerd-shim-runc-v2 ctr || build_containerd
have runc || build_runc
have helm || build_helm
have cert-manager-controller || build_cert_manager
# Copies the published CRDs of the catalog kinds the end-to-end tests install, exactly as
# each project ships them in its Go module, into $CATALOG_CRDS.
build_prometheus() {
  local major=${PROMETHEUS_VERSION%%.*} rest=${PROMETHEUS_VERSION#*.}
  local minor=${rest%%.*} patch=${rest#*.}
  local module="v0.$((major * 100 + minor)).$patch" cmd
  mkdir -p "$PROMETHEUS_BIN"
  for cmd in prometheus promtool; do
    log "building $cmd $PROMETHEUS_VERSION (module github.com/prometheus/prometheus $module)"
    GOBIN="$PROMETHEUS_BIN" go install -trimpath -ldflags "-s -w \
      -X github.com/prometheus/common/version.Version=$PROMETHEUS_VERSION \
      -X github.com/prometheus/common/version.Branch=release-$major.$minor" \
      "github.com/prometheus/prometheus/cmd/$cmd@$module"
  done
}
have_prometheus || build_prometheus

fetch_catalog_crds() {
  log "fetching published CRDs of data-holding kinds (CloudNativePG, ACK S3, Config Connector)"
  local tmp="$CATALOG_CRDS.tmp" dir kind
  rm -rf "$tmp" && mkdir -p "$tmp"
  dir=$(cd "$tmp" && module_path "github.com/cloudnative-pg/cloudnative-pg@$CNPG_VERSION")
  for kind in clusters backups scheduledbackups databases; do
    cp "$dir/config/crd/bases/postgresql.cnpg.io_$kind.yaml" "$tmp/"
  done
  dir=$(cd "$tmp" && module_path "github.com/aws-controllers-k8s/s3-controller@$ACK_S3_VERSION")
  cp "$dir/config/crd/bases/s3.services.k8s.aws_buckets.yaml" "$tmp/"
  # Config Connector's module is large (41 MB); its CRDs are one file per kind.
  dir=$(cd "$tmp" && module_path "github.com/GoogleCloudPlatform/k8s-config-connector@$KCC_VERSION")
  for kind in sqlinstances.sql sqldatabases.sql spannerinstances.spanner spannerdatabases.spanner \
    bigquerydatasets.bigquery storagebuckets.storage alloydbclusters.alloydb \
    firestoredatabases.firestore bigtabletables.bigtable; do
    cp "$dir/config/crds/resources/apiextensions.k8s.io_v1_customresourcedefinition_$kind.cnrm.cloud.google.com.yaml" "$tmp/"
  done
  chmod 0644 "$tmp"/*.yaml
  rm -rf "$CATALOG_CRDS" && mv "$tmp" "$CATALOG_CRDS"
}

# The last files each version of fetch_crds added: a cache filled before them is refetched.
{ [[ -f "$CRDS/wgpolicyk8s.io_clusterpolicyreports.yaml" ]] \
  && [[ -f "$CRDS/cert-manager.io_certificaterequests.yaml" ]]; } || fetch_crds
[[ -d "$CATALOG_CRDS" ]] || fetch_catalog_crds
log "tools ready in $BIN"
echo "$BIN"
