//! The protected-object index: metadata of every object of the watched kinds (managedFields
//! dropped), with which of them are protected, by whom, and lookups by namespace, kind and owner
//! so each cascade check is a hash lookup (plus, for a namespace or kind, the first entry of an
//! ordered set). Pure data: the watchers feed it, decisions read it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use crate::api::{Mode, PROTECTED_ANNOTATION};
use crate::policy::{CascadeHit, ObjectFacts, PolicyRef, ProtectedObjects, Snapshot};

/// Kind and name of an object, as messages name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectKey {
    pub group: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectKey {
    /// `PersistentVolumeClaim prod/data`.
    pub fn describe(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }
}

/// What the index keeps of one object.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectEntry {
    pub key: ObjectKey,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub annotated: bool,
    /// From ownerReferences.
    pub owners: Vec<Owner>,
}

/// One ownerReference: whom the garbage collector follows, and its kind (for webhook rules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub uid: String,
    pub group: String,
    pub kind: String,
}

impl ObjectEntry {
    pub fn new(
        key: ObjectKey,
        uid: String,
        labels: BTreeMap<String, String>,
        annotations: &BTreeMap<String, String>,
        owners: Vec<Owner>,
    ) -> Self {
        let annotated = annotations
            .get(PROTECTED_ANNOTATION)
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        Self {
            key,
            uid,
            labels,
            annotated,
            owners,
        }
    }
}

/// Who protects an object: its annotation and/or policies, and the strictest mode among them.
#[derive(Debug, Clone, PartialEq)]
pub struct ProtectedBy {
    pub annotation: bool,
    pub policies: Vec<PolicyRef>,
    pub mode: Mode,
}

/// A protected object found under a cascade root.
#[derive(Debug, Clone, PartialEq)]
pub struct Found<'a> {
    pub key: &'a ObjectKey,
    pub by: &'a ProtectedBy,
    /// How many protected objects the root would take with it.
    pub count: usize,
}

/// Where a protected object sorts among the others of its namespace or kind: the strictest
/// mode first, then by name (so messages are stable), then uid (a total order). A namespace or
/// CRD deletion then names its first entry and counts the set without looking at every object:
/// O(log n), not O(n), with 100,000 protected objects of one kind. Name and uid are shared by
/// the namespace's and the kind's set.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    mode: Reverse<Mode>,
    name: Arc<str>,
    uid: Arc<str>,
}

impl Rank {
    fn of(entry: &ObjectEntry, mode: Mode) -> Self {
        Self {
            mode: Reverse(mode),
            name: entry.key.name.as_str().into(),
            uid: entry.uid.as_str().into(),
        }
    }
}

#[derive(Debug, Default)]
pub struct ObjectIndex {
    objects: HashMap<String, ObjectEntry>,
    protected: HashMap<String, ProtectedBy>,
    by_namespace: HashMap<String, BTreeSet<Rank>>,
    by_kind: HashMap<(String, String), BTreeSet<Rank>>,
    by_key: HashMap<ObjectKey, String>,
    /// Owner UID → UIDs of the objects it owns (all watched objects, protected or not, so a
    /// chain through a watched intermediate is followed).
    by_owner: HashMap<String, HashSet<String>>,
    /// Served kinds watched but not yet listed once: their protected objects may be missing,
    /// so cascade lookups cannot answer "nothing protected" yet.
    loading: BTreeSet<(String, String)>,
    /// Kinds listed at least once (their objects are all here).
    listed: BTreeSet<(String, String)>,
}

fn protection_of(entry: &ObjectEntry, snapshot: &Snapshot) -> Option<ProtectedBy> {
    let facts = ObjectFacts {
        group: &entry.key.group,
        kind: &entry.key.kind,
        namespace: entry.key.namespace.as_deref(),
        name: &entry.key.name,
        labels: &entry.labels,
    };
    let policies = snapshot.protecting(&facts);
    if policies.is_empty() && !entry.annotated {
        return None;
    }
    let mode = policies
        .iter()
        .map(|p| p.mode)
        .chain(entry.annotated.then_some(Mode::Enforce))
        .max()
        .unwrap_or(Mode::Enforce);
    Some(ProtectedBy {
        annotation: entry.annotated,
        policies: policies.into_iter().map(|p| p.id.clone()).collect(),
        mode,
    })
}

impl ObjectIndex {
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    pub fn protected_count(&self) -> usize {
        self.protected.len()
    }

