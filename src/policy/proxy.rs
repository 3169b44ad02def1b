//! Deletion by proxy: changes after which some other component deletes protected data, later
//! and under its own name (a controller, a GitOps tool, a cleanup job, a cloud provider), so a
//! guard that only watched DELETE would never see the loss coming. Every such change is one
//! row of [`RULES`]; `decide` judges a matching request like a deletion of the protected
//! object it reaches, so a restricted identity needs a human's approval for it.

use std::collections::BTreeMap;

use kube::core::DynamicObject;
use serde_json::Value;

/// Which requests a rule looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applies {
    /// UPDATEs of any kind.
    AnyUpdate,
    /// UPDATEs of one (group, kind).
    Update(&'static str, &'static str),
    /// CREATEs of one (group, kind).
    Create(&'static str, &'static str),
}

/// The protected data a matching request puts at risk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// The object itself.
    Itself,
    /// The object itself and the claim a PersistentVolume is bound to.
    BoundClaim { namespace: String, name: String },
    /// The claims of a StatefulSet's volumeClaimTemplates (`<template>-<set>-<ordinal>`).
    StatefulSetClaims,
    /// The object itself and another object (group, kind, namespace, name).
    Also {
        group: &'static str,
        kind: &'static str,
        namespace: Option<String>,
        name: String,
    },
    /// Only another object (group, kind, namespace, name); the request's object is new.
    Other {
        group: &'static str,
        kind: &'static str,
        namespace: Option<String>,
        name: String,
    },
}

/// One way to delete by proxy.
#[derive(Debug)]
pub struct ProxyRule {
    /// Stable id, used in decision reasons and audit annotations.
    pub id: &'static str,
    pub applies: Applies,
    /// The field, label or annotation.
    pub field: &'static str,
    /// The dangerous change.
    pub change: &'static str,
    /// Who deletes what afterwards.
    pub why: &'static str,
    /// The action as the denial message names it: `update (...)`.
    pub action: &'static str,
    detect: fn(Option<&DynamicObject>, &DynamicObject) -> Option<Reach>,
}

