//! Command-line interface of the `agentguard` binary.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::operator::approval_keys::KeyParams;
use crate::operator::certificates::RotationParams;
use crate::operator::webhook_config::{WebhookParams, WebhookTarget};
use crate::policy::AgentDefinition;
use crate::runtime::{self, RunConfig, TlsSource};
use crate::webhook::DEFAULT_MAX_REVIEW_BYTES;

#[derive(Debug, Parser)]
#[command(
    name = "agentguard",
    version,
    about = "Stops AI agents from deleting protected data without human approval"
)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "AGENTGUARD_LOG_FORMAT")]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the admission webhook (HTTPS) and the metrics and health endpoints (HTTP).
    Run(Box<RunArgs>),
    /// Write a CA and a serving certificate (ca.crt, tls.crt, tls.key) for development and tests.
    Certs(CertsArgs),
    /// Print agentguard's CRDs (ProtectedResource, ClusterProtectedResource, DeletionRequest)
    /// as YAML, or with --apply bring the cluster's up to this release's.
    Crd(CrdArgs),
    /// Write configuration files for the API server (`static`: webhook configurations no API
    /// call can delete, for Kubernetes 1.36+ control planes you run).
    #[command(subcommand)]
    Manifests(ManifestsCommand),
    /// Prove the guard holds: as this identity (an agent), ask the API server to delete a
    /// protected object in a dry run; succeed only if agentguard refuses it. The chart's
    /// `helm test` runs it.
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub struct CrdArgs {
    /// Server-side apply the CRDs to the cluster (in-cluster config or KUBECONFIG) and wait
    /// until each is served; a CRD from a newer agentguard is kept. The chart's
    /// pre-install/pre-upgrade hook runs this.
    #[arg(long)]
    pub apply: bool,
    /// With --apply: how long to wait for each CRD to be Established.
    #[arg(long, default_value_t = 60, requires = "apply")]
    pub wait_seconds: u64,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The protected object, as PLURAL/NAME of a core (v1) kind, e.g. persistentvolumes/probe.
    #[arg(long)]
    pub delete: String,
    /// Its namespace, for a namespaced kind.
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Keep asking this many seconds while the answer is not agentguard's denial (a
    /// ServiceAccount labelled a moment ago takes a moment to reach agentguard).
    #[arg(long, default_value_t = 30)]
    pub patience_seconds: u64,
}

#[derive(Debug, Subcommand)]
pub enum ManifestsCommand {
    /// Write agentguard's validating and mutating webhook configurations as
    /// `agentguard.static.k8s.io` files for kube-apiserver's staticManifestsDir (feature gate
    /// ManifestBasedAdmissionControlConfig, alpha in 1.36), an AdmissionConfiguration that loads
    /// them, and, with --client-cert, the kubeconfig that gives the API server its client
    /// certificate for the webhook. docs/static-manifests.md says how to install them.
    Static(Box<StaticArgs>),
}

