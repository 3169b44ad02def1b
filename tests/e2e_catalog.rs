//! End-to-end: the switches of the data-holding catalog (`catalog/data-kinds.yaml`), on the
//! published CRDs of CloudNativePG's `Cluster` and ACK's S3 `Bucket` (hack/build-tools.sh copies
//! them from the projects' Go modules). An agent with `edit` on those kinds may not turn a
//! protected database's switches dangerous (the Cluster's volume snapshots made its own, so they
//! go with it; the bucket's deletion policy moved from retain to delete), through the
//! configuration agentguard writes. A harmless change goes through, a human may make the
//! change, and a human's approval lets the agent make it. The chart's `default-databases`
//! policy protects every served catalog kind, and one whose CRD is installed later within
//! seconds. Requires `hack/cluster.sh up`; fails (never skips) without a control plane.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{Cluster, Guard, TestNamespace, stderr, stdout, wait_until};

fn install_catalog_crds(cluster: &Cluster) {
    let out = Command::new(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("hack/build-tools.sh"))
        .arg("--print-catalog-crds")
        .output()
        .expect("run hack/build-tools.sh --print-catalog-crds");
    let dir = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    assert!(
        dir.join("s3.services.k8s.aws_buckets.yaml").exists(),
        "no catalog CRDs in {}: run hack/build-tools.sh",
        dir.display()
    );
    cluster.kubectl_ok(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        dir.to_str().unwrap(),
    ]);
    cluster.wait_established(&[
        "crd/clusters.postgresql.cnpg.io",
        "crd/buckets.s3.services.k8s.aws",
    ]);
}

/// A human approves `object` for 10 minutes with `kubectl agentguard approve`.
fn approve(cluster: &Cluster, ns: &str, object: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_kubectl-agentguard"))
        .arg("--kubeconfig")
        .arg(&cluster.kubeconfig)
        .args(["-n", ns, "approve", object, "--for", "10m"])
        .env_remove("KUBECONFIG")
        .output()
        .expect("run kubectl-agentguard");
    assert!(out.status.success(), "approve {object}: {}", stderr(&out));
}

#[test]
fn an_agent_cannot_turn_a_protected_databases_switches_dangerous() {
    let cluster = Cluster::connect();
    install_catalog_crds(&cluster);
    let ns = TestNamespace::create(&cluster, "catalog");
    let agent = ns.agent("cursor-agent");
    ns.grant("cursor-agent", "clusters.postgresql.cnpg.io");
    ns.grant("cursor-agent", "buckets.s3.services.k8s.aws");
    cluster.apply(&format!(
        "apiVersion: agentguard.dev/v1alpha1\nkind: ProtectedResource\nmetadata:\n  name: databases\n  namespace: {ns}\nspec:\n  targets:\n\
         \x20   - {{apiGroups: [postgresql.cnpg.io], kinds: [Cluster]}}\n\
         \x20   - {{apiGroups: [s3.services.k8s.aws], kinds: [Bucket]}}\n---\n\
         apiVersion: postgresql.cnpg.io/v1\nkind: Cluster\nmetadata:\n  name: orders\n  namespace: {ns}\nspec:\n  instances: 1\n  storage: {{size: 1Gi}}\n---\n\
         apiVersion: s3.services.k8s.aws/v1alpha1\nkind: Bucket\nmetadata:\n  name: assets\n  namespace: {ns}\n  annotations:\n    services.k8s.aws/deletion-policy: retain\nspec:\n  name: assets\n",
        ns = ns.name
    ));
    let _guard = Guard::start(&ns, &agent);
    ns.wait_policy_ready("databases");

    // The Cluster's volume snapshots owned by the Cluster: deleting it would take them too.
    let owned_snapshots = [
        "patch",
        "clusters.postgresql.cnpg.io",
        "orders",
        "--type=merge",
        "-p",
        r#"{"spec":{"backup":{"volumeSnapshot":{"snapshotOwnerReference":"cluster"}}}}"#,
    ];
    let out = ns.kubectl_as(&agent, &owned_snapshots);
    assert!(!out.status.success(), "the agent's patch went through");
    assert!(
        stderr(&out).contains(&format!(
            "agentguard: DENIED update (spec.backup.volumeSnapshot.snapshotOwnerReference: cluster) of Cluster {}/orders by {agent}.",
            ns.name
        )),
        "{}",
        stderr(&out)
    );
    // The bucket's deletion policy from retain to delete: ACK would delete the bucket itself.
    let delete_policy = [
        "annotate",
        "--overwrite",
        "buckets.s3.services.k8s.aws",
        "assets",
        "services.k8s.aws/deletion-policy=delete",
    ];
    let out = ns.kubectl_as(&agent, &delete_policy);
    assert!(!out.status.success(), "the agent's annotation went through");
    assert!(
        stderr(&out).contains("agentguard: DENIED update (annotation services.k8s.aws/deletion-policy: delete) of Bucket"),
        "{}",
        stderr(&out)
    );
    // A change that leaves every switch as it was goes through.
    let out = ns.kubectl_as(
        &agent,
        &[
            "label",
            "clusters.postgresql.cnpg.io",
            "orders",
            "team=payments",
        ],
    );
    assert!(out.status.success(), "a harmless label: {}", stderr(&out));

    // A human's approval of the bucket lets the agent change it.
    approve(&cluster, &ns.name, "buckets.s3.services.k8s.aws/assets");
    let out = ns.kubectl_as(&agent, &delete_policy);
    assert!(out.status.success(), "approved: {}", stderr(&out));
    // A human may make the change without one.
    let out = ns.kubectl(&owned_snapshots);
    assert!(out.status.success(), "the human's patch: {}", stderr(&out));
    // The protected objects are still there.
    for object in [
        "clusters.postgresql.cnpg.io/orders",
        "buckets.s3.services.k8s.aws/assets",
    ] {
        ns.kubectl_ok(&["get", object]);
    }
}