    /// Every protected object with what protects it.
    pub fn protected_entries(&self) -> impl Iterator<Item = (&ObjectEntry, &ProtectedBy)> {
        self.protected
            .iter()
            .filter_map(|(uid, by)| self.objects.get(uid).map(|e| (e, by)))
    }

    /// Adds or replaces an object, judging its protection against `snapshot`.
    pub fn upsert(&mut self, entry: ObjectEntry, snapshot: &Snapshot) {
        self.remove(&entry.uid.clone());
        for owner in &entry.owners {
            self.by_owner
                .entry(owner.uid.clone())
                .or_default()
                .insert(entry.uid.clone());
        }
        if let Some(by) = protection_of(&entry, snapshot) {
            self.mark_protected(&entry, by);
        }
        self.by_key.insert(entry.key.clone(), entry.uid.clone());
        self.objects.insert(entry.uid.clone(), entry);
    }

    fn mark_protected(&mut self, entry: &ObjectEntry, by: ProtectedBy) {
        let rank = Rank::of(entry, by.mode);
        if let Some(ns) = &entry.key.namespace {
            self.by_namespace
                .entry(ns.clone())
                .or_default()
                .insert(rank.clone());
        }
        self.by_kind
            .entry((entry.key.group.clone(), entry.key.kind.clone()))
            .or_default()
            .insert(rank);
        self.protected.insert(entry.uid.clone(), by);
    }

    pub fn remove(&mut self, uid: &str) {
        let Some(old) = self.objects.remove(uid) else {
            return;
        };
        if self.by_key.get(&old.key).is_some_and(|u| u == uid) {
            self.by_key.remove(&old.key);
        }
        for owner in &old.owners {
            remove_from(&mut self.by_owner, &owner.uid, uid);
        }
        if let Some(by) = self.protected.remove(uid) {
            let rank = Rank::of(&old, by.mode);
            if let Some(ns) = &old.key.namespace {
                remove_from(&mut self.by_namespace, ns, &rank);
            }
            remove_from(
                &mut self.by_kind,
                &(old.key.group.clone(), old.key.kind.clone()),
                &rank,
            );
        }
    }

    /// Re-judges every object, after policies changed.
    pub fn reprotect(&mut self, snapshot: &Snapshot) {
        self.protected.clear();
        self.by_namespace.clear();
        self.by_kind.clear();
        let judged: Vec<(ObjectEntry, ProtectedBy)> = self
            .objects
            .values()
            .filter_map(|e| protection_of(e, snapshot).map(|by| (e.clone(), by)))
            .collect();
        for (entry, by) in judged {
            self.mark_protected(&entry, by);
        }
    }

    /// Keeps only the objects `keep` accepts (a watch stopped, or relisted without them).
    pub fn retain(&mut self, keep: impl Fn(&ObjectEntry) -> bool) {
        let gone: Vec<String> = self
            .objects
            .values()
            .filter(|e| !keep(e))
            .map(|e| e.uid.clone())
            .collect();
        for uid in gone {
            self.remove(&uid);
        }
    }

    /// A served kind is being watched; until [`ObjectIndex::listed`] it is loading.
    pub fn watching(&mut self, kind: (String, String)) {
        self.listed.remove(&kind);
        self.loading.insert(kind);
    }

    /// A watched kind finished its first list.
    pub fn listed(&mut self, kind: (String, String)) {
        self.loading.remove(&kind);
        self.listed.insert(kind);
    }

    /// A kind is no longer watched (no policy targets it).
    pub fn unwatched(&mut self, kind: &(String, String)) {
        self.loading.remove(kind);
        self.listed.remove(kind);
    }

    /// Whether every object of this kind is in the index.
    pub fn has_listed(&self, group: &str, kind: &str) -> bool {
        self.listed.contains(&(group.to_owned(), kind.to_owned()))
    }

    /// Kinds (group, kind) that own protected objects: deleting one of them is a cascade root,
    /// so the webhook must see their deletions.
    pub fn owner_kinds_of_protected(&self) -> std::collections::BTreeSet<(String, String)> {
        self.protected
            .keys()
            .flat_map(|uid| self.objects[uid].owners.iter())
            .map(|o| (o.group.clone(), o.kind.clone()))
            .collect()
    }

    /// Number of protected objects per (group, kind).
    pub fn protected_per_kind(&self) -> Vec<((String, String), usize)> {
        self.by_kind
            .iter()
            .map(|(k, uids)| (k.clone(), uids.len()))
            .collect()
    }

    pub fn protection(&self, uid: &str) -> Option<&ProtectedBy> {
        self.protected.get(uid)
    }

