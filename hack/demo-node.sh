#!/usr/bin/env bash
# The main job as users run it (`AGENTGUARD_NODE=1 hack/demo.sh`, as root): a local control
# plane with a real node, agentguard installed with `helm install` from an image built here,
# an agent running in a Pod with its own ServiceAccount token refused the deletion of a
# protected claim with agentguard's message, then a human's approval with the kubectl plugin
# that lets the agent's Pod delete that one claim.
#
# Leaves everything running to explore; stop it with
#   hack/cluster.sh down
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

NS=demo
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

step "1. Build the tools, start the control plane with a node, build the images (first run: long)"
hack/build-tools.sh >/dev/null
cargo build --quiet --bin kubectl-agentguard
eval "$(AGENTGUARD_NODE=1 hack/cluster.sh up)"
STATE="${AGENTGUARD_CLUSTER_DIR:-$ROOT/.cluster}"
# shellcheck disable=SC1091
source "$STATE/node.env"
SOCKET="$NODE_RUN/containerd.sock"
hack/image.sh agentguard --import "$SOCKET" >/dev/null
KUBECTL_IMAGE="agentguard.dev/e2e/kubectl:$(hack/build-tools.sh --print-k8s-version)"
hack/image.sh kubectl --import "$SOCKET" >/dev/null
run kubectl get nodes

step "2. helm install agentguard: every ServiceAccount in namespace '$NS' is an agent"
helm uninstall agentguard -n agentguard --ignore-not-found --wait >/dev/null 2>&1 || true
run helm install agentguard charts/agentguard -n agentguard --create-namespace \
  --set "agents.serviceAccounts={$NS/*}" --wait --timeout 4m
run kubectl -n agentguard get pods -o wide

step "3. A protected claim in namespace '$NS', and an agent ServiceAccount with edit rights"
kubectl delete namespace "$NS" --ignore-not-found >/dev/null
run kubectl create namespace "$NS"
run kubectl -n "$NS" create serviceaccount cursor-agent
run kubectl -n "$NS" create rolebinding cursor-agent-edit --clusterrole=edit --serviceaccount="$NS:cursor-agent"
kubectl -n "$NS" apply -f - <<'YAML'
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: orders-db
  annotations: {agentguard.dev/protected: "true"}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 10Gi}}
YAML

# The agent runs in a Pod with its mounted ServiceAccount token, as agents in clusters do.
agent_pod() {
  local name="$1"; shift
  kubectl -n "$NS" delete pod "$name" --ignore-not-found >/dev/null
  kubectl -n "$NS" run "$name" --image="$KUBECTL_IMAGE" --image-pull-policy=Never --restart=Never \
    --overrides='{"spec":{"serviceAccountName":"cursor-agent"}}' -- "$@" >/dev/null
  for _ in $(seq 1 120); do
    case "$(kubectl -n "$NS" get pod "$name" -o jsonpath='{.status.phase}')" in
      Succeeded|Failed) break ;;
    esac
    sleep 0.5
  done
  kubectl -n "$NS" logs "$name"
  [[ "$(kubectl -n "$NS" get pod "$name" -o jsonpath='{.status.phase}')" == Succeeded ]]
}

step "4. The agent, in a Pod, tries to delete the protected claim"
printf '$ kubectl delete pvc orders-db   # in Pod agent-1, as system:serviceaccount:%s:cursor-agent\n' "$NS"
if agent_pod agent-1 delete pvc orders-db -n "$NS"; then
  echo "UNEXPECTED: the agent deleted a protected claim" >&2; exit 1
fi
run kubectl -n "$NS" get pvc orders-db

step "5. A human approves this one deletion for 15 minutes; the agent's Pod may now delete it"
run target/debug/kubectl-agentguard -n "$NS" approve pvc/orders-db --for 15m --reason "replacing the volume"
printf '$ kubectl delete pvc orders-db   # in Pod agent-2, as the agent, again\n'
agent_pod agent-2 delete pvc orders-db -n "$NS"

step "Done"
cat <<DONE
agentguard runs in the cluster (kubectl -n agentguard get pods), with the control plane and node.
Explore:   eval "\$(hack/cluster.sh env)"; kubectl get pods -A
Stop all:  hack/cluster.sh down
DONE
