//! One version number everywhere a user reads one: Cargo.toml (and Cargo.lock), the chart's
//! `version` and `appVersion`, the image tag the chart renders, the Dockerfile's version label,
//! both binaries' `--version`, `agentguard_build_info` and the krew manifest. A release bumps
//! Cargo.toml; this test names every other place that must follow.

use std::path::PathBuf;
use std::process::Command;

mod support;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> serde_json::Value {
    serde_saphyr::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn every_version_a_user_reads_is_cargos() {
    // Cargo.toml's [package] version, as cargo read it.
    let v = env!("CARGO_PKG_VERSION").to_owned();
    let mut disagree = Vec::new();
    let mut check = |place: &str, found: &str, want: &str| {
        if found != want {
            disagree.push(format!("{place}: {found:?}, not {want:?}"));
        }
    };

    // Cargo.lock's entry for agentguard.
    let lock = read("Cargo.lock");
    let locked = lock
        .split("[[package]]")
        .find(|p| p.contains("\nname = \"agentguard\"\n"))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = \"")))
        .map(|v| v.trim_end_matches('"').to_owned())
        .unwrap_or_default();
    check("Cargo.lock agentguard", &locked, &v);

    // The chart.
    let chart = yaml("charts/agentguard/Chart.yaml");
    check(
        "Chart.yaml version",
        chart["version"].as_str().unwrap_or_default(),
        &v,
    );
    check(
        "Chart.yaml appVersion",
        chart["appVersion"].as_str().unwrap_or_default(),
        &v,
    );

    // The image the chart runs by default: rendered by helm, as a user installs it.
    let helm = support::tools_dir().join("helm");
    let out = Command::new(&helm)
        .args(["template", "agentguard"])
        .arg(root().join("charts/agentguard"))
        .args(["--kube-version", "1.36.3"])
        .args(["--show-only", "templates/deployment.yaml"])
        .output()
        .expect("run helm template");
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = String::from_utf8_lossy(&out.stdout);
    let image = rendered
        .lines()
        .find_map(|l| l.trim().strip_prefix("image: "))
        .map(|i| i.trim_matches('"').to_owned())
        .unwrap_or_default();
    check(
        "the chart's default image tag",
        image.rsplit_once(':').map(|(_, t)| t).unwrap_or_default(),
        &v,
    );

    // The Dockerfile's label and the tag its build comment gives.
    let dockerfile = read("Dockerfile");
    let label = dockerfile
        .lines()
        .find_map(|l| {
            let at = l.find("org.opencontainers.image.version=\"")?;
            let rest = &l[at + "org.opencontainers.image.version=\"".len()..];
            Some(rest[..rest.find('"')?].to_owned())
        })
        .unwrap_or_default();
    check("Dockerfile version label", &label, &v);
    let build_tag = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("# Build: docker build -t "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|i| i.rsplit_once(':'))
        .map(|(_, t)| t.to_owned())
        .unwrap_or_default();
    check("Dockerfile build comment tag", &build_tag, &v);

    // Both binaries.
    for (name, bin) in [
        ("agentguard --version", env!("CARGO_BIN_EXE_agentguard")),
        (
            "kubectl-agentguard --version",
            env!("CARGO_BIN_EXE_kubectl-agentguard"),
        ),
    ] {
        let out = Command::new(bin).arg("--version").output().unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        check(name, said.split_whitespace().last().unwrap_or_default(), &v);
    }

    // The metric.
    let metrics = agentguard::metrics::Metrics::new().render();
    let info = metrics
        .lines()
        .find_map(|l| l.strip_prefix("agentguard_build_info{version=\""))
        .and_then(|l| l.split('"').next())
        .unwrap_or_default()
        .to_owned();
    check("agentguard_build_info", &info, &v);

    // The krew plugin manifest.
    let krew = yaml("deploy/krew/agentguard.yaml");
    check(
        "deploy/krew/agentguard.yaml spec.version",
        krew["spec"]["version"].as_str().unwrap_or_default(),
        &format!("v{v}"),
    );

    assert!(
        disagree.is_empty(),
        "Cargo.toml says {v}; these disagree:\n{}",
        disagree.join("\n")
    );
}
