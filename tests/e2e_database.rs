//! A real database kept through an approved delete, on the real node: etcd (the pinned build,
//! in an image made here) runs as a StatefulSet on a volume of the node, with keys written to
//! it. An agent Pod's deletes of its claim, its StatefulSet (set to delete its claims) and its
//! namespace are refused; a human approves the claim's deletion with `kubectl agentguard
//! approve`; the agent's delete then goes through; the volume stays (pinned to Retain);
//! `kubectl agentguard restore` brings the claim back; etcd starts on it and every key written
//! before is read back. Needs `AGENTGUARD_NODE=1 hack/cluster.sh up`.

mod support;

use std::process::{Command, Output};
use std::time::Duration;

use base64::Engine;
use support::{Cluster, Guard, TestNamespace, node_image, stderr, stdout, wait_until};

/// etcd's v3 JSON gateway at the Pod's address (the host reaches Pods over the node's bridge).
fn etcd(ip: &str, path: &str, body: serde_json::Value) -> Option<serde_json::Value> {
    let out: Output = Command::new("curl")
        .args(["-sf", "--max-time", "5", "-X", "POST"])
        .arg(format!("http://{ip}:2379/v3/{path}"))
        .args(["-d", &body.to_string()])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The database's Pod IP once etcd answers.
fn etcd_ready(ns: &TestNamespace) -> String {
    let mut ip = String::new();
    wait_until(Duration::from_secs(120), "etcd answers", || {
        ip = stdout(&ns.kubectl(&["get", "pod", "db-0", "-o", "jsonpath={.status.podIP}"]));
        !ip.is_empty() && etcd(&ip, "kv/range", serde_json::json!({"key": b64("probe")})).is_some()
    });
    ip
}

#[test]
fn a_real_database_is_kept_through_an_approved_delete_and_restored() {
    let cluster = Cluster::connect();
    let etcd_image = node_image(&cluster, "etcd", &[]);
    let kubectl_image = node_image(&cluster, "kubectl", &[]);
    let ns = TestNamespace::create(&cluster, "database");
    let agent = ns.agent("cursor-agent");
    ns.grant_cluster("cursor-agent", "delete", "namespaces");
    // The node's volume: a directory of the control plane's state (removed by `down`), owned
    // by the database's user.
    let dir = cluster
        .kubeconfig
        .parent()
        .unwrap()
        .join("volumes")
        .join(&ns.name);
    std::fs::create_dir_all(&dir).unwrap();
    Command::new("chown")
        .args(["65532:65532"])
        .arg(&dir)
        .status()
        .unwrap();
    let pv = format!("{}-db", ns.name);
    ns.owns_cluster_object(&format!("persistentvolume/{pv}"));
    cluster.apply(&format!(
        "apiVersion: v1\nkind: PersistentVolume\nmetadata:\n  name: {pv}\nspec:\n  capacity: {{storage: 1Gi}}\n  accessModes: [ReadWriteOnce]\n\
         \x20 persistentVolumeReclaimPolicy: Delete\n  storageClassName: {ns}-local\n  hostPath: {{path: {dir}, type: Directory}}\n",
        ns = ns.name,
        dir = dir.display()
    ));
    cluster.apply(&format!(
        "apiVersion: agentguard.dev/v1alpha1\nkind: ProtectedResource\nmetadata:\n  name: database\n  namespace: {ns}\nspec:\n  targets:\n\
         \x20   - {{apiGroups: [\"\"], kinds: [PersistentVolumeClaim]}}\n",
        ns = ns.name
    ));
    let _guard = Guard::start(&ns, &agent);
    ns.wait_policy_ready("database");
    // etcd as a StatefulSet whose claims go with it (whenDeleted: Delete): the dangerous setup.
    cluster.apply(&format!(
        "apiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: db\n  namespace: {ns}\nspec:\n  serviceName: db\n  replicas: 1\n\
         \x20 persistentVolumeClaimRetentionPolicy: {{whenDeleted: Delete, whenScaled: Retain}}\n\
         \x20 selector: {{matchLabels: {{app: db}}}}\n  template:\n    metadata: {{labels: {{app: db}}}}\n    spec:\n      containers:\n\
         \x20     - name: etcd\n        image: {etcd_image}\n        imagePullPolicy: Never\n        args: [--data-dir=/var/lib/etcd/data, --listen-client-urls=http://0.0.0.0:2379,\n\
         \x20              --advertise-client-urls=http://127.0.0.1:2379, --listen-peer-urls=http://127.0.0.1:2380]\n\
         \x20       volumeMounts: [{{name: data, mountPath: /var/lib/etcd}}]\n\
         \x20 volumeClaimTemplates:\n  - metadata: {{name: data}}\n    spec:\n      accessModes: [ReadWriteOnce]\n      storageClassName: {ns}-local\n\
         \x20     resources: {{requests: {{storage: 1Gi}}}}\n",
        ns = ns.name
    ));
    let ip = etcd_ready(&ns);
    let keys: Vec<(String, String)> = (0..100)
        .map(|i| {
            (
                format!("orders/{i:03}"),
                format!("order {i} for customer {}", i * 7),
            )
        })
        .collect();
    for (k, v) in &keys {
        etcd(
            &ip,
            "kv/put",
            serde_json::json!({"key": b64(k), "value": b64(v)}),
        )
        .unwrap_or_else(|| panic!("put {k}"));
    }
    // agentguard pinned the claim's volume to Retain.
    wait_until(
        Duration::from_secs(30),
        "the volume pinned to Retain",
        || {
            stdout(&cluster.kubectl(&[
                "get",
                "pv",
                &pv,
                "-o",
                "jsonpath={.spec.persistentVolumeReclaimPolicy}",
            ])) == "Retain"
        },
    );

    // The agent, from a Pod: the claim, the StatefulSet that would delete it, the namespace.
    for (what, args) in [
        ("claim", vec!["delete", "pvc", "data-db-0", "--wait=false"]),
        (
            "statefulset",
            vec!["delete", "statefulset", "db", "--wait=false"],
        ),
        (
            "namespace",
            vec!["delete", "namespace", &ns.name, "--wait=false"],
        ),
    ] {
        let (phase, log) = ns.run_pod(&kubectl_image, "cursor-agent", &args);
        assert_eq!(phase, "Failed", "the agent deleted the {what}: {log}");
        assert!(
            log.contains("agentguard: DENIED delete of"),
            "{what}: {log}"
        );
    }
    assert!(ns.pvc_intact("data-db-0"));

    // A human stops the database and approves the claim's deletion; the agent deletes it.
    ns.kubectl_ok(&["scale", "statefulset", "db", "--replicas=0"]);
    wait_until(Duration::from_secs(60), "db-0 gone", || {
        stdout(&ns.kubectl(&["get", "pod", "db-0", "--ignore-not-found", "-o", "name"])).is_empty()
    });
    let approve = Command::new(env!("CARGO_BIN_EXE_kubectl-agentguard"))
        .arg("--kubeconfig")
        .arg(&cluster.kubeconfig)
        .args(["-n", &ns.name, "approve", "pvc/data-db-0", "--for", "10m"])
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    assert!(approve.status.success(), "approve: {}", stderr(&approve));
    let (phase, log) = ns.run_pod(
        &kubectl_image,
        "cursor-agent",
        &["delete", "pvc", "data-db-0"],
    );
    assert_eq!(phase, "Succeeded", "approved delete: {log}");
    ns.wait_pvc_gone("data-db-0");
    // The volume stays, Released, with the data.
    wait_until(Duration::from_secs(30), "the volume Released", || {
        stdout(&cluster.kubectl(&["get", "pv", &pv, "-o", "jsonpath={.status.phase}"]))
            == "Released"
    });

    // Restored, the database starts on it and every key is there.
    let restore = Command::new(env!("CARGO_BIN_EXE_kubectl-agentguard"))
        .arg("--kubeconfig")
        .arg(&cluster.kubeconfig)
        .args(["-n", &ns.name, "restore", "pvc/data-db-0"])
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    assert!(restore.status.success(), "restore: {}", stderr(&restore));
    wait_until(Duration::from_secs(60), "the claim Bound again", || {
        stdout(&ns.kubectl(&["get", "pvc", "data-db-0", "-o", "jsonpath={.status.phase}"]))
            == "Bound"
    });
    ns.kubectl_ok(&["scale", "statefulset", "db", "--replicas=1"]);
    let ip = etcd_ready(&ns);
    let range = etcd(
        &ip,
        "kv/range",
        serde_json::json!({"key": b64("orders/"), "range_end": b64("orders0")}),
    )
    .expect("range");
    let decode = |v: &serde_json::Value| {
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap())
                .unwrap(),
        )
        .unwrap()
    };
    let found: Vec<(String, String)> = range["kvs"]
        .as_array()
        .map(|kvs| {
            kvs.iter()
                .map(|kv| (decode(&kv["key"]), decode(&kv["value"])))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(found, keys, "the database lost data");
}
