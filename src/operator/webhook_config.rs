//! The ValidatingWebhookConfiguration, owned by the operator: its rules follow the kinds that
//! policies target, the annotation kinds, the owner kinds of protected objects and the cascade
//! roots; `matchConditions` let CREATE and UPDATE through only when they matter. It is compared
//! with the server (every watch event, relists included, and a read every 30 s): if someone
//! deletes or edits it, it is put back. The rules only grow on missing knowledge
//! ([`routes_to_apply`]): nothing is removed before the caches synced or while a kind's
//! discovery fails (docs/operations.md).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations,
    ServiceReference, ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, OwnerReference,
};
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ObjectMeta, Patch, PatchParams,
};
use kube::runtime::{WatchStreamExt, watcher};

use crate::index::{KindResolver, Lookup, Readiness, RecordedKinds, SharedObjects, SharedSnapshot};
use crate::policy::ProtectedObjects;
use crate::policy::managers::ManagerKind;
use crate::policy::{Applies, PROXY_RULES};

/// The webhook's name, as the API server prints it in denials and prefixes audit annotations.
pub const WEBHOOK_NAME: &str = "validate.agentguard.dev";
/// The sealing webhook's name.
pub const SEAL_WEBHOOK_NAME: &str = "seal.agentguard.dev";
/// The webhook that learns kinds from the `agentguard.dev/protected` annotation.
pub const ANNOTATE_WEBHOOK_NAME: &str = "annotate.agentguard.dev";
const FIELD_MANAGER: &str = "agentguard-operator";
const RECONCILE_INTERVAL: Duration = Duration::from_secs(2);
/// How often the configurations are read from the server (besides every watch event) and
/// every routed kind looked up again: the longest a drift unseen by the watch lasts.
pub const VERIFY_INTERVAL: Duration = Duration::from_secs(30);

/// Deleting these takes other objects along: namespaces, CRDs (their instances), StatefulSets
/// (claims, with retention Delete).
const CASCADE_ROOTS: &[(&str, &str)] = &[
    ("", "namespaces"),
    ("apiextensions.k8s.io", "customresourcedefinitions"),
    ("apps", "statefulsets"),
];

/// Always routed for CREATE and UPDATE: the agent label on ServiceAccounts, volumes (their
/// reclaim policy), agentguard's own objects.
const ALWAYS_WRITTEN: &[(&str, &str)] = &[
    ("", "serviceaccounts"),
    ("", "persistentvolumes"),
    ("agentguard.dev", "protectedresources"),
    ("agentguard.dev", "clusterprotectedresources"),
    // Filed only in one's own name; answered only by humans.
    ("agentguard.dev", "deletionrequests"),
    ("agentguard.dev", "deletionrequests/status"),
];

/// The cluster's own controllers: never restricted (a cascade a human started must finish), so
/// their writes (status churn, mostly) need not reach the webhook.
const CONTROLLERS: &str = "(request.userInfo.username == 'system:kube-controller-manager' \
|| request.userInfo.username.startsWith('system:serviceaccount:kube-system:'))";

/// Writes to a root (not a protected kind) reach the webhook when they touch what the
/// decisions read: agentguard metadata (approvals, protection), owners and finalizers
/// (invariant 2), and the fields of the deletion-by-proxy table. CRDs: [`crd_condition`].
const ROOT_WRITE_CONDITION: &str = "(object != null && has(object.metadata.annotations) && object.metadata.annotations.exists(k, k.startsWith('agentguard.dev/'))) \
|| (oldObject != null && has(oldObject.metadata.annotations) && oldObject.metadata.annotations.exists(k, k.startsWith('agentguard.dev/'))) \
|| (object != null && has(object.metadata.labels) && object.metadata.labels.exists(k, k.startsWith('agentguard.dev/'))) \
|| (oldObject != null && has(oldObject.metadata.labels) && oldObject.metadata.labels.exists(k, k.startsWith('agentguard.dev/'))) \
|| (object != null && oldObject != null && (has(object.metadata.ownerReferences) != has(oldObject.metadata.ownerReferences) || (has(object.metadata.ownerReferences) && object.metadata.ownerReferences != oldObject.metadata.ownerReferences))) \
|| (object != null && oldObject != null && (has(object.metadata.finalizers) != has(oldObject.metadata.finalizers) || (has(object.metadata.finalizers) && object.metadata.finalizers != oldObject.metadata.finalizers))) \
|| (request.resource.resource == 'persistentvolumes' && object != null && has(object.spec.persistentVolumeReclaimPolicy) && object.spec.persistentVolumeReclaimPolicy == 'Delete') \
|| (request.resource.resource == 'statefulsets' && object != null && has(object.spec.persistentVolumeClaimRetentionPolicy)) \
|| (request.resource.resource == 'statefulsets' && request.subResource == 'scale') \
|| (object != null && has(object.spec) && has(object.spec.scaleTargetRef)) \
|| (request.resource.group in ['argoproj.io', 'kustomize.toolkit.fluxcd.io', 'helm.toolkit.fluxcd.io'] && object != null && oldObject != null && (has(object.spec) != has(oldObject.spec) || (has(object.spec) && object.spec != oldObject.spec))) \
|| (request.operation == 'CREATE' && request.resource.resource in ['persistentvolumes', 'volumesnapshotcontents']) \
|| (object != null && has(object.metadata.annotations) && 'crossplane.io/external-name' in object.metadata.annotations && (oldObject == null || !has(oldObject.metadata.annotations) || !('crossplane.io/external-name' in oldObject.metadata.annotations) || oldObject.metadata.annotations['crossplane.io/external-name'] != object.metadata.annotations['crossplane.io/external-name'])) \
|| (request.operation == 'CREATE' && request.resource.resource == 'deletebackuprequests') \
|| (oldObject != null && has(oldObject.metadata.deletionTimestamp)) \
|| (object != null && has(object.spec) && has(object.spec.deletionPolicy) && object.spec.deletionPolicy == 'Delete') \
|| (object != null && has(object.deletionPolicy) && object.deletionPolicy == 'Delete') \
|| (oldObject != null && has(oldObject.spec) && has(oldObject.spec.managementPolicies)) \
|| (object != null && has(object.metadata.labels) && 'cleanup.kyverno.io/ttl' in object.metadata.labels) \
|| (oldObject != null && has(oldObject.metadata.annotations) && ('helm.sh/resource-policy' in oldObject.metadata.annotations || 'argocd.argoproj.io/sync-options' in oldObject.metadata.annotations || 'kustomize.toolkit.fluxcd.io/prune' in oldObject.metadata.annotations))";

/// The sealing webhook sees a write only when approval metadata is on the object, and never a
/// controller's (it never approves; its status updates must go on while agentguard is down).
pub fn seal_condition() -> String {
    format!(
        "!{CONTROLLERS} && object != null && has(object.metadata.annotations) \
         && ('agentguard.dev/approved-by' in object.metadata.annotations \
         || 'agentguard.dev/approved-until' in object.metadata.annotations \
         || 'agentguard.dev/approval-seal' in object.metadata.annotations)"
    )
}

