//! Self-managed webhook certificates: a CA and a serving certificate kept in a Secret, created
//! at start and rotated well before expiry in two phases, so the API server never meets a
//! certificate it does not trust:
//!
//! 1. the leader issues the next CA and certificate, stores them beside the current ones and
//!    adds the next CA to the CA bundle (which the webhook configuration publishes);
//! 2. after [`RotationParams::promote_after`] it promotes them: every replica starts serving
//!    the new certificate, while the bundle still holds both CAs until the next rotation.
//!
//! Every replica serves whatever the Secret's current certificate is, reloading it without a
//! restart.

use std::collections::BTreeMap;
use std::time::Duration;

use axum_server::tls_rustls::RustlsConfig;
use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta};
use tokio::sync::watch;

use crate::certs::{self, CertificateBundle};
use crate::index::Readiness;
use crate::metrics::Metrics;

/// Readiness gate: a certificate from the Secret is being served.
pub const CERTIFICATES_GATE: &str = "certificates";
const NEXT_SINCE_ANNOTATION: &str = "agentguard.dev/next-since";
const SYNC_INTERVAL: Duration = Duration::from_secs(3);

/// How certificates are issued and rotated.
#[derive(Debug, Clone, PartialEq)]
pub struct RotationParams {
    pub secret_namespace: String,
    pub secret_name: String,
    /// SANs of the serving certificate (DNS names or IPs).
    pub hosts: Vec<String>,
    pub validity: Duration,
    /// Start a rotation when the serving certificate has less than this left.
    pub rotate_before: Duration,
    /// Promote the next certificate this long after its CA joined the bundle.
    pub promote_after: Duration,
}

/// The Secret's content, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct ServingSecret {
    pub current: CertificateBundle,
    /// PEM CAs the API server should trust.
    pub bundle: String,
    pub next: Option<(CertificateBundle, Timestamp)>,
}

fn text(data: &BTreeMap<String, ByteString>, key: &str) -> Option<String> {
    data.get(key)
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
        .filter(|s| !s.is_empty())
}

fn bundle_of(data: &BTreeMap<String, ByteString>, prefix: &str) -> Option<CertificateBundle> {
    Some(CertificateBundle {
        ca_pem: text(data, &format!("{prefix}ca.crt"))?,
        ca_key_pem: text(data, &format!("{prefix}ca.key"))?,
        cert_pem: text(data, &format!("{prefix}tls.crt"))?,
        key_pem: text(data, &format!("{prefix}tls.key"))?,
    })
}

impl ServingSecret {
    /// Reads a Secret written by [`ServingSecret::to_secret`]; None when it is not one (or is
    /// damaged), which makes the leader issue a fresh one.
    pub fn from_secret(secret: &Secret) -> Option<Self> {
        let data = secret.data.as_ref()?;
        let current = bundle_of(data, "")?;
        certs::server_config(current.cert_pem.as_bytes(), current.key_pem.as_bytes()).ok()?;
        let since = secret
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(NEXT_SINCE_ANNOTATION))
            .and_then(|t| t.parse().ok());
        let next = bundle_of(data, "next-").zip(since);
        Some(Self {
            bundle: text(data, "ca-bundle.crt").unwrap_or_else(|| current.ca_pem.clone()),
            current,
            next,
        })
    }

    pub fn to_secret(&self, namespace: &str, name: &str) -> Secret {
        let mut data = BTreeMap::new();
        let mut put = |prefix: &str, b: &CertificateBundle| {
            for (key, value) in [
                ("ca.crt", &b.ca_pem),
                ("ca.key", &b.ca_key_pem),
                ("tls.crt", &b.cert_pem),
                ("tls.key", &b.key_pem),
            ] {
                data.insert(
                    format!("{prefix}{key}"),
                    ByteString(value.clone().into_bytes()),
                );
            }
        };
        put("", &self.current);
        if let Some((next, _)) = &self.next {
            put("next-", next);
        }
        data.insert(
            "ca-bundle.crt".into(),
            ByteString(self.bundle.clone().into_bytes()),
        );
        Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                annotations: self.next.as_ref().map(|(_, since)| {
                    [(NEXT_SINCE_ANNOTATION.to_owned(), since.to_string())].into()
                }),
                labels: Some(
                    [(
                        "app.kubernetes.io/managed-by".to_owned(),
                        "agentguard".to_owned(),
                    )]
                    .into(),
                ),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(data),
            ..Default::default()
        }
    }
}

