//! The ValidatingWebhookConfiguration, owned by the operator: its rules follow the kinds that
//! policies target, the annotation kinds, the owner kinds of protected objects and the cascade
//! roots; `matchConditions` let CREATE and UPDATE through only when they matter. If someone
//! deletes or edits it, the next reconcile (a watch event, or the tick) puts it back.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, RuleWithOperations, ServiceReference, ValidatingWebhook,
    ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, OwnerReference,
};
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};

use crate::index::{KindResolver, SharedObjects, SharedSnapshot};

/// The webhook's name, as the API server prints it in denials and prefixes audit annotations.
pub const WEBHOOK_NAME: &str = "validate.agentguard.dev";
const FIELD_MANAGER: &str = "agentguard-operator";
const RECONCILE_INTERVAL: Duration = Duration::from_secs(2);

/// Deleting these takes other objects along: namespaces, CRDs (their instances), StatefulSets
/// (claims, with retention Delete).
const CASCADE_ROOTS: &[(&str, &str)] = &[
    ("", "namespaces"),
    ("apiextensions.k8s.io", "customresourcedefinitions"),
    ("apps", "statefulsets"),
];

/// UPDATE and CREATE reach the webhook only when they touch agentguard metadata, set a
/// volume's reclaim policy to Delete, or carry a StatefulSet claim retention policy. Policies
/// themselves always do.
pub const MATCH_CONDITION: &str = "request.operation == 'DELETE' \
|| request.resource.group == 'agentguard.dev' \
|| (object != null && has(object.metadata.annotations) && object.metadata.annotations.exists(k, k.startsWith('agentguard.dev/'))) \
|| (oldObject != null && has(oldObject.metadata.annotations) && oldObject.metadata.annotations.exists(k, k.startsWith('agentguard.dev/'))) \
|| (object != null && has(object.metadata.labels) && object.metadata.labels.exists(k, k.startsWith('agentguard.dev/'))) \
|| (oldObject != null && has(oldObject.metadata.labels) && oldObject.metadata.labels.exists(k, k.startsWith('agentguard.dev/'))) \
|| (request.resource.resource == 'persistentvolumes' && object != null && has(object.spec.persistentVolumeReclaimPolicy) && object.spec.persistentVolumeReclaimPolicy == 'Delete') \
|| (request.resource.resource == 'statefulsets' && object != null && has(object.spec.persistentVolumeClaimRetentionPolicy)) \
|| (request.operation == 'CREATE' && request.resource.resource == 'deletebackuprequests') \
|| (oldObject != null && has(oldObject.metadata.deletionTimestamp)) \
|| (object != null && has(object.spec) && has(object.spec.deletionPolicy) && object.spec.deletionPolicy == 'Delete') \
|| (object != null && has(object.deletionPolicy) && object.deletionPolicy == 'Delete') \
|| (oldObject != null && has(oldObject.spec) && has(oldObject.spec.managementPolicies)) \
|| (object != null && has(object.metadata.labels) && 'cleanup.kyverno.io/ttl' in object.metadata.labels) \
|| (oldObject != null && has(oldObject.metadata.annotations) && ('helm.sh/resource-policy' in oldObject.metadata.annotations || 'argocd.argoproj.io/sync-options' in oldObject.metadata.annotations || 'kustomize.toolkit.fluxcd.io/prune' in oldObject.metadata.annotations))";

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
    pub timeout_seconds: i32,
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

/// The configuration for a set of guarded resources. Pure: tested by value, applied as is.
/// `ca_bundle` is the PEM CA bundle the API server trusts for the webhook.
pub fn desired(
    params: &WebhookParams,
    guarded: &Resources,
    ca_bundle: &[u8],
    owner: Option<&OwnerReference>,
) -> ValidatingWebhookConfiguration {
    let mut delete = guarded.clone();
    for (group, plural) in CASCADE_ROOTS {
        delete
            .entry(group.to_string())
            .or_default()
            .insert(plural.to_string());
    }
    let mut write = guarded.clone();
    for (group, plural) in [
        ("", "serviceaccounts"),
        ("", "persistentvolumes"),
        ("apps", "statefulsets"),
        ("agentguard.dev", "protectedresources"),
        ("agentguard.dev", "clusterprotectedresources"),
        // Filed only in one's own name; answered only by humans.
        ("agentguard.dev", "deletionrequests"),
        ("agentguard.dev", "deletionrequests/status"),
    ] {
        write.entry(group.into()).or_default().insert(plural.into());
    }
    // Deletion by proxy through Velero: a DeleteBackupRequest for a protected Backup.
    if guarded
        .get("velero.io")
        .is_some_and(|p| p.contains("backups"))
    {
        write
            .entry("velero.io".into())
            .or_default()
            .insert("deletebackuprequests".into());
    }
    let mut all_rules = rules(&["DELETE"], &delete);
    all_rules.extend(rules(&["CREATE", "UPDATE"], &write));
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
    let client_config = WebhookClientConfig {
        ca_bundle: Some(ByteString(ca_bundle.to_vec())),
        url: match &params.target {
            WebhookTarget::Url(url) => Some(url.clone()),
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
                path: Some("/validate".into()),
                port: Some(*port),
            }),
        },
    };
    let mut expressions = vec![LabelSelectorRequirement {
        key: "kubernetes.io/metadata.name".into(),
        operator: "NotIn".into(),
        values: Some(vec![params.own_namespace.clone(), "kube-system".into()]),
    }];
    if let Some((key, value)) = &params.namespace_label {
        expressions.push(LabelSelectorRequirement {
            key: key.clone(),
            operator: "In".into(),
            values: Some(vec![value.clone()]),
        });
    }
    ValidatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(params.configuration_name.clone()),
            owner_references: owner.map(|o| vec![o.clone()]),
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_owned(),
                    "agentguard".to_owned(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        webhooks: Some(vec![ValidatingWebhook {
            name: WEBHOOK_NAME.into(),
            admission_review_versions: vec!["v1".into()],
            side_effects: "None".into(),
            failure_policy: Some(params.failure_policy.clone()),
            match_policy: Some("Equivalent".into()),
            timeout_seconds: Some(params.timeout_seconds),
            client_config,
            namespace_selector: Some(LabelSelector {
                match_expressions: Some(expressions),
                match_labels: None,
            }),
            object_selector: None,
            match_conditions: Some(vec![MatchCondition {
                name: "only-when-it-matters".into(),
                expression: MATCH_CONDITION.into(),
            }]),
            rules: Some(all_rules),
        }]),
    }
}

