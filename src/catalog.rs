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
}

/// The compiled-in catalog. Checked by the unit tests, so parsing cannot fail at run time.
pub fn catalog() -> &'static Catalog {
    static CATALOG: LazyLock<Catalog> =
        LazyLock::new(|| parse(SOURCE).expect("catalog/data-kinds.yaml is checked by its tests"));
    &CATALOG
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
        if !crd.published && crd.why.as_deref().is_none_or(str::is_empty) {
            return Err(format!("{id}: say why no published CRD is used"));
        }
    }
    Ok(catalog)
}

/// The README's catalog table: one row per kind.
pub fn markdown_table(catalog: &Catalog) -> String {
    let mut out = String::from(
        "| family | kind | versions | switches | CRD for tests | confidence |\n| --- | --- | --- | --- | --- | --- |\n",
    );
    for k in &catalog.kinds {
        let switches: Vec<String> = k
            .switches
            .iter()
            .map(|s| format!("`{}`", s.name()))
            .collect();
        let crd = if k.crd.published {
            format!(
                "published ({}@{})",
                k.crd.module.as_deref().unwrap_or_default(),
                k.crd.version.as_deref().unwrap_or_default()
            )
        } else {
            "hand-written".to_owned()
        };
        out.push_str(&format!(
            "| {} | `{}.{}` | {} | {} | {} | {:?} |\n",
            k.family,
            k.kind,
            k.group,
            k.versions.join(", "),
            if switches.is_empty() {
                "none".to_owned()
            } else {
                switches.join(", ")
            },
            crd,
            k.confidence
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
