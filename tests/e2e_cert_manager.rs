//! End-to-end: cert-manager mode follows a rotation of the issuer's CA without a failed call.
//!
//! agentguard runs as the chart runs it in cert-manager mode: `--tls-cert-file`,
//! `--tls-key-file` and `--ca-file` point at a mounted `kubernetes.io/tls` Secret holding
//! `tls.crt`, `tls.key` and `ca.crt`. That Secret is written by cert-manager's own controllers
//! (`hack/cert-manager-controller`, built by `hack/build-tools.sh` from the packages of the
//! pinned cert-manager module, run out of cluster against the local control plane) from the
//! chart's objects: a SelfSigned Issuer signs a CA Certificate, a CA Issuer signs the webhook's
//! Certificate. The CA is rotated as users rotate it: the CA Certificate is renewed (what
//! `cmctl renew` does: its `Issuing` condition is set; `rotationPolicy: Always` gives it a new
//! key), then the webhook's Certificate is renewed under the new CA. The test plays only the
//! kubelet: it projects the Secret into the mounted files, which change at once by swapping the
//! `..data` symlink.
//!
//! Under light load (an agent's refused deletion and a human's guarded update, in a loop) it
//! asserts that no call fails before, during or after the rotations, that the caBundle carries
//! the new CA, that the new certificate is served, and that a damaged Secret (written while
//! cert-manager is stopped) changes nothing until cert-manager repairs it.
//! The API server keeps its HTTP/2 connection to the webhook open, so a certificate it does not
//! trust bites only on its next new connection (after an idle timeout or a restart of either
//! side); the test therefore also opens new connections throughout, trusting exactly each
//! caBundle read from the server, and counts every moment they fail: the window in which the
//! served certificate and the caBundle disagree, which must be none.
//! Requires `hack/cluster.sh up` and `hack/build-tools.sh`; fails (never skips) without either.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentguard::certs::{self, CertificateBundle};
use base64::Engine;
use support::{Cluster, Guard, TestNamespace, stderr, stdout, wait_until};

/// The webhook Certificate's Secret, as the chart names it.
const SECRET: &str = "agentguard-webhook-tls";
/// The CA Certificate's Secret, which the CA Issuer signs with.
const CA_SECRET: &str = "agentguard-ca";

/// The chart's cert-manager objects (`charts/agentguard/templates/certificate.yaml`, no
/// issuerRef given), with the CA's key rotated on every issuance and the address the API server
/// calls this test's webhook at (`127.0.0.1`) beside the Service name.
fn cert_manager_objects(ns: &str) -> String {
    format!(
        "apiVersion: cert-manager.io/v1
kind: Issuer
metadata:
  name: agentguard-selfsigned
  namespace: {ns}
spec:
  selfSigned: {{}}
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata:
  name: agentguard-ca
  namespace: {ns}
spec:
  isCA: true
  commonName: agentguard-ca
  secretName: {CA_SECRET}
  duration: 43800h
  privateKey:
    algorithm: ECDSA
    size: 256
    rotationPolicy: Always
  issuerRef:
    name: agentguard-selfsigned
    kind: Issuer
    group: cert-manager.io
---
apiVersion: cert-manager.io/v1
kind: Issuer
metadata:
  name: agentguard-ca
  namespace: {ns}
spec:
  ca:
    secretName: {CA_SECRET}
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata:
  name: agentguard
  namespace: {ns}
spec:
  secretName: {SECRET}
  duration: 2160h
  renewBefore: 360h
  dnsNames:
    - agentguard.{ns}.svc
    - agentguard.{ns}.svc.cluster.local
  ipAddresses:
    - 127.0.0.1
  privateKey:
    algorithm: ECDSA
    size: 256
    rotationPolicy: Always
  usages: [server auth, digital signature, key encipherment]
  issuerRef:
    name: agentguard-ca
    kind: Issuer
    group: cert-manager.io
"
    )
}

/// cert-manager's controllers for one namespace, as a child process killed when dropped.
struct CertManager {
    child: Child,
    log: std::path::PathBuf,
}

