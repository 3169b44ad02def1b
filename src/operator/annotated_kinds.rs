//! Keeps the kinds learned from the `agentguard.dev/protected` annotation (see
//! [`crate::index::AnnotatedKinds`]) in a ConfigMap in agentguard's namespace: every replica
//! adds what its webhook recorded and reads back the others', and the next start watches and
//! routes the same kinds. Writes only add or update keys (a merge patch), so replicas writing
//! at once cannot drop each other's kinds. Also re-checks agentguard's RBAC, so a kind becomes
//! guarded once its rule is added to `rbac.extraWatchedResources`, and exports the
//! annotated-but-unguarded gauge.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};

use crate::index::{AnnotatedKinds, RECORD_COMPONENT_LABEL, RecordedKind, data_key, parse_record};
use crate::metrics::Metrics;

const SYNC_INTERVAL: Duration = Duration::from_secs(3);
const RBAC_RECHECK: Duration = Duration::from_secs(15);

/// Where the record lives.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordParams {
    pub namespace: String,
    pub name: String,
}

/// The data keys to write: those whose value differs from what was read.
pub fn changes(
    read: &BTreeMap<String, String>,
    mine: impl IntoIterator<Item = RecordedKind>,
) -> BTreeMap<String, String> {
    mine.into_iter()
        .map(|k| {
            (
                data_key(&k),
                serde_json::to_string(&k).expect("plain data serializes"),
            )
        })
        .filter(|(key, value)| read.get(key) != Some(value))
        .collect()
}

/// Never returns.
pub async fn run(
    client: kube::Client,
    kinds: AnnotatedKinds,
    params: RecordParams,
    metrics: Metrics,
) {
    let api: Api<ConfigMap> = Api::namespaced(client, &params.namespace);
    let mut checked: Option<Instant> = None;
    let mut tick = tokio::time::interval(SYNC_INTERVAL);
    loop {
        let read = match api.get_opt(&params.name).await {
            Ok(found) => Some(found.and_then(|cm| cm.data).unwrap_or_default()),
            Err(err) => {
                tracing::warn!(error = %err, namespace = %params.namespace, name = %params.name,
                    "cannot read the annotated kinds record; keeping it in memory");
                None
            }
        };
        // Marks the record loaded even when unreadable: agentguard then works from what it
        // sees, rather than never routing anything.
        let mut read_kinds = read.as_ref().map(parse_record).unwrap_or_default();
        if checked.is_none() {
            // At start, before anything follows the record: a kind an earlier run could watch
            // may have lost its rule since (its watch would never list, keeping this replica
            // unready), or gained one.
            for kind in &mut read_kinds {
                if let Ok(allowed) = kinds.can_watch(&kind.group, &kind.resource).await {
                    kind.guarded = allowed;
                }
            }
        }
        kinds.merge(read_kinds);
        if checked.is_none() {
            checked = Some(Instant::now());
        } else if checked.is_some_and(|c| c.elapsed() >= RBAC_RECHECK) {
            checked = Some(Instant::now());
            for kind in kinds.snapshot().into_values() {
                match kinds.can_watch(&kind.group, &kind.resource).await {
                    Ok(allowed) if allowed != kind.guarded => {
                        tracing::info!(kind = %kind.kind, group = %kind.group, guarded = allowed,
                            "agentguard's RBAC on an annotated kind changed");
                        kinds.set_guarded(&kind.key(), allowed);
                    }
                    Ok(_) => {}
                    Err(err) => tracing::warn!(error = %err, "cannot check agentguard's RBAC"),
                }
            }
        }
        let mine = kinds.snapshot();
        metrics.set_unguarded_objects(
            &mine
                .values()
                .filter(|k| !k.guarded)
                .map(|k| (k.resource.clone(), k.objects.len() as i64))
                .collect::<Vec<_>>(),
        );
        if let Some(read) = &read {
            let changed = changes(read, mine.into_values());
            if !changed.is_empty()
                && let Err(err) = write(&api, &params, read.is_empty(), changed).await
            {
                tracing::warn!(error = %err, "cannot write the annotated kinds record; retrying");
            }
        }
        tokio::select! {
            _ = tick.tick() => {}
            _ = kinds.changed() => {}
        }
    }
}

async fn write(
    api: &Api<ConfigMap>,
    params: &RecordParams,
    maybe_missing: bool,
    data: BTreeMap<String, String>,
) -> kube::Result<()> {
    let object = ConfigMap {
        metadata: ObjectMeta {
            name: Some(params.name.clone()),
            labels: Some(
                [
                    (
                        "app.kubernetes.io/managed-by".to_owned(),
                        "agentguard".to_owned(),
                    ),
                    (
                        RECORD_COMPONENT_LABEL.0.to_owned(),
                        RECORD_COMPONENT_LABEL.1.to_owned(),
                    ),
                ]
                .into(),
            ),
            ..Default::default()
        },
        data: Some(data.clone()),
        ..Default::default()
    };
    if maybe_missing {
        match api.create(&PostParams::default(), &object).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(err) => return Err(err),
        }
    }
    let patch = serde_json::json!({ "data": data });
    api.patch(&params.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changed_kinds_are_written_and_read_back() {
        let kind = RecordedKind {
            group: "db.example.com".into(),
            version: "v1".into(),
            kind: "Database".into(),
            resource: "databases".into(),
            namespaced: true,
            guarded: true,
            objects: Default::default(),
        };
        let first = changes(&BTreeMap::new(), [kind.clone()]);
        assert_eq!(
            first.keys().collect::<Vec<_>>(),
            vec!["databases.db.example.com"]
        );
        assert_eq!(parse_record(&first), vec![kind.clone()]);
        assert!(changes(&first, [kind.clone()]).is_empty());
        let mut unguarded = kind;
        unguarded.guarded = false;
        assert_eq!(changes(&first, [unguarded]).len(), 1);
        let mut junk = first;
        junk.insert("other".into(), "not json".into());
        assert_eq!(parse_record(&junk).len(), 1);
    }
}
