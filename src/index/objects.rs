//! The protected-object index: metadata of every object of the watched kinds (managedFields
//! dropped), with which of them are protected, by whom, and lookups by namespace, kind and owner
//! so each cascade check is a hash lookup (plus, for a namespace or kind, the first entry of an
//! ordered set). Pure data: the watchers feed it, decisions read it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::api::{Mode, PROTECTED_ANNOTATION};
use crate::policy::handles::EXTERNAL_NAME;
use crate::policy::managers::{Manager, managers_of};
use crate::policy::{CascadeHit, ObjectFacts, PolicyRef, ProtectedObjects, Snapshot};

/// An object's UID, shared by every map of the index that names the object.
pub type Uid = Arc<str>;

/// Kind and name of an object, as messages name it. Group, kind and namespace are shared with
/// every other object of the index that has them; the name with the object's rank.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectKey {
    pub group: Arc<str>,
    pub kind: Arc<str>,
    pub namespace: Option<Arc<str>>,
    pub name: Arc<str>,
}

impl ObjectKey {
    pub fn new(group: &str, kind: &str, namespace: Option<&str>, name: &str) -> Self {
        Self {
            group: group.into(),
            kind: kind.into(),
            namespace: namespace.map(Into::into),
            name: name.into(),
        }
    }

    /// `PersistentVolumeClaim prod/data`.
    pub fn describe(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }
}

/// What the index keeps of one object: what decides whether it is protected, what the
/// garbage collector and GitOps tools follow from it, and nothing else.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectEntry {
    pub key: ObjectKey,
    pub uid: Uid,
    /// Its labels; once in the index, only those a policy's selector reads, and one shared
    /// copy of each distinct set (most objects share a handful of sets).
    pub labels: Arc<BTreeMap<String, String>>,
    pub annotated: bool,
    /// From ownerReferences.
    pub owners: Box<[Owner]>,
    /// The GitOps tools and Crossplane claims that manage it (from their labels/annotations).
    pub managers: Box<[Arc<Manager>]>,
    /// `crossplane.io/external-name`: the external resource it stands for.
    pub external: Option<Box<str>>,
}

/// One ownerReference: whom the garbage collector follows, and its kind (for webhook rules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub uid: Uid,
    pub group: Arc<str>,
    pub kind: Arc<str>,
}

impl Owner {
    pub fn new(uid: &str, group: &str, kind: &str) -> Self {
        Self {
            uid: uid.into(),
            group: group.into(),
            kind: kind.into(),
        }
    }
}

impl ObjectEntry {
    pub fn new(
        key: ObjectKey,
        uid: &str,
        labels: BTreeMap<String, String>,
        annotations: &BTreeMap<String, String>,
        owners: Vec<Owner>,
    ) -> Self {
        let annotated = annotations
            .get(PROTECTED_ANNOTATION)
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        let managers = managers_of(&labels, annotations)
            .into_iter()
            .map(Arc::new)
            .collect();
        let external = annotations.get(EXTERNAL_NAME).map(|e| e.as_str().into());
        Self {
            key,
            uid: uid.into(),
            labels: Arc::new(labels),
            annotated,
            owners: owners.into(),
            managers,
            external,
        }
    }
}

impl ObjectEntry {
    /// The entry of an object of kind (`group`, `kind`) from its metadata; None without a uid.
    pub fn of_meta(group: &str, kind: &str, meta: &ObjectMeta) -> Option<Self> {
        let uid = meta.uid.as_deref()?;
        let empty = BTreeMap::new();
        let owners = meta
            .owner_references
            .iter()
            .flatten()
            .map(|o| {
                let group = o.api_version.rsplit_once('/').map_or("", |(g, _)| g);
                Owner::new(&o.uid, group, &o.kind)
            })
            .collect();
        Some(Self::new(
            ObjectKey::new(
                group,
                kind,
                meta.namespace.as_deref(),
                meta.name.as_deref().unwrap_or_default(),
            ),
            uid,
            meta.labels.clone().unwrap_or_default(),
            meta.annotations.as_ref().unwrap_or(&empty),
            owners,
        ))
    }
}

/// An object the index knows by uid (see [`ObjectIndex::known`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known<'a> {
    /// An object of a watched kind, as the index holds it.
    Object(&'a ObjectKey),
    /// The owner of a watched object: its kind, and the namespace it shares with what it owns
    /// (its name is not kept).
    Owner {
        group: &'a str,
        kind: &'a str,
        namespace: Option<&'a str>,
    },
}