/// The validating webhook's matchCondition for a set of protected resources: every DELETE,
/// every write to agentguard's own objects, every UPDATE by a human or an agent of a protected
/// object (any field may lower its protection: a label a selector reads), and other writes
/// when they touch what the decisions read (a new object has no protection to lower, so a
/// CREATE without agentguard metadata or a proxy field still works while agentguard is down).
/// Generated with the rules from one table.
pub fn match_condition(protected: &Resources, own_namespace: &str) -> String {
    let names: Vec<String> = protected
        .iter()
        .flat_map(|(group, plurals)| plurals.iter().map(move |p| format!("'{group}/{p}'")))
        .collect();
    let protected_write = if names.is_empty() {
        String::new()
    } else {
        format!(
            "(request.operation == 'UPDATE' && (request.resource.group + '/' + request.resource.resource) in [{}]) || ",
            names.join(", ")
        )
    };
    // Controllers' writes stay away (they are never restricted, and their status and
    // finalizer updates must go on while agentguard is down); their DELETEs do not, so a
    // cascade is still seen.
    let crds = crd_condition(own_namespace);
    format!(
        "!{AGGREGATOR} && (request.operation == 'DELETE' || request.resource.group == 'agentguard.dev' || (!{CONTROLLERS} && ({protected_write}{ROOT_WRITE_CONDITION} || {crds} || {API_SERVICES})))"
    )
}

/// APIServices: every write reaches the webhook (only humans may change which server answers
/// for an API group), through the rule [`api_service_rule`].
const API_SERVICES: &str = "(request.resource.group == 'apiregistration.k8s.io' && request.resource.resource == 'apiservices')";

/// The API server registering and removing the APIServices of its own groups (one per CRD
/// group and version, on start and whenever a CRD changes) is never sent to the webhook:
/// that must go on while agentguard is down, or an API server restart would not serve them.
const AGGREGATOR: &str = "(request.userInfo.username == 'system:apiserver' && request.resource.resource == 'apiservices')";

/// Every write to an APIService (not its status, which the API server keeps).
fn api_service_rule() -> RuleWithOperations {
    RuleWithOperations {
        operations: Some(vec!["CREATE".into(), "UPDATE".into(), "DELETE".into()]),
        api_groups: Some(vec!["apiregistration.k8s.io".into()]),
        api_versions: Some(vec!["*".into()]),
        resources: Some(vec!["apiservices".into()]),
        scope: Some("*".into()),
    }
}

/// CRD writes that reach the webhook: a change to a CRD's definition (what the API server keeps
/// of its instances) and any write to agentguard's own CRDs. Not their status, which the API
/// server itself keeps and must go on while agentguard is down; nor writes by agentguard's own
/// namespace's ServiceAccounts (the chart's CRD upgrade hook among them), so a `helm upgrade`
/// that repairs a broken agentguard is not refused by the webhook it repairs. Whoever can run
/// a Pod there can act as agentguard already (docs/security.md).
fn crd_condition(own_namespace: &str) -> String {
    format!(
        "(request.resource.resource == 'customresourcedefinitions' && (!has(request.subResource) || request.subResource == '') \
         && object != null && oldObject != null \
         && !request.userInfo.username.startsWith('system:serviceaccount:{own_namespace}:') \
         && (request.name.endsWith('.agentguard.dev') || object.spec != oldObject.spec))"
    )
}

/// What the webhooks route: the protected kinds (policy targets and annotation kinds) and the
/// roots whose deletion or edit reaches them (owner kinds of protected objects).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Routes {
    pub protected: Resources,
    pub roots: Resources,
}

impl Routes {
    /// Resources whose DELETE is judged.
    pub fn deletes(&self) -> Resources {
        let mut delete = self.protected.clone();
        merge(&mut delete, &self.roots);
        for (group, plural) in CASCADE_ROOTS {
            insert(&mut delete, group, plural);
        }
        delete
    }

    /// Resources whose CREATE and UPDATE are judged (and sealed): every deleted resource and
    /// its `status` subresource (which keeps metadata changes for several kinds), plus
    /// [`ALWAYS_WRITTEN`].
    pub fn writes(&self, velero: bool) -> Resources {
        let mut write = Resources::new();
        for (group, plurals) in self.deletes() {
            for plural in plurals {
                insert(&mut write, &group, &format!("{plural}/status"));
                insert(&mut write, &group, &plural);
            }
        }
        for (group, plural) in ALWAYS_WRITTEN {
            insert(&mut write, group, plural);
        }
        insert(&mut write, "", "persistentvolumes/status");
        // Subresources whose objects stand in for another kind (`statefulsets/scale`).
        for rule in PROXY_RULES {
            if let Applies::Subresource(group, resource, sub) = rule.applies {
                insert(&mut write, group, &format!("{resource}/{sub}"));
            }
        }
        // Deletion by proxy through Velero: a DeleteBackupRequest for a protected Backup.
        if velero {
            insert(&mut write, "velero.io", "deletebackuprequests");
        }
        write
    }
}

fn insert(resources: &mut Resources, group: &str, plural: &str) {
    resources
        .entry(group.to_owned())
        .or_default()
        .insert(plural.to_owned());
}

fn merge(into: &mut Resources, from: &Resources) {
    for (group, plurals) in from {
        into.entry(group.clone())
            .or_default()
            .extend(plurals.iter().cloned());
    }
}

/// What a configuration on the server routes now, read back from its rules: the resources
/// of the judging webhook's DELETE rules (less the ones every configuration has), protected
/// when its matchCondition lists them among the protected kinds (every UPDATE judged), roots
/// otherwise. A condition that cannot be read counts them all protected (more is judged, never
/// less).
pub fn routes_on_server(vwc: &ValidatingWebhookConfiguration) -> Routes {
    let mut routes = Routes::default();
    let Some(hook) = vwc
        .webhooks
        .iter()
        .flatten()
        .find(|h| h.name == WEBHOOK_NAME)
    else {
        return routes;
    };
    let listed = hook
        .match_conditions
        .iter()
        .flatten()
        .find_map(|c| protected_in_condition(&c.expression));
    for rule in hook.rules.iter().flatten() {
        if rule.operations.as_deref() != Some(&["DELETE".to_owned()][..]) {
            continue;
        }
        for group in rule.api_groups.iter().flatten() {
            for plural in rule.resources.iter().flatten() {
                let always = CASCADE_ROOTS.contains(&(group.as_str(), plural.as_str()))
                    || (group == "agentguard.dev"
                        && ["protectedresources", "clusterprotectedresources"]
                            .contains(&plural.as_str()));
                if always || group == "*" || plural.contains('*') {
                    continue;
                }
                let protected = listed
                    .as_ref()
                    .is_none_or(|l| l.contains(&(group.clone(), plural.clone())));
                let into = if protected {
                    &mut routes.protected
                } else {
                    &mut routes.roots
                };
                insert(into, group, plural);
            }
        }
    }
    routes
}

/// The protected resources a [`match_condition`] lists, or None when `expression` is not one.
fn protected_in_condition(expression: &str) -> Option<BTreeSet<(String, String)>> {
    if !expression.contains(ROOT_WRITE_CONDITION) {
        return None;
    }
    const LIST: &str = "(request.resource.group + '/' + request.resource.resource) in [";
    let Some(start) = expression.find(LIST) else {
        // No protected kinds.
        return Some(BTreeSet::new());
    };
    let rest = &expression[start + LIST.len()..];
    let list = &rest[..rest.find(']')?];
    list.split(", ")
        .map(|item| {
            let (group, plural) = item.trim_matches('\'').split_once('/')?;
            Some((group.to_owned(), plural.to_owned()))
        })
        .collect()
}

