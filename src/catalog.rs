//! The catalog of data-holding kinds (`catalog/data-kinds.yaml`, compiled in): custom
//! resources whose deletion destroys data, what that deletion destroys, and the switches that
//! make it more destructive or turn the provider's own protection off. Pure data and its
//! checks; the README's catalog table is rendered from it ([`markdown_table`]).

use std::collections::BTreeSet;
use std::sync::LazyLock;

use serde::Deserialize;
use serde_json::Value;

/// The reviewed catalog file, as compiled in.
pub const SOURCE: &str = include_str!("../catalog/data-kinds.yaml");

/// The whole catalog.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    pub kinds: Vec<DataKind>,
}

/// One data-holding kind.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataKind {
    pub family: String,
    pub group: String,
    pub kind: String,
    pub plural: String,
    pub scope: Scope,
    pub versions: Vec<String>,
    pub destroys: Vec<String>,
    #[serde(default)]
    pub switches: Vec<Switch>,
    pub crd: CrdSource,
    pub confidence: Confidence,
    #[serde(default)]
    pub citations: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Scope {
    Namespaced,
    Cluster,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Confidence {
    Verified,
    Partial,
    Unverified,
}

/// A field, annotation or finalizer that changes what deleting the object destroys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Switch {
    /// A spec field, dotted (`spec.backup.retentionPolicy`).
    pub path: Option<String>,
    /// An annotation key.
    pub annotation: Option<String>,
    /// With `path` naming a list (`metadata.finalizers`): the entry whose presence is the
    /// switch.
    pub contains: Option<String>,
    pub effect: Effect,
    /// The safe value(s), or a description when the rule compares old and new.
    pub safe: Value,
    /// The dangerous value(s), or a description.
    pub dangerous: Value,
    /// The value when the field is absent.
    pub default: Option<Value>,
    pub meaning: Option<String>,
    /// Turned dangerous, deleting the object also destroys its backups or skips its final
    /// snapshot: an approval of that deletion must say so (`approved-backup-loss`).
    #[serde(default)]
    pub backups: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Effect {
    /// Deleting the object destroys more (backups, snapshots, the final snapshot).
    MoreDestructive,
    /// The provider's own deletion protection is off.
    ProtectionOff,
    /// Changing it deletes data by itself, without any delete (a shortened retention).
    DeleteOnChange,
}

/// Where the CRD tests install comes from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrdSource {
    pub published: bool,
    pub module: Option<String>,
    pub version: Option<String>,
    pub file: Option<String>,
    /// Why no published CRD is used.
    pub why: Option<String>,
    /// The CRD the end-to-end tests (`tests/e2e_catalog.rs`) install for this kind, if they
    /// test it: the published one, or one generated from this entry.
    pub e2e: Option<E2eCrd>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum E2eCrd {
    Published,
    Generated,
}

impl Switch {
    /// What the switch is, as a table shows it.
    pub fn name(&self) -> String {
        match (&self.path, &self.annotation, &self.contains) {
            (Some(path), _, Some(entry)) if path == "metadata.finalizers" => {
                format!("finalizer {entry}")
            }
            (Some(path), _, Some(entry)) => format!("{path} contains {entry}"),
            (Some(path), _, None) => path.clone(),
            (None, Some(annotation), _) => format!("annotation {annotation}"),
            (None, None, _) => String::new(),
        }
    }

    /// A short stable key for the switch, as approvals list it: the path, the annotation key,
    /// or `path[entry]` for a list entry.
    pub fn key(&self) -> String {
        match (&self.path, &self.annotation, &self.contains) {
            (Some(path), _, Some(entry)) => format!("{path}[{entry}]"),
            (Some(path), _, None) => path.clone(),
            (None, Some(annotation), _) => annotation.clone(),
            (None, None, _) => String::new(),
        }
    }
}

/// One value a switch can have, as the catalog writes it: quotes and case do not count.
fn token(text: &str) -> String {
    text.trim().trim_matches('"').to_ascii_lowercase()
}

/// The values a catalog entry lists (a scalar or a list of scalars), as tokens; None when one
/// of them is a description rather than a value ("smaller value", "shortened ...").
fn tokens(value: &Value) -> Option<Vec<String>> {
    let one = |v: &Value| match v {
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if s.trim() == ANY_OTHER => Some(ANY_OTHER.to_owned()),
        Value::String(s)
            if !s.trim().is_empty() && !s.contains(char::is_whitespace) && !s.contains('(') =>
        {
            Some(token(s))
        }
        _ => None,
    };
    match value {
        Value::Array(items) => items.iter().map(one).collect(),
        scalar => one(scalar).map(|t| vec![t]),
    }
}

/// In `dangerous`: every value `safe` does not list.
const ANY_OTHER: &str = "any other value";
/// In `safe` or `dangerous`: the field or annotation is not set (or, with `contains`, the
/// entry is not in the list).
const ABSENT: &str = "absent";
/// With `contains`: the entry is in the list.
const PRESENT: &str = "present";

impl Switch {
    /// Whether a value (None: absent) is dangerous, or None when the catalog describes the
    /// danger in words (a comparison of old and new that no rule makes yet).
    pub fn is_dangerous(&self, value: Option<&str>) -> Option<bool> {
        let dangerous = tokens(&self.dangerous)?;
        let value = value.map(token);
        let listed = |t: &str| dangerous.iter().any(|d| d == t);
        Some(match value {
            // Absent, the default applies: dangerous when listed as such, or when the default
            // (a value, not words) is a dangerous value.
            None => {
                listed(ABSENT)
                    || self.default.as_ref().and_then(tokens).is_some_and(|d| {
                        d.len() == 1 && self.is_dangerous(Some(&d[0])) == Some(true)
                    })
            }
            Some(v) => {
                listed(&v)
                    || (listed(ANY_OTHER)
                        && v != ABSENT
                        && tokens(&self.safe).is_some_and(|safe| !safe.contains(&v)))
            }
        })
    }

    /// Whether rules can read this switch (its dangerous values are values, not words).
    pub fn checkable(&self) -> bool {
        tokens(&self.dangerous).is_some()
            && self
                .path
                .as_deref()
                .is_none_or(|p| !p.contains(['[', '<', ' ', '/']))
            && self
                .annotation
                .as_deref()
                .is_none_or(|a| !a.contains(['<', ' ']))
    }

    /// The switch's value on an object (its metadata and the rest of its body), as the
    /// catalog's tokens name it: a field's or annotation's value, `present` for a list entry;
    /// None when absent.
    pub fn value_on(
        &self,
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        body: &Value,
    ) -> Option<String> {
        if let Some(key) = &self.annotation {
            return meta.annotations.as_ref()?.get(key).cloned();
        }
        let path = self.path.as_deref()?;
        if let Some(entry) = &self.contains {
            let present = if path == "metadata.finalizers" {
                meta.finalizers.iter().flatten().any(|f| f == entry)
            } else {
                let pointer = format!("/{}", path.replace('.', "/"));
                body.pointer(&pointer)
                    .and_then(Value::as_array)
                    .is_some_and(|l| l.iter().any(|v| v.as_str() == Some(entry)))
            };
            return present.then(|| PRESENT.to_owned());
        }
        let pointer = format!("/{}", path.replace('.', "/"));
        match body.pointer(&pointer)? {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }
    }
}

/// The compiled-in catalog. Checked by the unit tests, so parsing cannot fail at run time.
pub fn catalog() -> &'static Catalog {
    static CATALOG: LazyLock<Catalog> =
        LazyLock::new(|| parse(SOURCE).expect("catalog/data-kinds.yaml is checked by its tests"));
    &CATALOG
}

