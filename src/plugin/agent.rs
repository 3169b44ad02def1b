//! `kubectl agentguard agent create|list|token|revoke`: an agent gets credentials of its own
//! instead of a human's.
//!
//! An agent is a ServiceAccount in the agents namespace (`--agents-namespace`, default
//! `agentguard-agents`) labelled `agentguard.dev/agent=true`, so agentguard restricts it
//! whatever the agent definition says. It is bound, by one RoleBinding per namespace and only
//! in the namespaces named, to a ClusterRole the chart ships (`agentguard-agent-edit`,
//! `agentguard-agent-view`) or another one. It authenticates with a short-lived token from the
//! TokenRequest API, in a kubeconfig written for it: no long-lived token Secret ever exists, and
//! deleting the ServiceAccount (`revoke`) invalidates every token it was issued.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use jiff::Timestamp;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, ResourceExt};
use kube::config::Kubeconfig;
use serde::Serialize;
use serde_json::json;

use super::{Ctx, Failure, Outcome, Output, human_duration, print};
use crate::api::AGENT_LABEL;
use crate::policy::parse_duration;

/// Where `create` puts agents' ServiceAccounts unless told otherwise; the chart's default too.
pub const DEFAULT_AGENTS_NAMESPACE: &str = "agentguard-agents";
/// The chart's preset ClusterRoles (fixed names, not release-prefixed).
pub const EDIT_ROLE: &str = "agentguard-agent-edit";
pub const VIEW_ROLE: &str = "agentguard-agent-view";
const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
const MANAGER: &str = "kubectl-agentguard";
const HELM: &str = "Helm";
/// On the RoleBindings agentguard makes (plugin and chart): whose they are.
const AGENT_NAME_LABEL: &str = "agentguard.dev/agent-name";
const AGENT_NAMESPACE_LABEL: &str = "agentguard.dev/agent-namespace";
/// On the ServiceAccount: the namespaces as named, in order (the first is the kubeconfig's).
const NAMESPACES_ANNOTATION: &str = "agentguard.dev/agent-namespaces";
/// The API server refuses a TokenRequest shorter than this.
const MIN_TTL: Duration = Duration::from_secs(600);
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// Bindings installed with the cluster (kube-apiserver's defaults), not anyone's grant.
const BOOTSTRAP_LABEL: &str = "kubernetes.io/bootstrapping";
const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Namespace holding the agents' ServiceAccounts (created when missing).
    #[arg(
        long,
        global = true,
        default_value = DEFAULT_AGENTS_NAMESPACE,
        env = "AGENTGUARD_AGENTS_NAMESPACE"
    )]
    pub agents_namespace: String,

    #[command(subcommand)]
    pub command: AgentCommand,
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Create (or update) an agent: its ServiceAccount, RoleBindings in exactly the namespaces
    /// named, and a short-lived kubeconfig for it.
    Create(CreateArgs),
    /// Agents (labelled ServiceAccounts), where they are bound, and any binding agentguard did
    /// not make.
    List,
    /// A fresh token and kubeconfig for an existing agent.
    Token(TokenArgs),
    /// Remove an agent's bindings and its ServiceAccount: every token it was issued stops working.
    Revoke(RevokeArgs),
}

#[derive(Debug, Args)]
pub struct IssueArgs {
    /// How long the token lives, from 10m (the API server's minimum) to 24h.
    #[arg(long, value_name = "DURATION", default_value = "8h")]
    pub ttl: String,
    /// Where to write the agent's kubeconfig (mode 0600); default ./<name>.kubeconfig. (`-o`
    /// is the output format, as for every command.)
    #[arg(long, value_name = "FILE")]
    pub kubeconfig_out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The agent's name (its ServiceAccount's), e.g. cursor.
    pub name: String,
    /// The namespaces it may work in, comma separated; the first is its kubeconfig's namespace.
    #[arg(long, value_delimiter = ',', required = true)]
    pub namespaces: Vec<String>,
    /// edit (agentguard-agent-edit), view (agentguard-agent-view), or any ClusterRole's name.
    #[arg(long, default_value = "edit")]
    pub role: String,
    #[command(flatten)]
    pub issue: IssueArgs,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The agent's name.
    pub name: String,
    #[command(flatten)]
    pub issue: IssueArgs,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The agent's name.
    pub name: String,
}

/// Where the plugin's own kubeconfig came from (`--kubeconfig`, `--context`): the agent's
/// kubeconfig copies its cluster.
struct Source<'a> {
    kubeconfig: Option<&'a Path>,
    context: Option<&'a str>,
}

pub async fn run(
    ctx: &Ctx,
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
    args: AgentArgs,
) -> Outcome {
    let source = Source {
        kubeconfig: kubeconfig.as_deref(),
        context: context.as_deref(),
    };
    if ctx.namespace_explicit || ctx.all_namespaces {
        // Which one would it be? Say so rather than guess.
        return Err(Failure::with_code(
            2,
            "-n/-A do not apply to agent commands: the namespaces an agent works in are \
             --namespaces, the one holding its ServiceAccount is --agents-namespace",
        ));
    }
    let agents_ns = args.agents_namespace.trim().to_owned();
    check_name("--agents-namespace", &agents_ns)?;
    match args.command {
        AgentCommand::Create(create) => run_create(ctx, &source, &agents_ns, create).await,
        AgentCommand::List => run_list(ctx, &agents_ns).await,
        AgentCommand::Token(token) => run_token(ctx, &source, &agents_ns, token).await,
        AgentCommand::Revoke(revoke) => run_revoke(ctx, &agents_ns, revoke).await,
    }
}

// ---------------------------------------------------------------------------------------------
// Pure parts: names, roles, TTLs, binding plans, subjects, kubeconfigs

/// A DNS-1123 label (what namespaces are, and what an agent's name must be so that it can be a
/// label value on its RoleBindings).
fn check_name(what: &str, name: &str) -> Result<(), Failure> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Failure::with_code(
            2,
            format!(
                "{what} {name:?} is not a valid name: lower-case letters, digits and '-', \
                 starting and ending with a letter or digit, at most 63 characters"
            ),
        ))
    }
}

/// The ClusterRole a `--role` means.
fn role_name(role: &str) -> String {
    match role.trim() {
        "edit" => EDIT_ROLE.to_owned(),
        "view" => VIEW_ROLE.to_owned(),
        other => other.to_owned(),
    }
}

fn binding_name(agent: &str) -> String {
    format!("agentguard-agent-{agent}")
}

/// `--ttl`, within what the API server accepts (10m) and what agentguard allows (24h).
fn parse_ttl(text: &str) -> Result<Duration, Failure> {
    let ttl = parse_duration(text).ok_or_else(|| {
        Failure::with_code(
            2,
            format!("--ttl {text:?} is not a duration, e.g. 8h or 45m"),
        )
    })?;
    if ttl < MIN_TTL {
        return Err(Failure::with_code(
            2,
            format!(
                "--ttl {text} is shorter than 10m, the shortest token the API server issues \
                 (TokenRequest expirationSeconds >= 600)"
            ),
        ));
    }
    if ttl > MAX_TTL {
        return Err(Failure::with_code(
            2,
            format!(
                "--ttl {text} is longer than 24h: agents get short-lived tokens; issue a fresh \
                 one with `kubectl agentguard agent token` when it runs out"
            ),
        ));
    }
    Ok(ttl)
}

