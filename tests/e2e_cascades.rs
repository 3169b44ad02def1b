//! End-to-end: cascade roots. Agents rarely delete the volume itself; they delete what owns it
//! and let Kubernetes' controllers (never restricted) finish the job. Each root is denied to an
//! agent, and a human's cascade still completes with kube-controller-manager running.
//! Requires `hack/cluster.sh up`; fails (never skips) when the control plane is absent.

mod support;

use std::time::Duration;

use support::{Cluster, Guard, TestNamespace, stderr, stdout, wait_until};

fn uid(ns: &TestNamespace<'_>, what: &str) -> String {
    ns.kubectl_ok(&["get", what, "-o", "jsonpath={.metadata.uid}"])
}

#[test]
fn namespace_with_protected_data_is_denied_and_a_humans_deletion_completes() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "nsroot");
    let agent = ns.agent("cursor-agent");
    ns.grant_cluster("cursor-agent", "delete", "namespaces");
    let _guard = Guard::start(&ns, &agent);
    ns.pvc("data", true);

    let out = cluster.kubectl(&[&format!("--as={agent}"), "delete", "namespace", &ns.name]);
    assert!(
        !out.status.success(),
        "the agent deleted a namespace holding protected data"
    );
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "agentguard: DENIED delete of Namespace {ns} by {agent}.",
            ns = ns.name
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("through PersistentVolumeClaim {}/", ns.name)),
        "{err}"
    );
    assert!(ns.pvc_intact("data"));

    // A human deletes it: the namespace controller removes the claims under its own name, and
    // must not be blocked half way.
    ns.kubectl_ok(&["get", "pvc", "data"]);
    cluster.kubectl_ok(&["delete", "namespace", &ns.name, "--wait=false"]);
    wait_until(Duration::from_secs(90), "the namespace to be gone", || {
        stdout(&cluster.kubectl(&[
            "get",
            "namespace",
            &ns.name,
            "--ignore-not-found",
            "-o",
            "name",
        ]))
        .trim()
        .is_empty()
    });
}

