#!/usr/bin/env bash
# One command for agentguard's performance figures (docs/performance.md explains every number).
#
# Brings up its own local control plane (hack/cluster.sh with a bench-only state directory),
# then, for one rule — deny DELETE of a PersistentVolumeClaim annotated
# agentguard.dev/protected=true by ServiceAccounts of namespace `agents` — and the writes a
# webhook sees or does not (a human's label change on a protected claim, annotated or selected
# by a ProtectedResource; a human's ConfigMap update), measures, one configuration at a time:
#   floor               no admission check
#   vap                 a ValidatingAdmissionPolicy (CEL, in the API server)
#   controller-runtime  a PEER: a minimal controller-runtime webhook (bench/peers/controller-runtime)
#   kyverno             a PEER, only with BENCH_KYVERNO=1: Kyverno's admission controller built from
#                       its Go module (bench/peers/kyverno/build.sh; heavy), run out of cluster with
#                       a ClusterPolicy (bench/peers/kyverno/run.sh, policy.yaml)
#   agentguard          `cargo build --release` (or BENCH_AGENTGUARD_BIN), run out of cluster like
#                       the e2e tests, writing its own (managed) webhook configurations
#   agentguard-baseline only when asked for in BENCH_CONFIGS: the same with the binary
#                       BENCH_BASELINE_BIN names (e.g. an older commit's), alternating with
#                       agentguard inside every round, so that both see the same machine
# what the agent's client sees through the API server (bench/driver, client-go, the agent's
# TokenRequest token), the webhook's CPU and memory, then the scale of agentguard's index
# (bench/scale) and its time to /readyz with many claims, and optionally a perf profile.
# Tears the control plane down at the end, also on failure or Ctrl-C.
#
#   bench/run.sh
#
# Environment (defaults in brackets):
#   BENCH_CONFIGS       configurations to run [floor,vap,controller-runtime,kyverno,agentguard] (empty: none;
#                       agentguard-baseline is run only when named)
#   BENCH_REQUESTS      measured requests per cell [2000]; BENCH_WARMUP [200]
#   BENCH_ROUNDS        rounds over all configurations; the report takes each cell's median [3]
#   BENCH_CONCURRENCY   client concurrency levels [1,8,32]
#   BENCH_WRITES        writes measured besides the DELETEs, from update (the agent's),
#                       human-update, human-update-policy, configmap-update [all four; runs A-C: update]
#   BENCH_KYVERNO       1: build Kyverno (once; needs ~6 GB free disk while building) and measure it [0]
#   BENCH_SCALE_SIZES   objects for the in-process index scale [1000,10000,100000] (empty: skip)
#   BENCH_READYZ_OBJECTS claims created through the API server before timing /readyz [10000] (0: skip)
#   BENCH_READYZ_WATCH  seconds agentguard keeps running after /readyz with those claims, PolicyReports
#                       on, while its RSS is sampled every 5 s (status every 15 s, reports every 20 s) [70]
#   BENCH_PROFILE       1: perf-profile agentguard's /validate under load [1]
#   BENCH_OUT           results directory [$CACHE/results/<UTC time>]
#   BENCH_UPDATE_DOCS   1: copy the plot to docs/performance-latency.png [0]
#   BENCH_SKIP_BUILD    1: use the binaries already built into $CACHE/bin and target/ (a rerun) [0]
#   BENCH_AGENTGUARD_BIN an agentguard binary to measure instead of building this tree's, e.g. one
#                       built from an older commit in another worktree (before/after runs) [none]
#   BENCH_AGENTGUARD_COMMIT the commit that binary was built from, for build.json [the git HEAD of
#                       the binary's directory, when it is inside a git worktree]
#   BENCH_BASELINE_BIN  the agentguard binary of configuration agentguard-baseline [none]
#   BENCH_BASELINE_COMMIT its commit, for build.json [as for BENCH_AGENTGUARD_COMMIT]
#   BENCH_KEEP_CLUSTER  1: leave the control plane up at the end [0]
set -euo pipefail
# The whole script is one block, parsed before it runs: editing it mid-run cannot derail it.
{
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/agentguard/bench"
CONFIGS="${BENCH_CONFIGS-floor,vap,controller-runtime,kyverno,agentguard}"
REQUESTS="${BENCH_REQUESTS:-2000}"
WARMUP="${BENCH_WARMUP:-200}"
ROUNDS="${BENCH_ROUNDS:-3}"
CONCURRENCY="${BENCH_CONCURRENCY:-1,8,32}"
SCALE_SIZES="${BENCH_SCALE_SIZES-1000,10000,100000}"
READYZ_OBJECTS="${BENCH_READYZ_OBJECTS:-10000}"
READYZ_WATCH="${BENCH_READYZ_WATCH:-70}"
OUT="${BENCH_OUT:-$CACHE/results/$(date -u +%Y%m%dT%H%M%SZ)}"
export AGENTGUARD_CLUSTER_DIR="${BENCH_CLUSTER_DIR:-$CACHE/cluster}"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
mkdir -p "$OUT"/{logs,cells,pki} "$CACHE/bin"
log "results in $OUT"

# ---------------------------------------------------------------- build
free_mb=$(df -P -BM "$CACHE" | awk 'NR==2 {sub("M","",$4); print $4}')
((free_mb > 1500)) || log "WARNING: only ${free_mb} MB free on the cache's disk; builds or etcd may run out"
# Only what this run uses is built: the controller-runtime peer for its configuration,
# bench/scale for the scale phase or the profile, agentguard unless BENCH_AGENTGUARD_BIN names one.
PROFILE="${BENCH_PROFILE:-1}"
command -v perf >/dev/null || PROFILE=0
NEEDED=(driver)
[[ ",$CONFIGS," == *",controller-runtime,"* ]] && NEEDED+=(peer-controller-runtime)
[[ -n "$SCALE_SIZES" ]] && NEEDED+=(index-scale)
[[ "$PROFILE" == 1 ]] && NEEDED+=(agentguard-profiled)
if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
  log "building the load driver (Go, into $CACHE/bin)"
  (cd "$ROOT/bench/driver" && go build -trimpath -o "$CACHE/bin/driver" .)
  if [[ " ${NEEDED[*]} " == *" peer-controller-runtime "* ]]; then
    log "building the controller-runtime peer (Go, into $CACHE/bin)"
    (cd "$ROOT/bench/peers/controller-runtime" && go build -trimpath -o "$CACHE/bin/peer-controller-runtime" .)
  fi
  if [[ -z "${BENCH_AGENTGUARD_BIN:-}" ]]; then
    log "building agentguard (cargo build --release)"
    (cd "$ROOT" && cargo build --release --bin agentguard)
  fi
  if [[ " ${NEEDED[*]} " == *" index-scale "* || " ${NEEDED[*]} " == *" agentguard-profiled "* ]]; then
    log "building bench/scale (index scale, and agentguard with symbols for the profile)"
    CARGO_TARGET_DIR="$CACHE/target" cargo build --release --manifest-path "$ROOT/bench/scale/Cargo.toml"
    cp "$CACHE/target/release/index-scale" "$CACHE/target/release/agentguard-profiled" "$CACHE/bin/"
  fi
fi
for tool in "${NEEDED[@]}"; do
  [[ -x "$CACHE/bin/$tool" ]] || die "$CACHE/bin/$tool is missing: run without BENCH_SKIP_BUILD=1"
done
if [[ -n "${BENCH_AGENTGUARD_BIN:-}" ]]; then
  AGENTGUARD="$(realpath "$BENCH_AGENTGUARD_BIN")"
  AG_SOURCE="$(dirname "$AGENTGUARD")"
else
  AGENTGUARD="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/agentguard"
  AG_SOURCE="$ROOT"
fi
[[ -x "$AGENTGUARD" ]] || die "no agentguard binary at $AGENTGUARD"
commit_of() { # source-dir override
  if [[ -n "$2" ]]; then echo "$2"; else git -C "$1" rev-parse --short HEAD 2>/dev/null || echo unknown; fi
}
dirty_of() { git -C "$1" status --short -- :/src :/Cargo.toml :/Cargo.lock 2>/dev/null | wc -l; }
BASELINE=""
if [[ ",$CONFIGS," == *",agentguard-baseline,"* ]]; then
  [[ -n "${BENCH_BASELINE_BIN:-}" ]] || die "configuration agentguard-baseline needs BENCH_BASELINE_BIN"
  BASELINE="$(realpath "$BENCH_BASELINE_BIN")"
  [[ -x "$BASELINE" ]] || die "no agentguard binary at $BASELINE"
fi
python3 - "$OUT/build.json" "$AGENTGUARD" "$(git -C "$ROOT" rev-parse --short HEAD)" \
  "$(git -C "$ROOT" status --short src Cargo.toml Cargo.lock | wc -l)" "$ROOT" \
  "${BENCH_AGENTGUARD_BIN:+1}" "$(commit_of "$AG_SOURCE" "${BENCH_AGENTGUARD_COMMIT:-}")" "$(dirty_of "$AG_SOURCE")" \
  "$BASELINE" "$( [[ -z "$BASELINE" ]] || commit_of "$(dirname "$BASELINE")" "${BENCH_BASELINE_COMMIT:-}")" \
  "$( [[ -z "$BASELINE" ]] && echo 0 || dirty_of "$(dirname "$BASELINE")")" <<'PY'
import hashlib, json, os, sys, time
out, binary, head, dirty, root, given, commit, ag_dirty, baseline, b_commit, b_dirty = sys.argv[1:]
sha = lambda path: hashlib.sha256(open(path, "rb").read()).hexdigest()
built = lambda path: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(os.path.getmtime(path)))
# Relative to the repository (results are committed; machine paths are not).
facts = {"agentguard_binary": "BENCH_AGENTGUARD_BIN" if given else os.path.relpath(binary, root),
         "agentguard_commit": commit,
         "uncommitted_source_files_of_agentguard": int(ag_dirty),
         "sha256": sha(binary), "built": built(binary),
         "git_head_at_run": head, "uncommitted_source_files_at_run": int(dirty)}
