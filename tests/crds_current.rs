//! `crds/` is generated from the Rust types; this fails when someone changed the types and
//! forgot to regenerate it.

#[test]
fn crds_dir_matches_agentguard_crd_output() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/agentguard.dev.yaml");
    let on_disk = std::fs::read_to_string(path).expect("read crds/agentguard.dev.yaml");
    let generated = agentguard::api::crd_yaml();
    assert!(
        on_disk == generated,
        "crds/agentguard.dev.yaml is stale: regenerate it with\n  cargo run -q -- crd > crds/agentguard.dev.yaml"
    );
}

#[test]
fn binary_prints_the_same_crds() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agentguard"))
        .arg("crd")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        agentguard::api::crd_yaml()
    );
}

#[test]
fn chart_crds_match_crds_dir() {
    let root = env!("CARGO_MANIFEST_DIR");
    let top = std::fs::read_to_string(format!("{root}/crds/agentguard.dev.yaml")).unwrap();
    let chart =
        std::fs::read_to_string(format!("{root}/charts/agentguard/crds/agentguard.dev.yaml"))
            .unwrap();
    assert!(
        top == chart,
        "charts/agentguard/crds is stale: cp crds/agentguard.dev.yaml charts/agentguard/crds/"
    );
}
