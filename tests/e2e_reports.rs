//! End-to-end: agentguard writes `wgpolicyk8s.io/v1alpha2` PolicyReports (CRDs as Kyverno
//! ships them) that Policy Reporter and Kyverno's tooling read: one per namespace with a
//! result per protected object (which policy, whether its volume is pinned to Retain) and a
//! `fail` per deletion an Audit-mode policy would have refused, plus a ClusterPolicyReport.
//! Requires `hack/cluster.sh up`; fails (never skips) when the control plane is absent.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{Cluster, Guard, GuardOptions, TestNamespace, stderr, wait_until};

fn report(cluster: &Cluster, args: &[&str]) -> Option<Value> {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["agentguard", "-o", "json"]);
    let out = cluster.kubectl(&all);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

fn result_for<'r>(report: &'r Value, name: &str, rule: &str) -> Option<&'r Value> {
    report["results"]
        .as_array()?
        .iter()
        .find(|r| r["rule"] == rule && r["resources"][0]["name"] == name)
}

#[test]
fn policy_reports_show_protection_pinning_and_audited_deletions() {
    let cluster = Cluster::connect();
    cluster.install_third_party_crds();
    let ns = TestNamespace::create(&cluster, "reports");
    let agent = ns.agent("cursor-agent");
    let options = GuardOptions {
        policy_reports: true,
        ..Default::default()
    };
    let _guard = Guard::start_with(&ns, &agent, &options);
    cluster.apply(&format!(
        "apiVersion: agentguard.dev/v1alpha1\nkind: ProtectedResource\nmetadata:\n  name: orders\n  namespace: {ns}\n\
         spec:\n  mode: Enforce\n  targets:\n    - apiGroups: [\"\"]\n      kinds: [PersistentVolumeClaim]\n      names: [\"orders-*\"]\n---\n\
         apiVersion: agentguard.dev/v1alpha1\nkind: ProtectedResource\nmetadata:\n  name: trial\n  namespace: {ns}\n\
         spec:\n  mode: Audit\n  targets:\n    - apiGroups: [\"\"]\n      kinds: [PersistentVolumeClaim]\n      names: [\"tmp-*\"]\n",
        ns = ns.name
    ));
    // A volume the claim binds to, with the Delete policy a dynamic provisioner would set:
    // agentguard pins it to Retain, and the report says so.
    let pv = format!("pv-{}", ns.name);
    cluster.apply(&format!(
        "apiVersion: v1\nkind: PersistentVolume\nmetadata:\n  name: {pv}\n  annotations: {{agentguard.dev/protected: \"true\"}}\n\
         spec:\n  capacity: {{storage: 1Gi}}\n  accessModes: [ReadWriteOnce]\n  persistentVolumeReclaimPolicy: Delete\n  \
         hostPath: {{path: /tmp/{pv}}}\n  claimRef: {{namespace: {ns}, name: orders-db}}\n",
        ns = ns.name
    ));
    ns.owns_cluster_object(&format!("pv/{pv}"));
    ns.owns_cluster_object("clusterpolicyreport/agentguard");
    ns.pvc("orders-db", false);
    ns.pvc("cache", true);
    ns.pvc("tmp-1", false);
    for policy in ["orders", "trial"] {
        ns.wait_policy_ready(policy);
    }
    // The Audit-mode policy lets the agent's deletion through, and records it.
    let out = ns.kubectl_as(&agent, &["delete", "pvc", "tmp-1", "--wait=false"]);
    assert!(out.status.success(), "Audit mode refused: {}", stderr(&out));

    let mut last = None;
    wait_until(
        Duration::from_secs(90),
        "the namespace's PolicyReport to show the protected claims, the pinned volume and the audited deletion",
        || {
            last = report(&cluster, &["policyreport", "-n", &ns.name]);
            let Some(r) = &last else { return false };
            result_for(r, "orders-db", "protected")
                .is_some_and(|x| x["properties"]["reclaimPolicy"] == "Retain")
                && result_for(r, "cache", "protected").is_some()
                && result_for(r, "tmp-1", "would-have-blocked").is_some()
        },
    );
    let r = last.unwrap();
    let orders = result_for(&r, "orders-db", "protected").unwrap();
    assert_eq!(orders["result"], "pass", "{orders}");
    assert_eq!(
        orders["policy"],
        format!("ProtectedResource/{}/orders", ns.name),
        "{orders}"
    );
    assert_eq!(orders["properties"]["volume"], pv.as_str());
    assert_eq!(orders["resources"][0]["kind"], "PersistentVolumeClaim");
    assert_eq!(
        result_for(&r, "cache", "protected").unwrap()["policy"],
        "annotation"
    );
    let audited = result_for(&r, "tmp-1", "would-have-blocked").unwrap();
    assert_eq!(audited["result"], "fail");
    assert!(
        audited["message"].as_str().unwrap().contains(&agent),
        "{audited}"
    );
    assert_eq!(r["summary"]["fail"], 1, "{}", r["summary"]);
    // orders-db, cache, and the harness's annotated probe claim.
    assert_eq!(r["summary"]["pass"], 3, "{}", r["summary"]);
    assert!(result_for(&r, "agentguard-probe", "protected").is_some());
    assert_eq!(
        r["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "agentguard"
    );

    // Cluster-scoped: the annotated volume is in the ClusterPolicyReport.
    let cluster_report = report(&cluster, &["clusterpolicyreport"]).expect("a ClusterPolicyReport");
    assert!(
        result_for(&cluster_report, &pv, "protected").is_some(),
        "{cluster_report}"
    );
}