if baseline:
    facts["baseline"] = {"agentguard_binary": "BENCH_BASELINE_BIN", "agentguard_commit": b_commit,
                         "uncommitted_source_files_of_agentguard": int(b_dirty),
                         "sha256": sha(baseline), "built": built(baseline)}
json.dump(facts, open(out, "w"), indent=2)
PY
KYVERNO_BIN=""
if [[ ",$CONFIGS," == *",kyverno,"* ]]; then
  if [[ "${BENCH_KYVERNO:-0}" == 1 ]]; then
    KYVERNO_BIN="$("$ROOT/bench/peers/kyverno/build.sh" 2>"$OUT/logs/kyverno-build.log")" || KYVERNO_BIN=""
  fi
fi

# ---------------------------------------------------------------- control plane
PIDS=()
cleanup() {
  local status=$?
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ "${BENCH_KEEP_CLUSTER:-0}" != 1 ]]; then
    "$ROOT/hack/cluster.sh" down >/dev/null 2>&1 || true
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$ROOT/hack/cluster.sh" down >/dev/null 2>&1 || true
"$ROOT/hack/cluster.sh" up >"$OUT/logs/cluster.log" 2>&1 || { tail -n 40 "$OUT/logs/cluster.log" >&2; die "control plane did not start"; }
eval "$("$ROOT/hack/cluster.sh" env)"
STATE="$AGENTGUARD_CLUSTER_DIR"
SERVER="$(kubectl config view --raw -o jsonpath='{.clusters[0].cluster.server}')"
CA="$STATE/pki/ca.crt"
APISERVER_PID="$(cat "$STATE/run/kube-apiserver.pid")"
log "control plane at $SERVER (kube-apiserver pid $APISERVER_PID)"
# hack/cluster.sh keeps an audit log (rotated at 100 MB, every backup kept); a bench run writes
# several hundred MB of it. Rotated files are of no use here: drop them as they appear.
(while [[ -d "$STATE/logs" ]]; do rm -f "$STATE"/logs/audit-*.log; sleep 15; done) >/dev/null 2>&1 &
PIDS+=("$!")

