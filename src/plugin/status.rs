//! `kubectl agentguard status`: the policies in scope, what they protect, the approvals that
//! are live, and the latest blocked attempts.
//!
//! It also holds the plugin's view of "what protects what", which `approve` shares: policies are
//! compiled with the webhook's own [`compile`] into the webhook's own [`Snapshot`], and objects
//! are indexed with the webhook's own [`ObjectIndex`], so the plugin cannot disagree with the
//! webhook about which objects are protected, or which deletions are cascade roots.

use std::collections::{BTreeSet, HashSet};

use clap::Args;
use jiff::Timestamp;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ApiResource, ListParams, ResourceExt};
use kube::core::{DynamicObject, PartialObjectMeta};
use kube::discovery::Scope as ResourceScope;
use serde::Serialize;

use super::{Ctx, Failure, Outcome, Output, human_duration, table};
use crate::api::{
    APPROVAL_REASON_ANNOTATION, APPROVAL_SEAL_ANNOTATION, APPROVED_BY_ANNOTATION,
    APPROVED_UNTIL_ANNOTATION, ClusterProtectedResource, ProtectedResource, ProtectionStatus,
};
use crate::index::objects::{ObjectEntry, ObjectIndex, ObjectKey};
use crate::index::{KindResolver, RECORD_COMPONENT_LABEL, RecordedKind, parse_record};
use crate::operator::static_config::{InForce, PROBE_SECRET, STATIC_CONFIGURATION_NAME, probe};
use crate::policy::{AgentMatcher, CompiledPolicy, PolicyRef, Snapshot, compile};
use k8s_openapi::api::core::v1::ConfigMap;

/// Kinds the `agentguard.dev/protected` annotation is honoured on by default (the webhook's
/// `--annotation-kinds` default), as (group, kind).
pub(super) const ANNOTATION_KINDS: [(&str, &str); 4] = [
    ("", "PersistentVolumeClaim"),
    ("", "PersistentVolume"),
    ("snapshot.storage.k8s.io", "VolumeSnapshot"),
    ("snapshot.storage.k8s.io", "VolumeSnapshotContent"),
];

/// Reason of the Events the operator records for blocked attempts (part of the contract).
pub(super) const BLOCKED_REASON: &str = "DeletionBlocked";

/// Most blocked attempts shown.
const BLOCKED_SHOWN: usize = 20;

/// The Recorder puts Events about cluster-scoped objects here.
const CLUSTER_EVENTS_NAMESPACE: &str = "default";

#[derive(Debug, Args)]
pub struct StatusArgs {}

/// Where to look: one namespace (plus everything cluster-scoped), or everywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Scope {
    Namespace(String),
    All,
}

impl Scope {
    fn describe(&self) -> String {
        match self {
            Scope::Namespace(ns) => format!("namespace {ns}"),
            Scope::All => "all namespaces".to_owned(),
        }
    }
}

/// The policy objects in scope, and the valid ones compiled as the webhook compiles them.
pub(super) struct Policies {
    pub namespaced: Vec<ProtectedResource>,
    pub cluster: Vec<ClusterProtectedResource>,
    pub snapshot: Snapshot,
}

impl Policies {
    /// ProtectedResources in scope and every ClusterProtectedResource.
    pub async fn list(client: &kube::Client, scope: &Scope) -> Result<Self, kube::Error> {
        let lp = ListParams::default();
        let namespaced: Api<ProtectedResource> = match scope {
            Scope::Namespace(ns) => Api::namespaced(client.clone(), ns),
            Scope::All => Api::all(client.clone()),
        };
        let namespaced = namespaced.list(&lp).await?.items;
        let cluster = Api::<ClusterProtectedResource>::all(client.clone())
            .list(&lp)
            .await?
            .items;
        Ok(Self::new(namespaced, cluster))
    }

    /// Invalid policies protect nothing, in the webhook as here.
    pub fn new(namespaced: Vec<ProtectedResource>, cluster: Vec<ClusterProtectedResource>) -> Self {
        let mut compiled: Vec<CompiledPolicy> = namespaced
            .iter()
            .filter_map(|p| {
                let id = PolicyRef::namespaced(&p.namespace().unwrap_or_default(), &p.name_any());
                compile(id, &p.spec.protection).ok()
            })
            .chain(cluster.iter().filter_map(|p| {
                compile(PolicyRef::cluster(&p.name_any()), &p.spec.protection).ok()
            }))
            .collect();
        compiled.sort_by_key(|p| p.id.label());
        Self {
            namespaced,
            cluster,
            snapshot: Snapshot::new(AgentMatcher::default(), HashSet::new(), compiled),
        }
    }

    /// Every kind a valid policy targets, and the kinds the annotation is honoured on.
    pub fn kinds(&self) -> BTreeSet<(String, String)> {
        self.snapshot
            .policies()
            .iter()
            .flat_map(|p| p.kinds())
            .chain(
                ANNOTATION_KINDS
                    .iter()
                    .map(|(g, k)| ((*g).to_owned(), (*k).to_owned())),
            )
            .collect()
    }
}

/// A Failure for a policy list that did not work, in words that say what is missing.
pub(super) fn policies_failure(err: kube::Error) -> Failure {
    match &err {
        kube::Error::Api(s) if s.code == 404 => Failure::new(
            "the API server does not serve agentguard.dev/v1alpha1 policies: are agentguard's CRDs installed?",
        ),
        _ => Failure::from(err),
    }
}

