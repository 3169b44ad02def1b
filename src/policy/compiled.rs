use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use kube::core::{Selector, SelectorExt};

use super::agents::{AgentMatcher, Restriction, SubjectMatcher, service_account_of};
use super::glob::GlobList;
use super::seal::Keyring;
use crate::api::{DEFAULT_APPROVAL_TTL, MAX_APPROVAL_TTL, Mode, ProtectionSpec};

/// Which of the two policy kinds an object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyKind {
    Namespaced,
    Cluster,
}

/// A policy's identity: kind, namespace (for ProtectedResource) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PolicyRef {
    pub kind: PolicyKind,
    pub namespace: Option<String>,
    pub name: String,
}

impl PolicyRef {
    pub fn cluster(name: &str) -> Self {
        Self {
            kind: PolicyKind::Cluster,
            namespace: None,
            name: name.to_owned(),
        }
    }

    pub fn namespaced(namespace: &str, name: &str) -> Self {
        Self {
            kind: PolicyKind::Namespaced,
            namespace: Some(namespace.to_owned()),
            name: name.to_owned(),
        }
    }

    fn kind_name(&self) -> &'static str {
        match self.kind {
            PolicyKind::Namespaced => "ProtectedResource",
            PolicyKind::Cluster => "ClusterProtectedResource",
        }
    }

    fn qualified_name(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }

    /// `ClusterProtectedResource default-volumes`, as the denial message says it.
    pub fn describe(&self) -> String {
        format!("{} {}", self.kind_name(), self.qualified_name())
    }

    /// `ClusterProtectedResource/default-volumes`: the `policy` metric label and audit annotation.
    pub fn label(&self) -> String {
        format!("{}/{}", self.kind_name(), self.qualified_name())
    }
}

#[derive(Debug, Clone)]
struct CompiledTarget {
    groups: HashSet<String>,
    kinds: HashSet<String>,
    names: GlobList,
    selector: Option<Selector>,
    /// The label keys the selector reads: all an index needs to keep of an object's labels.
    label_keys: BTreeSet<String>,
    namespaces: GlobList,
    /// From a `catalog` target: its kinds are protected where the API server serves them, and
    /// one not served is no problem (its CRD is simply not installed).
    from_catalog: bool,
}

/// Who may approve for a policy that names its approvers.
#[derive(Debug, Clone, Default)]
pub struct ApproverSet {
    pub usernames: HashSet<String>,
    pub groups: HashSet<String>,
}

/// A policy checked and compiled for fast matching. Built once per policy change, read on
/// every admission request.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    pub id: PolicyRef,
    pub mode: Mode,
    targets: Vec<CompiledTarget>,
    pub subjects: Option<SubjectMatcher>,
    pub max_ttl: Duration,
    pub approvers: Option<ApproverSet>,
    pub message: Option<String>,
    /// Pin the volumes of protected claims to reclaimPolicy Retain.
    pub retain_volumes: bool,
}

/// The parts of an object that targets match on.
#[derive(Debug, Clone, Copy)]
pub struct ObjectFacts<'a> {
    pub group: &'a str,
    pub kind: &'a str,
    pub namespace: Option<&'a str>,
    pub name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

impl CompiledPolicy {
    /// Whether this policy protects the object.
    pub fn protects(&self, object: &ObjectFacts<'_>) -> bool {
        if self.id.kind == PolicyKind::Namespaced
            && object.namespace != self.id.namespace.as_deref()
        {
            return false;
        }
        self.targets.iter().any(|t| {
            t.groups.contains(object.group)
                && t.kinds.contains(object.kind)
                && (t.names.is_empty() || t.names.first_match(object.name).is_some())
                && (t.namespaces.is_empty()
                    || object
                        .namespace
                        .is_some_and(|ns| t.namespaces.first_match(ns).is_some()))
                && t.selector.as_ref().is_none_or(|s| s.matches(object.labels))
        })
    }

