//! The README's catalog table is rendered from `catalog/data-kinds.yaml` (compiled in): every
//! kind once, with its switches, where its CRD in the tests comes from, and how sure the
//! research is. On a mismatch the test prints the table to paste. The published CRDs the
//! end-to-end tests install come from the module versions the catalog names.

const README: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
const START: &str = "<!-- catalog:start -->\n";
const END: &str = "<!-- catalog:end -->";

#[test]
fn readme_catalog_table_matches_the_catalog() {
    let readme = std::fs::read_to_string(README).unwrap();
    let start = readme
        .find(START)
        .expect("README has <!-- catalog:start -->")
        + START.len();
    let end = readme.find(END).expect("README has <!-- catalog:end -->");
    let want = agentguard::catalog::markdown_table(agentguard::catalog::catalog());
    assert!(
        readme[start..end] == want,
        "README's catalog table is out of date; paste between the markers:\n{want}"
    );
}

/// The families whose published CRDs `hack/build-tools.sh` copies for the end-to-end tests, with
/// the variable that pins each module's version.
const FETCHED: [(&str, &str); 3] = [
    ("cloudnative-pg", "CNPG_VERSION"),
    ("ack-s3", "ACK_S3_VERSION"),
    ("config-connector", "KCC_VERSION"),
];

#[test]
fn build_tools_fetch_the_crds_the_catalog_names() {
    let script =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/hack/build-tools.sh"))
            .unwrap();
    let catalog = agentguard::catalog::catalog();
    for (family, variable) in FETCHED {
        for entry in catalog.kinds.iter().filter(|k| k.family == family) {
            let crd = &entry.crd;
            assert!(crd.published, "{}.{}", entry.kind, entry.group);
            let (module, version, file) = (
                crd.module.as_deref().unwrap(),
                crd.version.as_deref().unwrap(),
                crd.file.as_deref().unwrap(),
            );
            assert!(
                script.contains(&format!("{variable}=\"${{{variable}:-{version}}}\"")),
                "hack/build-tools.sh does not pin {variable} to {version}"
            );
            assert!(
                script.contains(&format!("{module}@${variable}")),
                "{module}"
            );
            // The file is copied by a loop over a distinctive part of its name: the directory
            // and the plural (with its group's first label where the name has one).
            let (dir, name) = file.rsplit_once('/').unwrap();
            assert!(
                script.contains(&format!("$dir/{dir}/")),
                "{file}: directory"
            );
            assert!(
                name.contains(&format!("_{}.", entry.plural))
                    || name.contains(&format!("_{}.yaml", entry.plural)),
                "{file}: no plural {}",
                entry.plural
            );
            let listed = script.contains(&format!("$dir/{file}"))
                || script.lines().any(|l| {
                    l.split_whitespace()
                        .map(|w| w.trim_end_matches(';'))
                        .any(|w| w == entry.plural || w.starts_with(&format!("{}.", entry.plural)))
                });
            assert!(listed, "hack/build-tools.sh does not copy {}", entry.plural);
        }
    }
}

#[test]
fn the_charts_role_may_watch_every_catalog_kind() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/charts/agentguard/templates/rbac.yaml"
    );
    let rbac = std::fs::read_to_string(path).unwrap();
    let (start, end) = ("  # catalog:start\n", "  # catalog:end");
    let from = rbac.find(start).expect("rbac.yaml has # catalog:start") + start.len();
    let to = rbac.find(end).expect("rbac.yaml has # catalog:end");
    let want = agentguard::catalog::rbac_rules(agentguard::catalog::catalog());
    assert!(
        rbac[from..to] == want,
        "charts/agentguard/templates/rbac.yaml's catalog rules are out of date; paste between the markers:\n{want}"
    );
}
