#!/usr/bin/env bash
# The main job, end to end on this machine: a local control plane, agentguard registered as a
# validating webhook, an agent's deletion of a protected claim denied with our message, the
# metric that recorded it, then a human deleting the same claim.
#
# Leaves the control plane and agentguard running to explore; stop both with
#   hack/cluster.sh down
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

NS=demo
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

step "1. Build the control-plane tools and agentguard (first run: several minutes)"
hack/build-tools.sh >/dev/null
cargo build --quiet --bin agentguard
eval "$(hack/cluster.sh up)"
STATE="$ROOT/.cluster"
K=(kubectl --kubeconfig "$KUBECONFIG")

step "2. Start agentguard: every ServiceAccount in namespace '$NS' is an agent"
if [[ -f "$STATE/run/agentguard.pid" ]] && kill -0 "$(cat "$STATE/run/agentguard.pid")" 2>/dev/null; then
  kill "$(cat "$STATE/run/agentguard.pid")"
fi
target/debug/agentguard certs --out-dir "$STATE/agentguard" --host 127.0.0.1 >/dev/null
read -r WEBHOOK_PORT METRICS_PORT < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')
setsid target/debug/agentguard run \
  --webhook-addr "127.0.0.1:$WEBHOOK_PORT" --metrics-addr "127.0.0.1:$METRICS_PORT" \
  --tls-cert-file "$STATE/agentguard/tls.crt" --tls-key-file "$STATE/agentguard/tls.key" \
  --agent-service-accounts "$NS/*" >"$STATE/logs/agentguard.log" 2>&1 </dev/null &
echo $! >"$STATE/run/agentguard.pid"
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$METRICS_PORT/readyz" >/dev/null && break; sleep 0.2; done
curl -sf "http://127.0.0.1:$METRICS_PORT/readyz" >/dev/null || { tail "$STATE/logs/agentguard.log"; exit 1; }
echo "agentguard is ready: webhook https://127.0.0.1:$WEBHOOK_PORT/validate, metrics http://127.0.0.1:$METRICS_PORT/metrics"

"${K[@]}" apply -f - >/dev/null <<YAML
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata:
  name: agentguard
webhooks:
  - name: validate.agentguard.dev
    admissionReviewVersions: [v1]
    sideEffects: None
    failurePolicy: Fail
    timeoutSeconds: 5
    clientConfig:
      url: https://127.0.0.1:$WEBHOOK_PORT/validate
      caBundle: $(base64 -w0 "$STATE/agentguard/ca.crt")
    namespaceSelector:
      matchExpressions:
        - {key: kubernetes.io/metadata.name, operator: NotIn, values: [kube-system]}
    rules:
      - operations: [DELETE]
        apiGroups: [""]
        apiVersions: [v1]
        resources: [persistentvolumeclaims, persistentvolumes]
YAML
echo "registered ValidatingWebhookConfiguration agentguard (failurePolicy: Fail)"

step "3. A namespace, an agent ServiceAccount with edit rights, and a protected claim"
"${K[@]}" delete namespace "$NS" --ignore-not-found >/dev/null
run "${K[@]}" create namespace "$NS"
run "${K[@]}" -n "$NS" create serviceaccount cursor-agent
run "${K[@]}" -n "$NS" create rolebinding cursor-agent-edit --clusterrole=edit --serviceaccount="$NS:cursor-agent"
"${K[@]}" -n "$NS" apply -f - <<'YAML'
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: orders-db
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 10Gi}}
YAML
run "${K[@]}" -n "$NS" annotate pvc orders-db agentguard.dev/protected=true

# The agent gets its own short-lived token (TokenRequest), not the human's credentials.
AGENT_KUBECONFIG="$STATE/agent.kubeconfig"
TOKEN=$("${K[@]}" -n "$NS" create token cursor-agent --duration=1h)
cat >"$AGENT_KUBECONFIG" <<YAML
apiVersion: v1
kind: Config
clusters:
  - name: local
    cluster:
      server: $("${K[@]}" config view --raw -o jsonpath='{.clusters[0].cluster.server}')
      certificate-authority-data: $("${K[@]}" config view --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')
users: [{name: cursor-agent, user: {token: $TOKEN}}]
contexts: [{name: agent, context: {cluster: local, user: cursor-agent, namespace: $NS}}]
current-context: agent
YAML
chmod 600 "$AGENT_KUBECONFIG"

step "4. The agent tries to delete the protected claim"
printf '$ kubectl auth whoami   # as the agent\n'
kubectl --kubeconfig "$AGENT_KUBECONFIG" auth whoami
printf '$ kubectl delete pvc orders-db   # as the agent\n'
if out=$(kubectl --kubeconfig "$AGENT_KUBECONFIG" delete pvc orders-db 2>&1); then
  echo "$out"; echo "UNEXPECTED: the agent deleted a protected claim" >&2; exit 1
fi
echo "$out"
grep -q "agentguard: DENIED delete of PersistentVolumeClaim $NS/orders-db" <<<"$out"
run "${K[@]}" -n "$NS" get pvc orders-db

step "5. The blocked attempt, as Prometheus sees it"
printf '$ curl -s http://127.0.0.1:%s/metrics | grep agentguard_deletions_blocked_total\n' "$METRICS_PORT"
curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | grep '^agentguard_deletions_blocked_total' \
  || { echo "UNEXPECTED: no blocked deletion recorded" >&2; exit 1; }

step "6. A human (the cluster admin) deletes the same claim"
run "${K[@]}" -n "$NS" delete pvc orders-db --wait=true --timeout=60s

step "Done"
cat <<DONE
agentguard is still running (log: .cluster/logs/agentguard.log), with the control plane.
Explore:   eval "\$(hack/cluster.sh env)"; kubectl --kubeconfig $AGENT_KUBECONFIG get pvc
Stop all:  hack/cluster.sh down
DONE
