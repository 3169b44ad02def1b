//! Deletion by proxy: changes after which some other component deletes protected data, later
//! and under its own name (a controller, a GitOps tool, a cleanup job, a cloud provider), so a
//! guard that only watched DELETE would never see the loss coming. Every such change is one
//! row of [`RULES`]; `decide` judges a matching request like a deletion of the protected
//! object it reaches, so a restricted identity needs a human's approval for it.

use std::collections::BTreeMap;

use kube::core::DynamicObject;
use serde_json::Value;

use super::handles::{EXTERNAL_NAME, snapshot_identity, volume_identity};
use super::managers::{Manager, ManagerKind};

/// Which requests a rule looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applies {
    /// UPDATEs of any kind.
    AnyUpdate,
    /// CREATEs and UPDATEs of any kind.
    AnyWrite,
    /// UPDATEs of one (group, kind).
    Update(&'static str, &'static str),
    /// CREATEs of one (group, kind).
    Create(&'static str, &'static str),
    /// CREATEs and UPDATEs of one (group, kind): what an object sets up when it is created is
    /// as dangerous as the same change made later.
    Write(&'static str, &'static str),
    /// UPDATEs of one subresource (group, resource, subresource), e.g. `statefulsets/scale`,
    /// whose object is not of the resource's kind.
    Subresource(&'static str, &'static str, &'static str),
}

impl Applies {
    /// The (group, kind) the rule is about, when it names one (for routing).
    pub fn kind(self) -> Option<(&'static str, &'static str)> {
        match self {
            Self::Update(g, k) | Self::Create(g, k) | Self::Write(g, k) => Some((g, k)),
            Self::AnyUpdate | Self::AnyWrite | Self::Subresource(..) => None,
        }
    }

    fn covers(self, target: &Target<'_>, has_old: bool) -> bool {
        let update = !target.creating && has_old && target.subresource.is_empty();
        let same = |g: &str, k: &str| g == target.group && k == target.kind;
        match self {
            Self::AnyUpdate => update,
            Self::AnyWrite => target.creating || update,
            Self::Update(g, k) => update && same(g, k),
            Self::Create(g, k) => target.creating && same(g, k),
            Self::Write(g, k) => (target.creating || update) && same(g, k),
            Self::Subresource(g, r, sub) => {
                !target.creating
                    && has_old
                    && target.resource_group == g
                    && target.resource == r
                    && target.subresource == sub
            }
        }
    }
}