/// The table: kind, field, dangerous change, why. One place; `decide` consults every row.
pub static RULES: &[ProxyRule] = &[
    ProxyRule {
        id: "pv-reclaim-delete",
        applies: Applies::Update("", "PersistentVolume"),
        field: "spec.persistentVolumeReclaimPolicy",
        change: "set to Delete",
        why: "the persistent-volume controller deletes the volume, and its disk, once the claim is gone",
        action: "update (persistentVolumeReclaimPolicy: Delete)",
        detect: pv_reclaim_delete,
    },
    ProxyRule {
        id: "deletion-policy-delete",
        applies: Applies::AnyUpdate,
        field: "spec.deletionPolicy",
        change: "set to Delete",
        why: "a VolumeSnapshotContent's snapshot is then deleted from storage with its VolumeSnapshot; a Crossplane managed resource's cloud resource (database, disk, bucket) with the object",
        action: "update (spec.deletionPolicy: Delete)",
        detect: spec_deletion_policy_delete,
    },
    ProxyRule {
        id: "snapshot-class-delete",
        applies: Applies::Update("snapshot.storage.k8s.io", "VolumeSnapshotClass"),
        field: "deletionPolicy",
        change: "set to Delete",
        why: "snapshots taken with the class are then deleted from storage with their VolumeSnapshot",
        action: "update (deletionPolicy: Delete)",
        detect: class_deletion_policy_delete,
    },
    ProxyRule {
        id: "statefulset-retention-when-deleted",
        applies: Applies::Update("apps", "StatefulSet"),
        field: "spec.persistentVolumeClaimRetentionPolicy.whenDeleted",
        change: "set to Delete",
        why: "the StatefulSet controller deletes the claims when the StatefulSet is deleted",
        action: "update (persistentVolumeClaimRetentionPolicy.whenDeleted: Delete)",
        detect: retention_when_deleted,
    },
    ProxyRule {
        id: "statefulset-retention-when-scaled",
        applies: Applies::Update("apps", "StatefulSet"),
        field: "spec.persistentVolumeClaimRetentionPolicy.whenScaled",
        change: "set to Delete, or replicas lowered while it is Delete",
        why: "the StatefulSet controller deletes the claims of the replicas a scale-down removes",
        action: "update (persistentVolumeClaimRetentionPolicy.whenScaled: Delete)",
        detect: retention_when_scaled,
    },
    ProxyRule {
        id: "finalizers-removed-while-terminating",
        applies: Applies::AnyUpdate,
        field: "metadata.finalizers",
        change: "a finalizer removed while the object is being deleted",
        why: "the object is deleted at once, before the controller that holds the finalizer (e.g. kubernetes.io/pvc-protection) has kept its promise",
        action: "update (finalizer removed while terminating)",
        detect: finalizer_removed_while_terminating,
    },
    ProxyRule {
        id: "kyverno-cleanup-ttl",
        applies: Applies::AnyUpdate,
        field: "label cleanup.kyverno.io/ttl",
        change: "added or changed",
        why: "Kyverno's cleanup controller deletes the object when the TTL passes",
        action: "update (label cleanup.kyverno.io/ttl)",
        detect: kyverno_ttl,
    },
    ProxyRule {
        id: "helm-keep-removed",
        applies: Applies::AnyUpdate,
        field: "annotation helm.sh/resource-policy",
        change: "keep removed",
        why: "helm uninstall, or an upgrade that drops it from the chart, then deletes the object",
        action: "update (annotation helm.sh/resource-policy: keep removed)",
        detect: helm_keep_removed,
    },
    ProxyRule {
        id: "argocd-sync-options-removed",
        applies: Applies::AnyUpdate,
        field: "annotation argocd.argoproj.io/sync-options",
        change: "Prune=false or Delete=false removed",
        why: "Argo CD then prunes the object when it leaves Git, or deletes it with its Application",
        action: "update (annotation argocd.argoproj.io/sync-options: Prune=false/Delete=false removed)",
        detect: argocd_protection_removed,
    },
    ProxyRule {
        id: "flux-prune-enabled",
        applies: Applies::AnyUpdate,
        field: "annotation kustomize.toolkit.fluxcd.io/prune",
        change: "disabled removed",
        why: "Flux then garbage-collects the object when it leaves the source",
        action: "update (annotation kustomize.toolkit.fluxcd.io/prune: disabled removed)",
        detect: flux_prune_enabled,
    },
    ProxyRule {
        id: "crossplane-management-policies-delete",
        applies: Applies::AnyUpdate,
        field: "spec.managementPolicies",
        change: "Delete gained (\"Delete\" or \"*\")",
        why: "the Crossplane provider then deletes the external resource (a cloud database, disk, bucket) with the object",
        action: "update (spec.managementPolicies: Delete allowed)",
        detect: management_policies_gain_delete,
    },
    ProxyRule {
        id: "velero-delete-backup-request",
        applies: Applies::Create("velero.io", "DeleteBackupRequest"),
        field: "spec.backupName",
        change: "created for a protected Backup",
        why: "Velero deletes the Backup and its data in object storage",
        action: "create (DeleteBackupRequest)",
        detect: velero_delete_backup_request,
    },
];

impl ProxyRule {
    /// What this request reaches through this rule, or None when it does not match.
    pub fn reach(
        &self,
        creating: bool,
        group: &str,
        kind: &str,
        old: Option<&DynamicObject>,
        new: &DynamicObject,
    ) -> Option<Reach> {
        let applies = match self.applies {
            Applies::AnyUpdate => !creating && old.is_some(),
            Applies::Update(g, k) => !creating && old.is_some() && g == group && k == kind,
            Applies::Create(g, k) => creating && g == group && k == kind,
        };
        if applies {
            (self.detect)(old, new)
        } else {
            None
        }
    }
}

/// The first rule a request matches, with what it reaches.
pub fn matching(
    creating: bool,
    group: &str,
    kind: &str,
    old: Option<&DynamicObject>,
    new: &DynamicObject,
) -> Option<(&'static ProxyRule, Reach)> {
    RULES
        .iter()
        .find_map(|rule| Some((rule, rule.reach(creating, group, kind, old, new)?)))
}

fn str_at<'o>(obj: &'o DynamicObject, pointer: &str) -> Option<&'o str> {
    obj.data.pointer(pointer).and_then(Value::as_str)
}

