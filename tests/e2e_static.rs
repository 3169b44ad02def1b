//! End-to-end, static mode: a control plane of its own whose kube-apiserver (1.36, feature gate
//! `ManifestBasedAdmissionControlConfig`) loads the files `agentguard manifests static` writes.
//! Proven against the real API server:
//! - cluster-admin cannot delete, replace or weaken the static configurations, and deleting
//!   every webhook configuration the API has leaves agents denied;
//! - an agent's deletion of a protected claim is denied with agentguard's message;
//! - agentguard's managed configuration steps aside (a leftover one is deleted), `kubectl
//!   agentguard status` says the static one is in force, and policies report Ready;
//! - with `--client-ca-file`, the API server is served (its kubeConfigFile gives it the client
//!   certificate) and a caller without that certificate is refused;
//! - when the API server restarts without the static configuration, the managed one takes
//!   over again.
//!
//! Needs the pinned tools (`hack/build-tools.sh`); fails, never skips, without them. The
//! control plane lives in `$AGENTGUARD_STATIC_CLUSTER_DIR` (default: a temporary directory)
//! and is stopped when the test ends.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agentguard::certs::generate_with_clients;
use support::{
    Cluster, TestNamespace, free_port, stderr, stdout, tls_post_validate, tools_dir, wait_until,
};

const CLIENT_NAME: &str = "kube-apiserver";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A control plane started by `hack/cluster.sh up` in `dir`; `down` when dropped.
struct ControlPlane {
    dir: PathBuf,
}

impl ControlPlane {
    fn cluster_sh(&self, args: &[&str], static_dir: Option<&Path>) {
        let mut cmd = Command::new(repo().join("hack/cluster.sh"));
        cmd.args(args)
            .env("AGENTGUARD_CLUSTER_DIR", &self.dir)
            .env_remove("AGENTGUARD_STATIC_ADMISSION")
            .stdout(Stdio::null());
        if let Some(dir) = static_dir {
            cmd.env("AGENTGUARD_STATIC_ADMISSION", dir);
        }
        let out = cmd.output().expect("run hack/cluster.sh");
        assert!(
            out.status.success(),
            "hack/cluster.sh {args:?} failed: {}",
            stderr(&out)
        );
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("hack/cluster.sh"))
            .arg("down")
            .env("AGENTGUARD_CLUSTER_DIR", &self.dir)
            .output();
    }
}

struct Agentguard(Child);

impl Drop for Agentguard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

fn exists(cluster: &Cluster, kind: &str, name: &str) -> bool {
    let out = cluster.kubectl(&["get", kind, name, "--ignore-not-found", "-o", "name"]);
    out.status.success() && !stdout(&out).trim().is_empty()
}