/// The routes to apply. Rules only grow on missing knowledge: until everything they are
/// computed from is known (caches synced, every kind resolved, owner kinds listed), the
/// routes are the union of the computed ones and the server's, so nothing is removed; once it
/// is known (`complete`), the computed routes, and a kind leaves only because it is gone.
pub fn routes_to_apply(computed: Routes, on_server: Option<&Routes>, complete: bool) -> Routes {
    let mut routes = computed;
    if complete {
        return routes;
    }
    if let Some(server) = on_server {
        merge(&mut routes.protected, &server.protected);
        merge(&mut routes.roots, &server.roots);
    }
    // A kind both protected and a root is protected (as `kinds_to_route` does).
    let protected = routes.protected.clone();
    for (group, plurals) in routes.roots.iter_mut() {
        if let Some(p) = protected.get(group) {
            plurals.retain(|plural| !p.contains(plural));
        }
    }
    routes.roots.retain(|_, plurals| !plurals.is_empty());
    routes
}

/// Whether the server's object carries everything `want` sets, with the same values: fields
/// the API server defaults are ignored, lists must match item for item.
pub fn carries(server: &serde_json::Value, want: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (server, want) {
        (_, Value::Null) => true,
        (Value::Object(s), Value::Object(w)) => w
            .iter()
            .all(|(k, v)| v.is_null() || s.get(k).is_some_and(|sv| carries(sv, v))),
        (Value::Array(s), Value::Array(w)) => {
            s.len() == w.len() && s.iter().zip(w).all(|(a, b)| carries(a, b))
        }
        _ => server == want,
    }
}

/// Whether the object on the server (None: absent) is what [`desired`] or
/// [`desired_sealing`] asks for.
fn in_force<T: serde::Serialize>(server: Option<&T>, want: &T) -> bool {
    let (Some(server), Ok(want)) = (server, serde_json::to_value(want)) else {
        return false;
    };
    serde_json::to_value(server).is_ok_and(|s| carries(&s, &want))
}

/// Where the API server reaches the webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookTarget {
    /// Outside the cluster (development, tests): `https://127.0.0.1:8443/validate`.
    Url(String),
    /// A Service in the cluster.
    Service {
        namespace: String,
        name: String,
        port: i32,
    },
}

/// Everything about the configuration that is not derived from policies.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookParams {
    pub configuration_name: String,
    pub target: WebhookTarget,
    /// agentguard's own namespace: never judged, so it can always be repaired.
    pub own_namespace: String,
    /// Optional `key=value`: only namespaces with this label are judged.
    pub namespace_label: Option<(String, String)>,
    /// Namespaces never judged, by their immutable name (besides `own_namespace` and
    /// kube-system).
    pub exclude_namespaces: Vec<String>,
    pub timeout_seconds: i32,
    /// Annotations and labels on the configurations, besides agentguard's own
    /// (`--webhook-configuration-annotation`, `--webhook-configuration-label`).
    pub annotations: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    /// `Fail` (fail-closed, the default) or `Ignore`: requests go through while the webhook is
    /// unreachable (the chart's availability mode, where a ValidatingAdmissionPolicy keeps the
    /// simplest rules in the API server).
    pub failure_policy: String,
    /// A ClusterRole (the chart's) that owns the configuration: when it is deleted (helm
    /// uninstall), the garbage collector deletes the configuration too, even one this
    /// operator re-created a moment before losing its permissions.
    pub owner_cluster_role: Option<String>,
}

/// Resources by API group.
pub type Resources = BTreeMap<String, BTreeSet<String>>;

fn rules(operations: &[&str], resources: &Resources) -> Vec<RuleWithOperations> {
    resources
        .iter()
        .map(|(group, plurals)| RuleWithOperations {
            operations: Some(operations.iter().map(|s| s.to_string()).collect()),
            api_groups: Some(vec![group.clone()]),
            api_versions: Some(vec!["*".into()]),
            resources: Some(plurals.iter().cloned().collect()),
            scope: Some("*".into()),
        })
        .collect()
}

fn client_config(params: &WebhookParams, path: &str, ca_bundle: &[u8]) -> WebhookClientConfig {
    WebhookClientConfig {
        ca_bundle: Some(ByteString(ca_bundle.to_vec())),
        url: match &params.target {
            // The URL names /validate; the sealing webhook is its sibling.
            WebhookTarget::Url(url) => Some(match url.strip_suffix("/validate") {
                Some(base) => format!("{base}{path}"),
                None => url.clone(),
            }),
            WebhookTarget::Service { .. } => None,
        },
        service: match &params.target {
            WebhookTarget::Url(_) => None,
            WebhookTarget::Service {
                namespace,
                name,
                port,
            } => Some(ServiceReference {
                namespace: namespace.clone(),
                name: name.clone(),
                path: Some(path.into()),
                port: Some(*port),
            }),
        },
    }
}

fn namespace_selector(params: &WebhookParams) -> LabelSelector {
    let mut expressions = vec![LabelSelectorRequirement {
        key: "kubernetes.io/metadata.name".into(),
        operator: "NotIn".into(),
        values: Some(
            [params.own_namespace.as_str(), "kube-system"]
                .into_iter()
                .chain(params.exclude_namespaces.iter().map(String::as_str))
                .map(str::to_owned)
                .collect(),
        ),
    }];
    if let Some((key, value)) = &params.namespace_label {
        expressions.push(LabelSelectorRequirement {
            key: key.clone(),
            operator: "In".into(),
            values: Some(vec![value.clone()]),
        });
    }
    LabelSelector {
        match_expressions: Some(expressions),
        match_labels: None,
    }
}

fn metadata(params: &WebhookParams, owner: Option<&OwnerReference>) -> ObjectMeta {
    ObjectMeta {
        name: Some(params.configuration_name.clone()),
        owner_references: owner.map(|o| vec![o.clone()]),
        labels: Some(
            params
                .labels
                .clone()
                .into_iter()
                .chain([(
                    "app.kubernetes.io/managed-by".to_owned(),
                    "agentguard".to_owned(),
                )])
                .collect(),
        ),
        annotations: (!params.annotations.is_empty()).then(|| params.annotations.clone()),
        ..Default::default()
    }
}

fn velero(routes: &Routes) -> bool {
    routes
        .protected
        .get("velero.io")
        .is_some_and(|p| p.contains("backups"))
}

/// The `annotate.agentguard.dev` webhook's matchCondition: a human's (not a controller's)
/// CREATE or UPDATE that adds or changes `agentguard.dev/protected` on an object of a kind
/// that is not among `protected` (the kinds already indexed and routed). Nothing else in the
/// cluster reaches it (subresources are not in its rules). Every `has` is guarded: with
/// failurePolicy Fail an evaluation error would refuse the write.
pub fn annotate_condition(protected: &Resources) -> String {
    let names: Vec<String> = protected
        .iter()
        .flat_map(|(group, plurals)| plurals.iter().map(move |p| format!("'{group}/{p}'")))
        .collect();
    let annotated = |o: &str| {
        format!(
            "({o} != null && has({o}.metadata) && has({o}.metadata.annotations) && 'agentguard.dev/protected' in {o}.metadata.annotations)"
        )
    };
    format!(
        "!{CONTROLLERS} && request.resource.group != 'agentguard.dev' \
         && {new} && (!{old} || oldObject.metadata.annotations['agentguard.dev/protected'] != object.metadata.annotations['agentguard.dev/protected']) \
         && !((request.resource.group + '/' + request.resource.resource) in [{}])",
        names.join(", "),
        new = annotated("object"),
        old = annotated("oldObject"),
    )
}

