//! End-to-end: deletion by proxy. An agent changes a field, label or annotation after which
//! another component (a controller, Helm, Argo CD, Flux, Kyverno, a Crossplane provider,
//! Velero) deletes protected data under its own name. Each row of `src/policy/proxy.rs` whose
//! kind exists in the test control plane is tried here by an agent against the real API
//! server (the CSI snapshot and Velero CRDs come from those projects' Go modules, see
//! `hack/build-tools.sh`), and must be refused while the data stays.
//! Requires `hack/cluster.sh up`; fails (never skips) when the control plane is absent.

mod support;

use std::time::Duration;

use support::{Cluster, Guard, TestNamespace, in_secs, stderr, stdout, wait_until};

const ADMIN: &str = "agentguard-admin";

/// `kubectl patch --type=merge` as `who`; returns (succeeded, stdout and stderr).
fn patch(ns: &TestNamespace<'_>, who: &str, object: &str, body: &str) -> (bool, String) {
    let out = ns.kubectl_as(who, &["patch", object, "--type=merge", "-p", body]);
    (out.status.success(), stdout(&out) + &stderr(&out))
}

fn assert_denied(result: (bool, String), action: &str, what: &str) {
    let (ok, err) = result;
    assert!(!ok, "{what}: the agent's change was accepted: {err}");
    assert!(
        err.contains(&format!("agentguard: DENIED {action}")),
        "{what}: {err}"
    );
    assert!(
        err.contains("Stop and ask a human to approve"),
        "{what}: {err}"
    );
}

#[test]
fn gitops_and_cleanup_metadata_on_a_protected_claim_need_approval() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "proxy-meta");
    let agent = ns.agent("cursor-agent");
    // The API server's matchConditions (in the configuration agentguard writes) must let these
    // updates through to the webhook.
    let _guard = Guard::start(&ns, &agent);
    ns.pvc("data", true);
    ns.kubectl_ok(&[
        "annotate",
        "pvc",
        "data",
        "helm.sh/resource-policy=keep",
        "argocd.argoproj.io/sync-options=Prune=false,Delete=false",
        "kustomize.toolkit.fluxcd.io/prune=disabled",
    ]);
    let rows = [
        (
            r#"{"metadata":{"annotations":{"helm.sh/resource-policy":null}}}"#,
            "update (annotation helm.sh/resource-policy: keep removed)",
        ),
        (
            r#"{"metadata":{"annotations":{"argocd.argoproj.io/sync-options":"Delete=false"}}}"#,
            "update (annotation argocd.argoproj.io/sync-options: Prune=false/Delete=false removed)",
        ),
        (
            r#"{"metadata":{"annotations":{"kustomize.toolkit.fluxcd.io/prune":"enabled"}}}"#,
            "update (annotation kustomize.toolkit.fluxcd.io/prune: disabled removed)",
        ),
        (
            r#"{"metadata":{"labels":{"cleanup.kyverno.io/ttl":"1m"}}}"#,
            "update (label cleanup.kyverno.io/ttl)",
        ),
    ];
    for (body, action) in rows {
        assert_denied(patch(&ns, &agent, "pvc/data", body), action, body);
    }
    let annotations = ns.kubectl_ok(&[
        "get",
        "pvc",
        "data",
        "-o",
        "jsonpath={.metadata.annotations}",
    ]);
    assert!(
        annotations.contains("\"helm.sh/resource-policy\":\"keep\""),
        "{annotations}"
    );
    assert!(
        annotations.contains("Prune=false,Delete=false"),
        "{annotations}"
    );
    assert!(
        annotations.contains("\"kustomize.toolkit.fluxcd.io/prune\":\"disabled\""),
        "{annotations}"
    );

    // Unrelated edits still work, and a human's approval lets the agent make the change.
    let (ok, err) = patch(
        &ns,
        &agent,
        "pvc/data",
        r#"{"metadata":{"labels":{"team":"db"}}}"#,
    );
    assert!(ok, "an unrelated label was refused: {err}");
    ns.kubectl_ok(&[
        "annotate",
        "pvc",
        "data",
        &format!("agentguard.dev/approved-by={ADMIN}"),
        &format!("agentguard.dev/approved-until={}", in_secs(600)),
    ]);
    let (ok, err) = patch(
        &ns,
        &agent,
        "pvc/data",
        r#"{"metadata":{"annotations":{"helm.sh/resource-policy":null}}}"#,
    );
    assert!(ok, "the approved change was refused: {err}");
}

#[test]
fn removing_finalizers_from_a_terminating_protected_claim_is_denied() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "proxy-final");
    let agent = ns.agent("cursor-agent");
    let _guard = Guard::start(&ns, &agent);
    ns.pvc("data", true);
    ns.kubectl_ok(&[
        "patch",
        "pvc",
        "data",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":["example.com/backup-first"]}}"#,
    ]);
    // A human deletes it; a backup controller's finalizer holds it until the backup is done.
    ns.kubectl_ok(&["delete", "pvc", "data", "--wait=false"]);
    assert!(!ns.pvc_intact("data"), "the claim should be terminating");
    assert_denied(
        patch(
            &ns,
            &agent,
            "pvc/data",
            r#"{"metadata":{"finalizers":null}}"#,
        ),
        "update (finalizer removed while terminating)",
        "finalizers",
    );
    let finalizers = ns.kubectl_ok(&[
        "get",
        "pvc",
        "data",
        "-o",
        "jsonpath={.metadata.finalizers}",
    ]);
    assert!(
        finalizers.contains("example.com/backup-first"),
        "{finalizers}"
    );
    // The human finishes it.
    ns.kubectl_ok(&[
        "patch",
        "pvc",
        "data",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers/0"}]"#,
    ]);
}

