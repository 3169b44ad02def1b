//! DeletionRequests, from filing to expiry. Every replica watches them and exports
//! `agentguard_approval_requests` by state; the leader marks a new request Pending with its
//! expiry, puts a `DeletionRequested` Event on the object it names (so `kubectl describe`
//! shows it, and event exporters can page a human), and marks Pending requests Expired when
//! their time is up. Humans answer with `kubectl agentguard approve|reject request/<name>`.

use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::json;

use crate::api::{DeletionRequest, RequestState};
use crate::metrics::Metrics;

/// Reason of the Event on the requested object.
pub const REQUESTED_REASON: &str = "DeletionRequested";
const TICK: Duration = Duration::from_secs(2);

/// What the leader should do with one request now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// New: mark Pending, expiring at the given time, and announce it.
    Admit(Timestamp),
    /// Pending past its expiry.
    Expire,
    Nothing,
}

/// Pure: the next step for a request at `now`, with requests living `ttl`.
pub fn step(request: &DeletionRequest, now: Timestamp, ttl: Duration) -> Step {
    let status = request.status.as_ref();
    match status.and_then(|s| s.state) {
        None => {
            let created = request
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or(now, |t| t.0);
            let ttl = jiff::SignedDuration::try_from(ttl).unwrap_or(jiff::SignedDuration::MAX);
            Step::Admit(created.saturating_add(ttl).unwrap_or(Timestamp::MAX))
        }
        Some(RequestState::Pending) => match status.and_then(|s| s.expires_at.as_ref()) {
            Some(expiry) if expiry.0 <= now => Step::Expire,
            _ => Step::Nothing,
        },
        Some(_) => Step::Nothing,
    }
}

/// Counts by state, every state present (0 when none).
pub fn counts<'r>(requests: impl Iterator<Item = &'r DeletionRequest>) -> Vec<(&'static str, i64)> {
    let mut counts = [
        (RequestState::Pending, 0),
        (RequestState::Approved, 0),
        (RequestState::Rejected, 0),
        (RequestState::Expired, 0),
    ];
    for r in requests {
        let state = r.status.as_ref().and_then(|s| s.state).unwrap_or_default();
        if let Some(c) = counts.iter_mut().find(|(s, _)| *s == state) {
            c.1 += 1;
        }
    }
    counts.iter().map(|(s, c)| (s.label(), *c)).collect()
}

/// Watches DeletionRequests; never returns.
pub async fn run(
    client: kube::Client,
    metrics: Metrics,
    leader: tokio::sync::watch::Receiver<bool>,
    ttl: Duration,
    instance: Option<String>,
) {
    let api: Api<DeletionRequest> = Api::all(client.clone());
    let (store, writer) = reflector::store();
    let mut events = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .touched_objects()
        .boxed();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "agentguard".into(),
            instance,
        },
    );
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            event = events.next() => {
                if let Some(Err(err)) = event {
                    tracing::debug!(error = %err, "DeletionRequest watch error (CRD not installed?); retrying");
                }
            }
            _ = tick.tick() => {}
        }
        let requests = store.state();
        metrics.set_approval_requests(&counts(requests.iter().map(|r| r.as_ref())));
        if !*leader.borrow() {
            continue;
        }
        let now = Timestamp::now();
        // The pass is cancelled if leadership ends while it runs.
        let pass = async {
            for request in requests {
                let step = step(&request, now, ttl);
                if step == Step::Nothing {
                    continue;
                }
                if let Err(err) = apply(&client, &recorder, &request, step).await {
                    tracing::warn!(error = %err, request = %request.name_any(), "cannot update DeletionRequest; retrying");
                }
            }
        };
        super::leader::while_leading(&leader, pass).await;
    }
}

