//! Certificates for the webhook's HTTPS edge: loading a serving certificate into rustls, and
//! generating a CA plus serving certificate (development, tests, and later the operator's own
//! self-managed mode).

use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::client::danger::ServerCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::error::{Error, Result};

/// A CA and a serving certificate it signed, all PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateBundle {
    pub ca_pem: String,
    /// The CA's private key (kept only by the self-managed mode, in its Secret).
    pub ca_key_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Generates a CA and a serving certificate for `hosts` (DNS names or IP addresses), valid
/// from a minute ago for `validity`.
pub fn generate(hosts: &[String], validity: std::time::Duration) -> Result<CertificateBundle> {
    Ok(generate_with_clients(hosts, validity, &[])?.0)
}

/// A client certificate (PEM) and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    pub name: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// [`generate`], plus one client certificate (extended key usage clientAuth, the name as its
/// common name and DNS name) per entry of `client_names`, signed by the same CA: the
/// certificate the API server presents to the webhook when `--client-ca-file` is that CA.
pub fn generate_with_clients(
    hosts: &[String],
    validity: std::time::Duration,
    client_names: &[String],
) -> Result<(CertificateBundle, Vec<ClientCertificate>)> {
    let now = time::OffsetDateTime::now_utc();
    let not_before = now - time::Duration::minutes(1);
    let not_after = now + validity;

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "agentguard webhook CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca_params, ca_key);

    let mut params = CertificateParams::new(hosts.to_vec())?;
    params.distinguished_name.push(
        DnType::CommonName,
        hosts.first().map(String::as_str).unwrap_or("agentguard"),
    );
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = not_before;
    params.not_after = not_after;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;

    let mut clients = Vec::new();
    for name in client_names {
        let mut params = CertificateParams::new(vec![name.clone()])?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        clients.push(ClientCertificate {
            name: name.clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        });
    }

    Ok((
        CertificateBundle {
            ca_pem: ca_cert.pem(),
            ca_key_pem,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        },
        clients,
    ))
}

/// Who may call the webhook (`--client-ca-file`, `--client-allowed-names`): a client must
/// present a certificate for client authentication that chains to `ca_pem`, and, when
/// `allowed_names` is not empty, names one of them as its common name or a DNS name. Anyone
/// else is refused during the TLS handshake, before a byte of a review is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuth {
    pub ca_pem: Vec<u8>,
    pub allowed_names: Vec<String>,
}

impl ClientAuth {
    /// Reads the CA bundle from `path`.
    pub fn from_file(path: &Path, allowed_names: Vec<String>) -> Result<Self> {
        let ca_pem = std::fs::read(path).map_err(|source| Error::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            ca_pem,
            allowed_names,
        })
    }

    fn verifier(
        &self,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Arc<dyn ClientCertVerifier>> {
        let pem_error = |detail: String| Error::Pem {
            what: "client CA".into(),
            detail,
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&self.ca_pem) {
            roots
                .add(cert.map_err(|e| pem_error(e.to_string()))?)
                .map_err(|e| pem_error(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(pem_error("no CERTIFICATE block found".into()));
        }
        let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| pem_error(e.to_string()))?;
        Ok(Arc::new(AllowedNames {
            inner,
            names: self.allowed_names.clone(),
        }))
    }
}

/// The CA's verifier, then the name check.
#[derive(Debug)]
struct AllowedNames {
    inner: Arc<dyn ClientCertVerifier>,
    names: Vec<String>,
}

/// The common names and DNS names a certificate carries.
fn certificate_names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return vec![];
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push((*dns).to_owned());
            }
        }
    }
    names
}

