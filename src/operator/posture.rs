//! The provider-side protection of protected databases: for each protected object of a
//! data-holding catalog kind, whether its own deletion protection is on and whether deleting it
//! keeps its backups and final snapshot ([`crate::catalog::Assessment`]), read from its
//! switches. The index holds only metadata, so every replica lists those kinds (whole objects,
//! only kinds with protected objects, a page at a time) every [`POSTURE_INTERVAL`]. The metric
//! `agentguard_protected_databases` and the PolicyReports' `warn` come from the same pass.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use kube::api::{Api, DynamicObject, ListParams};

use crate::catalog::Assessment;
use crate::index::objects::ObjectKey;
use crate::index::{KindResolver, SharedObjects};
use crate::metrics::Metrics;

/// How often the protected databases' switches are read: posture is for people and
/// dashboards, not for decisions (admission reads the object in the request).
pub const POSTURE_INTERVAL: Duration = Duration::from_secs(30);

/// Objects per list request.
const PAGE: u32 = 500;

/// One protected database as last assessed.
#[derive(Debug, Clone, PartialEq)]
pub struct Assessed {
    pub key: ObjectKey,
    pub assessment: Assessment,
}

/// The last pass's assessments, by object uid.
pub type Postures = Arc<RwLock<HashMap<String, Assessed>>>;

/// Assesses the protected databases every [`POSTURE_INTERVAL`] and publishes them. Never
/// returns.
pub async fn run(
    client: kube::Client,
    objects: SharedObjects,
    metrics: Metrics,
    postures: Postures,
) {
    let mut tick = tokio::time::interval(POSTURE_INTERVAL);
    loop {
        tick.tick().await;
        let previous = postures.read().unwrap_or_else(|e| e.into_inner()).clone();
        let found = assess(&client, &objects, &previous).await;
        metrics.set_protected_databases(&counts(&found));
        *postures.write().unwrap_or_else(|e| e.into_inner()) = found;
    }
}

/// The protected objects of catalog kinds with switches to read, by kind.
fn wanted(objects: &SharedObjects) -> BTreeMap<(String, String), HashSet<String>> {
    let catalog = crate::catalog::catalog();
    let index = objects.read().unwrap_or_else(|e| e.into_inner());
    let mut wanted: BTreeMap<(String, String), HashSet<String>> = BTreeMap::new();
    for (entry, _) in index.protected_entries() {
        let key = &entry.key;
        let readable = catalog
            .kind(&key.group, &key.kind)
            .is_some_and(|k| k.switches.iter().any(|s| s.checkable()));
        if readable {
            wanted
                .entry((key.group.to_string(), key.kind.to_string()))
                .or_default()
                .insert(entry.uid.to_string());
        }
    }
    wanted
}

async fn assess(
    client: &kube::Client,
    objects: &SharedObjects,
    previous: &HashMap<String, Assessed>,
) -> HashMap<String, Assessed> {
    let catalog = crate::catalog::catalog();
    let mut resolver = KindResolver::default();
    let mut found = HashMap::new();
    for ((group, kind), uids) in wanted(objects) {
        let Some(entry) = catalog.kind(&group, &kind) else {
            continue;
        };
        // Page by page, keeping only the assessments: a kind with many objects (backups pile
        // up) costs one page of memory at a time.
        let mut assessed = Vec::new();
        let listed = match resolver.resolve(client, &group, &kind).await {
            Some((resource, _)) => {
                let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
                for_each_page(&api, |items| {
                    assessed.extend(assess_objects(entry, items, |uid| uids.contains(uid)));
                })
                .await
            }
            None => Err("not served, or discovery failed".to_owned()),
        };
        match listed {
            Ok(()) => found.extend(assessed),
            Err(why) => {
                // Keep what was known of this kind rather than report its databases as fine.
                tracing::debug!(%group, %kind, %why, "cannot read protected databases' settings");
                found.extend(
                    previous
                        .iter()
                        .filter(|(uid, _)| uids.contains(*uid))
                        .map(|(uid, a)| (uid.clone(), a.clone())),
                );
            }
        }
    }
    found
}

/// The objects `wanted` (by uid) among `items` of a catalog kind, assessed.
pub fn assess_objects(
    entry: &crate::catalog::DataKind,
    items: Vec<DynamicObject>,
    wanted: impl Fn(&str) -> bool,
) -> Vec<(String, Assessed)> {
    items
        .into_iter()
        .filter_map(|obj| {
            let uid = obj.metadata.uid.clone().filter(|u| wanted(u))?;
            let assessment = entry.assess(&obj.metadata, &obj.data)?;
            let key = ObjectKey::new(
                &entry.group,
                &entry.kind,
                obj.metadata.namespace.as_deref(),
                obj.metadata.name.as_deref().unwrap_or_default(),
            );
            Some((uid, Assessed { key, assessment }))
        })
        .collect()
}

/// Every object of a kind, handed to `f` one page at a time.
pub async fn for_each_page(
    api: &Api<DynamicObject>,
    mut f: impl FnMut(Vec<DynamicObject>),
) -> Result<(), String> {
    let mut params = ListParams::default().limit(PAGE);
    loop {
        let page = api.list(&params).await.map_err(|e| e.to_string())?;
        f(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(()),
        }
    }
}

/// Counts by (kind, own protection, backups), as the metric labels them.
pub fn counts(found: &HashMap<String, Assessed>) -> Vec<([String; 3], i64)> {
    let mut counts: BTreeMap<[String; 3], i64> = BTreeMap::new();
    for a in found.values() {
        let kind = if a.key.group.is_empty() {
            a.key.kind.to_string()
        } else {
            format!("{}.{}", a.key.kind, a.key.group)
        };
        *counts
            .entry([
                kind,
                a.assessment.own_protection_text().to_owned(),
                a.assessment.backups_text().to_owned(),
            ])
            .or_default() += 1;
    }
    counts.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_group_databases_by_kind_and_protection() {
        let one = |name: &str, own: Option<bool>, kept: Option<bool>| {
            (
                name.to_owned(),
                Assessed {
                    key: ObjectKey::new("rds.aws.upbound.io", "Instance", None, name),
                    assessment: Assessment {
                        own_protection: own,
                        backups_kept: kept,
                        weakened: vec![],
                    },
                },
            )
        };
        let found: HashMap<String, Assessed> = [
            one("a", Some(true), Some(false)),
            one("b", Some(true), Some(false)),
            one("c", Some(false), Some(true)),
        ]
        .into();
        let kind = "Instance.rds.aws.upbound.io".to_owned();
        assert_eq!(
            counts(&found),
            vec![
                ([kind.clone(), "off".into(), "kept".into()], 1),
                ([kind, "on".into(), "lost".into()], 2),
            ]
        );
    }
}
