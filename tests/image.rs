//! The image `hack/image.sh agentguard` builds without Docker is the image the Dockerfile
//! describes: same entrypoint, command, user, exposed ports and files (the release binary at
//! the path the Dockerfile copies it to), on a base with the nonroot user and no shell. The
//! Dockerfile is read, not restated here, so editing one without the other fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// What the Dockerfile's final stage says.
#[derive(Debug, Default)]
struct FinalStage {
    user: String,
    entrypoint: Value,
    cmd: Value,
    exposed: Vec<String>,
    copied: Vec<String>,
}

fn final_stage(dockerfile: &str) -> FinalStage {
    let lines: Vec<&str> = dockerfile.lines().collect();
    let last_from = lines
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .expect("a FROM line");
    let mut stage = FinalStage::default();
    for line in &lines[last_from + 1..] {
        let (instruction, rest) = line.split_once(' ').unwrap_or((*line, ""));
        match instruction {
            "USER" => stage.user = rest.trim().to_owned(),
            "ENTRYPOINT" => stage.entrypoint = serde_json::from_str(rest).unwrap(),
            "CMD" => stage.cmd = serde_json::from_str(rest).unwrap(),
            "EXPOSE" => stage
                .exposed
                .extend(rest.split_whitespace().map(|p| format!("{p}/tcp"))),
            "COPY" => stage.copied.push(
                rest.split_whitespace()
                    .last()
                    .unwrap()
                    .trim_start_matches('/')
                    .to_owned(),
            ),
            _ => {}
        }
    }
    stage
}

/// A file of the OCI archive, read with tar.
fn member(archive: &Path, name: &str) -> Vec<u8> {
    let out = Command::new("tar")
        .arg("-xOf")
        .arg(archive)
        .arg(name)
        .output()
        .unwrap();
    assert!(out.status.success(), "{name} not in {}", archive.display());
    out.stdout
}

fn blob(archive: &Path, digest: &str) -> Vec<u8> {
    member(
        archive,
        &format!("blobs/sha256/{}", digest.trim_start_matches("sha256:")),
    )
}

#[test]
fn the_image_built_without_docker_is_the_dockerfiles() {
    let out = Command::new(root().join("hack/image.sh"))
        .arg("agentguard")
        .output()
        .expect("run hack/image.sh");
    assert!(
        out.status.success(),
        "hack/image.sh agentguard: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let archive = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    let index: Value = serde_json::from_slice(&member(&archive, "index.json")).unwrap();
    let name = index["manifests"][0]["annotations"]["io.containerd.image.name"]
        .as_str()
        .unwrap()
        .to_owned();
    let version = env!("CARGO_PKG_VERSION");
    assert!(name.ends_with(&format!(":{version}")), "{name}");
    let values: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(root().join("charts/agentguard/values.yaml")).unwrap(),
    )
    .unwrap();
    let chart_image = format!(
        "{}/{}",
        values["image"]["registry"].as_str().unwrap(),
        values["image"]["repository"].as_str().unwrap()
    );
    assert_eq!(
        name.rsplit_once(':').unwrap().0,
        chart_image,
        "the image is not the one the chart names"
    );
    // Artifact Hub lists the same image, at this version.
    let chart_yaml = std::fs::read_to_string(root().join("charts/agentguard/Chart.yaml")).unwrap();
    assert!(
        chart_yaml.contains(&format!("image: {name}\n")),
        "Chart.yaml's artifacthub.io/images does not name {name}"
    );
    let manifest: Value = serde_json::from_slice(&blob(
        &archive,
        index["manifests"][0]["digest"].as_str().unwrap(),
    ))
    .unwrap();
    let config: Value = serde_json::from_slice(&blob(
        &archive,
        manifest["config"]["digest"].as_str().unwrap(),
    ))
    .unwrap();
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let stage = final_stage(&dockerfile);
    let c = &config["config"];
    assert_eq!(c["User"], stage.user.as_str());
    assert_eq!(c["Entrypoint"], stage.entrypoint);
    assert_eq!(c["Cmd"], stage.cmd);
    let mut exposed: Vec<String> = c["ExposedPorts"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    exposed.sort();
    let mut want = stage.exposed.clone();
    want.sort();
    assert_eq!(exposed, want);
    assert!(
        dockerfile.contains(&format!("org.opencontainers.image.version=\"{version}\"")),
        "the Dockerfile's version label is not {version}"
    );

    // The layer's files: what the Dockerfile copies, the nonroot user, no shell.
    let layer = std::env::temp_dir().join(format!("agentguard-layer-{}.tgz", std::process::id()));
    std::fs::write(
        &layer,
        blob(&archive, manifest["layers"][0]["digest"].as_str().unwrap()),
    )
    .unwrap();
    let list = Command::new("tar")
        .arg("-tzf")
        .arg(&layer)
        .output()
        .unwrap();
    let files = String::from_utf8(list.stdout).unwrap();
    let passwd = Command::new("tar")
        .args(["-xzOf"])
        .arg(&layer)
        .arg("etc/passwd")
        .output()
        .unwrap();
    std::fs::remove_file(&layer).ok();
    for copied in &stage.copied {
        assert!(
            files.lines().any(|f| f == copied),
            "{copied} not in the image"
        );
    }
    assert!(
        String::from_utf8_lossy(&passwd.stdout).contains("nonroot:x:65532:65532:"),
        "no nonroot user"
    );
    for shell in ["bin/sh", "bin/bash", "usr/bin/sh", "bin/busybox"] {
        assert!(!files.lines().any(|f| f == shell), "{shell} in the image");
    }
}