/// A second handle on stored data: a PersistentVolume or VolumeSnapshotContent and the
/// object whose protection covers its data (the claim it is bound to, the snapshot it serves).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handle {
    /// The data it names (see `policy::handles`); empty when agentguard cannot tell.
    pub identity: String,
    /// The handle's own object (group, kind, name).
    pub holder: ObjectKey,
    /// The object bound to it, when bound.
    pub bound: Option<ObjectKey>,
    /// A PersistentVolume's reclaimPolicy (what volume pinning and reports read: the index
    /// keeps this instead of whole volumes).
    pub reclaim: Option<Box<str>>,
}

/// Who protects an object: its annotation and/or policies, and the strictest mode among them.
/// Objects protected the same way share one value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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
/// O(log n), not O(n), with 100,000 protected objects of one kind. Name and uid are shared with
/// the object's entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    mode: Reverse<Mode>,
    name: Arc<str>,
    uid: Uid,
}

impl Rank {
    fn of(key: &ObjectKey, uid: &Uid, mode: Mode) -> Self {
        Self {
            mode: Reverse(mode),
            name: key.name.clone(),
            uid: uid.clone(),
        }
    }
}

/// One shared copy of each string many objects repeat (groups, kinds, namespaces).
#[derive(Debug, Default)]
struct Interner(HashSet<Arc<str>>);

impl Interner {
    fn get(&mut self, s: &Arc<str>) -> Arc<str> {
        match self.0.get(s) {
            Some(shared) => shared.clone(),
            None => {
                self.0.insert(s.clone());
                s.clone()
            }
        }
    }

    /// Forgets the strings no object uses any more.
    fn prune(&mut self) {
        self.0.retain(|s| Arc::strong_count(s) > 1);
    }
}