kubectl apply --server-side -f "$ROOT/crds" >/dev/null
kubectl wait --for=condition=Established --timeout=60s \
  crd/protectedresources.agentguard.dev crd/clusterprotectedresources.agentguard.dev >/dev/null
kubectl create namespace agents >/dev/null
kubectl create namespace bench >/dev/null
kubectl create namespace agentguard >/dev/null
kubectl -n agents create serviceaccount agent >/dev/null
kubectl -n bench create rolebinding agent-edit --clusterrole=edit --serviceaccount=agents:agent >/dev/null
MAX_CONC=$(tr ',' '\n' <<<"$CONCURRENCY" | sort -n | tail -1)
{
  claim() { # name
    printf 'apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: %s\n  namespace: bench\n  annotations:\n    agentguard.dev/protected: "true"\n  labels:\n    app: orders-db\nspec:\n  accessModes: [ReadWriteOnce]\n  resources:\n    requests:\n      storage: 1Gi\n---\n' "$1"
  }
  # A claim a policy protects and nothing else marks: no agentguard.dev/ metadata at all.
  selected() { # name
    printf 'apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: %s\n  namespace: bench\n  labels:\n    app: ledger-db\nspec:\n  accessModes: [ReadWriteOnce]\n  resources:\n    requests:\n      storage: 1Gi\n---\n' "$1"
  }
  configmap() { # name
    printf 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: %s\n  namespace: bench\ndata:\n  bench-seq: "0"\n---\n' "$1"
  }
  claim protected
  # One object per client goroutine and operation, so that patches never conflict: the agent
  # labels labelled-<n>, the human human-<n> (annotated) and selected-<n> (policy), and
  # patches cm-<n>.
  for ((i = 0; i < MAX_CONC; i++)); do
    claim "labelled-$i"; claim "human-$i"; selected "selected-$i"; configmap "cm-$i"
  done
  printf 'apiVersion: agentguard.dev/v1alpha1\nkind: ProtectedResource\nmetadata:\n  name: ledger\n  namespace: bench\nspec:\n  targets:\n    - apiGroups: [""]\n      kinds: [PersistentVolumeClaim]\n      selector: {matchLabels: {app: ledger-db}}\n'
} | kubectl apply -f - >/dev/null
kubectl -n agents create token agent --duration=6h >"$OUT/agent.token"
cat >"$OUT/agent.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: bench, cluster: {server: '$SERVER', certificate-authority: '$CA'}}]
users: [{name: agent, user: {tokenFile: '$OUT/agent.token'}}]
contexts: [{name: agent, context: {cluster: bench, user: agent, namespace: bench}}]
current-context: agent
EOF
[[ "$(kubectl --kubeconfig "$OUT/agent.kubeconfig" auth whoami -o jsonpath='{.status.userInfo.username}')" == system:serviceaccount:agents:agent ]] \
  || die "the agent's token does not authenticate as system:serviceaccount:agents:agent"

