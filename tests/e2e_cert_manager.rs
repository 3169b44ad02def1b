//! End-to-end: cert-manager mode follows a rotation of the issuer's CA without a failed call.
//!
//! agentguard runs as the chart runs it in cert-manager mode: `--tls-cert-file`,
//! `--tls-key-file` and `--ca-file` point at a mounted `kubernetes.io/tls` Secret holding
//! `tls.crt`, `tls.key` and `ca.crt`. The test plays cert-manager's CA issuer (a Secret in
//! exactly that format, re-issued under a new CA as `cmctl renew` after a CA re-key does) and
//! the kubelet (the mounted files change at once, by swapping the `..data` symlink). cert-manager's
//! own controller is not run: its `cmd/controller` module is not published on the Go module
//! proxy (see docs/operations.md, "Certificate and CA rotation").
//!
//! Under light load (an agent's refused deletion and a human's guarded update, in a loop) it
//! asserts that no call fails before, during or after the rotation, that the caBundle carries
//! the new CA, that the new certificate is served, and that a damaged Secret changes nothing.
//! The API server keeps its HTTP/2 connection to the webhook open, so a certificate it does not
//! trust bites only on its next new connection (after an idle timeout or a restart of either
//! side); the test therefore also opens new connections throughout, trusting exactly each
//! caBundle read from the server, and counts every moment they fail: the window in which the
//! served certificate and the caBundle disagree, which must be none.
//! Requires `hack/cluster.sh up`; fails (never skips) without a control plane.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentguard::certs::{self, CertificateBundle};
use base64::Engine;
use support::{Cluster, Guard, TestNamespace, stderr, stdout, wait_until};

const SECRET: &str = "agentguard-webhook-tls";

/// The Secret cert-manager's CA issuer writes for a Certificate.
fn cert_manager_secret(ns: &str, b: &CertificateBundle) -> String {
    let enc = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1\nkind: Secret\ntype: kubernetes.io/tls\nmetadata:\n  name: {SECRET}\n  namespace: {ns}\n  annotations:\n    cert-manager.io/certificate-name: agentguard\n    cert-manager.io/issuer-name: agentguard-ca\n    cert-manager.io/issuer-kind: Issuer\n    cert-manager.io/issuer-group: cert-manager.io\ndata:\n  tls.crt: {}\n  tls.key: {}\n  ca.crt: {}\n",
        enc(&b.cert_pem),
        enc(&b.key_pem),
        enc(&b.ca_pem)
    )
}

/// Projects the Secret into `dir` as the kubelet does: the keys are symlinks into `..data`,
/// itself a symlink swapped atomically to a fresh timestamped directory on every update.
fn kubelet_sync(ns: &TestNamespace<'_>, dir: &Path, generation: u32) {
    let data = |key: &str| {
        let b64 = stdout(&ns.kubectl(&[
            "get",
            "secret",
            SECRET,
            "-o",
            &format!("jsonpath={{.data.{}}}", key.replace('.', "\\.")),
        ]));
        base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .unwrap_or_default()
    };
    let stamp = dir.join(format!("..{generation}"));
    std::fs::create_dir(&stamp).unwrap();
    for key in ["tls.crt", "tls.key", "ca.crt"] {
        std::fs::write(stamp.join(key), data(key)).unwrap();
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..{generation}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for key in ["tls.crt", "tls.key", "ca.crt"] {
        let link = dir.join(key);
        if std::fs::symlink_metadata(&link).is_ok_and(|m| !m.file_type().is_symlink()) {
            // First sync: replace the plain files the harness wrote (same content).
            let tmp = dir.join(format!("{key}.tmp"));
            std::os::unix::fs::symlink(format!("..data/{key}"), &tmp).unwrap();
            std::fs::rename(&tmp, &link).unwrap();
        }
    }
}

fn ca_bundle(cluster: &Cluster, name: &str) -> Vec<String> {
    [
        "validatingwebhookconfiguration",
        "mutatingwebhookconfiguration",
    ]
    .iter()
    .flat_map(|kind| {
        let out = stdout(&cluster.kubectl(&[
            "get",
            kind,
            name,
            "-o",
            "jsonpath={range .webhooks[*]}{.clientConfig.caBundle}{\"\\n\"}{end}",
        ]));
        out.lines()
            .map(|b| {
                String::from_utf8(
                    base64::engine::general_purpose::STANDARD
                        .decode(b.trim())
                        .unwrap_or_default(),
                )
                .unwrap_or_default()
            })
            .collect::<Vec<_>>()
    })
    .collect()
}

/// The certificates (DER) of a PEM bundle.
fn ders(pem: &str) -> Vec<Vec<u8>> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .map(|c| c.as_ref().to_vec())
        .collect()
}

