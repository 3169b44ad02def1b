//! `--client-ca-file` and `--client-allowed-names`: the webhook serves only the API server's
//! client certificate. Real binary, real TLS handshakes: a caller without a certificate, with
//! one from another CA, or with one from the right CA that names someone else gets no HTTP
//! answer at all (refused during the handshake, before a byte of a review is read); the right
//! certificate is served.

use std::process::Child;
use std::time::Duration;

use agentguard::certs::generate_with_clients;

mod support;

use support::{serve_tls_files, tls_post_validate};

struct Server {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `agentguard run` serving `bundle`'s certificate, with `extra` flags, and waits until
/// it listens.
fn serve(bundle: &agentguard::certs::CertificateBundle, extra: &[String]) -> (Server, u16) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tls.crt"), &bundle.cert_pem).unwrap();
    std::fs::write(dir.path().join("tls.key"), &bundle.key_pem).unwrap();
    std::fs::write(dir.path().join("ca.crt"), &bundle.ca_pem).unwrap();
    let extra: Vec<String> = extra
        .iter()
        .map(|a| a.replace("{dir}", &dir.path().display().to_string()))
        .collect();
    let (child, webhook) = serve_tls_files(dir.path(), &extra);
    let server = Server { child, _dir: dir };
    (server, webhook)
}

#[test]
fn only_the_api_servers_certificate_is_served() {
    let hosts = ["127.0.0.1".to_owned()];
    let (bundle, clients) = generate_with_clients(
        &hosts,
        Duration::from_secs(600),
        &["kube-apiserver".to_owned(), "someone-else".to_owned()],
    )
    .unwrap();
    let (apiserver, someone_else) = (&clients[0], &clients[1]);
    let (_, strangers) = generate_with_clients(
        &hosts,
        Duration::from_secs(600),
        &["kube-apiserver".to_owned()],
    )
    .unwrap();
    let stranger = &strangers[0];

    // Without --client-ca-file (today's behaviour, kept as the default): anyone is served.
    let (_open, port) = serve(&bundle, &[]);
    tls_post_validate(port, &bundle.ca_pem, None).expect("served without client auth");

    let (_guarded, port) = serve(
        &bundle,
        &[
            "--client-ca-file={dir}/ca.crt".to_owned(),
            "--client-allowed-names=kube-apiserver".to_owned(),
        ],
    );
    let served = tls_post_validate(port, &bundle.ca_pem, Some(apiserver));
    assert!(
        served.is_ok(),
        "the API server's certificate was refused: {served:?}"
    );
    for (who, client) in [
        ("no certificate", None),
        ("a certificate from another CA", Some(stranger)),
        ("the right CA but another name", Some(someone_else)),
    ] {
        let answer = tls_post_validate(port, &bundle.ca_pem, client);
        assert!(answer.is_err(), "{who} was served: {answer:?}");
    }

    // Without allowed names, any client certificate from the CA is served, and still no other.
    let (_any_name, port) = serve(&bundle, &["--client-ca-file={dir}/ca.crt".to_owned()]);
    tls_post_validate(port, &bundle.ca_pem, Some(someone_else)).expect("any name from the CA");
    assert!(tls_post_validate(port, &bundle.ca_pem, None).is_err());
    assert!(tls_post_validate(port, &bundle.ca_pem, Some(stranger)).is_err());
}
