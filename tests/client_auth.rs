//! `--client-ca-file` and `--client-allowed-names`: the webhook serves only the API server's
//! client certificate. Real binary, real TLS handshakes: a caller without a certificate, with
//! one from another CA, or with one from the right CA that names someone else gets no HTTP
//! answer at all (refused during the handshake, before a byte of a review is read); the right
//! certificate is served.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentguard::certs::{ClientCertificate, generate_with_clients};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};

mod support;

use support::{free_port, http_status};

/// POSTs a tiny body to /validate over TLS, presenting `client` if given. Ok(status line) when
/// the server answered over HTTP, Err(what failed) otherwise.
fn call(port: u16, ca_pem: &str, client: Option<&ClientCertificate>) -> Result<String, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some(c) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(c.cert_pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut sock = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    let body = "{}";
    tls.write_all(
        format!(
            "POST /validate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    tls.flush().map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    match tls.read_to_end(&mut answer) {
        Ok(_) => {}
        Err(e) if answer.is_empty() => return Err(e.to_string()),
        Err(_) => {}
    }
    let text = String::from_utf8_lossy(&answer);
    match text.lines().next() {
        Some(line) if line.starts_with("HTTP/1.1 ") => Ok(line.to_owned()),
        _ => Err(format!("no HTTP answer: {text:?}")),
    }
}

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
    let (webhook, metrics) = (free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_agentguard"))
        .args(["run", "--webhook-addr", &format!("127.0.0.1:{webhook}")])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics}")])
        .arg(format!(
            "--tls-cert-file={}",
            dir.path().join("tls.crt").display()
        ))
        .arg(format!(
            "--tls-key-file={}",
            dir.path().join("tls.key").display()
        ))
        .args([
            "--manage-webhook-configuration=false",
            "--leader-election=false",
        ])
        .args(
            extra
                .iter()
                .map(|a| a.replace("{dir}", &dir.path().display().to_string())),
        )
        // No API server is needed to serve TLS; the watches just retry.
        .env("KUBECONFIG", support::dead_kubeconfig(dir.path()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server { child, _dir: dir };
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_status(metrics, "/healthz") != Some(200) {
        assert!(Instant::now() < deadline, "agentguard did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
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
    call(port, &bundle.ca_pem, None).expect("served without client auth");

    let (_guarded, port) = serve(
        &bundle,
        &[
            "--client-ca-file={dir}/ca.crt".to_owned(),
            "--client-allowed-names=kube-apiserver".to_owned(),
        ],
    );
    let served = call(port, &bundle.ca_pem, Some(apiserver));
    assert!(
        served.is_ok(),
        "the API server's certificate was refused: {served:?}"
    );
    for (who, client) in [
        ("no certificate", None),
        ("a certificate from another CA", Some(stranger)),
        ("the right CA but another name", Some(someone_else)),
    ] {
        let answer = call(port, &bundle.ca_pem, client);
        assert!(answer.is_err(), "{who} was served: {answer:?}");
    }

    // Without allowed names, any client certificate from the CA is served, and still no other.
    let (_any_name, port) = serve(&bundle, &["--client-ca-file={dir}/ca.crt".to_owned()]);
    call(port, &bundle.ca_pem, Some(someone_else)).expect("any name from the CA");
    assert!(call(port, &bundle.ca_pem, None).is_err());
    assert!(call(port, &bundle.ca_pem, Some(stranger)).is_err());
}
