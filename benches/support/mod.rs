//! Fixtures shared by the benchmarks: the agent definition, a ClusterProtectedResource that
//! protects production PVCs, and AdmissionReview bodies shaped like the ones a real API server
//! sends (envelope, userInfo extras, managedFields, DeleteOptions).

#![allow(dead_code)]

use agentguard::api::{Mode, ProtectionSpec, Target};
use agentguard::policy::{
    AgentDefinition, AgentMatcher, CompiledPolicy, PolicyRef, Snapshot, compile,
};
use serde_json::{Value, json};

/// A coding agent's ServiceAccount; `ci/*` makes it restricted.
pub const AGENT: &str = "system:serviceaccount:ci:cursor-agent";
pub const HUMAN: &str = "alice@example.com";
pub const UID: &str = "705ab4f5-6393-11e8-b7cc-42010a800002";

pub fn agent_groups() -> Vec<String> {
    [
        "system:serviceaccounts",
        "system:serviceaccounts:ci",
        "system:authenticated",
    ]
    .map(String::from)
    .to_vec()
}

pub fn human_groups() -> Vec<String> {
    ["developers", "system:authenticated"]
        .map(String::from)
        .to_vec()
}

pub fn agents() -> AgentMatcher {
    AgentMatcher::new(&AgentDefinition {
        service_accounts: vec!["ci/*".into(), "*/cursor-*".into()],
        groups: vec!["ai-agents".into()],
        usernames: vec!["bot-*".into()],
        break_glass_groups: vec!["sre-break-glass".into()],
    })
    .expect("valid agent definition")
}

fn target(group: &str, kind: &str) -> Target {
    Target::kinds(&[group], &[kind])
}

fn enforce(targets: Vec<Target>) -> ProtectionSpec {
    ProtectionSpec::new(Mode::Enforce, targets)
}

/// `ClusterProtectedResource default-volumes`: every PVC in `prod` and `prod-*`.
pub fn volumes_policy() -> CompiledPolicy {
    let mut t = target("", "PersistentVolumeClaim");
    t.namespaces = vec!["prod".into(), "prod-*".into()];
    compile(PolicyRef::cluster("default-volumes"), &enforce(vec![t])).expect("valid policy")
}

/// `count` compiled policies: the PVC policy above, then filler of which 1 in 100 is a
/// ProtectedResource for PVCs in another namespace (same index bucket, rejected by its
/// namespace) and the rest protect other kinds (core, apps and CRD groups).
pub fn policies(count: usize) -> Vec<CompiledPolicy> {
    const CORE: [(&str, &str); 6] = [
        ("", "ConfigMap"),
        ("", "Secret"),
        ("", "Service"),
        ("apps", "Deployment"),
        ("apps", "StatefulSet"),
        ("batch", "CronJob"),
    ];
    let mut out = Vec::with_capacity(count);
    if count > 0 {
        out.push(volumes_policy());
    }
    for i in 1..count {
        let policy = if i % 100 == 0 {
            compile(
                PolicyRef::namespaced(&format!("team-{i}"), &format!("volumes-{i}")),
                &enforce(vec![target("", "PersistentVolumeClaim")]),
            )
        } else if i % 10 == 0 {
            let (group, kind) = CORE[(i / 10) % CORE.len()];
            let mut t = target(group, kind);
            t.names = vec![format!("svc-{i}-*")];
            compile(PolicyRef::cluster(&format!("core-{i}")), &enforce(vec![t]))
        } else {
            compile(
                PolicyRef::cluster(&format!("crd-{i}")),
                &enforce(vec![target(
                    &format!("db{}.example.com", i % 25),
                    &format!("Database{i}"),
                )]),
            )
        };
        out.push(policy.expect("valid filler policy"));
    }
    out
}

pub fn snapshot(policies: Vec<CompiledPolicy>) -> Snapshot {
    Snapshot::new(agents(), Default::default(), policies)
}