/// What a request writes: its object's kind, and the resource and subresource it went through
/// (they differ for `statefulsets/scale`, whose object is an `autoscaling/Scale`).
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub creating: bool,
    pub group: &'a str,
    pub kind: &'a str,
    pub resource_group: &'a str,
    pub resource: &'a str,
    pub subresource: &'a str,
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
    /// Protected claims of a StatefulSet from an ordinal up (`<template>-<set>-<ordinal>`, any
    /// template): a scale-down through `scale`, an autoscaler or a moved `ordinals.start`
    /// removes those replicas, and with `whenScaled: Delete` their claims.
    StatefulSetOrdinals {
        namespace: String,
        statefulset: String,
        from: i64,
    },
    /// What a GitOps object manages: changing what it applies prunes what it no longer does.
    Managed(Manager),
    /// Protected storage with the same handle (a disk, a snapshot).
    Storage(String),
    /// The protected object of the same kind whose external resource this one would now name.
    External {
        group: String,
        kind: String,
        external: String,
        uid: String,
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
    /// The action as the denial message names it: `update (...)`; `update` and `write` become
    /// `create` when the request creates the object.
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
        applies: Applies::Write("apps", "StatefulSet"),
        field: "spec.persistentVolumeClaimRetentionPolicy.whenDeleted",
        change: "set to Delete",
        why: "the StatefulSet controller deletes the claims when the StatefulSet is deleted",
        action: "update (persistentVolumeClaimRetentionPolicy.whenDeleted: Delete)",
        detect: retention_when_deleted,
    },
    ProxyRule {
        id: "statefulset-retention-when-scaled",
        applies: Applies::Write("apps", "StatefulSet"),
        field: "spec.persistentVolumeClaimRetentionPolicy.whenScaled",
        change: "set to Delete (on create too), or replicas lowered or ordinals.start moved while it is Delete",
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
    ProxyRule {
        id: "statefulset-scale-down",
        applies: Applies::Subresource("apps", "statefulsets", "scale"),
        field: "statefulsets/scale spec.replicas",
        change: "lowered",
        why: "the StatefulSet controller removes the highest replicas and, with whenScaled: Delete (the scale subresource does not show it, so it is assumed), their claims",
        action: "scale down (statefulsets/scale)",
        detect: scale_lowered,
    },
    ProxyRule {
        id: "autoscaler-scales-statefulset",
        applies: Applies::Write("autoscaling", "HorizontalPodAutoscaler"),
        field: "spec.scaleTargetRef (kind StatefulSet), spec.minReplicas",
        change: "targets a StatefulSet, or its minimum lowered",
        why: "the autoscaler may scale the StatefulSet down to minReplicas, and with whenScaled: Delete its controller deletes the claims of the removed replicas",
        action: "write (HorizontalPodAutoscaler on a StatefulSet)",
        detect: hpa_scales_statefulset,
    },
    ProxyRule {
        id: "keda-scales-statefulset",
        applies: Applies::Write("keda.sh", "ScaledObject"),
        field: "spec.scaleTargetRef (kind StatefulSet), spec.minReplicaCount",
        change: "targets a StatefulSet, or its minimum lowered",
        why: "KEDA may scale the StatefulSet down to minReplicaCount (default 0), and with whenScaled: Delete its controller deletes the claims of the removed replicas",
        action: "write (KEDA ScaledObject on a StatefulSet)",
        detect: keda_scales_statefulset,
    },
    ProxyRule {
        id: "argocd-application-changed",
        applies: Applies::Update("argoproj.io", "Application"),
        field: "spec.source, spec.sources, spec.destination, spec.syncPolicy.automated.prune",
        change: "what it applies changed, or automated pruning turned on",
        why: "Argo CD prunes what the Application no longer renders",
        action: "update (Application source or pruning)",
        detect: argocd_application_changed,
    },
    ProxyRule {
        id: "flux-kustomization-changed",
        applies: Applies::Update("kustomize.toolkit.fluxcd.io", "Kustomization"),
        field: "spec (path, sourceRef, targetNamespace, patches, components, prune, ...)",
        change: "what it applies changed while prune is on, or prune turned on",
        why: "Flux garbage-collects what the Kustomization no longer applies",
        action: "update (Kustomization spec)",
        detect: flux_kustomization_changed,
    },
    ProxyRule {
        id: "flux-helmrelease-changed",
        applies: Applies::Update("helm.toolkit.fluxcd.io", "HelmRelease"),
        field: "spec.chart, spec.chartRef, spec.releaseName, spec.targetNamespace",
        change: "another chart or release",
        why: "helm-controller upgrades or reinstalls the release, deleting what the new chart does not render",
        action: "update (HelmRelease chart)",
        detect: flux_helmrelease_changed,
    },
    ProxyRule {
        id: "second-handle-volume",
        applies: Applies::Write("", "PersistentVolume"),
        field: "spec (csi.volumeHandle, nfs, hostPath, cloud disk id, ...) with persistentVolumeReclaimPolicy Delete or Recycle",
        change: "names the disk of a protected volume, created or set to Delete/Recycle",
        why: "a second PersistentVolume on the same disk, deleted with reclaimPolicy Delete, makes the provisioner delete the protected disk",
        action: "write (PersistentVolume on a protected disk)",
        detect: second_volume,
    },
    ProxyRule {
        id: "second-handle-snapshot",
        applies: Applies::Write("snapshot.storage.k8s.io", "VolumeSnapshotContent"),
        field: "spec.source.snapshotHandle with deletionPolicy Delete",
        change: "names the snapshot of a protected VolumeSnapshot, created or set to Delete",
        why: "a second VolumeSnapshotContent on the same snapshot, with deletionPolicy Delete, makes the snapshotter delete the protected snapshot",
        action: "write (VolumeSnapshotContent on a protected snapshot)",
        detect: second_snapshot,
    },
    ProxyRule {
        id: "crossplane-external-name",
        applies: Applies::AnyWrite,
        field: "annotation crossplane.io/external-name",
        change: "set to the external name of a protected managed resource of the same kind",
        why: "the new managed resource then stands for the protected cloud resource, and deleting it (deletionPolicy Delete) deletes that resource",
        action: "write (annotation crossplane.io/external-name of a protected resource)",
        detect: external_name_taken,
    },
    ProxyRule {
        id: "velero-backup-expiry-moved",
        applies: Applies::Update("velero.io", "Backup"),
        field: "spec.ttl, status.expiration",
        change: "changed",
        why: "Velero's garbage collector deletes the Backup and its data once it expires",
        action: "update (Backup expiry)",
        detect: backup_expiry_moved,
    },
];

