//! Managers: tools that delete what they manage when their own object goes or changes. Argo CD
//! deletes an Application's resources with it (and prunes what leaves Git), Flux garbage-collects
//! a Kustomization's or HelmRelease's objects, and Crossplane deletes a claim's composite and
//! with it every managed resource (the cloud database behind an `RDSInstance`). Each tool marks
//! what it manages with a label or annotation; that mark is read here, so deleting (or
//! repointing) the manager is judged as deleting the protected data it manages.

use std::collections::BTreeMap;

/// A tool that deletes what it manages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ManagerKind {
    /// `argoproj.io/Application`.
    ArgoApplication,
    /// `kustomize.toolkit.fluxcd.io/Kustomization`.
    FluxKustomization,
    /// `helm.toolkit.fluxcd.io/HelmRelease`.
    FluxHelmRelease,
    /// A Crossplane claim, of whichever kind its CompositeResourceDefinition names.
    CrossplaneClaim,
}

impl ManagerKind {
    /// The (group, kind) of the managing object; None for claims, whose kinds are defined by
    /// each CompositeResourceDefinition.
    pub fn group_kind(self) -> Option<(&'static str, &'static str)> {
        match self {
            Self::ArgoApplication => Some(("argoproj.io", "Application")),
            Self::FluxKustomization => Some(("kustomize.toolkit.fluxcd.io", "Kustomization")),
            Self::FluxHelmRelease => Some(("helm.toolkit.fluxcd.io", "HelmRelease")),
            Self::CrossplaneClaim => None,
        }
    }

    /// How the denial says what happens next.
    pub fn consequence(self) -> &'static str {
        match self {
            Self::ArgoApplication => "Argo CD then deletes (prunes) what it manages, including",
            Self::FluxKustomization => "Flux then garbage-collects what it applied, including",
            Self::FluxHelmRelease => "Flux then uninstalls the release, including",
            Self::CrossplaneClaim => {
                "Crossplane then deletes its composite resource and the managed resources, including"
            }
        }
    }
}

/// One managing object. Argo CD's marks name the Application but not its namespace, so an
/// Application is matched by name alone (any namespace): a wider match refuses more, never less.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Manager {
    pub kind: ManagerKind,
    pub namespace: Option<String>,
    pub name: String,
}

/// Argo CD's annotation tracking: `<app>:<group>/<kind>:<namespace>/<name>`.
pub const ARGO_TRACKING_ID: &str = "argocd.argoproj.io/tracking-id";
/// Argo CD's default label tracking (also set by Helm; matching it too only refuses more).
pub const ARGO_INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
const FLUX_KS_NAME: &str = "kustomize.toolkit.fluxcd.io/name";
const FLUX_KS_NAMESPACE: &str = "kustomize.toolkit.fluxcd.io/namespace";
const FLUX_HR_NAME: &str = "helm.toolkit.fluxcd.io/name";
const FLUX_HR_NAMESPACE: &str = "helm.toolkit.fluxcd.io/namespace";
const CLAIM_NAME: &str = "crossplane.io/claim-name";
const CLAIM_NAMESPACE: &str = "crossplane.io/claim-namespace";

/// Label keys the index must keep to find managers.
pub const MANAGER_LABELS: &[&str] = &[
    ARGO_INSTANCE_LABEL,
    FLUX_KS_NAME,
    FLUX_KS_NAMESPACE,
    FLUX_HR_NAME,
    FLUX_HR_NAMESPACE,
    CLAIM_NAME,
    CLAIM_NAMESPACE,
];

/// Argo CD's application names may carry their namespace as `<namespace>_<name>`.
fn argo_app(value: &str) -> Option<Manager> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    let name = value.rsplit_once('_').map_or(value, |(_, n)| n);
    Some(Manager {
        kind: ManagerKind::ArgoApplication,
        namespace: None,
        name: name.to_owned(),
    })
}

fn pair(
    labels: &BTreeMap<String, String>,
    kind: ManagerKind,
    name: &str,
    namespace: &str,
) -> Option<Manager> {
    let name = labels.get(name)?;
    Some(Manager {
        kind,
        namespace: labels.get(namespace).cloned(),
        name: name.clone(),
    })
}