    /// The (group, kind) pairs this policy targets.
    /// The label keys this policy's selectors read.
    pub fn label_keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.targets
            .iter()
            .flat_map(|t| t.label_keys.iter().map(String::as_str))
    }

    /// Whether (group, kind) comes only from `catalog` targets: not served is then no problem.
    pub fn from_catalog_only(&self, group: &str, kind: &str) -> bool {
        let mut naming = self
            .targets
            .iter()
            .filter(|t| t.groups.contains(group) && t.kinds.contains(kind))
            .peekable();
        naming.peek().is_some() && naming.all(|t| t.from_catalog)
    }

    pub fn kinds(&self) -> impl Iterator<Item = (String, String)> + '_ {
        self.targets.iter().flat_map(|t| {
            t.groups
                .iter()
                .flat_map(move |g| t.kinds.iter().map(move |k| (g.clone(), k.clone())))
        })
    }
}

/// Checks a policy spec and compiles it. Every problem is reported, each in words a user can
/// act on; a policy with any problem protects nothing and shows `Ready=False`.
pub fn compile(id: PolicyRef, spec: &ProtectionSpec) -> Result<CompiledPolicy, Vec<String>> {
    let mut errors = Vec::new();
    if spec.targets.is_empty() {
        errors.push("spec.targets must name at least one target".to_owned());
    }
    let mut targets = Vec::new();
    for (i, t) in spec.targets.iter().enumerate() {
        let at = format!("spec.targets[{i}]");
        // (groups, kinds) pairs to match: the target's own, or one per group of the catalog.
        let mut kind_sets: Vec<(HashSet<String>, HashSet<String>)> = Vec::new();
        if let Some(catalog) = &t.catalog {
            if !t.api_groups.is_empty() || !t.kinds.is_empty() {
                errors.push(format!(
                    "{at}: a target names catalog or apiGroups and kinds, not both"
                ));
            }
            match catalog_kinds(catalog) {
                Ok(by_group) => kind_sets.extend(
                    by_group
                        .into_iter()
                        .map(|(group, kinds)| (HashSet::from([group]), kinds)),
                ),
                Err(e) => errors.push(format!("{at}.catalog: {e}")),
            }
        } else {
            if t.api_groups.is_empty() {
                errors.push(format!(
                    "{at}.apiGroups must list at least one group (\"\" is the core group)"
                ));
            }
            if t.kinds.is_empty() {
                errors.push(format!("{at}.kinds must list at least one kind"));
            }
            kind_sets.push((
                t.api_groups.iter().cloned().collect(),
                t.kinds.iter().cloned().collect(),
            ));
        }
        for kind in &t.kinds {
            if !is_kind_name(kind) {
                errors.push(format!(
                    "{at}.kinds: {kind:?} is not a kind name (like PersistentVolumeClaim)"
                ));
            }
        }
        if id.kind == PolicyKind::Namespaced && !t.namespaces.is_empty() {
            errors.push(format!(
                "{at}.namespaces is only allowed in ClusterProtectedResource; a ProtectedResource protects its own namespace"
            ));
        }
        let names = GlobList::new(&t.names)
            .map_err(|e| errors.push(format!("{at}.names: {e}")))
            .ok();
        let namespaces = GlobList::new(&t.namespaces)
            .map_err(|e| errors.push(format!("{at}.namespaces: {e}")))
            .ok();
        let selector = match &t.selector {
            None => Some(None),
            Some(s) => Selector::try_from(s.clone())
                .map(Some)
                .map_err(|e| errors.push(format!("{at}.selector: {e}")))
                .ok(),
        };
        let label_keys: BTreeSet<String> = t
            .selector
            .iter()
            .flat_map(|s| {
                let labels = s.match_labels.iter().flatten().map(|(k, _)| k.clone());
                let expressions = s.match_expressions.iter().flatten().map(|e| e.key.clone());
                labels.chain(expressions)
            })
            .collect();
        if let (Some(names), Some(namespaces), Some(selector)) = (names, namespaces, selector) {
            for (groups, kinds) in kind_sets {
                targets.push(CompiledTarget {
                    groups,
                    kinds,
                    names: names.clone(),
                    selector: selector.clone(),
                    label_keys: label_keys.clone(),
                    namespaces: namespaces.clone(),
                    from_catalog: t.catalog.is_some(),
                });
            }
        }
    }
    let subjects = match &spec.subjects {
        None => None,
        Some(s) => SubjectMatcher::new(&s.service_accounts, &s.groups, &s.usernames)
            .map_err(|e| errors.push(format!("spec.subjects: {e}")))
            .ok(),
    };
    let approval = spec.approval.clone().unwrap_or_default();
    let max_ttl = match approval.max_ttl.as_deref() {
        None => DEFAULT_APPROVAL_TTL,
        Some(text) => match parse_duration(text) {
            Some(d) if d.is_zero() => {
                errors.push("spec.approval.maxTTL must be more than 0s".into());
                DEFAULT_APPROVAL_TTL
            }
            Some(d) if d > MAX_APPROVAL_TTL => {
                errors.push(format!("spec.approval.maxTTL {text} is over the 24h cap"));
                DEFAULT_APPROVAL_TTL
            }
            Some(d) => d,
            None => {
                errors.push(format!(
                    "spec.approval.maxTTL {text:?} is not a duration like 30m or 1h"
                ));
                DEFAULT_APPROVAL_TTL
            }
        },
    };
    let approvers = approval.approvers.map(|a| ApproverSet {
        usernames: a.usernames.into_iter().collect(),
        groups: a.groups.into_iter().collect(),
    });
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(CompiledPolicy {
        id,
        mode: spec.mode,
        targets,
        subjects,
        max_ttl,
        approvers,
        message: spec.message.clone().filter(|m| !m.trim().is_empty()),
        retain_volumes: spec.retain_volumes.unwrap_or(true),
    })
}

