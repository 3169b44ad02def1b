//! Cascade roots: deleting a Namespace, a CustomResourceDefinition, an owner or a StatefulSet
//! makes Kubernetes' own controllers delete the data afterwards, under their own names (which
//! are never restricted). So the root is judged as if it were the protected object it would
//! take with it.

use kube::core::DynamicObject;
use kube::core::admission::AdmissionRequest;

use super::PolicyRef;
use super::managers::{Manager, ManagerKind, manager_for, may_be_claim};

/// A protected object a deletion would take with it.
#[derive(Debug, Clone, PartialEq)]
pub struct CascadeHit {
    /// `PersistentVolumeClaim prod/data`.
    pub object: String,
    /// How many protected objects would go.
    pub count: usize,
    pub annotation: bool,
    pub policies: Vec<PolicyRef>,
}

/// Lookups into the index of protected objects. Implemented by the watch-fed index; `()` is
/// the empty view.
pub trait ProtectedObjects {
    /// Kinds whose objects are still being listed (a policy just started targeting them), as
    /// text for a denial; None when every watched kind is complete.
    fn loading(&self) -> Option<String> {
        None
    }
    fn in_namespace(&self, namespace: &str) -> Option<CascadeHit>;
    fn of_kind(&self, group: &str, kind: &str) -> Option<CascadeHit>;
    fn owned_by(&self, uid: &str) -> Option<CascadeHit>;
    /// Protected claims named `<prefix><ordinal>` in `namespace`.
    fn claims_with_prefix(&self, namespace: &str, prefixes: &[String]) -> Option<CascadeHit>;
    /// The protected claim `namespace/name`, if it is protected.
    fn claim(&self, namespace: &str, name: &str) -> Option<CascadeHit>;
    /// Protected claims of StatefulSet `statefulset` in `namespace` (`<any template>-<set>-<n>`)
    /// with ordinal `n >= from`.
    fn statefulset_claims(
        &self,
        _namespace: &str,
        _statefulset: &str,
        _from: i64,
    ) -> Option<CascadeHit> {
        None
    }
    /// Protected data a manager (an Argo CD Application, a Flux Kustomization or HelmRelease, a
    /// Crossplane claim) would delete: what carries its mark, and what that owns.
    fn managed_by(&self, _manager: &Manager) -> Option<CascadeHit> {
        None
    }
    /// Protected data on the storage with this handle (see [`super::handles`]).
    fn storage(&self, _identity: &str) -> Option<CascadeHit> {
        None
    }
    /// The protected object of (group, kind), other than `uid`, whose
    /// `crossplane.io/external-name` is `external`.
    fn external(
        &self,
        _group: &str,
        _kind: &str,
        _external: &str,
        _uid: &str,
    ) -> Option<CascadeHit> {
        None
    }
    /// Why agentguard cannot see what deleting an object of (group, kind) would take with it
    /// (it may not watch that kind), if it cannot.
    fn blind(&self, _group: &str, _kind: &str) -> Option<String> {
        None
    }
    /// The object (group, kind, namespace, name), if it is protected. Views that track only
    /// claims answer for claims.
    fn object(
        &self,
        group: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<CascadeHit> {
        match (group, kind, namespace) {
            ("", "PersistentVolumeClaim", Some(ns)) => self.claim(ns, name),
            _ => None,
        }
    }
}

impl ProtectedObjects for () {
    fn in_namespace(&self, _: &str) -> Option<CascadeHit> {
        None
    }
    fn of_kind(&self, _: &str, _: &str) -> Option<CascadeHit> {
        None
    }
    fn owned_by(&self, _: &str) -> Option<CascadeHit> {
        None
    }
    fn claims_with_prefix(&self, _: &str, _: &[String]) -> Option<CascadeHit> {
        None
    }
    fn claim(&self, _: &str, _: &str) -> Option<CascadeHit> {
        None
    }
}

/// Why the deletion this request asks for would delete protected data, if it would.
pub(super) fn cascade_of(
    req: &AdmissionRequest<DynamicObject>,
    old: &DynamicObject,
    objects: &dyn ProtectedObjects,
) -> Option<(CascadeHit, &'static str)> {
    let name = old.metadata.name.as_deref().unwrap_or(&req.name);
    cascade_of_object(
        &req.kind.group,
        &req.kind.kind,
        name,
        old,
        orphans(req),
        objects,
    )
}

/// Why deleting `old` (of `group`/`kind`, named `name`) would delete protected data, if it
/// would; `orphan` when dependents would be left in place.
pub(super) fn cascade_of_object(
    group: &str,
    kind: &str,
    name: &str,
    old: &DynamicObject,
    orphan: bool,
    objects: &dyn ProtectedObjects,
) -> Option<(CascadeHit, &'static str)> {
    if group.is_empty()
        && kind == "Namespace"
        && let Some(hit) = objects.in_namespace(name)
    {
        return Some((hit, "it holds"));
    }
    if group == "apiextensions.k8s.io" && kind == "CustomResourceDefinition" {
        let crd_group = old.data.pointer("/spec/group").and_then(|v| v.as_str());
        let crd_kind = old
            .data
            .pointer("/spec/names/kind")
            .and_then(|v| v.as_str());
        if let (Some(g), Some(k)) = (crd_group, crd_kind)
            && let Some(hit) = objects.of_kind(g, k)
        {
            return Some((hit, "its instances include"));
        }
    }
    if group == "apps" && kind == "StatefulSet" && retention_deletes(old, "whenDeleted") {
        let namespace = old.metadata.namespace.as_deref().unwrap_or_default();
        if let Some(hit) = objects.claims_with_prefix(namespace, &claim_prefixes(old, name)) {
            return Some((
                hit,
                "its PVC retention policy (whenDeleted: Delete) deletes",
            ));
        }
    }
    if !orphan
        && let Some(uid) = old.metadata.uid.as_deref()
        && let Some(hit) = objects.owned_by(uid)
    {
        return Some((hit, "the garbage collector would then delete its dependent"));
    }
    let namespace = old.metadata.namespace.as_deref();
    if let Some(manager) = manager_for(group, kind, namespace, name)
        && let Some(hit) = objects.managed_by(&manager)
    {
        return Some((hit, manager.kind.consequence()));
    }
    if may_be_claim(group)
        && let Some(ns) = namespace
    {
        let claim = Manager {
            kind: ManagerKind::CrossplaneClaim,
            namespace: Some(ns.to_owned()),
            name: name.to_owned(),
        };
        if let Some(hit) = objects.managed_by(&claim) {
            return Some((hit, ManagerKind::CrossplaneClaim.consequence()));
        }
    }
    None
}

/// `<template>-<statefulset>-` for each volumeClaimTemplate.
pub(super) fn claim_prefixes(sts: &DynamicObject, name: &str) -> Vec<String> {
    sts.data
        .pointer("/spec/volumeClaimTemplates")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
        .filter_map(|t| t.pointer("/metadata/name").and_then(|n| n.as_str()))
        .map(|t| format!("{t}-{name}-"))
        .collect()
}

pub(super) fn retention_deletes(sts: &DynamicObject, field: &str) -> bool {
    sts.data
        .pointer(&format!(
            "/spec/persistentVolumeClaimRetentionPolicy/{field}"
        ))
        .and_then(|v| v.as_str())
        == Some("Delete")
}

/// Whether the delete leaves dependents in place (propagationPolicy Orphan, or the deprecated
/// orphanDependents). Without options the API server's default for most kinds is background
/// deletion of dependents, so absence is not orphaning.
fn orphans(req: &AdmissionRequest<DynamicObject>) -> bool {
    let Some(options) = req.options.as_ref() else {
        return false;
    };
    let value = &options.0;
    value.get("propagationPolicy").and_then(|p| p.as_str()) == Some("Orphan")
        || value.get("orphanDependents").and_then(|o| o.as_bool()) == Some(true)
}
