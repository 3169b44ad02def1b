//! Certificates from files (cert-manager mode) are swapped without a restart: after the files
//! change, new TLS handshakes are served the new certificate. Real binary, real handshakes.

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};

mod support;

/// The leaf certificate the server presents to a client that trusts `ca_pem`, if the
/// handshake succeeds.
fn served_certificate(port: u16, ca_pem: &str) -> Option<Vec<u8>> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).ok()?)
        .ok()?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("127.0.0.1").ok()?;
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).ok()?;
    let mut sock = TcpStream::connect(("127.0.0.1", port)).ok()?;
    sock.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .ok()?;
    tls.flush().ok()?;
    conn.peer_certificates().map(|c| c[0].as_ref().to_vec())
}

#[test]
fn swapped_certificate_files_are_served_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let write = |bundle: &agentguard::certs::CertificateBundle| {
        std::fs::write(dir.path().join("tls.crt"), &bundle.cert_pem).unwrap();
        std::fs::write(dir.path().join("tls.key"), &bundle.key_pem).unwrap();
    };
    let hosts = ["127.0.0.1".to_owned()];
    let first = agentguard::certs::generate(&hosts, Duration::from_secs(600)).unwrap();
    let second = agentguard::certs::generate(&hosts, Duration::from_secs(600)).unwrap();
    write(&first);
    let (mut child, webhook) = support::serve_tls_files(dir.path(), &[]);
    let served_first =
        served_certificate(webhook, &first.ca_pem).expect("handshake with the first CA");
    assert!(
        served_certificate(webhook, &second.ca_pem).is_none(),
        "not yet the second certificate"
    );

    write(&second);
    let deadline = Instant::now() + Duration::from_secs(30);
    let served_second = loop {
        if let Some(cert) = served_certificate(webhook, &second.ca_pem) {
            break cert;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_ne!(served_first, served_second);
    assert!(child.try_wait().unwrap().is_none(), "no restart happened");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn certificate_files_that_do_not_hold_together_are_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let put = |name: &str, pem: &str| std::fs::write(dir.path().join(name), pem).unwrap();
    let hosts = ["127.0.0.1".to_owned()];
    let first = agentguard::certs::generate(&hosts, Duration::from_secs(600)).unwrap();
    let second = agentguard::certs::generate(&hosts, Duration::from_secs(600)).unwrap();
    put("tls.crt", &first.cert_pem);
    put("tls.key", &first.key_pem);
    put("ca.crt", &first.ca_pem);
    let ca_file = format!("--ca-file={}", dir.path().join("ca.crt").display());
    let (mut child, webhook) = support::serve_tls_files(dir.path(), &[ca_file]);
    let served_first = served_certificate(webhook, &first.ca_pem).expect("the first certificate");
    let still_first = |what: &str| {
        // Two reload intervals.
        std::thread::sleep(Duration::from_secs(7));
        assert_eq!(
            served_certificate(webhook, &first.ca_pem).as_ref(),
            Some(&served_first),
            "{what}: the first certificate is still served"
        );
    };
    // A key that does not match the certificate.
    put("tls.crt", &second.cert_pem);
    still_first("mismatched key");
    // A certificate and key that match, but a CA file that does not verify them: serving it
    // would meet a caBundle that does not trust it.
    put("tls.key", &second.key_pem);
    still_first("CA file of another CA");
    put("ca.crt", "garbage");
    still_first("garbage CA file");
    // The whole set: served.
    put("ca.crt", &second.ca_pem);
    let deadline = Instant::now() + Duration::from_secs(30);
    while served_certificate(webhook, &second.ca_pem).is_none() {
        assert!(
            Instant::now() < deadline,
            "the complete set was never served"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}