/// The chart's `default-databases` ClusterProtectedResource as `helm template` renders it, named
/// after the test's namespace and narrowed to it (`namespaces: [<ns>]`), so the tests running
/// beside this one see no new protection.
fn default_databases_policy(cluster: &Cluster, ns: &str) -> String {
    let out = Command::new(cluster.tools.join("helm"))
        .args([
            "template",
            "agentguard",
            concat!(env!("CARGO_MANIFEST_DIR"), "/charts/agentguard"),
            "--kube-version",
            "1.36.3",
            "--show-only",
            "templates/default-protection.yaml",
        ])
        .output()
        .expect("run helm");
    assert!(out.status.success(), "helm template: {}", stderr(&out));
    let rendered = stdout(&out);
    let policy = rendered
        .split("\n---\n")
        .find(|doc| doc.contains("name: default-databases"))
        .expect("the chart renders default-databases");
    assert!(policy.contains("- catalog:"), "{policy}");
    policy
        .replace("name: default-databases", &format!("name: {ns}-databases"))
        .replace(
            "    - catalog:",
            &format!("    - namespaces: [{ns}]\n      catalog:"),
        )
}

#[test]
fn the_default_databases_policy_protects_served_catalog_kinds_and_new_ones_within_seconds() {
    let cluster = Cluster::connect();
    install_catalog_crds(&cluster);
    let ns = TestNamespace::create(&cluster, "catalog-default");
    let agent = ns.agent("cursor-agent");
    for resource in ["clusters.postgresql.cnpg.io", "buckets.s3.services.k8s.aws"] {
        ns.grant("cursor-agent", resource);
    }
    let policy = format!("{}-databases", ns.name);
    cluster.apply(&default_databases_policy(&cluster, &ns.name));
    ns.owns_cluster_object(&format!("clusterprotectedresource/{policy}"));
    cluster.apply(&format!(
        "apiVersion: postgresql.cnpg.io/v1\nkind: Cluster\nmetadata:\n  name: orders\n  namespace: {ns}\nspec:\n  instances: 1\n  storage: {{size: 1Gi}}\n---\n\
         apiVersion: s3.services.k8s.aws/v1alpha1\nkind: Bucket\nmetadata:\n  name: assets\n  namespace: {ns}\nspec:\n  name: assets\n",
        ns = ns.name
    ));
    let _guard = Guard::start(&ns, &agent);
    // In force, and says the catalog kinds this cluster does not serve are no problem.
    wait_until(
        Duration::from_secs(40),
        "the default-databases policy Ready",
        || {
            let get = |field: &str| {
                stdout(&cluster.kubectl(&[
                    "get",
                    "clusterprotectedresource",
                    &policy,
                    "-o",
                    &format!("jsonpath={{.status.conditions[?(@.type==\"Ready\")].{field}}}"),
                ]))
            };
            get("status") == "True" && get("message").contains("catalog kinds not served")
        },
    );
    for (resource, name) in [
        ("clusters.postgresql.cnpg.io", "orders"),
        ("buckets.s3.services.k8s.aws", "assets"),
    ] {
        let out = ns.kubectl_as(&agent, &["delete", resource, name, "--dry-run=server"]);
        assert!(
            stderr(&out).contains(&format!("Protected by ClusterProtectedResource {policy}")),
            "{resource}: {}",
            stderr(&out)
        );
    }

    // A catalog kind whose CRD is installed now (Config Connector's SQLInstance, written by
    // hand with the published group, kind and version): protected within seconds.
    let crd = "sqlinstances.sql.cnrm.cloud.google.com";
    ns.owns_cluster_object(&format!("crd/{crd}"));
    let installed = Instant::now();
    cluster.apply(
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: sqlinstances.sql.cnrm.cloud.google.com\n\
         spec:\n  group: sql.cnrm.cloud.google.com\n  scope: Namespaced\n  names: {plural: sqlinstances, singular: sqlinstance, kind: SQLInstance}\n\
         \x20 versions:\n  - name: v1beta1\n    served: true\n    storage: true\n    schema:\n      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}\n",
    );
    cluster.wait_established(&[&format!("crd/{crd}")]);
    ns.grant("cursor-agent", crd);
    cluster.apply(&format!(
        "apiVersion: sql.cnrm.cloud.google.com/v1beta1\nkind: SQLInstance\nmetadata:\n  name: ledger\n  namespace: {}\nspec:\n  databaseVersion: POSTGRES_16\n",
        ns.name
    ));
    wait_until(Duration::from_secs(45), "the new kind protected", || {
        let out = ns.kubectl_as(&agent, &["delete", crd, "ledger", "--dry-run=server"]);
        stderr(&out).contains(&format!("Protected by ClusterProtectedResource {policy}"))
    });
    eprintln!(
        "SQLInstance protected {:.1}s after its CRD was installed",
        installed.elapsed().as_secs_f64()
    );

    // A human's approval lets the agent delete the Cluster.
    approve(&cluster, &ns.name, "clusters.postgresql.cnpg.io/orders");
    let out = ns.kubectl_as(&agent, &["delete", "clusters.postgresql.cnpg.io", "orders"]);
    assert!(out.status.success(), "approved delete: {}", stderr(&out));
}
