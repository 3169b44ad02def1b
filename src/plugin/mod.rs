//! `kubectl agentguard`, the kubectl plugin (binary `kubectl-agentguard` on PATH): approve one
//! deletion, see what is protected and blocked, audit who can get around the guard, restore a
//! deleted claim from its retained volume, let agents ask in writing (DeletionRequests), and
//! give each agent its own scoped, short-lived credentials (`agent`).
//!
//! kubectl conventions: `--kubeconfig`, `--context`, `-n/--namespace` (default: the context's
//! namespace), `-A/--all-namespaces`, `-o table|json|yaml`. Exit codes: 0 success; 1 the
//! server refused or something failed (the reason on stderr); 2 usage error; `audit` exits 3
//! when it finds a bypass path, so it can gate CI.

mod agent;
mod approve;
mod audit;
mod requests;
mod restore;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use kube::api::ApiResource;
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde::Serialize;

#[derive(Debug, Parser)]
#[command(
    name = "kubectl-agentguard",
    bin_name = "kubectl agentguard",
    version,
    about = "Approve deletions, see what agentguard protects and blocked, audit agents' permissions, restore claims"
)]
pub struct Cli {
    /// Path to the kubeconfig file (default: $KUBECONFIG or ~/.kube/config).
    #[arg(long, global = true, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Namespace (default: the context's namespace, else "default").
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// Across all namespaces (status).
    #[arg(short = 'A', long, global = true)]
    pub all_namespaces: bool,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Namespace agentguard is installed in (its Deployment, Secret and configuration).
    #[arg(
        long,
        global = true,
        default_value = "agentguard",
        env = "AGENTGUARD_NAMESPACE"
    )]
    pub agentguard_namespace: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Approve (or --revoke) the deletion of one protected object, as yourself; or answer a
    /// DeletionRequest with `approve request/<name>`.
    Approve(approve::ApproveArgs),
    /// Reject a DeletionRequest: `reject request/<name> --reason TEXT`.
    Reject(requests::RejectArgs),
    /// As an agent: ask a human to approve one deletion (files a DeletionRequest).
    Request(requests::RequestArgs),
    /// Policies, protected objects, live approvals and the latest blocked attempts.
    Status(status::StatusArgs),
    /// Find where restricted identities can delete protected data or get around the guard.
    Audit(audit::AuditArgs),
    /// Bring a deleted claim back, bound to the volume agentguard kept.
    Restore(restore::RestoreArgs),
    /// Give an agent its own credentials: create, list, token, revoke.
    Agent(agent::AgentArgs),
}

/// What every command gets: a client for the chosen context, and the global flags.
pub struct Ctx {
    pub client: kube::Client,
    /// `-n`, else the context's namespace, else "default".
    pub namespace: String,
    /// Whether `-n` was given explicitly.
    pub namespace_explicit: bool,
    pub all_namespaces: bool,
    pub output: Output,
    pub agentguard_namespace: String,
}

/// A failure to report: the message goes to stderr as `error: <message>`, the code is the exit
/// status.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub code: u8,
}

impl Failure {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: 1,
        }
    }

    pub fn with_code(code: u8, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code,
        }
    }
}

impl From<kube::Error> for Failure {
    /// The API server's own words: for an admission denial that is agentguard's message, shown
    /// plainly.
    fn from(err: kube::Error) -> Self {
        match err {
            kube::Error::Api(status) => Self::new(status.message.clone()),
            other => Self::new(other.to_string()),
        }
    }
}

pub type Outcome = Result<ExitCode, Failure>;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("error: {}", failure.message.trim_end());
            ExitCode::from(failure.code)
        }
    }
}