#[derive(Debug, Args)]
pub struct StaticArgs {
    /// Directory to write into (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Where the files will be on the API server's host; the AdmissionConfiguration names
    /// them by absolute path (default: --out, made absolute).
    #[arg(long)]
    pub install_dir: Option<PathBuf>,
    /// URL the API server calls (static manifests take no Service reference), e.g.
    /// https://10.96.0.50/validate for a Service's fixed ClusterIP. The sealing and probe
    /// webhooks are its siblings (/seal, /static-probe).
    #[arg(long)]
    pub webhook_url: String,
    /// PEM CA bundle that signed the webhook's serving certificate (caBundle).
    #[arg(long)]
    pub ca_file: PathBuf,
    /// Protected kinds to route, as Kind for the core group or group/Kind, comma separated:
    /// the kinds your policies target plus the annotation kinds. Roots (namespaces, CRDs,
    /// StatefulSets, the deletion-by-proxy kinds) are added as the managed configuration adds
    /// them. Write the files again when you protect a new kind.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "PersistentVolumeClaim,PersistentVolume,snapshot.storage.k8s.io/VolumeSnapshot,snapshot.storage.k8s.io/VolumeSnapshotContent"
    )]
    pub kinds: Vec<String>,
    /// Owner kinds whose deletion would cascade to protected objects (e.g.
    /// apps/StatefulSet,apps/Deployment,apps/ReplicaSet,Pod for ephemeral claims), routed as
    /// roots. The managed configuration adds them as protected objects appear; static files
    /// cannot, so name the ones your protected objects have. Default: none.
    #[arg(long, value_delimiter = ',')]
    pub owner_kinds: Vec<String>,
    /// agentguard's own namespace (never judged; the probe runs there).
    #[arg(long, default_value = "agentguard")]
    pub namespace: String,
    /// Only judge namespaces carrying this label (key=value).
    #[arg(long)]
    pub webhook_namespace_label: Option<String>,
    /// Namespaces never judged, by name (comma separated), besides agentguard's own and
    /// kube-system.
    #[arg(long, value_delimiter = ',')]
    pub webhook_exclude_namespaces: Vec<String>,
    /// Fail (fail-closed) or Ignore.
    #[arg(long, default_value = "Fail", value_parser = ["Fail", "Ignore"])]
    pub failure_policy: String,
    /// PEM client certificate the API server presents to the webhook (with --client-key);
    /// agentguard run --client-ca-file then serves only it.
    #[arg(long, requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// PEM key of --client-cert.
    #[arg(long, requires = "client_cert")]
    pub client_key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Address of the HTTPS admission endpoint (/validate).
    #[arg(long, default_value = "0.0.0.0:8443", env = "AGENTGUARD_WEBHOOK_ADDR")]
    pub webhook_addr: SocketAddr,
    /// Address of the plain-HTTP endpoints /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080", env = "AGENTGUARD_METRICS_ADDR")]
    pub metrics_addr: SocketAddr,
    /// PEM serving certificate (chain) for the webhook, e.g. mounted by cert-manager.
    /// Reloaded when the file changes. Not with --cert-secret.
    #[arg(
        long,
        env = "AGENTGUARD_TLS_CERT_FILE",
        requires = "tls_key_file",
        conflicts_with = "cert_secret"
    )]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of the serving certificate.
    #[arg(long, env = "AGENTGUARD_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// Self-managed certificates: keep a CA and serving certificate in this Secret (`name` in
    /// --namespace, or `namespace/name`), create them at start and rotate them before expiry.
    #[arg(long, env = "AGENTGUARD_CERT_SECRET")]
    pub cert_secret: Option<String>,
    /// DNS names or IPs of the self-managed serving certificate, comma separated (default: the
    /// Service's names from --webhook-service, or the host of --webhook-url).
    #[arg(long, value_delimiter = ',', env = "AGENTGUARD_CERT_HOSTS")]
    pub cert_hosts: Vec<String>,
    /// How long a DeletionRequest waits for a human before it expires (h, m, s units).
    #[arg(long, default_value = "24h", env = "AGENTGUARD_REQUEST_TTL")]
    pub request_ttl: String,
    /// Validity of self-managed certificates (h, m, s units).
    #[arg(long, default_value = "2160h", env = "AGENTGUARD_CERT_VALIDITY")]
    pub cert_validity: String,
    /// Start rotating when this much validity is left.
    #[arg(long, default_value = "720h", env = "AGENTGUARD_CERT_ROTATE_BEFORE")]
    pub cert_rotate_before: String,
    /// Self-managed rotation: the next certificate is served once the webhook configuration
    /// read back from the API server carries its CA. If it still does not after this long, a
    /// warning is logged (the current certificate keeps being served). Only when no
    /// configuration can be read (a static one) is this a fixed wait before promotion.
    #[arg(long, default_value = "30s", env = "AGENTGUARD_CERT_PROMOTE_AFTER")]
    pub cert_promote_after: String,
    /// Agent ServiceAccounts as namespace/name globs, comma separated (e.g. "ci/*,*/cursor-*").
    #[arg(long, value_delimiter = ',', env = "AGENTGUARD_AGENT_SERVICE_ACCOUNTS")]
    pub agent_service_accounts: Vec<String>,
    /// Groups whose members are agents, comma separated.
    #[arg(long, value_delimiter = ',', env = "AGENTGUARD_AGENT_GROUPS")]
    pub agent_groups: Vec<String>,
    /// Username globs of agents, comma separated (e.g. "bot-*").
    #[arg(long, value_delimiter = ',', env = "AGENTGUARD_AGENT_USERNAMES")]
    pub agent_usernames: Vec<String>,
    /// Groups that are never restricted (break glass), comma separated.
    #[arg(long, value_delimiter = ',', env = "AGENTGUARD_BREAK_GLASS_GROUPS")]
    pub break_glass_groups: Vec<String>,
    /// Kinds the agentguard.dev/protected annotation is honoured on (and indexed for cascade
    /// checks), as Kind for the core group or group/Kind, comma separated.
    #[arg(
        long,
        value_delimiter = ',',
        env = "AGENTGUARD_ANNOTATION_KINDS",
        default_value = "PersistentVolumeClaim,PersistentVolume,snapshot.storage.k8s.io/VolumeSnapshot,snapshot.storage.k8s.io/VolumeSnapshotContent"
    )]
    pub annotation_kinds: Vec<String>,
    /// Write `wgpolicyk8s.io/v1alpha2` PolicyReports (per namespace) and a ClusterPolicyReport of
    /// what is protected and what Audit-mode policies would have refused (when the API server
    /// serves those CRDs).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "AGENTGUARD_POLICY_REPORTS")]
    pub policy_reports: bool,
    /// Keep the ValidatingWebhookConfiguration equal to what policies need, and restore it when
    /// deleted or edited.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "AGENTGUARD_MANAGE_WEBHOOK_CONFIGURATION")]
    pub manage_webhook_configuration: bool,
    /// Name of the ValidatingWebhookConfiguration.
    #[arg(
        long,
        default_value = "agentguard",
        env = "AGENTGUARD_WEBHOOK_CONFIGURATION_NAME"
    )]
    pub webhook_configuration_name: String,
    /// URL the API server calls when the webhook runs outside the cluster
    /// (e.g. https://127.0.0.1:8443/validate). Otherwise --webhook-service is used.
    #[arg(long, env = "AGENTGUARD_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// Service the API server calls, as namespace/name:port.
    #[arg(long, env = "AGENTGUARD_WEBHOOK_SERVICE")]
    pub webhook_service: Option<String>,
    /// PEM CA bundle the API server should trust for the webhook (caBundle).
    #[arg(long, env = "AGENTGUARD_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// agentguard's own namespace, never judged so it can always be repaired.
    #[arg(long, default_value = "agentguard", env = "POD_NAMESPACE")]
    pub namespace: String,
    /// What the API server does when it cannot reach the webhook: Fail refuses the request
    /// (fail-closed); Ignore lets it through (the chart's availability mode, whose
    /// ValidatingAdmissionPolicy keeps the simplest rules in the API server meanwhile).
    #[arg(
        long,
        default_value = "Fail",
        value_parser = ["Fail", "Ignore"],
        env = "AGENTGUARD_FAILURE_POLICY"
    )]
    pub failure_policy: String,
    /// A ClusterRole that owns the webhook configuration (the chart's), so that deleting it
    /// (helm uninstall) garbage-collects the configuration.
    #[arg(long, env = "AGENTGUARD_WEBHOOK_OWNER_CLUSTER_ROLE")]
    pub webhook_owner_cluster_role: Option<String>,
    /// Only judge namespaces carrying this label (key=value); default every namespace but
    /// agentguard's own and kube-system. Whoever can relabel a namespace can take it out of
    /// scope, so prefer --webhook-exclude-namespaces.
    #[arg(long, env = "AGENTGUARD_WEBHOOK_NAMESPACE_LABEL")]
    pub webhook_namespace_label: Option<String>,
    /// Namespaces never judged, by name (comma separated), besides agentguard's own and
    /// kube-system. Matched on `kubernetes.io/metadata.name`, which the API server sets and
    /// no one can change, so an agent cannot move a namespace out of scope.
    #[arg(
        long,
        value_delimiter = ',',
        env = "AGENTGUARD_WEBHOOK_EXCLUDE_NAMESPACES"
    )]
    pub webhook_exclude_namespaces: Vec<String>,
    /// How long the API server waits for a review (1-30 s) before failing the request
    /// (failurePolicy Fail) or letting it through (Ignore).
    #[arg(
        long,
        default_value_t = 5,
        value_parser = clap::value_parser!(i32).range(1..=30),
        env = "AGENTGUARD_WEBHOOK_TIMEOUT_SECONDS"
    )]
    pub webhook_timeout_seconds: i32,
    /// An annotation (key=value) on the webhook configurations agentguard keeps, e.g.
    /// admissions.enforcer/disabled=true on AKS; repeat for more. Annotations others add are
    /// left alone.
    #[arg(long = "webhook-configuration-annotation", value_name = "KEY=VALUE")]
    pub webhook_configuration_annotations: Vec<String>,
    /// A label (key=value) on the webhook configurations agentguard keeps; repeat for more.
    #[arg(long = "webhook-configuration-label", value_name = "KEY=VALUE")]
    pub webhook_configuration_labels: Vec<String>,
    /// Elect one leader among replicas (coordination.k8s.io Lease) to reconcile cluster-wide
    /// state; every replica serves the webhook either way.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "AGENTGUARD_LEADER_ELECTION")]
    pub leader_election: bool,
    /// Name of the Lease.
    #[arg(long, default_value = "agentguard", env = "AGENTGUARD_LEASE_NAME")]
    pub lease_name: String,
    /// Namespace of the Lease (default: --namespace).
    #[arg(long, env = "AGENTGUARD_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Secret holding the keys approvals are sealed with (`name`, or `namespace/name`; default
    /// namespace: --lease-namespace, else --namespace). Created and rotated by the leader.
    #[arg(
        long,
        default_value = "agentguard-approval-keys",
        env = "AGENTGUARD_APPROVAL_KEY_SECRET"
    )]
    pub approval_key_secret: String,
    /// A new sealing key takes over this long after the newest one was made (h, m, s units);
    /// older keys are kept while approvals sealed with them can be live (24h).
    #[arg(
        long,
        default_value = "720h",
        env = "AGENTGUARD_APPROVAL_KEY_ROTATE_AFTER"
    )]
    pub approval_key_rotate_after: String,
    /// ConfigMap (`name` in --lease-namespace, else --namespace) recording the kinds agentguard
    /// learned from the agentguard.dev/protected annotation, so every replica and the next
    /// start watch and route them.
    #[arg(
        long,
        default_value = "agentguard-annotated-kinds",
        env = "AGENTGUARD_ANNOTATED_KINDS_CONFIGMAP"
    )]
    pub annotated_kinds_configmap: String,
    /// Serve only clients (the API server) presenting a certificate from this PEM CA bundle;
    /// anyone else is refused during the TLS handshake. The API server gets its certificate
    /// from its AdmissionConfiguration's kubeConfigFile (see `agentguard manifests static`).
    #[arg(long, env = "AGENTGUARD_CLIENT_CA_FILE")]
    pub client_ca_file: Option<PathBuf>,
    /// With --client-ca-file: the client certificate must name one of these (common name or
    /// DNS name), comma separated. Empty: any certificate from the CA.
    #[arg(
        long,
        value_delimiter = ',',
        requires = "client_ca_file",
        env = "AGENTGUARD_CLIENT_ALLOWED_NAMES"
    )]
    pub client_allowed_names: Vec<String>,
    /// Largest AdmissionReview body accepted; larger bodies get 413.
    #[arg(long, default_value_t = DEFAULT_MAX_REVIEW_BYTES, env = "AGENTGUARD_MAX_REVIEW_BYTES")]
    pub max_review_bytes: usize,
    /// On SIGTERM, how long to keep answering reviews while reporting not ready, so the API
    /// server stops sending them before the listener closes (h, m, s units).
    #[arg(long, default_value = "5s", env = "AGENTGUARD_SHUTDOWN_DELAY")]
    pub shutdown_delay: String,
    /// Longest time the replica judges with state it cannot refresh (a watch of policies or
    /// agents, or the API connection, failing throughout): past it, /readyz answers 503 and
    /// agents' guarded writes are refused until the watches recover (h, m, s units).
    #[arg(long, default_value = "60s", env = "AGENTGUARD_MAX_STALENESS")]
    pub max_staleness: String,
}

