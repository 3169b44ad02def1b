//! Kinds agentguard learned of because someone annotated one of their objects
//! `agentguard.dev/protected=true` (issue 16: the annotation works on any kind).
//!
//! The `annotate.agentguard.dev` webhook sees the first such annotation on a kind agentguard
//! does not route yet. [`AnnotatedKinds::admit`] checks that the API server serves the kind (so
//! forged reviews naming made-up kinds record nothing) and whether agentguard's RBAC lets it
//! list and watch it (a SelfSubjectAccessReview): a kind it can watch is indexed and routed
//! like `--annotation-kinds` from then on; one it cannot is routed for deletion (the
//! annotation is read from the deleted object itself) but reported as unguarded, with the RBAC
//! rule that would fix it. The operator keeps the record in a ConfigMap so every replica, and
//! the next start, knows the same kinds.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use kube::discovery::{self, Scope};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

type Kind = (String, String);

/// Objects of an unguarded kind remembered (for status and the metric); a forged flood naming
/// a real kind cannot grow the record past it.
pub const MAX_OBJECTS_PER_KIND: usize = 100;
/// Made-up kinds remembered as "not served", so a flood of forged reviews costs one discovery
/// call per kind per [`NOT_SERVED_FOR`], not one per review.
const NOT_SERVED_CACHE: usize = 1024;
const NOT_SERVED_FOR: Duration = Duration::from_secs(30);

/// One recorded kind, as the ConfigMap stores it (one data key per kind, see [`data_key`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedKind {
    pub group: String,
    pub version: String,
    pub kind: String,
    /// The resource (plural) the API server serves it as.
    pub resource: String,
    pub namespaced: bool,
    /// agentguard's RBAC lets it list and watch the kind: it is indexed and fully guarded.
    pub guarded: bool,
    /// Annotated objects (`namespace/name`, or `name`) seen while the kind was unguarded.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub objects: BTreeSet<String>,
}

impl RecordedKind {
    pub fn key(&self) -> Kind {
        (self.group.clone(), self.kind.clone())
    }

    /// `databases.example.com`, or `configmaps` in the core group: the kubectl spelling.
    pub fn resource_id(&self) -> String {
        if self.group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }

    /// The rule to add to the chart value `rbac.extraWatchedResources`.
    pub fn rbac_rule(&self) -> String {
        rbac_rule(&self.group, &self.resource)
    }
}

/// `{apiGroups: ["example.com"], resources: ["databases"], verbs: ["list", "watch"]}`.
pub fn rbac_rule(group: &str, resource: &str) -> String {
    format!(
        "{{apiGroups: [\"{group}\"], resources: [\"{resource}\"], verbs: [\"list\", \"watch\"]}}"
    )
}

/// Label of the ConfigMap the operator keeps the record in, so `kubectl agentguard status`
/// finds it whatever its name.
pub const RECORD_COMPONENT_LABEL: (&str, &str) = ("app.kubernetes.io/component", "annotated-kinds");

/// The recorded kinds in the ConfigMap's data; entries that do not parse are skipped.
pub fn parse_record(data: &BTreeMap<String, String>) -> Vec<RecordedKind> {
    data.values()
        .filter_map(|v| serde_json::from_str::<RecordedKind>(v).ok())
        .collect()
}

/// The ConfigMap data key of a kind: its kubectl resource id (valid ConfigMap key characters).
pub fn data_key(kind: &RecordedKind) -> String {
    kind.resource_id()
}

/// What the index and the webhook configuration follow: the recorded kinds by whether
/// agentguard can watch them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordedKinds {
    /// Indexed and routed like `--annotation-kinds`.
    pub guarded: BTreeSet<Kind>,
    /// Not watchable: routed for deletion only (as owner kinds are), reported as unguarded.
    pub unguarded: BTreeSet<Kind>,
}

/// The write that reached the annotate webhook, as far as recording needs it.
#[derive(Debug, Clone)]
pub struct AnnotatedWrite {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub resource: String,
    pub namespace: Option<String>,
    pub name: String,
    /// Dry runs are answered as if real, and record nothing.
    pub dry_run: bool,
}

impl AnnotatedWrite {
    fn object(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }
}

/// The recorded kinds, shared by the annotate webhook (which adds), the operator (which
/// persists, merges other replicas' records, and re-checks RBAC) and the index and webhook
/// configuration (which follow [`AnnotatedKinds::subscribe`]).
#[derive(Clone)]
pub struct AnnotatedKinds(Arc<Inner>);

struct Inner {
    client: Option<kube::Client>,
    kinds: Mutex<BTreeMap<Kind, RecordedKind>>,
    /// (group, kind, resource) as reviews named them: keyed by all three, so a forged review
    /// naming a real kind under a made-up resource cannot hide the real one.
    not_served: Mutex<HashMap<(String, String, String), Instant>>,
    /// None until the persisted record was read once: until then nobody may act on "no
    /// recorded kinds" (the webhook configuration would drop their routes after a restart).
    routes: watch::Sender<Option<RecordedKinds>>,
    changed: Notify,
}

