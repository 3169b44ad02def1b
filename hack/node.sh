# A real node for the local control plane (sourced by hack/cluster.sh): containerd 2.x and runc
# built from their modules, Debian's CNI bridge and host-local plugins, kube-scheduler and kubelet, all from the
# pinned modules hack/build-tools.sh builds. Every address stays on this machine, and IP
# forwarding stays off:
#   - Pods get 198.18.N.0/24 on the bridge agbrN (the node's own address 198.18.N.1);
#   - Services get 198.19.N.0/24 (198.18.0.0/15 is reserved for benchmarks, never routed);
#   - the `kubernetes` Service address 198.19.N.1 sits on the bridge too, and socat forwards it
#     to the loopback API server; the API server reaches webhook Services through their
#     EndpointSlices (--enable-aggregator-routing), so there is no kube-proxy.
# N is picked per state directory (and moved on if another node on the machine has it), so a
# CI rehearsal's cluster and a developer's can run side by side.
#
# Expects from cluster.sh: STATE, BIN, ROOT, log, die, start, wait_for, kubectl_admin,
# write_kubeconfig, stop_pid, free_port.

NODE_NAME="agentguard-node"
# The sandbox image containerd is told to use; hack/image.sh builds it from Kubernetes' own
# pause.c and imports it under this name.
PAUSE_IMAGE="registry.k8s.io/pause:3.10.1"
CNI_BIN_DIR="${AGENTGUARD_CNI_BIN_DIR:-/usr/lib/cni}"

node_enabled() { [[ -f "$STATE/node.env" ]] && grep -q '^NODE_ENABLED=1' "$STATE/node.env"; }

# Picks N (1..250) for this state directory: stable for the directory, skipping one a bridge on
# the machine already uses. Writes node.env (the Service range is used with or without a node).
node_plan() {
  local n start used
  start=$(( $(printf '%s' "$STATE" | cksum | cut -d' ' -f1) % 250 + 1 ))
  used=$(ip -o -4 addr show 2>/dev/null | awk '{print $4}')
  for i in $(seq 0 249); do
    n=$(( (start + i - 1) % 250 + 1 ))
    grep -q "^198\.18\.$n\." <<<"$used" && continue
    ip link show "agbr$n" >/dev/null 2>&1 && continue
    break
  done
  cat >"$STATE/node.env" <<ENV
NODE_ENABLED=${AGENTGUARD_NODE:-0}
NODE_N=$n
BRIDGE=agbr$n
POD_CIDR=198.18.$n.0/24
NODE_IP=198.18.$n.1
SERVICE_CIDR=198.19.$n.0/24
KUBERNETES_SERVICE_IP=198.19.$n.1
CGROUP_ROOT=/agentguard-$n
NODE_RUN=/run/agentguard-$n
KUBELET_PORT=$(free_port)
KUBELET_HEALTHZ_PORT=$(free_port)
SCHEDULER_PORT=$(free_port)
ENV
}

node_load() {
  # shellcheck disable=SC1091
  [[ -f "$STATE/node.env" ]] && source "$STATE/node.env"
  return 0
}

node_check() {
  local missing=()
  [[ "$(id -u)" == 0 ]] || die "the node needs root (containers, bridges, cgroups, mounts)"
  command -v socat >/dev/null || missing+=(socat)
  [[ -x "$CNI_BIN_DIR/bridge" && -x "$CNI_BIN_DIR/host-local" && -x "$CNI_BIN_DIR/loopback" ]] \
    || missing+=(containernetworking-plugins)
  ((${#missing[@]} == 0)) || die "the node needs: apt-get install ${missing[*]}"
  [[ "$(cat /proc/sys/net/ipv4/ip_forward)" == 0 ]] \
    || log "note: net.ipv4.ip_forward is on on this machine (the node does not need it)"
}

# The node's network: the bridge with the node's address and the kubernetes Service address,
# and the CNI configuration.
node_network() {
  ip link add "$BRIDGE" type bridge 2>/dev/null || true
  # A fixed address: a bridge without one takes the lowest of its ports', so deleting a Pod
  # could change it under the others, and a Pod whose neighbour entry for the node missed the
  # change answered the API server into the void for seconds (a webhook call timed out in
  # `helm test`'s cleanup, which deletes a Pod). Locally administered, one per node N.
  ip link set "$BRIDGE" address "$(printf '02:61:67:00:00:%02x' "$NODE_N")"
  ip addr replace "$NODE_IP/24" dev "$BRIDGE"
  ip addr replace "$KUBERNETES_SERVICE_IP/32" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  mkdir -p "$STATE/cni/net.d" "$STATE/cni/ipam"
  cat >"$STATE/cni/net.d/10-agentguard.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "agentguard",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$STATE/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "rangeStart": "198.18.$NODE_N.10", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "$SERVICE_CIDR", "gw": "$NODE_IP"}]
      }
    },
    {"type": "loopback"}
  ]
}
JSON
}