/// A bound production PVC as the API server stores it, managedFields included.
/// `size` and `tier` vary between the old and new object of an UPDATE.
pub fn pvc(size: &str, tier: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": "data-orders-db-0",
            "namespace": "prod",
            "uid": "3f1c9e2a-5b7d-4c8e-9f0a-1b2c3d4e5f60",
            "resourceVersion": "18446721",
            "creationTimestamp": "2026-03-02T10:14:07Z",
            "labels": {
                "app.kubernetes.io/name": "orders-db",
                "app.kubernetes.io/instance": "orders",
                "app.kubernetes.io/component": "primary",
                "tier": tier
            },
            "annotations": {
                "pv.kubernetes.io/bind-completed": "yes",
                "pv.kubernetes.io/bound-by-controller": "yes",
                "volume.beta.kubernetes.io/storage-provisioner": "ebs.csi.aws.com",
                "volume.kubernetes.io/storage-provisioner": "ebs.csi.aws.com"
            },
            "finalizers": ["kubernetes.io/pvc-protection"],
            "managedFields": [
                {
                    "manager": "kube-controller-manager",
                    "operation": "Update",
                    "apiVersion": "v1",
                    "time": "2026-03-02T10:14:09Z",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {
                        "f:metadata": {"f:annotations": {
                            ".": {},
                            "f:pv.kubernetes.io/bind-completed": {},
                            "f:pv.kubernetes.io/bound-by-controller": {},
                            "f:volume.beta.kubernetes.io/storage-provisioner": {},
                            "f:volume.kubernetes.io/storage-provisioner": {}
                        }},
                        "f:spec": {"f:volumeName": {}}
                    }
                },
                {
                    "manager": "kube-controller-manager",
                    "operation": "Update",
                    "apiVersion": "v1",
                    "time": "2026-03-02T10:14:09Z",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:status": {
                        "f:accessModes": {},
                        "f:capacity": {".": {}, "f:storage": {}},
                        "f:phase": {}
                    }},
                    "subresource": "status"
                },
                {
                    "manager": "kubectl-client-side-apply",
                    "operation": "Update",
                    "apiVersion": "v1",
                    "time": "2026-03-02T10:14:07Z",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {
                        "f:metadata": {"f:labels": {
                            ".": {},
                            "f:app.kubernetes.io/component": {},
                            "f:app.kubernetes.io/instance": {},
                            "f:app.kubernetes.io/name": {},
                            "f:tier": {}
                        }},
                        "f:spec": {
                            "f:accessModes": {},
                            "f:resources": {"f:requests": {".": {}, "f:storage": {}}},
                            "f:storageClassName": {},
                            "f:volumeMode": {}
                        }
                    }
                }
            ]
        },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": size}},
            "storageClassName": "gp3",
            "volumeMode": "Filesystem",
            "volumeName": "pvc-3f1c9e2a-5b7d-4c8e-9f0a-1b2c3d4e5f60"
        },
        "status": {
            "phase": "Bound",
            "accessModes": ["ReadWriteOnce"],
            "capacity": {"storage": size}
        }
    })
}

/// An `admission.k8s.io/v1` AdmissionReview for the PVC above.
pub fn review(op: &str, user: &str, groups: &[String], old: Value, new: Value) -> Value {
    let options = match op {
        "DELETE" => {
            json!({"apiVersion": "meta.k8s.io/v1", "kind": "DeleteOptions", "propagationPolicy": "Background"})
        }
        "UPDATE" => {
            json!({"apiVersion": "meta.k8s.io/v1", "kind": "UpdateOptions", "fieldManager": "kubectl-edit"})
        }
        _ => Value::Null,
    };
    let gvk = json!({"group": "", "version": "v1", "kind": "PersistentVolumeClaim"});
    let gvr = json!({"group": "", "version": "v1", "resource": "persistentvolumeclaims"});
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": UID,
            "kind": gvk,
            "resource": gvr,
            "requestKind": gvk,
            "requestResource": gvr,
            "name": "data-orders-db-0",
            "namespace": "prod",
            "operation": op,
            "userInfo": {
                "username": user,
                "uid": "c0ffee00-1234-4d5e-8f90-abcdef012345",
                "groups": groups,
                "extra": {
                    "authentication.kubernetes.io/pod-name": ["cursor-agent-7d9f8b6c5-x2k4p"]
                }
            },
            "object": new,
            "oldObject": old,
            "dryRun": false,
            "options": options
        }
    })
}

/// An agent deleting the production PVC: denied by `default-volumes`.
pub fn agent_delete() -> Value {
    review(
        "DELETE",
        AGENT,
        &agent_groups(),
        pvc("100Gi", "gold"),
        Value::Null,
    )
}