/// The next state of the Secret, if it must change. Pure apart from key generation.
pub fn plan(
    current: Option<&ServingSecret>,
    now: Timestamp,
    p: &RotationParams,
) -> crate::Result<Option<ServingSecret>> {
    let issue = || certs::generate(&p.hosts, p.validity);
    let Some(current) = current else {
        let fresh = issue()?;
        return Ok(Some(ServingSecret {
            bundle: fresh.ca_pem.clone(),
            current: fresh,
            next: None,
        }));
    };
    if let Some((next, since)) = &current.next {
        if now.duration_since(*since).as_secs_f64() >= p.promote_after.as_secs_f64() {
            return Ok(Some(ServingSecret {
                // Keep the old CA in the bundle: replicas switch over one by one.
                bundle: format!("{}{}", next.ca_pem, current.current.ca_pem),
                current: next.clone(),
                next: None,
            }));
        }
        return Ok(None);
    }
    let expires = certs::not_after(current.current.cert_pem.as_bytes())?;
    if expires.duration_since(now).as_secs_f64() > p.rotate_before.as_secs_f64() {
        return Ok(None);
    }
    let next = issue()?;
    Ok(Some(ServingSecret {
        bundle: format!("{}{}", current.current.ca_pem, next.ca_pem),
        current: current.current.clone(),
        next: Some((next, now)),
    }))
}