impl CertManager {
    fn start(cluster: &Cluster, ns: &TestNamespace<'_>, dir: &Path, run: u32) -> Self {
        let bin = cluster.tools.join("cert-manager-controller");
        assert!(
            bin.exists(),
            "no cert-manager controller at {}: run hack/build-tools.sh (it builds \
             hack/cert-manager-controller from the pinned cert-manager module)",
            bin.display()
        );
        let log = dir.join(format!("cert-manager-{run}.log"));
        let child = Command::new(&bin)
            .arg(format!("--kubeconfig={}", cluster.kubeconfig.display()))
            .arg(format!("--namespace={}", ns.name))
            .arg(format!("--cluster-resource-namespace={}", ns.name))
            .arg("--leader-elect=false")
            .arg("-v=2")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        Self { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for CertManager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Secret's `tls.crt`, `tls.key` and `ca.crt`, read at once.
fn secret_bundle(ns: &TestNamespace<'_>, name: &str) -> CertificateBundle {
    let out = stdout(&ns.kubectl(&[
        "get",
        "secret",
        name,
        "-o",
        "jsonpath={.data.tls\\.crt} {.data.tls\\.key} {.data.ca\\.crt} .",
    ]));
    let mut fields = out.split(' ').map(|b64| {
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .unwrap_or_default(),
        )
        .unwrap_or_default()
    });
    let mut next = || fields.next().unwrap_or_default();
    let (cert_pem, key_pem, ca_pem) = (next(), next(), next());
    CertificateBundle {
        ca_pem,
        ca_key_pem: String::new(),
        cert_pem,
        key_pem,
    }
}

/// Writes the Secret's data as someone other than cert-manager would (by hand, or a bad tool).
fn overwrite_secret(ns: &TestNamespace<'_>, b: &CertificateBundle) {
    let enc = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let patch = serde_json::json!({"data": {
        "tls.crt": enc(&b.cert_pem),
        "tls.key": enc(&b.key_pem),
        "ca.crt": enc(&b.ca_pem),
    }});
    ns.kubectl_ok(&[
        "patch",
        "secret",
        SECRET,
        "--type=merge",
        "-p",
        &patch.to_string(),
    ]);
}

/// The status of a Certificate's condition, empty when it has none of that type.
fn condition(ns: &TestNamespace<'_>, certificate: &str, kind: &str) -> String {
    stdout(&ns.kubectl(&[
        "get",
        "certificate",
        certificate,
        "-o",
        &format!("jsonpath={{.status.conditions[?(@.type==\"{kind}\")].status}}"),
    ]))
}

/// Waits until cert-manager has issued `certificate` and is not issuing it again.
fn wait_issued(ns: &TestNamespace<'_>, cm: &CertManager, certificate: &str) {
    let t = Instant::now();
    while condition(ns, certificate, "Ready") != "True"
        || !condition(ns, certificate, "Issuing").is_empty()
    {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "cert-manager did not issue Certificate {certificate} in 60 s: {}; log:\n{}",
            ns.kubectl_ok(&["get", "certificate", certificate, "-o", "yaml"]),
            cm.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Renews `certificate` as `cmctl renew` does (its `Issuing` condition set to True), and waits
/// until cert-manager has written its Secret anew. Returns the new Secret's data.
fn renew(
    ns: &TestNamespace<'_>,
    cm: &CertManager,
    certificate: &str,
    secret: &str,
) -> CertificateBundle {
    wait_issued(ns, cm, certificate);
    let before = secret_bundle(ns, secret);
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let patch = serde_json::json!([{
        "op": "add",
        "path": "/status/conditions/-",
        "value": {
            "type": "Issuing",
            "status": "True",
            "reason": "ManuallyTriggered",
            "message": "Certificate re-issuance manually triggered",
            "lastTransitionTime": now,
        },
    }]);
    ns.kubectl_ok(&[
        "patch",
        "certificate",
        certificate,
        "--subresource=status",
        "--type=json",
        "-p",
        &patch.to_string(),
    ]);
    wait_secret(
        ns,
        cm,
        secret,
        &format!("Certificate {certificate} renewed"),
        |after| after.cert_pem != before.cert_pem && after.key_pem != before.key_pem,
    );
    wait_issued(ns, cm, certificate);
    secret_bundle(ns, secret)
}

/// Waits (up to 60 s) until the data of Secret `secret` passes `check`, and returns it.
fn wait_secret(
    ns: &TestNamespace<'_>,
    cm: &CertManager,
    secret: &str,
    what: &str,
    check: impl Fn(&CertificateBundle) -> bool,
) -> CertificateBundle {
    let t = Instant::now();
    loop {
        let data = secret_bundle(ns, secret);
        if check(&data) {
            return data;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "cert-manager: {what}: not after 60 s; log:\n{}",
            cm.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Projects the Secret into `dir` as the kubelet does: the keys are symlinks into `..data`,
/// itself a symlink swapped atomically to a fresh timestamped directory on every update.
fn kubelet_sync(ns: &TestNamespace<'_>, dir: &Path, generation: u32) -> CertificateBundle {
    let secret = secret_bundle(ns, SECRET);
    let stamp = dir.join(format!("..{generation}"));
    std::fs::create_dir(&stamp).unwrap();
    for (key, data) in [
        ("tls.crt", &secret.cert_pem),
        ("tls.key", &secret.key_pem),
        ("ca.crt", &secret.ca_pem),
    ] {
        std::fs::write(stamp.join(key), data).unwrap();
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..{generation}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for key in ["tls.crt", "tls.key", "ca.crt"] {
        let link = dir.join(key);
        if std::fs::symlink_metadata(&link).is_ok_and(|m| !m.file_type().is_symlink()) {
            // First sync: replace the plain files the harness wrote.
            let tmp = dir.join(format!("{key}.tmp"));
            std::os::unix::fs::symlink(format!("..data/{key}"), &tmp).unwrap();
            std::fs::rename(&tmp, &link).unwrap();
        }
    }
    secret
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
    served_leaf(port, bundle).is_some()
}

/// The certificate (DER) the webhook presents on a new TLS handshake that a client trusting
/// every certificate of `bundle` completes; None when the handshake fails.
fn served_leaf(port: u16, bundle: &str) -> Option<Vec<u8>> {
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for der in ders(bundle) {
        let _ = roots.add(CertificateDer::from(der));
    }
    if roots.is_empty() {
        return None;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let Ok(config) = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
    else {
        return None;
    };
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let Ok(mut conn) = rustls::ClientConnection::new(Arc::new(config), name) else {
        return None;
    };
    let Ok(mut sock) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return None;
    };
    let _ = sock.set_read_timeout(Some(Duration::from_secs(5)));
    while conn.is_handshaking() {
        if conn.complete_io(&mut sock).is_err() {
            return None;
        }
    }
    conn.peer_certificates()?
        .first()
        .map(|c| c.as_ref().to_vec())
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
    cluster.install_third_party_crds();
    let ns = TestNamespace::create(&cluster, "certmgr");
    let logs = tempfile::tempdir().unwrap();
    let cert_manager = CertManager::start(&cluster, &ns, logs.path(), 1);
    let t = Instant::now();
    cluster.apply(&cert_manager_objects(&ns.name));
    wait_issued(&ns, &cert_manager, "agentguard-ca");
    wait_issued(&ns, &cert_manager, "agentguard");
    let chain_issued = t.elapsed();

    // agentguard starts on the Secret cert-manager issued, mounted as the kubelet mounts it.
    let first = secret_bundle(&ns, SECRET);
    assert!(
        certs::check_chain(first.cert_pem.as_bytes(), first.ca_pem.as_bytes()).is_ok(),
        "cert-manager's certificate is signed by its ca.crt"
    );
    let agent = ns.agent("cursor-agent");
    let options = support::GuardOptions {
        tls_files: Some(first.clone()),
        ..Default::default()
    };
    let mut guard = Guard::start_with(&ns, &agent, &options);
    let dir = guard.dir.path().to_owned();
    assert_eq!(kubelet_sync(&ns, &dir, 1), first);
    let leaf = |b: &CertificateBundle| ders(&b.cert_pem).into_iter().next();
    assert_eq!(
        served_leaf(guard.webhook_port, &first.ca_pem),
        leaf(&first),
        "cert-manager's certificate is served"
    );
    assert!(every_bundle_trusts(
        &cluster,
        &guard.webhook_name,
        &first.ca_pem
    ));
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

    // 1. The CA is re-keyed (its Certificate renewed) and the serving certificate renewed under
    //    it; the kubelet then mounts the Secret's new tls.crt, tls.key and ca.crt at once.
    let t = Instant::now();
    let new_ca = renew(&ns, &cert_manager, "agentguard-ca", CA_SECRET);
    let ca_renewed = t.elapsed();
    let t = Instant::now();
    let renewed = renew(&ns, &cert_manager, "agentguard", SECRET);
    let leaf_renewed = t.elapsed();
    assert!(
        ders(&new_ca.cert_pem)
            .iter()
            .all(|c| ders(&renewed.ca_pem).contains(c))
            && !ders(&renewed.ca_pem).contains(&ders(&first.ca_pem)[0]),
        "the renewed Secret's ca.crt is the new CA only:\n{}",
        renewed.ca_pem
    );
    let rotated = started.elapsed();
    let second = kubelet_sync(&ns, &dir, 2);
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
    assert_eq!(
        served_leaf(guard.webhook_port, &second.ca_pem),
        leaf(&second),
        "the renewed certificate is served"
    );

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
    //    nothing: the certificate and caBundle in use stay. cert-manager is stopped meanwhile,
    //    or it would repair the Secret before the kubelet mounted the damage.
    drop(cert_manager);
    let hosts = ["127.0.0.1".to_owned()];
    let forged = certs::generate(&hosts, Duration::from_secs(3600)).unwrap();
    overwrite_secret(
        &ns,
        &CertificateBundle {
            ca_pem: first.ca_pem.clone(),
            ..forged.clone()
        },
    );
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
    overwrite_secret(&ns, &garbage);
    kubelet_sync(&ns, &dir, 4);
    mismatched.extend(disagreements(
        &cluster,
        &guard.webhook_name,
        guard.webhook_port,
        Duration::from_secs(7),
        started,
    ));
    assert_eq!(
        served_leaf(guard.webhook_port, &second.ca_pem),
        leaf(&second)
    );
    assert!(!serves_certificate_of(guard.webhook_port, &forged.ca_pem));
    assert!(every_bundle_trusts(
        &cluster,
        &guard.webhook_name,
        &second.ca_pem
    ));
    assert!(!every_bundle_trusts(
        &cluster,
        &guard.webhook_name,
        &forged.ca_pem
    ));

    // 3. cert-manager, started again, finds the Secret damaged and re-issues it (the current
    //    CA, a new key): followed again, without a failed call.
    let cert_manager = CertManager::start(&cluster, &ns, logs.path(), 2);
    let t = Instant::now();
    wait_secret(&ns, &cert_manager, SECRET, "damaged Secret repaired", |s| {
        certs::check_chain(s.cert_pem.as_bytes(), s.ca_pem.as_bytes()).is_ok()
            && ders(&s.ca_pem) == ders(&second.ca_pem)
            && s.cert_pem != second.cert_pem
    });
    wait_issued(&ns, &cert_manager, "agentguard");
    let repaired_in = t.elapsed();
    let repaired = kubelet_sync(&ns, &dir, 5);
    wait_until(
        Duration::from_secs(30),
        "the repaired certificate is served",
        || served_leaf(guard.webhook_port, &second.ca_pem) == leaf(&repaired),
    );

    // 4. The CA is rotated once more: the second CA is now the previous one.
    let t = Instant::now();
    renew(&ns, &cert_manager, "agentguard-ca", CA_SECRET);
    renew(&ns, &cert_manager, "agentguard", SECRET);
    let rotated_again_in = t.elapsed();
    let third = kubelet_sync(&ns, &dir, 6);
    wait_until(
        Duration::from_secs(30),
        "the third CA's certificate is served",
        || served_leaf(guard.webhook_port, &third.ca_pem) == leaf(&third),
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
        "{} calls, none failed; cert-manager issued the CA and the webhook certificate in \
         {chain_issued:?}, re-keyed the CA in {ca_renewed:?}, renewed the webhook certificate \
         under it in {leaf_renewed:?}, repaired the damaged Secret in {repaired_in:?}, rotated \
         both again in {rotated_again_in:?}; after the first rotation's Secret was mounted the \
         new CA was in every caBundle after {bundle_after:?}, the new certificate served after \
         {served_after:?}",
        load.calls
    );

    // 5. A restart keeps the previous CA beside the current one: replicas whose volume is not
    //    updated yet may still serve a certificate it signed.
    guard.respawn(&ns, &options);
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
    drop(cert_manager);
}