/// The webhook that learns kinds from the annotation (issue 16): rules on every resource for
/// CREATE and UPDATE, narrowed by [`annotate_condition`]. failurePolicy Fail whatever the
/// main webhook's: while agentguard is down the annotating request is refused (the user
/// retries) instead of protecting nothing in silence; only such requests are affected
/// (docs/security.md). sideEffects NoneOnDryRun: a real request records the kind.
fn annotate_webhook(
    params: &WebhookParams,
    protected: &Resources,
    ca_bundle: &[u8],
) -> ValidatingWebhook {
    ValidatingWebhook {
        name: ANNOTATE_WEBHOOK_NAME.into(),
        admission_review_versions: vec!["v1".into()],
        side_effects: "NoneOnDryRun".into(),
        failure_policy: Some("Fail".into()),
        match_policy: Some("Equivalent".into()),
        timeout_seconds: Some(params.timeout_seconds),
        client_config: client_config(params, "/annotate", ca_bundle),
        namespace_selector: Some(namespace_selector(params)),
        object_selector: None,
        match_conditions: Some(vec![MatchCondition {
            name: "adds-protected-on-an-unrouted-kind".into(),
            expression: annotate_condition(protected),
        }]),
        rules: Some(vec![RuleWithOperations {
            operations: Some(vec!["CREATE".into(), "UPDATE".into()]),
            api_groups: Some(vec!["*".into()]),
            api_versions: Some(vec!["*".into()]),
            resources: Some(vec!["*".into()]),
            scope: Some("*".into()),
        }]),
    }
}

/// The validating configuration for a set of routes. Pure: tested by value, applied as is.
/// `ca_bundle` is the PEM CA bundle the API server trusts for the webhook.
pub fn desired(
    params: &WebhookParams,
    routes: &Routes,
    ca_bundle: &[u8],
    owner: Option<&OwnerReference>,
) -> ValidatingWebhookConfiguration {
    let mut all_rules = rules(&["DELETE"], &routes.deletes());
    all_rules.extend(rules(&["CREATE", "UPDATE"], &routes.writes(velero(routes))));
    all_rules.push(RuleWithOperations {
        operations: Some(vec!["DELETE".into()]),
        api_groups: Some(vec!["agentguard.dev".into()]),
        api_versions: Some(vec!["*".into()]),
        resources: Some(vec![
            "protectedresources".into(),
            "clusterprotectedresources".into(),
        ]),
        scope: Some("*".into()),
    });
    all_rules.push(api_service_rule());
    let mut config = ValidatingWebhookConfiguration {
        metadata: metadata(params, owner),
        webhooks: Some(vec![ValidatingWebhook {
            name: WEBHOOK_NAME.into(),
            admission_review_versions: vec!["v1".into()],
            side_effects: "None".into(),
            failure_policy: Some(params.failure_policy.clone()),
            match_policy: Some("Equivalent".into()),
            timeout_seconds: Some(params.timeout_seconds),
            client_config: client_config(params, "/validate", ca_bundle),
            namespace_selector: Some(namespace_selector(params)),
            object_selector: None,
            match_conditions: Some(vec![MatchCondition {
                name: "only-when-it-matters".into(),
                expression: match_condition(&routes.protected, &params.own_namespace),
            }]),
            rules: Some(all_rules),
        }]),
    };
    config
        .webhooks
        .get_or_insert_with(Vec::new)
        .push(annotate_webhook(params, &routes.protected, ca_bundle));
    config
}

/// The sealing (mutating) configuration: the same writes as the validating one, when they
/// carry approval metadata. The API server runs it before every validating webhook, so the
/// validating webhook sees the seal it added.
pub fn desired_sealing(
    params: &WebhookParams,
    routes: &Routes,
    ca_bundle: &[u8],
    owner: Option<&OwnerReference>,
) -> MutatingWebhookConfiguration {
    MutatingWebhookConfiguration {
        metadata: metadata(params, owner),
        webhooks: Some(vec![MutatingWebhook {
            name: SEAL_WEBHOOK_NAME.into(),
            admission_review_versions: vec!["v1".into()],
            side_effects: "None".into(),
            failure_policy: Some(params.failure_policy.clone()),
            match_policy: Some("Equivalent".into()),
            timeout_seconds: Some(params.timeout_seconds),
            client_config: client_config(params, "/seal", ca_bundle),
            namespace_selector: Some(namespace_selector(params)),
            object_selector: None,
            reinvocation_policy: Some("IfNeeded".into()),
            match_conditions: Some(vec![MatchCondition {
                name: "approvals-only".into(),
                expression: seal_condition(),
            }]),
            rules: Some(rules(&["CREATE", "UPDATE"], &routes.writes(velero(routes)))),
        }]),
    }
}

type Kind = (String, String);

/// The kinds to route: protected (policy targets and annotation kinds: every write by a human
/// or agent is judged) and roots (every owner kind above protected objects, the managers of
/// protected data, and the kinds of the deletion-by-proxy table, whose writes are judged when
/// they touch what decisions read).
/// One place, so a decision never lacks its route.
pub fn kinds_to_route(
    annotation_kinds: &[Kind],
    policy_kinds: impl IntoIterator<Item = Kind>,
    owner_kinds: impl IntoIterator<Item = Kind>,
) -> (BTreeSet<Kind>, BTreeSet<Kind>) {
    let mut protected: BTreeSet<Kind> = annotation_kinds.iter().cloned().collect();
    protected.extend(policy_kinds);
    let mut roots: BTreeSet<Kind> = owner_kinds.into_iter().collect();
    for rule in PROXY_RULES {
        if let Some((group, kind)) = rule.applies.kind() {
            roots.insert((group.to_owned(), kind.to_owned()));
        }
    }
    for manager in [
        ManagerKind::ArgoApplication,
        ManagerKind::FluxKustomization,
        ManagerKind::FluxHelmRelease,
    ] {
        if let Some((group, kind)) = manager.group_kind() {
            roots.insert((group.to_owned(), kind.to_owned()));
        }
    }
    roots.retain(|k| !protected.contains(k));
    (protected, roots)
}

/// The claim kinds (group, kind) Crossplane's CompositeResourceDefinitions define; empty when
/// Crossplane is not installed, None when they cannot be listed (unknown).
async fn claim_kinds(client: &kube::Client) -> Option<Vec<Kind>> {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(
            "apiextensions.crossplane.io",
            "v1",
            "CompositeResourceDefinition",
        ),
        "compositeresourcedefinitions",
    );
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    match api.list(&Default::default()).await {
        Ok(list) => Some(
            list.items
                .iter()
                .filter_map(|xrd| {
                    let group = xrd.data.pointer("/spec/group")?.as_str()?;
                    let kind = xrd.data.pointer("/spec/claimNames/kind")?.as_str()?;
                    Some((group.to_owned(), kind.to_owned()))
                })
                .collect(),
        ),
        // Not installed: no claim kinds.
        Err(kube::Error::Api(status)) if status.is_not_found() => Some(Vec::new()),
        Err(err) => {
            tracing::debug!(error = %err, "cannot list CompositeResourceDefinitions");
            None
        }
    }
}

/// What the server holds, as last seen (a watch event, a relist, a read, an apply's answer).
#[derive(Default)]
struct OnServer {
    /// None: not known yet; Some(None): absent.
    validating: Option<Option<ValidatingWebhookConfiguration>>,
    sealing: Option<Option<MutatingWebhookConfiguration>>,
}

