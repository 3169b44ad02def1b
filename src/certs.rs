//! Certificates for the webhook's HTTPS edge: loading a serving certificate into rustls, and
//! generating a CA plus serving certificate (development, tests, and later the operator's own
//! self-managed mode).

use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

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

    Ok(CertificateBundle {
        ca_pem: ca_cert.pem(),
        ca_key_pem,
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A rustls server configuration for the webhook: the ring provider, TLS 1.2 and 1.3, and
/// ALPN `h2` then `http/1.1` (the API server speaks HTTP/2 to webhooks when offered).
pub fn server_config(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<ServerConfig>> {
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
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
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

/// [`server_config`] from PEM files.
pub fn server_config_from_files(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| Error::ReadFile {
            path: path.to_owned(),
            source,
        })
    };
    server_config(&read(cert)?, &read(key)?)
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
}
