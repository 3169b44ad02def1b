//! Self-managed webhook certificates: a CA and a serving certificate kept in a Secret, created
//! at start and rotated well before expiry in two phases, so the API server never meets a
//! certificate it does not trust:
//!
//! 1. the leader issues the next CA and certificate, stores them beside the current ones and
//!    adds the next CA to the CA bundle (which the webhook configuration publishes);
//! 2. once the webhook configurations read back from the API server carry the next CA in every
//!    webhook's caBundle, it promotes them: every replica starts serving the new certificate,
//!    while the bundle still holds both CAs until the next rotation. Until then the current
//!    certificate keeps being served, however long it takes (a warning is logged after
//!    [`RotationParams::promote_after`]); only when no configuration can be read (a static one
//!    loaded from files) does it fall back to promoting after that fixed wait.
//!
//! Every replica serves whatever the Secret's current certificate is, reloading it without a
//! restart, but only once the live configuration trusts its CA (or the certificate in use has
//! expired). A Secret that is deleted or damaged never changes what is served or published:
//! the last good content is kept, and the leader writes it back.

use std::collections::BTreeMap;
use std::time::Duration;

use axum_server::tls_rustls::RustlsConfig;
use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
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
    /// When the live webhook configuration cannot be read: promote the next certificate this
    /// long after its CA joined the bundle. When it can: warn if it still lacks the next CA
    /// after this long (and keep serving the current certificate).
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
        let next = bundle_of(data, "next-")
            .filter(|n| certs::check_chain(n.cert_pem.as_bytes(), n.ca_pem.as_bytes()).is_ok())
            .zip(since);
        let bundle = text(data, "ca-bundle.crt").unwrap_or_else(|| current.ca_pem.clone());
        // The certificate must verify against its own CA and against the bundle published
        // for it: otherwise serving it (or publishing the bundle) would fail calls.
        certs::check_chain(current.cert_pem.as_bytes(), current.ca_pem.as_bytes()).ok()?;
        certs::check_chain(current.cert_pem.as_bytes(), bundle.as_bytes()).ok()?;
        Some(Self {
            bundle,
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
///
/// `next_trusted`: whether the live webhook configuration carries the next CA in every
/// webhook's caBundle (None: it cannot be read). The next certificate is promoted when it is
/// trusted, when it cannot be told and [`RotationParams::promote_after`] has passed, or when the
/// current certificate has expired (serving it helps nobody); never on time alone otherwise.
/// `published` is the CA bundle the live configuration carries, kept beside a freshly issued
/// CA so that replicas still serving an older certificate stay trusted.
pub fn plan(
    current: Option<&ServingSecret>,
    now: Timestamp,
    p: &RotationParams,
    next_trusted: Option<bool>,
    published: Option<&str>,
) -> crate::Result<Option<ServingSecret>> {
    let issue = || certs::generate(&p.hosts, p.validity);
    let Some(current) = current else {
        let fresh = issue()?;
        return Ok(Some(ServingSecret {
            bundle: certs::merge_bundle(&fresh.ca_pem, published.unwrap_or_default(), 2),
            current: fresh,
            next: None,
        }));
    };
    if let Some((next, since)) = &current.next {
        let waited = now.duration_since(*since).as_secs_f64() >= p.promote_after.as_secs_f64();
        let expired = certs::not_after(current.current.cert_pem.as_bytes())
            .map(|t| t <= now)
            .unwrap_or(true);
        let promote = match next_trusted {
            Some(trusted) => trusted || expired,
            None => waited || expired,
        };
        if promote {
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

/// Whether every webhook of the configurations read from the server carries every certificate
/// of `ca_pem` in its caBundle. None when there is no validating configuration (none written
/// yet, or a static one the API server loads from files): nothing can be told.
pub fn configurations_trust(
    validating: Option<&ValidatingWebhookConfiguration>,
    mutating: Option<&MutatingWebhookConfiguration>,
    ca_pem: &[u8],
) -> Option<bool> {
    let validating = validating?;
    let bundles = validating
        .webhooks
        .iter()
        .flatten()
        .map(|w| &w.client_config.ca_bundle)
        .chain(
            mutating
                .iter()
                .flat_map(|m| m.webhooks.iter().flatten())
                .map(|w| &w.client_config.ca_bundle),
        );
    let mut any = false;
    for bundle in bundles {
        any = true;
        let bundle = bundle.as_ref().map(|b| b.0.as_slice()).unwrap_or_default();
        if !certs::bundle_trusts(bundle, ca_pem) {
            return Some(false);
        }
    }
    Some(any)
}

/// [`configurations_trust`] for the configurations named `name` on the server, and the CA
/// bundle of the validating one's first webhook.
pub async fn live_trust(
    client: &kube::Client,
    name: &str,
    ca_pem: &[u8],
) -> kube::Result<(Option<bool>, Option<String>)> {
    let validating = Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .get_opt(name)
        .await?;
    let mutating = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get_opt(name)
        .await?;
    let published = validating
        .as_ref()
        .and_then(|v| {
            v.webhooks
                .as_ref()?
                .first()?
                .client_config
                .ca_bundle
                .clone()
        })
        .map(|b| String::from_utf8_lossy(&b.0).into_owned());
    Ok((
        configurations_trust(validating.as_ref(), mutating.as_ref(), ca_pem),
        published,
    ))
}

/// How often a held-back certificate is reported.
const HOLD_WARN_INTERVAL: Duration = Duration::from_secs(60);

/// Keeps the Secret current (leader only), serves its certificate (every replica) and
/// publishes the CA bundle for the webhook configuration. `configuration`: the name of the
/// webhook configurations whose caBundle gates promotion and serving (None: not managed here).
/// Never returns.
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
    configuration: Option<String>,
) {
    let api: Api<Secret> = Api::namespaced(client.clone(), &params.secret_namespace);
    let mut served: Option<String> = None;
    // The last Secret content that parsed: kept (and written back by the leader) when the
    // Secret is deleted or damaged, so nothing served or published changes meanwhile.
    let mut last_good: Option<ServingSecret> = None;
    let mut last_warned: Option<std::time::Instant> = None;
    let mut warn_now = || {
        let due = last_warned.is_none_or(|t| t.elapsed() >= HOLD_WARN_INTERVAL);
        if due {
            last_warned = Some(std::time::Instant::now());
        }
        due
    };
    let trust = async |ca_pem: &str| -> (Option<bool>, Option<String>) {
        let Some(name) = &configuration else {
            return (None, None);
        };
        match live_trust(&client, name, ca_pem.as_bytes()).await {
            Ok(found) => found,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the webhook configurations");
                // Unknown is not trusted: keep what is served.
                (Some(false), None)
            }
        }
    };
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
        let parsed = secret.as_ref().and_then(ServingSecret::from_secret);
        let restore = parsed.is_none() && last_good.is_some();
        if restore {
            tracing::warn!(
                secret = %params.secret_name,
                present = secret.is_some(),
                "the certificate Secret is missing or damaged; keeping the certificate and CA bundle in use"
            );
        }
        let mut state = parsed.or_else(|| last_good.clone());
        if *leader.borrow() {
            let next = if restore {
                Ok(state.clone())
            } else {
                let (next_trusted, published) = match state.as_ref() {
                    Some(s) => match &s.next {
                        Some((next, since)) => {
                            let (trusted, _) = trust(&next.ca_pem).await;
                            let waited = Timestamp::now().duration_since(*since).as_secs_f64()
                                >= params.promote_after.as_secs_f64();
                            if trusted == Some(false) && waited && warn_now() {
                                tracing::warn!(
                                    since = %since,
                                    "the webhook configuration does not carry the next CA yet; still serving the current certificate"
                                );
                            }
                            (trusted, None)
                        }
                        None => (None, None),
                    },
                    // A fresh CA: keep what the live configuration trusts beside it.
                    None => match &configuration {
                        Some(_) => trust("").await,
                        None => (None, None),
                    },
                };
                plan(
                    state.as_ref(),
                    Timestamp::now(),
                    &params,
                    next_trusted,
                    published.as_deref(),
                )
            };
            match next {
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
                                restored = restore,
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
        last_good = Some(state.clone());
        ca_tx.send_if_modified(|ca| {
            let changed = ca.as_slice() != state.bundle.as_bytes();
            *ca = state.bundle.clone().into_bytes();
            changed
        });
        if served.as_deref() != Some(state.current.cert_pem.as_str()) {
            if let Some(old) = &served {
                // Serve a certificate only once the API server trusts its CA, unless the one
                // in use has expired (then nothing is lost).
                let expired = certs::not_after(old.as_bytes())
                    .map(|t| t <= Timestamp::now())
                    .unwrap_or(true);
                if !expired && trust(&state.current.ca_pem).await.0 == Some(false) {
                    if warn_now() {
                        tracing::warn!(
                            "the webhook configuration does not trust the Secret's certificate yet; still serving the previous one"
                        );
                    }
                    continue;
                }
            }
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
        let first = plan(None, t0, &p, None, None)
            .unwrap()
            .expect("a fresh Secret");
        assert_eq!(first.bundle, first.current.ca_pem);
        // Round trip through the Secret form.
        let parsed = ServingSecret::from_secret(&first.to_secret("agentguard", "s")).unwrap();
        assert_eq!(parsed, first);
        // Plenty of time left: nothing to do.
        assert!(plan(Some(&first), t0, &p, None, None).unwrap().is_none());
        // Inside the rotation window: phase 1 adds the next CA, keeps serving the current cert.
        let t1 = t0 + jiff::SignedDuration::from_secs(3600 - 1200 + 1);
        let phase1 = plan(Some(&first), t1, &p, None, None)
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
        // The configuration does not carry the next CA yet: never promoted, however long it
        // takes.
        for after in [10, 31, 1000] {
            let at = t1 + jiff::SignedDuration::from_secs(after);
            assert!(
                plan(Some(&phase1), at, &p, Some(false), None)
                    .unwrap()
                    .is_none()
            );
        }
        // Unless the current certificate has expired: then serving it helps nobody.
        let at = t1 + jiff::SignedDuration::from_secs(1200);
        assert!(
            plan(Some(&phase1), at, &p, Some(false), None)
                .unwrap()
                .is_some()
        );
        // Nothing can be told (static configuration): the fixed wait.
        let at = t1 + jiff::SignedDuration::from_secs(10);
        assert!(plan(Some(&phase1), at, &p, None, None).unwrap().is_none());
        let at = t1 + jiff::SignedDuration::from_secs(31);
        assert!(plan(Some(&phase1), at, &p, None, None).unwrap().is_some());
        // Phase 2, as soon as the configuration carries the next CA: serve the new certificate;
        // both CAs stay trusted.
        let phase2 = plan(Some(&phase1), t1, &p, Some(true), None)
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
        let good = plan(None, Timestamp::now(), &p, None, None)
            .unwrap()
            .unwrap();
        let mut secret = good.to_secret("agentguard", "s");
        secret
            .data
            .as_mut()
            .unwrap()
            .insert("tls.key".into(), ByteString(b"garbage".to_vec()));
        assert!(ServingSecret::from_secret(&secret).is_none());
    }

    #[test]
    fn a_secret_whose_bundle_does_not_trust_its_certificate_is_damaged() {
        let p = params();
        let good = plan(None, Timestamp::now(), &p, None, None)
            .unwrap()
            .unwrap();
        let other = plan(None, Timestamp::now(), &p, None, None)
            .unwrap()
            .unwrap();
        for (key, value) in [
            ("ca-bundle.crt", other.current.ca_pem.clone()),
            ("ca.crt", other.current.ca_pem.clone()),
            ("tls.crt", other.current.cert_pem.clone()),
            ("ca-bundle.crt", good.current.ca_pem[..40].to_owned()),
        ] {
            let mut secret = good.to_secret("agentguard", "s");
            secret
                .data
                .as_mut()
                .unwrap()
                .insert(key.into(), ByteString(value.into_bytes()));
            assert!(ServingSecret::from_secret(&secret).is_none(), "{key}");
        }
    }

    #[test]
    fn a_fresh_ca_keeps_what_the_live_configuration_trusts() {
        let p = params();
        let old = plan(None, Timestamp::now(), &p, None, None)
            .unwrap()
            .unwrap();
        let fresh = plan(None, Timestamp::now(), &p, None, Some(&old.bundle))
            .unwrap()
            .unwrap();
        assert!(fresh.bundle.starts_with(&fresh.current.ca_pem));
        assert!(certs::bundle_trusts(
            fresh.bundle.as_bytes(),
            old.current.ca_pem.as_bytes()
        ));
    }

    #[test]
    fn trust_needs_the_ca_in_every_webhook() {
        use k8s_openapi::api::admissionregistration::v1::{
            MutatingWebhook, ValidatingWebhook, WebhookClientConfig,
        };
        let p = params();
        let a = plan(None, Timestamp::now(), &p, None, None)
            .unwrap()
            .unwrap();
        let b = plan(None, Timestamp::now(), &p, None, None)
            .unwrap()
            .unwrap();
        let config = |bundle: &str| WebhookClientConfig {
            ca_bundle: Some(ByteString(bundle.as_bytes().to_vec())),
            ..Default::default()
        };
        let validating = |bundles: &[&str]| ValidatingWebhookConfiguration {
            webhooks: Some(
                bundles
                    .iter()
                    .map(|b| ValidatingWebhook {
                        client_config: config(b),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        };
        let mutating = |bundle: &str| MutatingWebhookConfiguration {
            webhooks: Some(vec![MutatingWebhook {
                client_config: config(bundle),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let both = format!("{}{}", a.current.ca_pem, b.current.ca_pem);
        let ca = b.current.ca_pem.as_bytes();
        assert_eq!(configurations_trust(None, None, ca), None);
        let v = validating(&[&both, &both]);
        assert_eq!(configurations_trust(Some(&v), None, ca), Some(true));
        assert_eq!(
            configurations_trust(Some(&v), Some(&mutating(&both)), ca),
            Some(true)
        );
        assert_eq!(
            configurations_trust(Some(&v), Some(&mutating(&a.current.ca_pem)), ca),
            Some(false)
        );
        let v = validating(&[&both, &a.current.ca_pem]);
        assert_eq!(configurations_trust(Some(&v), None, ca), Some(false));
    }
}