impl ProxyRule {
    /// What this request reaches through this rule, or None when it does not match.
    pub fn reach(
        &self,
        target: &Target<'_>,
        old: Option<&DynamicObject>,
        new: &DynamicObject,
    ) -> Option<Reach> {
        if self.applies.covers(target, old.is_some()) {
            (self.detect)(old, new)
        } else {
            None
        }
    }
}

/// The first rule a request matches, with what it reaches.
#[cfg(test)]
pub fn matching(
    target: &Target<'_>,
    old: Option<&DynamicObject>,
    new: &DynamicObject,
) -> Option<(&'static ProxyRule, Reach)> {
    matching_all(target, old, new).next()
}

/// Every rule a request matches, in table order: one change may set up several deletions
/// (a PV's reclaim policy set to Delete reaches its claim and every disk alias).
pub fn matching_all<'r>(
    target: &'r Target<'_>,
    old: Option<&'r DynamicObject>,
    new: &'r DynamicObject,
) -> impl Iterator<Item = (&'static ProxyRule, Reach)> + 'r {
    RULES
        .iter()
        .filter_map(move |rule| Some((rule, rule.reach(target, old, new)?)))
}

/// A switch of the data-holding catalog (`catalog/data-kinds.yaml`) that an UPDATE turns
/// dangerous, with its new value (None: removed).
#[derive(Debug)]
pub struct SwitchTurned {
    pub switch: &'static crate::catalog::Switch,
    pub value: Option<String>,
}

/// The catalog switches of the request's kind that this UPDATE turns from safe to dangerous:
/// deleting the object would then destroy more (its final snapshot, its backups, its claims),
/// or the provider's own deletion protection is now off. A switch that was dangerous already
/// is not this request's doing. A write to a subresource (`status`) cannot change them.
pub fn catalog_switches_turned(
    target: &Target<'_>,
    old: Option<&DynamicObject>,
    new: &DynamicObject,
) -> Vec<SwitchTurned> {
    let Some(old) = old else { return Vec::new() };
    if target.creating || !target.subresource.is_empty() {
        return Vec::new();
    }
    let Some(entry) = crate::catalog::catalog().kind(target.group, target.kind) else {
        return Vec::new();
    };
    entry
        .switches
        .iter()
        .filter(|s| s.checkable())
        .filter_map(|switch| {
            let before = switch.value_on(&old.metadata, &old.data);
            let after = switch.value_on(&new.metadata, &new.data);
            let turned = switch.is_dangerous(after.as_deref()) == Some(true)
                && switch.is_dangerous(before.as_deref()) == Some(false);
            turned.then_some(SwitchTurned {
                switch,
                value: after,
            })
        })
        .collect()
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
    // Created with it: the claims it would adopt are at the mercy of the next scale-down.
    let Some(old) = old else {
        return Some(Reach::StatefulSetClaims);
    };
    let newly_set = retention(old, "whenScaled") != Some("Delete");
    let scaled_down = replicas(new) < replicas(old);
    let start = |o: &DynamicObject| {
        o.data
            .pointer("/spec/ordinals/start")
            .and_then(Value::as_i64)
    };
    let moved = start(new).unwrap_or(0) != start(old).unwrap_or(0);
    (newly_set || scaled_down || moved).then_some(Reach::StatefulSetClaims)
}

fn scale_lowered(old: Option<&DynamicObject>, new: &DynamicObject) -> Option<Reach> {
    // A Scale's replicas are omitted when zero.
    let scale_replicas = |o: &DynamicObject| {
        o.data
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(0)
    };
    let to = scale_replicas(new);
    (to < scale_replicas(old?)).then(|| Reach::StatefulSetOrdinals {
        namespace: new.metadata.namespace.clone().unwrap_or_default(),
        statefulset: new.metadata.name.clone().unwrap_or_default(),
        from: to,
    })
}

/// A scaler's StatefulSet and the replicas it may scale down to.
fn scaled_statefulset(
    obj: &DynamicObject,
    min_field: &str,
    default_min: i64,
) -> Option<(String, i64)> {
    let target = obj.data.pointer("/spec/scaleTargetRef")?;
    if target.get("kind").and_then(Value::as_str) != Some("StatefulSet") {
        return None;
    }
    let name = target.get("name").and_then(Value::as_str)?.to_owned();
    let min = obj
        .data
        .pointer(&format!("/spec/{min_field}"))
        .and_then(Value::as_i64)
        .unwrap_or(default_min);
    Some((name, min))
}

fn scaler(
    old: Option<&DynamicObject>,
    new: &DynamicObject,
    min_field: &str,
    default_min: i64,
) -> Option<Reach> {
    let (statefulset, from) = scaled_statefulset(new, min_field, default_min)?;
    // Unchanged target and a minimum no lower than before set up nothing new.
    if let Some((before, before_min)) =
        old.and_then(|o| scaled_statefulset(o, min_field, default_min))
        && before == statefulset
        && before_min <= from
    {
        return None;
    }
    Some(Reach::StatefulSetOrdinals {
        namespace: new.metadata.namespace.clone().unwrap_or_default(),
        statefulset,
        from,
    })
}

fn hpa_scales_statefulset(old: Option<&DynamicObject>, new: &DynamicObject) -> Option<Reach> {
    scaler(old, new, "minReplicas", 1)
}

fn keda_scales_statefulset(old: Option<&DynamicObject>, new: &DynamicObject) -> Option<Reach> {
    scaler(old, new, "minReplicaCount", 0)
}

fn at<'o>(obj: &'o DynamicObject, pointer: &str) -> Option<&'o Value> {
    obj.data.pointer(pointer)
}

