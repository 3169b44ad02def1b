//! Policy status: whether each policy is in force
//! (`Ready`, with a reason a user can act on when it is not), how many objects it protects, how
//! many deletions it blocked, and the last blocked attempt.

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::api::{ClusterProtectedResource, LastBlocked, ProtectedResource};
use crate::index::{
    BlockLedger, KindResolver, PendingBlocks, PolicyHealth, SharedObjects, SharedSnapshot,
};
use crate::operator::webhook_config::WEBHOOK_NAME;
use crate::policy::{CompiledPolicy, PolicyKind, PolicyRef};
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;

/// How often protected objects are recounted (and unknown kinds rediscovered).
const RECOUNT_INTERVAL: Duration = Duration::from_secs(15);
/// Blocked deletions trigger a recount at most this often.
const MIN_RECOUNT_GAP: Duration = Duration::from_secs(2);

/// The status the operator wants a policy to have, without volatile fields.
#[derive(Debug, Clone, PartialEq)]
struct Desired {
    generation: Option<i64>,
    problems: Vec<String>,
    reason: &'static str,
    protected_objects: i64,
    /// Targeted kinds not served (the policy is in force for the others).
    unserved: Vec<String>,
    /// Why a served kind is not protected yet (not routed to the webhook, not indexed).
    not_yet: Vec<String>,
}

/// The Ready condition for a policy.
fn ready_condition(desired: &Desired, last_transition_time: Time) -> Condition {
    let (status, message) = if !desired.problems.is_empty() {
        ("False", desired.problems.join("; "))
    } else if !desired.not_yet.is_empty() {
        (
            "False",
            format!("not protecting yet: {}", desired.not_yet.join("; ")),
        )
    } else if desired.unserved.is_empty() {
        ("True", "policy is valid and in force".to_owned())
    } else {
        (
            "True",
            format!(
                "in force for the kinds served; not (yet) protecting: {}",
                desired.unserved.join("; ")
            ),
        )
    };
    Condition {
        type_: "Ready".into(),
        status: status.into(),
        reason: desired.reason.into(),
        message,
        observed_generation: desired.generation,
        last_transition_time,
    }
}

fn policy_api(client: &kube::Client, id: &PolicyRef) -> Api<DynamicObject> {
    match id.kind {
        PolicyKind::Cluster => Api::all_with(
            client.clone(),
            &ApiResource::erase::<ClusterProtectedResource>(&()),
        ),
        PolicyKind::Namespaced => Api::namespaced_with(
            client.clone(),
            id.namespace.as_deref().unwrap_or_default(),
            &ApiResource::erase::<ProtectedResource>(&()),
        ),
    }
}

/// Counts the objects a policy protects (as the index holds them), and reports kinds the API
/// server does not serve and kinds not yet routed or indexed.
async fn count_protected(
    client: &kube::Client,
    policy: &CompiledPolicy,
    resolver: &mut KindResolver,
    coverage: &Coverage<'_>,
) -> Result<Count, Vec<String>> {
    let mut problems = Vec::new();
    let mut not_yet = Vec::new();
    // Catalog kinds the API server does not serve: their CRDs are simply not installed.
    let mut catalog_unserved = 0;
    for (group, kind) in policy.kinds() {
        let Some((resource, _)) = resolver.resolve(client, &group, &kind).await else {
            if policy.from_catalog_only(&group, &kind) {
                catalog_unserved += 1;
                continue;
            }
            let shown = if group.is_empty() {
                "the core group".to_owned()
            } else {
                format!("API group {group:?}")
            };
            problems.push(format!(
                "kind {kind} is not served in {shown}; install its CRD or fix the target"
            ));
            continue;
        };
        if !coverage.routes(&resource.group, &resource.plural) {
            not_yet.push(format!(
                "deletions of {} are not routed to the webhook yet (ValidatingWebhookConfiguration {})",
                resource.plural,
                coverage.configuration.unwrap_or_default()
            ));
        }
        let (indexed, blind) = {
            let index = coverage.objects.read().unwrap_or_else(|e| e.into_inner());
            (
                index.has_listed(&group, &kind),
                index
                    .blind_kinds()
                    .find(|(k, _)| k.0 == group && k.1 == kind)
                    .map(|(_, why)| why.clone()),
            )
        };
        if let Some(why) = blind {
            // The kind is blind: agents' deletions of its objects are refused, but what is
            // there cannot be counted until RBAC lets agentguard list it.
            not_yet.push(why);
        } else if !indexed {
            not_yet.push(format!("{} are not indexed yet", resource.plural));
        }
    }
    // Counted from the index the watches keep (no list per policy and tick: at 100,000
    // objects such lists cost more memory than the index itself).
    let total = coverage
        .objects
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .protected_by_policy(&policy.id) as i64;
    // Some targeted kinds served: the policy protects those, and says which are missing (the
    // default policy names VolumeSnapshots, which many clusters do not serve). None served:
    // it protects nothing, and is not Ready.
    // A catalog target is in force even while none of its kinds is served: each is protected
    // as soon as its CRD is installed.
    if problems.len() < policy.kinds().count() - catalog_unserved || catalog_unserved > 0 {
        let mut unserved = problems;
        if catalog_unserved > 0 {
            unserved.push(format!(
                "{catalog_unserved} catalog kinds not served (each is protected once its CRD is installed)"
            ));
        }
        Ok(Count {
            total,
            unserved,
            not_yet,
        })
    } else {
        Err(problems)
    }
}

