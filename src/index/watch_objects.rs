//! Feeds the protected-object index: one watch per kind that policies target (decoding only
//! the metadata the index reads, see [`super::slim`]),
//! plus the kinds the `agentguard.dev/protected` annotation is honoured on. Watches start and
//! stop as policies change; kinds the API server does not serve are retried periodically.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, ApiResource, ResourceExt};
use kube::runtime::watcher;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::objects::{ObjectEntry, Uid};
use super::slim::SlimObject;
use super::{KindResolver, Lookup, OBJECTS_GATE, Readiness, SharedObjects, SharedSnapshot};

type Kind = (String, String);

/// How often kinds that are not served (yet) are looked up again, and the protected-object
/// gauge refreshed.
const RETRY_UNRESOLVED: Duration = Duration::from_secs(5);

/// How often the owner kinds above protected objects are checked for new ones to watch.
const ANCESTOR_CHECK: Duration = Duration::from_secs(1);

/// What a kind's watch tells [`run_objects`].
#[derive(Debug, Clone, Copy, PartialEq)]
enum Settled {
    /// Listed: every object of the kind is in the index.
    Listed,
    /// agentguard may not list it: the kind is blind (agents' deletions its objects might
    /// reach are refused) and does not hold readiness.
    Forbidden,
}

/// The name a kind's watch health and metrics go by: its plural, with its group if any.
pub fn watch_name(group: &str, plural: &str) -> String {
    if group.is_empty() {
        plural.to_owned()
    } else {
        format!("{plural}.{group}")
    }
}

/// Whether a watch error says agentguard may not list or watch the kind.
fn forbidden(err: &watcher::Error) -> bool {
    match err {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => status.is_forbidden(),
        watcher::Error::WatchError(status) => status.is_forbidden(),
        _ => false,
    }
}

#[allow(clippy::too_many_arguments)]
async fn watch_kind(
    client: kube::Client,
    resource: ApiResource,
    kind: Kind,
    objects: SharedObjects,
    snapshot: SharedSnapshot,
    synced: mpsc::UnboundedSender<(Kind, u64, Settled)>,
    serial: u64,
    readiness: Readiness,
) {
    let api = Api::<SlimObject>::all_with(client, &resource);
    let name = watch_name(&resource.group, &resource.plural);
    // A consistent list in pages of LIST_PAGE_SIZE, not `any_semantic`: a
    // resourceVersion=0 list may be served stale from a lagging API server's cache, and
    // readiness must mean the index is at least as new as our start.
    let mut stream = super::supervised(
        move || watcher(api.clone(), super::list_config()),
        name.clone(),
        false,
        readiness.clone(),
    )
    .boxed();
    let bound = readiness.max_staleness();
    let (group, kind_name) = (&kind.0, &kind.1);
    let mut seen: HashSet<Uid> = HashSet::new();
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(event) => event,
            Err(err) => {
                tracing::warn!(kind = %kind_name, error = %err, "object watch error; retrying");
                if forbidden(&err) {
                    // Deleting an object of this kind may take protected data with it, and
                    // agentguard cannot see which: such deletions are refused until it can.
                    let mut index = objects.write().unwrap_or_else(|e| e.into_inner());
                    index.set_blind(
                        kind.clone(),
                        Some(format!(
                            "agentguard may not list {} (grant list and watch on it, e.g. with the chart's rbac.extraWatchedResources: {})",
                            watch_name(group, &resource.plural),
                            super::rbac_rule(group, &resource.plural)
                        )),
                    );
                    index.unwatched(&kind);
                    drop(index);
                    let _ = synced.send((kind.clone(), serial, Settled::Forbidden));
                } else if readiness.failing_for(&name).is_some_and(|f| f > bound) {
                    // Its objects may have changed unseen for longer than the bound: as while
                    // it first loaded, agents' deletions that might reach them are refused
                    // until it lists again.
                    let mut index = objects.write().unwrap_or_else(|e| e.into_inner());
                    if index.has_listed(group, kind_name) {
                        tracing::warn!(kind = %kind_name, bound_secs = bound.as_secs(), "object watch failing for longer than the staleness bound; refusing agents' deletions that might reach its objects until it lists again");
                        index.watching(kind.clone());
                    }
                }
                continue;
            }
        };
        let snap = snapshot.load();
        let mut index = objects.write().unwrap_or_else(|e| e.into_inner());
        match event {
            watcher::Event::Init => seen.clear(),
            watcher::Event::InitApply(meta) => {
                if let Some(e) = ObjectEntry::of_meta(group, kind_name, &meta.metadata) {
                    seen.insert(e.uid.clone());
                    index.upsert(e, &snap);
                }
            }
            watcher::Event::InitDone => {
                // A relist: whatever of this kind was not listed again is gone.
                index.retain(|e| {
                    *e.key.group != **group || *e.key.kind != **kind_name || seen.contains(&e.uid)
                });
                index.set_blind(kind.clone(), None);
                drop(index);
                // Only a relist needs it: give back its memory (one UID per object) until then.
                seen = HashSet::new();
                let _ = synced.send((kind.clone(), serial, Settled::Listed));
            }
            watcher::Event::Apply(meta) => {
                if let Some(e) = ObjectEntry::of_meta(group, kind_name, &meta.metadata) {
                    index.upsert(e, &snap);
                }
            }
            watcher::Event::Delete(meta) => {
                if let Some(uid) = meta.uid() {
                    index.remove(&uid);
                }
            }
        }
    }
}