type Kind = (String, String);

/// Keeps the configuration equal to [`desired`] for the kinds in force, and restores it when
/// it is deleted or edited, while `leader` says this replica leads. Never returns.
pub async fn reconcile(
    client: kube::Client,
    params: WebhookParams,
    annotation_kinds: Vec<Kind>,
    snapshot: SharedSnapshot,
    objects: SharedObjects,
    mut leader: tokio::sync::watch::Receiver<bool>,
    mut ca_bundle: tokio::sync::watch::Receiver<Vec<u8>>,
) {
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let mut changes = watcher(
        api.clone(),
        watcher::Config::default().fields(&format!("metadata.name={}", params.configuration_name)),
    )
    .default_backoff()
    .boxed();
    let mut tick = tokio::time::interval(RECONCILE_INTERVAL);
    let mut plurals: HashMap<Kind, Option<(String, String)>> = HashMap::new();
    let mut applied: Option<ValidatingWebhookConfiguration> = None;
    loop {
        let external_change = tokio::select! {
            _ = tick.tick() => false,
            event = changes.next() => matches!(event, Some(Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)))),
            _ = leader.changed() => true,
            _ = ca_bundle.changed() => true,
        };
        if !*leader.borrow_and_update() {
            // Only the leader writes; a new leader applies at once.
            applied = None;
            continue;
        }
        let mut kinds: BTreeSet<Kind> = annotation_kinds.iter().cloned().collect();
        kinds.extend(snapshot.load().policies().iter().flat_map(|p| p.kinds()));
        kinds.extend(
            objects
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .owner_kinds_of_protected(),
        );
        let mut guarded = Resources::new();
        let mut resolver = KindResolver::default();
        for kind in kinds {
            if plurals.get(&kind).is_none_or(|p| p.is_none()) {
                let resolved = resolver
                    .resolve(&client, &kind.0, &kind.1)
                    .await
                    .map(|(ar, _)| (ar.group, ar.plural));
                plurals.insert(kind.clone(), resolved);
            }
            if let Some(Some((group, plural))) = plurals.get(&kind) {
                guarded
                    .entry(group.clone())
                    .or_default()
                    .insert(plural.clone());
            }
        }
        let ca = ca_bundle.borrow_and_update().clone();
        if ca.is_empty() {
            // Self-managed certificates not issued yet: publishing no CA would fail every call.
            continue;
        }
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
        let want = desired(&params, &guarded, &ca, owner.as_ref());
        if !external_change && applied.as_ref() == Some(&want) {
            continue;
        }
        match api
            .patch(
                &params.configuration_name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&want),
            )
            .await
        {
            Ok(_) => {
                if applied.as_ref() != Some(&want) {
                    tracing::info!(name = %params.configuration_name, resources = ?guarded, "webhook configuration applied");
                }
                applied = Some(want);
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot apply the webhook configuration; retrying");
                applied = None;
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
            timeout_seconds: 5,
            failure_policy: "Fail".into(),
            owner_cluster_role: None,
        }
    }

    #[test]
    fn rules_cover_guarded_kinds_roots_and_policies() {
        let guarded: Resources =
            [("".to_owned(), ["persistentvolumeclaims".to_owned()].into())].into();
        let vwc = desired(&params(), &guarded, b"CA", None);
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
            ("UPDATE", "", "serviceaccounts"),
            ("UPDATE", "", "persistentvolumes"),
            ("CREATE", "agentguard.dev", "protectedresources"),
            ("DELETE", "agentguard.dev", "clusterprotectedresources"),
        ] {
            assert!(has(op, group, resource), "{op} {group}/{resource}");
        }
        assert!(!has("UPDATE", "", "namespaces"));
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
        let vwc = desired(&params, &Resources::new(), b"CA", None);
        let hook = &vwc.webhooks.as_ref().unwrap()[0];
        assert_eq!(hook.failure_policy.as_deref(), Some("Ignore"));
    }
}
