//! Feeds the index's storage handles: which disk each PersistentVolume names, which snapshot
//! each VolumeSnapshotContent does, and what is bound to it. A new PV or content naming the
//! handle of protected data is a second way to delete it (see `policy::handles`). The PV watch
//! is the one volume pinning already runs; VolumeSnapshotContents get their own, when served.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::PersistentVolume;
use kube::api::{Api, DynamicObject, ResourceExt};
use kube::runtime::watcher;

use super::objects::{Handle, ObjectKey};
use super::{KindResolver, Lookup, Readiness, SharedObjects};
use crate::policy::handles::{snapshot_identity, volume_identity};

pub const VOLUMES: &str = "PersistentVolume";
pub const SNAPSHOT_CONTENTS: &str = "VolumeSnapshotContent";

/// How often a snapshot API that is not served is looked up again.
const RETRY_UNSERVED: Duration = Duration::from_secs(30);

/// A PersistentVolume's disk, the claim bound to it and its reclaimPolicy (every volume has
/// one: volume pinning and reports read them from the index).
pub fn volume_handle(pv: &PersistentVolume) -> Option<Handle> {
    let spec = pv.spec.as_ref()?;
    let identity = serde_json::to_value(spec)
        .ok()
        .and_then(|s| volume_identity(&s))
        .unwrap_or_default();
    let bound = spec.claim_ref.as_ref().and_then(|c| {
        Some(ObjectKey::new(
            "",
            "PersistentVolumeClaim",
            Some(c.namespace.as_deref()?),
            c.name.as_deref()?,
        ))
    });
    Some(Handle {
        identity,
        holder: ObjectKey::new("", VOLUMES, None, &pv.name_any()),
        bound,
        reclaim: spec
            .persistent_volume_reclaim_policy
            .as_deref()
            .map(Into::into),
    })
}

/// A VolumeSnapshotContent's snapshot and the VolumeSnapshot it serves.
pub fn snapshot_handle(content: &DynamicObject) -> Option<Handle> {
    let identity = snapshot_identity(&content.data)?;
    let reference = content.data.pointer("/spec/volumeSnapshotRef");
    let field = |f: &str| reference.and_then(|r| r.get(f)).and_then(|v| v.as_str());
    let bound = match (field("namespace"), field("name")) {
        (Some(ns), Some(name)) => Some(ObjectKey::new(
            "snapshot.storage.k8s.io",
            "VolumeSnapshot",
            Some(ns),
            name,
        )),
        _ => None,
    };
    Some(Handle {
        identity,
        holder: ObjectKey::new(
            "snapshot.storage.k8s.io",
            SNAPSHOT_CONTENTS,
            None,
            &content.name_any(),
        ),
        bound,
        reclaim: None,
    })
}

/// Applies one watch event of `source` to the index. `seen` collects a relist's UIDs so the
/// handles of objects gone meanwhile are dropped when it ends.
pub fn apply<K: ResourceExt>(
    objects: &SharedObjects,
    source: &'static str,
    event: &watcher::Event<K>,
    seen: &mut HashSet<String>,
    handle_of: impl Fn(&K) -> Option<Handle>,
) {
    let mut index = objects.write().unwrap_or_else(|e| e.into_inner());
    match event {
        watcher::Event::Init => {
            seen.clear();
            index.handles_listed(source, false);
        }
        watcher::Event::InitApply(obj) | watcher::Event::Apply(obj) => {
            if let Some(uid) = obj.uid() {
                if matches!(event, watcher::Event::InitApply(_)) {
                    seen.insert(uid.clone());
                }
                index.set_handle(&uid, handle_of(obj));
            }
        }
        watcher::Event::InitDone => {
            index.retain_handles(source, seen);
            index.handles_listed(source, true);
            *seen = HashSet::new();
        }
        watcher::Event::Delete(obj) => {
            if let Some(uid) = obj.uid() {
                index.set_handle(&uid, None);
            }
        }
    }
}

/// Watches VolumeSnapshotContents while the snapshot API is served, recording the watch's
/// health in `readiness`; while it has been failing for longer than the staleness bound, the
/// handles count as loading (second snapshots of protected data are refused). Never returns.
pub async fn run_snapshot_handles(
    client: kube::Client,
    objects: SharedObjects,
    readiness: Readiness,
) {
    let bound = readiness.max_staleness();
    objects
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .handles_listed(SNAPSHOT_CONTENTS, false);
    loop {
        let resource = match KindResolver::default()
            .lookup(&client, "snapshot.storage.k8s.io", SNAPSHOT_CONTENTS)
            .await
        {
            Lookup::Served(resource, _) => resource,
            Lookup::Unknown => {
                // Unknown is not absent: refuse second snapshots until it is known.
                objects
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .handles_listed(SNAPSHOT_CONTENTS, false);
                tokio::time::sleep(RETRY_UNSERVED).await;
                continue;
            }
            Lookup::NotServed => {
                objects
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .handles_listed(SNAPSHOT_CONTENTS, true);
                tokio::time::sleep(RETRY_UNSERVED).await;
                continue;
            }
        };
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        let name = super::watch_objects::watch_name(&resource.group, &resource.plural);
        let mut stream = super::supervised(
            move || watcher(api.clone(), super::list_config()),
            name.clone(),
            false,
            readiness.clone(),
        )
        .boxed();
        let mut seen = HashSet::new();
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => apply(
                    &objects,
                    SNAPSHOT_CONTENTS,
                    &event,
                    &mut seen,
                    snapshot_handle,
                ),
                Err(err) => {
                    tracing::warn!(error = %err, "VolumeSnapshotContent watch error; retrying");
                    if readiness.failing_for(&name).is_some_and(|f| f > bound) {
                        objects
                            .write()
                            .unwrap_or_else(|e| e.into_inner())
                            .handles_listed(SNAPSHOT_CONTENTS, false);
                    }
                }
            }
        }
    }
}
