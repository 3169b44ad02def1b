//! Wiring for `agentguard run`: builds the admission state, binds both listeners, reloads the
//! serving certificate when its files change, and shuts down gracefully on SIGTERM.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum_server::Handle;
use axum_server::accept::{DefaultAcceptor, NoDelayAcceptor};
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};

use crate::certs;
use crate::connection::{self, DeadlineAcceptor, Deadlines};
use crate::error::{Error, Result};
use crate::index::{self, BlockLedger, Readiness, SharedObjects, SharedSnapshot};
use crate::metrics::Metrics;
use crate::operator;
use crate::operator::annotated_kinds::{self, RecordParams};
use crate::operator::approval_keys::{self, KeyParams};
use crate::operator::certificates::{self, RotationParams};
use crate::operator::static_config;
use crate::operator::webhook_config::{self, WebhookParams};
use crate::policy::Snapshot;
use crate::policy::{AgentDefinition, AgentMatcher};
use crate::webhook::{self, AdmissionState};

/// How often the serving certificate files are checked for changes (Secret volume updates,
/// cert-manager renewals), and a new certificate's CA is looked for in the live configuration.
const CERT_RELOAD_INTERVAL: Duration = Duration::from_secs(3);
/// A client must finish the TLS handshake within this time (its requests are timed by
/// [`connection::Deadlines`]).
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// In-flight reviews get this long to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long the exit waits for the lease to be released (the release call has its own deadline).
const LEASE_RELEASE_WAIT: Duration = Duration::from_secs(6);

/// Everything `agentguard run` needs, already parsed.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub webhook_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub tls: TlsSource,
    /// PEM CA bundle for the webhook configuration when certificates come from files.
    pub ca_file: Option<PathBuf>,
    pub agents: AgentDefinition,
    /// Kinds (group, kind) on which the `agentguard.dev/protected` annotation is honoured and
    /// which are indexed for cascade checks even when no policy targets them.
    pub annotation_kinds: Vec<(String, String)>,
    pub max_review_bytes: usize,
    /// On SIGTERM: how long reviews are still answered while `/readyz` says not ready.
    pub shutdown_delay: Duration,
    /// How long the replica may judge with state it cannot refresh before it is unready and
    /// refuses agents' guarded writes.
    pub max_staleness: Duration,
    /// Write PolicyReports (leader only).
    pub policy_reports: bool,
    /// How long a DeletionRequest stays Pending before it expires.
    pub request_ttl: std::time::Duration,
    /// Manage the ValidatingWebhookConfiguration with these parameters (None: someone else does).
    pub webhook_configuration: Option<WebhookParams>,
    /// Lease (namespace, name) for leader election; None: this replica always leads.
    pub lease: Option<(String, String)>,
    /// The Secret holding the keys approvals are sealed with.
    pub approval_keys: KeyParams,
    /// The ConfigMap recording kinds learned from the `agentguard.dev/protected` annotation.
    pub annotated_kinds: RecordParams,
    /// Serve only clients with a certificate from this CA and these names (the API server's,
    /// given to it by its AdmissionConfiguration's kubeConfigFile). None: any client.
    pub client_auth: Option<certs::ClientAuth>,
}

/// Where the serving certificate comes from.
#[derive(Debug, Clone)]
pub enum TlsSource {
    /// PEM files (e.g. mounted by cert-manager), reloaded when they change.
    Files { cert: PathBuf, key: PathBuf },
    /// Self-managed: a CA and certificate in a Secret, issued and rotated by the leader.
    Secret(RotationParams),
}