/// An approval annotation set found on an object.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct FoundApproval {
    pub object: ObjectKey,
    pub by: String,
    pub until: Option<Timestamp>,
    pub until_text: String,
    pub reason: Option<String>,
    /// Whether agentguard's seal is on it (the plugin cannot verify it; the webhook does).
    pub sealed: bool,
}

impl FoundApproval {
    /// The approval annotations of an object, when it has any.
    pub fn of(object: ObjectKey, meta: &kube::api::ObjectMeta) -> Option<Self> {
        let annotations = meta.annotations.as_ref()?;
        let by = annotations.get(APPROVED_BY_ANNOTATION);
        let until = annotations.get(APPROVED_UNTIL_ANNOTATION);
        let reason = annotations.get(APPROVAL_REASON_ANNOTATION);
        if by.is_none() && until.is_none() && reason.is_none() {
            return None;
        }
        let until_text = until.cloned().unwrap_or_default();
        Some(Self {
            object,
            by: by.map(|s| s.trim().to_owned()).unwrap_or_default(),
            until: until_text.trim().parse().ok(),
            until_text,
            reason: reason.cloned().filter(|r| !r.trim().is_empty()),
            sealed: annotations
                .get(APPROVAL_SEAL_ANNOTATION)
                .is_some_and(|s| !s.trim().is_empty()),
        })
    }

    /// Seconds left at `now`, when the approval is still live.
    pub fn left(&self, now: Timestamp) -> Option<i64> {
        let until = self.until?;
        (until > now).then(|| until.as_second() - now.as_second())
    }
}

/// How many objects of one kind are in scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct KindTotal {
    pub group: String,
    pub kind: String,
    pub total: usize,
}

/// The objects of the kinds that matter, in scope: indexed for protection and cascades, counted,
/// and their approval annotations.
#[derive(Default)]
pub(super) struct Inventory {
    pub index: ObjectIndex,
    /// Served kinds, with how many objects of each are in scope.
    pub kinds: Vec<KindTotal>,
    pub approvals: Vec<FoundApproval>,
    /// Kinds that could not be listed, with why.
    pub unreadable: Vec<String>,
}

/// Lists `kinds` (metadata only) in `scope`; cluster-scoped kinds are listed whole in either
/// scope. Kinds the API server does not serve are skipped.
pub(super) async fn inventory(
    client: &kube::Client,
    policies: &Policies,
    kinds: &BTreeSet<(String, String)>,
    scope: &Scope,
) -> Inventory {
    let mut resolver = KindResolver::default();
    let mut inventory = Inventory::default();
    for (group, kind) in kinds {
        let Some((resource, caps)) = resolver.resolve(client, group, kind).await else {
            continue;
        };
        let api: Api<DynamicObject> = match (&caps.scope, scope) {
            (ResourceScope::Namespaced, Scope::Namespace(ns)) => {
                Api::namespaced_with(client.clone(), ns, &resource)
            }
            _ => Api::all_with(client.clone(), &resource),
        };
        match api.list_metadata(&ListParams::default()).await {
            Ok(list) => {
                inventory.add(group, kind, &list.items, &policies.snapshot);
            }
            Err(err) => inventory.unreadable.push(format!(
                "{}: {}",
                plural(&resource),
                Failure::from(err).message
            )),
        }
    }
    inventory
}

fn plural(resource: &ApiResource) -> String {
    if resource.group.is_empty() {
        resource.plural.clone()
    } else {
        format!("{}.{}", resource.plural, resource.group)
    }
}

impl Inventory {
    fn add(
        &mut self,
        group: &str,
        kind: &str,
        items: &[PartialObjectMeta<DynamicObject>],
        snapshot: &Snapshot,
    ) {
        for meta in items {
            let Some(entry) = ObjectEntry::of_meta(group, kind, &meta.metadata) else {
                continue;
            };
            if let Some(approval) = FoundApproval::of(entry.key.clone(), &meta.metadata) {
                self.approvals.push(approval);
            }
            self.index.upsert(entry, snapshot);
        }
        self.kinds.push(KindTotal {
            group: group.to_owned(),
            kind: kind.to_owned(),
            total: items.len(),
        });
    }

    /// Protected objects of one kind.
    fn protected(&self, group: &str, kind: &str) -> usize {
        self.index
            .protected_per_kind()
            .into_iter()
            .find(|((g, k), _)| g == group && k == kind)
            .map_or(0, |(_, n)| n)
    }
}

/// One blocked attempt, from a `DeletionBlocked` Event.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Blocked {
    /// When it was last seen.
    pub time: Option<Timestamp>,
    pub agent: String,
    /// `PersistentVolumeClaim prod/data`.
    pub object: String,
    /// `ClusterProtectedResource/default-volumes`, or `annotation`.
    pub policy: String,
}