async fn sleep_until_due(due: Option<Instant>) {
    if let Some(due) = due {
        tokio::time::sleep_until(due).await;
    }
}

/// Protected objects of a policy, and the targeted kinds the API server does not serve.
#[derive(Debug, Clone, PartialEq)]
struct Count {
    total: i64,
    unserved: Vec<String>,
    not_yet: Vec<String>,
}

/// What must hold before a policy protects a served kind: its deletions are routed to the
/// webhook, and its objects are in the index (cascade lookups see them).
struct Coverage<'a> {
    /// (group, plural) with DELETE routed, from the live configuration; None when it cannot
    /// be read (then nothing counts as routed).
    routed: Option<Vec<(String, String)>>,
    /// The live configuration's matchCondition expressions: a protected kind's every UPDATE
    /// is let through by name (`'group/plural'`), a kind routed only as a cascade root is not.
    conditions: String,
    configuration: Option<&'a str>,
    objects: &'a SharedObjects,
}

impl Coverage<'_> {
    fn routes(&self, group: &str, plural: &str) -> bool {
        match (&self.routed, self.configuration) {
            // Not agentguard's to check (the configuration is someone else's and unnamed).
            (_, None) => true,
            (None, Some(_)) => false,
            (Some(routed), Some(_)) => {
                routed
                    .iter()
                    .any(|(g, p)| (g == "*" || g == group) && (p == "*" || p == plural))
                    && (self.conditions.is_empty()
                        || self.conditions.contains(&format!("'{group}/{plural}'")))
            }
        }
    }
}

/// (group, resource) pairs whose DELETE the named ValidatingWebhookConfiguration sends to
/// agentguard, and its matchCondition expressions.
async fn routed_deletes(
    client: &kube::Client,
    name: &str,
) -> Option<(Vec<(String, String)>, String)> {
    let config = Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .get_opt(name)
        .await
        .ok()??;
    let mut routed = Vec::new();
    let mut conditions = String::new();
    for hook in config.webhooks.iter().flatten() {
        if hook.name != WEBHOOK_NAME {
            continue;
        }
        for condition in hook.match_conditions.iter().flatten() {
            conditions.push_str(&condition.expression);
        }
        for rule in hook.rules.iter().flatten() {
            let ops = rule.operations.as_deref().unwrap_or_default();
            if !ops.iter().any(|o| o == "DELETE" || o == "*") {
                continue;
            }
            for group in rule.api_groups.iter().flatten() {
                for resource in rule.resources.iter().flatten() {
                    routed.push((group.clone(), resource.clone()));
                }
            }
        }
    }
    Some((routed, conditions))
}