    /// The first of a ranked set (already the strictest, then the first by name).
    fn first_ranked(&self, ranked: &BTreeSet<Rank>) -> Option<Found<'_>> {
        let uid: &str = &ranked.first()?.uid;
        Some(Found {
            key: &self.objects[uid].key,
            by: &self.protected[uid],
            count: ranked.len(),
        })
    }

    fn found(&self, uids: &HashSet<String>) -> Option<Found<'_>> {
        // The strictest, then the first by name, so messages are stable.
        let (uid, by) = uids
            .iter()
            .filter_map(|u| self.protected.get(u).map(|b| (u, b)))
            .max_by(|(ua, a), (ub, b)| {
                a.mode
                    .cmp(&b.mode)
                    .then_with(|| self.objects[*ub].key.name.cmp(&self.objects[*ua].key.name))
            })?;
        Some(Found {
            key: &self.objects[uid].key,
            by,
            count: uids.len(),
        })
    }

    /// A protected object in the namespace, if any.
    pub fn protected_in_namespace(&self, namespace: &str) -> Option<Found<'_>> {
        self.by_namespace
            .get(namespace)
            .and_then(|r| self.first_ranked(r))
    }

    /// A protected object of the kind, if any (deleting its CRD deletes them all).
    pub fn protected_of_kind(&self, group: &str, kind: &str) -> Option<Found<'_>> {
        self.by_kind
            .get(&(group.to_owned(), kind.to_owned()))
            .and_then(|r| self.first_ranked(r))
    }

    /// A protected object the garbage collector would delete after `owner_uid`: owned
    /// directly, or through a chain of watched objects.
    pub fn protected_owned_by(&self, owner_uid: &str) -> Option<Found<'_>> {
        let mut seen: HashSet<&str> = HashSet::new();
        let mut queue = vec![owner_uid];
        let mut protected = HashSet::new();
        while let Some(uid) = queue.pop() {
            for child in self.by_owner.get(uid).into_iter().flatten() {
                if seen.insert(child) {
                    if self.protected.contains_key(child) {
                        protected.insert(child.clone());
                    }
                    queue.push(child);
                }
            }
        }
        if protected.is_empty() {
            None
        } else {
            self.found(&protected)
        }
    }

    /// Protected PersistentVolumeClaims in `namespace` whose names are `<prefix><ordinal>`
    /// for one of `prefixes` (a StatefulSet's `<template>-<statefulset>-`).
    pub fn protected_claims_with_prefix(
        &self,
        namespace: &str,
        prefixes: &[String],
    ) -> Option<Found<'_>> {
        // The set is in rank order already: the first match is the one to name.
        let mut matching = self.by_namespace.get(namespace)?.iter().filter(|rank| {
            let key = &self.objects[&*rank.uid].key;
            key.group.is_empty()
                && key.kind == "PersistentVolumeClaim"
                && prefixes.iter().any(|p| {
                    key.name.strip_prefix(p.as_str()).is_some_and(|ord| {
                        !ord.is_empty() && ord.bytes().all(|b| b.is_ascii_digit())
                    })
                })
        });
        let first: &str = &matching.next()?.uid;
        Some(Found {
            key: &self.objects[first].key,
            by: &self.protected[first],
            count: 1 + matching.count(),
        })
    }
}

impl<'a> Found<'a> {
    fn hit(&self) -> CascadeHit {
        CascadeHit {
            object: self.key.describe(),
            count: self.count,
            annotation: self.by.annotation,
            policies: self.by.policies.clone(),
        }
    }
}

impl ProtectedObjects for ObjectIndex {
    fn loading(&self) -> Option<String> {
        let kinds: Vec<String> = self
            .loading
            .iter()
            .map(|(g, k)| {
                if g.is_empty() {
                    k.clone()
                } else {
                    format!("{k}.{g}")
                }
            })
            .collect();
        (!kinds.is_empty()).then(|| kinds.join(", "))
    }

    fn in_namespace(&self, namespace: &str) -> Option<CascadeHit> {
        self.protected_in_namespace(namespace).map(|f| f.hit())
    }

    fn of_kind(&self, group: &str, kind: &str) -> Option<CascadeHit> {
        self.protected_of_kind(group, kind).map(|f| f.hit())
    }

    fn owned_by(&self, uid: &str) -> Option<CascadeHit> {
        self.protected_owned_by(uid).map(|f| f.hit())
    }

    fn claims_with_prefix(&self, namespace: &str, prefixes: &[String]) -> Option<CascadeHit> {
        self.protected_claims_with_prefix(namespace, prefixes)
            .map(|f| f.hit())
    }