/// Reads a `DeletionBlocked` Event. Its note is written by the operator as
/// `agentguard blocked <subject> from destroying this object (<policy>)…`.
pub(super) fn blocked_of(event: &Event) -> Option<Blocked> {
    if event.reason.as_deref() != Some(BLOCKED_REASON) {
        return None;
    }
    let note = event.note.as_deref().unwrap_or_default();
    let (agent, policy) = note
        .strip_prefix("agentguard blocked ")
        .and_then(|rest| rest.split_once(" from destroying this object ("))
        .map(|(agent, rest)| {
            let policy = rest.split_once(')').map_or("", |(p, _)| p);
            (agent.to_owned(), policy.to_owned())
        })
        .unwrap_or_default();
    let object = event.regarding.as_ref().map(|r| {
        let kind = r.kind.as_deref().unwrap_or("object");
        let name = r.name.as_deref().unwrap_or_default();
        match r.namespace.as_deref().filter(|ns| !ns.is_empty()) {
            Some(ns) => format!("{kind} {ns}/{name}"),
            None => format!("{kind} {name}"),
        }
    });
    let time = event
        .series
        .as_ref()
        .map(|s| s.last_observed_time.0)
        .or(event.event_time.as_ref().map(|t| t.0))
        .or(event.deprecated_last_timestamp.as_ref().map(|t| t.0))
        .or(event.metadata.creation_timestamp.as_ref().map(|t| t.0));
    Some(Blocked {
        time,
        agent,
        object: object.unwrap_or_default(),
        policy,
    })
}

/// Whether an Event from the `default` namespace belongs in the status of `namespace`: it is
/// about a cluster-scoped object, shown in every scope, except a Namespace, which belongs to
/// its own.
fn shown_from_default(event: &Event, namespace: &str) -> bool {
    let Some(r) = event.regarding.as_ref() else {
        return false;
    };
    if !r.namespace.as_deref().unwrap_or_default().is_empty() {
        return false;
    }
    r.kind.as_deref() != Some("Namespace") || r.name.as_deref() == Some(namespace)
}

/// The latest blocked attempts in scope, newest first. Events about cluster-scoped objects
/// live in the `default` namespace and are shown in every scope (a Namespace's in its own
/// only). Events that cannot be read
/// are reported on stderr; the rest of the status is still worth showing.
async fn blocked_attempts(client: &kube::Client, scope: &Scope) -> Vec<Blocked> {
    let lp = ListParams::default().fields(&format!("reason={BLOCKED_REASON}"));
    // Each list, with the namespace whose scope filters the Events in `default`.
    let lists: Vec<(Api<Event>, Option<&str>)> = match scope {
        Scope::All => vec![(Api::all(client.clone()), None)],
        Scope::Namespace(ns) if ns == CLUSTER_EVENTS_NAMESPACE => {
            vec![(Api::namespaced(client.clone(), ns), None)]
        }
        Scope::Namespace(ns) => vec![
            (Api::namespaced(client.clone(), ns), None),
            (
                Api::namespaced(client.clone(), CLUSTER_EVENTS_NAMESPACE),
                Some(ns.as_str()),
            ),
        ],
    };
    let mut blocked = Vec::new();
    for (api, from_default_for) in lists {
        match api.list(&lp).await {
            Ok(list) => blocked.extend(
                list.items
                    .iter()
                    .filter(|e| from_default_for.is_none_or(|ns| shown_from_default(e, ns)))
                    .filter_map(blocked_of),
            ),
            Err(err) => eprintln!(
                "warning: cannot list {BLOCKED_REASON} events: {}",
                Failure::from(err).message
            ),
        }
    }
    latest(blocked)
}

/// Newest first, at most [`BLOCKED_SHOWN`].
fn latest(mut blocked: Vec<Blocked>) -> Vec<Blocked> {
    blocked.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| a.object.cmp(&b.object)));
    blocked.truncate(BLOCKED_SHOWN);
    blocked
}

/// What `status` shows; `-o json|yaml` prints it as is.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    scope: String,
    policies: Vec<PolicyRow>,
    protected_objects: Vec<KindRow>,
    approvals: Vec<ApprovalRow>,
    blocked: Vec<BlockedRow>,
    /// DeletionRequests waiting for a human, oldest first.
    requests: Vec<super::requests::PendingRow>,
    /// Objects annotated `agentguard.dev/protected=true` whose kind agentguard's RBAC does not
    /// let it watch (issue 16): shown, never silent.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    unguarded: Vec<UnguardedRow>,
    /// Protected databases (the data-holding catalog's kinds) with their own protection.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    databases: Vec<DatabaseRow>,
    /// Which webhook configuration routes requests to agentguard: `static` (loaded from files
    /// by the API server), `managed` (written by agentguard through the API) or `unknown`.
    #[serde(skip_serializing_if = "Option::is_none")]
    webhook_configuration: Option<WebhookConfigurationRow>,
}

/// A protected database and its provider-side protection, as `assess` reads its switches.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct DatabaseRow {
    /// `Instance.rds.aws.upbound.io`.
    kind: String,
    /// `namespace/name`, or the name of a cluster-scoped object.
    object: String,
    /// `on`, `off`, or `-` when the kind has no such switch.
    own_protection: String,
    /// `kept`, `lost`, or `-`.
    backups_on_delete: String,
    /// The switches that are off, as `key=value` or `key absent`.
    weakened_by: Vec<String>,
}