/// Whether `pointer` became `value` (it was something else, or absent, before).
fn became(old: Option<&DynamicObject>, new: &DynamicObject, pointer: &str, value: &str) -> bool {
    str_at(new, pointer) == Some(value) && old.and_then(|o| str_at(o, pointer)) != Some(value)
}

fn annotations(obj: &DynamicObject) -> Option<&BTreeMap<String, String>> {
    obj.metadata.annotations.as_ref()
}

fn annotation<'o>(obj: &'o DynamicObject, key: &str) -> Option<&'o str> {
    annotations(obj)
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

fn pv_reclaim_delete(old: Option<&DynamicObject>, new: &DynamicObject) -> Option<Reach> {
    if !became(old, new, "/spec/persistentVolumeReclaimPolicy", "Delete") {
        return None;
    }
    match (
        str_at(new, "/spec/claimRef/namespace"),
        str_at(new, "/spec/claimRef/name"),
    ) {
        (Some(ns), Some(name)) => Some(Reach::BoundClaim {
            namespace: ns.to_owned(),
            name: name.to_owned(),
        }),
        _ => Some(Reach::Itself),
    }
}

fn spec_deletion_policy_delete(old: Option<&DynamicObject>, new: &DynamicObject) -> Option<Reach> {
    if !became(old, new, "/spec/deletionPolicy", "Delete") {
        return None;
    }
    // A VolumeSnapshotContent serves one VolumeSnapshot: protecting either protects the data.
    match (
        str_at(new, "/spec/volumeSnapshotRef/namespace"),
        str_at(new, "/spec/volumeSnapshotRef/name"),
    ) {
        (Some(ns), Some(name))
            if new
                .types
                .as_ref()
                .is_some_and(|t| t.kind == "VolumeSnapshotContent") =>
        {
            Some(Reach::Also {
                group: "snapshot.storage.k8s.io",
                kind: "VolumeSnapshot",
                namespace: Some(ns.to_owned()),
                name: name.to_owned(),
            })
        }
        _ => Some(Reach::Itself),
    }
}

fn class_deletion_policy_delete(old: Option<&DynamicObject>, new: &DynamicObject) -> Option<Reach> {
    became(old, new, "/deletionPolicy", "Delete").then_some(Reach::Itself)
}

fn retention<'o>(obj: &'o DynamicObject, when: &str) -> Option<&'o str> {
    str_at(
        obj,
        &format!("/spec/persistentVolumeClaimRetentionPolicy/{when}"),
    )
}

fn retention_when_deleted(old: Option<&DynamicObject>, new: &DynamicObject) -> Option<Reach> {
    (retention(new, "whenDeleted") == Some("Delete")
        && old.and_then(|o| retention(o, "whenDeleted")) != Some("Delete"))
    .then_some(Reach::StatefulSetClaims)
}

fn replicas(obj: &DynamicObject) -> i64 {
    // The API server defaults replicas to 1.
    obj.data
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1)
}

fn retention_when_scaled(old: Option<&DynamicObject>, new: &DynamicObject) -> Option<Reach> {
    if retention(new, "whenScaled") != Some("Delete") {
        return None;
    }
    let old = old?;
    let newly_set = retention(old, "whenScaled") != Some("Delete");
    let scaled_down = replicas(new) < replicas(old);
    (newly_set || scaled_down).then_some(Reach::StatefulSetClaims)
}

fn finalizer_removed_while_terminating(
    old: Option<&DynamicObject>,
    new: &DynamicObject,
) -> Option<Reach> {
    let old = old?;
    old.metadata.deletion_timestamp.as_ref()?;
    let before = old.metadata.finalizers.as_deref().unwrap_or_default();
    let after = new.metadata.finalizers.as_deref().unwrap_or_default();
    before
        .iter()
        .any(|f| !after.contains(f))
        .then_some(Reach::Itself)
}

fn kyverno_ttl(old: Option<&DynamicObject>, new: &DynamicObject) -> Option<Reach> {
    const KEY: &str = "cleanup.kyverno.io/ttl";
    let label = |o: &DynamicObject| o.metadata.labels.as_ref().and_then(|l| l.get(KEY)).cloned();
    let after = label(new)?;
    (old.and_then(label) != Some(after)).then_some(Reach::Itself)
}