    fn claim(&self, namespace: &str, name: &str) -> Option<CascadeHit> {
        self.object("", "PersistentVolumeClaim", Some(namespace), name)
    }

    fn object(
        &self,
        group: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<CascadeHit> {
        let key = ObjectKey {
            group: group.to_owned(),
            kind: kind.to_owned(),
            namespace: namespace.map(str::to_owned),
            name: name.to_owned(),
        };
        let uid = self.by_key.get(&key)?;
        let by = self.protected.get(uid)?;
        Some(
            Found {
                key: &self.objects[uid].key,
                by,
                count: 1,
            }
            .hit(),
        )
    }
}

/// Takes `item` out of the set kept under `key`, and the key once its set is empty.
fn remove_from<K: std::hash::Hash + Eq, T: Ord + ?Sized, S: SetOf<T>>(
    map: &mut HashMap<K, S>,
    key: &K,
    item: &T,
) {
    if let Some(set) = map.get_mut(key)
        && set.take(item)
    {
        map.remove(key);
    }
}

/// Removal from either set type the index keeps per key; true when the set is left empty.
trait SetOf<T: ?Sized> {
    fn take(&mut self, item: &T) -> bool;
}

impl SetOf<str> for HashSet<String> {
    fn take(&mut self, item: &str) -> bool {
        self.remove(item);
        self.is_empty()
    }
}

impl SetOf<Rank> for BTreeSet<Rank> {
    fn take(&mut self, item: &Rank) -> bool {
        self.remove(item);
        self.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ProtectionSpec, Target};
    use crate::policy::{AgentMatcher, compile};

    fn snapshot(kinds: &[&str]) -> Snapshot {
        let policies = kinds
            .iter()
            .map(|k| {
                let mut target = Target::kinds(&["", "db.example.com"], &[k]);
                target.names = vec!["data-*".into()];
                let spec = ProtectionSpec::new(Mode::Enforce, vec![target]);
                compile(PolicyRef::cluster(&format!("p-{k}")), &spec).unwrap()
            })
            .collect();
        Snapshot::new(AgentMatcher::default(), Default::default(), policies)
    }

    fn entry(
        group: &str,
        kind: &str,
        ns: &str,
        name: &str,
        uid: &str,
        owners: &[&str],
        annotated: bool,
    ) -> ObjectEntry {
        let annotations: BTreeMap<String, String> = if annotated {
            [(PROTECTED_ANNOTATION.to_owned(), "true".to_owned())].into()
        } else {
            BTreeMap::new()
        };
        ObjectEntry::new(
            ObjectKey {
                group: group.into(),
                kind: kind.into(),
                namespace: (!ns.is_empty()).then(|| ns.to_owned()),
                name: name.into(),
            },
            uid.into(),
            BTreeMap::new(),
            &annotations,
            owners
                .iter()
                .map(|s| Owner {
                    uid: s.to_string(),
                    group: "apps".into(),
                    kind: "StatefulSet".into(),
                })
                .collect(),
        )
    }

    #[test]
    fn lookups_by_namespace_kind_owner_and_statefulset_names() {
        let snap = snapshot(&["PersistentVolumeClaim", "Database"]);
        let mut index = ObjectIndex::default();
        index.upsert(
            entry(
                "db.example.com",
                "Database",
                "prod",
                "data-orders",
                "db-1",
                &[],
                false,
            ),
            &snap,
        );
        index.upsert(
            entry(
                "",
                "PersistentVolumeClaim",
                "prod",
                "data-orders-0",
                "pvc-1",
                &["sts-1"],
                false,
            ),
            &snap,
        );
        index.upsert(
            entry(
                "",
                "PersistentVolumeClaim",
                "prod",
                "scratch",
                "pvc-2",
                &["sts-2"],
                false,
            ),
            &snap,
        );
        index.upsert(
            entry(
                "",
                "PersistentVolumeClaim",
                "dev",
                "scratch",
                "pvc-3",
                &[],
                true,
            ),
            &snap,
        );
        // A chain: app → database CR (watched) → claim.
        index.upsert(
            entry(
                "db.example.com",
                "Database",
                "prod",
                "other",
                "db-2",
                &["app-1"],
                false,
            ),
            &snap,
        );
        index.upsert(
            entry(
                "",
                "PersistentVolumeClaim",
                "prod",
                "data-other-0",
                "pvc-4",
                &["db-2"],
                false,
            ),
            &snap,
        );

        assert_eq!(index.protected_count(), 4);
        assert_eq!(index.protected_in_namespace("prod").unwrap().count, 3);
        assert_eq!(
            index.protected_in_namespace("dev").unwrap().key.name,
            "scratch"
        );
        assert!(index.protected_in_namespace("staging").is_none());
        assert_eq!(
            index
                .protected_of_kind("db.example.com", "Database")
                .unwrap()
                .key
                .name,
            "data-orders"
        );
        assert!(index.protected_of_kind("apps", "Deployment").is_none());
        assert_eq!(
            index.protected_owned_by("sts-1").unwrap().key.name,
            "data-orders-0"
        );
        assert!(index.protected_owned_by("sts-2").is_none());
        assert_eq!(
            index.protected_owned_by("app-1").unwrap().key.name,
            "data-other-0"
        );
        let prefixes = ["data-orders-".to_owned()];
        assert!(
            index
                .protected_claims_with_prefix("prod", &prefixes)
                .is_some()
        );
        assert!(
            index
                .protected_claims_with_prefix("prod", &["data-order-".to_owned()])
                .is_none()
        );

        index.remove("pvc-1");
        assert!(index.protected_owned_by("sts-1").is_none());
        assert_eq!(index.protected_in_namespace("prod").unwrap().count, 2);
    }