async fn apply(
    client: &kube::Client,
    recorder: &Recorder,
    request: &DeletionRequest,
    step: Step,
) -> Result<(), kube::Error> {
    let namespace = request.namespace().unwrap_or_default();
    let name = request.name_any();
    let api: Api<DeletionRequest> = Api::namespaced(client.clone(), &namespace);
    let status = match &step {
        Step::Admit(expiry) => json!({"state": RequestState::Pending, "expiresAt": Time(*expiry)}),
        Step::Expire => json!({
            "state": RequestState::Expired,
            "message": "no human answered before it expired; file a new request if it is still needed",
        }),
        Step::Nothing => return Ok(()),
    };
    api.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(&json!({ "status": status })),
    )
    .await?;
    if let Step::Admit(expiry) = step {
        let target = &request.spec.target;
        let cluster_scoped = matches!(
            target.kind.as_str(),
            "PersistentVolume"
                | "Namespace"
                | "VolumeSnapshotContent"
                | "VolumeSnapshotClass"
                | "StorageClass"
                | "CustomResourceDefinition"
                | "ClusterProtectedResource"
        );
        let regarding = ObjectReference {
            api_version: Some(target.api_version.clone()),
            kind: Some(target.kind.clone()),
            name: Some(target.name.clone()),
            namespace: (!cluster_scoped).then(|| namespace.clone()),
            ..Default::default()
        };
        let note = format!(
            "{requester} asks a human to approve deleting this: {reason} (until {expiry}). \
             Answer: kubectl agentguard approve request/{name} -n {namespace} --for 30m, or reject request/{name}",
            requester = request.spec.requester,
            reason = request.spec.reason,
        );
        let event = Event {
            type_: EventType::Normal,
            reason: REQUESTED_REASON.into(),
            note: Some(note.chars().take(1024).collect()),
            action: "Request".into(),
            secondary: None,
        };
        if let Err(err) = recorder.publish(&event, &regarding).await {
            tracing::warn!(error = %err, "cannot record DeletionRequested event");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{DeletionRequestSpec, DeletionRequestStatus, RequestTarget};

    fn request(created: &str, status: Option<DeletionRequestStatus>) -> DeletionRequest {
        let mut r = DeletionRequest::new(
            "r",
            DeletionRequestSpec {
                target: RequestTarget {
                    api_version: "v1".into(),
                    kind: "PersistentVolumeClaim".into(),
                    name: "data".into(),
                },
                reason: "rebuild".into(),
                requester: "bot".into(),
            },
        );
        r.metadata.creation_timestamp = Some(Time(created.parse().unwrap()));
        r.status = status;
        r
    }

    #[test]
    fn requests_are_admitted_then_expire() {
        let now: Timestamp = "2026-01-01T12:00:00Z".parse().unwrap();
        let day = Duration::from_secs(86400);
        let new = request("2026-01-01T11:00:00Z", None);
        assert_eq!(
            step(&new, now, day),
            Step::Admit("2026-01-02T11:00:00Z".parse().unwrap())
        );
        let pending = |expiry: &str| {
            request(
                "2026-01-01T11:00:00Z",
                Some(DeletionRequestStatus {
                    state: Some(RequestState::Pending),
                    expires_at: Some(Time(expiry.parse().unwrap())),
                    ..Default::default()
                }),
            )
        };
        assert_eq!(
            step(&pending("2026-01-01T13:00:00Z"), now, day),
            Step::Nothing
        );
        assert_eq!(
            step(&pending("2026-01-01T12:00:00Z"), now, day),
            Step::Expire
        );
        let approved = request(
            "2026-01-01T11:00:00Z",
            Some(DeletionRequestStatus {
                state: Some(RequestState::Approved),
                ..Default::default()
            }),
        );
        assert_eq!(step(&approved, now, day), Step::Nothing);
        assert_eq!(
            counts([new.clone(), pending("2026-01-01T13:00:00Z"), approved].iter()),
            vec![
                ("pending", 2),
                ("approved", 1),
                ("rejected", 0),
                ("expired", 0)
            ]
        );
    }
}
