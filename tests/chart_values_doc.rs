//! The README's table of chart values is checked against `charts/agentguard/values.yaml`:
//! every value is listed once, with its default, and nothing that is not a value is listed.
//! On a mismatch the test prints the table to paste. Chart.yaml's icon is checked to be in the
//! repository.

use std::collections::BTreeMap;

const VALUES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/agentguard/values.yaml");
const README: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
const START: &str = "<!-- values:start -->";
const END: &str = "<!-- values:end -->";

/// Every leaf of values.yaml by dotted path, with its default as compact JSON. Lists and empty
/// maps are leaves; a non-empty map is a leaf only when it holds free-form labels.
fn leaves(prefix: &str, value: &serde_json::Value, out: &mut BTreeMap<String, String>) {
    match value {
        serde_json::Value::Object(map) if !map.is_empty() && !prefix.ends_with("labels") => {
            for (key, child) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                leaves(&path, child, out);
            }
        }
        leaf => {
            out.insert(prefix.to_owned(), leaf.to_string());
        }
    }
}

fn documented(readme: &str) -> BTreeMap<String, (String, String)> {
    let start = readme
        .find(START)
        .expect("README has <!-- values:start -->");
    let end = readme.find(END).expect("README has <!-- values:end -->");
    readme[start..end]
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.trim().trim_matches('|').split(" | ").collect();
            let key = cells.first()?.trim().strip_prefix('`')?.strip_suffix('`')?;
            let default = cells.get(1)?.trim().strip_prefix('`')?.strip_suffix('`')?;
            let description = cells.get(2).map(|d| d.trim()).unwrap_or_default();
            Some((key.to_owned(), (default.to_owned(), description.to_owned())))
        })
        .collect()
}

#[test]
fn readme_values_table_matches_values_yaml() {
    let values: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(VALUES).unwrap()).unwrap();
    let mut expected = BTreeMap::new();
    leaves("", &values, &mut expected);
    let readme = std::fs::read_to_string(README).unwrap();
    let documented = documented(&readme);

    let table: Vec<String> = expected
        .iter()
        .map(|(key, default)| {
            let description = documented
                .get(key)
                .map(|(_, d)| d.as_str())
                .unwrap_or("TODO");
            format!("| `{key}` | `{default}` | {description} |")
        })
        .collect();
    let hint = format!(
        "README's values table is out of date; paste between the markers:\n\n| value | default | meaning |\n| --- | --- | --- |\n{}\n",
        table.join("\n")
    );
    let listed: BTreeMap<&String, &String> = documented
        .iter()
        .map(|(k, (default, _))| (k, default))
        .collect();
    let wanted: BTreeMap<&String, &String> = expected.iter().collect();
    assert_eq!(listed, wanted, "{hint}");
    for (key, (_, description)) in &documented {
        assert!(
            !description.is_empty() && description != "TODO",
            "`{key}` has no description in the README"
        );
    }
}

#[test]
fn the_check_sees_a_value_missing_from_the_readme() {
    let values: serde_json::Value =
        serde_saphyr::from_str("a:\n  b: 1\n  labels:\n    x: \"z\"\nc: []\n").unwrap();
    let mut expected = BTreeMap::new();
    leaves("", &values, &mut expected);
    assert_eq!(
        expected.into_iter().collect::<Vec<_>>(),
        vec![
            ("a.b".to_owned(), "1".to_owned()),
            ("a.labels".to_owned(), r#"{"x":"z"}"#.to_owned()),
            ("c".to_owned(), "[]".to_owned()),
        ]
    );
    let readme = format!("{START}\n| `a.b` | `1` | one |\n{END}\n");
    let documented = documented(&readme);
    assert_eq!(documented.len(), 1);
    assert!(!documented.contains_key("c"));
}

/// Chart.yaml's `icon` (Artifact Hub and Helm show it) is a file of this repository on main.
#[test]
fn chart_icon_is_a_file_of_the_repository() {
    let meta = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/charts/agentguard/Chart.yaml"
    ))
    .unwrap();
    let icon = meta
        .lines()
        .find_map(|l| l.strip_prefix("icon: "))
        .expect("Chart.yaml has an icon");
    let path = icon
        .strip_prefix("https://raw.githubusercontent.com/agentguard/agentguard/main/")
        .unwrap_or_else(|| panic!("icon {icon} is not a file of the repository on main"));
    let svg = std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("icon {path}: {e}"));
    assert!(svg.starts_with("<svg"), "{path} is not an SVG");
}