fn status_line(cluster: &Cluster) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_kubectl-agentguard"))
        .args(["status", "-A"])
        .env("KUBECONFIG", &cluster.kubeconfig)
        .output()
        .expect("run kubectl-agentguard status");
    stdout(&out)
        .lines()
        .find(|l| l.starts_with("WEBHOOK CONFIGURATION:"))
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn static_configurations_cannot_be_deleted_and_the_managed_one_steps_aside() {
    let started = Instant::now();
    let tools = tools_dir();
    assert!(
        [
            "kube-apiserver",
            "kube-controller-manager",
            "etcd",
            "kubectl"
        ]
        .iter()
        .all(|t| tools.join(t).exists()),
        "no kube-apiserver 1.36 in {}: build the pinned tools with `hack/build-tools.sh` \
         (then `cargo test --test e2e_static`)",
        tools.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let base = std::env::var_os("AGENTGUARD_STATIC_CLUSTER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_owned());
    std::fs::create_dir_all(&base).unwrap();

    // The webhook's certificates: a CA, the serving certificate, and the API server's client
    // certificate from the same CA.
    let (bundle, clients) = generate_with_clients(
        &["127.0.0.1".into()],
        Duration::from_secs(3600),
        &[CLIENT_NAME.into()],
    )
    .unwrap();
    let apiserver_client = &clients[0];
    let pki = base.join("webhook-pki");
    std::fs::create_dir_all(&pki).unwrap();
    for (name, pem) in [
        ("ca.crt", &bundle.ca_pem),
        ("tls.crt", &bundle.cert_pem),
        ("tls.key", &bundle.key_pem),
        ("client.crt", &apiserver_client.cert_pem),
        ("client.key", &apiserver_client.key_pem),
    ] {
        std::fs::write(pki.join(name), pem).unwrap();
    }

    // agentguard writes the files the API server loads.
    let port = free_port();
    // Held until agentguard starts, so the control plane's own free ports cannot take it.
    let reserved = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let url = format!("https://127.0.0.1:{port}/validate");
    let static_dir = base.join("static");
    run_ok(
        Command::new(env!("CARGO_BIN_EXE_agentguard"))
            .args(["manifests", "static", "--out"])
            .arg(&static_dir)
            .args(["--webhook-url", &url, "--namespace", "agentguard"])
            .arg("--ca-file")
            .arg(pki.join("ca.crt"))
            .arg("--client-cert")
            .arg(pki.join("client.crt"))
            .arg("--client-key")
            .arg(pki.join("client.key")),
    );
    assert!(
        static_dir
            .join("validating/agentguard.static.k8s.io.yaml")
            .exists()
    );

    let plane = ControlPlane {
        dir: base.join("cluster"),
    };
    plane.cluster_sh(&["up"], Some(&static_dir));
    let cluster = Cluster::connect_to(plane.dir.join("kubeconfig"));
    cluster.kubectl_ok(&["create", "namespace", "agentguard"]);
    // A managed configuration left from before (agentguard wrote it while no static one was
    // loaded): harmless rules, but it must go once the static one is in force.
    cluster.apply(&format!(
        "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingWebhookConfiguration\nmetadata:\n  name: agentguard\n\
         webhooks:\n  - name: validate.agentguard.dev\n    admissionReviewVersions: [v1]\n    sideEffects: None\n    failurePolicy: Ignore\n    \
         clientConfig: {{url: '{url}'}}\n    objectSelector: {{matchLabels: {{never: matches}}}}\n    \
         rules: [{{operations: [DELETE], apiGroups: [''], apiVersions: [v1], resources: [configmaps]}}]\n"
    ));

    let ns = TestNamespace::create(&cluster, "static");
    let agent = ns.agent("cursor-agent");
    let log_path = base.join("agentguard.log");
    let metrics_port = free_port();
    drop(reserved);
    let _guard = Agentguard(
        Command::new(env!("CARGO_BIN_EXE_agentguard"))
            .args(["run", "--webhook-addr", &format!("127.0.0.1:{port}")])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .arg(format!("--tls-cert-file={}", pki.join("tls.crt").display()))
            .arg(format!("--tls-key-file={}", pki.join("tls.key").display()))
            .arg(format!("--ca-file={}", pki.join("ca.crt").display()))
            .arg(format!("--client-ca-file={}", pki.join("ca.crt").display()))
            .arg(format!("--client-allowed-names={CLIENT_NAME}"))
            .arg(format!("--agent-service-accounts={}/*", ns.name))
            .arg(format!("--webhook-url={url}"))
            .args([
                "--namespace=agentguard",
                "--webhook-configuration-name=agentguard",
                "--leader-election=false",
                "--policy-reports=false",
            ])
            .env("KUBECONFIG", &cluster.kubeconfig)
            .env("RUST_LOG", "info,agentguard=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .expect("start agentguard"),
    );
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    wait_until(Duration::from_secs(30), "agentguard /readyz", || {
        support::http_status(metrics_port, "/readyz") == Some(200)
    });

    // An agent's deletion of a protected claim is denied, with agentguard's message, through
    // the static configuration (the API server presents its client certificate: agentguard
    // serves nothing else).
    ns.pvc("data", true);
    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !last.contains("agentguard: DENIED delete of PersistentVolumeClaim") {
        assert!(
            Instant::now() < deadline,
            "the agent's deletion was never denied: {last}\nagentguard log:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(200));
        last = stderr(&ns.kubectl_as(&agent, &["delete", "pvc", "data", "--dry-run=server"]));
    }

    // The managed configuration steps aside: the leftover one is deleted, and none comes back.
    wait_until(
        Duration::from_secs(15),
        "the managed configurations to step aside",
        || {
            !exists(&cluster, "validatingwebhookconfiguration", "agentguard")
                && !exists(&cluster, "mutatingwebhookconfiguration", "agentguard")
        },
    );
    assert!(
        status_line(&cluster).starts_with("WEBHOOK CONFIGURATION: static"),
        "kubectl agentguard status: {:?}",
        status_line(&cluster)
    );
    // A policy is Ready (Enforcing) although the configuration routing it cannot be read
    // through the API.
    cluster.apply(&format!(
        "apiVersion: agentguard.dev/v1alpha1\nkind: ProtectedResource\nmetadata:\n  name: claims\n  namespace: {}\n\
         spec:\n  targets: [{{apiGroups: [''], kinds: [PersistentVolumeClaim]}}]\n",
        ns.name
    ));
    ns.wait_policy_ready("claims");

    // cluster-admin cannot delete, replace or weaken the static configurations.
    for kind in [
        "validatingwebhookconfiguration",
        "mutatingwebhookconfiguration",
    ] {
        let out = cluster.kubectl(&["delete", kind, "agentguard.static.k8s.io"]);
        assert!(
            !out.status.success(),
            "cluster-admin deleted the static {kind}"
        );
        let out = cluster.kubectl(&[
            "patch",
            kind,
            "agentguard.static.k8s.io",
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/webhooks/0/failurePolicy","value":"Ignore"}]"#,
        ]);
        assert!(
            !out.status.success(),
            "cluster-admin patched the static {kind}"
        );
    }
    let out = cluster.kubectl_stdin(
        &["create", "-f", "-"],
        "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingWebhookConfiguration\nmetadata:\n  name: agentguard.static.k8s.io\nwebhooks: []\n",
    );
    assert!(
        !out.status.success() && stderr(&out).contains("reserved for static"),
        "cluster-admin created a configuration under the static name: {}",
        stderr(&out)
    );
    cluster.kubectl_ok(&["delete", "validatingwebhookconfigurations", "--all"]);
    cluster.kubectl_ok(&["delete", "mutatingwebhookconfigurations", "--all"]);
    let out = ns.kubectl_as(&agent, &["delete", "pvc", "data"]);
    assert!(
        !out.status.success() && stderr(&out).contains("agentguard: DENIED"),
        "with every API webhook configuration deleted, the agent deleted the claim: {}",
        stderr(&out)
    );
    assert!(ns.pvc_intact("data"));

    // Only the API server's certificate is served.
    assert!(
        tls_post_validate(port, &bundle.ca_pem, None).is_err(),
        "a caller without a client certificate was served"
    );
    tls_post_validate(port, &bundle.ca_pem, Some(apiserver_client))
        .expect("the API server's certificate");

    // The API server restarts without the static configuration (its kubeConfigFile still
    // gives it the client certificate): the managed configuration takes over again.
    let managed_only = base.join("managed-only");
    std::fs::create_dir_all(&managed_only).unwrap();
    let kubeconfig_file = static_dir.join("webhook-client.kubeconfig");
    std::fs::write(
        managed_only.join("admission-configuration.yaml"),
        format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\nplugins:\n\
             - name: ValidatingAdmissionWebhook\n  configuration:\n    apiVersion: apiserver.config.k8s.io/v1\n    kind: WebhookAdmissionConfiguration\n    kubeConfigFile: {k}\n\
             - name: MutatingAdmissionWebhook\n  configuration:\n    apiVersion: apiserver.config.k8s.io/v1\n    kind: WebhookAdmissionConfiguration\n    kubeConfigFile: {k}\n",
            k = kubeconfig_file.display()
        ),
    )
    .unwrap();
    plane.cluster_sh(&["restart", "kube-apiserver"], Some(&managed_only));
    wait_until(
        Duration::from_secs(30),
        "the managed configuration to take over",
        || exists(&cluster, "validatingwebhookconfiguration", "agentguard"),
    );
    wait_until(
        Duration::from_secs(30),
        "the managed configuration to deny the agent",
        || {
            stderr(&ns.kubectl_as(&agent, &["delete", "pvc", "data", "--dry-run=server"]))
                .contains("agentguard: DENIED")
        },
    );
    assert!(
        status_line(&cluster).starts_with("WEBHOOK CONFIGURATION: managed"),
        "kubectl agentguard status: {:?}",
        status_line(&cluster)
    );
    drop(ns);
    eprintln!("e2e_static took {:?}", started.elapsed());
}