# One serving certificate (SAN 127.0.0.1) for every webhook, from a CA of the bench's own.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -keyout "$OUT/pki/ca.key" -out "$OUT/pki/ca.crt" -subj /CN=bench-webhook-ca 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout "$OUT/pki/tls.key" -out "$OUT/pki/tls.csr" -subj /CN=127.0.0.1 2>/dev/null
openssl x509 -req -in "$OUT/pki/tls.csr" -CA "$OUT/pki/ca.crt" -CAkey "$OUT/pki/ca.key" -CAcreateserial \
  -days 2 -out "$OUT/pki/tls.crt" -extfile <(printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature\n') 2>/dev/null
CABUNDLE="$(base64 -w0 <"$OUT/pki/ca.crt")"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
kib() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# The agent's dry-run delete of a claim [protected]: "denied" or "allowed".
probe() {
  if kubectl --kubeconfig "$OUT/agent.kubeconfig" delete pvc "${1:-protected}" --dry-run=server >/dev/null 2>"$OUT/probe.err"; then
    echo allowed
  elif grep -q denied "$OUT/probe.err"; then
    echo denied
  else
    echo "error: $(cat "$OUT/probe.err")"
  fi
}
wait_probe() { # expected what [seconds]
  local deadline=$((SECONDS + ${3:-60}))
  until [[ "$(probe)" == "$1" ]]; do
    ((SECONDS < deadline)) || die "$2: the agent's dry-run delete was not $1 within ${3:-60}s ($(probe))"
    sleep 0.2
  done
}

register_webhook() { # name port
  kubectl apply -f - >/dev/null <<EOF
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata:
  name: bench-$1
webhooks:
  - name: $1.bench.agentguard.dev
    admissionReviewVersions: [v1]
    sideEffects: None
    failurePolicy: Fail
    timeoutSeconds: 10
    clientConfig:
      url: https://127.0.0.1:$2/validate
      caBundle: $CABUNDLE
    namespaceSelector:
      matchLabels:
        kubernetes.io/metadata.name: bench
    rules:
      - operations: [UPDATE, DELETE]
        apiGroups: [""]
        apiVersions: [v1]
        resources: [persistentvolumeclaims]
EOF
}

wait_http() { # url seconds
  local deadline=$((SECONDS + $2))
  until curl -sfk -o /dev/null "$1"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.1
  done
}

# Writes every configuration is measured on, besides the agent's DELETE: the agent's label
# change on an annotated claim (update); a human's (the admin certificate's) label change on an
# annotated claim (human-update) and on a claim only a ProtectedResource selects
# (human-update-policy); a human's ConfigMap update (configmap-update), a kind no
# configuration routes.
WRITES="${BENCH_WRITES:-update,human-update,human-update-policy,configmap-update}"

# Runs the driver for one configuration in round $ROUND.
# Args: config webhook-pid ops dry-expect [metrics-url]
drive() {
  log "round $ROUND/$ROUNDS: measuring $1 ($3; $REQUESTS requests per cell after $WARMUP warm-up; concurrency $CONCURRENCY)"
  "$CACHE/bin/driver" load -server "$SERVER" -ca-file "$CA" -token-file "$OUT/agent.token" \
    -human-cert-file "$STATE/pki/admin.crt" -human-key-file "$STATE/pki/admin.key" \
    -metrics-url "${5:-}" \
    -config "$1" -webhook-pid "$2" -apiserver-pid "$APISERVER_PID" -ops "$3" -dry-expect "$4" \
    -concurrency "$CONCURRENCY" -requests "$REQUESTS" -warmup "$WARMUP" \
    -out "$OUT/cells/$1.r$ROUND.json"
}

# Writes what is known of a webhook process: idle RSS, peak RSS, CPU.
process_facts() { # config pid idle_kib started_ms ready_ms
  python3 - "$OUT/cells/$1.r$ROUND.process.json" "$2" "$3" "$4" "$5" "$(kib "$2" VmHWM)" "$(kib "$2" VmRSS)" <<'PY'
import json, sys
out, pid, idle, started, ready, hwm, rss = sys.argv[1:]
json.dump({"pid": int(pid), "idle_rss_kib": int(idle or 0), "vmhwm_kib": int(hwm or 0),
           "final_rss_kib": int(rss or 0),
           "start_to_ready_ms": (int(ready) - int(started)) if ready != "0" else None},
          open(out, "w"), indent=2)
PY
}

stop() { # pid
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

now_ms() { date +%s%3N; }

run_floor() {
  wait_probe allowed floor
  drive floor 0 "delete-dry,$WRITES" allowed
}

run_vap() {
  kubectl apply -f - >/dev/null <<'EOF'
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata:
  name: bench-protected-claims
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
      - apiGroups: [""]
        apiVersions: [v1]
        operations: [UPDATE, DELETE]
        resources: [persistentvolumeclaims]
  validations:
    - expression: >-
        request.operation != 'DELETE' ||
        !request.userInfo.username.startsWith('system:serviceaccount:agents:') ||
        !has(oldObject.metadata.annotations) ||
        !('agentguard.dev/protected' in oldObject.metadata.annotations) ||
        oldObject.metadata.annotations['agentguard.dev/protected'] != 'true'
      message: "DENIED delete of a protected claim by an agent"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata:
  name: bench-protected-claims
spec:
  policyName: bench-protected-claims
  validationActions: [Deny]
  matchResources:
    namespaceSelector:
      matchLabels:
        kubernetes.io/metadata.name: bench
EOF
  wait_probe denied vap
  drive vap 0 "delete,delete-dry,$WRITES" denied
  kubectl delete validatingadmissionpolicybinding,validatingadmissionpolicy bench-protected-claims >/dev/null
  wait_probe allowed "vap removal"
}

run_controller_runtime() {
  local port pid started ready
  port=$(free_port)
  started=$(now_ms)
  "$CACHE/bin/peer-controller-runtime" -port "$port" -cert-dir "$OUT/pki" \
    >"$OUT/logs/controller-runtime.log" 2>&1 &
  pid=$!; PIDS+=("$pid")
  wait_http "https://127.0.0.1:$port/validate" 30 || true   # any HTTP answer means it serves
  ready=$(now_ms)
  register_webhook controller-runtime "$port"
  wait_probe denied controller-runtime
  sleep 2
  local idle; idle=$(kib "$pid" VmRSS)
  drive controller-runtime "$pid" "delete,delete-dry,$WRITES" denied
  process_facts controller-runtime "$pid" "$idle" "$started" "$ready"
  kubectl delete validatingwebhookconfiguration bench-controller-runtime >/dev/null
  wait_probe allowed "controller-runtime removal"
  stop "$pid"
}

KYVERNO_PREPARED=0
run_kyverno() {
  if [[ -z "$KYVERNO_BIN" ]]; then
    ((ROUND == 1)) || return 0
    local why="not run: set BENCH_KYVERNO=1 to build Kyverno from its Go module (needs several GB of disk)"
    [[ "${BENCH_KYVERNO:-0}" == 1 ]] && why="not run: the build failed or was stopped; see logs/kyverno-build.log"
    log "kyverno $why"
    python3 -c 'import json,sys; json.dump({"skipped": sys.argv[1]}, open(sys.argv[2], "w"))' \
      "$why" "$OUT/cells/kyverno.skipped.json"
    return 0
  fi
  local kyv="$ROOT/bench/peers/kyverno/run.sh" port metrics pid started ready idle t0
  if ((KYVERNO_PREPARED == 0)); then
    log "kyverno: applying its CRDs, namespace, ConfigMaps and certificate Secrets"
    KUBECONFIG="$STATE/kubeconfig" "$kyv" prepare "$OUT/pki" >"$OUT/logs/kyverno-prepare.log" 2>&1 \
      || { tail -n 20 "$OUT/logs/kyverno-prepare.log" >&2; die "kyverno: prepare failed"; }
    KYVERNO_PREPARED=1
  fi
  port=$(free_port); metrics=$(free_port)
  started=$(now_ms)
  KUBECONFIG="$STATE/kubeconfig" "$kyv" exec "$port" "$metrics" "bench-kyverno-r$ROUND" \
    >"$OUT/logs/kyverno.r$ROUND.log" 2>&1 &
  pid=$!; PIDS+=("$pid")
  wait_http "https://127.0.0.1:$port/health/readiness" 180 || die "kyverno not ready; see $OUT/logs/kyverno.r$ROUND.log"
  ready=$(now_ms)
  # Once leader, Kyverno writes its own webhook configurations (URL https://127.0.0.1:$port/...).
  # The policy is applied after its policy webhook is there, so it is validated as in a cluster;
  # the resource webhook for claims follows from the policy.
  t0=$SECONDS
  until kubectl get validatingwebhookconfiguration kyverno-policy-validating-webhook-cfg >/dev/null 2>&1; do
    ((SECONDS - t0 < 120)) || die "kyverno wrote no policy webhook within 120s; see $OUT/logs/kyverno.r$ROUND.log"
    sleep 0.5
  done
  KUBECONFIG="$STATE/kubeconfig" "$kyv" policy 2>>"$OUT/logs/kyverno-prepare.log"
  wait_probe denied kyverno 180
  local enforcing; enforcing=$(now_ms)
  log "kyverno: ready $(((ready - started) / 1000))s after start, enforcing after $(((enforcing - started) / 1000))s"
  sleep 2
  idle=$(kib "$pid" VmRSS)
  drive kyverno "$pid" "delete,delete-dry,$WRITES" denied
  process_facts kyverno "$pid" "$idle" "$started" "$ready"
  curl -sfk "http://127.0.0.1:$metrics/metrics" >"$OUT/logs/kyverno.r$ROUND.metrics" || true
  stop "$pid"
  # Out of cluster Kyverno leaves its webhook configurations behind (failurePolicy Fail): remove
  # them, the policy and its leases before the next configuration.
  KUBECONFIG="$STATE/kubeconfig" "$kyv" teardown 2>>"$OUT/logs/kyverno-prepare.log"
  wait_probe allowed "kyverno removal"
}

# agentguard writes its own webhook configurations (managed mode, as users run it): a
# ValidatingWebhookConfiguration and, from the sealing commits on, a MutatingWebhookConfiguration,
# both named bench-agentguard, with the rules and matchConditions of the binary under test,
# calling https://127.0.0.1:<port>/validate (and /seal), scoped to namespace bench like the
# other configurations (cluster-scoped kinds are routed whatever the namespace label).
start_agentguard() { # binary logname port metrics_port -> sets AG_PID
  "$1" run --webhook-addr "127.0.0.1:$3" --metrics-addr "127.0.0.1:$4" \
    --tls-cert-file "$OUT/pki/tls.crt" --tls-key-file "$OUT/pki/tls.key" \
    --agent-service-accounts 'agents/*' \
    --webhook-url "https://127.0.0.1:$3/validate" --ca-file "$OUT/pki/ca.crt" \
    --webhook-configuration-name bench-agentguard \
    --webhook-namespace-label kubernetes.io/metadata.name=bench \
    --policy-reports="${AG_POLICY_REPORTS:-false}" --namespace agentguard --lease-namespace agentguard \
    >"$OUT/logs/$2.log" 2>&1 &
  AG_PID=$!; PIDS+=("$AG_PID")
}

# Stops agentguard, then removes the configurations it wrote (failurePolicy Fail: left behind,
# they would refuse the next configuration's requests). Stopped first: while it runs it puts
# them back.
stop_agentguard() {
  stop "$AG_PID"
  kubectl delete validatingwebhookconfiguration,mutatingwebhookconfiguration bench-agentguard \
    --ignore-not-found >/dev/null
}

run_agentguard() { # config binary
  local config="$1" port metrics started ready idle
  port=$(free_port); metrics=$(free_port)
  started=$(now_ms)
  # One identity for every agentguard process: the next one takes the lease at once.
  POD_NAME=bench-agentguard KUBECONFIG="$STATE/kubeconfig" RUST_LOG=warn \
    start_agentguard "$2" "$config" "$port" "$metrics"
  wait_http "http://127.0.0.1:$metrics/readyz" 60 || die "$config not ready; see $OUT/logs/$config.log"
  ready=$(now_ms)
  wait_probe denied "$config"
  # The policy is in force too: the claims the human labels in human-update-policy are guarded.
  local deadline=$((SECONDS + 60))
  until [[ "$(probe selected-0)" == denied ]]; do
    ((SECONDS < deadline)) || die "$config: the ProtectedResource does not protect selected-0 ($(probe selected-0))"
    sleep 0.2
  done
  kubectl get validatingwebhookconfiguration,mutatingwebhookconfiguration bench-agentguard -o yaml \
    >"$OUT/logs/$config-webhook-configurations.yaml" 2>/dev/null || true
  sleep 2
  idle=$(kib "$AG_PID" VmRSS)
  drive "$config" "$AG_PID" "delete,delete-dry,$WRITES" denied "http://127.0.0.1:$metrics/metrics"
  process_facts "$config" "$AG_PID" "$idle" "$started" "$ready"
  curl -sf "http://127.0.0.1:$metrics/metrics" >"$OUT/logs/$config.metrics" || true
  stop_agentguard
  wait_probe allowed "$config removal"
}

# ---------------------------------------------------------------- latency configurations
# Configurations alternate within each round, so that a slow spell of the shared machine
# lands on all of them rather than on one; even rounds run them in reverse order, so that none
# always follows the same one (agentguard-baseline and agentguard above all).
IFS=',' read -ra WANTED <<<"$CONFIGS"
for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
  ORDERED=("${WANTED[@]}")
  if ((ROUND % 2 == 0)); then
    ORDERED=()
    for ((i = ${#WANTED[@]} - 1; i >= 0; i--)); do ORDERED+=("${WANTED[i]}"); done
  fi
  for config in "${ORDERED[@]}"; do
    case "$config" in
      floor) run_floor ;;
      vap) run_vap ;;
      controller-runtime) run_controller_runtime ;;
      kyverno) run_kyverno ;;
      agentguard) run_agentguard agentguard "$AGENTGUARD" ;;
      agentguard-baseline) run_agentguard agentguard-baseline "$BASELINE" ;;
      *) die "unknown configuration $config" ;;
    esac
  done