/// The managers an object's labels and annotations name.
pub fn managers_of(
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> Vec<Manager> {
    let mut found: Vec<Manager> = [
        annotations
            .get(ARGO_TRACKING_ID)
            .and_then(|id| argo_app(id.split(':').next().unwrap_or_default())),
        labels.get(ARGO_INSTANCE_LABEL).and_then(|v| argo_app(v)),
        pair(
            labels,
            ManagerKind::FluxKustomization,
            FLUX_KS_NAME,
            FLUX_KS_NAMESPACE,
        ),
        pair(
            labels,
            ManagerKind::FluxHelmRelease,
            FLUX_HR_NAME,
            FLUX_HR_NAMESPACE,
        ),
        pair(
            labels,
            ManagerKind::CrossplaneClaim,
            CLAIM_NAME,
            CLAIM_NAMESPACE,
        ),
    ]
    .into_iter()
    .flatten()
    .collect();
    found.sort();
    found.dedup();
    found
}

/// The manager an object of (group, kind) named so would be, if its kind manages anything.
/// Claims are recognised by the caller (their kinds are not fixed).
pub fn manager_for(
    group: &str,
    kind: &str,
    namespace: Option<&str>,
    name: &str,
) -> Option<Manager> {
    let kind = [
        ManagerKind::ArgoApplication,
        ManagerKind::FluxKustomization,
        ManagerKind::FluxHelmRelease,
    ]
    .into_iter()
    .find(|k| k.group_kind() == Some((group, kind)))?;
    Some(Manager {
        kind,
        namespace: match kind {
            ManagerKind::ArgoApplication => None,
            _ => namespace.map(str::to_owned),
        },
        name: name.to_owned(),
    })
}

/// Whether an object of `group` may be a Crossplane claim: claims are custom resources, whose
/// groups are domain names, never those of the built-in groups.
pub fn may_be_claim(group: &str) -> bool {
    group.contains('.') && !group.ends_with("k8s.io")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn marks_of_each_tool_name_their_manager() {
        let argo = managers_of(
            &BTreeMap::new(),
            &map(&[(ARGO_TRACKING_ID, "orders:/PersistentVolumeClaim:prod/data")]),
        );
        assert_eq!(
            argo,
            vec![Manager {
                kind: ManagerKind::ArgoApplication,
                namespace: None,
                name: "orders".into()
            }]
        );
        let flux = managers_of(
            &map(&[
                (FLUX_KS_NAME, "apps"),
                (FLUX_KS_NAMESPACE, "flux-system"),
                (CLAIM_NAME, "orders-db"),
                (CLAIM_NAMESPACE, "prod"),
            ]),
            &BTreeMap::new(),
        );
        assert_eq!(flux.len(), 2);
        assert!(flux.contains(&Manager {
            kind: ManagerKind::FluxKustomization,
            namespace: Some("flux-system".into()),
            name: "apps".into()
        }));
        assert!(flux.contains(&Manager {
            kind: ManagerKind::CrossplaneClaim,
            namespace: Some("prod".into()),
            name: "orders-db".into()
        }));
        assert!(managers_of(&map(&[("app", "x")]), &BTreeMap::new()).is_empty());
        // Apps in any namespace: `<namespace>_<name>`.
        assert_eq!(
            managers_of(
                &map(&[(ARGO_INSTANCE_LABEL, "argocd_orders")]),
                &BTreeMap::new()
            )[0]
            .name,
            "orders"
        );
    }

    #[test]
    fn managing_objects_are_recognised_by_kind() {
        let app = manager_for("argoproj.io", "Application", Some("argocd"), "orders").unwrap();
        assert_eq!(app.namespace, None);
        let ks = manager_for(
            "kustomize.toolkit.fluxcd.io",
            "Kustomization",
            Some("flux-system"),
            "apps",
        )
        .unwrap();
        assert_eq!(ks.namespace.as_deref(), Some("flux-system"));
        assert!(manager_for("apps", "Deployment", Some("prod"), "orders").is_none());
        assert!(may_be_claim("database.example.org"));
        assert!(!may_be_claim(""));
        assert!(!may_be_claim("apps"));
        assert!(!may_be_claim("storage.k8s.io"));
    }
}