/// The namespaces as given: trimmed, valid, each once, in order; none of those an agent must
/// never be bound in.
fn working_namespaces(
    given: &[String],
    agents_ns: &str,
    agentguard_ns: &str,
) -> Result<Vec<String>, Failure> {
    let mut out: Vec<String> = Vec::new();
    for ns in given.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        check_name("namespace", ns)?;
        let why = if ns == agents_ns {
            Some("it is the agents namespace: rights there reach the other agents' ServiceAccounts")
        } else if ns == agentguard_ns {
            Some("it is agentguard's own namespace, which the webhook never judges")
        } else if ns == "kube-system" {
            Some(
                "kube-system's ServiceAccounts are the cluster's controllers, which agentguard never restricts",
            )
        } else {
            None
        };
        if let Some(why) = why {
            return Err(Failure::with_code(
                2,
                format!("refusing to bind an agent in namespace {ns}: {why}"),
            ));
        }
        if !out.iter().any(|o| o == ns) {
            out.push(ns.to_owned());
        }
    }
    if out.is_empty() {
        return Err(Failure::with_code(
            2,
            "--namespaces names no namespace: say where the agent may work, e.g. --namespaces staging,dev",
        ));
    }
    Ok(out)
}

/// A RoleBinding labelled as one agent's, as far as the plan cares.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BoundAs {
    namespace: String,
    name: String,
    role_kind: String,
    role: String,
    /// It names exactly the agent's ServiceAccount and nothing else.
    subject_is_agent: bool,
}

/// What `create` does to one RoleBinding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "action")]
enum BindingChange {
    Create {
        namespace: String,
        name: String,
    },
    Keep {
        namespace: String,
        name: String,
    },
    /// Its roleRef (immutable) or subjects differ: delete and create.
    Replace {
        namespace: String,
        name: String,
        was: String,
    },
    /// In a namespace no longer named, or a second binding of the agent's in one that is.
    Delete {
        namespace: String,
        name: String,
    },
}

/// Brings the agent's labelled bindings to exactly one, named `binding`, to ClusterRole `role`
/// in each `desired` namespace.
fn plan_bindings(
    desired: &[String],
    binding: &str,
    role: &str,
    existing: &[BoundAs],
) -> Vec<BindingChange> {
    let mut plan = Vec::new();
    for ns in desired {
        let current = existing
            .iter()
            .find(|b| b.namespace == *ns && b.name == binding);
        plan.push(match current {
            None => BindingChange::Create {
                namespace: ns.clone(),
                name: binding.to_owned(),
            },
            Some(b) if b.role_kind == "ClusterRole" && b.role == role && b.subject_is_agent => {
                BindingChange::Keep {
                    namespace: ns.clone(),
                    name: binding.to_owned(),
                }
            }
            Some(b) => BindingChange::Replace {
                namespace: ns.clone(),
                name: binding.to_owned(),
                was: format!("{}/{}", b.role_kind, b.role),
            },
        });
    }
    for b in existing {
        if !(desired.contains(&b.namespace) && b.name == binding) {
            plan.push(BindingChange::Delete {
                namespace: b.namespace.clone(),
                name: b.name.clone(),
            });
        }
    }
    plan
}

/// How a binding's subject takes in the ServiceAccount `namespace/name`, if it does: by name, as
/// a user, or through one of the groups every ServiceAccount (of its namespace) is in.
fn subject_reaches(
    subject: &Subject,
    binding_ns: Option<&str>,
    namespace: &str,
    name: &str,
) -> Option<String> {
    match subject.kind.as_str() {
        "ServiceAccount" => {
            let ns = subject
                .namespace
                .as_deref()
                .filter(|n| !n.is_empty())
                .or(binding_ns);
            (ns == Some(namespace) && subject.name == name).then(|| "by name".to_owned())
        }
        "User" => (subject.name == format!("system:serviceaccount:{namespace}:{name}"))
            .then(|| "as user".to_owned()),
        "Group" => {
            let groups = [
                "system:serviceaccounts".to_owned(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".to_owned(),
            ];
            groups
                .contains(&subject.name)
                .then(|| format!("via group {}", subject.name))
        }
        _ => None,
    }
}

fn agent_subject(agents_ns: &str, name: &str) -> Subject {
    Subject {
        api_group: None,
        kind: "ServiceAccount".to_owned(),
        name: name.to_owned(),
        namespace: Some(agents_ns.to_owned()),
    }
}

fn subject_is_agent(subjects: Option<&Vec<Subject>>, agents_ns: &str, name: &str) -> bool {
    match subjects.map(Vec::as_slice) {
        Some([only]) => {
            only.kind == "ServiceAccount"
                && only.name == name
                && only.namespace.as_deref() == Some(agents_ns)
        }
        _ => false,
    }
}

/// The cluster an agent's kubeconfig points at: the plugin's own context's server and CA.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ClusterAccess {
    /// The cluster's name in the source kubeconfig, kept for the agent's.
    name: String,
    server: String,
    /// Base64 PEM, as kubeconfigs carry it inline.
    ca_data: Option<String>,
    insecure: bool,
    tls_server_name: Option<String>,
    proxy_url: Option<String>,
}

/// Finds the context's cluster; reads a `certificate-authority` file with `read_file` (the
/// agent's sandbox has no such file, so its kubeconfig carries the CA inline).
fn cluster_access(
    config: &Kubeconfig,
    context: Option<&str>,
    read_file: impl Fn(&str) -> std::io::Result<Vec<u8>>,
) -> Result<ClusterAccess, String> {
    let context_name = context
        .map(str::to_owned)
        .or_else(|| config.current_context.clone())
        .filter(|c| !c.is_empty())
        .ok_or("the kubeconfig has no current context (give --context)")?;
    let cluster_name = config
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone())
        .ok_or_else(|| format!("context {context_name:?} is not in the kubeconfig"))?;
    let cluster = config
        .clusters
        .iter()
        .find(|c| c.name == cluster_name)
        .and_then(|c| c.cluster.as_ref())
        .ok_or_else(|| {
            format!("cluster {cluster_name:?} of context {context_name:?} is not in the kubeconfig")
        })?;
    let server = cluster
        .server
        .clone()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("cluster {cluster_name:?} has no server"))?;
    let ca_data = match (
        &cluster.certificate_authority_data,
        &cluster.certificate_authority,
    ) {
        (Some(data), _) if !data.trim().is_empty() => {
            // Checked here rather than by the agent's first request.
            serde_json::from_value::<k8s_openapi::ByteString>(json!(data.trim())).map_err(|e| {
                format!("cluster {cluster_name:?}: certificate-authority-data is not base64: {e}")
            })?;
            Some(data.trim().to_owned())
        }
        (_, Some(file)) if !file.is_empty() => {
            let pem = read_file(file).map_err(|e| {
                format!("cluster {cluster_name:?}: cannot read certificate-authority {file}: {e}")
            })?;
            Some(base64(&pem))
        }
        _ => None,
    };
    Ok(ClusterAccess {
        name: cluster_name,
        server,
        ca_data,
        insecure: cluster.insecure_skip_tls_verify == Some(true),
        tls_server_name: cluster.tls_server_name.clone(),
        proxy_url: cluster.proxy_url.clone(),
    })
}

/// Standard base64, through k8s-openapi's ByteString (its JSON form).
fn base64(bytes: &[u8]) -> String {
    match serde_json::to_value(k8s_openapi::ByteString(bytes.to_vec())) {
        Ok(serde_json::Value::String(s)) => s,
        _ => unreachable!("a ByteString serializes to a string"),
    }
}