async fn run(cli: Cli) -> Outcome {
    let ctx = connect(&cli).await?;
    match cli.command {
        Command::Approve(args) => match split_target(&args.target)? {
            (kind, name) if requests::is_request_kind(kind) => {
                let name = name.to_owned();
                requests::approve(&ctx, &name, args).await
            }
            _ => approve::run(&ctx, args).await,
        },
        Command::Reject(args) => requests::reject(&ctx, args).await,
        Command::Request(args) => requests::file(&ctx, args).await,
        Command::Status(args) => status::run(&ctx, args).await,
        Command::Audit(args) => audit::run(&ctx, args).await,
        Command::Restore(args) => restore::run(&ctx, args).await,
        Command::Agent(args) => agent::run(&ctx, cli.kubeconfig, cli.context, args).await,
    }
}

async fn connect(cli: &Cli) -> Result<Ctx, Failure> {
    let kubeconfig = match &cli.kubeconfig {
        // KUBECONFIG may hold several files separated by ':'; kube merges them.
        Some(path) if path.to_string_lossy().contains(':') => Kubeconfig::read(),
        Some(path) => Kubeconfig::read_from(path),
        None => Kubeconfig::read(),
    }
    .map_err(|e| Failure::new(format!("cannot read the kubeconfig: {e}")))?;
    let options = KubeConfigOptions {
        context: cli.context.clone(),
        ..Default::default()
    };
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(|e| Failure::new(format!("cannot use the kubeconfig: {e}")))?;
    let default_namespace = config.default_namespace.clone();
    let client = kube::Client::try_from(config)
        .map_err(|e| Failure::new(format!("cannot build a client: {e}")))?;
    Ok(Ctx {
        client,
        namespace_explicit: cli.namespace.is_some(),
        namespace: cli.namespace.clone().unwrap_or(default_namespace),
        all_namespaces: cli.all_namespaces,
        output: cli.output,
        agentguard_namespace: cli.agentguard_namespace.clone(),
    })
}

/// A resource found by a name as kubectl accepts it: kind, plural, singular or short name,
/// any case, optionally qualified by group (`volumesnapshots.snapshot.storage.k8s.io`).
#[derive(Debug, Clone)]
pub struct Resolved {
    pub resource: ApiResource,
    pub namespaced: bool,
}

/// Resolves what a user typed before the `/` in `<kind>/<name>` through API discovery.
pub async fn resolve_resource(client: &kube::Client, typed: &str) -> Result<Resolved, Failure> {
    let typed = typed.to_ascii_lowercase();
    let (name, group_filter) = match typed.split_once('.') {
        Some((n, g)) => (n.to_owned(), Some(g.to_owned())),
        None => (typed.clone(), None),
    };
    let mut lists = vec![(
        String::new(),
        client
            .list_core_api_resources("v1")
            .await
            .map_err(Failure::from)?,
    )];
    let groups = client.list_api_groups().await.map_err(Failure::from)?;
    let wanted = |g: &str| group_filter.as_deref().is_none_or(|f| f == g);
    // Each group's preferred version first; a kind served only at another version (a group's
    // kinds need not share versions) is looked for there next.
    let mut others = Vec::new();
    for group in groups.groups.iter().filter(|g| wanted(&g.name)) {
        let Some(preferred) = group
            .preferred_version
            .clone()
            .or_else(|| group.versions.first().cloned())
        else {
            continue;
        };
        others.extend(
            group
                .versions
                .iter()
                .filter(|v| v.group_version != preferred.group_version)
                .map(|v| (group.name.clone(), v.group_version.clone())),
        );
        if let Ok(list) = client
            .list_api_group_resources(&preferred.group_version)
            .await
        {
            lists.push((group.name.clone(), list));
        }
    }
    if let Some(found) = find_resource(&lists, &name, group_filter.as_deref()) {
        return Ok(found);
    }
    let mut lists = Vec::new();
    for (group, version) in others {
        if let Ok(list) = client.list_api_group_resources(&version).await {
            lists.push((group, list));
        }
    }
    if let Some(found) = find_resource(&lists, &name, group_filter.as_deref()) {
        return Ok(found);
    }
    Err(Failure::new(format!(
        "the server doesn't have a resource type \"{typed}\""
    )))
}