fn argocd_application_changed(old: Option<&DynamicObject>, new: &DynamicObject) -> Option<Reach> {
    let old = old?;
    let renders_differently = ["/spec/source", "/spec/sources", "/spec/destination"]
        .iter()
        .any(|p| at(old, p) != at(new, p));
    let prune = |o: &DynamicObject| {
        at(o, "/spec/syncPolicy/automated/prune").and_then(Value::as_bool) == Some(true)
    };
    (renders_differently || (prune(new) && !prune(old))).then(|| {
        Reach::Managed(Manager {
            kind: ManagerKind::ArgoApplication,
            namespace: None,
            name: new.metadata.name.clone().unwrap_or_default(),
        })
    })
}

/// A spec without the fields that only say when or whether to reconcile.
fn applied_spec(obj: &DynamicObject, ignored: &[&str]) -> Value {
    let mut spec = at(obj, "/spec").cloned().unwrap_or(Value::Null);
    if let Some(map) = spec.as_object_mut() {
        for key in ignored {
            map.remove(*key);
        }
    }
    spec
}

fn managed(kind: ManagerKind, obj: &DynamicObject) -> Reach {
    Reach::Managed(Manager {
        kind,
        namespace: obj.metadata.namespace.clone(),
        name: obj.metadata.name.clone().unwrap_or_default(),
    })
}

fn flux_kustomization_changed(old: Option<&DynamicObject>, new: &DynamicObject) -> Option<Reach> {
    let old = old?;
    let prune = |o: &DynamicObject| at(o, "/spec/prune").and_then(Value::as_bool) == Some(true);
    if !prune(new) {
        return None;
    }
    let timing = [
        "interval",
        "retryInterval",
        "timeout",
        "suspend",
        "wait",
        "force",
    ];
    (!prune(old) || applied_spec(old, &timing) != applied_spec(new, &timing))
        .then(|| managed(ManagerKind::FluxKustomization, new))
}

fn flux_helmrelease_changed(old: Option<&DynamicObject>, new: &DynamicObject) -> Option<Reach> {
    let old = old?;
    [
        "/spec/chart",
        "/spec/chartRef",
        "/spec/releaseName",
        "/spec/targetNamespace",
    ]
    .iter()
    .any(|p| at(old, p) != at(new, p))
    .then(|| managed(ManagerKind::FluxHelmRelease, new))
}

/// Whether `pointer` now holds one of `values`, and did not before (or the object is new).
fn turned(
    old: Option<&DynamicObject>,
    new: &DynamicObject,
    pointer: &str,
    values: &[&str],
) -> bool {
    let holds = |o: &DynamicObject| str_at(o, pointer).is_some_and(|v| values.contains(&v));
    holds(new) && !old.is_some_and(holds)
}