/// Whether every webhook's caBundle trusts `ca`.
fn every_bundle_trusts(cluster: &Cluster, name: &str, ca: &str) -> bool {
    let bundles = ca_bundle(cluster, name);
    !bundles.is_empty()
        && bundles
            .iter()
            .all(|b| ders(ca).iter().all(|c| ders(b).contains(c)))
}

/// Whether a new TLS handshake with the webhook succeeds for a client trusting every
/// certificate of `bundle` (as the API server does when it opens a connection).
fn serves_certificate_of(port: u16, bundle: &str) -> bool {
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for der in ders(bundle) {
        let _ = roots.add(CertificateDer::from(der));
    }
    if roots.is_empty() {
        return false;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let Ok(config) = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
    else {
        return false;
    };
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let Ok(mut conn) = rustls::ClientConnection::new(Arc::new(config), name) else {
        return false;
    };
    let Ok(mut sock) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = sock.set_read_timeout(Some(Duration::from_secs(5)));
    while conn.is_handshaking() {
        if conn.complete_io(&mut sock).is_err() {
            return false;
        }
    }
    true
}

/// Checks for `how_long` that the certificate served is trusted by every caBundle on the
/// server: a new connection of the API server would succeed. Returns the seconds since
/// `started` at which it was not.
fn disagreements(
    cluster: &Cluster,
    name: &str,
    port: u16,
    how_long: Duration,
    started: Instant,
) -> Vec<f64> {
    let t = Instant::now();
    let mut out = vec![];
    while t.elapsed() < how_long {
        for bundle in ca_bundle(cluster, name) {
            if !serves_certificate_of(port, &bundle) {
                out.push(started.elapsed().as_secs_f64());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    out
}

#[derive(Default)]
struct Load {
    calls: usize,
    /// (seconds since the start, what failed)
    failures: Vec<(f64, String)>,
}

#[test]
fn cert_manager_ca_rotation_and_a_damaged_secret_fail_no_call() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "certmgr");
    let agent = ns.agent("cursor-agent");
    let mut guard = Guard::start(&ns, &agent);
    let dir = guard.dir.path().to_owned();
    // The harness issued the first certificate; publish it as cert-manager would and mount it.
    let hosts = ["127.0.0.1".to_owned()];
    let first = CertificateBundle {
        ca_pem: std::fs::read_to_string(dir.join("ca.crt")).unwrap(),
        ca_key_pem: String::new(),
        cert_pem: std::fs::read_to_string(dir.join("tls.crt")).unwrap(),
        key_pem: std::fs::read_to_string(dir.join("tls.key")).unwrap(),
    };
    let apply = |b: &CertificateBundle| {
        let out = cluster.kubectl_stdin(&["apply", "-f", "-"], &cert_manager_secret(&ns.name, b));
        assert!(out.status.success(), "{}", stderr(&out));
    };
    apply(&first);
    kubelet_sync(&ns, &dir, 1);
    ns.pvc("data", true);

    // Light load through the API server, on its own thread, until told to stop.
    let started = Instant::now();
    let load = Arc::new(Mutex::new(Load::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let (load, stop) = (load.clone(), stop.clone());
        let (kubeconfig, kubectl, namespace, agent) = (
            cluster.kubeconfig.clone(),
            cluster.kubectl_path(),
            ns.name.clone(),
            agent.clone(),
        );
        std::thread::spawn(move || {
            let run = |args: &[&str], user: Option<&str>| {
                let mut cmd = std::process::Command::new(&kubectl);
                cmd.arg("--kubeconfig")
                    .arg(&kubeconfig)
                    .args(["-n", &namespace]);
                if let Some(user) = user {
                    cmd.arg(format!("--as={user}"));
                }
                cmd.args(args).output().unwrap()
            };
            let mut round = 0;
            while !stop.load(Ordering::Relaxed) {
                let out = run(&["delete", "pvc", "data", "--dry-run=server"], Some(&agent));
                let denied = stderr(&out).contains("agentguard: DENIED");
                let note = format!("agentguard.dev/note=tick-{round}");
                let human = run(&["annotate", "--overwrite", "pvc", "data", &note], None);
                let mut load = load.lock().unwrap();
                load.calls += 2;
                let at = started.elapsed().as_secs_f64();
                if !denied {
                    load.failures.push((at, format!("agent: {}", stderr(&out))));
                }
                if !human.status.success() {
                    load.failures
                        .push((at, format!("human: {}", stderr(&human))));
                }
                drop(load);
                round += 1;
            }
        })
    };
    let failures = |load: &Arc<Mutex<Load>>| load.lock().unwrap().failures.clone();
    std::thread::sleep(Duration::from_secs(3));

    // 1. The issuer's CA is re-keyed and the serving certificate renewed under it: cert-manager
    //    writes tls.crt, tls.key and ca.crt of the new CA at once.
    let second = certs::generate(&hosts, Duration::from_secs(3600)).unwrap();
    let rotated = started.elapsed();
    apply(&second);
    kubelet_sync(&ns, &dir, 2);
    // Both are polled together: when the caBundle first carries the new CA, and when the new
    // certificate is first served (which must not come first).
    let t = Instant::now();
    let (mut bundle_after, mut served_after) = (None, None);
    let mut mismatched = vec![];
    while served_after.is_none() || bundle_after.is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "after 30 s: new CA in the caBundle {bundle_after:?}, new certificate served \
             {served_after:?}; served certificate not trusted by the live caBundle at {:?} s; \
             failed calls: {:?}",
            mismatched.first(),
            failures(&load).first()
        );
        // Served first, the bundle read after: the bundle only gains the new CA, so a bundle
        // read after the new certificate was seen served and still lacking its CA proves the
        // certificate was served untrusted. (Two independent polls cannot order the events.)
        if served_after.is_none() && serves_certificate_of(guard.webhook_port, &second.ca_pem) {
            served_after = Some(t.elapsed());
            assert!(
                every_bundle_trusts(&cluster, &guard.webhook_name, &second.ca_pem),
                "the new certificate was served ({served_after:?}) while the caBundle did not \
                 carry its CA"
            );
        }
        if bundle_after.is_none()
            && every_bundle_trusts(&cluster, &guard.webhook_name, &second.ca_pem)
        {
            bundle_after = Some(t.elapsed());
        }
        mismatched.extend(disagreements(
            &cluster,
            &guard.webhook_name,
            guard.webhook_port,
            Duration::from_millis(1),
            started,
        ));
    }
    let (bundle_after, served_after) = (bundle_after.unwrap(), served_after.unwrap());

    assert!(
        every_bundle_trusts(&cluster, &guard.webhook_name, &first.ca_pem),
        "the previous CA stays beside the new one"
    );
    mismatched.extend(disagreements(
        &cluster,
        &guard.webhook_name,
        guard.webhook_port,
        Duration::from_secs(8),
        started,
    ));
    assert_eq!(
        mismatched,
        Vec::<f64>::new(),
        "the served certificate was not trusted by the live caBundle (seconds since the start; \
         the rotation was at {rotated:?}); log:\n{}",
        guard.log()
    );
    let failed = failures(&load);
    assert!(
        failed.is_empty(),
        "{} calls failed after the CA rotation (at {rotated:?}), the first: {:?}; log:\n{}",
        failed.len(),
        failed.first(),
        guard.log()
    );

    // 2. A damaged Secret (a certificate its ca.crt does not verify, then garbage) changes
    //    nothing: the certificate and caBundle in use stay.
    let third = certs::generate(&hosts, Duration::from_secs(3600)).unwrap();
    apply(&CertificateBundle {
        ca_pem: first.ca_pem.clone(),
        ..third.clone()
    });
    kubelet_sync(&ns, &dir, 3);
    let garbage = CertificateBundle {
        ca_pem: "garbage".into(),
        ca_key_pem: String::new(),
        cert_pem: second.cert_pem[..second.cert_pem.len() / 2].to_owned(),
        key_pem: second.key_pem.clone(),
    };
    mismatched.extend(disagreements(
        &cluster,
        &guard.webhook_name,
        guard.webhook_port,
        Duration::from_secs(7),
        started,
    ));
    apply(&garbage);
    kubelet_sync(&ns, &dir, 4);
    mismatched.extend(disagreements(
        &cluster,
        &guard.webhook_name,
        guard.webhook_port,
        Duration::from_secs(7),
        started,
    ));
    assert!(serves_certificate_of(guard.webhook_port, &second.ca_pem));
    assert!(!serves_certificate_of(guard.webhook_port, &third.ca_pem));
    assert!(every_bundle_trusts(
        &cluster,
        &guard.webhook_name,
        &second.ca_pem
    ));
    assert!(!every_bundle_trusts(
        &cluster,
        &guard.webhook_name,
        &third.ca_pem
    ));

    // 3. The Secret is repaired with yet another CA: followed again, without a failed call.
    apply(&third);
    kubelet_sync(&ns, &dir, 5);
    wait_until(
        Duration::from_secs(30),
        "the third certificate is served",
        || serves_certificate_of(guard.webhook_port, &third.ca_pem),
    );
    assert!(every_bundle_trusts(
        &cluster,
        &guard.webhook_name,
        &second.ca_pem
    ));
    mismatched.extend(disagreements(
        &cluster,
        &guard.webhook_name,
        guard.webhook_port,
        Duration::from_secs(5),
        started,
    ));
    stop.store(true, Ordering::Relaxed);
    worker.join().unwrap();
    assert_eq!(
        mismatched,
        Vec::<f64>::new(),
        "the served certificate was not trusted by the live caBundle; log:\n{}",
        guard.log()
    );
    let load = load.lock().unwrap();
    assert_eq!(load.failures, vec![], "calls failed; log:\n{}", guard.log());
    assert!(load.calls > 40, "only {} calls", load.calls);
    eprintln!(
        "{} calls, none failed; new CA in every caBundle {bundle_after:?} after the Secret \
         changed, new certificate served after {served_after:?}",
        load.calls
    );

    // 4. A restart keeps the previous CA beside the current one: replicas whose volume is not
    //    updated yet may still serve a certificate it signed.
    guard.respawn(&ns, &support::GuardOptions::default());
    wait_until(Duration::from_secs(30), "agentguard ready again", || {
        guard.http_get("/readyz").is_some_and(|(s, _)| s == 200)
    });
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        every_bundle_trusts(&cluster, &guard.webhook_name, &third.ca_pem)
            && every_bundle_trusts(&cluster, &guard.webhook_name, &second.ca_pem),
        "after a restart the caBundle carries the current and the previous CA; log:\n{}",
        guard.log()
    );
    guard.kill();
}