#[derive(Debug, Args)]
pub struct CertsArgs {
    /// Directory to write ca.crt, tls.crt and tls.key into (created if missing).
    #[arg(long)]
    pub out_dir: PathBuf,
    /// DNS names or IP addresses the serving certificate is valid for.
    #[arg(long = "host", default_value = "127.0.0.1", num_args = 1..)]
    pub hosts: Vec<String>,
    /// Validity in hours.
    #[arg(long, default_value_t = 24 * 365)]
    pub valid_hours: u64,
    /// Also write a client certificate with this name (common name and DNS name), signed by
    /// the same CA, as client.crt and client.key: the certificate the API server presents
    /// when agentguard runs with --client-ca-file ca.crt --client-allowed-names NAME.
    #[arg(long)]
    pub client_name: Option<String>,
}

/// Entry point of the `agentguard` binary.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match cli.command {
        Command::Run(args) => {
            let webhook_configuration = webhook_params(&args)?;
            let lease = args.leader_election.then(|| {
                (
                    args.lease_namespace
                        .clone()
                        .unwrap_or_else(|| args.namespace.clone()),
                    args.lease_name.clone(),
                )
            });
            let home = args
                .lease_namespace
                .clone()
                .unwrap_or_else(|| args.namespace.clone());
            let annotated_kinds = crate::operator::annotated_kinds::RecordParams {
                namespace: home.clone(),
                name: args.annotated_kinds_configmap.clone(),
            };
            let (key_namespace, key_name) = match args.approval_key_secret.split_once('/') {
                Some((ns, name)) => (ns.to_owned(), name.to_owned()),
                None => (home, args.approval_key_secret.clone()),
            };
            let approval_keys = KeyParams {
                secret_namespace: key_namespace,
                secret_name: key_name,
                rotate_after: crate::policy::parse_duration(&args.approval_key_rotate_after)
                    .filter(|d| !d.is_zero())
                    .with_context(|| {
                        format!(
                            "--approval-key-rotate-after {:?} is not a duration like 720h",
                            args.approval_key_rotate_after
                        )
                    })?,
            };
            let client_auth = match &args.client_ca_file {
                None => None,
                Some(path) => Some(
                    crate::certs::ClientAuth::from_file(path, args.client_allowed_names.clone())
                        .context("--client-ca-file")?,
                ),
            };
            let config =
                RunConfig {
                    client_auth,
                    approval_keys,
                    annotated_kinds,
                    lease,
                    webhook_configuration,
                    webhook_addr: args.webhook_addr,
                    metrics_addr: args.metrics_addr,
                    tls: tls_source(&args)?,
                    ca_file: args.ca_file.clone(),
                    agents: AgentDefinition {
                        service_accounts: args.agent_service_accounts,
                        groups: args.agent_groups,
                        usernames: args.agent_usernames,
                        break_glass_groups: args.break_glass_groups,
                    },
                    max_review_bytes: args.max_review_bytes,
                    shutdown_delay: crate::policy::parse_duration(&args.shutdown_delay)
                        .with_context(|| {
                            format!(
                                "--shutdown-delay {:?} is not a duration like 5s",
                                args.shutdown_delay
                            )
                        })?,
                    max_staleness: crate::policy::parse_duration(&args.max_staleness)
                        .with_context(|| {
                            format!(
                                "--max-staleness {:?} is not a duration like 60s",
                                args.max_staleness
                            )
                        })?,
                    policy_reports: args.policy_reports,
                    request_ttl: crate::policy::parse_duration(&args.request_ttl).with_context(
                        || {
                            format!(
                                "--request-ttl {:?} is not a duration like 24h or 30m",
                                args.request_ttl
                            )
                        },
                    )?,
                    annotation_kinds: parse_kinds(&args.annotation_kinds),
                };
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?
                .block_on(runtime::run(config))
                .context("agentguard run failed")
        }
        Command::Certs(args) => write_certs(&args),
        Command::Crd(args) if !args.apply => {
            print!("{}", crate::api::crd_yaml());
            Ok(())
        }
        Command::Crd(args) => {
            let report = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?
                .block_on(async {
                    let client = kube::Client::try_default()
                        .await
                        .context("cannot reach the API server")?;
                    crate::crds::apply(client, std::time::Duration::from_secs(args.wait_seconds))
                        .await
                })?;
            for line in report {
                println!("{line}");
            }
            Ok(())
        }
        Command::Manifests(ManifestsCommand::Static(args)) => write_static(&args),
        Command::Check(args) => {
            let target = crate::check::Target::parse(&args.delete, args.namespace)?;
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?
                .block_on(crate::check::run(
                    target,
                    std::time::Duration::from_secs(args.patience_seconds),
                ))
        }
    }
}