fn second_volume(old: Option<&DynamicObject>, new: &DynamicObject) -> Option<Reach> {
    // Only a volume the provisioner deletes (or scrubs) with itself is a second way to delete.
    if !turned(
        old,
        new,
        "/spec/persistentVolumeReclaimPolicy",
        &["Delete", "Recycle"],
    ) {
        return None;
    }
    volume_identity(at(new, "/spec")?).map(Reach::Storage)
}

fn second_snapshot(old: Option<&DynamicObject>, new: &DynamicObject) -> Option<Reach> {
    at(new, "/spec/source/snapshotHandle")?;
    if !turned(old, new, "/spec/deletionPolicy", &["Delete"]) {
        return None;
    }
    snapshot_identity(&new.data).map(Reach::Storage)
}

fn external_name_taken(old: Option<&DynamicObject>, new: &DynamicObject) -> Option<Reach> {
    let external = annotation(new, EXTERNAL_NAME)?;
    if old.and_then(|o| annotation(o, EXTERNAL_NAME)) == Some(external) {
        return None;
    }
    let types = new.types.as_ref()?;
    let group = types
        .api_version
        .rsplit_once('/')
        .map(|(g, _)| g)
        .unwrap_or_default();
    Some(Reach::External {
        group: group.to_owned(),
        kind: types.kind.clone(),
        external: external.to_owned(),
        uid: new.metadata.uid.clone().unwrap_or_default(),
    })
}

