#!/usr/bin/env bash
# A local Kubernetes control plane on loopback, built from pinned Go modules (hack/build-tools.sh):
# etcd, kube-apiserver (RBAC, service-account token signing, audit log) and
# kube-controller-manager (each controller with its own ServiceAccount credentials).
# With AGENTGUARD_NODE=1 also a real node (hack/node.sh): containerd, CNI bridge, kube-scheduler
# and kubelet, so Pods run; it needs root. Without it, Pods never run.
#
#   hack/cluster.sh up      build tools if missing, start everything, wait until ready
#   hack/cluster.sh down    stop what `up` started (by recorded pids) and remove its state
#   hack/cluster.sh restart etcd|kube-apiserver   stop one component and start it again
#                           (AGENTGUARD_WHILE_STOPPED=CMD runs CMD while it is stopped)
#   hack/cluster.sh env     print the export lines for KUBECONFIG and PATH
#   hack/cluster.sh status  exit 0 when the control plane answers, 1 otherwise
#
# State lives in .cluster/ (git-ignored), or $AGENTGUARD_CLUSTER_DIR.
# Ports are picked free unless AGENTGUARD_{ETCD,ETCD_PEER,APISERVER,KCM}_PORT are set.
# AGENTGUARD_STATIC_ADMISSION=DIR (opt-in) starts kube-apiserver with the feature gate
# ManifestBasedAdmissionControlConfig and DIR/admission-configuration.yaml, as written by
# `agentguard manifests static --out DIR`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${AGENTGUARD_CLUSTER_DIR:-$ROOT/.cluster}"
BIN="$("$ROOT/hack/build-tools.sh" --print)"
KUBECONFIG_FILE="$STATE/kubeconfig"

log() { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

print_env() {
  echo "export KUBECONFIG=$KUBECONFIG_FILE"
  echo "export PATH=$BIN:\$PATH"
}

kubectl_admin() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_FILE" "$@"; }

# shellcheck source=hack/node.sh
source "$ROOT/hack/node.sh"

is_up() {
  [[ -f "$KUBECONFIG_FILE" ]] || return 1
  local name
  local names=(etcd kube-apiserver kube-controller-manager)
  node_enabled && names+=(containerd kube-scheduler kubelet api-forwarder)
  for name in "${names[@]}"; do
    [[ -f "$STATE/run/$name.pid" ]] && kill -0 "$(cat "$STATE/run/$name.pid")" 2>/dev/null || return 1
  done
  kubectl_admin get --raw /readyz >/dev/null 2>&1
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Chooses a port: the one asked for (failing clearly when it is taken) or a free one.
choose_port() {
  local wanted="$1" what="$2"
  if [[ -n "$wanted" ]]; then
    if python3 -c "import socket,sys; s=socket.socket(); s.bind(('127.0.0.1',$wanted))" 2>/dev/null; then
      echo "$wanted"
    else
      die "port $wanted for $what is taken (pick another with the matching AGENTGUARD_*_PORT variable)"
    fi
  else
    free_port
  fi
}

wait_for() {
  local what="$1" seconds="$2" logfile="$3"; shift 3
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      log "$what did not become ready within ${seconds}s; last lines of $logfile:"
      tail -n 30 "$logfile" >&2 || true
      return 1
    fi
    sleep 0.5
  done
  log "$what is ready"
}

start() {
  local name="$1"; shift
  setsid "$@" >"$STATE/logs/$name.log" 2>&1 < /dev/null &
  echo $! >"$STATE/run/$name.pid"
}

gen_pki() {
  local pki="$STATE/pki"
  mkdir -p "$pki"
  local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
  openssl req -x509 "${ec[@]}" -keyout "$pki/ca.key" -out "$pki/ca.crt" -days 30 \
    -subj "/CN=agentguard-local-ca" 2>/dev/null
  sign() { # name subject extensions
    openssl req -new "${ec[@]}" -keyout "$pki/$1.key" -out "$pki/$1.csr" -subj "$2" 2>/dev/null
    openssl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
      -days 30 -out "$pki/$1.crt" -extfile <(printf '%s\n' "$3") 2>/dev/null
    rm -f "$pki/$1.csr"
  }
  sign apiserver "/CN=kube-apiserver" \
    "subjectAltName=IP:127.0.0.1,IP:$KUBERNETES_SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc
extendedKeyUsage=serverAuth
keyUsage=digitalSignature"
  sign admin "/O=system:masters/CN=agentguard-admin" \
    "extendedKeyUsage=clientAuth
keyUsage=digitalSignature"
  sign controller-manager "/CN=system:kube-controller-manager" \
    "extendedKeyUsage=clientAuth
keyUsage=digitalSignature"
  sign scheduler "/CN=system:kube-scheduler" \
    "extendedKeyUsage=clientAuth
keyUsage=digitalSignature"
  sign kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" \
    "extendedKeyUsage=clientAuth
keyUsage=digitalSignature"
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
}

write_kubeconfig() { # file user
  local file="$1" user="$2" k=("$BIN/kubectl" --kubeconfig "$1")
  "${k[@]}" config set-cluster local --server "https://127.0.0.1:$API_PORT" \
    --certificate-authority "$STATE/pki/ca.crt" --embed-certs >/dev/null
  "${k[@]}" config set-credentials "$user" --client-certificate "$STATE/pki/$user.crt" \
    --client-key "$STATE/pki/$user.key" --embed-certs >/dev/null
  "${k[@]}" config set-context local --cluster local --user "$user" >/dev/null
  "${k[@]}" config use-context local >/dev/null
  chmod 600 "$file"
}

start_etcd() {
  log "starting etcd on 127.0.0.1:$ETCD_PORT"
  start etcd "$BIN/etcd" --name local --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "local=http://127.0.0.1:$ETCD_PEER_PORT" --unsafe-no-fsync --log-level warn
  wait_for etcd 60 "$STATE/logs/etcd.log" curl -sf "http://127.0.0.1:$ETCD_PORT/health"
}

start_apiserver() {
  local static=()
  # Opt-in static admission (tests/e2e_static.rs): the API server loads agentguard's webhook
  # configurations from the files `agentguard manifests static --out DIR` wrote. Read at every
  # start, so `restart kube-apiserver` without the variable takes the static ones away.
  if [[ -n "${AGENTGUARD_STATIC_ADMISSION:-}" ]]; then
    [[ -f "$AGENTGUARD_STATIC_ADMISSION/admission-configuration.yaml" ]] \
      || die "no admission-configuration.yaml in AGENTGUARD_STATIC_ADMISSION=$AGENTGUARD_STATIC_ADMISSION (agentguard manifests static --out DIR writes it)"
    log "static admission configuration from $AGENTGUARD_STATIC_ADMISSION"
    static=(--feature-gates ManifestBasedAdmissionControlConfig=true
      --admission-control-config-file "$AGENTGUARD_STATIC_ADMISSION/admission-configuration.yaml")
  fi
  # With a node: the Node authorizer and NodeRestriction for the kubelet, webhook Services
  # called through their EndpointSlices (no kube-proxy), and kubelet access for logs and exec.
  local node=(--authorization-mode RBAC)
  node_load
  if [[ "${NODE_ENABLED:-0}" == 1 ]]; then
    node=(--authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction
      --enable-aggregator-routing=true --kubelet-preferred-address-types InternalIP
      --kubelet-client-certificate "$STATE/pki/admin.crt" --kubelet-client-key "$STATE/pki/admin.key")
  fi
  log "starting kube-apiserver on https://127.0.0.1:$API_PORT"
  start kube-apiserver "$BIN/kube-apiserver" "${static[@]}" "${node[@]}" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$API_PORT" \
    --cert-dir "$STATE/pki/apiserver-generated" \
    --tls-cert-file "$STATE/pki/apiserver.crt" --tls-private-key-file "$STATE/pki/apiserver.key" \
    --client-ca-file "$STATE/pki/ca.crt" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$STATE/pki/sa.pub" \
    --service-account-signing-key-file "$STATE/pki/sa.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --endpoint-reconciler-type none \
    --audit-policy-file "$STATE/audit-policy.yaml" --audit-log-path "$STATE/logs/audit.log" \
    --profiling=false
}

# Stops one component and starts it again with the same ports and data (fault tests).
restart() {
  local name="$1"
  is_up || die "the control plane is not running: hack/cluster.sh up"
  # shellcheck disable=SC1091
  source "$STATE/ports.env"
  stop_pid "$STATE/run/$name.pid"
  # Fault tests: what happens while it is down (e.g. an edit straight into etcd, which no
  # watch sees).
  if [[ -n "${AGENTGUARD_WHILE_STOPPED:-}" ]]; then
    bash -c "$AGENTGUARD_WHILE_STOPPED" || log "AGENTGUARD_WHILE_STOPPED failed; starting $name anyway"
  fi
  case "$name" in
    etcd) start_etcd ;;
    kube-apiserver)
      start_apiserver
      wait_for kube-apiserver 120 "$STATE/logs/kube-apiserver.log" kubectl_admin get --raw /readyz ;;
    *) die "restart etcd|kube-apiserver, not $name" ;;
  esac
}