/// The agent's kubeconfig: one cluster (as the plugin's), one user (the token), one context in
/// its first namespace.
fn agent_kubeconfig(access: &ClusterAccess, user: &str, token: &str, namespace: &str) -> String {
    let mut cluster = serde_json::Map::new();
    cluster.insert("server".into(), json!(access.server));
    if let Some(ca) = &access.ca_data {
        cluster.insert("certificate-authority-data".into(), json!(ca));
    }
    if access.insecure {
        cluster.insert("insecure-skip-tls-verify".into(), json!(true));
    }
    if let Some(name) = &access.tls_server_name {
        cluster.insert("tls-server-name".into(), json!(name));
    }
    if let Some(proxy) = &access.proxy_url {
        cluster.insert("proxy-url".into(), json!(proxy));
    }
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": access.name, "cluster": cluster}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{
            "name": user,
            "context": {"cluster": access.name, "user": user, "namespace": namespace},
        }],
        "current-context": user,
    });
    // Plain one-line scalars: kubeconfigs are read (and copied around) by more than YAML
    // libraries, and a folded `>-` token surprises them.
    let mut options = serde_saphyr::SerializerOptions::default();
    options.prefer_block_scalars = false;
    serde_saphyr::to_string_with_options(&config, options).expect("a kubeconfig serializes")
}

/// RFC 3339 to the second, as Kubernetes writes times.
fn rfc3339(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A lifetime to the nearest minute, as people read it.
fn lifetime(secs: i64) -> String {
    human_duration((secs + 30) / 60 * 60)
}

// ---------------------------------------------------------------------------------------------
// Talking to the API server

fn api_failure(what: &str, err: kube::Error) -> Failure {
    Failure::new(format!("{what}: {}", Failure::from(err).message))
}

/// Every object of a kind in every namespace (or the cluster-scoped ones) matching `params`.
async fn list_all<K>(
    client: &kube::Client,
    params: ListParams,
    plural: &str,
) -> Result<Vec<K>, Failure>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    Api::<K>::all(client.clone())
        .list(&params)
        .await
        .map(|l| l.items)
        .map_err(|e| api_failure(&format!("cannot list {plural}"), e))
}

fn is_not_found(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(s) if s.code == 404)
}

fn managed_by(meta: &ObjectMeta) -> Option<&str> {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .map(String::as_str)
}

fn is_agent(sa: &ServiceAccount) -> bool {
    sa.labels().get(AGENT_LABEL).map(String::as_str) == Some("true")
}

fn agent_selector(agents_ns: &str, name: &str) -> String {
    format!("{AGENT_NAME_LABEL}={name},{AGENT_NAMESPACE_LABEL}={agents_ns}")
}

/// The RoleBindings labelled as this agent's, in every namespace.
async fn agent_bindings(
    client: &kube::Client,
    agents_ns: &str,
    name: &str,
) -> Result<Vec<RoleBinding>, Failure> {
    list_all(
        client,
        ListParams::default().labels(&agent_selector(agents_ns, name)),
        "RoleBindings",
    )
    .await
}

fn bound_as(b: &RoleBinding, agents_ns: &str, name: &str) -> BoundAs {
    BoundAs {
        namespace: b.namespace().unwrap_or_default(),
        name: b.name_any(),
        role_kind: b.role_ref.kind.clone(),
        role: b.role_ref.name.clone(),
        subject_is_agent: subject_is_agent(b.subjects.as_ref(), agents_ns, name),
    }
}

fn binding_labels(agents_ns: &str, name: &str) -> BTreeMap<String, String> {
    [
        (MANAGED_BY_LABEL.to_owned(), MANAGER.to_owned()),
        (AGENT_NAME_LABEL.to_owned(), name.to_owned()),
        (AGENT_NAMESPACE_LABEL.to_owned(), agents_ns.to_owned()),
    ]
    .into()
}

fn role_binding(agents_ns: &str, name: &str, namespace: &str, role: &str) -> RoleBinding {
    RoleBinding {
        metadata: ObjectMeta {
            name: Some(binding_name(name)),
            namespace: Some(namespace.to_owned()),
            labels: Some(binding_labels(agents_ns, name)),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: RBAC_GROUP.to_owned(),
            kind: "ClusterRole".to_owned(),
            name: role.to_owned(),
        },
        subjects: Some(vec![agent_subject(agents_ns, name)]),
    }
}

/// What `create` and `token` print (`-o json|yaml`), and what they did.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Issued {
    agent: String,
    service_account: String,
    username: String,
    uid: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    changes: Vec<String>,
    namespaces: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<String>,
    kubeconfig: String,
    context_namespace: String,
    requested_ttl_seconds: i64,
    expires_at: String,
}

async fn run_create(ctx: &Ctx, source: &Source<'_>, agents_ns: &str, args: CreateArgs) -> Outcome {
    let client = &ctx.client;
    let name = args.name.trim().to_owned();
    check_name("agent name", &name)?;
    let namespaces = working_namespaces(&args.namespaces, agents_ns, &ctx.agentguard_namespace)?;
    let role = role_name(&args.role);
    if role.is_empty() {
        return Err(Failure::with_code(2, "--role names no ClusterRole"));
    }
    let ttl = parse_ttl(&args.issue.ttl)?;
    // The cluster is read before anything changes, so a kubeconfig problem changes nothing.
    let access = read_access(source)?;
    check_out_dir(&out_path(&args.issue, &name))?;

    match Api::<ClusterRole>::all(client.clone()).get_opt(&role).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            let hint = if role == EDIT_ROLE || role == VIEW_ROLE {
                "the agentguard chart installs it (agentCredentials.installRoles); without the \
                 chart: helm template charts/agentguard --show-only templates/agent-roles.yaml \
                 | kubectl apply -f -"
                    .to_owned()
            } else {
                "name an existing ClusterRole, or --role edit|view for agentguard's presets"
                    .to_owned()
            };
            return Err(Failure::new(format!(
                "ClusterRole {role} does not exist: {hint}"
            )));
        }
        // Someone who may bind roles but not read them: the RoleBinding's creation decides.
        Err(kube::Error::Api(s)) if s.code == 403 => {
            eprintln!(
                "warning: cannot check that ClusterRole {role} exists: {}",
                s.message
            );
        }
        Err(e) => return Err(api_failure(&format!("cannot read ClusterRole {role}"), e)),
    }
    let ns_api: Api<Namespace> = Api::all(client.clone());
    for ns in &namespaces {
        if ns_api
            .get_opt(ns)
            .await
            .map_err(|e| api_failure(&format!("cannot read namespace {ns}"), e))?
            .is_none()
        {
            return Err(Failure::new(format!(
                "namespace {ns} does not exist: create it first (an agent is bound only where a human chose)"
            )));
        }
    }

    let mut changes = Vec::new();
    if ns_api
        .get_opt(agents_ns)
        .await
        .map_err(|e| api_failure(&format!("cannot read namespace {agents_ns}"), e))?
        .is_none()
    {
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(agents_ns.to_owned()),
                labels: Some([(MANAGED_BY_LABEL.to_owned(), MANAGER.to_owned())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        match ns_api.create(&PostParams::default(), &namespace).await {
            Ok(_) => changes.push(format!("namespace/{agents_ns} created")),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => {
                return Err(api_failure(
                    &format!("cannot create namespace {agents_ns}"),
                    e,
                ));
            }
        }
    }

    let sa_api: Api<ServiceAccount> = Api::namespaced(client.clone(), agents_ns);
    let annotation = namespaces.join(",");
    let existing = sa_api
        .get_opt(&name)
        .await
        .map_err(|e| api_failure(&format!("cannot read ServiceAccount {agents_ns}/{name}"), e))?;
    let sa = match existing {
        Some(sa) => {
            if managed_by(&sa.metadata) != Some(MANAGER) || !is_agent(&sa) {
                let how = match managed_by(&sa.metadata) {
                    Some(HELM) => "it is declared in the agentguard chart's values (agentCredentials.agents): change it there".to_owned(),
                    Some(other) => format!("it is managed by {other}"),
                    None => "it was not made by kubectl agentguard".to_owned(),
                };
                return Err(Failure::new(format!(
                    "ServiceAccount {agents_ns}/{name} exists and {how}; pick another name"
                )));
            }
            let current = sa.annotations().get(NAMESPACES_ANNOTATION);
            if current == Some(&annotation) && sa.automount_service_account_token == Some(false) {
                changes.push(format!(
                    "serviceaccount/{name} unchanged in {agents_ns} (uid {})",
                    sa.uid().unwrap_or_default()
                ));
                sa
            } else {
                let patch = json!({
                    "metadata": {"annotations": {NAMESPACES_ANNOTATION: annotation}},
                    "automountServiceAccountToken": false,
                });
                let sa = sa_api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(|e| {
                        api_failure(
                            &format!("cannot update ServiceAccount {agents_ns}/{name}"),
                            e,
                        )
                    })?;
                changes.push(format!(
                    "serviceaccount/{name} updated in {agents_ns} (uid {})",
                    sa.uid().unwrap_or_default()
                ));
                sa
            }
        }
        None => {
            let sa = ServiceAccount {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(agents_ns.to_owned()),
                    labels: Some(
                        [
                            (AGENT_LABEL.to_owned(), "true".to_owned()),
                            (MANAGED_BY_LABEL.to_owned(), MANAGER.to_owned()),
                        ]
                        .into(),
                    ),
                    annotations: Some([(NAMESPACES_ANNOTATION.to_owned(), annotation)].into()),
                    ..Default::default()
                },
                // It is an identity for a process outside the cluster; pods never mount it.
                automount_service_account_token: Some(false),
                ..Default::default()
            };
            let sa = sa_api
                .create(&PostParams::default(), &sa)
                .await
                .map_err(|e| {
                    api_failure(
                        &format!("cannot create ServiceAccount {agents_ns}/{name}"),
                        e,
                    )
                })?;
            changes.push(format!(
                "serviceaccount/{name} created in {agents_ns} (labelled {AGENT_LABEL}=true, uid {})",
                sa.uid().unwrap_or_default()
            ));
            sa
        }
    };

    let bname = binding_name(&name);
    let existing: Vec<BoundAs> = agent_bindings(client, agents_ns, &name)
        .await?
        .iter()
        .map(|b| bound_as(b, agents_ns, &name))
        .collect();
    let plan = plan_bindings(&namespaces, &bname, &role, &existing);
    for change in &plan {
        changes.push(apply_change(client, agents_ns, &name, &role, change).await?);
    }

    let mut issued = issue(
        ctx,
        &access,
        agents_ns,
        &sa,
        &namespaces,
        &args.issue,
        ttl,
        changes,
    )
    .await?;
    issued.role = Some(role);
    report(ctx, &issued);
    Ok(ExitCode::SUCCESS)
}