fn webhook_params(args: &RunArgs) -> anyhow::Result<Option<WebhookParams>> {
    if !args.manage_webhook_configuration {
        return Ok(None);
    }
    let target = match (&args.webhook_url, &args.webhook_service) {
        (Some(url), None) => WebhookTarget::Url(url.clone()),
        (None, Some(service)) => {
            let (ns_name, port) = service.rsplit_once(':').unwrap_or((service, "443"));
            let (namespace, name) = ns_name
                .split_once('/')
                .context("--webhook-service must be namespace/name:port")?;
            WebhookTarget::Service {
                namespace: namespace.into(),
                name: name.into(),
                port: port
                    .parse()
                    .context("--webhook-service port must be a number")?,
            }
        }
        (Some(_), Some(_)) => anyhow::bail!("give --webhook-url or --webhook-service, not both"),
        (None, None) => anyhow::bail!(
            "managing the webhook configuration needs --webhook-url or --webhook-service \
             (or --manage-webhook-configuration=false)"
        ),
    };
    if args.cert_secret.is_none() && args.ca_file.is_none() {
        anyhow::bail!(
            "managing the webhook configuration needs --ca-file (the CA that signed \
             --tls-cert-file), or self-managed certificates with --cert-secret"
        );
    }
    let namespace_label = namespace_label(args.webhook_namespace_label.as_deref())?;
    let pairs = |flag: &str,
                 items: &[String]|
     -> anyhow::Result<std::collections::BTreeMap<String, String>> {
        items
            .iter()
            .map(|item| {
                item.split_once('=')
                    .filter(|(k, _)| !k.is_empty())
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .with_context(|| format!("--{flag} {item:?} must be key=value"))
            })
            .collect()
    };
    Ok(Some(WebhookParams {
        configuration_name: args.webhook_configuration_name.clone(),
        target,
        own_namespace: args.namespace.clone(),
        namespace_label,
        exclude_namespaces: args.webhook_exclude_namespaces.clone(),
        timeout_seconds: args.webhook_timeout_seconds,
        annotations: pairs(
            "webhook-configuration-annotation",
            &args.webhook_configuration_annotations,
        )?,
        labels: pairs(
            "webhook-configuration-label",
            &args.webhook_configuration_labels,
        )?,
        failure_policy: args.failure_policy.clone(),
        owner_cluster_role: args.webhook_owner_cluster_role.clone(),
    }))
}