/// A configuration watch event, as the server view needs it.
enum Seen<K> {
    /// The object as it is now (a change, or listed by a relist).
    Object(K),
    Deleted,
    /// A relist starts: what it does not list again is gone.
    Relist,
    RelistDone,
}

fn seen<K>(event: Result<watcher::Event<K>, watcher::Error>) -> Option<Seen<K>> {
    match event {
        Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => Some(Seen::Object(o)),
        Ok(watcher::Event::Delete(_)) => Some(Seen::Deleted),
        Ok(watcher::Event::Init) => Some(Seen::Relist),
        Ok(watcher::Event::InitDone) => Some(Seen::RelistDone),
        Err(_) => None,
    }
}

/// Applies a watch event to one object's server view; `listed` tracks whether the running
/// relist has listed it.
fn observe<K>(view: &mut Option<Option<K>>, listed: &mut bool, event: Seen<K>) {
    match event {
        Seen::Object(o) => {
            *listed = true;
            *view = Some(Some(o));
        }
        Seen::Deleted => *view = Some(None),
        Seen::Relist => *listed = false,
        Seen::RelistDone => {
            if !*listed {
                *view = Some(None);
            }
        }
    }
}

/// How a kind resolved, kept across passes: a served kind's resource is kept until discovery
/// answers that it is not served; a discovery error changes nothing.
#[derive(Default)]
struct Resolved {
    plurals: HashMap<Kind, (String, String)>,
    /// Discovery answered: not served.
    gone: BTreeSet<Kind>,
}

impl Resolved {
    /// Looks `kind` up (if `again`, or never resolved); Err when whether it is served is
    /// unknown and no resource is known for it.
    async fn resolve(
        &mut self,
        resolver: &mut KindResolver,
        client: &kube::Client,
        kind: &Kind,
        again: bool,
    ) -> Result<Option<(String, String)>, ()> {
        if !again && self.plurals.contains_key(kind) {
            return Ok(self.plurals.get(kind).cloned());
        }
        let lookup = resolver.lookup(client, &kind.0, &kind.1).await;
        self.record(kind, lookup)
    }

    /// What a lookup teaches: a resource, that the kind is gone, or nothing.
    fn record(&mut self, kind: &Kind, lookup: Lookup) -> Result<Option<(String, String)>, ()> {
        match lookup {
            Lookup::Served(ar, _) => {
                self.gone.remove(kind);
                self.plurals.insert(kind.clone(), (ar.group, ar.plural));
            }
            Lookup::NotServed => {
                self.plurals.remove(kind);
                self.gone.insert(kind.clone());
            }
            Lookup::Unknown => {
                if !self.plurals.contains_key(kind) && !self.gone.contains(kind) {
                    return Err(());
                }
                tracing::debug!(group = %kind.0, kind = %kind.1, "discovery failed; keeping what was known");
            }
        }
        Ok(self.plurals.get(kind).cloned())
    }
}

