//! Keep the data: the PersistentVolume bound to a protected claim gets reclaimPolicy Retain
//! (unless every policy protecting the claim opts out with `retainVolumes: false`), so even an
//! approved or mistaken deletion of the claim leaves the disk for `kubectl agentguard restore`.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::PersistentVolume;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

use crate::index::{SharedObjects, SharedSnapshot, watch_handles};
use crate::policy::{CascadeHit, ProtectedObjects};

const PIN_INTERVAL: Duration = Duration::from_secs(5);

/// Whether the protection on a claim asks for its volume to be kept.
fn wants_retain(hit: &CascadeHit, snapshot: &crate::policy::Snapshot) -> bool {
    hit.annotation
        || hit.policies.is_empty()
        || hit
            .policies
            .iter()
            .any(|id| snapshot.policy(id).is_none_or(|p| p.retain_volumes))
}

/// Watches PersistentVolumes, records their handles in the index, and pins those bound to
/// protected claims while `leader` says this replica leads. Never returns.
pub async fn pin_volumes(
    client: kube::Client,
    snapshot: SharedSnapshot,
    objects: SharedObjects,
    leader: tokio::sync::watch::Receiver<bool>,
) {
    let api: Api<PersistentVolume> = Api::all(client);
    // No store of whole volumes: the index keeps each one's claim and reclaimPolicy.
    let mut events = watcher(api.clone(), crate::index::list_config())
        .default_backoff()
        .boxed();
    let mut tick = tokio::time::interval(PIN_INTERVAL);
    // Every replica keeps the volumes' handles (a second PV on a protected disk is refused);
    // until they are listed, such creations are refused.
    objects
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .handles_listed(watch_handles::VOLUMES, false);
    let mut seen = HashSet::new();
    loop {
        tokio::select! {
            event = events.next() => {
                match event {
                    Some(Ok(event)) => watch_handles::apply(
                        &objects,
                        watch_handles::VOLUMES,
                        &event,
                        &mut seen,
                        watch_handles::volume_handle,
                    ),
                    Some(Err(err)) => {
                        tracing::warn!(error = %err, "PersistentVolume watch error; retrying")
                    }
                    None => {}
                }
                continue;
            }
            _ = tick.tick() => {}
        }
        if !*leader.borrow() {
            continue;
        }
        let snap = snapshot.load_full();
        let to_pin: Vec<String> = {
            let index = objects.read().unwrap_or_else(|e| e.into_inner());
            index
                .handles_of(watch_handles::VOLUMES)
                .filter(|pv| {
                    pv.reclaim.as_deref() != Some("Retain")
                        && pv.bound.as_ref().is_some_and(|c| {
                            index
                                .claim(c.namespace.as_deref().unwrap_or_default(), &c.name)
                                .is_some_and(|hit| wants_retain(&hit, &snap))
                        })
                })
                .map(|pv| pv.holder.name.to_string())
                .collect()
        };
        // The pass is cancelled if leadership ends while it runs.
        let pass = async {
            for name in to_pin {
                let patch = json!({"spec": {"persistentVolumeReclaimPolicy": "Retain"}});
                match api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => {
                        tracing::info!(volume = %name, "reclaimPolicy set to Retain: its claim is protected")
                    }
                    Err(err) => {
                        tracing::warn!(volume = %name, error = %err, "cannot pin reclaimPolicy to Retain")
                    }
                }
            }
        };
        super::leader::while_leading(&leader, pass).await;
    }
}