/// Keeps the Secret current (leader only), serves its certificate (every replica) and
/// publishes the CA bundle for the webhook configuration. Never returns.
// The client CA is the one setting here that is not about issuing: it shapes every TLS
// configuration this task loads.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    client: kube::Client,
    params: RotationParams,
    tls: RustlsConfig,
    ca_tx: watch::Sender<Vec<u8>>,
    leader: watch::Receiver<bool>,
    readiness: Readiness,
    metrics: Metrics,
    client_auth: Option<certs::ClientAuth>,
) {
    let api: Api<Secret> = Api::namespaced(client, &params.secret_namespace);
    let mut served: Option<String> = None;
    let mut tick = tokio::time::interval(SYNC_INTERVAL);
    loop {
        tick.tick().await;
        let secret = match api.get_opt(&params.secret_name).await {
            Ok(s) => s,
            Err(err) => {
                tracing::warn!(error = %err, secret = %params.secret_name, "cannot read the certificate Secret");
                continue;
            }
        };
        let mut state = secret.as_ref().and_then(ServingSecret::from_secret);
        if *leader.borrow() {
            match plan(state.as_ref(), Timestamp::now(), &params) {
                Ok(None) => {}
                Ok(Some(next)) => {
                    let object = next.to_secret(&params.secret_namespace, &params.secret_name);
                    // Cancelled if leadership ends while the write is in flight.
                    let written = super::leader::while_leading(
                        &leader,
                        super::write_secret(&api, secret.as_ref(), object),
                    )
                    .await;
                    match written {
                        None => tracing::info!(
                            "leadership ended: the certificate Secret was not written"
                        ),
                        Some(Ok(_)) => {
                            tracing::info!(
                                rotating = next.next.is_some(),
                                "certificate Secret updated"
                            );
                            state = Some(next);
                        }
                        Some(Err(err)) => {
                            tracing::warn!(error = %err, "cannot write the certificate Secret; retrying")
                        }
                    }
                }
                Err(err) => tracing::error!(error = %err, "cannot issue certificates"),
            }
        }
        let Some(state) = state else { continue };
        ca_tx.send_if_modified(|ca| {
            let changed = ca.as_slice() != state.bundle.as_bytes();
            *ca = state.bundle.clone().into_bytes();
            changed
        });
        if served.as_deref() != Some(state.current.cert_pem.as_str()) {
            match certs::server_config_with(
                state.current.cert_pem.as_bytes(),
                state.current.key_pem.as_bytes(),
                client_auth.as_ref(),
            ) {
                Ok(config) => {
                    tls.reload_from_config(config);
                    if let Ok(expiry) = certs::not_after(state.current.cert_pem.as_bytes()) {
                        metrics.set_certificate_expiry(expiry.as_second());
                        tracing::info!(%expiry, "serving certificate loaded from the Secret");
                    }
                    served = Some(state.current.cert_pem.clone());
                    readiness.synced(CERTIFICATES_GATE);
                }
                Err(err) => {
                    tracing::error!(error = %err, "the Secret's certificate is unusable; keeping the old one")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> RotationParams {
        RotationParams {
            secret_namespace: "agentguard".into(),
            secret_name: "agentguard-webhook-tls".into(),
            hosts: vec!["127.0.0.1".into()],
            validity: Duration::from_secs(3600),
            rotate_before: Duration::from_secs(1200),
            promote_after: Duration::from_secs(30),
        }
    }

    #[test]
    fn issue_then_rotate_in_two_phases() {
        let p = params();
        let t0 = Timestamp::now();
        let first = plan(None, t0, &p).unwrap().expect("a fresh Secret");
        assert_eq!(first.bundle, first.current.ca_pem);
        // Round trip through the Secret form.
        let parsed = ServingSecret::from_secret(&first.to_secret("agentguard", "s")).unwrap();
        assert_eq!(parsed, first);
        // Plenty of time left: nothing to do.
        assert!(plan(Some(&first), t0, &p).unwrap().is_none());
        // Inside the rotation window: phase 1 adds the next CA, keeps serving the current cert.
        let t1 = t0 + jiff::SignedDuration::from_secs(3600 - 1200 + 1);
        let phase1 = plan(Some(&first), t1, &p)
            .unwrap()
            .expect("rotation starts");
        assert_eq!(phase1.current, first.current);
        let (next, since) = phase1.next.clone().unwrap();
        assert_eq!(since, t1);
        assert!(
            phase1.bundle.contains(&first.current.ca_pem) && phase1.bundle.contains(&next.ca_pem)
        );
        let parsed = ServingSecret::from_secret(&phase1.to_secret("agentguard", "s")).unwrap();
        assert_eq!(parsed.next.as_ref().map(|(n, _)| n), Some(&next));
        // Not yet time to promote.
        assert!(
            plan(Some(&phase1), t1 + jiff::SignedDuration::from_secs(10), &p)
                .unwrap()
                .is_none()
        );
        // Phase 2: serve the new certificate; both CAs stay trusted.
        let phase2 = plan(Some(&phase1), t1 + jiff::SignedDuration::from_secs(31), &p)
            .unwrap()
            .unwrap();
        assert_eq!(phase2.current, next);
        assert!(phase2.next.is_none());
        assert!(
            phase2.bundle.contains(&first.current.ca_pem) && phase2.bundle.contains(&next.ca_pem)
        );
    }

    #[test]
    fn a_damaged_secret_is_not_trusted() {
        let p = params();
        let good = plan(None, Timestamp::now(), &p).unwrap().unwrap();
        let mut secret = good.to_secret("agentguard", "s");
        secret
            .data
            .as_mut()
            .unwrap()
            .insert("tls.key".into(), ByteString(b"garbage".to_vec()));
        assert!(ServingSecret::from_secret(&secret).is_none());
    }
}