/// Keeps every policy's status current: on policy changes, on blocked deletions, and every
/// [`RECOUNT_INTERVAL`]. Idempotent apart from the blocked counter, which is added to under the
/// object's resourceVersion so concurrent writers never lose a block.
pub async fn reconcile_policy_status(
    client: kube::Client,
    snapshot: SharedSnapshot,
    objects: SharedObjects,
    webhook_configuration: watch::Receiver<Option<String>>,
    mut health_rx: watch::Receiver<Vec<PolicyHealth>>,
    ledger: BlockLedger,
) {
    let mut written: HashMap<PolicyRef, Desired> = HashMap::new();
    let mut counts: HashMap<PolicyRef, Result<Count, Vec<String>>> = HashMap::new();
    let mut tick = tokio::time::interval(RECOUNT_INTERVAL);
    let mut last_count = Instant::now();
    // A block inside the gap postpones its recount to the gap's end instead of dropping it, so
    // a claim created just after its policy is counted within seconds, not at the next tick.
    let mut recount_due: Option<Instant> = None;
    loop {
        let recount = tokio::select! {
            _ = tick.tick() => true,
            changed = health_rx.changed() => {
                if changed.is_err() {
                    return;
                }
                true
            }
            // A block usually means the object count is worth a fresh look, but an agent
            // retrying in a loop must not turn into a stream of list calls.
            _ = ledger.notified() => {
                let gap_over = last_count.elapsed() > MIN_RECOUNT_GAP;
                if !gap_over {
                    recount_due.get_or_insert(last_count + MIN_RECOUNT_GAP);
                }
                gap_over
            }
            _ = sleep_until_due(recount_due), if recount_due.is_some() => true,
        };
        let health = health_rx.borrow_and_update().clone();
        if recount {
            recount_due = None;
            last_count = Instant::now();
            let snap = snapshot.load_full();
            let mut resolver = KindResolver::default();
            // None while a configuration agentguard cannot read (a static one) is in force.
            let configuration = webhook_configuration.borrow().clone();
            let live = match &configuration {
                Some(name) => routed_deletes(&client, name).await,
                None => None,
            };
            let (routed, conditions) = match live {
                Some((routed, conditions)) => (Some(routed), conditions),
                None => (None, String::new()),
            };
            let coverage = Coverage {
                routed,
                conditions,
                configuration: configuration.as_deref(),
                objects: &objects,
            };
            counts.clear();
            for policy in snap.policies() {
                let count = count_protected(&client, policy, &mut resolver, &coverage).await;
                // Coverage follows within seconds of a new policy: look again soon, not at
                // the next tick.
                if count.as_ref().is_ok_and(|c| !c.not_yet.is_empty()) {
                    recount_due.get_or_insert(Instant::now() + MIN_RECOUNT_GAP);
                }
                counts.insert(policy.id.clone(), count);
            }
        }
        let mut blocks = ledger.drain();
        for h in &health {
            let desired = match (&h.problems[..], counts.get(&h.id)) {
                ([], Some(Ok(count))) => Desired {
                    generation: h.generation,
                    problems: vec![],
                    reason: if count.not_yet.is_empty() {
                        "Enforcing"
                    } else {
                        "NotYetProtecting"
                    },
                    protected_objects: count.total,
                    unserved: count.unserved.clone(),
                    not_yet: count.not_yet.clone(),
                },
                ([], Some(Err(problems))) => Desired {
                    generation: h.generation,
                    problems: problems.clone(),
                    reason: "UnknownKind",
                    protected_objects: 0,
                    unserved: vec![],
                    not_yet: vec![],
                },
                ([], None) => continue, // compiled after the last count; next tick
                (problems, _) => Desired {
                    generation: h.generation,
                    problems: problems.to_vec(),
                    reason: "InvalidSpec",
                    protected_objects: 0,
                    unserved: vec![],
                    not_yet: vec![],
                },
            };
            let pending = blocks.remove(&h.id);
            if written.get(&h.id) == Some(&desired) && pending.is_none() {
                continue;
            }
            match write_status(&client, &h.id, &desired, pending.as_ref()).await {
                Ok(()) => {
                    written.insert(h.id.clone(), desired);
                }
                Err(err) => {
                    tracing::warn!(policy = %h.id.describe(), error = %err, "cannot write policy status; will retry");
                    if let Some(p) = pending {
                        ledger.restore(h.id.clone(), p);
                    }
                }
            }
        }
        written.retain(|id, _| health.iter().any(|h| &h.id == id));
    }
}