impl std::fmt::Debug for AnnotatedKinds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnnotatedKinds").finish_non_exhaustive()
    }
}

impl AnnotatedKinds {
    /// `client: None` (tests of the HTTP edge): nothing is served, nothing is recorded.
    pub fn new(client: Option<kube::Client>) -> Self {
        Self(Arc::new(Inner {
            client,
            kinds: Mutex::default(),
            not_served: Mutex::default(),
            routes: watch::channel(None).0,
            changed: Notify::new(),
        }))
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<RecordedKinds>> {
        self.0.routes.subscribe()
    }

    /// Every recorded kind.
    pub fn snapshot(&self) -> BTreeMap<Kind, RecordedKind> {
        self.0
            .kinds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Resolves when a kind or object was recorded since the last call.
    pub async fn changed(&self) {
        self.0.changed.notified().await
    }

    /// Merges a record read back (from the ConfigMap: other replicas', or an earlier run's)
    /// and marks the record loaded. Objects are unioned; `guarded` stays what this replica
    /// found, for kinds it checked.
    pub fn merge(&self, read: impl IntoIterator<Item = RecordedKind>) {
        let mut kinds = self.0.kinds.lock().unwrap_or_else(|e| e.into_inner());
        for kind in read {
            match kinds.get_mut(&kind.key()) {
                Some(mine) => {
                    mine.objects.extend(kind.objects);
                    cap(&mut mine.objects);
                }
                None => {
                    kinds.insert(kind.key(), kind);
                }
            }
        }
        self.publish(&kinds);
    }

    /// Sets whether agentguard can watch `kind` (a re-check after an RBAC change). Objects
    /// of a guarded kind are the index's to count, so they are forgotten here.
    pub fn set_guarded(&self, kind: &Kind, guarded: bool) {
        let mut kinds = self.0.kinds.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = kinds.get_mut(kind) {
            k.guarded = guarded;
            if guarded {
                k.objects.clear();
            }
        }
        self.publish(&kinds);
    }

    fn publish(&self, kinds: &BTreeMap<Kind, RecordedKind>) {
        let mut routes = RecordedKinds::default();
        for (key, kind) in kinds {
            if kind.guarded {
                routes.guarded.insert(key.clone());
            } else {
                routes.unguarded.insert(key.clone());
            }
        }
        self.0.routes.send_if_modified(|current| {
            let changed = current.as_ref() != Some(&routes);
            *current = Some(routes);
            changed
        });
    }

    /// Whether agentguard may list and watch `resource` in `group`, cluster-wide.
    pub async fn can_watch(&self, group: &str, resource: &str) -> Result<bool, kube::Error> {
        let Some(client) = &self.0.client else {
            return Ok(false);
        };
        let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
        for verb in ["list", "watch"] {
            let review = SelfSubjectAccessReview {
                spec: SelfSubjectAccessReviewSpec {
                    resource_attributes: Some(ResourceAttributes {
                        group: Some(group.to_owned()),
                        resource: Some(resource.to_owned()),
                        verb: Some(verb.to_owned()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            };
            let answer = api.create(&PostParams::default(), &review).await?;
            if !answer.status.is_some_and(|s| s.allowed) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Looks the written kind up in discovery: Some when the API server serves it under the
    /// resource the review names, None when it does not (a forged review) or discovery fails.
    async fn served(&self, write: &AnnotatedWrite) -> Option<RecordedKind> {
        let client = self.0.client.as_ref()?;
        let key = (
            write.group.clone(),
            write.kind.clone(),
            write.resource.clone(),
        );
        {
            let mut cache = self.0.not_served.lock().unwrap_or_else(|e| e.into_inner());
            cache.retain(|_, at| at.elapsed() < NOT_SERVED_FOR);
            if cache.contains_key(&key) {
                return None;
            }
        }
        let found = discovery::group(client, &write.group)
            .await
            .ok()
            .and_then(|g| super::served_kind(&g, &write.kind))
            .filter(|(ar, _)| ar.plural == write.resource);
        match found {
            Some((ar, caps)) => Some(RecordedKind {
                group: ar.group,
                version: ar.version,
                kind: ar.kind,
                resource: ar.plural,
                namespaced: caps.scope == Scope::Namespaced,
                guarded: false,
                objects: BTreeSet::new(),
            }),
            None => {
                let mut cache = self.0.not_served.lock().unwrap_or_else(|e| e.into_inner());
                if cache.len() >= NOT_SERVED_CACHE {
                    cache.clear();
                }
                cache.insert(key, Instant::now());
                None
            }
        }
    }

    /// Handles one write that adds `agentguard.dev/protected=true` to an object of a kind
    /// agentguard does not route yet: records the kind (when served), and returns the warning
    /// the annotating user sees.
    pub async fn admit(&self, write: &AnnotatedWrite) -> Option<String> {
        let key = (write.group.clone(), write.kind.clone());
        let known = self
            .0
            .kinds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        let mut kind = match known {
            Some(kind) => kind,
            None => {
                let Some(mut served) = self.served(write).await else {
                    tracing::info!(group = %write.group, kind = %write.kind, resource = %write.resource,
                        "annotated kind is not served by the API server; not recorded");
                    return None;
                };
                served.guarded = match self.can_watch(&served.group, &served.resource).await {
                    Ok(allowed) => allowed,
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot check agentguard's RBAC; taking it as not allowed");
                        false
                    }
                };
                served
            }
        };
        let warning = if kind.guarded {
            format!(
                "agentguard now guards {} ({}): within seconds, agents' deletions of objects annotated agentguard.dev/protected=true \
                 (and of their namespace or owners) are refused until a human approves.",
                kind.kind,
                kind.resource_id()
            )
        } else {
            format!(
                "agentguard cannot watch {} ({}): its RBAC does not allow list and watch on it, so this annotation does not fully protect it \
                 (deleting its namespace or an owner is not refused). Add this rule to the Helm value rbac.extraWatchedResources and upgrade: {}. \
                 Until then `kubectl agentguard status` lists it as annotated but unguarded.",
                kind.kind,
                kind.resource_id(),
                kind.rbac_rule()
            )
        };
        if write.dry_run {
            return Some(warning);
        }
        if !kind.guarded && kind.objects.len() < MAX_OBJECTS_PER_KIND {
            kind.objects.insert(write.object());
        }
        let mut kinds = self.0.kinds.lock().unwrap_or_else(|e| e.into_inner());
        let entry = kinds.entry(key).or_insert_with(|| kind.clone());
        entry.objects.extend(kind.objects);
        cap(&mut entry.objects);
        tracing::info!(group = %entry.group, kind = %entry.kind, guarded = entry.guarded,
            object = %write.object(), "annotated kind recorded");
        self.publish(&kinds);
        drop(kinds);
        self.0.changed.notify_one();
        Some(warning)
    }
}

fn cap(objects: &mut BTreeSet<String>) {
    while objects.len() > MAX_OBJECTS_PER_KIND {
        objects.pop_last();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(group: &str, name: &str, guarded: bool) -> RecordedKind {
        RecordedKind {
            group: group.into(),
            version: "v1".into(),
            kind: name.into(),
            resource: format!("{}s", name.to_ascii_lowercase()),
            namespaced: true,
            guarded,
            objects: BTreeSet::new(),
        }
    }

    #[test]
    fn the_rule_names_group_and_resource() {
        let k = kind("db.example.com", "Database", false);
        assert_eq!(k.resource_id(), "databases.db.example.com");
        assert_eq!(
            k.rbac_rule(),
            r#"{apiGroups: ["db.example.com"], resources: ["databases"], verbs: ["list", "watch"]}"#
        );
        assert_eq!(kind("", "Thing", true).resource_id(), "things");
    }

    #[tokio::test]
    async fn without_a_served_kind_nothing_is_recorded() {
        let kinds = AnnotatedKinds::new(None);
        let write = AnnotatedWrite {
            group: "made.up".into(),
            version: "v1".into(),
            kind: "Ghost".into(),
            resource: "ghosts".into(),
            namespace: Some("prod".into()),
            name: "x".into(),
            dry_run: false,
        };
        assert_eq!(kinds.admit(&write).await, None);
        assert!(kinds.snapshot().is_empty());
        assert_eq!(*kinds.subscribe().borrow(), None, "not loaded yet");
    }

    #[test]
    fn merging_unions_objects_caps_them_and_splits_routes() {
        let kinds = AnnotatedKinds::new(None);
        let mut a = kind("x.io", "Vault", false);
        a.objects = (0..80).map(|i| format!("ns/a{i}")).collect();
        let mut b = a.clone();
        b.objects = (0..80).map(|i| format!("ns/b{i}")).collect();
        kinds.merge([a, kind("x.io", "Database", true)]);
        kinds.merge([b]);
        let snap = kinds.snapshot();
        assert_eq!(
            snap[&("x.io".into(), "Vault".into())].objects.len(),
            MAX_OBJECTS_PER_KIND
        );
        let routes = kinds.subscribe().borrow().clone().unwrap();
        assert!(routes.guarded.contains(&("x.io".into(), "Database".into())));
        assert!(routes.unguarded.contains(&("x.io".into(), "Vault".into())));
        kinds.set_guarded(&("x.io".into(), "Vault".into()), true);
        let routes = kinds.subscribe().borrow().clone().unwrap();
        assert!(routes.guarded.contains(&("x.io".into(), "Vault".into())));
        assert!(
            kinds.snapshot()[&("x.io".into(), "Vault".into())]
                .objects
                .is_empty()
        );
    }
}