impl ClientCertVerifier for AllowedNames {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.names.is_empty() {
            return Ok(verified);
        }
        let names = certificate_names(end_entity);
        if names.iter().any(|n| self.names.contains(n)) {
            Ok(verified)
        } else {
            tracing::warn!(presented = ?names, allowed = ?self.names, "client certificate refused: it names none of --client-allowed-names");
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A rustls server configuration for the webhook: the ring provider, TLS 1.2 and 1.3, and
/// ALPN `h2` then `http/1.1` (the API server speaks HTTP/2 to webhooks when offered).
pub fn server_config(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<ServerConfig>> {
    server_config_with(cert_pem, key_pem, None)
}

/// [`server_config`], accepting only the clients `client_auth` allows when it is given.
pub fn server_config_with(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_auth: Option<&ClientAuth>,
) -> Result<Arc<ServerConfig>> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Pem {
            what: "certificate".into(),
            detail: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(Error::Pem {
            what: "certificate".into(),
            detail: "no CERTIFICATE block found".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| Error::Pem {
        what: "private key".into(),
        detail: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match client_auth {
        None => builder.with_no_client_auth(),
        Some(auth) => builder.with_client_cert_verifier(auth.verifier(provider)?),
    };
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// When the first certificate in `cert_pem` expires.
pub fn not_after(cert_pem: &[u8]) -> Result<jiff::Timestamp> {
    let pem_error = |detail: String| Error::Pem {
        what: "certificate".into(),
        detail,
    };
    let der = CertificateDer::pem_slice_iter(cert_pem)
        .next()
        .ok_or_else(|| pem_error("no CERTIFICATE block found".into()))?
        .map_err(|e| pem_error(e.to_string()))?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| pem_error(e.to_string()))?;
    jiff::Timestamp::from_second(cert.validity().not_after.timestamp())
        .map_err(|e| pem_error(e.to_string()))
}

/// The PEM CERTIFICATE blocks of `pem` with their DER, in order; blocks that do not parse are
/// left out.
fn certificate_blocks(pem: &str) -> Vec<(String, Vec<u8>)> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut blocks = Vec::new();
    let mut rest = pem;
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else {
            break;
        };
        let block = &rest[start..start + len + END.len()];
        if let Ok(der) = CertificateDer::from_pem_slice(block.as_bytes()) {
            blocks.push((format!("{block}\n"), der.as_ref().to_vec()));
        }
        rest = &rest[start + len + END.len()..];
    }
    blocks
}

/// Checks that `ca_pem` is a usable CA bundle for the serving certificate `cert_pem`: at least
/// one certificate, every block parses, and the certificate verifies against it for the first
/// name it carries (signature, validity, usage), as the API server will verify it. Catches a
/// half-written or mismatched Secret before anything of it is served or published.
pub fn check_chain(cert_pem: &[u8], ca_pem: &[u8]) -> Result<()> {
    let pem_error = |detail: String| Error::Pem {
        what: "CA bundle".into(),
        detail,
    };
    let cas = CertificateDer::pem_slice_iter(ca_pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| pem_error(e.to_string()))?;
    if cas.is_empty() {
        return Err(pem_error("no CERTIFICATE block found".into()));
    }
    let mut chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| pem_error(e.to_string()))?;
    if chain.is_empty() {
        return Err(pem_error(
            "the serving certificate has no CERTIFICATE block".into(),
        ));
    }
    let leaf = chain.remove(0);
    let name = {
        let (_, parsed) =
            x509_parser::parse_x509_certificate(&leaf).map_err(|e| pem_error(e.to_string()))?;
        let mut name = None;
        if let Ok(Some(san)) = parsed.subject_alternative_name() {
            for general in &san.value.general_names {
                use x509_parser::extensions::GeneralName;
                let candidate = match general {
                    GeneralName::DNSName(dns) => ServerName::try_from((*dns).to_owned()).ok(),
                    GeneralName::IPAddress(ip) => match ip.len() {
                        4 => Some(ServerName::IpAddress(
                            std::net::IpAddr::from(<[u8; 4]>::try_from(*ip).unwrap_or_default())
                                .into(),
                        )),
                        16 => Some(ServerName::IpAddress(
                            std::net::IpAddr::from(<[u8; 16]>::try_from(*ip).unwrap_or_default())
                                .into(),
                        )),
                        _ => None,
                    },
                    _ => None,
                };
                if candidate.is_some() {
                    name = candidate;
                    break;
                }
            }
        }
        name.ok_or_else(|| pem_error("the serving certificate names no DNS name or IP".into()))?
    };
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        roots
            .add(ca)
            .map_err(|e| pem_error(format!("not a usable CA: {e}")))?;
    }
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| pem_error(e.to_string()))?;
    verifier
        .verify_server_cert(&leaf, &chain, &name, &[], UnixTime::now())
        .map_err(|e| pem_error(format!("the serving certificate does not verify: {e}")))?;
    Ok(())
}

/// Whether `bundle_pem` holds every certificate of `ca_pem` (compared as DER); false when
/// `ca_pem` holds none.
pub fn bundle_trusts(bundle_pem: &[u8], ca_pem: &[u8]) -> bool {
    let bundle = certificate_blocks(&String::from_utf8_lossy(bundle_pem));
    let cas = certificate_blocks(&String::from_utf8_lossy(ca_pem));
    !cas.is_empty()
        && cas
            .iter()
            .all(|(_, ca)| bundle.iter().any(|(_, b)| b == ca))
}

/// The CA bundle to publish when the CA in force becomes `current_pem`: its certificates first,
/// then the certificates of `previous_pem` it lacks (deduplicated, expired ones dropped), at
/// most `keep_previous` of them. Keeping the previous CA is what lets a replica still serving
/// a certificate it signed be trusted while the new one reaches every replica.
pub fn merge_bundle(current_pem: &str, previous_pem: &str, keep_previous: usize) -> String {
    let current = certificate_blocks(current_pem);
    let now = jiff::Timestamp::now();
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for block in current {
        if !out.iter().any(|(_, d)| *d == block.1) {
            out.push(block);
        }
    }
    let mut kept = 0;
    for block in certificate_blocks(previous_pem) {
        if kept == keep_previous {
            break;
        }
        let expired = not_after(block.0.as_bytes()).is_ok_and(|t| t <= now);
        if expired || out.iter().any(|(_, d)| *d == block.1) {
            continue;
        }
        out.push(block);
        kept += 1;
    }
    out.into_iter().map(|(pem, _)| pem).collect()
}

/// [`server_config_with`] from PEM files.
pub fn server_config_from_files(
    cert: &Path,
    key: &Path,
    client_auth: Option<&ClientAuth>,
) -> Result<Arc<ServerConfig>> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| Error::ReadFile {
            path: path.to_owned(),
            source,
        })
    };
    server_config_with(&read(cert)?, &read(key)?, client_auth)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_bundle_loads_into_rustls_with_alpn() {
        let bundle = generate(
            &["127.0.0.1".into(), "localhost".into()],
            std::time::Duration::from_secs(3600),
        )
        .unwrap();
        assert!(bundle.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let config = server_config(bundle.cert_pem.as_bytes(), bundle.key_pem.as_bytes()).unwrap();
        assert_eq!(
            config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    #[test]
    fn expiry_is_read_from_the_certificate() {
        let before = jiff::Timestamp::now();
        let bundle = generate(&["127.0.0.1".into()], std::time::Duration::from_secs(3600)).unwrap();
        let expiry = not_after(bundle.cert_pem.as_bytes()).unwrap();
        let secs = expiry.as_second() - before.as_second();
        assert!((3599..=3601).contains(&secs), "{secs}");
    }

    #[test]
    fn garbage_pem_is_a_clear_error() {
        let err = server_config(b"not a certificate", b"nor a key").unwrap_err();
        assert!(err.to_string().contains("certificate"), "{err}");
    }

    #[test]
    fn bundles_merge_keep_one_previous_ca_and_check_chains() {
        let hosts = ["127.0.0.1".to_owned()];
        let hour = std::time::Duration::from_secs(3600);
        let (a, b, c) = (
            generate(&hosts, hour).unwrap(),
            generate(&hosts, hour).unwrap(),
            generate(&hosts, hour).unwrap(),
        );
        let ab = merge_bundle(&b.ca_pem, &a.ca_pem, 1);
        assert!(bundle_trusts(ab.as_bytes(), a.ca_pem.as_bytes()));
        assert!(bundle_trusts(ab.as_bytes(), b.ca_pem.as_bytes()));
        assert!(ab.starts_with(&b.ca_pem));
        // Same CA again: nothing doubles.
        assert_eq!(merge_bundle(&b.ca_pem, &ab, 1), ab);
        // A third CA drops the oldest.
        let cb = merge_bundle(&c.ca_pem, &ab, 1);
        assert!(bundle_trusts(cb.as_bytes(), c.ca_pem.as_bytes()));
        assert!(bundle_trusts(cb.as_bytes(), b.ca_pem.as_bytes()));
        assert!(!bundle_trusts(cb.as_bytes(), a.ca_pem.as_bytes()));
        assert!(!bundle_trusts(cb.as_bytes(), b"garbage"));
        // Chains: right CA, wrong CA, damaged CA.
        check_chain(a.cert_pem.as_bytes(), a.ca_pem.as_bytes()).unwrap();
        check_chain(a.cert_pem.as_bytes(), ab.as_bytes()).unwrap();
        assert!(check_chain(a.cert_pem.as_bytes(), b.ca_pem.as_bytes()).is_err());
        assert!(check_chain(a.cert_pem.as_bytes(), b"").is_err());
        let cut = &a.ca_pem[..a.ca_pem.len() / 2];
        assert!(check_chain(a.cert_pem.as_bytes(), cut.as_bytes()).is_err());
    }
}