/// The first resource of `lists` (group, resource list) that `name` names, as kubectl reads
/// it.
fn find_resource(
    lists: &[(
        String,
        k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList,
    )],
    name: &str,
    group_filter: Option<&str>,
) -> Option<Resolved> {
    for (group, list) in lists {
        if group_filter.is_some_and(|g| g != group) {
            continue;
        }
        for r in &list.resources {
            if r.name.contains('/') {
                continue; // subresources
            }
            let matches = r.name == name
                || r.singular_name == name
                || r.kind.to_ascii_lowercase() == name
                || r.short_names
                    .as_ref()
                    .is_some_and(|s| s.iter().any(|n| n == name));
            if matches {
                let (g, v) = match list.group_version.split_once('/') {
                    Some((g, v)) => (g.to_owned(), v.to_owned()),
                    None => (String::new(), list.group_version.clone()),
                };
                return Some(Resolved {
                    resource: ApiResource {
                        group: g,
                        version: v,
                        api_version: list.group_version.clone(),
                        kind: r.kind.clone(),
                        plural: r.name.clone(),
                    },
                    namespaced: r.namespaced,
                });
            }
        }
    }
    None
}

/// Splits `<kind>/<name>`.
pub fn split_target(target: &str) -> Result<(&str, &str), Failure> {
    match target.split_once('/') {
        Some((kind, name)) if !kind.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((kind, name))
        }
        _ => Err(Failure::with_code(
            2,
            format!("expected <kind>/<name>, e.g. persistentvolumeclaim/data, got {target:?}"),
        )),
    }
}

/// Prints rows as an aligned table (kubectl style: upper-case headers, two spaces apart), or
/// `value` as JSON or YAML.
pub fn print<T: Serialize>(output: Output, headers: &[&str], rows: &[Vec<String>], value: &T) {
    match output {
        Output::Table => print!("{}", table(headers, rows)),
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(value).expect("serializable output")
        ),
        Output::Yaml => print!(
            "{}",
            serde_saphyr::to_string(value).expect("serializable output")
        ),
    }
}

/// An aligned table; an empty table prints nothing.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, cell) in cells.into_iter().enumerate() {
            out.push_str(cell);
            if i < last {
                out.push_str(&" ".repeat(widths[i] - cell.chars().count() + 3));
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// A duration as people read it: `29m`, `1h5m`, `45s`.
pub fn human_duration(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        0..=119 => format!("{secs}s"),
        120..=3599 => format!("{}m", secs / 60),
        _ if secs % 3600 / 60 == 0 => format!("{}h", secs / 3600),
        _ => format!("{}h{}m", secs / 3600, secs % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_empty_tables_print_nothing() {
        let rows = vec![
            vec!["a".to_owned(), "long value".to_owned()],
            vec!["bbbb".to_owned(), "x".to_owned()],
        ];
        assert_eq!(
            table(&["NAME", "VALUE"], &rows),
            "NAME   VALUE\na      long value\nbbbb   x\n"
        );
        assert_eq!(table(&["NAME"], &[]), "");
    }

    #[test]
    fn targets_need_a_kind_and_a_name() {
        assert_eq!(split_target("pvc/data").unwrap(), ("pvc", "data"));
        for bad in ["pvc", "/data", "pvc/", "pvc/a/b"] {
            assert_eq!(split_target(bad).unwrap_err().code, 2, "{bad}");
        }
    }

    #[test]
    fn durations_read_like_kubectl() {
        assert_eq!(human_duration(45), "45s");
        assert_eq!(human_duration(29 * 60 + 5), "29m");
        assert_eq!(human_duration(3600), "1h");
        assert_eq!(human_duration(3900), "1h5m");
        assert_eq!(human_duration(-3), "0s");
    }
}
