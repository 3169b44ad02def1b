//! Command-line interface of the `agentguard` binary.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::operator::webhook_config::{WebhookParams, WebhookTarget};
use crate::policy::AgentDefinition;
use crate::runtime::{self, RunConfig};
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
    /// Print the ProtectedResource and ClusterProtectedResource CRDs as YAML.
    Crd,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Address of the HTTPS admission endpoint (/validate).
    #[arg(long, default_value = "0.0.0.0:8443", env = "AGENTGUARD_WEBHOOK_ADDR")]
    pub webhook_addr: SocketAddr,
    /// Address of the plain-HTTP endpoints /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080", env = "AGENTGUARD_METRICS_ADDR")]
    pub metrics_addr: SocketAddr,
    /// PEM serving certificate (chain) for the webhook. Reloaded when the file changes.
    #[arg(long, env = "AGENTGUARD_TLS_CERT_FILE")]
    pub tls_cert_file: PathBuf,
    /// PEM private key of the serving certificate.
    #[arg(long, env = "AGENTGUARD_TLS_KEY_FILE")]
    pub tls_key_file: PathBuf,
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
    /// Only judge namespaces carrying this label (key=value); default every namespace but
    /// agentguard's own and kube-system.
    #[arg(long, env = "AGENTGUARD_WEBHOOK_NAMESPACE_LABEL")]
    pub webhook_namespace_label: Option<String>,
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
    /// Largest AdmissionReview body accepted; larger bodies get 413.
    #[arg(long, default_value_t = DEFAULT_MAX_REVIEW_BYTES, env = "AGENTGUARD_MAX_REVIEW_BYTES")]
    pub max_review_bytes: usize,
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
            let config = RunConfig {
                lease,
                webhook_configuration,
                webhook_addr: args.webhook_addr,
                metrics_addr: args.metrics_addr,
                tls_cert_file: args.tls_cert_file,
                tls_key_file: args.tls_key_file,
                agents: AgentDefinition {
                    service_accounts: args.agent_service_accounts,
                    groups: args.agent_groups,
                    usernames: args.agent_usernames,
                    break_glass_groups: args.break_glass_groups,
                },
                max_review_bytes: args.max_review_bytes,
                annotation_kinds: args
                    .annotation_kinds
                    .iter()
                    .map(|k| match k.trim().rsplit_once('/') {
                        Some((group, kind)) => (group.to_owned(), kind.to_owned()),
                        None => (String::new(), k.trim().to_owned()),
                    })
                    .collect(),
            };
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?
                .block_on(runtime::run(config))
                .context("agentguard run failed")
        }
        Command::Certs(args) => write_certs(&args),
        Command::Crd => {
            print!("{}", crate::api::crd_yaml());
            Ok(())
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
    let ca_file = args.ca_file.as_ref().context(
        "managing the webhook configuration needs --ca-file (the CA that signed --tls-cert-file)",
    )?;
    let ca_bundle =
        std::fs::read(ca_file).with_context(|| format!("cannot read {}", ca_file.display()))?;
    let namespace_label = match &args.webhook_namespace_label {
        None => None,
        Some(l) => Some(
            l.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .context("--webhook-namespace-label must be key=value")?,
        ),
    };
    Ok(Some(WebhookParams {
        configuration_name: args.webhook_configuration_name.clone(),
        target,
        ca_bundle,
        own_namespace: args.namespace.clone(),
        namespace_label,
        timeout_seconds: 5,
    }))
}

fn write_certs(args: &CertsArgs) -> anyhow::Result<()> {
    let bundle = crate::certs::generate(
        &args.hosts,
        std::time::Duration::from_secs(args.valid_hours * 3600),
    )?;
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("cannot create {}", args.out_dir.display()))?;
    for (name, pem) in [
        ("ca.crt", &bundle.ca_pem),
        ("tls.crt", &bundle.cert_pem),
        ("tls.key", &bundle.key_pem),
    ] {
        let path = args.out_dir.join(name);
        std::fs::write(&path, pem).with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!(
        "wrote ca.crt, tls.crt, tls.key to {}",
        args.out_dir.display()
    );
    Ok(())
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