/// Keeps one watch per wanted kind: the kinds policies target (from `kinds_rx`, `None` until
/// the policies first synced), `annotation_kinds`, and the kinds of every owner above a
/// protected object (so a chain of any kinds, a Deployment's ReplicaSet's Pod's claim, is
/// followed to its top). Marks the objects gate synced once every served policy and annotation
/// kind has listed or turned out forbidden (a kind agentguard may not list is blind: agents'
/// deletions it might hide are refused, and its policies say which RBAC rule is missing, but
/// it does not hold the whole replica unready); owner kinds do not hold readiness (while one
/// loads, agents' deletions that might reach protected data are refused instead).
/// Also the guarded kinds learned from the annotation (`recorded_rx`, `None` until their
/// record was read; readiness waits for it), which hold readiness like annotation kinds.
#[allow(clippy::too_many_arguments)]
pub async fn run_objects(
    client: kube::Client,
    annotation_kinds: Vec<Kind>,
    mut recorded_rx: watch::Receiver<Option<super::RecordedKinds>>,
    mut kinds_rx: watch::Receiver<Option<super::Wanted>>,
    objects: SharedObjects,
    snapshot: SharedSnapshot,
    readiness: Readiness,
    metrics: crate::metrics::Metrics,
) {
    let mut plurals: HashMap<Kind, String> = HashMap::new();
    // Each watch with its serial number, so that a message from a watch stopped since (its
    // kind being watched again by a new one) is not taken for the new one's.
    let mut running: HashMap<Kind, (u64, JoinHandle<()>)> = HashMap::new();
    let mut serial = 0u64;
    let mut listed: HashSet<Kind> = HashSet::new();
    // Kinds agentguard may not list: blind, and not holding readiness.
    let mut forbidden: HashSet<Kind> = HashSet::new();
    let (synced_tx, mut synced_rx) = mpsc::unbounded_channel::<(Kind, u64, Settled)>();
    let mut retry = tokio::time::interval(RETRY_UNRESOLVED);
    let mut ancestors = tokio::time::interval(ANCESTOR_CHECK);
    // The index's relist count when the running watches started.
    let mut relists = 0;
    // Kinds whose discovery failed, and when to look them up again.
    let mut unknown_until: HashMap<Kind, tokio::time::Instant> = HashMap::new();
    loop {
        // None until the policies have synced once: readiness waits for their kinds too.
        let policy_wants = kinds_rx.borrow_and_update().clone();
        let policies_seen = policy_wants.is_some();
        if let Some(wants) = &policy_wants
            && wants.relists != relists
        {
            // The index dropped labels policies now read: list every kind again (the index
            // marked them loading when it re-judged).
            for (kind, (_, task)) in running.drain() {
                task.abort();
                listed.remove(&kind);
                forbidden.remove(&kind);
                if let Some(plural) = plurals.get(&kind) {
                    readiness.forget_watch(&watch_name(&kind.0, plural));
                }
            }
            relists = wants.relists;
        }
        let mut gating: BTreeSet<Kind> = policy_wants.map(|w| w.kinds).unwrap_or_default();
        gating.extend(annotation_kinds.iter().cloned());
        let recorded = recorded_rx.borrow_and_update().clone();
        let recorded_seen = recorded.is_some();
        gating.extend(recorded.map(|r| r.guarded).unwrap_or_default());
        let mut wanted = gating.clone();
        wanted.extend(
            objects
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .ancestor_kinds_of_protected(),
        );
        if !policies_seen {
            // Nothing is listed before the policies are known: the index keeps only the labels
            // they read, so an earlier list would have to be made again.
            wanted.clear();
        }
        let last_wanted = wanted.clone();
        for kind in running
            .keys()
            .filter(|k| !wanted.contains(*k))
            .cloned()
            .collect::<Vec<_>>()
        {
            running.remove(&kind).expect("present").1.abort();
            listed.remove(&kind);
            forbidden.remove(&kind);
            if let Some(plural) = plurals.get(&kind) {
                readiness.forget_watch(&watch_name(&kind.0, plural));
            }
            let mut index = objects.write().unwrap_or_else(|e| e.into_inner());
            index.retain(|e| *e.key.group != *kind.0 || *e.key.kind != *kind.1);
            index.unwatched(&kind);
            index.set_blind(kind.clone(), None);
            drop(index);
            tracing::info!(group = %kind.0, kind = %kind.1, "stopped watching");
        }
        let mut resolver = KindResolver::default();
        // A kind whose discovery failed is looked up again on the retry tick, not on every
        // pass: each failed lookup can take the discovery timeout, and the passes that follow
        // other kinds' lists must not wait for it.
        let now = tokio::time::Instant::now();
        unknown_until.retain(|k, until| wanted.contains(k) && *until > now);
        let missing: Vec<Kind> = wanted
            .iter()
            .filter(|k| !running.contains_key(*k) && !unknown_until.contains_key(*k))
            .cloned()
            .collect();
        for kind in &missing {
            let (resource, _) = match resolver.lookup(&client, &kind.0, &kind.1).await {
                Lookup::Served(resource, caps) => (resource, caps),
                Lookup::NotServed => {
                    tracing::debug!(group = %kind.0, kind = %kind.1, "kind not served; will look again");
                    objects
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .unwatched(kind);
                    continue;
                }
                Lookup::Unknown => {
                    // Whether its objects exist is unknown: the index says it is still loading,
                    // so agents' deletions that might take them along are refused meanwhile.
                    tracing::warn!(group = %kind.0, kind = %kind.1, "discovery failed; will look again");
                    objects
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .watching(kind.clone());
                    unknown_until
                        .insert(kind.clone(), tokio::time::Instant::now() + RETRY_UNRESOLVED);
                    continue;
                }
            };
            tracing::info!(group = %kind.0, kind = %kind.1, "watching");
            objects
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .watching(kind.clone());
            plurals.insert(kind.clone(), resource.plural.clone());
            serial += 1;
            let task = tokio::spawn(watch_kind(
                client.clone(),
                resource,
                kind.clone(),
                objects.clone(),
                snapshot.clone(),
                synced_tx.clone(),
                serial,
                readiness.clone(),
            ));
            running.insert(kind.clone(), (serial, task));
        }
        let counts: Vec<(String, i64)> = objects
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .protected_per_kind()
            .into_iter()
            .filter_map(|(k, n)| plurals.get(&k).map(|p| (p.clone(), n as i64)))
            .collect();
        metrics.set_protected_objects(&counts);
        if policies_seen
            && recorded_seen
            && running
                .keys()
                .filter(|k| gating.contains(*k))
                .all(|k| listed.contains(k) || forbidden.contains(k))
        {
            readiness.synced(OBJECTS_GATE);
        }
        // Wait for something to do: a policy change, a kind listed, the retry tick, or a new
        // owner kind above a protected object.
        loop {
            tokio::select! {
                changed = kinds_rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                Some((kind, from, settled)) = synced_rx.recv() => {
                    if running.get(&kind).is_none_or(|(s, _)| *s != from) {
                        continue;
                    }
                    match settled {
                        Settled::Listed => {
                            objects
                                .write()
                                .unwrap_or_else(|e| e.into_inner())
                                .listed(kind.clone());
                            forbidden.remove(&kind);
                            listed.insert(kind);
                        }
                        // Already known: nothing changes for readiness.
                        Settled::Forbidden if !forbidden.insert(kind) => continue,
                        Settled::Forbidden => {}
                    }
                }
                Ok(()) = recorded_rx.changed() => {}
                _ = retry.tick() => {}
                _ = ancestors.tick() => {
                    let now = objects
                        .read()
                        .unwrap_or_else(|e| e.into_inner())
                        .ancestor_kinds_of_protected();
                    if now.is_subset(&last_wanted) {
                        continue;
                    }
                }
            }
            break;
        }
    }
}