impl DataKind {
    /// The switches that, as the object stands, make deleting it also destroy its backups or
    /// skip its final snapshot, with their values (None: absent, the default applies).
    pub fn backup_losses(
        &self,
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        body: &Value,
    ) -> Vec<(&Switch, Option<String>)> {
        self.switches
            .iter()
            .filter(|s| s.backups && s.checkable())
            .filter_map(|s| {
                let value = s.value_on(meta, body);
                (s.is_dangerous(value.as_deref()) == Some(true)).then_some((s, value))
            })
            .collect()
    }

    /// Each checkable switch with its value on the object and whether that value is dangerous:
    /// the provider's own protection as it stands.
    pub fn posture(
        &self,
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        body: &Value,
    ) -> Vec<SwitchState<'_>> {
        self.switches
            .iter()
            .filter(|s| s.checkable())
            .map(|s| {
                let value = s.value_on(meta, body);
                SwitchState {
                    dangerous: s.is_dangerous(value.as_deref()) == Some(true),
                    switch: s,
                    value,
                }
            })
            .collect()
    }
}

/// A data-holding object's own protection as it stands, from its switches: what status,
/// PolicyReports and the metric show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    /// Whether the provider's own protection is on: no switch that turns it off or makes the
    /// deletion reach the data (a deletion policy of Delete) is dangerous. None when the kind
    /// has no such switch.
    pub own_protection: Option<bool>,
    /// Whether deleting the object keeps its backups and final snapshot. None when the kind has
    /// no such switch.
    pub backups_kept: Option<bool>,
    /// The dangerous switches, as `key=value` or `key absent`.
    pub weakened: Vec<String>,
}