fn backup_expiry_moved(old: Option<&DynamicObject>, new: &DynamicObject) -> Option<Reach> {
    let old = old?;
    ["/spec/ttl", "/status/expiration"]
        .iter()
        .any(|p| at(old, p) != at(new, p))
        .then_some(Reach::Itself)
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

    /// The target of a write of `kind`; a `Scale` goes through `statefulsets/scale`.
    fn target<'a>(creating: bool, group: &'a str, kind: &'a str) -> Target<'a> {
        let scale = kind == "Scale";
        Target {
            creating,
            group,
            kind,
            resource_group: if scale { "apps" } else { group },
            resource: if scale { "statefulsets" } else { "objects" },
            subresource: if scale { "scale" } else { "" },
        }
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
            (
                "statefulset-retention-when-deleted",
                "apps",
                "StatefulSet",
                true,
                None,
                json!({"metadata": meta(json!({})), "spec": {"persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete"}}}),
                true,
            ),
            (
                "statefulset-retention-when-scaled",
                "apps",
                "StatefulSet",
                true,
                None,
                json!({"metadata": meta(json!({})), "spec": {"persistentVolumeClaimRetentionPolicy": {"whenScaled": "Delete"}}}),
                true,
            ),
            (
                "statefulset-retention-when-scaled",
                "apps",
                "StatefulSet",
                false,
                Some(
                    json!({"metadata": meta(json!({})), "spec": {"replicas": 2, "ordinals": {"start": 0}, "persistentVolumeClaimRetentionPolicy": {"whenScaled": "Delete"}}}),
                ),
                json!({"metadata": meta(json!({})), "spec": {"replicas": 2, "ordinals": {"start": 2}, "persistentVolumeClaimRetentionPolicy": {"whenScaled": "Delete"}}}),
                true,
            ),
            (
                "statefulset-scale-down",
                "autoscaling",
                "Scale",
                false,
                Some(json!({"metadata": meta(json!({})), "spec": {"replicas": 3}})),
                json!({"metadata": meta(json!({})), "spec": {}}),
                true,
            ),
            (
                "statefulset-scale-down",
                "autoscaling",
                "Scale",
                false,
                Some(json!({"metadata": meta(json!({})), "spec": {"replicas": 1}})),
                json!({"metadata": meta(json!({})), "spec": {"replicas": 3}}),
                false,
            ),
            (
                "autoscaler-scales-statefulset",
                "autoscaling",
                "HorizontalPodAutoscaler",
                true,
                None,
                json!({"metadata": meta(json!({})), "spec": {"scaleTargetRef": {"kind": "StatefulSet", "name": "db"}, "maxReplicas": 3}}),
                true,
            ),
            (
                "autoscaler-scales-statefulset",
                "autoscaling",
                "HorizontalPodAutoscaler",
                true,
                None,
                json!({"metadata": meta(json!({})), "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 3}}),
                false,
            ),
            (
                "autoscaler-scales-statefulset",
                "autoscaling",
                "HorizontalPodAutoscaler",
                false,
                Some(
                    json!({"metadata": meta(json!({})), "spec": {"scaleTargetRef": {"kind": "StatefulSet", "name": "db"}, "minReplicas": 2}}),
                ),
                json!({"metadata": meta(json!({})), "spec": {"scaleTargetRef": {"kind": "StatefulSet", "name": "db"}, "minReplicas": 3}}),
                false,
            ),
            (
                "keda-scales-statefulset",
                "keda.sh",
                "ScaledObject",
                true,
                None,
                json!({"metadata": meta(json!({})), "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db"}}}),
                true,
            ),
            (
                "argocd-application-changed",
                "argoproj.io",
                "Application",
                false,
                Some(json!({"metadata": meta(json!({})), "spec": {"source": {"path": "prod"}}})),
                json!({"metadata": meta(json!({})), "spec": {"source": {"path": "empty"}}}),
                true,
            ),
            (
                "argocd-application-changed",
                "argoproj.io",
                "Application",
                false,
                Some(json!({"metadata": meta(json!({})), "spec": {"source": {"path": "prod"}}})),
                json!({"metadata": meta(json!({"labels": {"team": "a"}})), "spec": {"source": {"path": "prod"}}}),
                false,
            ),
            (
                "flux-kustomization-changed",
                "kustomize.toolkit.fluxcd.io",
                "Kustomization",
                false,
                Some(
                    json!({"metadata": meta(json!({})), "spec": {"prune": true, "path": "./prod"}}),
                ),
                json!({"metadata": meta(json!({})), "spec": {"prune": true, "path": "./empty"}}),
                true,
            ),
            (
                "flux-kustomization-changed",
                "kustomize.toolkit.fluxcd.io",
                "Kustomization",
                false,
                Some(
                    json!({"metadata": meta(json!({})), "spec": {"prune": true, "path": "./prod", "interval": "1m"}}),
                ),
                json!({"metadata": meta(json!({})), "spec": {"prune": true, "path": "./prod", "interval": "5m", "suspend": true}}),
                false,
            ),
            (
                "flux-helmrelease-changed",
                "helm.toolkit.fluxcd.io",
                "HelmRelease",
                false,
                Some(
                    json!({"metadata": meta(json!({})), "spec": {"chart": {"spec": {"chart": "postgres"}}}}),
                ),
                json!({"metadata": meta(json!({})), "spec": {"chart": {"spec": {"chart": "nothing"}}}}),
                true,
            ),
            (
                "second-handle-volume",
                "",
                "PersistentVolume",
                true,
                None,
                json!({"metadata": {"name": "pv-2"}, "spec": {"persistentVolumeReclaimPolicy": "Delete", "csi": {"driver": "d", "volumeHandle": "vol-1"}}}),
                true,
            ),
            (
                "second-handle-volume",
                "",
                "PersistentVolume",
                true,
                None,
                json!({"metadata": {"name": "pv-2"}, "spec": {"persistentVolumeReclaimPolicy": "Retain", "csi": {"driver": "d", "volumeHandle": "vol-1"}}}),
                false,
            ),
            (
                "second-handle-snapshot",
                "snapshot.storage.k8s.io",
                "VolumeSnapshotContent",
                true,
                None,
                json!({"metadata": {"name": "c"}, "spec": {"driver": "d", "deletionPolicy": "Delete", "source": {"snapshotHandle": "snap-1"}}}),
                true,
            ),
            (
                "crossplane-external-name",
                "rds.aws.upbound.io",
                "Instance",
                true,
                None,
                json!({"metadata": meta(json!({"annotations": {"crossplane.io/external-name": "orders"}}))}),
                true,
            ),
            (
                "velero-backup-expiry-moved",
                "velero.io",
                "Backup",
                false,
                Some(
                    json!({"metadata": meta(json!({})), "spec": {"ttl": "720h0m0s"}, "status": {"expiration": "2027-01-01T00:00:00Z"}}),
                ),
                json!({"metadata": meta(json!({})), "spec": {"ttl": "720h0m0s"}, "status": {"expiration": "2026-12-06T00:00:00Z"}}),
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
            let found = matching(&target(creating, group, kind), old.as_ref(), &new);
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
            matching(
                &target(false, "", "PersistentVolume"),
                Some(&pv_old),
                &pv_new
            )
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
            matching(
                &target(true, "velero.io", "DeleteBackupRequest"),
                None,
                &dbr
            )
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
                matching(&target(false, case.1, case.2), Some(&new), &new).is_none(),
                "{} on an unchanged object",
                case.0
            );
        }
    }
}