fn helm_keep_removed(old: Option<&DynamicObject>, new: &DynamicObject) -> Option<Reach> {
    const KEY: &str = "helm.sh/resource-policy";
    let keeps = |o: &DynamicObject| annotation(o, KEY).is_some_and(|v| v.trim() == "keep");
    (keeps(old?) && !keeps(new)).then_some(Reach::Itself)
}

fn argocd_protection_removed(old: Option<&DynamicObject>, new: &DynamicObject) -> Option<Reach> {
    const KEY: &str = "argocd.argoproj.io/sync-options";
    let options = |o: &DynamicObject| -> Vec<String> {
        annotation(o, KEY)
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_ascii_lowercase())
                    .collect()
            })
            .unwrap_or_default()
    };
    let (before, after) = (options(old?), options(new));
    ["prune=false", "delete=false"]
        .iter()
        .any(|opt| before.iter().any(|b| b == opt) && !after.iter().any(|a| a == opt))
        .then_some(Reach::Itself)
}

fn flux_prune_enabled(old: Option<&DynamicObject>, new: &DynamicObject) -> Option<Reach> {
    const KEY: &str = "kustomize.toolkit.fluxcd.io/prune";
    let disabled = |o: &DynamicObject| annotation(o, KEY).is_some_and(|v| v.trim() == "disabled");
    (disabled(old?) && !disabled(new)).then_some(Reach::Itself)
}

fn allows_delete(obj: &DynamicObject) -> Option<bool> {
    let policies = obj.data.pointer("/spec/managementPolicies")?.as_array()?;
    Some(
        policies
            .iter()
            .filter_map(Value::as_str)
            .any(|p| p == "*" || p == "Delete"),
    )
}

fn management_policies_gain_delete(
    old: Option<&DynamicObject>,
    new: &DynamicObject,
) -> Option<Reach> {
    // Absent managementPolicies means the default ["*"]: removing the field gains Delete too.
    let before = old.map(|o| allows_delete(o).unwrap_or(true))?;
    let had_field = old?.data.pointer("/spec/managementPolicies").is_some();
    let after = allows_delete(new).unwrap_or(had_field);
    (!before && after).then_some(Reach::Itself)
}

