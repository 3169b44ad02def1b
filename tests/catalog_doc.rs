//! The README's catalog table is rendered from `catalog/data-kinds.yaml` (compiled in): every
//! kind once, with its switches, where its CRD in the tests comes from, and how sure the
//! research is. On a mismatch the test prints the table to paste.

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