done

# ---------------------------------------------------------------- profile
if [[ "$PROFILE" == 1 ]]; then
  log "profiling agentguard's /validate (perf, symbol-keeping build) under the agent's denied deletes"
  port=$(free_port); metrics=$(free_port)
  POD_NAME=bench-profiled KUBECONFIG="$STATE/kubeconfig" RUST_LOG=warn \
    start_agentguard "$CACHE/bin/agentguard-profiled" agentguard-profiled "$port" "$metrics"
  wait_http "http://127.0.0.1:$metrics/readyz" 60 || die "profiled agentguard not ready"
  wait_probe denied "profiled agentguard"
  perf record -F 999 -g -p "$AG_PID" -o "$OUT/perf.data" >"$OUT/logs/perf-record.log" 2>&1 &
  perf_pid=$!
  sleep 1
  "$CACHE/bin/driver" load -server "$SERVER" -ca-file "$CA" -token-file "$OUT/agent.token" \
    -config agentguard-profiled -webhook-pid "$AG_PID" -apiserver-pid "$APISERVER_PID" \
    -ops delete,update -concurrency 8 -requests "$((REQUESTS * 2))" -warmup 0 \
    -out "$OUT/cells/profile.json" 2>>"$OUT/logs/perf-record.log"
  kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true
  perf report -i "$OUT/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null \
    | grep -v '^$' | head -n 400 >"$OUT/profile-flat.txt" || true
  perf report -i "$OUT/perf.data" --children --sort symbol --stdio -g none 2>/dev/null \
    | grep -v '^$' | head -n 400 >"$OUT/profile-inclusive.txt" || true
  stop_agentguard
  wait_probe allowed "profiled agentguard removal"