async fn apply_change(
    client: &kube::Client,
    agents_ns: &str,
    agent: &str,
    role: &str,
    change: &BindingChange,
) -> Result<String, Failure> {
    Ok(match change {
        BindingChange::Create { namespace, name } => {
            create_binding(client, agents_ns, agent, namespace, role).await?;
            format!("rolebinding/{name} created in {namespace} (ClusterRole {role})")
        }
        BindingChange::Keep { namespace, name } => {
            format!("rolebinding/{name} unchanged in {namespace} (ClusterRole {role})")
        }
        BindingChange::Replace {
            namespace,
            name,
            was,
        } => {
            // roleRef cannot change in place.
            delete_binding(client, namespace, name).await?;
            create_binding(client, agents_ns, agent, namespace, role).await?;
            format!("rolebinding/{name} replaced in {namespace} (ClusterRole {role}, was {was})")
        }
        BindingChange::Delete { namespace, name } => {
            delete_binding(client, namespace, name).await?;
            format!("rolebinding/{name} deleted in {namespace} (namespace no longer named)")
        }
    })
}

async fn create_binding(
    client: &kube::Client,
    agents_ns: &str,
    agent: &str,
    namespace: &str,
    role: &str,
) -> Result<(), Failure> {
    let binding = role_binding(agents_ns, agent, namespace, role);
    let name = binding_name(agent);
    match Api::<RoleBinding>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &binding)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Err(Failure::new(format!(
            "RoleBinding {namespace}/{name} exists and was not made for this agent by agentguard \
             (no {AGENT_NAME_LABEL}={agent} label): delete or rename it first"
        ))),
        Err(e) => Err(api_failure(
            &format!("cannot create RoleBinding {namespace}/{name}"),
            e,
        )),
    }
}

async fn delete_binding(client: &kube::Client, namespace: &str, name: &str) -> Result<(), Failure> {
    match Api::<RoleBinding>::namespaced(client.clone(), namespace)
        .delete(name, &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(api_failure(
            &format!("cannot delete RoleBinding {namespace}/{name}"),
            e,
        )),
    }
}

fn read_kubeconfig(path: Option<&Path>) -> Result<Kubeconfig, Failure> {
    match path {
        // KUBECONFIG may hold several files separated by ':'; kube merges them.
        Some(p) if p.to_string_lossy().contains(':') => Kubeconfig::read(),
        Some(p) => Kubeconfig::read_from(p),
        None => Kubeconfig::read(),
    }
    .map_err(|e| Failure::new(format!("cannot read the kubeconfig: {e}")))
}

fn read_access(source: &Source<'_>) -> Result<ClusterAccess, Failure> {
    let config = read_kubeconfig(source.kubeconfig)?;
    cluster_access(&config, source.context, |p: &str| std::fs::read(p))
        .map_err(|why| Failure::new(format!("cannot tell the agent where the cluster is: {why}")))
}

/// Mints a token for the agent and writes its kubeconfig.
#[allow(clippy::too_many_arguments)]
async fn issue(
    ctx: &Ctx,
    access: &ClusterAccess,
    agents_ns: &str,
    sa: &ServiceAccount,
    namespaces: &[String],
    args: &IssueArgs,
    ttl: Duration,
    changes: Vec<String>,
) -> Result<Issued, Failure> {
    let name = sa.name_any();
    let request = TokenRequest {
        metadata: ObjectMeta::default(),
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            bound_object_ref: None,
            expiration_seconds: Some(ttl.as_secs() as i64),
        },
        status: None,
    };
    let answer = Api::<ServiceAccount>::namespaced(ctx.client.clone(), agents_ns)
        .create_token_request(&name, &PostParams::default(), &request)
        .await
        .map_err(|e| api_failure(&format!("cannot get a token for {agents_ns}/{name}"), e))?;
    let status = answer
        .status
        .ok_or_else(|| Failure::new("the API server answered the TokenRequest without a token"))?;
    let username = format!("system:serviceaccount:{agents_ns}:{name}");
    let context_ns = namespaces
        .first()
        .cloned()
        .unwrap_or_else(|| "default".to_owned());
    let contents = agent_kubeconfig(
        access,
        &format!("{agents_ns}/{name}"),
        &status.token,
        &context_ns,
    );
    let path = out_path(args, &name);
    write_private(&path, &contents)
        .map_err(|e| Failure::new(format!("cannot write {}: {e}", path.display())))?;
    let path = std::fs::canonicalize(&path).unwrap_or(path);
    Ok(Issued {
        agent: name.clone(),
        service_account: format!("{agents_ns}/{name}"),
        username,
        uid: sa.uid().unwrap_or_default(),
        changes,
        namespaces: namespaces.to_vec(),
        role: None,
        kubeconfig: path.display().to_string(),
        context_namespace: context_ns,
        requested_ttl_seconds: ttl.as_secs() as i64,
        expires_at: rfc3339(status.expiration_timestamp.0),
    })
}