#[test]
fn owner_of_a_protected_claim_is_denied_unless_orphaning() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "owner");
    let agent = ns.agent("cursor-agent");
    let _guard = Guard::start(&ns, &agent);
    ns.kubectl_ok(&["create", "configmap", "orders-db"]);
    let owner = uid(&ns, "configmap/orders-db");
    cluster.apply(&format!(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: data\n  namespace: {}\n  annotations: {{agentguard.dev/protected: \"true\"}}\n  \
         ownerReferences: [{{apiVersion: v1, kind: ConfigMap, name: orders-db, uid: {owner}}}]\n\
         spec: {{accessModes: [ReadWriteOnce], resources: {{requests: {{storage: 1Gi}}}}}}\n",
        ns.name
    ));
    // The index learns the owner edge from the claim's watch.
    wait_until(Duration::from_secs(30), "owner edge indexed", || {
        stderr(&ns.kubectl_as(
            &agent,
            &["delete", "configmap", "orders-db", "--dry-run=server"],
        ))
        .contains("agentguard: DENIED")
    });
    let out = ns.kubectl_as(&agent, &["delete", "configmap", "orders-db"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("the garbage collector would then delete its dependent"),
        "{err}"
    );
    assert!(
        err.contains(&format!("through PersistentVolumeClaim {}/data", ns.name)),
        "{err}"
    );

    // Orphaning leaves the claim in place, so it is allowed.
    let out = ns.kubectl_as(
        &agent,
        &["delete", "configmap", "orders-db", "--cascade=orphan"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    wait_until(
        Duration::from_secs(30),
        "the garbage collector to orphan the claim",
        || {
            ns.kubectl_ok(&[
                "get",
                "pvc",
                "data",
                "-o",
                "jsonpath={.metadata.ownerReferences}",
            ])
            .trim()
            .is_empty()
        },
    );
    assert!(ns.pvc_intact("data"));
}

#[test]
fn statefulset_that_would_delete_protected_claims_is_denied() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "sts");
    let agent = ns.agent("cursor-agent");
    let _guard = Guard::start(&ns, &agent);
    ns.pvc("data-db-0", true);
    let sts = |when_deleted: &str| {
        format!(
            "apiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: db\n  namespace: {}\nspec:\n  replicas: 0\n  serviceName: db\n  \
             selector: {{matchLabels: {{app: db}}}}\n  persistentVolumeClaimRetentionPolicy: {{whenDeleted: {when_deleted}, whenScaled: Retain}}\n  \
             template:\n    metadata: {{labels: {{app: db}}}}\n    spec: {{containers: [{{name: db, image: postgres}}]}}\n  \
             volumeClaimTemplates:\n    - metadata: {{name: data}}\n      spec: {{accessModes: [ReadWriteOnce], resources: {{requests: {{storage: 1Gi}}}}}}\n",
            ns.name
        )
    };
    cluster.apply(&sts("Retain"));
    // Switching retention to Delete is how an agent would arrange the deletion for later.
    let out = ns.kubectl_as(
        &agent,
        &[
            "patch",
            "statefulset",
            "db",
            "--type=merge",
            "-p",
            r#"{"spec":{"persistentVolumeClaimRetentionPolicy":{"whenDeleted":"Delete"}}}"#,
        ],
    );
    assert!(
        !out.status.success(),
        "the agent switched retention to Delete"
    );
    assert!(
        stderr(&out).contains("update (persistentVolumeClaimRetentionPolicy.whenDeleted: Delete)"),
        "{}",
        stderr(&out)
    );

    // A human set it to Delete; now deleting the StatefulSet would delete data-db-0.
    cluster.apply(&sts("Delete"));
    let out = ns.kubectl_as(&agent, &["delete", "statefulset", "db"]);
    assert!(!out.status.success(), "the agent deleted the StatefulSet");
    let err = stderr(&out);
    assert!(
        err.contains("its PVC retention policy (whenDeleted: Delete) deletes"),
        "{err}"
    );
    assert!(
        err.contains(&format!("PersistentVolumeClaim {}/data-db-0", ns.name)),
        "{err}"
    );
    assert!(ns.pvc_intact("data-db-0"));
}

#[test]
fn crd_whose_instances_are_protected_is_denied() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "crd");
    let agent = ns.agent("cursor-agent");
    ns.grant_cluster("cursor-agent", "delete", "customresourcedefinitions");
    let _guard = Guard::start(&ns, &agent);
    let group = ns.crd("databases", "Database");
    cluster.apply(&format!(
        "apiVersion: agentguard.dev/v1alpha1\nkind: ProtectedResource\nmetadata:\n  name: databases\n  namespace: {ns}\nspec:\n  targets: [{{apiGroups: [{group}], kinds: [Database]}}]\n---\n\
         apiVersion: {group}/v1\nkind: Database\nmetadata:\n  name: orders\n  namespace: {ns}\n",
        ns = ns.name
    ));
    ns.grant("cursor-agent", &format!("databases.{group}"));
    // A new policy on a CRD kind starts protecting within seconds.
    wait_until(
        Duration::from_secs(30),
        "the instance to be protected",
        || {
            stderr(&ns.kubectl_as(
                &agent,
                &[
                    "delete",
                    &format!("databases.{group}"),
                    "orders",
                    "--dry-run=server",
                ],
            ))
            .contains("agentguard: DENIED")
        },
    );
    // Ready means its instances are indexed: until then the CRD's deletion is refused as
    // "still loading" rather than for what it would take.
    ns.wait_policy_ready("databases");
    let out = cluster.kubectl(&[
        &format!("--as={agent}"),
        "delete",
        "crd",
        &format!("databases.{group}"),
    ]);
    assert!(!out.status.success(), "the agent deleted the CRD");
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "through Database {}/orders: its instances include it",
            ns.name
        )),
        "{err}"
    );
    assert!(
        cluster
            .kubectl(&["get", "crd", &format!("databases.{group}")])
            .status
            .success()
    );
}

#[test]
fn reclaim_policy_of_a_protected_claims_volume_cannot_be_set_to_delete() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "reclaim");
    let agent = ns.agent("cursor-agent");
    ns.grant_cluster("cursor-agent", "get,patch,update", "persistentvolumes");
    let _guard = Guard::start(&ns, &agent);
    let pv = format!("pv-{}", ns.name);
    cluster.apply(&format!(
        "apiVersion: v1\nkind: PersistentVolume\nmetadata:\n  name: {pv}\nspec:\n  capacity: {{storage: 1Gi}}\n  accessModes: [ReadWriteOnce]\n  \
         persistentVolumeReclaimPolicy: Retain\n  hostPath: {{path: /tmp/{pv}}}\n  claimRef: {{namespace: {ns}, name: data}}\n",
        ns = ns.name
    ));
    ns.owns_cluster_object(&format!("pv/{pv}"));
    ns.pvc("data", true);
    let out = cluster.kubectl(&[
        &format!("--as={agent}"),
        "patch",
        "pv",
        &pv,
        "--type=merge",
        "-p",
        r#"{"spec":{"persistentVolumeReclaimPolicy":"Delete"}}"#,
    ]);
    assert!(
        !out.status.success(),
        "the agent set reclaimPolicy Delete on a protected claim's volume"
    );
    let err = stderr(&out);
    assert!(err.contains(&format!("agentguard: DENIED update (persistentVolumeReclaimPolicy: Delete) of PersistentVolume {pv}")), "{err}");
    assert!(
        err.contains(&format!("through PersistentVolumeClaim {}/data", ns.name)),
        "{err}"
    );
    let policy = cluster.kubectl_ok(&[
        "get",
        "pv",
        &pv,
        "-o",
        "jsonpath={.spec.persistentVolumeReclaimPolicy}",
    ]);
    assert_eq!(policy, "Retain");
}