impl Assessment {
    /// Whether anything the catalog can read is weakened.
    pub fn is_weakened(&self) -> bool {
        !self.weakened.is_empty()
    }

    /// `on`, `off` or `-`: how status and the metric name the provider's protection.
    pub fn own_protection_text(&self) -> &'static str {
        match self.own_protection {
            Some(true) => "on",
            Some(false) => "off",
            None => "-",
        }
    }

    /// `kept`, `lost` or `-`.
    pub fn backups_text(&self) -> &'static str {
        match self.backups_kept {
            Some(true) => "kept",
            Some(false) => "lost",
            None => "-",
        }
    }
}

impl DataKind {
    /// The object's own protection (see [`Assessment`]); None when no switch of the kind can
    /// be read.
    pub fn assess(
        &self,
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        body: &Value,
    ) -> Option<Assessment> {
        let states = self.posture(meta, body);
        if states.is_empty() {
            return None;
        }
        let all_safe = |backups: bool| {
            let mut relevant = states
                .iter()
                .filter(|s| s.switch.backups == backups)
                .peekable();
            relevant
                .peek()
                .is_some()
                .then(|| relevant.all(|s| !s.dangerous))
        };
        Some(Assessment {
            own_protection: all_safe(false),
            backups_kept: all_safe(true),
            weakened: states
                .iter()
                .filter(|s| s.dangerous)
                .map(SwitchState::describe)
                .collect(),
        })
    }
}

/// One switch as it stands on an object.
#[derive(Debug)]
pub struct SwitchState<'c> {
    pub switch: &'c Switch,
    /// None: absent (the default applies).
    pub value: Option<String>,
    pub dangerous: bool,
}

impl SwitchState<'_> {
    /// `key=value` (or `key absent`), as status and reports show it.
    pub fn describe(&self) -> String {
        match &self.value {
            Some(v) => format!("{}={v}", self.switch.key()),
            None => format!("{} absent", self.switch.key()),
        }
    }
}

impl Catalog {
    /// The catalog's entry for (group, kind), if any.
    pub fn kind(&self, group: &str, kind: &str) -> Option<&DataKind> {
        self.kinds
            .iter()
            .find(|k| k.group == group && k.kind == kind)
    }
}

/// Parses and checks a catalog: every kind once, versions given, every switch names exactly
/// one field or annotation, and a published CRD says where it comes from.
pub fn parse(text: &str) -> Result<Catalog, String> {
    let catalog: Catalog = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    let mut seen = BTreeSet::new();
    for k in &catalog.kinds {
        let id = format!("{}/{}", k.group, k.kind);
        if !seen.insert(id.clone()) {
            return Err(format!("{id} is listed twice"));
        }
        if k.family.is_empty() || k.group.is_empty() || k.kind.is_empty() || k.plural.is_empty() {
            return Err(format!("{id}: family, group, kind and plural are required"));
        }
        if k.versions.is_empty() {
            return Err(format!("{id}: no versions"));
        }
        if k.destroys.is_empty() {
            return Err(format!("{id}: say what its deletion destroys"));
        }
        for s in &k.switches {
            if s.backups && (s.effect != Effect::MoreDestructive || !s.checkable()) {
                return Err(format!(
                    "{id}: {}: only a checkable more-destructive switch can mark backups",
                    s.name()
                ));
            }
            if s.path.is_some() == s.annotation.is_some() {
                return Err(format!(
                    "{id}: a switch names exactly one of path and annotation"
                ));
            }
            if s.contains.is_some() && s.path.is_none() {
                return Err(format!("{id}: contains qualifies a path"));
            }
        }
        let crd = &k.crd;
        if crd.published && (crd.module.is_none() || crd.version.is_none() || crd.file.is_none()) {
            return Err(format!(
                "{id}: a published CRD needs module, version and file"
            ));
        }
        if crd.e2e == Some(E2eCrd::Published) && !crd.published {
            return Err(format!(
                "{id}: e2e: published, but no published CRD is named"
            ));
        }
        if !crd.published && crd.why.as_deref().is_none_or(str::is_empty) {
            return Err(format!("{id}: say why no published CRD is used"));
        }
    }
    Ok(catalog)
}

