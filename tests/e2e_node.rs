//! End-to-end on the real node (`AGENTGUARD_NODE=1 hack/cluster.sh up`, hack/node.sh): Pods
//! scheduled by kube-scheduler run in containerd through runc on the CNI bridge, reach the API
//! server at the `kubernetes` Service address, and an agent running in a Pod, with its mounted
//! ServiceAccount token, gets agentguard's standard denial. Fails (never skips) without a node.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use support::{Cluster, Guard, TestNamespace, stderr, stdout, wait_until};

const NODE: &str = "agentguard-node";

/// The node's settings as hack/node.sh wrote them beside the kubeconfig.
fn node_env(cluster: &Cluster) -> std::collections::HashMap<String, String> {
    let path = cluster.kubeconfig.parent().unwrap().join("node.env");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let env: std::collections::HashMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert!(
        env.get("NODE_ENABLED").is_some_and(|v| v == "1"),
        "this control plane has no node ({}): start it with `AGENTGUARD_NODE=1 hack/cluster.sh up` (as root)",
        path.display()
    );
    env
}

/// Connects and checks the node is Ready; imports the agent image (kubectl and the plugin).
fn node_cluster() -> (Cluster, std::collections::HashMap<String, String>) {
    let cluster = Cluster::connect();
    let env = node_env(&cluster);
    cluster.kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        &format!("node/{NODE}"),
        "--timeout=60s",
    ]);
    static IMPORTED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    IMPORTED.get_or_init(|| {
        let socket = format!("{}/containerd.sock", env["NODE_RUN"]);
        let out = Command::new(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("hack/image.sh"))
            .args(["kubectl", "--import", &socket])
            .output()
            .expect("run hack/image.sh");
        assert!(
            out.status.success(),
            "hack/image.sh kubectl: {}",
            stderr(&out)
        );
    });
    (cluster, env)
}

fn kubectl_image() -> String {
    let out = Command::new(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("hack/build-tools.sh"))
        .arg("--print-k8s-version")
        .output()
        .unwrap();
    format!("agentguard.dev/e2e/kubectl:{}", stdout(&out).trim())
}

/// Runs `args` with kubectl in a Pod as ServiceAccount `sa`, and returns the Pod's phase and
/// log once it has finished.
fn run_pod(ns: &TestNamespace, name: &str, sa: &str, args: &[&str]) -> (String, String) {
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns.name},
        "spec": {
            "serviceAccountName": sa,
            "restartPolicy": "Never",
            "containers": [{
                "name": "agent", "image": kubectl_image(), "imagePullPolicy": "Never",
                "args": args,
                "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                    "runAsNonRoot": true, "capabilities": {"drop": ["ALL"]}},
            }],
        },
    });
    ns.cluster.apply(&pod.to_string());
    let mut phase = String::new();
    wait_until(
        Duration::from_secs(90),
        &format!("pod {name} finished"),
        || {
            phase = stdout(&ns.kubectl(&["get", "pod", name, "-o", "jsonpath={.status.phase}"]));
            phase == "Succeeded" || phase == "Failed"
        },
    );
    let log = ns.kubectl_ok(&["logs", name]);
    (phase, log)
}

#[test]
fn pods_run_on_the_node_and_reach_the_api_server() {
    let (cluster, env) = node_cluster();
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
    let (phase, log) = run_pod(
        &ns,
        "whoami",
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
    let ip = ns.kubectl_ok(&["get", "pod", "whoami", "-o", "jsonpath={.status.podIP}"]);
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
    let (cluster, _) = node_cluster();
    let ns = TestNamespace::create(&cluster, "node-agent");
    let agent = ns.agent("cursor-agent");
    ns.pvc("data", true);
    let _guard = Guard::start(&ns, &agent);
    let (phase, log) = run_pod(
        &ns,
        "agent",
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