up() {
  if is_up; then
    log "already running"
    print_env
    return 0
  fi
  [[ -d "$STATE" ]] && { log "removing stale state in $STATE"; down_quiet; }
  "$ROOT/hack/build-tools.sh" >/dev/null
  command -v openssl >/dev/null || die "openssl is required (apt-get install openssl)"
  command -v python3 >/dev/null || die "python3 is required"
  mkdir -p "$STATE"/{logs,run,etcd}

  ETCD_PORT=$(choose_port "${AGENTGUARD_ETCD_PORT:-}" etcd)
  ETCD_PEER_PORT=$(choose_port "${AGENTGUARD_ETCD_PEER_PORT:-}" "etcd peer")
  API_PORT=$(choose_port "${AGENTGUARD_APISERVER_PORT:-}" kube-apiserver)
  KCM_PORT=$(choose_port "${AGENTGUARD_KCM_PORT:-}" kube-controller-manager)
  printf 'ETCD_PORT=%s\nETCD_PEER_PORT=%s\nAPI_PORT=%s\nKCM_PORT=%s\n' \
    "$ETCD_PORT" "$ETCD_PEER_PORT" "$API_PORT" "$KCM_PORT" >"$STATE/ports.env"

  node_plan
  node_load
  [[ "$NODE_ENABLED" == 1 ]] && node_check
  log "generating certificates"
  gen_pki

  start_etcd

  cat >"$STATE/audit-policy.yaml" <<'YAML'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    verbs: [delete, deletecollection, update, patch, create]
  - level: None
YAML

  start_apiserver
  write_kubeconfig "$KUBECONFIG_FILE" admin
  wait_for kube-apiserver 120 "$STATE/logs/kube-apiserver.log" kubectl_admin get --raw /readyz

  log "starting kube-controller-manager"
  local controllers=clusterrole-aggregation-controller,namespace-controller,garbage-collector-controller,persistentvolumeclaim-protection-controller,persistentvolume-protection-controller,persistentvolume-binder-controller,serviceaccount-controller,serviceaccount-token-controller,root-ca-certificate-publisher-controller,statefulset-controller,deployment-controller,replicaset-controller,ephemeral-volume-controller
  # A node needs its lifecycle (or the not-ready taint stays), EndpointSlices (webhook Services),
  # PodDisruptionBudgets, Pod garbage collection, and Jobs (the chart's CRD hook).
  [[ "$NODE_ENABLED" == 1 ]] && controllers+=,node-lifecycle-controller,taint-eviction-controller,endpointslice-controller,disruption-controller,pod-garbage-collector-controller,job-controller
  write_kubeconfig "$STATE/controller-manager.kubeconfig" controller-manager
  start kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig "$STATE/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$STATE/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$STATE/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$KCM_PORT" \
    --use-service-account-credentials \
    --service-account-private-key-file "$STATE/pki/sa.key" \
    --root-ca-file "$STATE/pki/ca.crt" \
    --leader-elect=false \
    --controllers "$controllers"
  wait_for kube-controller-manager 120 "$STATE/logs/kube-controller-manager.log" \
    curl -sfk "https://127.0.0.1:$KCM_PORT/healthz"
  # The service-account controller creating "default" proves controllers act with their credentials.
  wait_for "service-account controller" 120 "$STATE/logs/kube-controller-manager.log" \
    kubectl_admin -n default get serviceaccount default

  [[ "$NODE_ENABLED" == 1 ]] && node_up
  log "control plane is up: $("$BIN/kubectl" version --kubeconfig "$KUBECONFIG_FILE" 2>/dev/null | tail -1)"
  print_env
}

down_quiet() {
  local pidfile pid name
  # The node first (its Pods, mounts, network and cgroups), then whatever else was started
  # beside the control plane (hack/demo.sh's agentguard), then the control plane in reverse
  # start order.
  node_down
  for pidfile in "$STATE"/run/*.pid; do
    name=$(basename "$pidfile" .pid)
    case "$name" in kube-controller-manager|kube-apiserver|etcd) continue ;; esac
    stop_pid "$pidfile"
  done
  for name in kube-controller-manager kube-apiserver etcd; do
    stop_pid "$STATE/run/$name.pid"
  done
  # Anything still mounted under the state (a node whose node.env was already removed by a
  # half-finished cleanup) would make rm fail: unmount it, deepest first.
  local m
  if command -v findmnt >/dev/null; then
    while read -r m; do
      umount -l "$m" 2>/dev/null || true
    done < <(findmnt -rn -o TARGET | grep -E "^$STATE(/|$)" | sort -r)
  fi
  rm -rf "$STATE"
}

stop_pid() {
  local pidfile="$1" pid
  [[ -f "$pidfile" ]] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
  fi
}

case "${1:-}" in
  up) up ;;
  down) down_quiet; log "stopped and removed $STATE" ;;
  env) print_env ;;
  status) is_up ;;
  restart) restart "${2:-}" ;;
  *) echo "usage: $0 up|down|env|status|restart etcd|kube-apiserver" >&2; exit 2 ;;
esac