node_containerd() {
  mkdir -p "$NODE_RUN" "$STATE/containerd"
  cat >"$STATE/containerd/config.toml" <<TOML
version = 3
root = "$STATE/containerd/root"
state = "$NODE_RUN/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.erofs"]

[grpc]
  address = "$NODE_RUN/containerd.sock"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "$PAUSE_IMAGE"

[plugins."io.containerd.cri.v1.runtime"]
  # Network namespaces under the state directory: down unmounts them with everything else.
  netns_mounts_under_state_dir = true
  # Without CAP_SYS_RESOURCE (as in this sandbox) no process may lower its OOM score below its
  # parent's: keep containers' at or above containerd's own instead of failing to start them.
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["$CNI_BIN_DIR"]
    conf_dir = "$STATE/cni/net.d"
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
    BinaryName = "$BIN/runc"
    SystemdCgroup = false
TOML
  log "starting containerd (socket $NODE_RUN/containerd.sock)"
  PATH="$BIN:$PATH" start containerd "$BIN/containerd" --config "$STATE/containerd/config.toml"
  wait_for containerd 60 "$STATE/logs/containerd.log" \
    "$BIN/ctr" --address "$NODE_RUN/containerd.sock" version
}

node_ctr() { "$BIN/ctr" --address "$NODE_RUN/containerd.sock" -n k8s.io "$@"; }