fn tls_source(args: &RunArgs) -> anyhow::Result<TlsSource> {
    if let (Some(cert), Some(key)) = (&args.tls_cert_file, &args.tls_key_file) {
        return Ok(TlsSource::Files {
            cert: cert.clone(),
            key: key.clone(),
        });
    }
    let Some(secret) = &args.cert_secret else {
        anyhow::bail!(
            "give --tls-cert-file and --tls-key-file, or --cert-secret for self-managed certificates"
        );
    };
    let duration = |flag: &str, text: &str| {
        crate::policy::parse_duration(text)
            .with_context(|| format!("{flag} {text:?} is not a duration like 720h or 30s"))
    };
    let mut hosts = args.cert_hosts.clone();
    if hosts.is_empty() {
        if let Some(service) = &args.webhook_service {
            let ns_name = service
                .rsplit_once(':')
                .map_or(service.as_str(), |(n, _)| n);
            if let Some((ns, name)) = ns_name.split_once('/') {
                hosts.extend([
                    format!("{name}.{ns}.svc"),
                    format!("{name}.{ns}.svc.cluster.local"),
                ]);
            }
        }
        if let Some(url) = &args.webhook_url {
            let host = url
                .trim_start_matches("https://")
                .split(['/', ':'])
                .next()
                .unwrap_or_default();
            if !host.is_empty() {
                hosts.push(host.to_owned());
            }
        }
    }
    anyhow::ensure!(
        !hosts.is_empty(),
        "--cert-secret needs --cert-hosts (or --webhook-service / --webhook-url to derive them)"
    );
    let (secret_namespace, secret_name) = match secret.split_once('/') {
        Some((ns, name)) => (ns.to_owned(), name.to_owned()),
        None => (args.namespace.clone(), secret.clone()),
    };
    Ok(TlsSource::Secret(RotationParams {
        secret_namespace,
        secret_name,
        hosts,
        validity: duration("--cert-validity", &args.cert_validity)?,
        rotate_before: duration("--cert-rotate-before", &args.cert_rotate_before)?,
        promote_after: duration("--cert-promote-after", &args.cert_promote_after)?,
    }))
}