/// The catalog's kinds of the families a `catalog` target selects, by group; an error names
/// the families the catalog has when one is unknown.
fn catalog_kinds(
    target: &crate::api::CatalogTarget,
) -> Result<BTreeMap<String, HashSet<String>>, String> {
    let catalog = crate::catalog::catalog();
    let known: BTreeSet<&str> = catalog.kinds.iter().map(|k| k.family.as_str()).collect();
    let unknown: Vec<&String> = target
        .families
        .iter()
        .chain(&target.exclude_families)
        .filter(|f| !known.contains(f.as_str()))
        .collect();
    if !unknown.is_empty() {
        return Err(format!(
            "unknown families {unknown:?}; the catalog's families are {}",
            known.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    let mut by_group: BTreeMap<String, HashSet<String>> = BTreeMap::new();
    for k in &catalog.kinds {
        let chosen = target.families.is_empty() || target.families.contains(&k.family);
        if chosen && !target.exclude_families.contains(&k.family) {
            by_group
                .entry(k.group.clone())
                .or_default()
                .insert(k.kind.clone());
        }
    }
    Ok(by_group)
}

fn is_kind_name(kind: &str) -> bool {
    let mut chars = kind.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric())
}

/// Parses a Go-style duration such as `90s`, `30m`, `1h30m` or `1.5h` (the format the CRD's
/// CEL `duration()` accepts, restricted to h, m and s).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..digits].parse().ok()?;
        let unit = rest[digits..].chars().next()?;
        total += value
            * match unit {
                'h' => 3600.0,
                'm' => 60.0,
                's' => 1.0,
                _ => return None,
            };
        rest = &rest[digits + unit.len_utf8()..];
    }
    (total.is_finite() && total < 1e12).then(|| Duration::from_secs_f64(total))
}

/// Everything a decision reads: the agent definition, ServiceAccounts labelled as agents, and
/// compiled policies indexed by (group, kind). Immutable; a new one replaces it on change.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub agents: AgentMatcher,
    labelled_agents: HashSet<String>,
    policies: Vec<CompiledPolicy>,
    by_kind: HashMap<(String, String), Vec<usize>>,
    label_keys: Arc<BTreeSet<String>>,
    keys: Keyring,
}

