//! A replica that cannot reach the API server must never report ready: it would judge with an
//! empty view of policies and agents. Runs the real binary against a dead endpoint.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;

use support::{free_port, http_status as get};

#[test]
fn not_ready_while_the_api_server_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let bundle =
        agentguard::certs::generate(&["127.0.0.1".into()], Duration::from_secs(600)).unwrap();
    std::fs::write(dir.path().join("tls.crt"), &bundle.cert_pem).unwrap();
    std::fs::write(dir.path().join("tls.key"), &bundle.key_pem).unwrap();
    // Nothing listens on the API server's port: every watch fails.
    let kubeconfig = support::dead_kubeconfig(dir.path());
    let metrics = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentguard"))
        .args([
            "run",
            "--webhook-addr",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics}")])
        .arg("--tls-cert-file")
        .arg(dir.path().join("tls.crt"))
        .arg("--tls-key-file")
        .arg(dir.path().join("tls.key"))
        .args([
            "--manage-webhook-configuration=false",
            "--leader-election=false",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(metrics, "/healthz") != Some(200) {
        assert!(
            Instant::now() < deadline,
            "agentguard never served /healthz"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Give the watches time to fail a few times; readiness must stay false throughout.
    for _ in 0..15 {
        assert_eq!(get(metrics, "/readyz"), Some(503));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "agentguard must keep running and retrying"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