fn write_certs(args: &CertsArgs) -> anyhow::Result<()> {
    let (bundle, clients) = crate::certs::generate_with_clients(
        &args.hosts,
        std::time::Duration::from_secs(args.valid_hours * 3600),
        args.client_name.as_slice(),
    )?;
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("cannot create {}", args.out_dir.display()))?;
    let mut files = vec![
        ("ca.crt", &bundle.ca_pem),
        ("tls.crt", &bundle.cert_pem),
        ("tls.key", &bundle.key_pem),
    ];
    for client in &clients {
        files.push(("client.crt", &client.cert_pem));
        files.push(("client.key", &client.key_pem));
    }
    for (name, pem) in &files {
        let path = args.out_dir.join(name);
        std::fs::write(&path, pem).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let names: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
    println!("wrote {} to {}", names.join(", "), args.out_dir.display());
    Ok(())
}

/// `--webhook-namespace-label key=value`.
fn namespace_label(flag: Option<&str>) -> anyhow::Result<Option<(String, String)>> {
    flag.map(|l| {
        l.split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .context("--webhook-namespace-label must be key=value")
    })
    .transpose()
}

fn write_static(args: &StaticArgs) -> anyhow::Result<()> {
    let read = |path: &PathBuf| {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
    };
    let namespace_label = namespace_label(args.webhook_namespace_label.as_deref())?;
    anyhow::ensure!(
        args.webhook_url.starts_with("https://"),
        "--webhook-url must be an https:// URL"
    );
    let client = match (&args.client_cert, &args.client_key) {
        (Some(cert), Some(key)) => Some(crate::certs::ClientCertificate {
            name: cert.display().to_string(),
            cert_pem: read(cert)?,
            key_pem: read(key)?,
        }),
        _ => None,
    };
    let install_dir = match &args.install_dir {
        Some(dir) => dir.clone(),
        None => std::path::absolute(&args.out)
            .with_context(|| format!("cannot make {} absolute", args.out.display()))?,
    };
    anyhow::ensure!(
        install_dir.is_absolute(),
        "--install-dir must be an absolute path"
    );
    let manifests = crate::manifests::StaticManifests {
        params: WebhookParams {
            configuration_name: crate::operator::static_config::STATIC_CONFIGURATION_NAME.into(),
            target: WebhookTarget::Url(args.webhook_url.clone()),
            own_namespace: args.namespace.clone(),
            namespace_label,
            exclude_namespaces: args.webhook_exclude_namespaces.clone(),
            timeout_seconds: 5,
            annotations: Default::default(),
            labels: Default::default(),
            failure_policy: args.failure_policy.clone(),
            owner_cluster_role: None,
        },
        kinds: parse_kinds(&args.kinds),
        owner_kinds: parse_kinds(&args.owner_kinds),
        ca_bundle: read(&args.ca_file)?.into_bytes(),
        client,
        install_dir,
    };
    for path in manifests.write(&args.out)? {
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// `Kind` (core group) or `group/Kind`, as --annotation-kinds and --kinds take them.
fn parse_kinds(kinds: &[String]) -> Vec<(String, String)> {
    kinds
        .iter()
        .filter(|k| !k.trim().is_empty())
        .map(|k| match k.trim().rsplit_once('/') {
            Some((group, kind)) => (group.to_owned(), kind.to_owned()),
            None => (String::new(), k.trim().to_owned()),
        })
        .collect()
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