#[derive(Debug, Default)]
pub struct ObjectIndex {
    objects: HashMap<Uid, ObjectEntry>,
    protected: HashMap<Uid, Arc<ProtectedBy>>,
    /// One value per distinct way of being protected, with how many objects are protected so.
    protections: HashMap<Arc<ProtectedBy>, usize>,
    by_namespace: HashMap<Arc<str>, BTreeSet<Rank>>,
    by_kind: HashMap<(Arc<str>, Arc<str>), BTreeSet<Rank>>,
    by_key: HashMap<ObjectKey, Uid>,
    /// Owner UID → UIDs of the objects it owns (all watched objects, protected or not, so a
    /// chain through a watched intermediate is followed).
    by_owner: HashMap<Uid, HashSet<Uid>>,
    /// Served kinds watched but not yet listed once: their protected objects may be missing,
    /// so cascade lookups cannot answer "nothing protected" yet.
    loading: BTreeSet<(String, String)>,
    /// Kinds listed at least once (their objects are all here).
    listed: BTreeSet<(String, String)>,
    /// Manager → UIDs of the objects carrying its mark.
    by_manager: HashMap<Arc<Manager>, HashSet<Uid>>,
    /// (group, kind, external name) → UIDs.
    by_external: HashMap<ExternalKey, HashSet<Uid>>,
    /// Storage handles by holder UID, and UIDs by identity.
    handles: HashMap<String, Handle>,
    by_identity: HashMap<String, HashSet<String>>,
    /// Handle sources (e.g. `PersistentVolume`) not listed yet.
    handles_loading: BTreeSet<&'static str>,
    /// Kinds agentguard should watch but may not, with why.
    blind: BTreeMap<(String, String), String>,
    /// Why the policies, agents or the API connection are older than the staleness bound.
    stale: Option<String>,
    /// The label keys entries keep (those policies' selectors read), and whether an entry
    /// indexed before the last policy change may lack one a policy now reads.
    label_keys: Arc<BTreeSet<String>>,
    /// How many times `reprotect` found entries lacking labels policies now read.
    relists: u64,
    strings: Interner,
    label_sets: HashSet<Arc<BTreeMap<String, String>>>,
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
            .filter_map(|(uid, by)| self.objects.get(uid).map(|e| (e, &**by)))
    }

    /// Adds or replaces an object, judging its protection against `snapshot`. Of its labels
    /// only those a policy reads are kept; the strings it shares with other objects are
    /// stored once.
    pub fn upsert(&mut self, mut entry: ObjectEntry, snapshot: &Snapshot) {
        self.remove(&entry.uid.clone());
        // The labels the index's policies read (every entry keeps them; see `reprotect`) and
        // those `snapshot`'s read.
        let wanted = snapshot.label_keys();
        let labels: BTreeMap<String, String> = entry
            .labels
            .iter()
            .filter(|(k, _)| self.label_keys.contains(*k) || wanted.contains(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        entry.labels = match self.label_sets.get(&labels) {
            Some(shared) => shared.clone(),
            None => {
                let shared = Arc::new(labels);
                self.label_sets.insert(shared.clone());
                shared
            }
        };
        let key = &mut entry.key;
        key.group = self.strings.get(&key.group);
        key.kind = self.strings.get(&key.kind);
        if let Some(ns) = &mut key.namespace {
            *ns = self.strings.get(ns);
        }
        for owner in &mut entry.owners {
            owner.group = self.strings.get(&owner.group);
            owner.kind = self.strings.get(&owner.kind);
            self.by_owner
                .entry(owner.uid.clone())
                .or_default()
                .insert(entry.uid.clone());
        }
        for manager in &mut entry.managers {
            if let Some((shared, _)) = self.by_manager.get_key_value(manager) {
                *manager = shared.clone();
            }
            self.by_manager
                .entry(manager.clone())
                .or_default()
                .insert(entry.uid.clone());
        }
        if let Some(external) = &entry.external {
            self.by_external
                .entry(external_key(&entry.key, external))
                .or_default()
                .insert(entry.uid.clone());
        }
        if let Some(by) = protection_of(&entry, snapshot) {
            self.mark_protected(&entry.key, &entry.uid, by);
        }
        self.by_key.insert(entry.key.clone(), entry.uid.clone());
        self.objects.insert(entry.uid.clone(), entry);
    }

    fn mark_protected(&mut self, key: &ObjectKey, uid: &Uid, by: ProtectedBy) {
        let rank = Rank::of(key, uid, by.mode);
        if let Some(ns) = &key.namespace {
            self.by_namespace
                .entry(ns.clone())
                .or_default()
                .insert(rank.clone());
        }
        self.by_kind
            .entry((key.group.clone(), key.kind.clone()))
            .or_default()
            .insert(rank);
        let by = match self.protections.get_key_value(&by) {
            Some((shared, _)) => shared.clone(),
            None => Arc::new(by),
        };
        *self.protections.entry(by.clone()).or_default() += 1;
        self.protected.insert(uid.clone(), by);
    }

    pub fn remove(&mut self, uid: &str) {
        let Some(old) = self.objects.remove(uid) else {
            return;
        };
        if self.by_key.get(&old.key).is_some_and(|u| &**u == uid) {
            self.by_key.remove(&old.key);
        }
        for owner in &old.owners {
            remove_from(&mut self.by_owner, &owner.uid, uid);
        }
        for manager in &old.managers {
            remove_from(&mut self.by_manager, manager, uid);
        }
        if let Some(external) = &old.external {
            remove_from(
                &mut self.by_external,
                &external_key(&old.key, external),
                uid,
            );
        }
        if let Some(by) = self.protected.remove(uid) {
            if let Some(n) = self.protections.get_mut(&by) {
                *n -= 1;
                if *n == 0 {
                    self.protections.remove(&by);
                }
            }
            let rank = Rank::of(&old.key, &old.uid, by.mode);
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

    /// Re-judges every object, after policies changed. Returns whether the policies now read
    /// a label key the index did not keep: then every watched kind must be listed again (and
    /// is marked loading until it is) before the index can say what they protect.
    pub fn reprotect(&mut self, snapshot: &Snapshot) -> bool {
        let relist = !snapshot.label_keys().is_subset(&self.label_keys);
        self.label_keys = snapshot.label_keys().clone();
        if relist {
            let listed = std::mem::take(&mut self.listed);
            self.loading.extend(listed);
            self.relists += 1;
        }
        self.protected.clear();
        self.protections.clear();
        self.by_namespace.clear();
        self.by_kind.clear();
        let judged: Vec<(ObjectKey, Uid, ProtectedBy)> = self
            .objects
            .values()
            .filter_map(|e| protection_of(e, snapshot).map(|by| (e.key.clone(), e.uid.clone(), by)))
            .collect();
        for (key, uid, by) in judged {
            self.mark_protected(&key, &uid, by);
        }
        self.prune();
        relist
    }

    /// Keeps only the objects `keep` accepts (a watch stopped, or relisted without them).
    pub fn retain(&mut self, keep: impl Fn(&ObjectEntry) -> bool) {
        let gone: Vec<Uid> = self
            .objects
            .values()
            .filter(|e| !keep(e))
            .map(|e| e.uid.clone())
            .collect();
        for uid in gone {
            self.remove(&uid);
        }
        self.prune();
    }

    /// How many times every watched kind had to be listed again (see `reprotect`): the watches
    /// start over whenever this grows.
    pub fn relists(&self) -> u64 {
        self.relists
    }

    /// Forgets shared strings and label sets no object uses any more.
    fn prune(&mut self) {
        self.strings.prune();
        self.label_sets.retain(|l| Arc::strong_count(l) > 1);
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
    /// The kinds of every owner above a protected object, however many links up: deleting
    /// one makes the garbage collector delete down the chain. Owners agentguard watches are
    /// followed to their own owners; so watching these kinds reaches the top of each chain.
    pub fn ancestor_kinds_of_protected(&self) -> BTreeSet<(String, String)> {
        let mut kinds = BTreeSet::new();
        let mut seen: HashSet<&str> = HashSet::new();
        let mut queue: Vec<&str> = self.protected.keys().map(|u| &**u).collect();
        while let Some(uid) = queue.pop() {
            let Some(entry) = self.objects.get(uid) else {
                continue;
            };
            for owner in &entry.owners {
                kinds.insert((owner.group.to_string(), owner.kind.to_string()));
                if seen.insert(&owner.uid) {
                    queue.push(&owner.uid);
                }
            }
        }
        kinds
    }

    /// The managers (GitOps objects, Crossplane claims) named by protected objects or by their
    /// ancestors.
    pub fn managers_of_protected(&self) -> BTreeSet<&Manager> {
        self.by_manager
            .iter()
            .filter(|(_, uids)| {
                uids.iter()
                    .any(|u| self.protected.contains_key(u) || self.protected_owned_by(u).is_some())
            })
            .map(|(m, _)| &**m)
            .collect()
    }

    /// Records (or replaces) a storage handle.
    pub fn set_handle(&mut self, uid: &str, handle: Option<Handle>) {
        if let Some(old) = self.handles.remove(uid) {
            remove_from(&mut self.by_identity, &old.identity, uid);
        }
        if let Some(handle) = handle {
            if !handle.identity.is_empty() {
                self.by_identity
                    .entry(handle.identity.clone())
                    .or_default()
                    .insert(uid.to_owned());
            }
            self.handles.insert(uid.to_owned(), handle);
        }
    }

    /// The handles of `source` (e.g. every PersistentVolume, with its claim and reclaimPolicy).
    pub fn handles_of<'a>(&'a self, source: &'a str) -> impl Iterator<Item = &'a Handle> + 'a {
        self.handles
            .values()
            .filter(move |h| &*h.holder.kind == source)
    }

    /// Keeps only the handles of `source` whose holders are in `uids` (after a relist).
    pub fn retain_handles(&mut self, source: &str, uids: &HashSet<String>) {
        let gone: Vec<String> = self
            .handles
            .iter()
            .filter(|(u, h)| &*h.holder.kind == source && !uids.contains(*u))
            .map(|(u, _)| u.clone())
            .collect();
        for uid in gone {
            self.set_handle(&uid, None);
        }
    }

    /// Whether the handles of `source` are complete.
    pub fn handles_listed(&mut self, source: &'static str, listed: bool) {
        if listed {
            self.handles_loading.remove(source);
        } else {
            self.handles_loading.insert(source);
        }
    }

    /// Marks a kind agentguard may not watch (`Some(why)`), or watchable again.
    pub fn set_blind(&mut self, kind: (String, String), why: Option<String>) {
        match why {
            Some(why) => {
                self.blind.insert(kind, why);
            }
            None => {
                self.blind.remove(&kind);
            }
        }
    }

    /// Marks the global state stale (`Some(why)`) or fresh again.
    pub fn set_stale(&mut self, why: Option<String>) {
        self.stale = why;
    }

    /// Why the global state is stale, when it is.
    pub fn stale(&self) -> Option<&str> {
        self.stale.as_deref()
    }

    pub fn blind_kinds(&self) -> impl Iterator<Item = (&(String, String), &String)> {
        self.blind.iter()
    }

    pub fn protected_per_kind(&self) -> Vec<((String, String), usize)> {
        self.by_kind
            .iter()
            .map(|((g, k), uids)| ((g.to_string(), k.to_string()), uids.len()))
            .collect()
    }

    /// How many objects `policy` protects, counted without visiting them.
    pub fn protected_by_policy(&self, policy: &PolicyRef) -> usize {
        self.protections
            .iter()
            .filter(|(by, _)| by.policies.contains(policy))
            .map(|(_, n)| n)
            .sum()
    }

    pub fn protection(&self, uid: &str) -> Option<&ProtectedBy> {
        self.protected.get(uid).map(|b| &**b)
    }

    /// What the index knows of the object with this uid: an object it holds, or an owner named
    /// by the ownerReferences of one it holds. None for a uid it has never seen (a review may
    /// name any uid; only the index's word says such an object exists).
    pub fn known(&self, uid: &str) -> Option<Known<'_>> {
        if let Some(entry) = self.objects.get(uid) {
            return Some(Known::Object(&entry.key));
        }
        let child = self.by_owner.get(uid)?.iter().next()?;
        let entry = self.objects.get(child)?;
        let owner = entry.owners.iter().find(|o| &*o.uid == uid)?;
        Some(Known::Owner {
            group: &owner.group,
            kind: &owner.kind,
            // ownerReferences point within the dependent's namespace, or at a cluster-scoped
            // owner.
            namespace: entry.key.namespace.as_deref(),
        })
    }

    /// Whether the index holds a protected object in `namespace` (so the namespace exists).
    pub fn has_protected_in(&self, namespace: &str) -> bool {
        self.by_namespace.contains_key(namespace)
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

    fn found(&self, uids: &HashSet<Uid>) -> Option<Found<'_>> {
        if uids.is_empty() {
            return None;
        }
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
            .get(&(group.into(), kind.into()))
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
    pub fn protected_statefulset_claims(
        &self,
        namespace: &str,
        statefulset: &str,
        from: i64,
    ) -> Option<Found<'_>> {
        let infix = format!("-{statefulset}");
        let protected: HashSet<Uid> = self
            .by_namespace
            .get(namespace)?
            .iter()
            .filter(|rank| {
                let key = &self.objects[&*rank.uid].key;
                key.group.is_empty()
                    && &*key.kind == "PersistentVolumeClaim"
                    && key.name.rsplit_once('-').is_some_and(|(prefix, ordinal)| {
                        prefix.len() > infix.len()
                            && prefix.ends_with(&infix)
                            && !ordinal.is_empty()
                            && ordinal.bytes().all(|b| b.is_ascii_digit())
                            && ordinal.parse::<i64>().map_or(true, |n| n >= from)
                    })
            })
            .map(|rank| rank.uid.clone())
            .collect();
        self.found(&protected)
    }

    /// Protected objects carrying `manager`'s mark, and protected descendants of any object
    /// that carries it.
    pub fn protected_managed_by(&self, manager: &Manager) -> Option<Found<'_>> {
        let mut protected: HashSet<Uid> = HashSet::new();
        let mut queue: Vec<&Uid> = self.by_manager.get(manager)?.iter().collect();
        let mut seen: HashSet<&Uid> = queue.iter().copied().collect();
        while let Some(uid) = queue.pop() {
            if self.protected.contains_key(uid) {
                protected.insert(uid.clone());
            }
            for child in self.by_owner.get(uid).into_iter().flatten() {
                if seen.insert(child) {
                    queue.push(child);
                }
            }
        }
        self.found(&protected)
    }

    pub fn protected_claims_with_prefix(
        &self,
        namespace: &str,
        prefixes: &[String],
    ) -> Option<Found<'_>> {
        // The set is in rank order already: the first match is the one to name.
        let mut matching = self.by_namespace.get(namespace)?.iter().filter(|rank| {
            let key = &self.objects[&*rank.uid].key;
            key.group.is_empty()
                && &*key.kind == "PersistentVolumeClaim"
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

    fn statefulset_claims(
        &self,
        namespace: &str,
        statefulset: &str,
        from: i64,
    ) -> Option<CascadeHit> {
        self.protected_statefulset_claims(namespace, statefulset, from)
            .map(|f| f.hit())
    }

    fn managed_by(&self, manager: &Manager) -> Option<CascadeHit> {
        self.protected_managed_by(manager).map(|f| f.hit())
    }

    fn storage(&self, identity: &str) -> Option<CascadeHit> {
        if !self.handles_loading.is_empty() {
            // Not yet known whether this handle is a protected disk's: refuse meanwhile.
            return Some(CascadeHit {
                object: format!(
                    "the storage handles of {} (still loading)",
                    self.handles_loading
                        .iter()
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                count: 1,
                annotation: true,
                policies: vec![],
            });
        }
        self.by_identity.get(identity)?.iter().find_map(|uid| {
            let handle = &self.handles[uid];
            [Some(&handle.holder), handle.bound.as_ref()]
                .into_iter()
                .flatten()
                .find_map(|key| {
                    self.object(&key.group, &key.kind, key.namespace.as_deref(), &key.name)
                })
        })
    }

    fn external(&self, group: &str, kind: &str, external: &str, uid: &str) -> Option<CascadeHit> {
        let key = (group.into(), kind.into(), external.into());
        let others: HashSet<Uid> = self
            .by_external
            .get(&key)?
            .iter()
            .filter(|u| &***u != uid && self.protected.contains_key(*u))
            .cloned()
            .collect();
        self.found(&others).map(|f| f.hit())
    }

    fn blind(&self, group: &str, kind: &str) -> Option<String> {
        self.blind
            .get(&(group.to_owned(), kind.to_owned()))
            .cloned()
    }

    fn object(
        &self,
        group: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<CascadeHit> {
        let key = ObjectKey::new(group, kind, namespace, name);
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
/// (group, kind, external name) of a managed resource.
type ExternalKey = (Arc<str>, Arc<str>, Box<str>);

fn external_key(key: &ObjectKey, external: &str) -> ExternalKey {
    (key.group.clone(), key.kind.clone(), external.into())
}

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

impl<S: std::borrow::Borrow<str> + std::hash::Hash + Eq> SetOf<str> for HashSet<S> {
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
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

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
                namespace: (!ns.is_empty()).then(|| ns.into()),
                name: name.into(),
            },
            uid,
            BTreeMap::new(),
            &annotations,
            owners
                .iter()
                .map(|s| Owner {
                    uid: s.to_string().into(),
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
            &*index.protected_in_namespace("dev").unwrap().key.name,
            "scratch"
        );
        assert!(index.protected_in_namespace("staging").is_none());
        assert_eq!(
            &*index
                .protected_of_kind("db.example.com", "Database")
                .unwrap()
                .key
                .name,
            "data-orders"
        );
        assert!(index.protected_of_kind("apps", "Deployment").is_none());
        assert_eq!(
            &*index.protected_owned_by("sts-1").unwrap().key.name,
            "data-orders-0"
        );
        assert!(index.protected_owned_by("sts-2").is_none());
        assert_eq!(
            &*index.protected_owned_by("app-1").unwrap().key.name,
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
        assert_eq!((&*found.key.name, found.count), ("z-last", 2));
        let found = index
            .protected_of_kind("", "PersistentVolumeClaim")
            .unwrap();
        assert_eq!((&*found.key.name, found.count), ("m-middle", 3));
        index.upsert(pvc("dev", "data-db-1", "5", true), &snap);
        index.upsert(pvc("dev", "data-db-0", "4", true), &snap);
        let found = index
            .protected_claims_with_prefix("dev", &["data-db-".to_owned()])
            .unwrap();
        assert_eq!((&*found.key.name, found.count), ("data-db-0", 2));
        index.remove("4");
        index.remove("5");
        // Losing its annotation leaves z-last unprotected: the Warn-mode object is next in prod.
        index.upsert(pvc("prod", "z-last", "2", false), &snap);
        let found = index.protected_in_namespace("prod").unwrap();
        assert_eq!((&*found.key.name, found.by.mode), ("a-first", Mode::Warn));
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
        let claim = || {
            entry(
                "",
                "PersistentVolumeClaim",
                "prod",
                "data-0",
                "a",
                &[],
                false,
            )
        };
        let mut index = ObjectIndex::default();
        index.upsert(claim(), &snapshot(&[]));
        assert_eq!(index.protected_count(), 0);
        let policy = PolicyRef::cluster("p-PersistentVolumeClaim");
        index.reprotect(&snapshot(&["PersistentVolumeClaim"]));
        assert_eq!(index.protected_count(), 1);
        assert_eq!(index.protected_by_policy(&policy), 1);
        index.remove("a");
        assert_eq!(index.protected_by_policy(&policy), 0);
        index.upsert(claim(), &snapshot(&["PersistentVolumeClaim"]));
        assert_eq!(index.protected_by_policy(&policy), 1);
        index.reprotect(&snapshot(&[]));
        assert_eq!(index.protected_by_policy(&policy), 0);
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

    /// A policy protecting claims whose label `tier` is `gold`.
    fn tier_gold() -> Snapshot {
        let mut target = Target::kinds(&[""], &["PersistentVolumeClaim"]);
        target.selector = Some(LabelSelector {
            match_labels: Some([("tier".to_owned(), "gold".to_owned())].into()),
            match_expressions: None,
        });
        let spec = ProtectionSpec::new(Mode::Enforce, vec![target]);
        let policies = vec![compile(PolicyRef::cluster("gold"), &spec).unwrap()];
        Snapshot::new(AgentMatcher::default(), Default::default(), policies)
    }

    #[test]
    fn only_labels_a_policy_reads_are_kept_and_a_new_one_means_listing_again() {
        let labelled = || {
            object(
                PVC,
                "data",
                "pvc",
                &[],
                &[("tier", "gold"), ("app.kubernetes.io/name", "orders")],
                &[],
            )
        };
        let mut index = ObjectIndex::default();
        index.reprotect(&snapshot(&["PersistentVolumeClaim"]));
        index.listed(("".into(), "PersistentVolumeClaim".into()));
        index.upsert(labelled(), &snapshot(&["PersistentVolumeClaim"]));
        // No policy reads a label: none is kept.
        assert!(index.objects["pvc"].labels.is_empty());
        let other = object(PVC, "wal", "pvc-2", &[], &[("tier", "gold")], &[]);
        index.upsert(other, &snapshot(&["PersistentVolumeClaim"]));
        // Equal label sets are one copy.
        assert!(Arc::ptr_eq(
            &index.objects["pvc"].labels,
            &index.objects["pvc-2"].labels
        ));
        index.remove("pvc-2");
        // A policy that reads `tier` cannot be judged from what the index kept: the index
        // says so, and refuses cascades through the kind until it is listed again.
        assert_eq!(index.relists(), 0);
        assert!(index.reprotect(&tier_gold()));
        assert_eq!(index.relists(), 1);
        assert_eq!(index.protected_count(), 0);
        assert_eq!(index.loading().as_deref(), Some("PersistentVolumeClaim"));
        index.upsert(labelled(), &tier_gold());
        index.listed(("".into(), "PersistentVolumeClaim".into()));
        assert_eq!(index.protected_count(), 1);
        assert_eq!(index.loading(), None);
        // Only `tier` is kept; the same policies again need no new list.
        assert_eq!(
            *index.objects["pvc"].labels,
            [("tier".to_owned(), "gold".to_owned())].into()
        );
        assert!(!index.reprotect(&tier_gold()));
        assert_eq!(index.protected_count(), 1);
        // Fewer labels read: nothing to list again; reading `tier` again afterwards is a
        // relist (entries indexed meanwhile kept no `tier`).
        assert!(!index.reprotect(&snapshot(&[])));
        assert!(index.reprotect(&tier_gold()));
        assert_eq!(index.relists(), 2);
        assert!(!index.reprotect(&snapshot(&[])));
        // An index filled without ever re-judging (as `kubectl agentguard status` builds one)
        // keeps what the snapshot it is given reads.
        let mut fresh = ObjectIndex::default();
        fresh.upsert(labelled(), &tier_gold());
        assert_eq!(fresh.protected_count(), 1);
    }

    /// An object of any kind with the given owners (uid, group, kind), labels and annotations.
    fn object(
        kind: (&str, &str),
        name: &str,
        uid: &str,
        owners: &[(&str, &str, &str)],
        labels: &[(&str, &str)],
        annotations: &[(&str, &str)],
    ) -> ObjectEntry {
        let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        ObjectEntry::new(
            ObjectKey {
                group: kind.0.into(),
                kind: kind.1.into(),
                namespace: Some("prod".into()),
                name: name.into(),
            },
            uid,
            map(labels),
            &map(annotations),
            owners
                .iter()
                .map(|(uid, group, kind)| Owner {
                    uid: (*uid).into(),
                    group: (*group).into(),
                    kind: (*kind).into(),
                })
                .collect(),
        )
    }

    const PVC: (&str, &str) = ("", "PersistentVolumeClaim");
    const PROTECTED: (&str, &str) = (PROTECTED_ANNOTATION, "true");

    #[test]
    fn owner_kinds_are_followed_to_the_top_of_each_chain() {
        let snap = snapshot(&[]);
        let mut index = ObjectIndex::default();
        index.upsert(
            object(
                PVC,
                "web-0-scratch",
                "pvc",
                &[("pod", "", "Pod")],
                &[],
                &[PROTECTED],
            ),
            &snap,
        );
        assert_eq!(
            index.ancestor_kinds_of_protected(),
            [("".to_owned(), "Pod".to_owned())].into()
        );
        // Once Pods are watched, the Pod's owner is known, and so on up.
        index.upsert(
            object(
                ("", "Pod"),
                "web-0",
                "pod",
                &[("rs", "apps", "ReplicaSet")],
                &[],
                &[],
            ),
            &snap,
        );
        index.upsert(
            object(
                ("apps", "ReplicaSet"),
                "web-1",
                "rs",
                &[("dep", "apps", "Deployment")],
                &[],
                &[],
            ),
            &snap,
        );
        let kinds: Vec<String> = index
            .ancestor_kinds_of_protected()
            .into_iter()
            .map(|(_, k)| k)
            .collect();
        assert_eq!(kinds, ["Pod", "Deployment", "ReplicaSet"]);
        // Deleting the Deployment reaches the claim through both links.
        assert_eq!(
            &*index.owned_by("dep").unwrap().object,
            "PersistentVolumeClaim prod/web-0-scratch"
        );
        // Unprotected objects' owners are not wanted.
        let mut other = ObjectIndex::default();
        other.upsert(
            object(PVC, "tmp", "t", &[("pod", "", "Pod")], &[], &[]),
            &snap,
        );
        assert!(other.ancestor_kinds_of_protected().is_empty());
    }

    #[test]
    fn statefulset_claims_from_an_ordinal_up_whatever_the_template() {
        let snap = snapshot(&[]);
        let mut index = ObjectIndex::default();
        for (name, uid) in [
            ("data-db-0", "a"),
            ("logs-db-3", "b"),
            ("data-dbx-1", "c"),
            ("data-db-backup", "d"),
            ("db-1", "e"),
        ] {
            index.upsert(object(PVC, name, uid, &[], &[], &[PROTECTED]), &snap);
        }
        assert_eq!(index.statefulset_claims("prod", "db", 0).unwrap().count, 2);
        let from_one = index.statefulset_claims("prod", "db", 1).unwrap();
        assert_eq!(
            (from_one.object.as_str(), from_one.count),
            ("PersistentVolumeClaim prod/logs-db-3", 1)
        );
        assert!(index.statefulset_claims("prod", "db", 4).is_none());
        assert!(index.statefulset_claims("dev", "db", 0).is_none());
    }

    #[test]
    fn managers_reach_what_they_mark_and_what_that_owns() {
        let snap = snapshot(&[]);
        let mut index = ObjectIndex::default();
        let argo = Manager {
            kind: crate::policy::managers::ManagerKind::ArgoApplication,
            namespace: None,
            name: "orders".into(),
        };
        index.upsert(
            object(
                PVC,
                "data",
                "pvc",
                &[],
                &[],
                &[
                    PROTECTED,
                    (
                        "argocd.argoproj.io/tracking-id",
                        "orders:/PersistentVolumeClaim:prod/data",
                    ),
                ],
            ),
            &snap,
        );
        assert_eq!(
            &*index.managed_by(&argo).unwrap().object,
            "PersistentVolumeClaim prod/data"
        );
        // A managed StatefulSet whose claim (owned by it) is protected.
        let payments = Manager {
            name: "payments".into(),
            ..argo.clone()
        };
        index.upsert(
            object(
                ("apps", "StatefulSet"),
                "db",
                "sts",
                &[],
                &[("app.kubernetes.io/instance", "payments")],
                &[],
            ),
            &snap,
        );
        assert!(index.managed_by(&payments).is_none());
        index.upsert(
            object(
                PVC,
                "data-db-0",
                "pvc2",
                &[("sts", "apps", "StatefulSet")],
                &[],
                &[PROTECTED],
            ),
            &snap,
        );
        assert_eq!(
            &*index.managed_by(&payments).unwrap().object,
            "PersistentVolumeClaim prod/data-db-0"
        );
        assert_eq!(index.managers_of_protected().len(), 2);
        index.remove("pvc2");
        assert!(index.managed_by(&payments).is_none());
    }

    #[test]
    fn storage_handles_refuse_while_loading_and_name_the_protected_claim() {
        let snap = snapshot(&[]);
        let mut index = ObjectIndex::default();
        index.upsert(object(PVC, "data", "pvc", &[], &[], &[PROTECTED]), &snap);
        index.handles_listed("PersistentVolume", false);
        assert!(
            index
                .storage("csi:d:vol-9")
                .unwrap()
                .object
                .contains("still loading")
        );
        let handle = |name: &str, bound: Option<&str>| Handle {
            identity: "csi:d:vol-1".into(),
            holder: ObjectKey {
                group: "".into(),
                kind: "PersistentVolume".into(),
                namespace: None,
                name: name.into(),
            },
            bound: bound.map(|claim| ObjectKey {
                group: "".into(),
                kind: "PersistentVolumeClaim".into(),
                namespace: Some("prod".into()),
                name: claim.into(),
            }),
            reclaim: None,
        };
        index.set_handle("pv-1", Some(handle("pv-1", Some("data"))));
        index.handles_listed("PersistentVolume", true);
        assert_eq!(
            &*index.storage("csi:d:vol-1").unwrap().object,
            "PersistentVolumeClaim prod/data"
        );
        assert!(index.storage("csi:d:vol-2").is_none());
        // A relist without the volume drops its handle.
        index.retain_handles("PersistentVolume", &HashSet::new());
        assert!(index.storage("csi:d:vol-1").is_none());
    }

    #[test]
    fn external_names_match_other_protected_objects_of_the_same_kind() {
        let snap = snapshot(&["Instance"]);
        let mut index = ObjectIndex::default();
        let rds = ("db.example.com", "Instance");
        let named = (EXTERNAL_NAME, "orders-prod");
        index.upsert(object(rds, "data-orders", "a", &[], &[], &[named]), &snap);
        index.upsert(object(rds, "scratch", "b", &[], &[], &[]), &snap);
        assert!(
            index
                .external("db.example.com", "Instance", "orders-prod", "b")
                .is_some()
        );
        // The protected object renaming its own external resource is not a second handle.
        assert!(
            index
                .external("db.example.com", "Instance", "orders-prod", "a")
                .is_none()
        );
        assert!(
            index
                .external("db.example.com", "Other", "orders-prod", "b")
                .is_none()
        );
        index.remove("a");
        assert!(
            index
                .external("db.example.com", "Instance", "orders-prod", "b")
                .is_none()
        );
    }
}