/// Installs ring as the process-wide rustls provider. kube-client panics when more than one
/// provider is compiled in and none is chosen, so the choice is made once, explicitly.
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub async fn run(config: RunConfig) -> Result<()> {
    install_crypto_provider();
    let metrics = Metrics::new();
    let mut gates = vec![
        index::POLICIES_GATE,
        index::OBJECTS_GATE,
        approval_keys::APPROVAL_KEYS_GATE,
    ];
    if matches!(config.tls, TlsSource::Secret(_)) {
        gates.push(certificates::CERTIFICATES_GATE);
    }
    let readiness = Readiness::waiting_for(&gates).with_max_staleness(config.max_staleness);
    let agents = AgentMatcher::new(&config.agents)?;
    let snapshot = SharedSnapshot::new(Snapshot::new(agents.clone(), Default::default(), vec![]));
    let ledger = BlockLedger::default();
    let objects = SharedObjects::default();
    let state = Arc::new(AdmissionState {
        snapshot: snapshot.clone(),
        objects: objects.clone(),
        metrics: metrics.clone(),
        ledger: ledger.clone(),
    });
    let client = kube::Client::try_default().await.map_err(Error::Kube)?;

    let tls = RustlsConfig::from_config(match &config.tls {
        TlsSource::Files { cert, key } => {
            let loaded = certs::server_config_from_files(cert, key, config.client_auth.as_ref())?;
            record_expiry(&metrics, cert);
            loaded
        }
        // Until the Secret's certificate is loaded, serve a throwaway one nobody trusts; the
        // replica is not ready meanwhile.
        TlsSource::Secret(params) => {
            let placeholder = certs::generate(&params.hosts, std::time::Duration::from_secs(3600))?;
            certs::server_config_with(
                placeholder.cert_pem.as_bytes(),
                placeholder.key_pem.as_bytes(),
                config.client_auth.as_ref(),
            )?
        }
    });
    let webhook_listener = bind(config.webhook_addr)?;
    let metrics_listener = bind(config.metrics_addr)?;
    tracing::info!(webhook = %config.webhook_addr, metrics = %config.metrics_addr, "listening");

    let handle: Handle<SocketAddr> = Handle::new();
    // TCP_NODELAY: the API server sends reviews over kept-alive connections (HTTP/1.1 to a
    // Service webhook, HTTP/2 to a URL on loopback); without it, Nagle's algorithm meets
    // delayed ACKs and the slowest 1% of reviews wait ~40 ms (measured by
    // benches/validate_tls.rs).
    // Connections close on connection::Deadlines, never sooner: hyper's header timeout also
    // runs while a kept-alive connection is idle, and closing one the API server is about to
    // reuse fails the review it writes into it.
    let acceptor = DeadlineAcceptor::new(
        RustlsAcceptor::new(tls.clone())
            .handshake_timeout(TLS_HANDSHAKE_TIMEOUT)
            .acceptor(NoDelayAcceptor::new()),
        Deadlines::default(),
    );
    let mut https = axum_server::from_tcp(webhook_listener)
        .map_err(|source| Error::Bind {
            addr: config.webhook_addr,
            source,
        })?
        .acceptor(acceptor)
        .handle(handle.clone());
    https.http_builder().http1().header_read_timeout(None);
    let mut http = axum_server::from_tcp(metrics_listener)
        .map_err(|source| Error::Bind {
            addr: config.metrics_addr,
            source,
        })?
        .acceptor(DeadlineAcceptor::new(
            DefaultAcceptor::new(),
            Deadlines::default(),
        ))
        .handle(handle.clone());
    http.http_builder().http1().header_read_timeout(None);

    let annotated = index::AnnotatedKinds::new(Some(client.clone()));
    let admission = webhook::admission_router(state, config.max_review_bytes)
        .merge(static_config::probe_router())
        .merge(webhook::annotate_router(
            annotated.clone(),
            config.max_review_bytes,
        ))
        .layer(axum::middleware::from_fn_with_state(
            readiness.clone(),
            connection::close_when_draining,
        ));
    tokio::spawn(annotated_kinds::run(
        client.clone(),
        annotated.clone(),
        config.annotated_kinds.clone(),
        metrics.clone(),
    ));
    let ops = webhook::ops_router(metrics.clone(), readiness.clone()).layer(
        axum::middleware::from_fn_with_state(readiness.clone(), connection::close_when_draining),
    );

    // Turns true on SIGTERM: the leader steps down and releases its lease at once.
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    tokio::spawn(shutdown_on_signal(
        handle,
        readiness.clone(),
        config.shutdown_delay,
        stopping_tx,
    ));
    // Ready only after the first full sync of policies, agents and protected objects.
    let (health_tx, health_rx) = tokio::sync::watch::channel(Vec::new());
    let (kinds_tx, kinds_rx) = tokio::sync::watch::channel(Default::default());
    let (keys_tx, keys_rx) = tokio::sync::watch::channel(Default::default());
    tokio::spawn(index::run(
        client.clone(),
        agents,
        snapshot.clone(),
        objects.clone(),
        readiness.clone(),
        index::Feeds {
            health: health_tx,
            kinds: kinds_tx,
            keys: keys_rx,
        },
    ));
    tokio::spawn(index::run_objects(
        client.clone(),
        config.annotation_kinds.clone(),
        annotated.subscribe(),
        kinds_rx,
        objects.clone(),
        snapshot.clone(),
        readiness.clone(),
        metrics.clone(),
    ));
    let (leader, election) = match config.lease.clone() {
        Some((namespace, name)) => {
            let (tx, rx) = tokio::sync::watch::channel(false);
            let identity = std::env::var("POD_NAME")
                .unwrap_or_else(|_| format!("{}-{}", hostname(), std::process::id()));
            let election = tokio::spawn(operator::leader::run(
                client.clone(),
                namespace,
                name,
                identity,
                tx,
                stopping,
            ));
            (rx, Some(election))
        }
        None => (tokio::sync::watch::channel(true).1, None),
    };
    tokio::spawn(approval_keys::run(
        client.clone(),
        config.approval_keys.clone(),
        keys_tx,
        leader.clone(),
        readiness.clone(),
    ));
    let (ca_tx, ca_rx) = tokio::sync::watch::channel(Vec::new());
    // The configurations whose caBundle must carry a CA before a certificate it signed is
    // served (None: someone else manages them, nothing to wait for).
    let trusted_by = config
        .webhook_configuration
        .as_ref()
        .map(|p| p.configuration_name.clone());
    match config.tls.clone() {
        TlsSource::Files { cert, key } => {
            if let Some(ca_file) = &config.ca_file {
                let ca = std::fs::read(ca_file).map_err(|source| Error::ReadFile {
                    path: ca_file.clone(),
                    source,
                })?;
                // A restart in the middle of a CA rotation must not drop the CA that replicas
                // whose volume is not updated yet still serve: keep the previous CA the live
                // configuration carries beside the file's (as a rotation seen live does).
                let published = match &trusted_by {
                    Some(name) => certificates::live_trust(&client, name, &ca)
                        .await
                        .ok()
                        .and_then(|(_, published)| published),
                    None => None,
                };
                let ca = match published {
                    Some(published) => {
                        let merged =
                            certs::merge_bundle(&String::from_utf8_lossy(&ca), &published, 1);
                        // Only when the file's CA parsed (and so is in the merge).
                        if certs::bundle_trusts(merged.as_bytes(), &ca) {
                            merged.into_bytes()
                        } else {
                            ca
                        }
                    }
                    None => ca,
                };
                ca_tx.send_replace(ca);
            }
            tokio::spawn(reload_certificates(
                ReloadFiles {
                    cert,
                    key,
                    ca: config.ca_file.clone(),
                },
                tls,
                ca_tx,
                trusted_by.map(|name| (client.clone(), name)),
                config.client_auth.clone(),
                metrics.clone(),
            ));
        }
        TlsSource::Secret(params) => {
            tokio::spawn(certificates::run(
                client.clone(),
                params,
                tls,
                ca_tx,
                leader.clone(),
                readiness.clone(),
                metrics.clone(),
                config.client_auth.clone(),
                trusted_by,
            ));
        }
    }
    tokio::spawn(index::run_freshness(
        client.clone(),
        readiness.clone(),
        objects.clone(),
        metrics.clone(),
    ));
    tokio::spawn(index::watch_handles::run_snapshot_handles(
        client.clone(),
        objects.clone(),
        readiness.clone(),
    ));
    tokio::spawn(operator::pin_volumes(
        client.clone(),
        snapshot.clone(),
        objects.clone(),
        leader.clone(),
    ));
    tokio::spawn(operator::requests::run(
        client.clone(),
        metrics.clone(),
        leader.clone(),
        config.request_ttl,
        std::env::var("POD_NAME").ok(),
    ));
    let postures = operator::posture::Postures::default();
    tokio::spawn(operator::posture::run(
        client.clone(),
        objects.clone(),
        metrics.clone(),
        postures.clone(),
    ));
    if config.policy_reports {
        let (client, objects, leading) = (client.clone(), objects.clone(), leader.clone());
        tokio::spawn(operator::leader::lead(leader.clone(), move || {
            operator::reports::run(
                client.clone(),
                objects.clone(),
                postures.clone(),
                leading.clone(),
            )
        }));
    }
    let (checked_configuration, checked_configuration_rx) = tokio::sync::watch::channel(
        config
            .webhook_configuration
            .as_ref()
            .map(|p| p.configuration_name.clone()),
    );
    if let Some(params) = config.webhook_configuration.clone() {
        // The managed configuration runs only while no static one (loaded from files by the
        // API server) is in force.
        let start_managed = {
            let (client, params, kinds, recorded) = (
                client.clone(),
                params.clone(),
                config.annotation_kinds.clone(),
                annotated.subscribe(),
            );
            let (snapshot, objects, leader) = (snapshot.clone(), objects.clone(), leader.clone());
            let readiness = readiness.clone();
            move || {
                // Only a leader writes the configuration: a pass in flight when leadership
                // ends is cancelled with it.
                let (client, params, kinds, recorded, snapshot, objects, leading, ca_rx) = (
                    client.clone(),
                    params.clone(),
                    kinds.clone(),
                    recorded.clone(),
                    snapshot.clone(),
                    objects.clone(),
                    leader.clone(),
                    ca_rx.clone(),
                );
                let readiness = readiness.clone();
                tokio::spawn(operator::leader::lead(leader.clone(), move || {
                    webhook_config::reconcile(
                        client.clone(),
                        params.clone(),
                        kinds.clone(),
                        recorded.clone(),
                        snapshot.clone(),
                        objects.clone(),
                        leading.clone(),
                        ca_rx.clone(),
                        readiness.clone(),
                    )
                }))
            }
        };
        let (in_force, mut in_force_rx) = tokio::sync::watch::channel(None);
        // Policy status checks routes in the managed configuration; the static one cannot be
        // read through the API, so while it is in force there is nothing to check.
        let name = params.configuration_name.clone();
        let checked = checked_configuration.clone();
        tokio::spawn(async move {
            while in_force_rx.changed().await.is_ok() {
                let now = *in_force_rx.borrow_and_update();
                checked.send_if_modified(|checked| {
                    let want = (now != Some(static_config::InForce::Static)).then(|| name.clone());
                    let changed = *checked != want;
                    *checked = want;
                    changed
                });
            }
        });
        tokio::spawn(static_config::supervise(
            client.clone(),
            params.own_namespace.clone(),
            params.configuration_name.clone(),
            leader,
            in_force,
            start_managed,
        ));
    }
    tokio::spawn(index::verify_blocks(ledger.clone(), objects.clone()));
    tokio::spawn(operator::events::publish_blocked_attempts(
        client.clone(),
        ledger.clone(),
        std::env::var("POD_NAME").ok(),
    ));
    tokio::spawn(operator::reconcile_policy_status(
        client,
        snapshot,
        objects,
        checked_configuration_rx,
        health_rx,
        ledger,
    ));

    let (a, b) = tokio::join!(
        https.serve(admission.into_make_service()),
        http.serve(ops.into_make_service())
    );
    a.and(b).map_err(|source| Error::Bind {
        addr: config.webhook_addr,
        source,
    })?;
    if let Some(election) = election {
        // The lease is released when the signal comes; wait for that call (it has its own
        // deadline) before exiting.
        let _ = tokio::time::timeout(LEASE_RELEASE_WAIT, election).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// On SIGTERM or Ctrl-C: not ready at once, reviews still answered for `delay` (the API server
/// keeps sending them until the endpoint's removal reaches it; refusing them would fail guarded
/// requests of people too), then in-flight requests drained for up to [`SHUTDOWN_GRACE`].
async fn shutdown_on_signal(
    handle: Handle<SocketAddr>,
    readiness: Readiness,
    delay: Duration,
    stopping: tokio::sync::watch::Sender<bool>,
) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!(delay = ?delay, "shutting down: not ready, still answering reviews");
    readiness.stop();
    // Leadership ends now (another replica takes over while this one drains).
    stopping.send_replace(true);
    tokio::time::sleep(delay).await;
    tracing::info!("closing the listeners");
    handle.graceful_shutdown(Some(SHUTDOWN_GRACE));
}

/// The files of cert-manager mode (a mounted Secret's `tls.crt`, `tls.key`, `ca.crt`).
struct ReloadFiles {
    cert: PathBuf,
    key: PathBuf,
    /// The CA bundle published as caBundle (`--ca-file`), if any.
    ca: Option<PathBuf>,
}

/// A certificate read from the files, not served yet.
struct Pending {
    cert: Vec<u8>,
    config: Arc<rustls::ServerConfig>,
    ca: Option<Vec<u8>>,
    since: std::time::Instant,
}

/// Follows the files when they change (cert-manager renewals, and rotations of its CA):
///
/// - a set that does not hold together (unparsable, a key that does not match, a certificate
///   the CA file does not verify, a file missing) is logged and ignored: the certificate and
///   the CA bundle in use stay;
/// - a new CA is published at once as caBundle, with the previous CA kept beside it
///   ([`certs::merge_bundle`]);
/// - the new certificate is served only once the live webhook configurations (`trusted_by`)
///   carry its CA in every webhook's caBundle, or when the certificate in use has expired.
///   Until then the previous certificate keeps being served, which the API server still trusts.
async fn reload_certificates(
    files: ReloadFiles,
    tls: RustlsConfig,
    ca_tx: tokio::sync::watch::Sender<Vec<u8>>,
    trusted_by: Option<(kube::Client, String)>,
    client_auth: Option<certs::ClientAuth>,
    metrics: Metrics,
) {
    let modified = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let stamp = || -> Option<(SystemTime, SystemTime, Option<SystemTime>)> {
        let ca = match &files.ca {
            Some(ca) => Some(modified(ca)?),
            None => None,
        };
        Some((modified(&files.cert)?, modified(&files.key)?, ca))
    };
    let read = |p: &PathBuf| {
        std::fs::read(p).map_err(|source| Error::ReadFile {
            path: p.clone(),
            source,
        })
    };
    let mut last = stamp();
    let mut served_cert = read(&files.cert).unwrap_or_default();
    let mut pending: Option<Pending> = None;
    let mut warned: Option<std::time::Instant> = None;
    let mut tick = tokio::time::interval(CERT_RELOAD_INTERVAL);
    loop {
        tick.tick().await;
        let now = stamp();
        if now.is_some() && now != last {
            last = now;
            let loaded = (|| -> Result<Pending> {
                let (cert, key) = (read(&files.cert)?, read(&files.key)?);
                let config = certs::server_config_with(&cert, &key, client_auth.as_ref())?;
                let ca = match &files.ca {
                    Some(path) => {
                        let ca = read(path)?;
                        certs::check_chain(&cert, &ca)?;
                        Some(ca)
                    }
                    None => None,
                };
                Ok(Pending {
                    cert,
                    config,
                    ca,
                    since: std::time::Instant::now(),
                })
            })();
            match loaded {
                Err(err) => tracing::warn!(
                    error = %err,
                    "new certificate files rejected; keeping the certificate and CA bundle in use"
                ),
                Ok(mut next) => {
                    if let Some(ca) = &next.ca {
                        ca_tx.send_if_modified(|published| {
                            let merged = certs::merge_bundle(
                                &String::from_utf8_lossy(ca),
                                &String::from_utf8_lossy(published),
                                1,
                            )
                            .into_bytes();
                            let changed = *published != merged;
                            if changed {
                                tracing::info!(
                                    "CA bundle changed: publishing the new CA beside the previous one"
                                );
                            }
                            *published = merged;
                            changed
                        });
                    }
                    if next.cert == served_cert {
                        pending = None;
                    } else {
                        if let Some(earlier) = &pending {
                            next.since = earlier.since;
                        }
                        pending = Some(next);
                    }
                }
            }
        }
        let Some(next) = &pending else { continue };
        let trusted = match (&trusted_by, &next.ca) {
            (Some((client, name)), Some(ca)) => {
                match certificates::live_trust(client, name, ca).await {
                    Ok((trusted, _)) => trusted != Some(false),
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot read the webhook configurations");
                        false
                    }
                }
            }
            _ => true,
        };
        let expired = certs::not_after(&served_cert)
            .map(|t| t <= jiff::Timestamp::now())
            .unwrap_or(true);
        if !trusted && !expired {
            if warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                warned = Some(std::time::Instant::now());
                tracing::warn!(
                    waiting = ?next.since.elapsed(),
                    "the webhook configuration does not carry the new CA yet; still serving the previous certificate"
                );
            }
            continue;
        }
        let Some(next) = pending.take() else { continue };
        tls.reload_from_config(next.config);
        if let Ok(expiry) = certs::not_after(&next.cert) {
            metrics.set_certificate_expiry(expiry.as_second());
        }
        served_cert = next.cert;
        warned = None;
        tracing::info!(cert = %files.cert.display(), waited = ?next.since.elapsed(), "serving certificate reloaded");
    }
}

fn record_expiry(metrics: &Metrics, cert: &std::path::Path) {
    match std::fs::read(cert)
        .map_err(|e| e.to_string())
        .and_then(|pem| certs::not_after(&pem).map_err(|e| e.to_string()))
    {
        Ok(expiry) => metrics.set_certificate_expiry(expiry.as_second()),
        Err(err) => tracing::warn!(error = %err, "cannot read the serving certificate's expiry"),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "agentguard".into())
}

fn bind(addr: SocketAddr) -> Result<TcpListener> {
    let listener = TcpListener::bind(addr).map_err(|source| Error::Bind { addr, source })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| Error::Bind { addr, source })?;
    Ok(listener)
}