#[test]
fn protected_claims_keep_their_volume_unless_the_policy_opts_out() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "retain");
    let agent = ns.agent("cursor-agent");
    let _guard = Guard::start(&ns, &agent);
    cluster.apply(&format!(
        "apiVersion: agentguard.dev/v1alpha1\nkind: ProtectedResource\nmetadata:\n  name: scratch\n  namespace: {}\nspec:\n  \
         retainVolumes: false\n  targets: [{{apiGroups: [\"\"], kinds: [PersistentVolumeClaim], names: [\"scratch\"]}}]\n",
        ns.name
    ));
    let pv = |claim: &str| {
        let name = format!("pv-{}-{claim}", ns.name);
        cluster.apply(&format!(
            "apiVersion: v1\nkind: PersistentVolume\nmetadata:\n  name: {name}\nspec:\n  capacity: {{storage: 1Gi}}\n  accessModes: [ReadWriteOnce]\n  \
             persistentVolumeReclaimPolicy: Delete\n  hostPath: {{path: /tmp/{name}}}\n  claimRef: {{namespace: {ns}, name: {claim}}}\n",
            ns = ns.name
        ));
        ns.owns_cluster_object(&format!("pv/{name}"));
        name
    };
    let data_pv = pv("data");
    let scratch_pv = pv("scratch");
    ns.pvc("data", true);
    ns.pvc("scratch", false);
    let reclaim = |name: &str| {
        cluster.kubectl_ok(&[
            "get",
            "pv",
            name,
            "-o",
            "jsonpath={.spec.persistentVolumeReclaimPolicy}",
        ])
    };
    wait_until(
        Duration::from_secs(30),
        "the protected claim's volume to be pinned to Retain",
        || reclaim(&data_pv) == "Retain",
    );
    // The policy protecting "scratch" opted out: its volume keeps Delete. (Pinning runs every
    // few seconds; the first volume was pinned, so this one had its chance too.)
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(reclaim(&scratch_pv), "Delete");
}

/// The index keeps only the labels policies read. A policy that selects by a label no policy
/// read before makes agentguard list every watched kind again, so a claim indexed before the
/// policy existed is counted (and found under cascade roots) by that label.
#[test]
fn a_policy_reading_a_new_label_protects_what_was_indexed_before_it() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "newlabel");
    let agent = ns.agent("cursor-agent");
    let _guard = Guard::start(&ns, &agent);
    ns.pvc("orders", false);
    ns.pvc("scratch", false);
    ns.kubectl_ok(&["label", "pvc", "orders", "tier=gold"]);
    // Indexed before any policy reads `tier`.
    std::thread::sleep(Duration::from_secs(2));

    cluster.apply(&format!(
        "apiVersion: agentguard.dev/v1alpha1\nkind: ProtectedResource\nmetadata:\n  name: gold\n  namespace: {ns}\n\
         spec:\n  targets:\n    - apiGroups: [\"\"]\n      kinds: [PersistentVolumeClaim]\n      selector:\n        matchLabels:\n          tier: gold\n",
        ns = ns.name
    ));
    let status = || {
        ns.kubectl_ok(&[
            "get",
            "protectedresource",
            "gold",
            "-o",
            "jsonpath={.status.protectedObjects}/{.status.conditions[?(@.type==\"Ready\")].status}",
        ])
    };
    let mut last = String::new();
    wait_until(
        Duration::from_secs(40),
        "the gold policy to count the claim indexed before it",
        || {
            last = status();
            last == "1/True"
        },
    );
    // A claim labelled afterwards is counted from its watch event.
    ns.kubectl_ok(&["label", "pvc", "scratch", "tier=gold"]);
    wait_until(
        Duration::from_secs(40),
        "the gold policy to count both",
        || status() == "2/True",
    );
}
