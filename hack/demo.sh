#!/usr/bin/env bash
# The main job, end to end on this machine: a local control plane, agentguard registered as a
# validating webhook, an agent's deletion of a protected claim denied with our message, the
# metric and policy status that recorded it, then a human's time-limited approval that lets
# the agent delete that one claim.
#
# Leaves the control plane and agentguard running to explore; stop both with
#   hack/cluster.sh down
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# With a real node (root): agentguard installed with helm, the agent in a Pod.
[[ "${AGENTGUARD_NODE:-0}" == 1 ]] && exec hack/demo-node.sh

NS=demo
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

step "1. Build the control-plane tools and agentguard (first run: several minutes)"
hack/build-tools.sh >/dev/null
cargo build --quiet --bin agentguard
eval "$(hack/cluster.sh up)"
STATE="$ROOT/.cluster"
K=(kubectl --kubeconfig "$KUBECONFIG")

step "2. Install the CRDs and start agentguard: every ServiceAccount in namespace '$NS' is an agent"
"${K[@]}" apply --server-side --force-conflicts -f crds/ >/dev/null
# agentguard's own namespace: excluded from the webhook, and home of its leader-election Lease.
"${K[@]}" create namespace agentguard --dry-run=client -o yaml | "${K[@]}" apply -f - >/dev/null
"${K[@]}" wait --for=condition=Established --timeout=60s \
  crd/protectedresources.agentguard.dev crd/clusterprotectedresources.agentguard.dev >/dev/null
if [[ -f "$STATE/run/agentguard.pid" ]] && kill -0 "$(cat "$STATE/run/agentguard.pid")" 2>/dev/null; then
  kill "$(cat "$STATE/run/agentguard.pid")"
fi
target/debug/agentguard certs --out-dir "$STATE/agentguard" --host 127.0.0.1 >/dev/null
read -r WEBHOOK_PORT METRICS_PORT < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')
# A stable identity: a re-run's agentguard takes over the previous one's leader Lease at once.
POD_NAME=agentguard-demo KUBECONFIG="$KUBECONFIG" setsid target/debug/agentguard run \
  --webhook-addr "127.0.0.1:$WEBHOOK_PORT" --metrics-addr "127.0.0.1:$METRICS_PORT" \
  --tls-cert-file "$STATE/agentguard/tls.crt" --tls-key-file "$STATE/agentguard/tls.key" \
  --agent-service-accounts "$NS/*" \
  --webhook-url "https://127.0.0.1:$WEBHOOK_PORT/validate" --ca-file "$STATE/agentguard/ca.crt" \
  --namespace agentguard >"$STATE/logs/agentguard.log" 2>&1 </dev/null &
echo $! >"$STATE/run/agentguard.pid"
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$METRICS_PORT/readyz" >/dev/null && break; sleep 0.2; done
curl -sf "http://127.0.0.1:$METRICS_PORT/readyz" >/dev/null || { tail "$STATE/logs/agentguard.log"; exit 1; }
echo "agentguard is ready: webhook https://127.0.0.1:$WEBHOOK_PORT/validate, metrics http://127.0.0.1:$METRICS_PORT/metrics"

# agentguard writes and keeps its own ValidatingWebhookConfiguration (failurePolicy: Fail).
for _ in $(seq 1 150); do
  "${K[@]}" get validatingwebhookconfiguration agentguard -o jsonpath='{.webhooks[0].clientConfig.url}' 2>/dev/null \
    | grep -q ":$WEBHOOK_PORT/" && break
  sleep 0.2
done
run "${K[@]}" get validatingwebhookconfiguration agentguard -o jsonpath='{.webhooks[0].name}: failurePolicy={.webhooks[0].failurePolicy}{"\n"}'

step "3. A policy protecting every claim in namespace '$NS', and an agent ServiceAccount with edit rights"
"${K[@]}" apply -f - <<'YAML'
apiVersion: agentguard.dev/v1alpha1
kind: ClusterProtectedResource
metadata:
  name: default-volumes
spec:
  mode: Enforce
  targets:
    - apiGroups: [""]
      kinds: [PersistentVolumeClaim]
      namespaces: [demo]
  approval:
    maxTTL: 1h
  message: "Ask #db-oncall."
YAML
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

step "5. The blocked attempt, as Prometheus and the policy's status see it"
printf '$ curl -s http://127.0.0.1:%s/metrics | grep agentguard_deletions_blocked_total\n' "$METRICS_PORT"
curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | grep '^agentguard_deletions_blocked_total' \
  || { echo "UNEXPECTED: no blocked deletion recorded" >&2; exit 1; }

# The status is written by the operator a moment later: the blocked counter at once, the
# protected count by a recount at most 2 s after the block.
for _ in $(seq 1 60); do
  [[ "$("${K[@]}" get cpr default-volumes -o jsonpath='{.status.blockedDeletions}/{.status.protectedObjects}')" == 1/1 ]] && break
  sleep 0.5
done
run "${K[@]}" get clusterprotectedresource default-volumes

step "6. A human approves this one deletion for 15 minutes; the agent may now delete it"
HUMAN=$("${K[@]}" auth whoami -o jsonpath='{.status.userInfo.username}')
UNTIL=$(date -u -d '+15 minutes' +%Y-%m-%dT%H:%M:%SZ)
run "${K[@]}" -n "$NS" annotate pvc orders-db "agentguard.dev/approved-by=$HUMAN" \
  "agentguard.dev/approved-until=$UNTIL" "agentguard.dev/approval-reason=replacing the volume"
# agentguard's mutating webhook sealed the approval it accepted; only a sealed approval counts.
run "${K[@]}" -n "$NS" get pvc orders-db -o jsonpath='{.metadata.annotations.agentguard\.dev/approval-seal}{"\n"}'
printf '$ kubectl delete pvc orders-db   # as the agent, again\n'
kubectl --kubeconfig "$AGENT_KUBECONFIG" delete pvc orders-db --wait=true --timeout=60s
curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | grep '^agentguard_approvals_total'

step "Done"
cat <<DONE
agentguard is still running (log: .cluster/logs/agentguard.log), with the control plane.
Explore:   eval "\$(hack/cluster.sh env)"; kubectl --kubeconfig $AGENT_KUBECONFIG get pvc
Stop all:  hack/cluster.sh down
DONE