fn velero_delete_backup_request(_: Option<&DynamicObject>, new: &DynamicObject) -> Option<Reach> {
    let backup = str_at(new, "/spec/backupName")?;
    Some(Reach::Other {
        group: "velero.io",
        kind: "Backup",
        namespace: new.metadata.namespace.clone(),
        name: backup.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(kind: &str, value: serde_json::Value) -> DynamicObject {
        let mut v = value;
        v["kind"] = json!(kind);
        v["apiVersion"] = json!("v1");
        serde_json::from_value(v).unwrap()
    }

    /// One row per rule: (rule id, group, kind, creating, old, new, matches).
    #[allow(clippy::type_complexity)]
    fn cases() -> Vec<(
        &'static str,
        &'static str,
        &'static str,
        bool,
        Option<serde_json::Value>,
        serde_json::Value,
        bool,
    )> {
        let meta = |extra: serde_json::Value| {
            let mut m = json!({"name": "x", "namespace": "prod"});
            for (k, v) in extra.as_object().unwrap() {
                m[k] = v.clone();
            }
            m
        };
        vec![
            (
                "pv-reclaim-delete",
                "",
                "PersistentVolume",
                false,
                Some(
                    json!({"metadata": meta(json!({})), "spec": {"persistentVolumeReclaimPolicy": "Retain"}}),
                ),
                json!({"metadata": meta(json!({})), "spec": {"persistentVolumeReclaimPolicy": "Delete", "claimRef": {"namespace": "prod", "name": "data"}}}),
                true,
            ),
            (
                "pv-reclaim-delete",
                "",
                "PersistentVolume",
                false,
                Some(
                    json!({"metadata": meta(json!({})), "spec": {"persistentVolumeReclaimPolicy": "Delete"}}),
                ),
                json!({"metadata": meta(json!({})), "spec": {"persistentVolumeReclaimPolicy": "Delete"}}),
                false,
            ),
            (
                "deletion-policy-delete",
                "snapshot.storage.k8s.io",
                "VolumeSnapshotContent",
                false,
                Some(json!({"metadata": meta(json!({})), "spec": {"deletionPolicy": "Retain"}})),
                json!({"metadata": meta(json!({})), "spec": {"deletionPolicy": "Delete", "volumeSnapshotRef": {"namespace": "prod", "name": "snap"}}}),
                true,
            ),
            (
                "deletion-policy-delete",
                "rds.aws.upbound.io",
                "Instance",
                false,
                Some(json!({"metadata": meta(json!({})), "spec": {"deletionPolicy": "Orphan"}})),
                json!({"metadata": meta(json!({})), "spec": {"deletionPolicy": "Delete"}}),
                true,
            ),
            (
                "snapshot-class-delete",
                "snapshot.storage.k8s.io",
                "VolumeSnapshotClass",
                false,
                Some(json!({"metadata": meta(json!({})), "deletionPolicy": "Retain"})),
                json!({"metadata": meta(json!({})), "deletionPolicy": "Delete"}),
                true,
            ),
            (
                "statefulset-retention-when-deleted",
                "apps",
                "StatefulSet",
                false,
                Some(
                    json!({"metadata": meta(json!({})), "spec": {"persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain"}}}),
                ),
                json!({"metadata": meta(json!({})), "spec": {"persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete"}}}),
                true,
            ),
            (
                "statefulset-retention-when-scaled",
                "apps",
                "StatefulSet",
                false,
                Some(
                    json!({"metadata": meta(json!({})), "spec": {"replicas": 3, "persistentVolumeClaimRetentionPolicy": {"whenScaled": "Delete"}}}),
                ),
                json!({"metadata": meta(json!({})), "spec": {"replicas": 1, "persistentVolumeClaimRetentionPolicy": {"whenScaled": "Delete"}}}),
                true,
            ),
            (
                "statefulset-retention-when-scaled",
                "apps",
                "StatefulSet",
                false,
                Some(
                    json!({"metadata": meta(json!({})), "spec": {"replicas": 1, "persistentVolumeClaimRetentionPolicy": {"whenScaled": "Delete"}}}),
                ),
                json!({"metadata": meta(json!({})), "spec": {"replicas": 3, "persistentVolumeClaimRetentionPolicy": {"whenScaled": "Delete"}}}),
                false,
            ),
            (
                "finalizers-removed-while-terminating",
                "",
                "PersistentVolumeClaim",
                false,
                Some(
                    json!({"metadata": meta(json!({"deletionTimestamp": "2026-01-01T00:00:00Z", "finalizers": ["kubernetes.io/pvc-protection"]}))}),
                ),
                json!({"metadata": meta(json!({"deletionTimestamp": "2026-01-01T00:00:00Z"}))}),
                true,
            ),
            (
                "finalizers-removed-while-terminating",
                "",
                "PersistentVolumeClaim",
                false,
                Some(
                    json!({"metadata": meta(json!({"finalizers": ["kubernetes.io/pvc-protection"]}))}),
                ),
                json!({"metadata": meta(json!({}))}),
                false,
            ),
            (
                "kyverno-cleanup-ttl",
                "",
                "PersistentVolumeClaim",
                false,
                Some(json!({"metadata": meta(json!({}))})),
                json!({"metadata": meta(json!({"labels": {"cleanup.kyverno.io/ttl": "1m"}}))}),
                true,
            ),
            (
                "helm-keep-removed",
                "",
                "PersistentVolumeClaim",
                false,
                Some(
                    json!({"metadata": meta(json!({"annotations": {"helm.sh/resource-policy": "keep"}}))}),
                ),
                json!({"metadata": meta(json!({}))}),
                true,
            ),
            (
                "argocd-sync-options-removed",
                "",
                "PersistentVolumeClaim",
                false,
                Some(
                    json!({"metadata": meta(json!({"annotations": {"argocd.argoproj.io/sync-options": "Prune=false,ServerSideApply=true"}}))}),
                ),
                json!({"metadata": meta(json!({"annotations": {"argocd.argoproj.io/sync-options": "ServerSideApply=true"}}))}),
                true,
            ),
            (
                "argocd-sync-options-removed",
                "",
                "PersistentVolumeClaim",
                false,
                Some(
                    json!({"metadata": meta(json!({"annotations": {"argocd.argoproj.io/sync-options": "Delete=false"}}))}),
                ),
                json!({"metadata": meta(json!({"annotations": {"argocd.argoproj.io/sync-options": "Delete=false,Prune=false"}}))}),
                false,
            ),
            (
                "flux-prune-enabled",
                "",
                "PersistentVolumeClaim",
                false,
                Some(
                    json!({"metadata": meta(json!({"annotations": {"kustomize.toolkit.fluxcd.io/prune": "disabled"}}))}),
                ),
                json!({"metadata": meta(json!({"annotations": {"kustomize.toolkit.fluxcd.io/prune": "enabled"}}))}),
                true,
            ),
            (
                "crossplane-management-policies-delete",
                "rds.aws.upbound.io",
                "Instance",
                false,
                Some(
                    json!({"metadata": meta(json!({})), "spec": {"managementPolicies": ["Observe", "Create", "Update"]}}),
                ),
                json!({"metadata": meta(json!({})), "spec": {"managementPolicies": ["*"]}}),
                true,
            ),
            (
                "crossplane-management-policies-delete",
                "rds.aws.upbound.io",
                "Instance",
                false,
                Some(
                    json!({"metadata": meta(json!({})), "spec": {"managementPolicies": ["Observe"]}}),
                ),
                json!({"metadata": meta(json!({})), "spec": {}}),
                true,
            ),
            (
                "crossplane-management-policies-delete",
                "rds.aws.upbound.io",
                "Instance",
                false,
                Some(
                    json!({"metadata": meta(json!({})), "spec": {"managementPolicies": ["Observe"]}}),
                ),
                json!({"metadata": meta(json!({})), "spec": {"managementPolicies": ["Observe", "Update"]}}),
                false,
            ),
            (
                "velero-delete-backup-request",
                "velero.io",
                "DeleteBackupRequest",
                true,
                None,
                json!({"metadata": meta(json!({})), "spec": {"backupName": "nightly"}}),
                true,
            ),
        ]
    }

    #[test]
    fn every_rule_has_a_firing_case_and_the_table_matches() {
        let cases = cases();
        for rule in RULES {
            assert!(
                cases.iter().any(|c| c.0 == rule.id && c.6),
                "rule {} has no firing case",
                rule.id
            );
            assert!(!rule.why.is_empty() && !rule.field.is_empty() && !rule.change.is_empty());
        }
        for (id, group, kind, creating, old, new, fires) in cases {
            let k = kind;
            let old = old.map(|o| obj(k, o));
            let new = obj(kind, new);
            let found = matching(creating, group, kind, old.as_ref(), &new);
            assert_eq!(
                found.as_ref().map(|(r, _)| r.id),
                fires.then_some(id),
                "{id} on {kind}: {found:?}"
            );
        }
    }

    #[test]
    fn reaches_name_the_data_at_risk() {
        let pv_old = obj(
            "PersistentVolume",
            json!({"metadata": {"name": "pv"}, "spec": {"persistentVolumeReclaimPolicy": "Retain"}}),
        );
        let pv_new = obj(
            "PersistentVolume",
            json!({"metadata": {"name": "pv"}, "spec": {"persistentVolumeReclaimPolicy": "Delete", "claimRef": {"namespace": "prod", "name": "data"}}}),
        );
        assert_eq!(
            matching(false, "", "PersistentVolume", Some(&pv_old), &pv_new)
                .unwrap()
                .1,
            Reach::BoundClaim {
                namespace: "prod".into(),
                name: "data".into()
            }
        );
        let dbr = obj(
            "DeleteBackupRequest",
            json!({"metadata": {"name": "d", "namespace": "velero"}, "spec": {"backupName": "nightly"}}),
        );
        assert_eq!(
            matching(true, "velero.io", "DeleteBackupRequest", None, &dbr)
                .unwrap()
                .1,
            Reach::Other {
                group: "velero.io",
                kind: "Backup",
                namespace: Some("velero".into()),
                name: "nightly".into()
            }
        );
        // An unchanged object matches nothing, whatever its fields say.
        for case in cases() {
            let new = obj(case.2, case.5.clone());
            if case.3 {
                continue;
            }
            assert!(
                matching(false, case.1, case.2, Some(&new), &new).is_none(),
                "{} on an unchanged object",
                case.0
            );
        }
    }
}