/// The README's catalog table: one row per kind. A switch is guarded when its dangerous values
/// are values a rule can read (an agent turning it needs an approval); the others are described
/// in the file (a comparison of old and new no rule makes yet).
pub fn markdown_table(catalog: &Catalog) -> String {
    let mut out = String::from(
        "| family | kind | versions | switches guarded | switches described only | CRD in the end-to-end tests | confidence |\n| --- | --- | --- | --- | --- | --- | --- |\n",
    );
    let list = |switches: Vec<&Switch>| {
        if switches.is_empty() {
            "none".to_owned()
        } else {
            let names: Vec<String> = switches
                .iter()
                .map(|s| match s.backups {
                    true => format!("`{}` (backups)", s.name()),
                    false => format!("`{}`", s.name()),
                })
                .collect();
            names.join(", ")
        }
    };
    for k in &catalog.kinds {
        let (guarded, described): (Vec<&Switch>, Vec<&Switch>) =
            k.switches.iter().partition(|s| s.checkable());
        let module = || {
            format!(
                "{}@{}",
                k.crd.module.as_deref().unwrap_or_default(),
                k.crd.version.as_deref().unwrap_or_default()
            )
        };
        let crd = match (k.crd.e2e, k.crd.published) {
            (Some(E2eCrd::Published), _) => format!("published ({})", module()),
            (Some(E2eCrd::Generated), true) => {
                format!("generated from the catalog (published in {})", module())
            }
            (Some(E2eCrd::Generated), false) => "generated from the catalog".to_owned(),
            (None, true) => format!("not tested end to end (published in {})", module()),
            (None, false) => "not tested end to end".to_owned(),
        };
        out.push_str(&format!(
            "| {} | `{}.{}` | {} | {} | {} | {} | {:?} |\n",
            k.family,
            k.kind,
            k.group,
            k.versions.join(", "),
            list(guarded),
            list(described),
            crd,
            k.confidence
        ));
    }
    out
}

