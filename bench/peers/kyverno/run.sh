#!/usr/bin/env bash
# Runs Kyverno's admission controller (built by bench/peers/kyverno/build.sh) OUT OF CLUSTER
# against the control plane of $KUBECONFIG (an admin kubeconfig), as bench/run.sh's `kyverno`
# configuration.
#
#   run.sh prepare CERT_DIR     CRDs (from the kyverno Go module's config/crds), namespace
#                               `kyverno`, the `kyverno` and `kyverno-metrics` ConfigMaps, and the
#                               CA and serving-certificate Secrets from CERT_DIR (ca.crt, ca.key,
#                               tls.crt, tls.key; the serving certificate must name IP 127.0.0.1)
#   run.sh exec PORT METRICS_PORT POD_NAME
#                               replaces itself with the kyverno process (so the caller's $! is
#                               kyverno's pid), serving on 127.0.0.1:PORT
#   run.sh policy               applies the ClusterPolicy (policy.yaml)
#   run.sh teardown             after the process is stopped: deletes every webhook
#                               configuration Kyverno wrote, the policy, and its leases
#
# How it is wired (from Kyverno's cmd/kyverno and pkg/ sources):
# - --serverIP=127.0.0.1:PORT makes the webhook configurations Kyverno writes itself use
#   clientConfig.url https://127.0.0.1:PORT/<path> instead of a Service ("debug" mode, which also
#   skips its Deployment checks);
# - --disableCertManagerController=true with --caSecretName/--tlsSecretName: Kyverno serves the
#   certificate of the Secret and puts the CA Secret's tls.crt in caBundle (the same certificate
#   and CA as every other webhook of the benchmark), instead of generating its own;
# - the `kyverno` ConfigMap's `webhooks` key sets the namespaceSelector of the resource webhooks:
#   namespace `bench` only, like the other webhooks;
# - --admissionReports=false, as agentguard runs with --policy-reports=false; events as in
#   Kyverno's Helm chart (--omitEvents=PolicyApplied,PolicySkipped); leader election stays on
#   (one replica: it wins at once); the background, reports and cleanup controllers are separate
#   binaries and are not run.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KYVERNO_VERSION="${KYVERNO_VERSION:-v1.19.1}"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/agentguard/bench"
BIN="$CACHE/bin/kyverno-$KYVERNO_VERSION"
NS=kyverno
CA_SECRET=kyverno-svc.kyverno.svc.kyverno-tls-ca
TLS_SECRET=kyverno-svc.kyverno.svc.kyverno-tls-pair
export GOTOOLCHAIN=local GOFLAGS=-mod=mod

log() { printf '[kyverno %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
: "${KUBECONFIG:?set KUBECONFIG to an admin kubeconfig}"

module_dir() {
  mkdir -p "$CACHE/src/kyverno-$KYVERNO_VERSION"
  (cd "$CACHE/src/kyverno-$KYVERNO_VERSION" && go mod download -json "github.com/kyverno/kyverno@$KYVERNO_VERSION") \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])'
}

prepare() { # cert-dir
  local certs="$1" dir
  dir="$(module_dir)"
  [[ -d "$dir/config/crds" ]] || { log "no config/crds in $dir"; exit 1; }
  local crds=()
  for group in kyverno policies.kyverno.io reports policyreport; do
    crds+=(-f "$dir/config/crds/$group")
  done
  kubectl apply --server-side --force-conflicts "${crds[@]}" >/dev/null
  kubectl wait --for=condition=Established --timeout=120s crd \
    clusterpolicies.kyverno.io policies.kyverno.io updaterequests.kyverno.io \
    policyexceptions.kyverno.io globalcontextentries.kyverno.io \
    validatingpolicies.policies.kyverno.io policyexceptions.policies.kyverno.io \
    ephemeralreports.reports.kyverno.io policyreports.wgpolicyk8s.io >/dev/null
  kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: ConfigMap
metadata:
  name: kyverno
  namespace: $NS
data:
  defaultRegistry: docker.io
  enableDefaultRegistryMutation: "true"
  excludeGroups: system:nodes
  generateSuccessEvents: "false"
  resourceFilters: '[Event,*,*][*/*,kube-system,*][*/*,kube-public,*][*/*,kube-node-lease,*][Node,*,*][APIService,*,*][TokenReview,*,*][SubjectAccessReview,*,*][SelfSubjectAccessReview,*,*][Binding,*,*][Pod/binding,*,*][ReplicaSet,*,*][EphemeralReport,*,*][ClusterEphemeralReport,*,*]'
  updateRequestThreshold: "1000"
  webhooks: '{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"bench"}}}'
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: kyverno-metrics
  namespace: $NS
data:
  namespaces: '{"include":[],"exclude":[]}'
EOF
  kubectl -n "$NS" create secret tls "$CA_SECRET" --cert "$certs/ca.crt" --key "$certs/ca.key" \
    --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  kubectl -n "$NS" create secret tls "$TLS_SECRET" --cert "$certs/tls.crt" --key "$certs/tls.key" \
    --dry-run=client -o yaml | kubectl apply -f - >/dev/null
}

run() { # port metrics-port pod-name
  [[ -x "$BIN" ]] || { log "no kyverno binary at $BIN: run bench/peers/kyverno/build.sh"; exit 1; }
  export KYVERNO_NAMESPACE="$NS" KYVERNO_SERVICEACCOUNT_NAME=kyverno-admission-controller \
    KYVERNO_ROLE_NAME=kyverno:admission-controller KYVERNO_DEPLOYMENT=kyverno-admission-controller \
    KYVERNO_SVC=kyverno-svc KYVERNO_POD_NAME="$3" INIT_CONFIG=kyverno METRICS_CONFIG=kyverno-metrics
  exec "$BIN" --kubeconfig="$KUBECONFIG" \
    --serverIP="127.0.0.1:$1" --servicePort="$1" \
    --webhookServerHost=127.0.0.1 --webhookServerPort="$1" \
    --caSecretName="$CA_SECRET" --tlsSecretName="$TLS_SECRET" --disableCertManagerController=true \
    --admissionReports=false --omitEvents=PolicyApplied,PolicySkipped \
    --webhookTimeout=10 \
    --metricsHost=127.0.0.1 --metricsPort="$2" --controllerRuntimeMetricsAddress=0 \
    --loggingFormat=text --disableLogColor
}

teardown() {
  # Kyverno does not remove its webhook configurations when it stops out of cluster (and
  # re-creates them while it runs): delete them once the process is gone.
  kubectl delete validatingwebhookconfigurations,mutatingwebhookconfigurations \
    -l webhook.kyverno.io/managed-by=kyverno --ignore-not-found >/dev/null
  local left
  left=$(kubectl get validatingwebhookconfigurations,mutatingwebhookconfigurations -o name | grep kyverno || true)
  [[ -z "$left" ]] || kubectl delete $left --ignore-not-found >/dev/null
  kubectl delete clusterpolicy bench-protected-claims --ignore-not-found >/dev/null
  kubectl -n "$NS" delete lease --all --ignore-not-found >/dev/null
}

case "${1:-}" in
  prepare) prepare "$2" ;;
  exec) run "$2" "$3" "$4" ;;
  policy) kubectl apply -f "$HERE/policy.yaml" >/dev/null ;;
  teardown) teardown ;;
  module-dir) module_dir ;;
  *) sed -n '2,14p' "$0" >&2; exit 2 ;;
esac