#[test]
fn statefulset_scale_down_that_deletes_protected_claims_is_denied() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "proxy-sts");
    let agent = ns.agent("cursor-agent");
    let _guard = Guard::start(&ns, &agent);
    ns.pvc("data-db-1", true);
    let sts = |replicas: u32, when_scaled: &str| {
        format!(
            "apiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: db\n  namespace: {}\nspec:\n  replicas: {replicas}\n  serviceName: db\n  \
             selector: {{matchLabels: {{app: db}}}}\n  persistentVolumeClaimRetentionPolicy: {{whenDeleted: Retain, whenScaled: {when_scaled}}}\n  \
             template:\n    metadata: {{labels: {{app: db}}}}\n    spec: {{containers: [{{name: db, image: postgres}}]}}\n  \
             volumeClaimTemplates:\n    - metadata: {{name: data}}\n      spec: {{accessModes: [ReadWriteOnce], resources: {{requests: {{storage: 1Gi}}}}}}\n",
            ns.name
        )
    };
    cluster.apply(&sts(2, "Retain"));
    assert_denied(
        patch(
            &ns,
            &agent,
            "statefulset/db",
            r#"{"spec":{"persistentVolumeClaimRetentionPolicy":{"whenScaled":"Delete"}}}"#,
        ),
        "update (persistentVolumeClaimRetentionPolicy.whenScaled: Delete)",
        "whenScaled",
    );
    // A human had set whenScaled: Delete; the agent's scale-down would delete data-db-1.
    cluster.apply(&sts(2, "Delete"));
    assert_denied(
        patch(&ns, &agent, "statefulset/db", r#"{"spec":{"replicas":1}}"#),
        "update (persistentVolumeClaimRetentionPolicy.whenScaled: Delete)",
        "scale-down",
    );
    let replicas = ns.kubectl_ok(&[
        "get",
        "statefulset",
        "db",
        "-o",
        "jsonpath={.spec.replicas}",
    ]);
    assert_eq!(replicas, "2");
    // Scaling up is fine.
    let (ok, err) = patch(&ns, &agent, "statefulset/db", r#"{"spec":{"replicas":3}}"#);
    assert!(ok, "scale-up refused: {err}");
}

#[test]
fn snapshot_deletion_policies_of_protected_snapshots_stay_retain() {
    let cluster = Cluster::connect();
    cluster.install_third_party_crds();
    let ns = TestNamespace::create(&cluster, "proxy-snap");
    let agent = ns.agent("cursor-agent");
    ns.grant_cluster(
        "cursor-agent",
        "get,patch,update",
        "volumesnapshotcontents.snapshot.storage.k8s.io,volumesnapshotclasses.snapshot.storage.k8s.io",
    );
    let guard = Guard::start(&ns, &agent);
    guard.wait_routed("volumesnapshotcontents");
    guard.wait_routed("volumesnapshotclasses");
    let content = format!("snapcontent-{}", ns.name);
    let class = format!("snapclass-{}", ns.name);
    cluster.apply(&format!(
        "apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshotContent\nmetadata:\n  name: {content}\n  annotations: {{agentguard.dev/protected: \"true\"}}\n\
         spec:\n  deletionPolicy: Retain\n  driver: disk.example.com\n  source: {{snapshotHandle: snap-{content}}}\n  \
         volumeSnapshotRef: {{namespace: {ns}, name: nightly}}\n---\n\
         apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshotClass\nmetadata:\n  name: {class}\n  annotations: {{agentguard.dev/protected: \"true\"}}\n\
         driver: disk.example.com\ndeletionPolicy: Retain\n",
        ns = ns.name
    ));
    ns.owns_cluster_object(&format!("volumesnapshotcontent/{content}"));
    ns.owns_cluster_object(&format!("volumesnapshotclass/{class}"));
    assert_denied(
        patch(
            &ns,
            &agent,
            &format!("volumesnapshotcontent/{content}"),
            r#"{"spec":{"deletionPolicy":"Delete"}}"#,
        ),
        "update (spec.deletionPolicy: Delete) of VolumeSnapshotContent",
        "VolumeSnapshotContent",
    );
    assert_denied(
        patch(
            &ns,
            &agent,
            &format!("volumesnapshotclass/{class}"),
            r#"{"deletionPolicy":"Delete"}"#,
        ),
        "update (deletionPolicy: Delete) of VolumeSnapshotClass",
        "VolumeSnapshotClass",
    );
    let policy = cluster.kubectl_ok(&[
        "get",
        "volumesnapshotcontent",
        &content,
        "-o",
        "jsonpath={.spec.deletionPolicy}",
    ]);
    assert_eq!(policy, "Retain");
}

#[test]
fn velero_delete_backup_request_for_a_protected_backup_is_denied() {
    let cluster = Cluster::connect();
    cluster.install_third_party_crds();
    let ns = TestNamespace::create(&cluster, "proxy-velero");
    let agent = ns.agent("cursor-agent");
    ns.grant("cursor-agent", "deletebackuprequests.velero.io");
    let _guard = Guard::start(&ns, &agent);
    cluster.apply(&format!(
        "apiVersion: agentguard.dev/v1alpha1\nkind: ProtectedResource\nmetadata:\n  name: backups\n  namespace: {ns}\n\
         spec:\n  mode: Enforce\n  targets:\n    - apiGroups: [velero.io]\n      kinds: [Backup]\n---\n\
         apiVersion: velero.io/v1\nkind: Backup\nmetadata:\n  name: nightly\n  namespace: {ns}\nspec:\n  includedNamespaces: [\"*\"]\n",
        ns = ns.name
    ));
    let request = |backup: &str| {
        format!(
            "apiVersion: velero.io/v1\nkind: DeleteBackupRequest\nmetadata:\n  generateName: delete-\n  namespace: {}\nspec:\n  backupName: {backup}\n",
            ns.name
        )
    };
    // The operator adds DeleteBackupRequests to the webhook's rules once it sees the policy on
    // Backups, and the object index learns of the Backup from its watch: probe with server-side
    // dry runs (judged like the real request, but never stored) until one is refused.
    wait_until(
        Duration::from_secs(30),
        "the DeleteBackupRequest to be refused",
        || {
            let out = ns.cluster.kubectl_stdin(
                &[
                    &format!("--as={agent}"),
                    "create",
                    "--dry-run=server",
                    "-f",
                    "-",
                ],
                &request("nightly"),
            );
            !out.status.success()
        },
    );
    let out = ns.cluster.kubectl_stdin(
        &[&format!("--as={agent}"), "create", "-f", "-"],
        &request("nightly"),
    );
    assert!(!out.status.success(), "the request was created");
    let err = stderr(&out);
    assert!(
        err.contains("agentguard: DENIED create (DeleteBackupRequest)"),
        "{err}"
    );
    assert!(
        err.contains(&format!("through Backup {}/nightly", ns.name))
            || err.contains(&format!("Backup {}/nightly", ns.name)),
        "{err}"
    );
    let listed = stdout(&ns.kubectl(&["get", "deletebackuprequests", "-o", "name"]));
    assert!(listed.trim().is_empty(), "a request was created: {listed}");
    // A request for a backup nothing protects is the agent's business.
    let out = ns.cluster.kubectl_stdin(
        &[&format!("--as={agent}"), "create", "-f", "-"],
        &request("scratch"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn crossplane_style_managed_resources_keep_their_deletion_protection() {
    // Crossplane's modules are not served here, so this CRD has the shape of a Crossplane
    // managed resource (spec.deletionPolicy, spec.managementPolicies, spec.forProvider): the
    // rules act on those fields whatever the provider.
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "proxy-xp");
    let agent = ns.agent("cursor-agent");
    let group = ns.crd("instances", "Instance");
    let plural = format!("instances.{group}");
    ns.grant("cursor-agent", &plural);
    let _guard = Guard::start(&ns, &agent);
    cluster.apply(&format!(
        "apiVersion: agentguard.dev/v1alpha1\nkind: ProtectedResource\nmetadata:\n  name: databases\n  namespace: {ns}\n\
         spec:\n  mode: Enforce\n  targets:\n    - apiGroups: [{group}]\n      kinds: [Instance]\n---\n\
         apiVersion: {group}/v1\nkind: Instance\nmetadata:\n  name: orders\n  namespace: {ns}\n\
         spec:\n  deletionPolicy: Orphan\n  managementPolicies: [Observe, Create, Update, LateInitialize]\n  forProvider: {{engine: postgres}}\n",
        ns = ns.name
    ));
    wait_until(Duration::from_secs(30), "the policy in force", || {
        let probe = ns.kubectl_as(
            &agent,
            &["delete", &format!("{plural}/orders"), "--dry-run=server"],
        );
        stderr(&probe).contains("ProtectedResource")
    });
    assert_denied(
        patch(
            &ns,
            &agent,
            &format!("{plural}/orders"),
            r#"{"spec":{"deletionPolicy":"Delete"}}"#,
        ),
        "update (spec.deletionPolicy: Delete)",
        "deletionPolicy",
    );
    assert_denied(
        patch(
            &ns,
            &agent,
            &format!("{plural}/orders"),
            r#"{"spec":{"managementPolicies":["*"]}}"#,
        ),
        "update (spec.managementPolicies: Delete allowed)",
        "managementPolicies",
    );
    let spec = ns.kubectl_ok(&["get", &format!("{plural}/orders"), "-o", "jsonpath={.spec}"]);
    assert!(spec.contains("\"deletionPolicy\":\"Orphan\""), "{spec}");
}