impl Snapshot {
    /// `labelled_agents` holds `namespace/name` of ServiceAccounts labelled `agentguard.dev/agent=true`.
    pub fn new(
        agents: AgentMatcher,
        labelled_agents: HashSet<String>,
        policies: Vec<CompiledPolicy>,
    ) -> Self {
        let mut by_kind: HashMap<(String, String), Vec<usize>> = HashMap::new();
        for (i, p) in policies.iter().enumerate() {
            for key in p.kinds() {
                let entry = by_kind.entry(key).or_default();
                if entry.last() != Some(&i) {
                    entry.push(i);
                }
            }
        }
        let label_keys = Arc::new(
            policies
                .iter()
                .flat_map(|p| p.label_keys().map(str::to_owned))
                .collect(),
        );
        Self {
            agents,
            labelled_agents,
            policies,
            by_kind,
            label_keys,
            keys: Keyring::default(),
        }
    }

    /// The same snapshot with the approval-sealing keys agentguard holds.
    pub fn with_keys(mut self, keys: Keyring) -> Self {
        self.keys = keys;
        self
    }

    /// The keys approvals are sealed and checked with.
    pub fn keys(&self) -> &Keyring {
        &self.keys
    }

    /// Every label key any policy's selector reads: of an object's labels, only these decide
    /// whether a policy protects it, so they are all the object index keeps.
    pub fn label_keys(&self) -> &Arc<BTreeSet<String>> {
        &self.label_keys
    }

    pub fn policies(&self) -> &[CompiledPolicy] {
        &self.policies
    }

    /// A policy by identity.
    pub fn policy(&self, id: &PolicyRef) -> Option<&CompiledPolicy> {
        self.policies.iter().find(|p| &p.id == id)
    }