/// The chart's ClusterRole rules that let agentguard list and watch every catalog kind, one per
/// group (`charts/agentguard/templates/rbac.yaml` holds them between markers; a test checks).
pub fn rbac_rules(catalog: &Catalog) -> String {
    let mut by_group: std::collections::BTreeMap<&str, BTreeSet<&str>> = Default::default();
    for k in &catalog.kinds {
        by_group.entry(&k.group).or_default().insert(&k.plural);
    }
    let mut out = String::new();
    for (group, plurals) in by_group {
        let plurals: Vec<&str> = plurals.into_iter().collect();
        out.push_str(&format!(
            "  - apiGroups: [{group}]\n    resources: [{}]\n    verbs: [list, watch]\n",
            plurals.join(", ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compiled_in_catalog_parses_and_holds_together() {
        let c = parse(SOURCE).unwrap();
        assert!(c.kinds.len() >= 50, "{} kinds", c.kinds.len());
        // Every family the issue names is there.
        let families: BTreeSet<&str> = c.kinds.iter().map(|k| k.family.as_str()).collect();
        for family in [
            "cloudnative-pg",
            "zalando-postgres-operator",
            "crunchy-pgo",
            "percona-xtradb",
            "mariadb-operator",
            "mongodb-community",
            "percona-mongodb",
            "k8ssandra",
            "eck",
            "velero",
            "strimzi",
            "crossplane-aws",
            "ack-rds",
            "config-connector",
            "azure-service-operator",
        ] {
            assert!(families.contains(family), "{family} missing");
        }
    }

    #[test]
    fn switch_values_are_read_as_the_catalog_writes_them() {
        let switch = |safe: Value, dangerous: Value| Switch {
            path: Some("spec.x".into()),
            annotation: None,
            contains: None,
            effect: Effect::ProtectionOff,
            safe,
            dangerous,
            default: None,
            meaning: None,
            backups: false,
        };
        let s = switch(
            serde_json::json!("\"false\""),
            serde_json::json!(["\"true\"", "absent"]),
        );
        assert!(s.checkable());
        assert_eq!(s.is_dangerous(Some("true")), Some(true));
        assert_eq!(s.is_dangerous(Some("True")), Some(true));
        assert_eq!(s.is_dangerous(None), Some(true));
        assert_eq!(s.is_dangerous(Some("false")), Some(false));
        let s = switch(
            serde_json::json!("abandon"),
            serde_json::json!(["absent", "any other value"]),
        );
        assert_eq!(s.is_dangerous(Some("abandon")), Some(false));
        assert_eq!(s.is_dangerous(Some("delete")), Some(true));
        assert_eq!(s.is_dangerous(None), Some(true));
        let mut s = switch(serde_json::json!(false), serde_json::json!(true));
        assert_eq!(s.is_dangerous(Some("true")), Some(true));
        assert_eq!(s.is_dangerous(None), Some(false));
        // Absent, the default applies: removing `false` from a field that defaults to true
        // turns it on.
        s.default = Some(serde_json::json!(true));
        assert_eq!(s.is_dangerous(None), Some(true));
        s.default = Some(serde_json::json!("false"));
        assert_eq!(s.is_dangerous(None), Some(false));
        // A default described in words is not read.
        s.default = Some(serde_json::json!("controller flag (chart default delete)"));
        assert_eq!(s.is_dangerous(None), Some(false));
        // Words, not values: no rule reads it.
        let s = switch(
            serde_json::json!("(unchanged or longer)"),
            serde_json::json!("shortened value"),
        );
        assert!(!s.checkable());
        assert_eq!(s.is_dangerous(Some("1d")), None);
        // A field inside a list is not a path a rule reads yet.
        let mut s = switch(serde_json::json!(false), serde_json::json!(true));
        s.path = Some("spec.backup.schedule[].keep".into());
        assert!(!s.checkable());
        // Most of the catalog's switches are guarded.
        let all: Vec<&Switch> = catalog().kinds.iter().flat_map(|k| &k.switches).collect();
        let guarded = all.iter().filter(|s| s.checkable()).count();
        assert!(guarded * 4 >= all.len() * 3, "{guarded} of {}", all.len());
    }

    /// Own protection and backups are judged apart: a Crossplane RDS instance kept by Orphan
    /// whose automated backups would go, and one deleted with everything.
    #[test]
    fn an_objects_own_protection_is_assessed_from_its_switches() {
        let rds = catalog().kind("rds.aws.upbound.io", "Instance").unwrap();
        let meta = Default::default();
        let a = rds
            .assess(
                &meta,
                &serde_json::json!({"spec": {"deletionPolicy": "Orphan",
                    "forProvider": {"skipFinalSnapshot": false, "deletionProtection": true}}}),
            )
            .unwrap();
        assert_eq!(a.own_protection, Some(true), "{a:?}");
        assert_eq!(a.backups_kept, Some(false));
        assert_eq!(
            a.weakened,
            ["spec.forProvider.deleteAutomatedBackups absent"]
        );
        let a = rds.assess(&meta, &serde_json::json!({"spec": {}})).unwrap();
        assert_eq!((a.own_protection_text(), a.backups_text()), ("off", "lost"));
        assert!(
            a.weakened
                .contains(&"spec.deletionPolicy absent".to_owned()),
            "{a:?}"
        );
        // A kind without readable switches has nothing to assess.
        let backup = catalog().kind("postgresql.cnpg.io", "Backup").unwrap();
        assert_eq!(backup.assess(&meta, &serde_json::json!({})), None);
    }

    #[test]
    fn a_broken_catalog_is_refused_with_the_reason() {
        let one = |extra: &str| {
            format!(
                "kinds:\n- family: f\n  group: g.io\n  kind: K\n  plural: ks\n  scope: Namespaced\n  versions: [v1]\n  destroys: [x]\n  crd: {{published: false, why: none served}}\n  confidence: partial\n{extra}"
            )
        };
        assert!(parse(&one("")).is_ok());
        let twice = format!("{}{}", one(""), &one("")["kinds:\n".len()..]);
        assert!(parse(&twice).unwrap_err().contains("twice"));
        let switch = one(
            "  switches:\n  - {path: spec.a, annotation: b, effect: protection-off, safe: x, dangerous: y}\n",
        );
        assert!(parse(&switch).unwrap_err().contains("exactly one"));
        let effect =
            one("  switches:\n  - {path: spec.a, effect: sometimes, safe: x, dangerous: y}\n");
        assert!(parse(&effect).is_err());
        let published =
            one("").replace("{published: false, why: none served}", "{published: true}");
        assert!(parse(&published).unwrap_err().contains("module"));
    }
}