node_kubelet() {
  write_kubeconfig "$STATE/kubelet.kubeconfig" kubelet
  cat >"$STATE/kubelet-config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine has cgroup v1, which kubelet 1.36 refuses unless told (KEP-5573).
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: $CGROUP_ROOT
containerRuntimeEndpoint: unix://$NODE_RUN/containerd.sock
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $STATE/pki/ca.crt}
authorization: {mode: AlwaysAllow}
failSwapOn: false
resolvConf: /etc/resolv.conf
serializeImagePulls: false
# A shared development machine: never evict for its disk or memory, never collect images the
# tests imported (they cannot be pulled again).
evictionHard: {memory.available: "1Mi", nodefs.available: "0%", imagefs.available: "0%", nodefs.inodesFree: "0%", imagefs.inodesFree: "0%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
enforceNodeAllocatable: []
# Its own log directory: a kubelet removes the directories under its podLogsDir of Pods it does
# not know, so two nodes on one machine sharing /var/log/pods would delete each other's logs.
podLogsDir: $STATE/pod-logs
# Lowering its own OOM score needs CAP_SYS_RESOURCE, which a sandboxed root may lack.
oomScoreAdj: 0
maxPods: 60
YAML
  # kubelet wants its cgroup root to exist in every hierarchy (cgroup v1); cpuset's needs the
  # parent's CPUs and memory nodes before anything can join it.
  local controller
  for controller in /sys/fs/cgroup/*/; do
    [[ -f "$controller/cgroup.procs" ]] || continue
    mkdir -p "$controller$CGROUP_ROOT"
  done
  if [[ -f /sys/fs/cgroup/cpuset/cpuset.cpus ]]; then
    cat /sys/fs/cgroup/cpuset/cpuset.cpus >"/sys/fs/cgroup/cpuset$CGROUP_ROOT/cpuset.cpus"
    cat /sys/fs/cgroup/cpuset/cpuset.mems >"/sys/fs/cgroup/cpuset$CGROUP_ROOT/cpuset.mems"
  fi
  log "starting kubelet (node $NODE_NAME at $NODE_IP)"
  start kubelet "$BIN/kubelet" --config "$STATE/kubelet-config.yaml" \
    --kubeconfig "$STATE/kubelet.kubeconfig" --root-dir "$STATE/kubelet" \
    --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" --v 1
  wait_for kubelet 90 "$STATE/logs/kubelet.log" curl -sf "http://127.0.0.1:$KUBELET_HEALTHZ_PORT/healthz"
  wait_for "node $NODE_NAME Ready" 120 "$STATE/logs/kubelet.log" \
    kubectl_admin wait --for=condition=Ready "node/$NODE_NAME" --timeout=1s
}

node_scheduler() {
  write_kubeconfig "$STATE/scheduler.kubeconfig" scheduler
  log "starting kube-scheduler"
  start kube-scheduler "$BIN/kube-scheduler" --kubeconfig "$STATE/scheduler.kubeconfig" \
    --authentication-kubeconfig "$STATE/scheduler.kubeconfig" \
    --authorization-kubeconfig "$STATE/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$SCHEDULER_PORT" --leader-elect=false
  wait_for kube-scheduler 60 "$STATE/logs/kube-scheduler.log" \
    curl -sfk "https://127.0.0.1:$SCHEDULER_PORT/healthz"
}

# Pods reach the API server at the kubernetes Service address, forwarded to loopback.
node_forwarder() {
  log "forwarding $KUBERNETES_SERVICE_IP:443 to the API server"
  start api-forwarder socat "TCP-LISTEN:443,bind=$KUBERNETES_SERVICE_IP,fork,reuseaddr" \
    "TCP:127.0.0.1:$API_PORT"
}

# The images the node needs before any Pod: the sandbox (pause) image.
node_images() {
  "$ROOT/hack/image.sh" pause --import "$NODE_RUN/containerd.sock" >/dev/null
}

node_up() {
  node_check
  node_load
  node_network
  node_forwarder
  node_containerd
  node_images
  node_scheduler
  node_kubelet
}

# Stops the node and removes everything it made: processes, containers, mounts, network
# namespaces, the bridge and its addresses, cgroups.
node_down() {
  node_enabled || return 0
  node_load
  stop_pid "$STATE/run/kubelet.pid"
  stop_pid "$STATE/run/kube-scheduler.pid"
  if [[ -S "$NODE_RUN/containerd.sock" ]]; then
    local id
    for id in $(node_ctr tasks ls -q 2>/dev/null); do
      node_ctr tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
    done
    sleep 0.5
    for id in $(node_ctr tasks ls -q 2>/dev/null); do
      node_ctr tasks delete -f "$id" >/dev/null 2>&1 || true
    done
  fi
  stop_pid "$STATE/run/containerd.pid"
  # Shims outlive containerd by design; those of this node's state go now.
  pkill -9 -f "containerd-shim-runc-v2 .*-address $NODE_RUN/containerd.sock" 2>/dev/null || true
  stop_pid "$STATE/run/api-forwarder.pid"
  # Mounts (overlay rootfs, network namespaces, kubelet's volumes and its rshared root), deepest
  # first.
  local m
  while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done < <(findmnt -rn -o TARGET | grep -E "^($STATE|$NODE_RUN)(/|$)" | sort -r)
  ip link del "$BRIDGE" 2>/dev/null || true
  # kubelet links every container's log from /var/log/containers (a fixed path) into its own
  # log directory; this node's links go with it.
  local link
  for link in /var/log/containers/*.log; do
    if [[ -L "$link" && "$(readlink "$link")" == "$STATE"/* ]]; then rm -f "$link"; fi
  done
  local controller
  for controller in /sys/fs/cgroup/*/; do
    [[ -d "$controller$CGROUP_ROOT" ]] || continue
    find "$controller$CGROUP_ROOT" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  rm -rf "$NODE_RUN"
}