    /// Policies that protect this object: one hash lookup, then the filters of those few.
    pub fn protecting<'s>(&'s self, object: &ObjectFacts<'_>) -> Vec<&'s CompiledPolicy> {
        self.by_kind
            .get(&(object.group.to_owned(), object.kind.to_owned()))
            .map(|ids| {
                ids.iter()
                    .map(|&i| &self.policies[i])
                    .filter(|p| p.protects(object))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether `policy` (or, without one, the global definition) restricts this identity.
    /// A policy with `subjects` restricts exactly those; otherwise the global agent definition
    /// and labelled ServiceAccounts apply. Exempt identities are never restricted.
    pub fn restriction(
        &self,
        username: &str,
        groups: &[String],
        policy: Option<&CompiledPolicy>,
    ) -> Option<Restriction> {
        if self.agents.exemption(username, groups).is_some() {
            return None;
        }
        match policy.and_then(|p| p.subjects.as_ref().map(|s| (p, s))) {
            Some((p, subjects)) => subjects.matches(username, groups).map(|r| Restriction {
                reason: format!("{} (subjects of {})", r.reason, p.id.describe()),
            }),
            None => self
                .agents
                .restriction(username, groups)
                .or_else(|| self.labelled(username)),
        }
    }

    /// Restricted by the global definition, a label, or any policy's subjects: such an identity
    /// may not touch the guard itself.
    pub fn restricted_anywhere(&self, username: &str, groups: &[String]) -> Option<Restriction> {
        self.restriction(username, groups, None).or_else(|| {
            self.policies
                .iter()
                .filter(|p| p.subjects.is_some())
                .find_map(|p| self.restriction(username, groups, Some(p)))
        })
    }

    fn labelled(&self, username: &str) -> Option<Restriction> {
        let sa = service_account_of(username)?;
        self.labelled_agents.contains(&sa).then(|| Restriction {
            reason: format!(
                "service account {sa} is labelled {}=true",
                crate::api::AGENT_LABEL
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ApprovalSpec, Subjects, Target};

    fn spec(targets: Vec<Target>) -> ProtectionSpec {
        ProtectionSpec::new(Mode::Enforce, targets)
    }

    fn target(kind: &str) -> Target {
        Target::kinds(&[""], &[kind])
    }

    #[test]
    fn a_catalog_target_covers_the_catalogs_kinds_and_families_narrow_it() {
        let facts = |group: &'static str, kind: &'static str| ObjectFacts {
            group,
            kind,
            namespace: Some("prod"),
            name: "orders",
            labels: Box::leak(Box::new(BTreeMap::new())),
        };
        let all = compile(
            PolicyRef::cluster("default-databases"),
            &spec(vec![Target::catalog(&[], &[])]),
        )
        .unwrap();
        assert!(all.protects(&facts("postgresql.cnpg.io", "Cluster")));
        assert!(all.protects(&facts("rds.services.k8s.aws", "DBInstance")));
        assert!(all.protects(&facts("velero.io", "Backup")));
        // Only the catalog's kinds, each in its own group.
        assert!(!all.protects(&facts("postgresql.cnpg.io", "Pooler")));
        assert!(!all.protects(&facts("rds.services.k8s.aws", "Cluster")));
        assert!(!all.protects(&facts("", "ConfigMap")));
        assert_eq!(all.kinds().count(), crate::catalog::catalog().kinds.len());
        assert!(all.from_catalog_only("postgresql.cnpg.io", "Cluster"));
        // A family left out; only the families named.
        let without = compile(
            PolicyRef::cluster("c"),
            &spec(vec![Target::catalog(&[], &["velero"])]),
        )
        .unwrap();
        assert!(!without.protects(&facts("velero.io", "Backup")));
        assert!(without.protects(&facts("postgresql.cnpg.io", "Cluster")));
        let only = compile(
            PolicyRef::cluster("c"),
            &spec(vec![Target::catalog(&["ack-rds"], &[])]),
        )
        .unwrap();
        assert!(only.protects(&facts("rds.services.k8s.aws", "DBCluster")));
        assert!(!only.protects(&facts("postgresql.cnpg.io", "Cluster")));
        // A kind also named by a plain target is not "catalog only": not served is a problem.
        let both = compile(
            PolicyRef::cluster("c"),
            &spec(vec![
                Target::catalog(&[], &[]),
                Target::kinds(&["velero.io"], &["Backup"]),
            ]),
        )
        .unwrap();
        assert!(!both.from_catalog_only("velero.io", "Backup"));
        assert!(both.from_catalog_only("postgresql.cnpg.io", "Cluster"));
        // Unknown families, and catalog with kinds, are refused with the reason.
        let errors = compile(
            PolicyRef::cluster("c"),
            &spec(vec![Target::catalog(&["postgres"], &[])]),
        )
        .unwrap_err();
        assert!(
            errors[0].starts_with("spec.targets[0].catalog: unknown families [\"postgres\"]; the catalog's families are"),
            "{errors:?}"
        );
        let mut mixed = Target::catalog(&[], &[]);
        mixed.kinds = vec!["Cluster".into()];
        let errors = compile(PolicyRef::cluster("c"), &spec(vec![mixed])).unwrap_err();
        assert!(errors[0].contains("not both"), "{errors:?}");
    }

    #[test]
    fn durations() {
        let cases = [
            ("30m", Some(1800)),
            ("1h", Some(3600)),
            ("1h30m", Some(5400)),
            ("1.5h", Some(5400)),
            ("90s", Some(90)),
            ("", None),
            ("1d", None),
            ("h", None),
            ("10", None),
            ("-1h", None),
        ];
        for (text, secs) in cases {
            assert_eq!(parse_duration(text).map(|d| d.as_secs()), secs, "{text:?}");
        }
    }

    #[test]
    fn invalid_specs_are_reported_with_actionable_reasons() {
        let mut bad_target = target("Persistent Volume");
        bad_target.names = vec!["data-[".into()];
        bad_target.namespaces = vec!["prod-*".into()];
        bad_target.selector = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                match_expressions: Some(vec![
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                        key: "app".into(),
                        operator: "Near".into(),
                        values: None,
                    },
                ]),
                match_labels: None,
            },
        );
        let mut s = spec(vec![
            bad_target,
            Target {
                api_groups: vec![],
                kinds: vec![],
                ..target("X")
            },
        ]);
        s.subjects = Some(Subjects {
            usernames: vec!["bot-[".into()],
            ..Default::default()
        });
        s.approval = Some(ApprovalSpec {
            max_ttl: Some("48h".into()),
            approvers: None,
        });
        let errors = compile(PolicyRef::namespaced("prod", "p"), &s).unwrap_err();
        let joined = errors.join("\n");
        for needle in [
            "spec.targets[0].kinds: \"Persistent Volume\" is not a kind name",
            "spec.targets[0].namespaces is only allowed in ClusterProtectedResource",
            "spec.targets[0].names: invalid glob \"data-[\"",
            "spec.targets[0].selector:",
            "spec.targets[1].apiGroups must list at least one group",
            "spec.targets[1].kinds must list at least one kind",
            "spec.subjects: invalid glob \"bot-[\"",
            "spec.approval.maxTTL 48h is over the 24h cap",
        ] {
            assert!(joined.contains(needle), "missing {needle:?} in\n{joined}");
        }
        let errors = compile(PolicyRef::cluster("c"), &spec(vec![])).unwrap_err();
        assert_eq!(errors, vec!["spec.targets must name at least one target"]);
    }

    #[test]
    fn matching_by_kind_name_namespace_and_selector() {
        let mut t = target("PersistentVolumeClaim");
        t.names = vec!["data-*".into()];
        t.namespaces = vec!["prod-*".into()];
        t.selector = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                match_labels: Some([("app".to_owned(), "orders-db".to_owned())].into()),
                match_expressions: None,
            },
        );
        let p = compile(PolicyRef::cluster("c"), &spec(vec![t])).unwrap();
        let labels: BTreeMap<String, String> = [("app".to_owned(), "orders-db".to_owned())].into();
        let other: BTreeMap<String, String> = [("app".to_owned(), "web".to_owned())].into();
        let facts = |group, kind, ns, name, labels| ObjectFacts {
            group,
            kind,
            namespace: ns,
            name,
            labels,
        };
        assert!(p.protects(&facts(
            "",
            "PersistentVolumeClaim",
            Some("prod-eu"),
            "data-0",
            &labels
        )));
        assert!(!p.protects(&facts(
            "",
            "PersistentVolumeClaim",
            Some("prod-eu"),
            "data-0",
            &other
        )));
        assert!(!p.protects(&facts(
            "",
            "PersistentVolumeClaim",
            Some("staging"),
            "data-0",
            &labels
        )));
        assert!(!p.protects(&facts(
            "",
            "PersistentVolumeClaim",
            Some("prod-eu"),
            "logs-0",
            &labels
        )));
        assert!(!p.protects(&facts("", "PersistentVolumeClaim", None, "data-0", &labels)));
        assert!(!p.protects(&facts(
            "apps",
            "PersistentVolumeClaim",
            Some("prod-eu"),
            "data-0",
            &labels
        )));
        assert!(!p.protects(&facts(
            "",
            "PersistentVolume",
            Some("prod-eu"),
            "data-0",
            &labels
        )));

        let np = compile(
            PolicyRef::namespaced("prod", "n"),
            &spec(vec![target("PersistentVolumeClaim")]),
        )
        .unwrap();
        let empty = BTreeMap::new();
        assert!(np.protects(&facts(
            "",
            "PersistentVolumeClaim",
            Some("prod"),
            "x",
            &empty
        )));
        assert!(!np.protects(&facts(
            "",
            "PersistentVolumeClaim",
            Some("prod2"),
            "x",
            &empty
        )));
    }
}