async fn write_status(
    client: &kube::Client,
    id: &PolicyRef,
    desired: &Desired,
    pending: Option<&PendingBlocks>,
) -> kube::Result<()> {
    let api = policy_api(client, id);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let current = api.get_status(&id.name).await?;
        let status = current.data.get("status").cloned().unwrap_or_default();
        let ready = status
            .get("conditions")
            .and_then(|c| c.as_array())
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready"));
        let new_condition_status = if desired.problems.is_empty() {
            "True"
        } else {
            "False"
        };
        // Keep the transition time unless the condition's status really changed.
        let transition = match ready {
            Some(c) if c["status"] == new_condition_status => {
                serde_json::from_value(c["lastTransitionTime"].clone())
                    .unwrap_or(Time(jiff::Timestamp::now()))
            }
            _ => Time(jiff::Timestamp::now()),
        };
        let blocked = status
            .get("blockedDeletions")
            .and_then(|b| b.as_i64())
            .unwrap_or(0)
            + pending.map_or(0, |p| p.count);
        let last: Option<LastBlocked> = match pending {
            Some(p) => Some(p.last.clone()),
            None => {
                serde_json::from_value(status.get("lastBlocked").cloned().unwrap_or_default()).ok()
            }
        };
        let patch = json!({
            "metadata": {"resourceVersion": current.resource_version()},
            "status": {
                "observedGeneration": desired.generation,
                "conditions": [ready_condition(desired, transition)],
                "protectedObjects": desired.protected_objects,
                "blockedDeletions": blocked,
                "lastBlocked": last,
            }
        });
        match api
            .patch_status(&id.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(()),
            // Someone else wrote in between: read again and re-add our blocks.
            Err(kube::Error::Api(e)) if e.code == 409 && attempt < 5 => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(not_yet: &[&str]) -> Desired {
        Desired {
            generation: Some(1),
            problems: vec![],
            reason: if not_yet.is_empty() {
                "Enforcing"
            } else {
                "NotYetProtecting"
            },
            protected_objects: 0,
            unserved: vec![],
            not_yet: not_yet.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_policy_is_ready_only_once_its_kinds_are_routed_and_indexed() {
        let time = Time(jiff::Timestamp::from_second(0).unwrap());
        let pending = ready_condition(
            &desired(&["deletions of databases are not routed to the webhook yet"]),
            time.clone(),
        );
        assert_eq!(
            (pending.status.as_str(), pending.reason.as_str()),
            ("False", "NotYetProtecting")
        );
        assert!(
            pending.message.contains("not routed"),
            "{}",
            pending.message
        );
        let ready = ready_condition(&desired(&[]), time);
        assert_eq!(ready.status, "True");
    }

    #[test]
    fn routing_is_read_from_the_live_rules() {
        let objects = SharedObjects::default();
        let coverage = |routed: Option<Vec<(&str, &str)>>, configuration: Option<&'static str>| {
            Coverage {
                routed: routed.map(|r| {
                    r.into_iter()
                        .map(|(g, p)| (g.to_owned(), p.to_owned()))
                        .collect()
                }),
                conditions: String::new(),
                configuration,
                objects: &objects,
            }
            .routes("example.com", "databases")
        };
        assert!(coverage(
            Some(vec![("example.com", "databases")]),
            Some("agentguard")
        ));
        assert!(coverage(Some(vec![("*", "*")]), Some("agentguard")));
        assert!(!coverage(
            Some(vec![("example.com", "tables"), ("", "databases")]),
            Some("agentguard")
        ));
        // The configuration is missing or unreadable: nothing is routed.
        assert!(!coverage(None, Some("agentguard")));
        // Not agentguard's configuration to check.
        assert!(coverage(None, None));
    }
}
