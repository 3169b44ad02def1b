//! End-to-end on the real node (`AGENTGUARD_NODE=1 hack/cluster.sh up`, hack/node.sh): Pods
//! scheduled by kube-scheduler run in containerd through runc on the CNI bridge, reach the API
//! server at the `kubernetes` Service address, and an agent running in a Pod, with its mounted
//! ServiceAccount token, gets agentguard's standard denial. Fails (never skips) without a node.

mod support;

use std::collections::HashMap;

use support::{Cluster, Guard, TestNamespace, node_env, node_image};

const NODE: &str = "agentguard-node";

/// Connects, checks the node is Ready, and imports the agent image (kubectl and the plugin).
fn node_cluster() -> (Cluster, HashMap<String, String>, String) {
    let cluster = Cluster::connect();
    let env = node_env(&cluster);
    cluster.kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        &format!("node/{NODE}"),
        "--timeout=60s",
    ]);
    let image = node_image(&cluster, "kubectl", &[]);
    (cluster, env, image)
}

#[test]
fn pods_run_on_the_node_and_reach_the_api_server() {
    let (cluster, env, image) = node_cluster();
    let ns = TestNamespace::create(&cluster, "node");
    ns.kubectl_ok(&["create", "serviceaccount", "reader"]);
    ns.kubectl_ok(&[
        "create",
        "rolebinding",
        "reader",
        "--clusterrole=view",
        &format!("--serviceaccount={}:reader", ns.name),
    ]);
    // In-cluster configuration: the Service address, the mounted token and CA.
    let (phase, log) = ns.run_pod(
        &image,
        "reader",
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ],
    );
    assert_eq!(phase, "Succeeded", "{log}");
    assert!(
        log.contains(&format!("system:serviceaccount:{}:reader", ns.name)),
        "{log}"
    );
    let ip = ns.kubectl_ok(&[
        "get",
        "pods",
        "-o",
        "jsonpath={.items[?(@.spec.serviceAccountName==\"reader\")].status.podIP}",
    ]);
    let pod_net = env["POD_CIDR"].trim_end_matches("0/24");
    assert!(
        ip.starts_with(pod_net),
        "pod IP {ip} outside {}",
        env["POD_CIDR"]
    );
    // The node forwards nothing: every address is local to this machine.
    let forwarding = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    assert_eq!(forwarding.trim(), "0", "IP forwarding was turned on");
}

#[test]
fn an_agent_in_a_pod_is_denied_a_protected_claim_with_the_standard_message() {
    let (cluster, _, image) = node_cluster();
    let ns = TestNamespace::create(&cluster, "node-agent");
    let agent = ns.agent("cursor-agent");
    ns.pvc("data", true);
    let _guard = Guard::start(&ns, &agent);
    let (phase, log) = ns.run_pod(
        &image,
        "cursor-agent",
        &["delete", "pvc", "data", "-n", &ns.name],
    );
    assert_eq!(phase, "Failed", "the agent's delete went through: {log}");
    let expected = format!(
        "agentguard: DENIED delete of PersistentVolumeClaim {ns}/data by {agent}.",
        ns = ns.name
    );
    assert!(log.contains(&expected), "{log}");
    assert!(
        log.contains(&format!(
            "Stop and ask a human to approve: kubectl agentguard approve persistentvolumeclaim/data -n {}",
            ns.name
        )),
        "{log}"
    );
    assert!(ns.pvc_intact("data"));
}
