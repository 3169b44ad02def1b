//! The operator's reconciling side. For now: each policy's status says whether it is in force
//! (`Ready`), with the reason a user can act on when it is not.

use std::collections::HashMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tokio::sync::watch;

use crate::api::{ClusterProtectedResource, ProtectedResource};
use crate::index::PolicyHealth;
use crate::policy::PolicyKind;

const FIELD_MANAGER: &str = "agentguard";

/// The Ready condition for a compiled (or rejected) policy.
pub fn ready_condition(health: &PolicyHealth, now: Time) -> Condition {
    let (status, reason, message) = if health.problems.is_empty() {
        (
            "True",
            "Enforcing",
            "policy is valid and in force".to_owned(),
        )
    } else {
        ("False", "InvalidSpec", health.problems.join("; "))
    };
    Condition {
        type_: "Ready".into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: health.generation,
        last_transition_time: now,
    }
}

/// Writes policy status whenever the compiled view of a policy changes. Idempotent, so every
/// replica may run it until leader election lands.
pub async fn write_policy_status(
    client: kube::Client,
    mut health_rx: watch::Receiver<Vec<PolicyHealth>>,
) {
    let mut written: HashMap<String, (Option<i64>, Vec<String>)> = HashMap::new();
    loop {
        let health = health_rx.borrow_and_update().clone();
        for h in &health {
            let key = h.id.label();
            let state = (h.generation, h.problems.clone());
            if written.get(&key) == Some(&state) {
                continue;
            }
            let condition = ready_condition(h, Time(jiff::Timestamp::now()));
            let patch = json!({
                "status": {"observedGeneration": h.generation, "conditions": [condition]}
            });
            let params = PatchParams::apply(FIELD_MANAGER);
            let result = match h.id.kind {
                PolicyKind::Cluster => Api::<ClusterProtectedResource>::all(client.clone())
                    .patch_status(&h.id.name, &params, &Patch::Merge(&patch))
                    .await
                    .map(|_| ()),
                PolicyKind::Namespaced => Api::<ProtectedResource>::namespaced(
                    client.clone(),
                    h.id.namespace.as_deref().unwrap_or_default(),
                )
                .patch_status(&h.id.name, &params, &Patch::Merge(&patch))
                .await
                .map(|_| ()),
            };
            match result {
                Ok(()) => {
                    written.insert(key, state);
                }
                Err(err) => {
                    tracing::warn!(policy = %h.id.describe(), error = %err, "cannot write policy status; will retry on next change")
                }
            }
        }
        written.retain(|k, _| health.iter().any(|h| &h.id.label() == k));
        if health_rx.changed().await.is_err() {
            return;
        }
    }
}