/// The protected objects of catalog kinds in scope, read whole and assessed.
async fn database_rows(
    client: &kube::Client,
    inventory: &Inventory,
    scope: &Scope,
) -> Vec<DatabaseRow> {
    let catalog = crate::catalog::catalog();
    let mut wanted: std::collections::BTreeMap<(String, String), HashSet<String>> =
        Default::default();
    for (entry, _) in inventory.index.protected_entries() {
        if catalog.kind(&entry.key.group, &entry.key.kind).is_some() {
            wanted
                .entry((entry.key.group.to_string(), entry.key.kind.to_string()))
                .or_default()
                .insert(entry.uid.to_string());
        }
    }
    let mut resolver = KindResolver::default();
    let mut rows = Vec::new();
    for ((group, kind), uids) in wanted {
        let (Some(entry), Some((resource, caps))) = (
            catalog.kind(&group, &kind),
            resolver.resolve(client, &group, &kind).await,
        ) else {
            continue;
        };
        let api: Api<DynamicObject> = match (&caps.scope, scope) {
            (ResourceScope::Namespaced, Scope::Namespace(ns)) => {
                Api::namespaced_with(client.clone(), ns, &resource)
            }
            _ => Api::all_with(client.clone(), &resource),
        };
        let mut assessed = Vec::new();
        let listed = crate::operator::posture::for_each_page(&api, |items| {
            assessed.extend(crate::operator::posture::assess_objects(
                entry,
                items,
                |uid| uids.contains(uid),
            ));
        })
        .await;
        if let Err(why) = listed {
            eprintln!("warning: cannot read {}: {why}", plural(&resource));
            continue;
        }
        rows.extend(assessed.into_iter().map(|(_, a)| DatabaseRow {
            kind: format!("{kind}.{group}"),
            object: match &a.key.namespace {
                Some(ns) => format!("{ns}/{}", a.key.name),
                None => a.key.name.to_string(),
            },
            own_protection: a.assessment.own_protection_text().to_owned(),
            backups_on_delete: a.assessment.backups_text().to_owned(),
            weakened_by: a.assessment.weakened,
        }));
    }
    rows.sort_by(|a, b| (&a.kind, &a.object).cmp(&(&b.kind, &b.object)));
    rows
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct UnguardedRow {
    /// `Vault.secrets.example.com`.
    kind: String,
    /// `namespace/name`, or `-` when agentguard recorded the kind without an object in scope.
    object: String,
    /// The rule to add to the chart value `rbac.extraWatchedResources`.
    rbac_rule: String,
}

/// Rows for the annotated-but-unguarded objects in `scope`, from agentguard's record.
fn unguarded_rows(recorded: &[RecordedKind], scope: &Scope) -> Vec<UnguardedRow> {
    let mut rows = Vec::new();
    for kind in recorded.iter().filter(|k| !k.guarded) {
        let name = if kind.group.is_empty() {
            kind.kind.clone()
        } else {
            format!("{}.{}", kind.kind, kind.group)
        };
        let in_scope: Vec<&String> = kind
            .objects
            .iter()
            .filter(|o| match (scope, o.split_once('/')) {
                (Scope::Namespace(ns), Some((object_ns, _))) => object_ns == ns,
                _ => true,
            })
            .collect();
        if in_scope.is_empty() && kind.objects.is_empty() {
            rows.push(UnguardedRow {
                kind: name.clone(),
                object: "-".into(),
                rbac_rule: kind.rbac_rule(),
            });
        }
        for object in in_scope {
            rows.push(UnguardedRow {
                kind: name.clone(),
                object: object.clone(),
                rbac_rule: kind.rbac_rule(),
            });
        }
    }
    rows
}

/// The kinds agentguard recorded from the annotation (its ConfigMap in `namespace`); empty
/// when there is none or it cannot be read (a warning says so).
async fn recorded_kinds(client: &kube::Client, namespace: &str) -> Vec<RecordedKind> {
    let (key, value) = RECORD_COMPONENT_LABEL;
    match Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(&format!("{key}={value}")))
        .await
    {
        Ok(list) => list
            .items
            .iter()
            .flat_map(|cm| parse_record(cm.data.as_ref().unwrap_or(&Default::default())))
            .collect(),
        Err(err) => {
            eprintln!(
                "warning: cannot read the kinds agentguard learned from annotations (ConfigMaps in {namespace}): {err}"
            );
            Vec::new()
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct WebhookConfigurationRow {
    in_force: &'static str,
    detail: String,
}

impl WebhookConfigurationRow {
    fn of(seen: Option<InForce>, agentguard_namespace: &str) -> Self {
        match seen {
            Some(InForce::Static) => Self {
                in_force: "static",
                detail: format!(
                    "{STATIC_CONFIGURATION_NAME}, loaded from files by the API server; no API call can delete or change it"
                ),
            },
            Some(InForce::Managed) => Self {
                in_force: "managed",
                detail: "written by agentguard through the API (cluster-admin can delete it; see docs/static-manifests.md)".into(),
            },
            None => Self {
                in_force: "unknown",
                detail: format!(
                    "the probe (a dry-run create of Secret {agentguard_namespace}/{PROBE_SECRET}) got no answer; is agentguard installed there, and may you create Secrets there?"
                ),
            },
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PolicyRow {
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    name: String,
    mode: String,
    /// Status of the Ready condition: True, False or Unknown.
    ready: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    ready_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ready_message: Option<String>,
    protected_objects: i64,
    blocked_deletions: i64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct KindRow {
    #[serde(skip_serializing_if = "String::is_empty")]
    group: String,
    kind: String,
    protected: usize,
    total: usize,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ApprovalRow {
    object: String,
    approved_by: String,
    approved_until: String,
    seconds_left: i64,
    time_left: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// agentguard's seal is on it; an unsealed approval counts for nothing.
    sealed: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct BlockedRow {
    #[serde(skip_serializing_if = "Option::is_none")]
    time: Option<String>,
    age: String,
    agent: String,
    object: String,
    policy: String,
}

fn policy_row(
    kind: &'static str,
    namespace: Option<String>,
    name: String,
    mode: String,
    status: Option<&ProtectionStatus>,
) -> PolicyRow {
    let ready = status.and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
    PolicyRow {
        kind,
        namespace,
        name,
        mode,
        ready: ready.map_or_else(|| "Unknown".to_owned(), |c| c.status.clone()),
        ready_reason: ready.map(|c| c.reason.clone()).filter(|r| !r.is_empty()),
        ready_message: ready.map(|c| c.message.clone()).filter(|m| !m.is_empty()),
        protected_objects: status.map_or(0, |s| s.protected_objects),
        blocked_deletions: status.map_or(0, |s| s.blocked_deletions),
    }
}

impl Report {
    fn build(
        scope: &Scope,
        policies: &Policies,
        inventory: &Inventory,
        blocked: Vec<Blocked>,
        now: Timestamp,
    ) -> Self {
        let mut rows: Vec<PolicyRow> = policies
            .cluster
            .iter()
            .map(|p| {
                policy_row(
                    "ClusterProtectedResource",
                    None,
                    p.name_any(),
                    format!("{:?}", p.spec.protection.mode),
                    p.status.as_ref(),
                )
            })
            .collect();
        rows.extend(policies.namespaced.iter().map(|p| {
            policy_row(
                "ProtectedResource",
                p.namespace(),
                p.name_any(),
                format!("{:?}", p.spec.protection.mode),
                p.status.as_ref(),
            )
        }));
        let mut kinds: Vec<KindRow> = inventory
            .kinds
            .iter()
            .map(|k| KindRow {
                group: k.group.clone(),
                kind: k.kind.clone(),
                protected: inventory.protected(&k.group, &k.kind),
                total: k.total,
            })
            .collect();
        kinds.sort_by(|a, b| (&a.kind, &a.group).cmp(&(&b.kind, &b.group)));
        let mut approvals: Vec<(i64, ApprovalRow)> = inventory
            .approvals
            .iter()
            .filter_map(|a| {
                let left = a.left(now)?;
                Some((
                    left,
                    ApprovalRow {
                        object: a.object.describe(),
                        approved_by: a.by.clone(),
                        approved_until: a.until_text.trim().to_owned(),
                        seconds_left: left,
                        time_left: human_duration(left),
                        reason: a.reason.clone(),
                        sealed: a.sealed,
                    },
                ))
            })
            .collect();
        approvals.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.object.cmp(&b.1.object)));
        Self {
            scope: scope.describe(),
            policies: rows,
            protected_objects: kinds,
            approvals: approvals.into_iter().map(|(_, row)| row).collect(),
            blocked: latest(blocked)
                .into_iter()
                .map(|b| BlockedRow {
                    time: b.time.map(|t| t.to_string()),
                    age: b.time.map_or_else(
                        || "?".to_owned(),
                        |t| human_duration(now.as_second() - t.as_second()),
                    ),
                    agent: b.agent,
                    object: b.object,
                    policy: if b.policy.is_empty() {
                        "?".to_owned()
                    } else {
                        b.policy
                    },
                })
                .collect(),
            requests: Vec::new(),
            unguarded: Vec::new(),
            databases: Vec::new(),
            webhook_configuration: None,
        }
    }

    /// The four sections as text: a heading line, then a table (or `none`).
    fn render(&self) -> String {
        let section = |heading: &str, headers: &[&str], rows: Vec<Vec<String>>| {
            let body = if rows.is_empty() {
                "none\n".to_owned()
            } else {
                table(headers, &rows)
            };
            format!("{heading}\n{body}")
        };
        let dash = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".to_owned());
        let policies = section(
            "POLICIES",
            &[
                "KIND",
                "NAMESPACE",
                "NAME",
                "MODE",
                "READY",
                "PROTECTED",
                "BLOCKED",
            ],
            self.policies
                .iter()
                .map(|p| {
                    vec![
                        p.kind.to_owned(),
                        dash(&p.namespace),
                        p.name.clone(),
                        p.mode.clone(),
                        match &p.ready_reason {
                            Some(reason) if p.ready != "True" => format!("{} ({reason})", p.ready),
                            _ => p.ready.clone(),
                        },
                        p.protected_objects.to_string(),
                        p.blocked_deletions.to_string(),
                    ]
                })
                .collect(),
        );
        let objects = section(
            &format!("PROTECTED OBJECTS ({})", self.scope),
            &["KIND", "PROTECTED", "TOTAL"],
            self.protected_objects
                .iter()
                .map(|k| {
                    let kind = if k.group.is_empty() {
                        k.kind.clone()
                    } else {
                        format!("{}.{}", k.kind, k.group)
                    };
                    vec![kind, k.protected.to_string(), k.total.to_string()]
                })
                .collect(),
        );
        let approvals = section(
            "APPROVALS",
            &["OBJECT", "APPROVED BY", "TIME LEFT", "SEALED", "REASON"],
            self.approvals
                .iter()
                .map(|a| {
                    vec![
                        a.object.clone(),
                        a.approved_by.clone(),
                        a.time_left.clone(),
                        if a.sealed { "yes" } else { "no (void)" }.to_owned(),
                        a.reason.clone().unwrap_or_else(|| "-".to_owned()),
                    ]
                })
                .collect(),
        );
        let blocked = section(
            "BLOCKED",
            &["AGE", "AGENT", "OBJECT", "POLICY"],
            self.blocked
                .iter()
                .map(|b| {
                    vec![
                        b.age.clone(),
                        b.agent.clone(),
                        b.object.clone(),
                        b.policy.clone(),
                    ]
                })
                .collect(),
        );
        let requests = section(
            "REQUESTS (pending)",
            &["NAMESPACE", "NAME", "TARGET", "REQUESTER", "AGE", "REASON"],
            self.requests
                .iter()
                .map(|r| {
                    vec![
                        r.namespace.clone(),
                        r.name.clone(),
                        r.target.clone(),
                        r.requester.clone(),
                        r.age.clone(),
                        r.reason.clone(),
                    ]
                })
                .collect(),
        );
        let mut out = format!("{policies}\n{objects}\n{approvals}\n{blocked}\n{requests}");
        if !self.databases.is_empty() {
            out.push_str(&format!(
                "\n{}",
                section(
                    "DATABASES (their own protection, from the catalog's switches)",
                    &[
                        "KIND",
                        "OBJECT",
                        "OWN PROTECTION",
                        "BACKUPS ON DELETE",
                        "WEAKENED BY"
                    ],
                    self.databases
                        .iter()
                        .map(|d| {
                            vec![
                                d.kind.clone(),
                                d.object.clone(),
                                d.own_protection.clone(),
                                d.backups_on_delete.clone(),
                                if d.weakened_by.is_empty() {
                                    "-".to_owned()
                                } else {
                                    d.weakened_by.join(", ")
                                },
                            ]
                        })
                        .collect(),
                )
            ));
        }
        if !self.unguarded.is_empty() {
            out.push_str(&format!(
                "\n{}",
                section(
                    "ANNOTATED BUT UNGUARDED (agentguard cannot watch these kinds: add the rule to rbac.extraWatchedResources)",
                    &["KIND", "OBJECT", "RBAC RULE"],
                    self.unguarded
                        .iter()
                        .map(|u| vec![u.kind.clone(), u.object.clone(), u.rbac_rule.clone()])
                        .collect(),
                )
            ));
        }
        // Last, so the sections above keep their places for scripts that read them.
        if let Some(w) = &self.webhook_configuration {
            out.push_str(&format!(
                "\nWEBHOOK CONFIGURATION: {} ({})\n",
                w.in_force, w.detail
            ));
        }
        out
    }
}

pub async fn run(ctx: &Ctx, _args: StatusArgs) -> Outcome {
    let scope = if ctx.all_namespaces {
        Scope::All
    } else {
        Scope::Namespace(ctx.namespace.clone())
    };
    let policies = Policies::list(&ctx.client, &scope)
        .await
        .map_err(policies_failure)?;
    let recorded = recorded_kinds(&ctx.client, &ctx.agentguard_namespace).await;
    // Kinds agentguard guards because someone annotated one of their objects count too.
    let mut kinds = policies.kinds();
    kinds.extend(recorded.iter().filter(|k| k.guarded).map(|k| k.key()));
    let inventory = inventory(&ctx.client, &policies, &kinds, &scope).await;
    for problem in &inventory.unreadable {
        eprintln!("warning: cannot list {problem}");
    }
    let blocked = blocked_attempts(&ctx.client, &scope).await;
    let mut report = Report::build(&scope, &policies, &inventory, blocked, Timestamp::now());
    report.unguarded = unguarded_rows(&recorded, &scope);
    report.databases = database_rows(&ctx.client, &inventory, &scope).await;
    for row in &report.unguarded {
        eprintln!(
            "warning: {} {} is annotated agentguard.dev/protected=true but agentguard cannot watch its kind; add {} to rbac.extraWatchedResources",
            row.kind, row.object, row.rbac_rule
        );
    }
    report.requests = super::requests::pending_rows(
        &ctx.client,
        match &scope {
            Scope::Namespace(ns) => Some(ns.as_str()),
            Scope::All => None,
        },
    )
    .await;
    report.webhook_configuration = Some(WebhookConfigurationRow::of(
        probe(&ctx.client, &ctx.agentguard_namespace).await,
        &ctx.agentguard_namespace,
    ));
    match ctx.output {
        Output::Table => print!("{}", report.render()),
        output => super::print(output, &[], &[], &report),
    }
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::events::v1::EventSeries;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};

    use super::*;
    use crate::api::{
        ApprovalSpec, ClusterProtectedResourceSpec, Mode, PROTECTED_ANNOTATION,
        ProtectedResourceSpec, ProtectionSpec, Target,
    };

    fn ts(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn event(note: &str, ns: Option<&str>, at: &str) -> Event {
        Event {
            reason: Some(BLOCKED_REASON.into()),
            note: Some(note.into()),
            regarding: Some(ObjectReference {
                kind: Some("PersistentVolumeClaim".into()),
                namespace: ns.map(Into::into),
                name: Some("data".into()),
                ..Default::default()
            }),
            event_time: Some(MicroTime(ts(at))),
            ..Default::default()
        }
    }

    #[test]
    fn the_event_reason_is_the_operators() {
        assert_eq!(BLOCKED_REASON, crate::operator::events::REASON);
    }

    #[test]
    fn blocked_events_name_agent_object_and_policy() {
        let e = event(
            "agentguard blocked system:serviceaccount:ci:cursor from destroying this object \
             (ClusterProtectedResource/default-volumes), 3 attempts. A human must approve first: kubectl agentguard approve",
            Some("prod"),
            "2026-01-01T10:00:00Z",
        );
        assert_eq!(
            blocked_of(&e).unwrap(),
            Blocked {
                time: Some(ts("2026-01-01T10:00:00Z")),
                agent: "system:serviceaccount:ci:cursor".into(),
                object: "PersistentVolumeClaim prod/data".into(),
                policy: "ClusterProtectedResource/default-volumes".into(),
            }
        );
        // A series is seen last at its last observation.
        let mut repeated = e.clone();
        repeated.series = Some(EventSeries {
            count: 2,
            last_observed_time: MicroTime(ts("2026-01-01T11:00:00Z")),
        });
        assert_eq!(
            blocked_of(&repeated).unwrap().time,
            Some(ts("2026-01-01T11:00:00Z"))
        );
        let mut other = e;
        other.reason = Some("Scheduled".into());
        assert!(blocked_of(&other).is_none());
        let pv = event(
            "agentguard blocked bot from destroying this object (annotation). A human must approve first",
            None,
            "2026-01-01T10:00:00Z",
        );
        let b = blocked_of(&pv).unwrap();
        assert_eq!(
            (b.object.as_str(), b.policy.as_str()),
            ("PersistentVolumeClaim data", "annotation")
        );
        assert!(shown_from_default(&pv, "prod"));
        assert!(
            !shown_from_default(&event("x", Some("prod"), "2026-01-01T10:00:00Z"), "prod"),
            "listed in prod itself"
        );
        let mut ns = pv.clone();
        ns.regarding.as_mut().unwrap().kind = Some("Namespace".into());
        ns.regarding.as_mut().unwrap().name = Some("dev".into());
        assert!(!shown_from_default(&ns, "prod"));
        assert!(shown_from_default(&ns, "dev"));
    }

    #[test]
    fn blocked_attempts_newest_first_at_most_twenty() {
        let blocked: Vec<Blocked> = (0..25)
            .map(|i| Blocked {
                time: Some(Timestamp::from_second(1_700_000_000 + i).unwrap()),
                agent: format!("a{i}"),
                object: "x".into(),
                policy: "p".into(),
            })
            .collect();
        let shown = latest(blocked);
        assert_eq!(shown.len(), 20);
        assert_eq!(shown[0].agent, "a24");
        assert_eq!(shown[19].agent, "a5");
    }

    fn meta(annotations: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    fn key(name: &str) -> ObjectKey {
        ObjectKey {
            group: "".into(),
            kind: "PersistentVolumeClaim".into(),
            namespace: Some("prod".into()),
            name: name.into(),
        }
    }

    #[test]
    fn approvals_are_live_until_they_expire() {
        let now = ts("2026-01-01T10:00:00Z");
        let a = FoundApproval::of(
            key("data"),
            &meta(&[
                (APPROVED_BY_ANNOTATION, "alice"),
                (APPROVED_UNTIL_ANNOTATION, "2026-01-01T10:30:00Z"),
                (APPROVAL_REASON_ANNOTATION, "migration"),
            ]),
        )
        .unwrap();
        assert_eq!(a.left(now), Some(1800));
        assert_eq!(a.reason.as_deref(), Some("migration"));
        assert_eq!(a.left(ts("2026-01-01T10:30:00Z")), None);
        let garbled = FoundApproval::of(
            key("data"),
            &meta(&[
                (APPROVED_BY_ANNOTATION, "alice"),
                (APPROVED_UNTIL_ANNOTATION, "soon"),
            ]),
        )
        .unwrap();
        assert_eq!(garbled.left(now), None);
        assert!(FoundApproval::of(key("data"), &meta(&[(PROTECTED_ANNOTATION, "true")])).is_none());
    }

    fn policies() -> Policies {
        let mut data = Target::kinds(&[""], &["PersistentVolumeClaim"]);
        data.names = vec!["data-*".into()];
        let mut spec = ProtectionSpec::new(Mode::Enforce, vec![data]);
        spec.approval = Some(ApprovalSpec {
            max_ttl: Some("20m".into()),
            approvers: None,
        });
        let mut pr = ProtectedResource::new("orders", ProtectedResourceSpec { protection: spec });
        pr.metadata.namespace = Some("prod".into());
        let invalid = ClusterProtectedResource::new(
            "broken",
            ClusterProtectedResourceSpec {
                protection: ProtectionSpec::new(
                    Mode::Enforce,
                    vec![Target::kinds(&["db.example.com"], &["Not A Kind"])],
                ),
            },
        );
        let cluster = ClusterProtectedResource::new(
            "databases",
            ClusterProtectedResourceSpec {
                protection: ProtectionSpec::new(
                    Mode::Warn,
                    vec![Target::kinds(&["db.example.com"], &["Database"])],
                ),
            },
        );
        Policies::new(vec![pr], vec![invalid, cluster])
    }

    #[test]
    fn kinds_are_the_policies_targets_and_the_annotation_kinds() {
        let kinds = policies().kinds();
        let expected: BTreeSet<(String, String)> = [
            ("", "PersistentVolumeClaim"),
            ("", "PersistentVolume"),
            ("snapshot.storage.k8s.io", "VolumeSnapshot"),
            ("snapshot.storage.k8s.io", "VolumeSnapshotContent"),
            ("db.example.com", "Database"),
        ]
        .iter()
        .map(|(g, k)| ((*g).to_owned(), (*k).to_owned()))
        .collect();
        assert_eq!(
            kinds, expected,
            "the invalid policy's kind is not looked at"
        );
    }

    fn pvc(
        name: &str,
        uid: &str,
        annotations: &[(&str, &str)],
    ) -> PartialObjectMeta<DynamicObject> {
        let mut m = meta(annotations);
        m.name = Some(name.into());
        m.namespace = Some("prod".into());
        m.uid = Some(uid.into());
        m.labels = Some(BTreeMap::new());
        PartialObjectMeta {
            types: None,
            metadata: m,
            _phantom: Default::default(),
        }
    }

    #[test]
    fn report_counts_protection_and_shows_live_approvals() {
        let policies = policies();
        let mut inventory = Inventory::default();
        inventory.add(
            "",
            "PersistentVolumeClaim",
            &[
                pvc("data-0", "u0", &[]),
                pvc(
                    "logs",
                    "u1",
                    &[
                        (PROTECTED_ANNOTATION, "true"),
                        (APPROVED_BY_ANNOTATION, "alice"),
                        (APPROVED_UNTIL_ANNOTATION, "2026-01-01T10:29:00Z"),
                        (APPROVAL_SEAL_ANNOTATION, "v1:key-1:00"),
                    ],
                ),
                pvc(
                    "old",
                    "u2",
                    &[
                        (APPROVED_BY_ANNOTATION, "bob"),
                        (APPROVED_UNTIL_ANNOTATION, "2026-01-01T09:00:00Z"),
                    ],
                ),
                pvc("tmp", "u3", &[]),
            ],
            &policies.snapshot,
        );
        let now = ts("2026-01-01T10:00:00Z");
        let blocked = vec![Blocked {
            time: Some(ts("2026-01-01T09:55:00Z")),
            agent: "system:serviceaccount:prod:cursor".into(),
            object: "PersistentVolumeClaim prod/data-0".into(),
            policy: "ProtectedResource/prod/orders".into(),
        }];
        let report = Report::build(
            &Scope::Namespace("prod".into()),
            &policies,
            &inventory,
            blocked,
            now,
        );
        let text = report.render();
        let expected = "\
POLICIES
KIND                       NAMESPACE   NAME        MODE      READY     PROTECTED   BLOCKED
ClusterProtectedResource   -           broken      Enforce   Unknown   0           0
ClusterProtectedResource   -           databases   Warn      Unknown   0           0
ProtectedResource          prod        orders      Enforce   Unknown   0           0

PROTECTED OBJECTS (namespace prod)
KIND                    PROTECTED   TOTAL
PersistentVolumeClaim   2           4

APPROVALS
OBJECT                            APPROVED BY   TIME LEFT   SEALED   REASON
PersistentVolumeClaim prod/logs   alice         29m         yes      -

BLOCKED
AGE   AGENT                               OBJECT                              POLICY
5m    system:serviceaccount:prod:cursor   PersistentVolumeClaim prod/data-0   ProtectedResource/prod/orders

REQUESTS (pending)
none
";
        assert_eq!(text, expected);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["approvals"][0]["secondsLeft"], 1740);
        assert_eq!(json["approvals"][0]["sealed"], true);
        assert_eq!(json["protectedObjects"][0]["protected"], 2);
        assert_eq!(
            json["blocked"][0]["agent"],
            "system:serviceaccount:prod:cursor"
        );
        assert_eq!(json["policies"][2]["namespace"], "prod");
    }

    #[test]
    fn empty_sections_say_none() {
        let report = Report::build(
            &Scope::All,
            &Policies::new(vec![], vec![]),
            &Inventory::default(),
            vec![],
            ts("2026-01-01T10:00:00Z"),
        );
        assert_eq!(
            report.render(),
            "POLICIES\nnone\n\nPROTECTED OBJECTS (all namespaces)\nnone\n\nAPPROVALS\nnone\n\nBLOCKED\nnone\n\nREQUESTS (pending)\nnone\n"
        );
    }

    #[test]
    fn annotated_but_unguarded_objects_are_shown_with_the_rule_to_add() {
        let vault = RecordedKind {
            group: "x.io".into(),
            version: "v1".into(),
            kind: "Vault".into(),
            resource: "vaults".into(),
            namespaced: true,
            guarded: false,
            objects: ["prod/keys".to_owned(), "dev/scratch".to_owned()].into(),
        };
        let guarded = RecordedKind {
            guarded: true,
            kind: "Database".into(),
            resource: "databases".into(),
            objects: Default::default(),
            ..vault.clone()
        };
        let recorded = vec![vault, guarded];
        let mut report = Report::build(
            &Scope::Namespace("prod".into()),
            &Policies::new(vec![], vec![]),
            &Inventory::default(),
            vec![],
            ts("2026-01-01T10:00:00Z"),
        );
        report.unguarded = unguarded_rows(&recorded, &Scope::Namespace("prod".into()));
        assert_eq!(
            report.unguarded.len(),
            1,
            "only prod's, only the unguarded kind"
        );
        let text = report.render();
        assert!(
            text.ends_with(
                "ANNOTATED BUT UNGUARDED (agentguard cannot watch these kinds: add the rule to rbac.extraWatchedResources)\n\
                 KIND         OBJECT      RBAC RULE\n\
                 Vault.x.io   prod/keys   {apiGroups: [\"x.io\"], resources: [\"vaults\"], verbs: [\"list\", \"watch\"]}\n"
            ),
            "{text}"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["unguarded"][0]["object"], "prod/keys");
        assert_eq!(unguarded_rows(&recorded, &Scope::All).len(), 2);
    }
}