/// Keeps both configurations equal to [`desired`] and [`desired_sealing`] for the kinds in
/// force, and restores them when deleted or edited, while `leader` says this replica leads.
/// What is applied is compared with the server (every watch event, relists included, and a
/// read every [`VERIFY_INTERVAL`]), not with what was last applied, so drift during a watch
/// gap is repaired too. Until `readiness` says the caches synced, and while any kind's
/// discovery fails, rules are only added ([`routes_to_apply`]).
/// Never returns.
#[allow(clippy::too_many_arguments)]
pub async fn reconcile(
    client: kube::Client,
    params: WebhookParams,
    annotation_kinds: Vec<Kind>,
    mut recorded: tokio::sync::watch::Receiver<Option<RecordedKinds>>,
    snapshot: SharedSnapshot,
    objects: SharedObjects,
    mut leader: tokio::sync::watch::Receiver<bool>,
    mut ca_bundle: tokio::sync::watch::Receiver<Vec<u8>>,
    readiness: Readiness,
) {
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let sealing_api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let by_name =
        watcher::Config::default().fields(&format!("metadata.name={}", params.configuration_name));
    let validating_changes = watcher(api.clone(), by_name.clone())
        .default_backoff()
        .filter_map(|e| futures::future::ready(seen(e).map(futures::future::Either::Left)));
    let sealing_changes = watcher(sealing_api.clone(), by_name)
        .default_backoff()
        .filter_map(|e| futures::future::ready(seen(e).map(futures::future::Either::Right)));
    let mut changes = futures::stream::select(validating_changes, sealing_changes).boxed();
    let mut tick = tokio::time::interval(RECONCILE_INTERVAL);
    let mut verify = tokio::time::interval(VERIFY_INTERVAL);
    let mut resolved = Resolved::default();
    let mut server = OnServer::default();
    let (mut validating_listed, mut sealing_listed) = (false, false);
    let mut last_applied: Option<Routes> = None;
    loop {
        // Read the server again (and look every kind up again: a CRD deleted is seen).
        let reread = tokio::select! {
            _ = tick.tick() => false,
            _ = verify.tick() => true,
            Some(event) = changes.next() => {
                match event {
                    futures::future::Either::Left(e) => observe(&mut server.validating, &mut validating_listed, e),
                    futures::future::Either::Right(e) => observe(&mut server.sealing, &mut sealing_listed, e),
                }
                false
            }
            // A closed channel (no leader election: always leading; a CA read once from a
            // file) never changes again: `Ok` only, or every pass would wake at once.
            Ok(()) = leader.changed() => true,
            Ok(()) = ca_bundle.changed() => false,
            Ok(()) = recorded.changed() => false,
        };
        if !*leader.borrow_and_update() {
            // Only the leader writes.
            continue;
        }
        if reread || server.validating.is_none() || server.sealing.is_none() {
            match (
                api.get_opt(&params.configuration_name).await,
                sealing_api.get_opt(&params.configuration_name).await,
            ) {
                (Ok(v), Ok(m)) => {
                    server.validating = Some(v);
                    server.sealing = Some(m);
                }
                (Err(err), _) | (_, Err(err)) => {
                    tracing::warn!(error = %err, "cannot read the webhook configurations; retrying");
                    continue;
                }
            }
        }
        // Whether everything the routes are computed from is known; if not, rules only grow.
        let mut complete = readiness.is_ready();
        let recorded = recorded.borrow_and_update().clone();
        complete &= recorded.is_some();
        let recorded = recorded.unwrap_or_default();
        let (mut owner_kinds, claims, loading) = {
            let index = objects.read().unwrap_or_else(|e| e.into_inner());
            let claims = index
                .managers_of_protected()
                .iter()
                .any(|m| m.kind == ManagerKind::CrossplaneClaim);
            let owners = index.ancestor_kinds_of_protected();
            // An owner kind not listed yet may own more owners.
            let loading: Vec<Kind> = owners
                .iter()
                .filter(|(g, k)| !index.has_listed(g, k))
                .cloned()
                .collect();
            complete &= index.loading().is_none();
            (owners, claims, loading)
        };
        if claims {
            // Deleting a Crossplane claim deletes its managed resources: route the claim kinds
            // the CompositeResourceDefinitions define.
            match claim_kinds(&client).await {
                Some(kinds) => owner_kinds.extend(kinds),
                None => complete = false,
            }
        }
        // Kinds agentguard cannot watch: their DELETE is still judged (the annotation is on
        // the deleted object), as an owner kind's is.
        owner_kinds.extend(recorded.unguarded);
        let mut annotation_kinds = annotation_kinds.clone();
        annotation_kinds.extend(recorded.guarded);
        let (protected_kinds, root_kinds) = kinds_to_route(
            &annotation_kinds,
            snapshot.load().policies().iter().flat_map(|p| p.kinds()),
            owner_kinds,
        );
        let mut computed = Routes::default();
        let mut resolver = KindResolver::default();
        for (kind, is_root) in protected_kinds
            .into_iter()
            .map(|k| (k, false))
            .chain(root_kinds.into_iter().map(|k| (k, true)))
        {
            match resolved
                .resolve(&mut resolver, &client, &kind, reread)
                .await
            {
                Ok(Some((group, plural))) => {
                    let into = if is_root {
                        &mut computed.roots
                    } else {
                        &mut computed.protected
                    };
                    insert(into, &group, &plural);
                }
                Ok(None) => {}
                Err(()) => {
                    tracing::warn!(group = %kind.0, kind = %kind.1, "discovery failed; its rules are kept");
                    complete = false;
                }
            }
        }
        // Owner kinds still loading (a kind not served is gone: nothing of it will list).
        complete &= loading.iter().all(|k| resolved.gone.contains(k));
        let ca = ca_bundle.borrow_and_update().clone();
        if ca.is_empty() {
            // Self-managed certificates not issued yet: publishing no CA would fail every call.
            continue;
        }
        let on_server = server
            .validating
            .as_ref()
            .and_then(|v| v.as_ref())
            .map(routes_on_server);
        let routes = routes_to_apply(computed, on_server.as_ref(), complete);
        let owner = match &params.owner_cluster_role {
            None => None,
            Some(name) => match Api::<ClusterRole>::all(client.clone()).get(name).await {
                Ok(role) => Some(OwnerReference {
                    api_version: "rbac.authorization.k8s.io/v1".into(),
                    kind: "ClusterRole".into(),
                    name: name.clone(),
                    uid: role.metadata.uid.unwrap_or_default(),
                    ..Default::default()
                }),
                Err(err) => {
                    // Without its owner the configuration could outlive an uninstall.
                    tracing::warn!(error = %err, cluster_role = %name, "cannot read the owning ClusterRole; not applying");
                    continue;
                }
            },
        };
        let want = (
            desired(&params, &routes, &ca, owner.as_ref()),
            desired_sealing(&params, &routes, &ca, owner.as_ref()),
        );
        let validating_ok = in_force(server.validating.as_ref().and_then(|v| v.as_ref()), &want.0);
        let sealing_ok = in_force(server.sealing.as_ref().and_then(|m| m.as_ref()), &want.1);
        if validating_ok && sealing_ok {
            continue;
        }
        if last_applied.as_ref() == Some(&routes) {
            // Same routes as last time, yet the server differs: someone deleted or edited it.
            tracing::info!(name = %params.configuration_name, validating_ok, sealing_ok, complete, "webhook configurations differ from the server; repairing");
        }
        let apply = PatchParams::apply(FIELD_MANAGER).force();
        // The sealing configuration first: a validating rule that judges approvals must not
        // go live before the webhook that seals them.
        let result = match sealing_api
            .patch(&params.configuration_name, &apply, &Patch::Apply(&want.1))
            .await
        {
            Ok(m) => {
                server.sealing = Some(Some(m));
                api.patch(&params.configuration_name, &apply, &Patch::Apply(&want.0))
                    .await
                    .map(|v| server.validating = Some(Some(v)))
            }
            Err(err) => Err(err),
        };
        match result {
            Ok(()) => {
                if last_applied.as_ref() != Some(&routes) {
                    tracing::info!(name = %params.configuration_name, protected = ?routes.protected, roots = ?routes.roots, complete, "webhook configurations applied");
                }
                last_applied = Some(routes);
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot apply the webhook configurations; retrying");
                // Read the server again next pass.
                server = OnServer::default();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> WebhookParams {
        WebhookParams {
            configuration_name: "agentguard".into(),
            target: WebhookTarget::Service {
                namespace: "agentguard".into(),
                name: "agentguard".into(),
                port: 443,
            },
            own_namespace: "agentguard".into(),
            namespace_label: None,
            exclude_namespaces: vec![],
            timeout_seconds: 5,
            annotations: Default::default(),
            labels: Default::default(),
            failure_policy: "Fail".into(),
            owner_cluster_role: None,
        }
    }

    fn resources(items: &[(&str, &str)]) -> Resources {
        let mut r = Resources::new();
        for (group, plural) in items {
            insert(&mut r, group, plural);
        }
        r
    }

    /// What a leader finds on the server: a policy kind (Backup) and an owner kind above a
    /// protected claim (ConfigMap), besides the claims themselves.
    fn on_server() -> Routes {
        Routes {
            protected: resources(&[("", "persistentvolumeclaims"), ("velero.io", "backups")]),
            roots: resources(&[("", "configmaps"), ("apps", "replicasets")]),
        }
    }

    #[test]
    fn the_server_routes_are_read_back_from_its_rules() {
        let routes = on_server();
        let vwc = desired(&params(), &routes, b"CA", None);
        assert_eq!(routes_on_server(&vwc), routes);
        // No protected kinds at all.
        let roots_only = Routes {
            protected: Resources::new(),
            roots: resources(&[("", "configmaps")]),
        };
        let vwc = desired(&params(), &roots_only, b"CA", None);
        assert_eq!(routes_on_server(&vwc), roots_only);
        // A condition someone replaced: every routed kind counts as protected.
        let mut vwc = desired(&params(), &routes, b"CA", None);
        vwc.webhooks.as_mut().unwrap()[0].match_conditions = None;
        let read = routes_on_server(&vwc);
        assert!(read.roots.is_empty());
        assert!(read.protected[""].contains("configmaps"));
        // The chart's initial configuration (no webhooks), or none.
        let empty = ValidatingWebhookConfiguration::default();
        assert_eq!(routes_on_server(&empty), Routes::default());
    }

    #[test]
    fn before_the_caches_synced_rules_only_grow() {
        // A new leader's first pass: empty policy snapshot and object index.
        let computed = Routes {
            protected: resources(&[("", "persistentvolumeclaims")]),
            roots: Resources::new(),
        };
        let server = on_server();
        let routes = routes_to_apply(computed.clone(), Some(&server), false);
        for (group, plurals) in server.deletes() {
            for plural in plurals {
                assert!(
                    routes.deletes()[&group].contains(&plural),
                    "{group}/{plural} was removed before the caches synced"
                );
            }
        }
        assert_eq!(
            routes.protected, server.protected,
            "protected stays protected"
        );
        assert_eq!(routes.roots, server.roots);
        // Grows with what is new.
        let more = Routes {
            protected: resources(&[("", "persistentvolumeclaims"), ("", "secrets")]),
            roots: resources(&[("", "services")]),
        };
        let routes = routes_to_apply(more, Some(&server), false);
        assert!(routes.protected[""].contains("secrets"));
        assert!(routes.roots[""].contains("services"));
        assert!(routes.roots[""].contains("configmaps"));
        // A root on the server that is now protected is protected, not both.
        let promoted = Routes {
            protected: resources(&[("", "configmaps")]),
            roots: Resources::new(),
        };
        let routes = routes_to_apply(promoted, Some(&server), false);
        assert!(routes.protected[""].contains("configmaps"));
        assert!(
            routes
                .roots
                .get("")
                .is_none_or(|p| !p.contains("configmaps"))
        );
        // Fresh install: nothing on the server, the computed routes at once (fail-closed).
        assert_eq!(routes_to_apply(computed.clone(), None, false), computed);
        // Once everything is known, what is gone is removed.
        assert_eq!(
            routes_to_apply(computed.clone(), Some(&server), true),
            computed
        );
    }

    #[test]
    fn a_kind_leaves_only_when_discovery_says_it_is_gone() {
        let kind: Kind = ("example.test".into(), "Widget".into());
        let served = || {
            let ar = ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("example.test", "v1", "Widget"),
                "widgets",
            );
            let caps = kube::discovery::ApiCapabilities {
                scope: kube::discovery::Scope::Namespaced,
                subresources: vec![],
                operations: vec![],
            };
            Lookup::Served(ar, caps)
        };
        let plural = Some(("example.test".to_owned(), "widgets".to_owned()));
        let mut resolved = Resolved::default();
        // Never resolved and discovery fails: unknown (the pass is incomplete).
        assert_eq!(resolved.record(&kind, Lookup::Unknown), Err(()));
        assert_eq!(resolved.record(&kind, served()), Ok(plural.clone()));
        // A discovery error keeps the resource.
        assert_eq!(resolved.record(&kind, Lookup::Unknown), Ok(plural.clone()));
        // Discovery answers that it is not served (CRD deleted): gone.
        assert_eq!(resolved.record(&kind, Lookup::NotServed), Ok(None));
        assert!(resolved.gone.contains(&kind));
        // Still gone while discovery fails after that.
        assert_eq!(resolved.record(&kind, Lookup::Unknown), Ok(None));
        assert_eq!(resolved.record(&kind, served()), Ok(plural));
        assert!(!resolved.gone.contains(&kind));
    }

    #[test]
    fn drift_on_the_server_is_seen() {
        let routes = on_server();
        let want = desired(&params(), &routes, b"CA", None);
        let same = serde_json::to_value(&want).unwrap();
        // Fields the API server defaults are not drift.
        let mut defaulted = same.clone();
        defaulted["webhooks"][0]["objectSelector"] = serde_json::json!({});
        defaulted["metadata"]["resourceVersion"] = "42".into();
        defaulted["metadata"]["labels"]["helm.sh/chart"] = "agentguard".into();
        let want_json = serde_json::to_value(&want).unwrap();
        assert!(carries(&defaulted, &want_json));
        assert!(in_force(Some(&want), &want));
        // Deleted.
        assert!(!in_force(None, &want));
        // Each edit is drift.
        type Edit = fn(&mut ValidatingWebhookConfiguration);
        let edits: [(&str, Edit); 5] = [
            ("a rule removed", |v| {
                v.webhooks.as_mut().unwrap()[0]
                    .rules
                    .as_mut()
                    .unwrap()
                    .remove(0);
            }),
            ("a resource removed", |v| {
                v.webhooks.as_mut().unwrap()[0].rules.as_mut().unwrap()[0]
                    .resources
                    .as_mut()
                    .unwrap()
                    .retain(|r| r != "configmaps");
            }),
            ("caBundle", |v| {
                v.webhooks.as_mut().unwrap()[0].client_config.ca_bundle =
                    Some(ByteString(b"OTHER".to_vec()));
            }),
            ("matchConditions removed", |v| {
                v.webhooks.as_mut().unwrap()[0].match_conditions = None;
            }),
            ("failurePolicy", |v| {
                v.webhooks.as_mut().unwrap()[0].failure_policy = Some("Ignore".into());
            }),
        ];
        for (what, edit) in edits {
            let mut edited = want.clone();
            edit(&mut edited);
            assert!(!in_force(Some(&edited), &want), "{what} not seen");
        }
        // A webhook removed.
        let mut fewer = want.clone();
        fewer.webhooks.as_mut().unwrap().pop();
        assert!(!in_force(Some(&fewer), &want));
    }

    #[test]
    fn a_relist_that_does_not_list_the_configuration_means_it_is_gone() {
        let mut view: Option<Option<u8>> = None;
        let mut listed = false;
        observe(&mut view, &mut listed, Seen::Object(1));
        assert_eq!(view, Some(Some(1)));
        // A watch gap: deleted meanwhile, so the relist lists nothing.
        observe(&mut view, &mut listed, Seen::Relist);
        observe(&mut view, &mut listed, Seen::RelistDone);
        assert_eq!(view, Some(None));
        // A relist that lists it (edited meanwhile: InitApply).
        observe(&mut view, &mut listed, Seen::Relist);
        observe(&mut view, &mut listed, Seen::Object(2));
        observe(&mut view, &mut listed, Seen::RelistDone);
        assert_eq!(view, Some(Some(2)));
        observe(&mut view, &mut listed, Seen::Deleted);
        assert_eq!(view, Some(None));
    }

    #[test]
    fn rules_cover_guarded_kinds_roots_and_policies() {
        let routes = Routes {
            protected: [("".to_owned(), ["persistentvolumeclaims".to_owned()].into())].into(),
            roots: [("".to_owned(), ["configmaps".to_owned()].into())].into(),
        };
        let vwc = desired(&params(), &routes, b"CA", None);
        let hook = &vwc.webhooks.as_ref().unwrap()[0];
        assert_eq!(hook.name, WEBHOOK_NAME);
        assert_eq!(hook.failure_policy.as_deref(), Some("Fail"));
        assert_eq!(hook.side_effects, "None");
        let rules = hook.rules.as_ref().unwrap();
        let has = |op: &str, group: &str, resource: &str| {
            rules.iter().any(|r| {
                r.operations.as_ref().unwrap().iter().any(|o| o == op)
                    && r.api_groups.as_ref().unwrap() == &vec![group.to_owned()]
                    && r.resources.as_ref().unwrap().iter().any(|x| x == resource)
            })
        };
        for (op, group, resource) in [
            ("DELETE", "", "persistentvolumeclaims"),
            ("DELETE", "", "namespaces"),
            (
                "DELETE",
                "apiextensions.k8s.io",
                "customresourcedefinitions",
            ),
            ("DELETE", "apps", "statefulsets"),
            ("UPDATE", "", "persistentvolumeclaims"),
            ("UPDATE", "", "persistentvolumeclaims/status"),
            ("UPDATE", "", "namespaces"),
            (
                "UPDATE",
                "apiextensions.k8s.io",
                "customresourcedefinitions",
            ),
            ("UPDATE", "", "configmaps"),
            ("DELETE", "", "configmaps"),
            ("UPDATE", "", "serviceaccounts"),
            ("UPDATE", "", "persistentvolumes"),
            ("CREATE", "agentguard.dev", "protectedresources"),
            ("DELETE", "agentguard.dev", "clusterprotectedresources"),
        ] {
            assert!(has(op, group, resource), "{op} {group}/{resource}");
        }
        assert!(!has("UPDATE", "", "secrets"));
        let excluded = &hook
            .namespace_selector
            .as_ref()
            .unwrap()
            .match_expressions
            .as_ref()
            .unwrap()[0];
        assert_eq!(
            excluded.values.as_ref().unwrap(),
            &vec!["agentguard".to_owned(), "kube-system".to_owned()]
        );
        // Excluded namespaces join them, by the name no one can change.
        let mut opted_out = params();
        opted_out.exclude_namespaces = vec!["scratch".into(), "ci".into()];
        let selector = namespace_selector(&opted_out);
        let excluded = &selector.match_expressions.as_ref().unwrap()[0];
        assert_eq!(excluded.key, "kubernetes.io/metadata.name");
        assert_eq!(excluded.operator, "NotIn");
        assert_eq!(
            excluded.values.as_deref().unwrap(),
            ["agentguard", "kube-system", "scratch", "ci"]
        );
        assert!(hook.client_config.url.is_none());
        assert_eq!(
            hook.client_config.service.as_ref().unwrap().path.as_deref(),
            Some("/validate")
        );
    }

    #[test]
    fn failure_policy_follows_the_parameter() {
        let params = WebhookParams {
            failure_policy: "Ignore".into(),
            ..params()
        };
        let vwc = desired(&params, &Routes::default(), b"CA", None);
        let hook = &vwc.webhooks.as_ref().unwrap()[0];
        assert_eq!(hook.failure_policy.as_deref(), Some("Ignore"));
    }

    #[test]
    fn every_kind_a_decision_reads_is_routed() {
        let annotation = vec![("".to_owned(), "PersistentVolumeClaim".to_owned())];
        let (protected, roots) = kinds_to_route(
            &annotation,
            [("velero.io".to_owned(), "Backup".to_owned())],
            [("apps".to_owned(), "Deployment".to_owned())],
        );
        assert!(protected.contains(&annotation[0]));
        assert!(roots.contains(&("apps".to_owned(), "Deployment".to_owned())));
        // Every kind a deletion-by-proxy row names.
        for rule in PROXY_RULES {
            if let Some((g, k)) = rule.applies.kind() {
                let kind = (g.to_owned(), k.to_owned());
                assert!(
                    protected.contains(&kind) || roots.contains(&kind),
                    "{}: {g}/{k} has no route",
                    rule.id
                );
            }
        }
        // The managers whose deletion prunes what they manage.
        for kind in ["Application", "Kustomization", "HelmRelease"] {
            assert!(roots.iter().any(|(_, k)| k == kind), "{kind} has no route");
        }
        // Every routed resource's status subresource is judged too (metadata rides along).
        let routes = Routes {
            protected: [("".to_owned(), ["persistentvolumeclaims".to_owned()].into())].into(),
            roots: [("apps".to_owned(), ["deployments".to_owned()].into())].into(),
        };
        let writes = routes.writes(false);
        // A subresource whose object stands in for another kind (a Scale for a StatefulSet).
        for rule in PROXY_RULES {
            if let Applies::Subresource(group, resource, sub) = rule.applies {
                assert!(
                    writes[group].contains(&format!("{resource}/{sub}")),
                    "{}: {resource}/{sub} has no route",
                    rule.id
                );
            }
        }
        for (group, plurals) in routes.deletes() {
            for plural in plurals {
                assert!(writes[&group].contains(&plural), "{group}/{plural}");
                assert!(
                    writes[&group].contains(&format!("{plural}/status")),
                    "{group}/{plural}/status"
                );
            }
        }
        // Protected kinds: every write by a person or agent; roots: only what decisions read.
        let condition = match_condition(&routes.protected, "agentguard");
        assert!(
            condition.contains("in ['/persistentvolumeclaims']"),
            "{condition}"
        );
        assert!(!condition.contains("deployments"));
        for needle in [
            "ownerReferences",
            "finalizers",
            "agentguard.dev/",
            "deletionPolicy",
            "request.subResource == 'scale'",
            "scaleTargetRef",
            "crossplane.io/external-name",
            "argoproj.io",
            "object.spec != oldObject.spec",
            "request.name.endsWith('.agentguard.dev')",
            // agentguard's own namespace (its CRD hook) is not held up by a webhook that is down.
            "!request.userInfo.username.startsWith('system:serviceaccount:agentguard:')",
            // Every APIService write, except the API server's own registrations.
            "request.resource.resource == 'apiservices')",
            "!(request.userInfo.username == 'system:apiserver' && request.resource.resource == 'apiservices')",
        ] {
            assert!(condition.contains(needle), "{needle}");
        }
    }

    #[test]
    fn the_sealing_webhook_sees_the_same_writes_with_approvals() {
        let routes = Routes {
            protected: [("".to_owned(), ["persistentvolumeclaims".to_owned()].into())].into(),
            roots: Resources::new(),
        };
        let params = WebhookParams {
            target: WebhookTarget::Url("https://127.0.0.1:8443/validate".into()),
            ..params()
        };
        let mwc = desired_sealing(&params, &routes, b"CA", None);
        let hook = &mwc.webhooks.as_ref().unwrap()[0];
        assert_eq!(hook.name, SEAL_WEBHOOK_NAME);
        assert_eq!(
            hook.client_config.url.as_deref(),
            Some("https://127.0.0.1:8443/seal")
        );
        let vwc = desired(&params, &routes, b"CA", None);
        let validating = &vwc.webhooks.as_ref().unwrap()[0];
        let write_rules = |rules: &[RuleWithOperations]| -> Vec<RuleWithOperations> {
            rules
                .iter()
                .filter(|r| {
                    r.operations
                        .as_ref()
                        .unwrap()
                        .contains(&"UPDATE".to_owned())
                })
                // APIServices are judged, never approved: nothing to seal.
                .filter(|r| **r != api_service_rule())
                .cloned()
                .collect()
        };
        assert_eq!(
            write_rules(hook.rules.as_ref().unwrap()),
            write_rules(validating.rules.as_ref().unwrap())
        );
        assert_eq!(hook.namespace_selector, validating.namespace_selector);
        assert_eq!(hook.failure_policy, validating.failure_policy);
    }

    #[test]
    fn the_annotate_webhook_sees_only_new_protection_on_unrouted_kinds() {
        let routes = Routes {
            protected: [("".to_owned(), ["persistentvolumeclaims".to_owned()].into())].into(),
            roots: Resources::new(),
        };
        let params = WebhookParams {
            failure_policy: "Ignore".into(),
            ..params()
        };
        let vwc = desired(&params, &routes, b"CA", None);
        let hooks = vwc.webhooks.as_ref().unwrap();
        assert_eq!(
            hooks[0].name, WEBHOOK_NAME,
            "the judging webhook stays first"
        );
        let hook = &hooks[1];
        assert_eq!(hook.name, ANNOTATE_WEBHOOK_NAME);
        // Fail even in availability mode: an annotation must never protect nothing silently.
        assert_eq!(hook.failure_policy.as_deref(), Some("Fail"));
        assert_eq!(hook.side_effects, "NoneOnDryRun");
        assert_eq!(
            hook.client_config.service.as_ref().unwrap().path.as_deref(),
            Some("/annotate")
        );
        assert_eq!(hook.namespace_selector, hooks[0].namespace_selector);
        let rule = &hook.rules.as_ref().unwrap()[0];
        assert_eq!(
            rule.operations.as_ref().unwrap(),
            &vec!["CREATE".to_owned(), "UPDATE".to_owned()]
        );
        assert_eq!(rule.resources.as_ref().unwrap(), &vec!["*".to_owned()]);
        let condition = &hook.match_conditions.as_ref().unwrap()[0].expression;
        for needle in [
            "!((request.resource.group + '/' + request.resource.resource) in ['/persistentvolumeclaims'])",
            "'agentguard.dev/protected' in object.metadata.annotations",
            "oldObject.metadata.annotations['agentguard.dev/protected'] != object.metadata.annotations['agentguard.dev/protected']",
            "request.resource.group != 'agentguard.dev'",
            "system:serviceaccount:kube-system:",
            "has(object.metadata)",
        ] {
            assert!(condition.contains(needle), "{needle} in {condition}");
        }
    }
}