    #[test]
    fn namespace_and_kind_lookups_name_the_strictest_then_first_by_name() {
        let warn = {
            let mut target = Target::kinds(&[""], &["PersistentVolumeClaim"]);
            target.names = vec!["a-*".into()];
            let spec = ProtectionSpec::new(Mode::Warn, vec![target]);
            compile(PolicyRef::cluster("warn"), &spec).unwrap()
        };
        let snap = Snapshot::new(AgentMatcher::default(), Default::default(), vec![warn]);
        let mut index = ObjectIndex::default();
        let pvc = |ns: &str, name: &str, uid: &str, annotated: bool| {
            entry("", "PersistentVolumeClaim", ns, name, uid, &[], annotated)
        };
        index.upsert(pvc("prod", "a-first", "1", false), &snap);
        index.upsert(pvc("prod", "z-last", "2", true), &snap);
        index.upsert(pvc("dev", "m-middle", "3", true), &snap);
        let found = index.protected_in_namespace("prod").unwrap();
        assert_eq!((found.key.name.as_str(), found.count), ("z-last", 2));
        let found = index
            .protected_of_kind("", "PersistentVolumeClaim")
            .unwrap();
        assert_eq!((found.key.name.as_str(), found.count), ("m-middle", 3));
        index.upsert(pvc("dev", "data-db-1", "5", true), &snap);
        index.upsert(pvc("dev", "data-db-0", "4", true), &snap);
        let found = index
            .protected_claims_with_prefix("dev", &["data-db-".to_owned()])
            .unwrap();
        assert_eq!((found.key.name.as_str(), found.count), ("data-db-0", 2));
        index.remove("4");
        index.remove("5");
        // Losing its annotation leaves z-last unprotected: the Warn-mode object is next in prod.
        index.upsert(pvc("prod", "z-last", "2", false), &snap);
        let found = index.protected_in_namespace("prod").unwrap();
        assert_eq!(
            (found.key.name.as_str(), found.by.mode),
            ("a-first", Mode::Warn)
        );
        index.remove("1");
        assert!(index.protected_in_namespace("prod").is_none());
        assert_eq!(
            index
                .protected_of_kind("", "PersistentVolumeClaim")
                .unwrap()
                .count,
            1
        );
    }

    #[test]
    fn policy_changes_rejudge_every_object() {
        let mut index = ObjectIndex::default();
        index.upsert(
            entry(
                "",
                "PersistentVolumeClaim",
                "prod",
                "data-0",
                "a",
                &[],
                false,
            ),
            &snapshot(&[]),
        );
        assert_eq!(index.protected_count(), 0);
        index.reprotect(&snapshot(&["PersistentVolumeClaim"]));
        assert_eq!(index.protected_count(), 1);
        index.reprotect(&snapshot(&[]));
        assert!(index.protected_in_namespace("prod").is_none());
        // An update that adds the annotation protects it without any policy.
        index.upsert(
            entry(
                "",
                "PersistentVolumeClaim",
                "prod",
                "data-0",
                "a",
                &[],
                true,
            ),
            &snapshot(&[]),
        );
        assert!(index.protected_in_namespace("prod").unwrap().by.annotation);
        assert_eq!(index.len(), 1);
    }
}