fn out_path(args: &IssueArgs, agent: &str) -> PathBuf {
    args.kubeconfig_out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{agent}.kubeconfig")))
}

/// Whether the kubeconfig can go there, asked before anything changes in the cluster.
fn check_out_dir(path: &Path) -> Result<(), Failure> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if path.is_dir() || !dir.is_dir() {
        return Err(Failure::with_code(
            2,
            format!(
                "--kubeconfig-out {}: not a file in an existing directory",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// Writes a file only its owner may read, replacing any file there in one step (never a moment
/// with the token in a file others may read).
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("not a file name"))?
        .to_string_lossy()
        .into_owned();
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = (|| {
        let mut file = options.open(&tmp)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

fn report(ctx: &Ctx, issued: &Issued) {
    if ctx.output != Output::Table {
        print(ctx.output, &[], &[], issued);
        return;
    }
    for change in &issued.changes {
        println!("{change}");
    }
    let expires: Option<Timestamp> = issued.expires_at.parse().ok();
    let left = expires
        .map(|t| t.as_second() - Timestamp::now().as_second())
        .unwrap_or_default();
    println!(
        "wrote {} (mode 0600): a token for {}, namespace {}",
        issued.kubeconfig, issued.username, issued.context_namespace
    );
    println!(
        "it expires at {} (in {}); the API server refuses it after that",
        issued.expires_at,
        lifetime(left)
    );
    if left + 60 < issued.requested_ttl_seconds {
        println!(
            "note: asked for {}, the API server issued {} (its --service-account-max-token-expiration)",
            lifetime(issued.requested_ttl_seconds),
            lifetime(left)
        );
    }
    println!();
    println!("Give the agent this file and no other credentials. In the agent's sandbox:");
    println!("  export KUBECONFIG={}", issued.kubeconfig);
    println!(
        "It works in {} only; agentguard refuses its deletions of protected data until a human approves.",
        issued.namespaces.join(", ")
    );
    println!(
        "Keep your own kubeconfig out of its reach: to Kubernetes, an agent holding your credentials is you."
    );
    let agents_ns = issued
        .service_account
        .split_once('/')
        .map(|(ns, _)| ns)
        .unwrap_or_default();
    let ns_flag = if agents_ns == DEFAULT_AGENTS_NAMESPACE {
        String::new()
    } else {
        format!(" --agents-namespace {agents_ns}")
    };
    println!(
        "A fresh token: kubectl agentguard agent token {}{ns_flag} --kubeconfig-out {}",
        issued.agent, issued.kubeconfig
    );
    println!(
        "Cut it off:    kubectl agentguard agent revoke {}{ns_flag}",
        issued.agent
    );
}

/// A labelled ServiceAccount of the agents namespace, or why there is none.
async fn find_agent(
    client: &kube::Client,
    agents_ns: &str,
    name: &str,
) -> Result<Option<ServiceAccount>, Failure> {
    let sa = Api::<ServiceAccount>::namespaced(client.clone(), agents_ns)
        .get_opt(name)
        .await
        .map_err(|e| api_failure(&format!("cannot read ServiceAccount {agents_ns}/{name}"), e))?;
    match sa {
        Some(sa) if !is_agent(&sa) => Err(Failure::new(format!(
            "ServiceAccount {agents_ns}/{name} is not an agent (no {AGENT_LABEL}=true label)"
        ))),
        other => Ok(other),
    }
}

async fn run_token(ctx: &Ctx, source: &Source<'_>, agents_ns: &str, args: TokenArgs) -> Outcome {
    let name = args.name.trim().to_owned();
    check_name("agent name", &name)?;
    let ttl = parse_ttl(&args.issue.ttl)?;
    let access = read_access(source)?;
    check_out_dir(&out_path(&args.issue, &name))?;
    let sa = find_agent(&ctx.client, agents_ns, &name)
        .await?
        .ok_or_else(|| {
            Failure::new(format!(
                "no agent {name} in namespace {agents_ns}: create it with kubectl agentguard agent create {name} --namespaces ..."
            ))
        })?;
    let bindings = agent_bindings(&ctx.client, agents_ns, &name).await?;
    let mut bound: Vec<String> = bindings.iter().filter_map(|b| b.namespace()).collect();
    bound.sort();
    bound.dedup();
    // The order named at creation, for the namespaces still bound.
    let mut namespaces: Vec<String> = sa
        .annotations()
        .get(NAMESPACES_ANNOTATION)
        .map(|a| {
            a.split(',')
                .map(str::trim)
                .filter(|ns| bound.iter().any(|b| b == ns))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    for ns in &bound {
        if !namespaces.contains(ns) {
            namespaces.push(ns.clone());
        }
    }
    if namespaces.is_empty() {
        eprintln!(
            "warning: agent {agents_ns}/{name} has no bindings made by agentguard: its token can do only what other bindings allow"
        );
    }
    let roles: BTreeSet<String> = bindings.iter().map(|b| b.role_ref.name.clone()).collect();
    let role = (!roles.is_empty()).then(|| roles.into_iter().collect::<Vec<_>>().join(","));
    let mut issued = issue(
        ctx,
        &access,
        agents_ns,
        &sa,
        &namespaces,
        &args.issue,
        ttl,
        Vec::new(),
    )
    .await?;
    issued.role = role;
    report(ctx, &issued);
    Ok(ExitCode::SUCCESS)
}

/// A binding that names an agent, as `list` and `revoke` show it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
struct BindingView {
    kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    name: String,
    role: String,
    /// How it reaches the agent: by name, as user, via group ...
    how: String,
}

impl std::fmt::Display for BindingView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{}/{ns}/{} -> {}", self.kind, self.name, self.role)?,
            None => write!(f, "{}/{} -> {}", self.kind, self.name, self.role)?,
        }
        if self.how != "by name" {
            write!(f, " ({})", self.how)?;
        }
        Ok(())
    }
}

/// Every binding naming `namespace/name` that is not labelled as its own (those agentguard made):
/// RoleBindings and ClusterRoleBindings by name, as user, or through a ServiceAccount group;
/// the cluster's bootstrap bindings left out.
fn other_bindings(
    role_bindings: &[RoleBinding],
    cluster_role_bindings: &[ClusterRoleBinding],
    namespace: &str,
    name: &str,
) -> Vec<BindingView> {
    let ours = |meta: &ObjectMeta| {
        let labels = meta.labels.as_ref();
        let get = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
        get(AGENT_NAME_LABEL) == Some(name) && get(AGENT_NAMESPACE_LABEL) == Some(namespace)
    };
    let bootstrap = |meta: &ObjectMeta| {
        meta.labels
            .as_ref()
            .is_some_and(|l| l.contains_key(BOOTSTRAP_LABEL))
    };
    let reach = |subjects: Option<&Vec<Subject>>, binding_ns: Option<&str>| {
        subjects
            .into_iter()
            .flatten()
            .find_map(|s| subject_reaches(s, binding_ns, namespace, name))
    };
    let mut out = Vec::new();
    for b in role_bindings {
        if ours(&b.metadata) || bootstrap(&b.metadata) {
            continue;
        }
        if let Some(how) = reach(b.subjects.as_ref(), b.metadata.namespace.as_deref()) {
            out.push(BindingView {
                kind: "RoleBinding".into(),
                namespace: b.metadata.namespace.clone(),
                name: b.name_any(),
                role: format!("{}/{}", b.role_ref.kind, b.role_ref.name),
                how,
            });
        }
    }
    for b in cluster_role_bindings {
        if ours(&b.metadata) || bootstrap(&b.metadata) {
            continue;
        }
        if let Some(how) = reach(b.subjects.as_ref(), None) {
            out.push(BindingView {
                kind: "ClusterRoleBinding".into(),
                namespace: None,
                name: b.name_any(),
                role: format!("{}/{}", b.role_ref.kind, b.role_ref.name),
                how,
            });
        }
    }
    out.sort();
    out
}

/// One agent as `list` shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct AgentView {
    namespace: String,
    name: String,
    username: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    managed_by: Option<String>,
    /// Its bindings made by agentguard (plugin or chart): namespace -> ClusterRole.
    bound: Vec<Bound>,
    /// Bindings naming it that agentguard did not make.
    other_bindings: Vec<BindingView>,
    notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct Bound {
    namespace: String,
    binding: String,
    role: String,
}

async fn run_list(ctx: &Ctx, agents_ns: &str) -> Outcome {
    let client = &ctx.client;
    let (sas, role_bindings, cluster_role_bindings) = tokio::try_join!(
        list_all::<ServiceAccount>(
            client,
            ListParams::default().labels(&format!("{AGENT_LABEL}=true")),
            "ServiceAccounts",
        ),
        list_all::<RoleBinding>(client, ListParams::default(), "RoleBindings"),
        list_all::<ClusterRoleBinding>(client, ListParams::default(), "ClusterRoleBindings"),
    )?;
    let mut agents: Vec<AgentView> = sas
        .iter()
        .map(|sa| {
            let namespace = sa.namespace().unwrap_or_default();
            let name = sa.name_any();
            let order: Vec<String> = sa
                .annotations()
                .get(NAMESPACES_ANNOTATION)
                .map(|a| a.split(',').map(|s| s.trim().to_owned()).collect())
                .unwrap_or_default();
            let mut bound: Vec<Bound> = role_bindings
                .iter()
                .filter(|b| {
                    let labels = b.labels();
                    labels.get(AGENT_NAME_LABEL) == Some(&name)
                        && labels.get(AGENT_NAMESPACE_LABEL) == Some(&namespace)
                })
                .map(|b| Bound {
                    namespace: b.namespace().unwrap_or_default(),
                    binding: b.name_any(),
                    role: b.role_ref.name.clone(),
                })
                .collect();
            bound.sort_by_key(|b| {
                (
                    order
                        .iter()
                        .position(|o| *o == b.namespace)
                        .unwrap_or(usize::MAX),
                    b.namespace.clone(),
                )
            });
            let others = other_bindings(&role_bindings, &cluster_role_bindings, &namespace, &name);
            let mut notes = Vec::new();
            if namespace != agents_ns {
                notes.push(format!("outside {agents_ns}"));
            }
            if bound.is_empty() {
                notes.push("no bindings made by agentguard".to_owned());
            }
            for b in &others {
                notes.push(format!("{b} not made by agentguard"));
            }
            AgentView {
                username: format!("system:serviceaccount:{namespace}:{name}"),
                managed_by: managed_by(&sa.metadata).map(str::to_owned),
                namespace,
                name,
                bound,
                other_bindings: others,
                notes,
            }
        })
        .collect();
    agents.sort_by(|a, b| {
        (a.namespace != agents_ns, &a.namespace, &a.name).cmp(&(
            b.namespace != agents_ns,
            &b.namespace,
            &b.name,
        ))
    });
    let rows: Vec<Vec<String>> = agents
        .iter()
        .map(|a| {
            let roles: BTreeSet<&str> = a.bound.iter().map(|b| b.role.as_str()).collect();
            let dash = |s: String| if s.is_empty() { "-".to_owned() } else { s };
            vec![
                format!("{}/{}", a.namespace, a.name),
                dash(roles.into_iter().collect::<Vec<_>>().join(",")),
                dash(
                    a.bound
                        .iter()
                        .map(|b| b.namespace.as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                ),
                a.managed_by.clone().unwrap_or_else(|| "-".to_owned()),
                a.notes.join("; "),
            ]
        })
        .collect();
    print(
        ctx.output,
        &["AGENT", "ROLE", "NAMESPACES", "MANAGED BY", "NOTES"],
        &rows,
        &agents,
    );
    if ctx.output == Output::Table {
        let flagged = agents
            .iter()
            .filter(|a| !a.other_bindings.is_empty())
            .count();
        let outside = agents.iter().filter(|a| a.namespace != agents_ns).count();
        let count = match agents.len() {
            1 => "1 agent".to_owned(),
            n => format!("{n} agents"),
        };
        println!(
            "{count} ({outside} outside {agents_ns}); {flagged} with bindings agentguard did not make"
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Revoked {
    service_account: String,
    deleted_service_account: bool,
    deleted_bindings: Vec<String>,
    other_bindings: Vec<BindingView>,
}

async fn run_revoke(ctx: &Ctx, agents_ns: &str, args: RevokeArgs) -> Outcome {
    let client = &ctx.client;
    let name = args.name.trim().to_owned();
    check_name("agent name", &name)?;
    let sa = find_agent(client, agents_ns, &name).await?;
    let bindings = agent_bindings(client, agents_ns, &name).await?;
    if sa.is_none() && bindings.is_empty() {
        return Err(Failure::new(format!(
            "no agent {name} in namespace {agents_ns} (nothing to revoke)"
        )));
    }
    // Bindings first: the RBAC authorizer drops them at once, while the API server may keep
    // accepting a token it authenticated in the last 10 s (its token cache) after the
    // ServiceAccount is gone.
    let mut deleted_bindings = Vec::new();
    for b in &bindings {
        let ns = b.namespace().unwrap_or_default();
        delete_binding(client, &ns, &b.name_any()).await?;
        deleted_bindings.push(format!("{ns}/{}", b.name_any()));
    }
    let mut deleted_sa = false;
    if sa.is_some() {
        // Foreground is not needed: a ServiceAccount has no dependents that keep its tokens.
        match Api::<ServiceAccount>::namespaced(client.clone(), agents_ns)
            .delete(&name, &DeleteParams::default())
            .await
        {
            Ok(_) => deleted_sa = true,
            Err(e) if is_not_found(&e) => {}
            Err(e) => {
                return Err(api_failure(
                    &format!("cannot delete ServiceAccount {agents_ns}/{name}"),
                    e,
                ));
            }
        }
    }
    let (role_bindings, cluster_role_bindings) = tokio::try_join!(
        list_all::<RoleBinding>(client, ListParams::default(), "RoleBindings"),
        list_all::<ClusterRoleBinding>(client, ListParams::default(), "ClusterRoleBindings"),
    )?;
    let others: Vec<BindingView> =
        other_bindings(&role_bindings, &cluster_role_bindings, agents_ns, &name)
            .into_iter()
            .filter(|b| b.how == "by name" || b.how == "as user")
            .collect();
    let revoked = Revoked {
        service_account: format!("{agents_ns}/{name}"),
        deleted_service_account: deleted_sa,
        deleted_bindings,
        other_bindings: others,
    };
    if ctx.output != Output::Table {
        print(ctx.output, &[], &[], &revoked);
        return Ok(ExitCode::SUCCESS);
    }
    for b in &revoked.deleted_bindings {
        let (ns, bname) = b.split_once('/').unwrap_or(("", b));
        println!("rolebinding/{bname} deleted in {ns}");
    }
    if deleted_sa {
        println!("serviceaccount/{name} deleted in {agents_ns}");
        println!(
            "Every token issued to {agents_ns}/{name} is now refused (401 Unauthorized). One used \
             in the last 10 s may still authenticate for up to 10 s (the API server caches \
             successful authentications), with no bindings left to use."
        );
    }
    if sa
        .as_ref()
        .is_some_and(|sa| managed_by(&sa.metadata) == Some(HELM))
    {
        eprintln!(
            "warning: {agents_ns}/{name} was declared in the agentguard chart's values: the next \
             helm upgrade re-creates it unless you remove it from agentCredentials.agents"
        );
    }
    for b in &revoked.other_bindings {
        eprintln!(
            "warning: {b} still names {agents_ns}/{name}; agentguard did not make it and left it: \
             a ServiceAccount re-created with this name would get its rights"
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels() {
        for good in ["cursor", "a", "claude-2", &"x".repeat(63)] {
            assert!(check_name("agent name", good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Cursor",
            "-a",
            "a-",
            "a_b",
            "a.b",
            "a/b",
            &"x".repeat(64),
        ] {
            assert_eq!(check_name("agent name", bad).unwrap_err().code, 2, "{bad}");
        }
    }

    #[test]
    fn roles_have_presets() {
        assert_eq!(role_name("edit"), EDIT_ROLE);
        assert_eq!(role_name(" view "), VIEW_ROLE);
        assert_eq!(role_name("my-role"), "my-role");
    }

    #[test]
    fn ttls_are_bounded_by_the_api_server_and_by_agentguard() {
        assert_eq!(parse_ttl("8h").unwrap(), Duration::from_secs(8 * 3600));
        assert_eq!(parse_ttl("10m").unwrap(), MIN_TTL);
        assert_eq!(parse_ttl("24h").unwrap(), MAX_TTL);
        for (bad, needle) in [
            ("9m59s", "shorter than 10m"),
            ("24h1s", "longer than 24h"),
            ("1d", "not a duration"),
            ("", "not a duration"),
        ] {
            let f = parse_ttl(bad).unwrap_err();
            assert_eq!(f.code, 2);
            assert!(f.message.contains(needle), "{bad}: {}", f.message);
        }
    }

    #[test]
    fn working_namespaces_keep_order_and_refuse_the_guards_own() {
        let given = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            working_namespaces(
                &given(&["staging", " dev", "staging", ""]),
                "ag-agents",
                "ag"
            )
            .unwrap(),
            ["staging", "dev"]
        );
        for (bad, needle) in [
            ("ag-agents", "agents namespace"),
            ("ag", "agentguard's own namespace"),
            ("kube-system", "controllers"),
            ("Prod", "not a valid name"),
        ] {
            let f = working_namespaces(&given(&["staging", bad]), "ag-agents", "ag").unwrap_err();
            assert_eq!(f.code, 2);
            assert!(f.message.contains(needle), "{bad}: {}", f.message);
        }
        assert!(working_namespaces(&given(&[" "]), "a", "b").is_err());
    }

    fn bound(ns: &str, name: &str, role: &str, subject_ok: bool) -> BoundAs {
        BoundAs {
            namespace: ns.into(),
            name: name.into(),
            role_kind: "ClusterRole".into(),
            role: role.into(),
            subject_is_agent: subject_ok,
        }
    }

    #[test]
    fn binding_plans_reach_exactly_the_named_namespaces() {
        let b = "agentguard-agent-cursor";
        let desired = ["staging".to_owned(), "dev".to_owned()];
        // first run: everything new
        assert_eq!(
            plan_bindings(&desired, b, EDIT_ROLE, &[]),
            [
                BindingChange::Create {
                    namespace: "staging".into(),
                    name: b.into()
                },
                BindingChange::Create {
                    namespace: "dev".into(),
                    name: b.into()
                },
            ]
        );
        // re-run: nothing changes
        let existing = [
            bound("dev", b, EDIT_ROLE, true),
            bound("staging", b, EDIT_ROLE, true),
        ];
        assert!(
            plan_bindings(&desired, b, EDIT_ROLE, &existing)
                .iter()
                .all(|c| matches!(c, BindingChange::Keep { .. }))
        );
        // dev dropped, qa added, staging's role changed, a stray second binding in staging,
        // a tampered subject list in qa
        let existing = [
            bound("dev", b, EDIT_ROLE, true),
            bound("staging", b, EDIT_ROLE, true),
            bound("staging", "copy", EDIT_ROLE, true),
            bound("qa", b, VIEW_ROLE, false),
        ];
        let desired = ["staging".to_owned(), "qa".to_owned()];
        assert_eq!(
            plan_bindings(&desired, b, VIEW_ROLE, &existing),
            [
                BindingChange::Replace {
                    namespace: "staging".into(),
                    name: b.into(),
                    was: format!("ClusterRole/{EDIT_ROLE}")
                },
                BindingChange::Replace {
                    namespace: "qa".into(),
                    name: b.into(),
                    was: format!("ClusterRole/{VIEW_ROLE}")
                },
                BindingChange::Delete {
                    namespace: "dev".into(),
                    name: b.into()
                },
                BindingChange::Delete {
                    namespace: "staging".into(),
                    name: "copy".into()
                },
            ]
        );
        // a Role (not a ClusterRole) of the same name is replaced too
        let mut role = bound("staging", b, EDIT_ROLE, true);
        role.role_kind = "Role".into();
        assert!(matches!(
            plan_bindings(&desired[..1], b, EDIT_ROLE, &[role])[0],
            BindingChange::Replace { .. }
        ));
    }

    fn subject(kind: &str, name: &str, ns: Option<&str>) -> Subject {
        Subject {
            api_group: None,
            kind: kind.into(),
            name: name.into(),
            namespace: ns.map(str::to_owned),
        }
    }

    #[test]
    fn subjects_reach_a_service_account_by_name_user_or_group() {
        let reach = |s: &Subject, binding_ns| subject_reaches(s, binding_ns, "agents", "cursor");
        assert_eq!(
            reach(&subject("ServiceAccount", "cursor", Some("agents")), None).as_deref(),
            Some("by name")
        );
        // no namespace in the subject: the RoleBinding's own
        assert!(reach(&subject("ServiceAccount", "cursor", None), Some("agents")).is_some());
        assert!(reach(&subject("ServiceAccount", "cursor", None), Some("prod")).is_none());
        assert!(reach(&subject("ServiceAccount", "other", Some("agents")), None).is_none());
        assert_eq!(
            reach(
                &subject("User", "system:serviceaccount:agents:cursor", None),
                None
            )
            .as_deref(),
            Some("as user")
        );
        assert_eq!(
            reach(
                &subject("Group", "system:serviceaccounts:agents", None),
                None
            )
            .as_deref(),
            Some("via group system:serviceaccounts:agents")
        );
        assert!(reach(&subject("Group", "system:serviceaccounts:prod", None), None).is_none());
        assert!(reach(&subject("User", "cursor", None), None).is_none());
        assert!(subject_is_agent(
            Some(&vec![agent_subject("agents", "cursor")]),
            "agents",
            "cursor"
        ));
        assert!(!subject_is_agent(
            Some(&vec![
                agent_subject("agents", "cursor"),
                subject("User", "x", None)
            ]),
            "agents",
            "cursor"
        ));
        assert!(!subject_is_agent(None, "agents", "cursor"));
    }

    fn rb(ns: &str, name: &str, labels: &[(&str, &str)], subjects: Vec<Subject>) -> RoleBinding {
        RoleBinding {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            role_ref: RoleRef {
                api_group: RBAC_GROUP.into(),
                kind: "ClusterRole".into(),
                name: "admin".into(),
            },
            subjects: Some(subjects),
        }
    }

    #[test]
    fn other_bindings_are_those_agentguard_did_not_make() {
        let me = || agent_subject("agents", "cursor");
        let ours = rb(
            "staging",
            "agentguard-agent-cursor",
            &[
                (AGENT_NAME_LABEL, "cursor"),
                (AGENT_NAMESPACE_LABEL, "agents"),
            ],
            vec![me()],
        );
        // labelled for another agent of the same name elsewhere: not ours
        let theirs = rb(
            "prod",
            "agentguard-agent-cursor",
            &[
                (AGENT_NAME_LABEL, "cursor"),
                (AGENT_NAMESPACE_LABEL, "other"),
            ],
            vec![me()],
        );
        let by_hand = rb("prod", "cursor-admin", &[], vec![me()]);
        let unrelated = rb("prod", "x", &[], vec![subject("User", "alice", None)]);
        let crb = ClusterRoleBinding {
            metadata: ObjectMeta {
                name: Some("all-sas".into()),
                ..Default::default()
            },
            role_ref: RoleRef {
                api_group: RBAC_GROUP.into(),
                kind: "ClusterRole".into(),
                name: "view".into(),
            },
            subjects: Some(vec![subject("Group", "system:serviceaccounts", None)]),
        };
        let mut bootstrap = crb.clone();
        bootstrap.metadata.name = Some("system:discovery".into());
        bootstrap.metadata.labels = Some([(BOOTSTRAP_LABEL.into(), "rbac-defaults".into())].into());
        let found = other_bindings(
            &[ours, theirs, by_hand, unrelated],
            &[crb, bootstrap],
            "agents",
            "cursor",
        );
        let shown: Vec<String> = found.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "ClusterRoleBinding/all-sas -> ClusterRole/view (via group system:serviceaccounts)",
                "RoleBinding/prod/agentguard-agent-cursor -> ClusterRole/admin",
                "RoleBinding/prod/cursor-admin -> ClusterRole/admin",
            ]
        );
    }

    fn kubeconfig(yaml: &str) -> Kubeconfig {
        Kubeconfig::from_yaml(yaml).unwrap()
    }

    const SOURCE: &str = "apiVersion: v1\nkind: Config\ncurrent-context: admin\n\
        clusters:\n- name: prod\n  cluster:\n    server: https://10.0.0.1:6443\n    certificate-authority-data: Q0EK\n\
        - name: lab\n  cluster:\n    server: https://lab:6443\n    certificate-authority: /etc/lab/ca.crt\n    tls-server-name: api.lab\n\
        - name: bare\n  cluster:\n    server: https://bare:6443\n    insecure-skip-tls-verify: true\n\
        users:\n- name: admin\n  user:\n    client-certificate-data: QUJD\n    client-key-data: QUJD\n\
        contexts:\n- name: admin\n  context:\n    cluster: prod\n    user: admin\n\
        - name: lab\n  context:\n    cluster: lab\n    user: admin\n\
        - name: bare\n  context:\n    cluster: bare\n    user: admin\n- name: nowhere\n  context:\n    cluster: gone\n";

    #[test]
    fn the_agents_cluster_is_the_plugins_context_with_its_ca_inline() {
        let config = kubeconfig(SOURCE);
        let no_files = |_: &str| -> std::io::Result<Vec<u8>> { panic!("no file expected") };
        let prod = cluster_access(&config, None, no_files).unwrap();
        assert_eq!(
            prod,
            ClusterAccess {
                name: "prod".into(),
                server: "https://10.0.0.1:6443".into(),
                ca_data: Some("Q0EK".into()),
                insecure: false,
                tls_server_name: None,
                proxy_url: None,
            }
        );
        let files = |path: &str| -> std::io::Result<Vec<u8>> {
            assert_eq!(path, "/etc/lab/ca.crt");
            Ok(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".to_vec())
        };
        let lab = cluster_access(&config, Some("lab"), files).unwrap();
        assert_eq!(
            lab.ca_data.as_deref(),
            Some(
                "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUIKLS0tLS1FTkQgQ0VSVElGSUNBVEUtLS0tLQo="
            )
        );
        assert_eq!(lab.tls_server_name.as_deref(), Some("api.lab"));
        let bare = cluster_access(&config, Some("bare"), no_files).unwrap();
        assert!(bare.insecure && bare.ca_data.is_none());

        let missing = |_: &str| -> std::io::Result<Vec<u8>> {
            Err(std::io::Error::from(std::io::ErrorKind::NotFound))
        };
        let err = cluster_access(&config, Some("lab"), missing).unwrap_err();
        assert!(
            err.contains("cannot read certificate-authority /etc/lab/ca.crt"),
            "{err}"
        );
        let err = cluster_access(&config, Some("nowhere"), no_files).unwrap_err();
        assert!(err.contains("cluster \"gone\""), "{err}");
        let err = cluster_access(&config, Some("typo"), no_files).unwrap_err();
        assert!(
            err.contains("context \"typo\" is not in the kubeconfig"),
            "{err}"
        );
        let err = cluster_access(
            &kubeconfig("apiVersion: v1\nkind: Config\n"),
            None,
            no_files,
        )
        .unwrap_err();
        assert!(err.contains("no current context"), "{err}");
        let bad = SOURCE.replace("Q0EK", "not*base64");
        let err = cluster_access(&kubeconfig(&bad), None, no_files).unwrap_err();
        assert!(err.contains("not base64"), "{err}");
    }

    #[test]
    fn the_agents_kubeconfig_holds_the_token_and_nothing_of_the_humans() {
        let config = kubeconfig(SOURCE);
        let access = cluster_access(&config, None, |_| unreachable!()).unwrap();
        let token = format!("eyJhbGciOiJSUzI1NiJ9.{}.sig-_", "a".repeat(900));
        let yaml = agent_kubeconfig(&access, "agentguard-agents/cursor", &token, "staging");
        let parsed = kubeconfig(&yaml);
        assert_eq!(
            parsed.current_context.as_deref(),
            Some("agentguard-agents/cursor")
        );
        let context = parsed.contexts[0].context.as_ref().unwrap();
        assert_eq!(context.namespace.as_deref(), Some("staging"));
        assert_eq!(context.cluster, "prod");
        let cluster = parsed.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://10.0.0.1:6443"));
        assert_eq!(cluster.certificate_authority_data.as_deref(), Some("Q0EK"));
        assert_eq!(cluster.insecure_skip_tls_verify, None);
        assert_eq!(parsed.auth_infos.len(), 1);
        // the token survives YAML verbatim, on one line
        let as_json: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(as_json["users"][0]["user"]["token"], token);
        assert!(yaml.contains(&format!("    token: {token}\n")), "{yaml}");
        assert!(
            !yaml.contains("QUJD"),
            "the human's credentials leaked:\n{yaml}"
        );
    }

    #[test]
    fn kubeconfig_files_are_private_and_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cursor.kubeconfig");
        std::fs::write(&path, "old").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        write_private(&path, "new").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn the_kubeconfig_goes_to_a_file_in_an_existing_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_out_dir(&dir.path().join("a.kubeconfig")).is_ok());
        assert!(check_out_dir(Path::new("a.kubeconfig")).is_ok());
        assert_eq!(check_out_dir(dir.path()).unwrap_err().code, 2);
        assert_eq!(
            check_out_dir(&dir.path().join("missing/a.kubeconfig"))
                .unwrap_err()
                .code,
            2
        );
        let args = IssueArgs {
            ttl: "8h".into(),
            kubeconfig_out: None,
        };
        assert_eq!(
            out_path(&args, "cursor"),
            PathBuf::from("cursor.kubeconfig")
        );
    }

    #[test]
    fn lifetimes_round_to_the_minute() {
        assert_eq!(lifetime(8 * 3600 - 1), "8h");
        assert_eq!(lifetime(599), "10m");
        assert_eq!(
            rfc3339("2026-11-26T10:21:00.5Z".parse().unwrap()),
            "2026-11-26T10:21:00Z"
        );
    }
}