fi

# ---------------------------------------------------------------- scale
if [[ -n "$SCALE_SIZES" ]]; then
  log "index scale in process (bench/scale): $SCALE_SIZES objects"
  "$CACHE/bin/index-scale" ${SCALE_SIZES//,/ } >"$OUT/scale.json" 2>"$OUT/logs/scale.log"
fi

if ((READYZ_OBJECTS > 0)); then
  log "creating $READYZ_OBJECTS annotated claims through the API server (namespace scale)"
  kubectl create namespace scale >/dev/null
  "$CACHE/bin/driver" create -server "$SERVER" -ca-file "$CA" \
    -cert-file "$STATE/pki/admin.crt" -key-file "$STATE/pki/admin.key" \
    -namespace scale -count "$READYZ_OBJECTS" -concurrency 16 >"$OUT/create.json"
  log "timing agentguard from process start to /readyz with $READYZ_OBJECTS more claims"
  # PolicyReports on, as the chart runs it: the reports over every protected claim are part of
  # the memory measured after ready.
  kubectl apply --server-side -f "$("$ROOT/hack/build-tools.sh" --print-crds)/wgpolicyk8s.io_policyreports.yaml" \
    -f "$("$ROOT/hack/build-tools.sh" --print-crds)/wgpolicyk8s.io_clusterpolicyreports.yaml" >/dev/null
  port=$(free_port); metrics=$(free_port)
  started=$(now_ms)
  AG_POLICY_REPORTS=true POD_NAME=bench-readyz KUBECONFIG="$STATE/kubeconfig" RUST_LOG=warn \
    start_agentguard "$AGENTGUARD" agentguard-readyz "$port" "$metrics"
  wait_http "http://127.0.0.1:$metrics/readyz" 600 || die "agentguard not ready with $READYZ_OBJECTS claims"
  ready=$(now_ms)
  sleep 2
  protected=$(curl -sf "http://127.0.0.1:$metrics/metrics" | awk '/^agentguard_protected_objects\{/ {s += $2} END {print s + 0}')
  rss_ready=$(kib "$AG_PID" VmRSS)
  log "sampling agentguard's RSS for ${READYZ_WATCH}s of status and report passes"
  rss_max=$rss_ready
  for ((t = 0; t < READYZ_WATCH; t += 5)); do
    sleep 5
    rss=$(kib "$AG_PID" VmRSS)
    ((rss > rss_max)) && rss_max=$rss
  done
  # The reports did run over every claim: the scale namespace's report counts them all.
  reported=$(kubectl -n scale get policyreports.wgpolicyk8s.io agentguard -o jsonpath='{.summary.pass}{"+"}{.summary.warn}' 2>/dev/null || echo 0+0)
  python3 - "$OUT/readyz.json" "$READYZ_OBJECTS" "$started" "$ready" "$rss_ready" "$(kib "$AG_PID" VmHWM)" "$protected" "$rss_max" "$READYZ_WATCH" "$reported" <<'PY'
import json, sys
out, n, started, ready, rss, hwm, protected, rss_max, watch, reported = sys.argv[1:]
json.dump({"claims_created": int(n), "start_to_ready_ms": int(ready) - int(started),
           "rss_kib_after_ready": int(rss), "vmhwm_kib": int(hwm),
           "protected_objects_metric": float(protected),
           "rss_kib_max_after_ready": int(rss_max), "watched_seconds": int(watch),
           "scale_report_pass_plus_warn": sum(int(x or 0) for x in reported.split("+"))}, open(out, "w"), indent=2)
PY
  stop_agentguard
fi

# ---------------------------------------------------------------- report
python3 "$ROOT/bench/report.py" "$OUT"
if [[ "${BENCH_UPDATE_DOCS:-0}" == 1 ]]; then
  cp "$OUT/latency.png" "$ROOT/docs/performance-latency.png"
  log "copied the plot to docs/performance-latency.png"
fi
log "done: $OUT/results.json, $OUT/table.md, $OUT/latency.png"
exit 0
}
