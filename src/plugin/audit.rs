//! `kubectl agentguard audit`: where restricted identities can delete protected data, and where
//! they can get around the guard altogether ("tokens scoped per environment").
//!
//! Every question goes to the API server as a SubjectAccessReview, so each answer is what its
//! authorizers really decide; RBAC objects are read only to name the binding behind a yes.
//! Deleting protected objects is `info`: the webhook denies it, but it shows how far a token
//! reaches. A `bypass` is a permission the webhook cannot see or stop: agentguard's own
//! registration, CRDs, namespace, Deployment and certificate, impersonation, RBAC escalation,
//! and ways to act as an identity that is not restricted. `audit` exits 3 when it finds one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::ExitCode;

use clap::Args;
use futures::{StreamExt, stream};
use k8s_openapi::api::admissionregistration::v1::{
    RuleWithOperations, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, ListParams, PostParams, ResourceExt};
use kube::core::{DynamicObject, Selector, SelectorExt};
use kube::discovery::Scope;
use serde::Serialize;

use super::{Ctx, Failure, Outcome, Output, print};
use crate::api::{
    AGENT_LABEL, ClusterProtectedResource, Mode, PROTECTED_ANNOTATION, ProtectedResource,
    ProtectionSpec,
};
use crate::index::KindResolver;
use crate::policy::{
    AgentDefinition, AgentMatcher, CompiledPolicy, GlobList, ObjectFacts, PolicyRef, Snapshot,
    compile,
};

/// SubjectAccessReviews in flight at once.
const PARALLEL_REVIEWS: usize = 16;
const KUBE_SYSTEM: &str = "kube-system";
const AUTHENTICATED: &str = "system:authenticated";
/// The synthetic user that stands for "any member of this group".
const GROUP_MEMBER_PREFIX: &str = "agentguard-audit:member-of:";
/// The chart's names, used when agentguard's Deployment does not say otherwise.
const DEFAULT_NAME: &str = "agentguard";
const DEFAULT_TLS_SECRET: &str = "agentguard-webhook-tls";
const DEFAULT_KEY_SECRET: &str = "agentguard-approval-keys";
const CHART_SELECTOR: &str = "app.kubernetes.io/name=agentguard";
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
const AGENTGUARD_CRDS: [&str; 2] = [
    "protectedresources.agentguard.dev",
    "clusterprotectedresources.agentguard.dev",
];
/// `agentguard run --annotation-kinds` default.
const DEFAULT_ANNOTATION_KINDS: [&str; 4] = [
    "PersistentVolumeClaim",
    "PersistentVolume",
    "snapshot.storage.k8s.io/VolumeSnapshot",
    "snapshot.storage.k8s.io/VolumeSnapshotContent",
];
/// GitOps objects whose changes make a tool prune, with what agentguard cannot judge of them.
const GITOPS_UNJUDGED: [(&str, &str, &str); 6] = [
    (
        "source.toolkit.fluxcd.io",
        "gitrepositories",
        "a Flux source's URL or revision decides what its Kustomizations apply; pointing it elsewhere makes Flux prune protected objects, and agentguard cannot see that",
    ),
    (
        "source.toolkit.fluxcd.io",
        "ocirepositories",
        "a Flux source's URL or tag decides what its Kustomizations apply; pointing it elsewhere makes Flux prune protected objects, and agentguard cannot see that",
    ),
    (
        "source.toolkit.fluxcd.io",
        "buckets",
        "a Flux source's bucket decides what its Kustomizations apply; pointing it elsewhere makes Flux prune protected objects, and agentguard cannot see that",
    ),
    (
        "helm.toolkit.fluxcd.io",
        "helmreleases",
        "agentguard judges a HelmRelease's chart and deletion, not its values: values that drop a claim make helm-controller delete it",
    ),
    (
        "argoproj.io",
        "applicationsets",
        "deleting or rewriting an ApplicationSet deletes the Applications it generated, and Argo CD then deletes what they manage",
    ),
    (
        "argoproj.io",
        "appprojects",
        "an AppProject's destinations and source repositories decide what its Applications may apply; agentguard cannot see what a change makes Argo CD prune",
    ),
];

/// Whoever may create one of these in a namespace can run a pod as any ServiceAccount there:
/// nothing checks that the creator may use the account it names.
const POD_MAKERS: [(&str, &str); 8] = [
    ("", "pods"),
    ("", "replicationcontrollers"),
    ("apps", "deployments"),
    ("apps", "replicasets"),
    ("apps", "statefulsets"),
    ("apps", "daemonsets"),
    ("batch", "jobs"),
    ("batch", "cronjobs"),
];

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Agent ServiceAccounts as namespace/name globs, comma separated (default: the args of
    /// agentguard's Deployment in --agentguard-namespace).
    #[arg(long, value_delimiter = ',')]
    pub agent_service_accounts: Vec<String>,
    /// Groups whose members are agents, comma separated (default: from agentguard's Deployment).
    #[arg(long, value_delimiter = ',')]
    pub agent_groups: Vec<String>,
    /// Username globs of agents, comma separated (default: from agentguard's Deployment).
    #[arg(long, value_delimiter = ',')]
    pub agent_usernames: Vec<String>,
    /// Groups that are never restricted, comma separated (default: from agentguard's Deployment).
    #[arg(long, value_delimiter = ',')]
    pub break_glass_groups: Vec<String>,
    /// Name of agentguard's ValidatingWebhookConfiguration (default: from agentguard's
    /// Deployment, else "agentguard").
    #[arg(long)]
    pub webhook_configuration_name: Option<String>,
    /// Audit only the restricted identities matching these globs, comma separated: a
    /// ServiceAccount as namespace/name, a user or group by name (e.g. "ci/*,bot-*").
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
}

impl AuditArgs {
    fn names_agents(&self) -> bool {
        !(self.agent_service_accounts.is_empty()
            && self.agent_groups.is_empty()
            && self.agent_usernames.is_empty())
    }
}

pub async fn run(ctx: &Ctx, args: AuditArgs) -> Outcome {
    let client = &ctx.client;
    let agns = ctx.agentguard_namespace.as_str();
    let install = Install::find(client, agns).await;
    let (definition, source) = agent_definition(&args, agns, &install)?;
    let matcher = AgentMatcher::new(&definition).map_err(|e| {
        let code = if args.names_agents() { 2 } else { 1 };
        Failure::with_code(code, format!("agent definition ({source}): {e}"))
    })?;
    let only =
        GlobList::new(&args.only).map_err(|e| Failure::with_code(2, format!("--only: {e}")))?;
    let install = install.ok();
    let vwc_name = args
        .webhook_configuration_name
        .clone()
        .or_else(|| install.as_ref()?.flags.single("webhook-configuration-name"))
        .unwrap_or_else(|| DEFAULT_NAME.to_owned());

    let facts = ClusterFacts::load(client, agns, install, &vwc_name, matcher).await?;
    for warning in &facts.warnings {
        eprintln!("warning: {warning}");
    }
    let identities: Vec<Identity> = facts
        .restricted_identities(&definition)
        .into_iter()
        .filter(|i| only.is_empty() || i.who.matches(&only))
        .collect();

    // First who, besides the agents, could do their deleting for them; then the agents.
    let candidates = if identities.is_empty() {
        Vec::new()
    } else {
        facts.deputy_candidates()
    };
    let questions = facts.deputy_questions(&candidates);
    let answers = review_all(client, questions).await?;
    let deputies = facts.deputies(&candidates, &answers);
    let pods_as = pods_running_as(client, &deputies).await;
    let targets = facts.act_as_targets(&deputies, &pods_as);

    let mut checks_by_identity = Vec::new();
    let mut questions = BTreeSet::new();
    for identity in &identities {
        let checks = facts.checks_for(identity, &targets);
        for check in &checks {
            for route in &check.routes {
                for need in &route.needs {
                    questions.insert((identity.principal.clone(), need.clone()));
                }
            }
        }
        checks_by_identity.push(checks);
    }
    let answers = review_all(client, questions).await?;
    let mut findings: Vec<Finding> = identities
        .iter()
        .zip(&checks_by_identity)
        .flat_map(|(identity, checks)| {
            checks
                .iter()
                .filter_map(|check| finding(identity, check, &answers, &facts.rbac))
        })
        .collect();
    findings.sort_by(|a, b| {
        (&a.identity, a.severity, a.check, &a.namespace, &a.can).cmp(&(
            &b.identity,
            b.severity,
            b.check,
            &b.namespace,
            &b.can,
        ))
    });

    let summary = Summary::of(identities.len(), &findings);
    let report = Report {
        agentguard_namespace: agns.to_owned(),
        agent_definition: DefinitionView {
            source,
            service_accounts: definition.service_accounts.clone(),
            groups: definition.groups.clone(),
            usernames: definition.usernames.clone(),
            break_glass_groups: definition.break_glass_groups.clone(),
        },
        webhook_configuration: WebhookView {
            name: vwc_name,
            found: facts.webhook.is_some(),
        },
        identities: identities.iter().map(IdentityView::of).collect(),
        protected: facts.protected.iter().map(ProtectedView::of).collect(),
        findings,
        summary,
    };
    let rows = table_rows(&report.findings);
    print(
        ctx.output,
        &["IDENTITY", "SEVERITY", "CAN", "WHERE", "GRANTED BY"],
        &rows,
        &report,
    );
    if ctx.output == Output::Table {
        println!("{}", report.summary.line());
    }
    Ok(ExitCode::from(exit_code(&report.findings)))
}

/// 3 when any finding is a bypass, so that `audit` can gate CI.
fn exit_code(findings: &[Finding]) -> u8 {
    if findings.iter().any(|f| f.severity == Severity::Bypass) {
        3
    } else {
        0
    }
}

/// The agent definition from the flags when any is given, else from agentguard's Deployment;
/// with where it came from.
fn agent_definition(
    args: &AuditArgs,
    agns: &str,
    install: &Result<Install, String>,
) -> Result<(AgentDefinition, String), Failure> {
    let from_install = |flag: &str| {
        install
            .as_ref()
            .ok()
            .and_then(|i| i.flags.list(flag))
            .unwrap_or_default()
    };
    let break_glass_groups = if args.break_glass_groups.is_empty() {
        from_install("break-glass-groups")
    } else {
        args.break_glass_groups.clone()
    };
    let clean = |v: &[String]| -> Vec<String> {
        v.iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    };
    if args.names_agents() {
        return Ok((
            AgentDefinition {
                service_accounts: clean(&args.agent_service_accounts),
                groups: clean(&args.agent_groups),
                usernames: clean(&args.agent_usernames),
                break_glass_groups: clean(&break_glass_groups),
            },
            "flags".to_owned(),
        ));
    }
    match install {
        Ok(install) => Ok((
            AgentDefinition {
                service_accounts: from_install("agent-service-accounts"),
                groups: from_install("agent-groups"),
                usernames: from_install("agent-usernames"),
                break_glass_groups: clean(&break_glass_groups),
            },
            format!("Deployment {agns}/{}", install.deployment),
        )),
        Err(why) => Err(Failure::new(format!(
            "no agent definition: {why}. Give --agent-service-accounts, --agent-groups or \
             --agent-usernames, or point --agentguard-namespace at agentguard's namespace"
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// agentguard's own Deployment

/// What agentguard's Deployment says about the installation.
#[derive(Debug, Clone)]
struct Install {
    deployment: String,
    service_account: String,
    flags: RunFlags,
    /// The Secret mounted for certificates (cert-manager mode).
    mounted_secret: Option<String>,
}

impl Install {
    /// The chart's Deployment in `agns` (by its name label, else named `agentguard`), or why
    /// there is none.
    async fn find(client: &kube::Client, agns: &str) -> Result<Self, String> {
        let api: Api<Deployment> = Api::namespaced(client.clone(), agns);
        let labelled = api
            .list(&ListParams::default().labels(CHART_SELECTOR))
            .await
            .map_err(|e| {
                format!(
                    "cannot read Deployments in namespace {agns}: {}",
                    Failure::from(e).message
                )
            })?;
        let found = match labelled.items.into_iter().next() {
            Some(d) => d,
            None => api
                .get_opt(DEFAULT_NAME)
                .await
                .map_err(|e| {
                    format!(
                        "cannot read Deployment {agns}/{DEFAULT_NAME}: {}",
                        Failure::from(e).message
                    )
                })?
                .ok_or_else(|| {
                    format!(
                        "no agentguard Deployment in namespace {agns} (labelled {CHART_SELECTOR} or named {DEFAULT_NAME})"
                    )
                })?,
        };
        Ok(Self::of(&found))
    }

    fn of(deployment: &Deployment) -> Self {
        let pod = deployment
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref());
        let containers = pod.map(|p| p.containers.as_slice()).unwrap_or_default();
        let container = containers
            .iter()
            .find(|c| c.name == DEFAULT_NAME)
            .or_else(|| {
                containers.iter().find(|c| {
                    c.args.as_ref().and_then(|a| a.first()).map(String::as_str) == Some("run")
                })
            })
            .or(containers.first());
        let (args, env) = container
            .map(|c| {
                let args: Vec<String> = c
                    .command
                    .iter()
                    .flatten()
                    .chain(c.args.iter().flatten())
                    .cloned()
                    .collect();
                let env: Vec<(String, String)> = c
                    .env
                    .iter()
                    .flatten()
                    .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
                    .collect();
                (args, env)
            })
            .unwrap_or_default();
        let mounted_secret = pod
            .and_then(|p| p.volumes.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|v| v.secret.as_ref()?.secret_name.clone())
            .next();
        Self {
            deployment: deployment.name_any(),
            service_account: pod
                .and_then(|p| p.service_account_name.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".to_owned()),
            flags: RunFlags::parse(&args, &env),
            mounted_secret,
        }
    }

    /// The Secret holding the approval-sealing keys, when it is in agentguard's namespace.
    fn key_secret(&self, agns: &str) -> Option<String> {
        match self.flags.single("approval-key-secret") {
            Some(s) => match s.split_once('/') {
                Some((ns, name)) => (ns == agns).then(|| name.to_owned()),
                None => Some(s),
            },
            None => Some(DEFAULT_KEY_SECRET.to_owned()),
        }
    }

    /// The Secret holding the webhook's serving certificate, when it is in agentguard's namespace.
    fn tls_secret(&self, agns: &str) -> Option<String> {
        match self.flags.single("cert-secret") {
            Some(s) => match s.split_once('/') {
                Some((ns, name)) => (ns == agns).then(|| name.to_owned()),
                None => Some(s),
            },
            None => self.mounted_secret.clone(),
        }
    }
}

/// The `agentguard run` flags audit reads, from a container's args or its literal env values
/// (clap's order: an argument wins over its environment variable).
#[derive(Debug, Clone, Default, PartialEq)]
struct RunFlags {
    values: BTreeMap<&'static str, Vec<String>>,
}

const RUN_FLAGS: [(&str, &str); 8] = [
    (
        "agent-service-accounts",
        "AGENTGUARD_AGENT_SERVICE_ACCOUNTS",
    ),
    ("agent-groups", "AGENTGUARD_AGENT_GROUPS"),
    ("agent-usernames", "AGENTGUARD_AGENT_USERNAMES"),
    ("break-glass-groups", "AGENTGUARD_BREAK_GLASS_GROUPS"),
    (
        "webhook-configuration-name",
        "AGENTGUARD_WEBHOOK_CONFIGURATION_NAME",
    ),
    ("cert-secret", "AGENTGUARD_CERT_SECRET"),
    ("approval-key-secret", "AGENTGUARD_APPROVAL_KEY_SECRET"),
    ("annotation-kinds", "AGENTGUARD_ANNOTATION_KINDS"),
];

impl RunFlags {
    fn parse(args: &[String], env: &[(String, String)]) -> Self {
        let mut values: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
        let mut rest = args.iter();
        while let Some(arg) = rest.next() {
            let Some(flag) = arg.strip_prefix("--") else {
                continue;
            };
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (flag, None),
            };
            let Some((known, _)) = RUN_FLAGS.iter().find(|(f, _)| *f == name) else {
                continue;
            };
            let value = match inline {
                Some(v) => v,
                None => rest.next().cloned().unwrap_or_default(),
            };
            values.entry(known).or_default().push(value);
        }
        for (flag, var) in RUN_FLAGS {
            if !values.contains_key(flag)
                && let Some((_, v)) = env.iter().find(|(k, _)| k == var)
            {
                values.insert(flag, vec![v.clone()]);
            }
        }
        Self { values }
    }

    /// A comma-separated list flag (repeatable), when given.
    fn list(&self, flag: &str) -> Option<Vec<String>> {
        self.values.get(flag).map(|vs| {
            vs.iter()
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
    }

    /// A single-valued flag (the last one wins), when given and not empty.
    fn single(&self, flag: &str) -> Option<String> {
        self.values
            .get(flag)?
            .last()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    }
}

// ---------------------------------------------------------------------------------------------
// Identities

/// A restricted identity as audit reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Who {
    ServiceAccount {
        namespace: String,
        name: String,
    },
    User(String),
    /// Any member of the group.
    Group(String),
}

impl Who {
    fn label(&self) -> String {
        match self {
            Who::ServiceAccount { namespace, name } => format!("sa:{namespace}/{name}"),
            Who::User(u) => format!("user:{u}"),
            Who::Group(g) => format!("group:{g}"),
        }
    }

    /// The user and groups the API server would see.
    fn principal(&self) -> Principal {
        match self {
            Who::ServiceAccount { namespace, name } => service_account_principal(namespace, name),
            Who::User(u) => Principal {
                username: u.clone(),
                groups: vec![AUTHENTICATED.to_owned()],
            },
            Who::Group(g) => Principal {
                username: format!("{GROUP_MEMBER_PREFIX}{g}"),
                groups: vec![g.clone(), AUTHENTICATED.to_owned()],
            },
        }
    }

    fn matches(&self, only: &GlobList) -> bool {
        match self {
            Who::ServiceAccount { namespace, name } => {
                only.first_match(&format!("{namespace}/{name}")).is_some()
                    || only.first_match(&self.principal().username).is_some()
            }
            Who::User(name) | Who::Group(name) => only.first_match(name).is_some(),
        }
    }
}

fn service_account_principal(namespace: &str, name: &str) -> Principal {
    Principal {
        username: format!("system:serviceaccount:{namespace}:{name}"),
        groups: vec![
            "system:serviceaccounts".to_owned(),
            format!("system:serviceaccounts:{namespace}"),
            AUTHENTICATED.to_owned(),
        ],
    }
}

/// A user and its groups, as in a SubjectAccessReview.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Principal {
    username: String,
    groups: Vec<String>,
}

#[derive(Debug, Clone)]
struct Identity {
    who: Who,
    principal: Principal,
    reason: String,
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '[', '{', '\\'])
}

/// Who could be restricted: every ServiceAccount, every user and group named in a binding (users
/// and groups exist nowhere else), and the exact names an agent definition or policy gives.
fn candidates(
    service_accounts: &[(String, String)],
    subjects: &[(&Subject, Option<&str>)],
    exact_users: &BTreeSet<String>,
    exact_groups: &BTreeSet<String>,
) -> BTreeSet<Who> {
    let mut out: BTreeSet<Who> = service_accounts
        .iter()
        .map(|(namespace, name)| Who::ServiceAccount {
            namespace: namespace.clone(),
            name: name.clone(),
        })
        .collect();
    for (subject, _) in subjects {
        match subject.kind.as_str() {
            "User" => out.insert(Who::User(subject.name.clone())),
            "Group" => out.insert(Who::Group(subject.name.clone())),
            _ => false,
        };
    }
    out.extend(exact_users.iter().cloned().map(Who::User));
    out.extend(exact_groups.iter().cloned().map(Who::Group));
    out
}

/// The candidates the webhook would restrict, asked of the webhook's own [`Snapshot`]. A group
/// counts only for what membership adds: with a username glob like `*`, every user is restricted
/// already and each group would only repeat that.
fn restricted(snapshot: &Snapshot, candidates: BTreeSet<Who>) -> Vec<Identity> {
    candidates
        .into_iter()
        .filter_map(|who| {
            let principal = who.principal();
            let restriction =
                snapshot.restricted_anywhere(&principal.username, &principal.groups)?;
            if matches!(who, Who::Group(_))
                && snapshot
                    .restricted_anywhere(&principal.username, &[AUTHENTICATED.to_owned()])
                    .is_some()
            {
                return None;
            }
            Some(Identity {
                who,
                principal,
                reason: restriction.reason,
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// RBAC: attribution of what the API server allowed

/// A namespaced or cluster-scoped object's reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
struct ObjRef {
    kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    name: String,
}

/// A binding and the role it binds: where a permission comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
struct Grant {
    binding: ObjRef,
    role: ObjRef,
}

impl std::fmt::Display for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} -> {}/{}",
            self.binding.kind, self.binding.name, self.role.kind, self.role.name
        )
    }
}

#[derive(Debug, Clone)]
struct Binding {
    /// The RoleBinding's namespace; None for a ClusterRoleBinding.
    namespace: Option<String>,
    name: String,
    role: ObjRef,
    subjects: Vec<Subject>,
}

/// RoleBindings, ClusterRoleBindings and the rules of the roles they name (aggregated
/// ClusterRoles carry their rules filled in by the aggregation controller).
#[derive(Debug, Clone, Default)]
struct Rbac {
    bindings: Vec<Binding>,
    rules: HashMap<ObjRef, Vec<PolicyRule>>,
}

impl Rbac {
    fn new(
        role_bindings: Vec<RoleBinding>,
        cluster_role_bindings: Vec<ClusterRoleBinding>,
        roles: Vec<Role>,
        cluster_roles: Vec<ClusterRole>,
    ) -> Self {
        let role_ref = |kind: &str, namespace: Option<String>, name: &str| ObjRef {
            kind: kind.to_owned(),
            // A RoleBinding's ClusterRole is cluster-wide; its Role is in its own namespace.
            namespace: if kind == "Role" { namespace } else { None },
            name: name.to_owned(),
        };
        let mut bindings: Vec<Binding> = role_bindings
            .into_iter()
            .map(|b| {
                let ns = b.namespace();
                Binding {
                    role: role_ref(&b.role_ref.kind, ns.clone(), &b.role_ref.name),
                    name: b.name_any(),
                    namespace: ns,
                    subjects: b.subjects.unwrap_or_default(),
                }
            })
            .collect();
        bindings.extend(cluster_role_bindings.into_iter().map(|b| Binding {
            role: role_ref("ClusterRole", None, &b.role_ref.name),
            name: b.name_any(),
            namespace: None,
            subjects: b.subjects.unwrap_or_default(),
        }));
        let mut rules = HashMap::new();
        for r in roles {
            rules.insert(
                role_ref("Role", r.namespace(), &r.name_any()),
                r.rules.unwrap_or_default(),
            );
        }
        for r in cluster_roles {
            rules.insert(
                role_ref("ClusterRole", None, &r.name_any()),
                r.rules.unwrap_or_default(),
            );
        }
        Self { bindings, rules }
    }

    /// The bindings that give `principal` this request, as the RBAC authorizer decides: a
    /// ClusterRoleBinding anywhere, a RoleBinding only in its own namespace.
    fn grants(&self, principal: &Principal, req: &Request) -> Vec<Grant> {
        let mut out: Vec<Grant> = self
            .bindings
            .iter()
            .filter(|b| {
                b.namespace
                    .as_deref()
                    .is_none_or(|ns| !req.namespace.is_empty() && ns == req.namespace)
            })
            .filter(|b| {
                b.subjects
                    .iter()
                    .any(|s| applies_to(s, b.namespace.as_deref(), principal))
            })
            .filter(|b| {
                self.rules
                    .get(&b.role)
                    .is_some_and(|rules| rules.iter().any(|r| rule_allows(r, req)))
            })
            .map(|b| Grant {
                binding: ObjRef {
                    kind: if b.namespace.is_some() {
                        "RoleBinding"
                    } else {
                        "ClusterRoleBinding"
                    }
                    .to_owned(),
                    namespace: b.namespace.clone(),
                    name: b.name.clone(),
                },
                role: b.role.clone(),
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Every subject of every binding, with the binding's namespace.
    fn subjects(&self) -> Vec<(&Subject, Option<&str>)> {
        self.bindings
            .iter()
            .flat_map(|b| b.subjects.iter().map(|s| (s, b.namespace.as_deref())))
            .collect()
    }
}

/// Whether a binding's subject is this principal. A ServiceAccount subject without a namespace
/// means the RoleBinding's own namespace.
fn applies_to(subject: &Subject, binding_namespace: Option<&str>, principal: &Principal) -> bool {
    match subject.kind.as_str() {
        "User" => subject.name == principal.username,
        "Group" => principal.groups.contains(&subject.name),
        "ServiceAccount" => {
            let namespace = subject
                .namespace
                .as_deref()
                .filter(|ns| !ns.is_empty())
                .or(binding_namespace);
            let named = principal
                .username
                .strip_prefix("system:serviceaccount:")
                .and_then(|rest| rest.split_once(':'));
            namespace.is_some_and(|ns| named == Some((ns, subject.name.as_str())))
        }
        _ => false,
    }
}

/// Whether one RBAC rule allows a resource request: verb, API group, resource (or
/// `resource/subresource`, or `*/subresource`), and resource name, each with `*` wildcards.
fn rule_allows(rule: &PolicyRule, req: &Request) -> bool {
    let has = |list: Option<&Vec<String>>, value: &str| {
        list.is_some_and(|l| l.iter().any(|x| x == "*" || x == value))
    };
    let combined = if req.subresource.is_empty() {
        req.resource.clone()
    } else {
        format!("{}/{}", req.resource, req.subresource)
    };
    let resource = rule.resources.as_ref().is_some_and(|resources| {
        resources.iter().any(|r| {
            r == "*"
                || *r == combined
                || (!req.subresource.is_empty()
                    && r.strip_prefix("*/") == Some(req.subresource.as_str()))
        })
    });
    let name = match rule.resource_names.as_deref() {
        None | Some([]) => true,
        Some(names) => !req.name.is_empty() && names.contains(&req.name),
    };
    has(Some(&rule.verbs), &req.verb)
        && has(rule.api_groups.as_ref(), &req.group)
        && resource
        && name
}

// ---------------------------------------------------------------------------------------------
// Questions and checks

/// One authorization question: may someone `verb` this resource (name, namespace)?
/// Empty strings mean "none" (core group, no subresource, any name, cluster scope).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    verb: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    group: String,
    resource: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    subresource: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    namespace: String,
}

impl Request {
    /// `resource` may name a subresource: `deployments/scale`.
    fn new(verb: &str, group: &str, resource: &str) -> Self {
        let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
        Self {
            verb: verb.to_owned(),
            group: group.to_owned(),
            resource: resource.to_owned(),
            subresource: subresource.to_owned(),
            name: String::new(),
            namespace: String::new(),
        }
    }

    fn named(mut self, name: &str) -> Self {
        self.name = name.to_owned();
        self
    }

    fn within(mut self, namespace: &str) -> Self {
        self.namespace = namespace.to_owned();
        self
    }

    fn attributes(&self) -> ResourceAttributes {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        ResourceAttributes {
            verb: Some(self.verb.clone()),
            group: Some(self.group.clone()),
            resource: Some(self.resource.clone()),
            subresource: some(&self.subresource),
            name: some(&self.name),
            namespace: some(&self.namespace),
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
enum Severity {
    /// A way around agentguard: the webhook never sees it, or cannot stop it.
    Bypass,
    /// Within agentguard's reach: the webhook denies it to restricted identities.
    Info,
}

impl Severity {
    fn label(self) -> &'static str {
        match self {
            Severity::Bypass => "bypass",
            Severity::Info => "info",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
enum CheckKind {
    DeleteProtected,
    WebhookConfiguration,
    Crd,
    Deployment,
    Secret,
    Namespace,
    Impersonate,
    Escalate,
    RoleBindings,
    Certificates,
    ActAs,
    Policies,
    Gitops,
    MutatingAdmission,
}

/// A way to do something, allowed when every request it needs is allowed.
#[derive(Debug, Clone)]
struct Route {
    /// How the CAN column names it: a verb, a resource, or a way (`impersonate`, `pods`).
    label: String,
    needs: Vec<Request>,
}

/// One thing to check for an identity: found when any of its routes is allowed.
#[derive(Debug, Clone)]
struct Check {
    kind: CheckKind,
    severity: Severity,
    namespace: Option<String>,
    /// CAN is `prefix` + the allowed routes' labels + `suffix`.
    prefix: String,
    suffix: String,
    why: String,
    routes: Vec<Route>,
}

impl Check {
    /// `delete,update,patch <what>`: one route per verb on the same request.
    fn verbs(
        kind: CheckKind,
        severity: Severity,
        namespace: Option<&str>,
        what: String,
        why: &str,
        verbs: &[&str],
        request: Request,
    ) -> Self {
        Self {
            kind,
            severity,
            namespace: namespace.map(str::to_owned),
            prefix: String::new(),
            suffix: format!(" {what}"),
            why: why.to_owned(),
            routes: verbs
                .iter()
                .map(|v| Route {
                    label: (*v).to_owned(),
                    needs: vec![Request {
                        verb: (*v).to_owned(),
                        ..request.clone()
                    }],
                })
                .collect(),
        }
    }
}

/// What the API server answered, by principal and request.
type Answers = HashMap<(Principal, Request), bool>;

async fn review(
    client: &kube::Client,
    principal: &Principal,
    req: &Request,
) -> Result<bool, kube::Error> {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(principal.username.clone()),
            groups: Some(principal.groups.clone()),
            resource_attributes: Some(req.attributes()),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

async fn review_all(
    client: &kube::Client,
    questions: BTreeSet<(Principal, Request)>,
) -> Result<Answers, Failure> {
    let answers: Vec<_> = stream::iter(questions)
        .map(|(principal, req)| async move {
            let allowed = review(client, &principal, &req).await;
            (principal, req, allowed)
        })
        .buffer_unordered(PARALLEL_REVIEWS)
        .collect()
        .await;
    let mut out = HashMap::new();
    for (principal, req, allowed) in answers {
        let allowed = allowed.map_err(|e| {
            Failure::new(format!(
                "cannot ask the API server (SubjectAccessReview; needs create on \
                 subjectaccessreviews.authorization.k8s.io): {}",
                Failure::from(e).message
            ))
        })?;
        out.insert((principal, req), allowed);
    }
    Ok(out)
}

fn allowed(answers: &Answers, principal: &Principal, req: &Request) -> bool {
    answers
        .get(&(principal.clone(), req.clone()))
        .copied()
        .unwrap_or(false)
}

/// What one check found for one identity.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct Finding {
    identity: String,
    severity: Severity,
    check: CheckKind,
    can: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    why: String,
    /// The requests the API server allowed.
    allowed: Vec<Request>,
    granted_by: Vec<Grant>,
    /// Some allowed request is granted by no RBAC binding (another authorizer, or a
    /// group the RBAC objects do not name).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    not_from_rbac: bool,
}

fn finding(identity: &Identity, check: &Check, answers: &Answers, rbac: &Rbac) -> Option<Finding> {
    let routes: Vec<&Route> = check
        .routes
        .iter()
        .filter(|r| {
            r.needs
                .iter()
                .all(|n| allowed(answers, &identity.principal, n))
        })
        .collect();
    if routes.is_empty() {
        return None;
    }
    let mut labels: Vec<&str> = Vec::new();
    for r in &routes {
        if !labels.contains(&r.label.as_str()) {
            labels.push(&r.label);
        }
    }
    let requests: BTreeSet<Request> = routes.iter().flat_map(|r| r.needs.clone()).collect();
    let mut granted_by = BTreeSet::new();
    let mut not_from_rbac = false;
    for req in &requests {
        let grants = rbac.grants(&identity.principal, req);
        not_from_rbac |= grants.is_empty();
        granted_by.extend(grants);
    }
    Some(Finding {
        identity: identity.who.label(),
        severity: check.severity,
        check: check.kind,
        can: format!("{}{}{}", check.prefix, labels.join(","), check.suffix),
        namespace: check.namespace.clone(),
        why: check.why.clone(),
        allowed: requests.into_iter().collect(),
        granted_by: granted_by.into_iter().collect(),
        not_from_rbac,
    })
}

// ---------------------------------------------------------------------------------------------
// What is protected, and whether the webhook sees it

/// Why an object is protected: a policy, or its own annotation.
#[derive(Debug, Clone, PartialEq)]
enum Source {
    Policy(PolicyRef),
    Annotation,
}

/// The protected objects of one resource in one namespace (or cluster-wide).
#[derive(Debug, Clone)]
struct ProtectedSet {
    group: String,
    kind: String,
    plural: String,
    namespace: Option<String>,
    /// Each object's protections.
    objects: Vec<Vec<Source>>,
    /// Whether the webhook sees a DELETE of these objects at all.
    judged: bool,
}

impl ProtectedSet {
    fn delete(&self) -> Request {
        let req = Request::new("delete", &self.group, &self.plural);
        match &self.namespace {
            Some(ns) => req.within(ns),
            None => req,
        }
    }

    /// Whether every object restricts `principal` (then it is no way around the guard here).
    fn restricts_all(&self, snapshot: &Snapshot, principal: &Principal) -> bool {
        self.objects
            .iter()
            .all(|sources| restricting_mode(snapshot, principal, sources).is_some())
    }

    /// How many of the objects restrict `principal`, and the strictest mode among those.
    fn restricting(&self, snapshot: &Snapshot, principal: &Principal) -> (usize, Option<Mode>) {
        let mut count = 0;
        let mut strictest = None;
        for sources in &self.objects {
            let mode = restricting_mode(snapshot, principal, sources);
            if let Some(mode) = mode {
                count += 1;
                strictest = strictest.max(Some(mode));
            }
        }
        (count, strictest)
    }
}

/// The strictest mode among the protections of one object that restrict `principal`, as the
/// webhook judges it; None when none does.
fn restricting_mode(
    snapshot: &Snapshot,
    principal: &Principal,
    sources: &[Source],
) -> Option<Mode> {
    sources
        .iter()
        .filter_map(|s| match s {
            Source::Annotation => snapshot
                .restriction(&principal.username, &principal.groups, None)
                .map(|_| Mode::Enforce),
            Source::Policy(id) => {
                let p = snapshot.policy(id)?;
                snapshot
                    .restriction(&principal.username, &principal.groups, Some(p))
                    .map(|_| p.mode)
            }
        })
        .max()
}

fn selector_matches(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    match selector {
        None => true,
        Some(s) => Selector::try_from(s.clone()).is_ok_and(|s| s.matches(labels)),
    }
}

fn rule_covers_delete(
    rule: &RuleWithOperations,
    group: &str,
    resource: &str,
    namespaced: bool,
) -> bool {
    let has = |list: &Option<Vec<String>>, value: &str| {
        list.as_ref()
            .is_some_and(|l| l.iter().any(|x| x == "*" || x == value))
    };
    let resource = rule
        .resources
        .as_ref()
        .is_some_and(|l| l.iter().any(|r| r == "*" || r == "*/*" || r == resource));
    let scope = match rule.scope.as_deref() {
        Some("Namespaced") => namespaced,
        Some("Cluster") => !namespaced,
        _ => true,
    };
    has(&rule.operations, "DELETE") && has(&rule.api_groups, group) && resource && scope
}

/// Whether agentguard's webhook is called for a DELETE of `resource`: a rule covers it and, for
/// an object in a namespace (or a Namespace itself), the namespace selector takes that namespace.
/// Without the configuration, as the operator writes it: every namespace but agentguard's own
/// and kube-system.
fn webhook_judges(
    config: Option<&ValidatingWebhookConfiguration>,
    own_namespace: &str,
    group: &str,
    resource: &str,
    namespaced: bool,
    namespace: Option<(&str, &BTreeMap<String, String>)>,
) -> bool {
    let Some(config) = config else {
        return namespace.is_none_or(|(ns, _)| ns != own_namespace && ns != KUBE_SYSTEM);
    };
    config.webhooks.iter().flatten().any(|w| {
        w.rules
            .iter()
            .flatten()
            .any(|r| rule_covers_delete(r, group, resource, namespaced))
            && namespace
                .is_none_or(|(_, labels)| selector_matches(w.namespace_selector.as_ref(), labels))
    })
}

/// Whether the webhook picks namespaces by labels someone could change (anything but the
/// name label the API server sets): then relabelling a namespace takes it out of the guard.
fn selects_by_mutable_labels(config: Option<&ValidatingWebhookConfiguration>) -> bool {
    config
        .iter()
        .flat_map(|c| c.webhooks.iter().flatten())
        .any(|w| {
            w.namespace_selector.as_ref().is_some_and(|s| {
                s.match_labels
                    .iter()
                    .flat_map(|m| m.keys())
                    .chain(s.match_expressions.iter().flatten().map(|e| &e.key))
                    .any(|k| k != NAMESPACE_NAME_LABEL)
            })
        })
}

// ---------------------------------------------------------------------------------------------
// The cluster as audit sees it

/// Someone (not restricted) an agent could act as: a ServiceAccount, or any ServiceAccount of a
/// namespace (`name` None).
#[derive(Debug, Clone, PartialEq)]
struct Target {
    namespace: String,
    name: Option<String>,
    why: String,
    /// A pod runs as it, so exec into pods is a way in.
    has_pods: bool,
}

/// A ServiceAccount that is not restricted and can delete protected objects: an agent that can
/// act as it deletes them unguarded.
#[derive(Debug, Clone, PartialEq)]
struct Deputy {
    namespace: String,
    name: String,
    can_delete: Vec<String>,
}

struct ClusterFacts {
    agns: String,
    agns_exists: bool,
    install: Option<Install>,
    webhook_name: String,
    webhook: Option<ValidatingWebhookConfiguration>,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    service_accounts: Vec<(String, String)>,
    snapshot: Snapshot,
    /// Exact user and group names from policies' subjects.
    policy_users: BTreeSet<String>,
    policy_groups: BTreeSet<String>,
    protected: Vec<ProtectedSet>,
    rbac: Rbac,
    warnings: Vec<String>,
}

async fn list<K>(client: &kube::Client, what: &str) -> Result<Vec<K>, Failure>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    Api::<K>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .map_err(|e| Failure::new(format!("cannot list {what}: {}", Failure::from(e).message)))
}

/// A policy list; a missing CRD means no policies (with a warning).
async fn list_policies<K>(
    client: &kube::Client,
    warnings: &mut Vec<String>,
) -> Result<Vec<K>, Failure>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    match Api::<K>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(l) => Ok(l.items),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            let kind = K::kind(&K::DynamicType::default()).to_string();
            warnings.push(format!(
                "the API server does not serve {kind} (agentguard's CRDs are not installed): no policies counted"
            ));
            Ok(Vec::new())
        }
        Err(e) => Err(Failure::new(format!(
            "cannot list agentguard policies: {}",
            Failure::from(e).message
        ))),
    }
}

impl ClusterFacts {
    async fn load(
        client: &kube::Client,
        agns: &str,
        install: Option<Install>,
        webhook_name: &str,
        agents: AgentMatcher,
    ) -> Result<Self, Failure> {
        let mut warnings = Vec::new();
        let sa_api: Api<ServiceAccount> = Api::all(client.clone());
        let ns_api: Api<Namespace> = Api::all(client.clone());
        let (
            service_accounts,
            namespaces,
            role_bindings,
            cluster_role_bindings,
            roles,
            cluster_roles,
        ) = tokio::try_join!(
            async {
                sa_api
                    .list_metadata(&ListParams::default())
                    .await
                    .map_err(|e| {
                        Failure::new(format!(
                            "cannot list ServiceAccounts: {}",
                            Failure::from(e).message
                        ))
                    })
            },
            async {
                ns_api
                    .list_metadata(&ListParams::default())
                    .await
                    .map_err(|e| {
                        Failure::new(format!(
                            "cannot list Namespaces: {}",
                            Failure::from(e).message
                        ))
                    })
            },
            list::<RoleBinding>(client, "RoleBindings"),
            list::<ClusterRoleBinding>(client, "ClusterRoleBindings"),
            list::<Role>(client, "Roles"),
            list::<ClusterRole>(client, "ClusterRoles"),
        )?;
        let namespaced = list_policies::<ProtectedResource>(client, &mut warnings).await?;
        let cluster = list_policies::<ClusterProtectedResource>(client, &mut warnings).await?;
        let webhook = Api::<ValidatingWebhookConfiguration>::all(client.clone())
            .get_opt(webhook_name)
            .await
            .map_err(|e| {
                Failure::new(format!(
                    "cannot read ValidatingWebhookConfiguration {webhook_name}: {}",
                    Failure::from(e).message
                ))
            })?;
        if webhook.is_none() {
            warnings.push(format!(
                "ValidatingWebhookConfiguration {webhook_name} not found (--webhook-configuration-name): \
                 while it is missing agentguard judges nothing; findings assume it is installed as the operator keeps it"
            ));
        }

        let labelled = service_accounts
            .items
            .iter()
            .filter(|sa| sa.labels().get(AGENT_LABEL).map(String::as_str) == Some("true"))
            .map(|sa| format!("{}/{}", sa.namespace().unwrap_or_default(), sa.name_any()))
            .collect();
        let mut policy_users = BTreeSet::new();
        let mut policy_groups = BTreeSet::new();
        let mut note_subjects = |spec: &ProtectionSpec| {
            if let Some(s) = &spec.subjects {
                policy_users.extend(s.usernames.iter().filter(|u| !is_glob(u)).cloned());
                policy_groups.extend(s.groups.iter().cloned());
            }
        };
        let mut compiled: Vec<CompiledPolicy> = Vec::new();
        for p in &namespaced {
            note_subjects(&p.spec.protection);
            let id = PolicyRef::namespaced(&p.namespace().unwrap_or_default(), &p.name_any());
            compiled.extend(compile(id, &p.spec.protection).ok());
        }
        for p in &cluster {
            note_subjects(&p.spec.protection);
            compiled.extend(compile(PolicyRef::cluster(&p.name_any()), &p.spec.protection).ok());
        }
        let snapshot = Snapshot::new(agents, labelled, compiled);

        let namespaces: BTreeMap<String, BTreeMap<String, String>> = namespaces
            .items
            .iter()
            .map(|n| (n.name_any(), n.labels().clone()))
            .collect();
        let annotation_kinds = install
            .as_ref()
            .and_then(|i| i.flags.list("annotation-kinds"))
            .unwrap_or_else(|| DEFAULT_ANNOTATION_KINDS.map(str::to_owned).to_vec());
        let annotation_kinds: BTreeSet<(String, String)> = annotation_kinds
            .iter()
            .map(|k| match k.rsplit_once('/') {
                Some((g, k)) => (g.to_owned(), k.to_owned()),
                None => (String::new(), k.clone()),
            })
            .collect();
        let kinds: BTreeSet<(String, String)> = snapshot
            .policies()
            .iter()
            .flat_map(|p| p.kinds())
            .chain(annotation_kinds)
            .collect();
        let mut facts = Self {
            agns: agns.to_owned(),
            agns_exists: namespaces.contains_key(agns),
            install,
            webhook_name: webhook_name.to_owned(),
            webhook,
            namespaces,
            service_accounts: service_accounts
                .items
                .iter()
                .map(|sa| (sa.namespace().unwrap_or_default(), sa.name_any()))
                .collect(),
            snapshot,
            policy_users,
            policy_groups,
            protected: Vec::new(),
            rbac: Rbac::new(role_bindings, cluster_role_bindings, roles, cluster_roles),
            warnings,
        };
        facts.protected = facts.protected_sets(client, &kinds).await;
        Ok(facts)
    }

    /// Lists the metadata of every kind a policy targets or the annotation is honoured on, and
    /// groups the protected objects by resource and namespace.
    async fn protected_sets(
        &mut self,
        client: &kube::Client,
        kinds: &BTreeSet<(String, String)>,
    ) -> Vec<ProtectedSet> {
        let mut resolver = KindResolver::default();
        let mut sets: BTreeMap<(String, String, Option<String>), ProtectedSet> = BTreeMap::new();
        for (group, kind) in kinds {
            let Some((resource, caps)) = resolver.resolve(client, group, kind).await else {
                continue;
            };
            let namespaced = matches!(caps.scope, Scope::Namespaced);
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
            let items = match api.list_metadata(&ListParams::default()).await {
                Ok(list) => list.items,
                Err(e) => {
                    self.warnings.push(format!(
                        "cannot list {}: {}",
                        resource.plural,
                        Failure::from(e).message
                    ));
                    continue;
                }
            };
            for meta in items {
                let namespace = meta.namespace();
                let name = meta.name_any();
                let facts = ObjectFacts {
                    group,
                    kind,
                    namespace: namespace.as_deref(),
                    name: &name,
                    labels: meta.labels(),
                };
                let mut sources: Vec<Source> = self
                    .snapshot
                    .protecting(&facts)
                    .into_iter()
                    .map(|p| Source::Policy(p.id.clone()))
                    .collect();
                if meta
                    .annotations()
                    .get(PROTECTED_ANNOTATION)
                    .map(String::as_str)
                    == Some("true")
                {
                    sources.push(Source::Annotation);
                }
                if sources.is_empty() {
                    continue;
                }
                let key = (group.clone(), resource.plural.clone(), namespace.clone());
                let no_labels = BTreeMap::new();
                let judged = webhook_judges(
                    self.webhook.as_ref(),
                    &self.agns,
                    group,
                    &resource.plural,
                    namespaced,
                    namespace
                        .as_deref()
                        .map(|ns| (ns, self.namespaces.get(ns).unwrap_or(&no_labels))),
                );
                sets.entry(key)
                    .or_insert_with(|| ProtectedSet {
                        group: group.clone(),
                        kind: kind.clone(),
                        plural: resource.plural.clone(),
                        namespace: namespace.clone(),
                        objects: Vec::new(),
                        judged,
                    })
                    .objects
                    .push(sources);
            }
        }
        sets.into_values().collect()
    }

    fn restricted_identities(&self, definition: &AgentDefinition) -> Vec<Identity> {
        let exact_users: BTreeSet<String> = definition
            .usernames
            .iter()
            .filter(|u| !is_glob(u))
            .cloned()
            .chain(self.policy_users.iter().cloned())
            .collect();
        let exact_groups: BTreeSet<String> = definition
            .groups
            .iter()
            .cloned()
            .chain(self.policy_groups.iter().cloned())
            .collect();
        let found = candidates(
            &self.service_accounts,
            &self.rbac.subjects(),
            &exact_users,
            &exact_groups,
        );
        restricted(&self.snapshot, found)
    }

    /// Namespaces that hold protected objects.
    fn protected_namespaces(&self) -> BTreeSet<&str> {
        self.protected
            .iter()
            .filter_map(|s| s.namespace.as_deref())
            .collect()
    }

    /// ServiceAccounts named in bindings, outside kube-system (acting as any of those is its own
    /// check): the ones that may be deputies.
    fn deputy_candidates(&self) -> Vec<(String, String, Principal)> {
        let mut out = BTreeSet::new();
        for (subject, binding_ns) in self.rbac.subjects() {
            if subject.kind != "ServiceAccount" {
                continue;
            }
            let Some(ns) = subject
                .namespace
                .as_deref()
                .filter(|n| !n.is_empty())
                .or(binding_ns)
            else {
                continue;
            };
            if ns != KUBE_SYSTEM {
                out.insert((ns.to_owned(), subject.name.clone()));
            }
        }
        out.into_iter()
            .map(|(ns, name)| {
                let p = service_account_principal(&ns, &name);
                (ns, name, p)
            })
            .collect()
    }

    /// For each candidate and protected set it is not restricted for, whether it may delete
    /// there; asked only where RBAC could grant it, as there are many candidates.
    fn deputy_questions(
        &self,
        candidates: &[(String, String, Principal)],
    ) -> BTreeSet<(Principal, Request)> {
        let mut out = BTreeSet::new();
        for (_, _, principal) in candidates {
            for set in &self.protected {
                if set.restricts_all(&self.snapshot, principal) {
                    continue;
                }
                let req = set.delete();
                if !self.rbac.grants(principal, &req).is_empty() {
                    out.insert((principal.clone(), req));
                }
            }
        }
        out
    }

    fn deputies(
        &self,
        candidates: &[(String, String, Principal)],
        answers: &Answers,
    ) -> Vec<Deputy> {
        candidates
            .iter()
            .filter_map(|(ns, name, principal)| {
                let can_delete: Vec<String> = self
                    .protected
                    .iter()
                    .filter(|set| allowed(answers, principal, &set.delete()))
                    .map(|set| match &set.namespace {
                        Some(where_) => format!("{} in {where_}", set.plural),
                        None => set.plural.clone(),
                    })
                    .collect();
                (!can_delete.is_empty()).then(|| Deputy {
                    namespace: ns.clone(),
                    name: name.clone(),
                    can_delete,
                })
            })
            .collect()
    }

    /// Whom an agent could act as to get around the guard: kube-system's controllers,
    /// agentguard's own ServiceAccount, and the deputies.
    fn act_as_targets(
        &self,
        deputies: &[Deputy],
        pods_as: &BTreeSet<(String, String)>,
    ) -> Vec<Target> {
        let mut out = Vec::new();
        if self.namespaces.contains_key(KUBE_SYSTEM) {
            out.push(Target {
                namespace: KUBE_SYSTEM.to_owned(),
                name: None,
                why: "kube-system's ServiceAccounts are the cluster's controllers, which agentguard never restricts".to_owned(),
                has_pods: true,
            });
        }
        if self.agns_exists {
            out.push(Target {
                namespace: self.agns.clone(),
                name: self.install.as_ref().map(|i| i.service_account.clone()),
                why: "agentguard's own ServiceAccount may rewrite its webhook configuration and certificate".to_owned(),
                has_pods: true,
            });
        }
        // ServiceAccounts a policy names as approvers: agentguard seals their approvals, so an
        // agent acting as one approves its own deletions.
        let mut approvers: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        for policy in self.snapshot.policies() {
            for username in policy.approvers.iter().flat_map(|a| a.usernames.iter()) {
                if let Some((ns, name)) = username
                    .strip_prefix("system:serviceaccount:")
                    .and_then(|sa| sa.split_once(':'))
                {
                    approvers
                        .entry((ns.to_owned(), name.to_owned()))
                        .or_default()
                        .push(policy.id.describe());
                }
            }
        }
        for ((ns, name), policies) in approvers {
            out.push(Target {
                has_pods: pods_as.contains(&(ns.clone(), name.clone())),
                why: format!(
                    "{ns}/{name} is named as an approver by {}: whoever acts as it approves deletions",
                    policies.join(", ")
                ),
                namespace: ns,
                name: Some(name),
            });
        }
        for d in deputies {
            if out
                .iter()
                .any(|t| t.namespace == d.namespace && t.name.as_ref().is_none_or(|n| *n == d.name))
            {
                continue;
            }
            out.push(Target {
                namespace: d.namespace.clone(),
                name: Some(d.name.clone()),
                why: format!(
                    "{}/{} is not restricted and can delete {}",
                    d.namespace,
                    d.name,
                    d.can_delete.join(", ")
                ),
                has_pods: pods_as.contains(&(d.namespace.clone(), d.name.clone())),
            });
        }
        out
    }

    /// Everything to ask about one identity.
    fn checks_for(&self, identity: &Identity, targets: &[Target]) -> Vec<Check> {
        use CheckKind as K;
        use Severity::{Bypass, Info};
        let mut checks = Vec::new();
        let agns = self.agns.as_str();
        let write = ["delete", "update", "patch"];

        for set in &self.protected {
            let (count, mode) = set.restricting(&self.snapshot, &identity.principal);
            if count == 0 {
                continue;
            }
            let (severity, note, why) = if !set.judged {
                (
                    Bypass,
                    "; not judged by the webhook",
                    "agentguard's webhook is not called for these deletions (its configuration leaves out this kind or namespace)",
                )
            } else if mode == Some(Mode::Enforce) {
                (
                    Info,
                    "",
                    "agentguard's webhook denies these deletions without a human's approval",
                )
            } else {
                (
                    Info,
                    "; policy mode lets it through",
                    "the policies protecting these objects are in Warn or Audit mode: deletions are allowed and recorded",
                )
            };
            checks.push(Check {
                kind: K::DeleteProtected,
                severity,
                namespace: set.namespace.clone(),
                prefix: String::new(),
                suffix: format!(" {} ({count} protected{note})", set.plural),
                why: why.to_owned(),
                routes: vec![Route {
                    label: "delete".to_owned(),
                    needs: vec![set.delete()],
                }],
            });
        }

        checks.push(Check::verbs(
            K::WebhookConfiguration,
            Bypass,
            None,
            format!("validatingwebhookconfigurations/{}", self.webhook_name),
            "the API server never sends admission configuration objects to webhooks: nothing guards agentguard's own registration",
            &write,
            Request::new("", "admissionregistration.k8s.io", "validatingwebhookconfigurations")
                .named(&self.webhook_name),
        ));
        // The availability mode's ValidatingAdmissionPolicy and its binding: no webhook judges
        // admission policies either.
        for resource in [
            "validatingadmissionpolicies",
            "validatingadmissionpolicybindings",
        ] {
            checks.push(Check::verbs(
                K::WebhookConfiguration,
                Bypass,
                None,
                resource.to_owned(),
                "admission policies are never sent to webhooks: deleting or rewriting agentguard's availability policy or its binding disarms the rules that hold while the webhook is unreachable",
                &write,
                Request::new("", "admissionregistration.k8s.io", resource),
            ));
        }
        // A mutating webhook or admission policy of the agent's own runs before agentguard's
        // validating webhook on every write it matches, and the API server sends none of
        // these objects to any webhook: only RBAC keeps agents from registering one.
        for resource in [
            "mutatingwebhookconfigurations",
            "mutatingadmissionpolicies",
            "mutatingadmissionpolicybindings",
        ] {
            checks.push(Check::verbs(
                K::MutatingAdmission,
                Bypass,
                None,
                resource.to_owned(),
                "a mutating webhook or admission policy rewrites others' writes before agentguard judges them: it can strip agentguard.dev/protected during a controller's update, or add an approval to a human's; the API server sends these objects to no webhook",
                &["create", "update", "patch"],
                Request::new("", "admissionregistration.k8s.io", resource),
            ));
        }
        // What a GitOps tool applies is decided by objects whose changes admission cannot tie
        // to protected data: a source's URL or revision, a HelmRelease's values, an
        // ApplicationSet's generators. Changing them can make the tool prune protected objects
        // (docs/security.md, "Controllers acting for an agent").
        for (group, resource, what) in GITOPS_UNJUDGED {
            checks.push(Check::verbs(
                K::Gitops,
                Bypass,
                None,
                format!("{resource}.{group}"),
                what,
                &["update", "patch", "delete"],
                Request::new("", group, resource),
            ));
        }
        for crd in AGENTGUARD_CRDS {
            checks.push(Check::verbs(
                K::Crd,
                Info,
                None,
                format!("customresourcedefinitions/{crd}"),
                "deleting or rewriting agentguard's CRD would remove or disable every policy of that kind: agentguard refuses it to agents (the webhook, and the availability policy while the webhook is unreachable)",
                &write,
                Request::new("", "apiextensions.k8s.io", "customresourcedefinitions").named(crd),
            ));
        }

        if self.agns_exists {
            checks.push(Check::verbs(
                K::Namespace,
                Bypass,
                None,
                format!("namespaces/{agns}"),
                "deleting agentguard's namespace takes its Deployment, certificate and leader lease; the webhook never judges its own namespace",
                &["delete"],
                Request::new("", "", "namespaces").named(agns),
            ));
            let deployment = self
                .install
                .as_ref()
                .map_or(DEFAULT_NAME, |i| i.deployment.as_str());
            let mut check = Check::verbs(
                K::Deployment,
                Bypass,
                Some(agns),
                format!("deployments/{deployment}"),
                "agentguard's Deployment sets who the agents are (its args) and runs the webhook; its namespace is never judged",
                &write,
                Request::new("", "apps", "deployments")
                    .named(deployment)
                    .within(agns),
            );
            for verb in ["update", "patch"] {
                check.routes.push(Route {
                    label: "scale".to_owned(),
                    needs: vec![
                        Request::new(verb, "apps", "deployments/scale")
                            .named(deployment)
                            .within(agns),
                    ],
                });
            }
            checks.push(check);
            let secret = self
                .install
                .as_ref()
                .map_or(Some(DEFAULT_TLS_SECRET.to_owned()), |i| i.tls_secret(agns));
            if let Some(secret) = secret {
                checks.push(Check::verbs(
                    K::Secret,
                    Bypass,
                    Some(agns),
                    format!("secrets/{secret}"),
                    "the webhook's serving certificate and CA: replacing or deleting it breaks or hijacks the webhook",
                    &write,
                    Request::new("", "", "secrets").named(&secret).within(agns),
                ));
            }
            let keys = self
                .install
                .as_ref()
                .map_or(Some(DEFAULT_KEY_SECRET.to_owned()), |i| i.key_secret(agns));
            if let Some(keys) = keys {
                let mut verbs = vec!["get", "list", "watch"];
                verbs.extend(write.iter().copied());
                checks.push(Check::verbs(
                    K::Secret,
                    Bypass,
                    Some(agns),
                    format!("secrets/{keys}"),
                    "the keys approvals are sealed with: whoever reads or replaces them can forge a human's approval on any object",
                    &verbs,
                    Request::new("", "", "secrets").named(&keys).within(agns),
                ));
            }
        }

        for ns in self.protected_namespaces() {
            let labels = self.namespaces.get(ns).cloned().unwrap_or_default();
            let judged = webhook_judges(
                self.webhook.as_ref(),
                agns,
                "",
                "namespaces",
                false,
                Some((ns, &labels)),
            );
            let (severity, why) = if judged {
                (
                    Info,
                    "agentguard's webhook judges deleting a namespace as deleting the protected objects in it",
                )
            } else {
                (
                    Bypass,
                    "the webhook is not called for this namespace: deleting it deletes the protected objects in it",
                )
            };
            checks.push(Check::verbs(
                K::Namespace,
                severity,
                None,
                format!("namespaces/{ns}"),
                why,
                &["delete"],
                Request::new("", "", "namespaces").named(ns),
            ));
            if selects_by_mutable_labels(self.webhook.as_ref()) {
                checks.push(Check::verbs(
                    K::Namespace,
                    Bypass,
                    None,
                    format!("namespaces/{ns} labels"),
                    "the webhook picks namespaces by a label: changing it takes the namespace out of the guard",
                    &["update", "patch"],
                    Request::new("", "", "namespaces").named(ns),
                ));
            }
        }

        checks.push(Check {
            kind: K::Impersonate,
            severity: Bypass,
            namespace: None,
            prefix: "impersonate ".to_owned(),
            suffix: String::new(),
            why: "acting as another user, group or ServiceAccount leaves the restriction behind"
                .to_owned(),
            routes: [("", "users"), ("", "groups"), ("", "serviceaccounts")]
                .iter()
                .map(|(group, resource)| Route {
                    label: (*resource).to_owned(),
                    needs: vec![Request::new("impersonate", group, resource)],
                })
                .collect(),
        });

        let escalate = |namespace: Option<&str>, resource: &str| {
            let req = Request::new("", "rbac.authorization.k8s.io", resource);
            Check::verbs(
                K::Escalate,
                Bypass,
                namespace,
                resource.to_owned(),
                "escalate or bind lets it grant itself (or a ServiceAccount it controls) permissions it does not have",
                &["escalate", "bind"],
                match namespace {
                    Some(ns) => req.within(ns),
                    None => req,
                },
            )
        };
        checks.push(escalate(None, "clusterroles"));
        let binding_why = "a binding can hand its permissions to an identity the guard does not restrict, and act through it";
        checks.push(Check::verbs(
            K::RoleBindings,
            Bypass,
            None,
            "clusterrolebindings".to_owned(),
            binding_why,
            &["create", "update", "patch"],
            Request::new("", "rbac.authorization.k8s.io", "clusterrolebindings"),
        ));
        let mut rbac_namespaces: BTreeSet<&str> = self.protected_namespaces();
        if self.namespaces.contains_key(KUBE_SYSTEM) {
            rbac_namespaces.insert(KUBE_SYSTEM);
        }
        if self.agns_exists {
            rbac_namespaces.insert(agns);
        }
        for ns in rbac_namespaces {
            if ns == KUBE_SYSTEM || ns == agns {
                checks.push(escalate(Some(ns), "roles"));
            }
            checks.push(Check::verbs(
                K::RoleBindings,
                Bypass,
                Some(ns),
                "rolebindings".to_owned(),
                binding_why,
                &["create", "update", "patch"],
                Request::new("", "rbac.authorization.k8s.io", "rolebindings").within(ns),
            ));
        }

        checks.push(Check {
            kind: K::Certificates,
            severity: Bypass,
            namespace: None,
            prefix: String::new(),
            suffix: String::new(),
            why: "creating and approving a client certificate request lets it authenticate as any user or group".to_owned(),
            routes: vec![Route {
                label: "create and approve client certificate requests".to_owned(),
                needs: vec![
                    Request::new("create", "certificates.k8s.io", "certificatesigningrequests"),
                    Request::new("update", "certificates.k8s.io", "certificatesigningrequests/approval"),
                    Request::new("approve", "certificates.k8s.io", "signers")
                        .named("kubernetes.io/kube-apiserver-client"),
                ],
            }],
        });

        for target in targets {
            if let (Who::ServiceAccount { namespace, name }, Some(t)) =
                (&identity.who, &target.name)
                && *namespace == target.namespace
                && name == t
            {
                continue;
            }
            checks.push(act_as(target));
        }

        let guarded = "agentguard's webhook denies restricted identities any change to policies";
        checks.push(Check::verbs(
            K::Policies,
            Info,
            None,
            "clusterprotectedresources".to_owned(),
            guarded,
            &write,
            Request::new("", "agentguard.dev", "clusterprotectedresources"),
        ));
        for ns in self.protected_namespaces() {
            checks.push(Check::verbs(
                K::Policies,
                Info,
                Some(ns),
                "protectedresources".to_owned(),
                guarded,
                &write,
                Request::new("", "agentguard.dev", "protectedresources").within(ns),
            ));
        }
        checks
    }
}

/// The ways to act as a target: impersonate it, request a token for it, run a pod as it (any
/// pod-making workload will do), exec into its pods, or have a token Secret filled for it.
fn act_as(target: &Target) -> Check {
    let ns = target.namespace.as_str();
    let name = target.name.as_deref().unwrap_or_default();
    let mut routes = vec![
        Route {
            label: "impersonate".to_owned(),
            needs: vec![
                Request::new("impersonate", "", "serviceaccounts")
                    .named(name)
                    .within(ns),
            ],
        },
        Route {
            label: "token".to_owned(),
            needs: vec![
                Request::new("create", "", "serviceaccounts/token")
                    .named(name)
                    .within(ns),
            ],
        },
    ];
    for (group, resource) in POD_MAKERS {
        routes.push(Route {
            label: "pods".to_owned(),
            needs: vec![Request::new("create", group, resource).within(ns)],
        });
    }
    if target.has_pods {
        routes.push(Route {
            label: "exec".to_owned(),
            needs: vec![Request::new("create", "", "pods/exec").within(ns)],
        });
    }
    routes.push(Route {
        label: "token secret".to_owned(),
        needs: vec![
            Request::new("create", "", "secrets").within(ns),
            Request::new("get", "", "secrets").within(ns),
        ],
    });
    Check {
        kind: CheckKind::ActAs,
        severity: Severity::Bypass,
        namespace: Some(ns.to_owned()),
        prefix: format!("act as {ns}/{} via ", target.name.as_deref().unwrap_or("*")),
        suffix: String::new(),
        why: target.why.clone(),
        routes,
    }
}

/// Deputies that have a pod running as them (`namespace`, `name`).
async fn pods_running_as(client: &kube::Client, deputies: &[Deputy]) -> BTreeSet<(String, String)> {
    let found: Vec<_> = stream::iter(deputies)
        .map(|d| async move {
            let lp = ListParams::default()
                .fields(&format!("spec.serviceAccountName={}", d.name))
                .limit(1);
            let has = Api::<Pod>::namespaced(client.clone(), &d.namespace)
                .list_metadata(&lp)
                .await
                .is_ok_and(|l| !l.items.is_empty());
            has.then(|| (d.namespace.clone(), d.name.clone()))
        })
        .buffer_unordered(PARALLEL_REVIEWS)
        .collect()
        .await;
    found.into_iter().flatten().collect()
}

// ---------------------------------------------------------------------------------------------
// Output

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    agentguard_namespace: String,
    agent_definition: DefinitionView,
    webhook_configuration: WebhookView,
    identities: Vec<IdentityView>,
    protected: Vec<ProtectedView>,
    findings: Vec<Finding>,
    summary: Summary,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct DefinitionView {
    source: String,
    service_accounts: Vec<String>,
    groups: Vec<String>,
    usernames: Vec<String>,
    break_glass_groups: Vec<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct WebhookView {
    name: String,
    found: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct IdentityView {
    identity: String,
    username: String,
    groups: Vec<String>,
    reason: String,
}

impl IdentityView {
    fn of(i: &Identity) -> Self {
        Self {
            identity: i.who.label(),
            username: i.principal.username.clone(),
            groups: i.principal.groups.clone(),
            reason: i.reason.clone(),
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ProtectedView {
    #[serde(skip_serializing_if = "String::is_empty")]
    group: String,
    kind: String,
    resource: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    count: usize,
    judged_by_webhook: bool,
}

impl ProtectedView {
    fn of(s: &ProtectedSet) -> Self {
        Self {
            group: s.group.clone(),
            kind: s.kind.clone(),
            resource: s.plural.clone(),
            namespace: s.namespace.clone(),
            count: s.objects.len(),
            judged_by_webhook: s.judged,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Summary {
    identities: usize,
    bypass: usize,
    info: usize,
}

impl Summary {
    fn of(identities: usize, findings: &[Finding]) -> Self {
        let bypass = findings
            .iter()
            .filter(|f| f.severity == Severity::Bypass)
            .count();
        Self {
            identities,
            bypass,
            info: findings.len() - bypass,
        }
    }

    fn line(&self) -> String {
        let plural =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let verdict = if self.bypass > 0 {
            "The guard can be bypassed"
        } else {
            "No way around the guard found"
        };
        format!(
            "{}: {}, {} (info: agentguard's webhook denies these). {verdict}.",
            plural(
                self.identities,
                "restricted identity",
                "restricted identities"
            ),
            plural(self.bypass, "bypass finding", "bypass findings"),
            plural(self.info, "guarded permission", "guarded permissions"),
        )
    }
}

/// Table rows; findings that differ only in namespace share a row, their namespaces listed.
fn table_rows(findings: &[Finding]) -> Vec<Vec<String>> {
    const SHOWN: usize = 4;
    let mut rows: Vec<(Vec<String>, Vec<String>)> = Vec::new();
    for f in findings {
        let mut granted: Vec<String> = f.granted_by.iter().map(Grant::to_string).collect();
        granted.dedup();
        if f.not_from_rbac {
            granted.push("(not from RBAC)".to_owned());
        }
        let key = vec![
            f.identity.clone(),
            f.severity.label().to_owned(),
            f.can.clone(),
            granted.join(", "),
        ];
        let where_ = f
            .namespace
            .clone()
            .unwrap_or_else(|| "(cluster)".to_owned());
        match rows.iter_mut().find(|(k, _)| *k == key) {
            Some((_, wheres)) => wheres.push(where_),
            None => rows.push((key, vec![where_])),
        }
    }
    rows.into_iter()
        .map(|(mut key, wheres)| {
            let mut shown = wheres
                .iter()
                .take(SHOWN)
                .cloned()
                .collect::<Vec<_>>()
                .join(",");
            if wheres.len() > SHOWN {
                shown.push_str(&format!(" +{} more", wheres.len() - SHOWN));
            }
            let granted = key.pop().unwrap_or_default();
            key.push(shown);
            key.push(granted);
            key
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(verbs: &[&str], groups: &[&str], resources: &[&str], names: &[&str]) -> PolicyRule {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        PolicyRule {
            verbs: v(verbs),
            api_groups: Some(v(groups)),
            resources: Some(v(resources)),
            resource_names: (!names.is_empty()).then(|| v(names)),
            non_resource_urls: None,
        }
    }

    #[test]
    fn rules_match_like_the_rbac_authorizer() {
        let delete_pvc = Request::new("delete", "", "persistentvolumeclaims").within("prod");
        let scale = Request::new("update", "apps", "deployments/scale").named("agentguard");
        let vwc = Request::new(
            "patch",
            "admissionregistration.k8s.io",
            "validatingwebhookconfigurations",
        )
        .named("agentguard");
        let cases: &[(PolicyRule, &Request, bool)] = &[
            (
                rule(&["delete"], &[""], &["persistentvolumeclaims"], &[]),
                &delete_pvc,
                true,
            ),
            (rule(&["*"], &["*"], &["*"], &[]), &delete_pvc, true),
            (
                rule(&["get", "list"], &[""], &["persistentvolumeclaims"], &[]),
                &delete_pvc,
                false,
            ),
            (
                rule(&["delete"], &["apps"], &["persistentvolumeclaims"], &[]),
                &delete_pvc,
                false,
            ),
            // a name-limited rule never allows a request without a name
            (
                rule(&["delete"], &[""], &["persistentvolumeclaims"], &["data"]),
                &delete_pvc,
                false,
            ),
            (
                rule(
                    &["patch"],
                    &["*"],
                    &["validatingwebhookconfigurations"],
                    &["agentguard"],
                ),
                &vwc,
                true,
            ),
            (
                rule(
                    &["patch"],
                    &["*"],
                    &["validatingwebhookconfigurations"],
                    &["other"],
                ),
                &vwc,
                false,
            ),
            // a resource rule does not reach its subresources, and the other way round
            (
                rule(&["update"], &["apps"], &["deployments"], &[]),
                &scale,
                false,
            ),
            (
                rule(&["update"], &["apps"], &["deployments/scale"], &[]),
                &scale,
                true,
            ),
            (
                rule(&["update"], &["apps"], &["*/scale"], &[]),
                &scale,
                true,
            ),
            (
                rule(&["update"], &["apps"], &["*/status"], &[]),
                &scale,
                false,
            ),
            (rule(&["update"], &["apps"], &["*"], &[]), &scale, true),
            (
                rule(&["update"], &["apps"], &["deployments/scale"], &[]),
                &Request::new("update", "apps", "deployments").named("x"),
                false,
            ),
        ];
        for (rule, req, expected) in cases {
            assert_eq!(rule_allows(rule, req), *expected, "{rule:?} {req:?}");
        }
        let non_resource = PolicyRule {
            verbs: vec!["*".into()],
            non_resource_urls: Some(vec!["*".into()]),
            ..Default::default()
        };
        assert!(!rule_allows(&non_resource, &delete_pvc));
    }

    fn subject(kind: &str, name: &str, namespace: Option<&str>) -> Subject {
        Subject {
            kind: kind.to_owned(),
            name: name.to_owned(),
            namespace: namespace.map(str::to_owned),
            api_group: None,
        }
    }

    #[test]
    fn subjects_apply_to_users_groups_and_service_accounts() {
        let sa = service_account_principal("ci", "bot");
        let user = Who::User("alice".into()).principal();
        let member = Who::Group("ai".into()).principal();
        let cases = [
            (
                subject("ServiceAccount", "bot", Some("ci")),
                None,
                &sa,
                true,
            ),
            (
                subject("ServiceAccount", "bot", None),
                Some("ci"),
                &sa,
                true,
            ),
            (subject("ServiceAccount", "bot", None), None, &sa, false),
            (
                subject("ServiceAccount", "bot", Some("prod")),
                Some("ci"),
                &sa,
                false,
            ),
            (
                subject("Group", "system:serviceaccounts:ci", None),
                None,
                &sa,
                true,
            ),
            (
                subject("Group", "system:authenticated", None),
                None,
                &user,
                true,
            ),
            (subject("User", "alice", None), None, &user, true),
            (
                subject("User", "system:serviceaccount:ci:bot", None),
                None,
                &sa,
                true,
            ),
            (subject("Group", "ai", None), None, &member, true),
            (subject("User", "ai", None), None, &member, false),
        ];
        for (s, ns, p, expected) in cases {
            assert_eq!(applies_to(&s, ns, p), expected, "{s:?} {ns:?} {p:?}");
        }
    }

    fn meta(name: &str, namespace: Option<&str>) -> kube::api::ObjectMeta {
        kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: namespace.map(str::to_owned),
            ..Default::default()
        }
    }

    fn role_ref(kind: &str, name: &str) -> k8s_openapi::api::rbac::v1::RoleRef {
        k8s_openapi::api::rbac::v1::RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: kind.into(),
            name: name.into(),
        }
    }

    fn rbac() -> Rbac {
        Rbac::new(
            vec![
                RoleBinding {
                    metadata: meta("bot-edit", Some("prod")),
                    role_ref: role_ref("ClusterRole", "edit"),
                    subjects: Some(vec![subject("ServiceAccount", "bot", Some("ci"))]),
                },
                RoleBinding {
                    metadata: meta("local", Some("ci")),
                    role_ref: role_ref("Role", "deleter"),
                    subjects: Some(vec![subject("ServiceAccount", "bot", None)]),
                },
            ],
            vec![ClusterRoleBinding {
                metadata: meta("oops", None),
                role_ref: role_ref("ClusterRole", "hooks"),
                subjects: Some(vec![subject("Group", "system:serviceaccounts:ci", None)]),
            }],
            vec![Role {
                metadata: meta("deleter", Some("ci")),
                rules: Some(vec![rule(
                    &["delete"],
                    &[""],
                    &["persistentvolumeclaims"],
                    &[],
                )]),
            }],
            vec![
                ClusterRole {
                    metadata: meta("edit", None),
                    rules: Some(vec![rule(&["*"], &[""], &["persistentvolumeclaims"], &[])]),
                    aggregation_rule: None,
                },
                ClusterRole {
                    metadata: meta("hooks", None),
                    rules: Some(vec![rule(
                        &["delete"],
                        &["admissionregistration.k8s.io"],
                        &["validatingwebhookconfigurations"],
                        &[],
                    )]),
                    aggregation_rule: None,
                },
            ],
        )
    }

    #[test]
    fn grants_name_the_binding_and_role_in_scope() {
        let rbac = rbac();
        let bot = service_account_principal("ci", "bot");
        let shown = |req: &Request| {
            rbac.grants(&bot, req)
                .iter()
                .map(Grant::to_string)
                .collect::<Vec<_>>()
        };
        let pvc = Request::new("delete", "", "persistentvolumeclaims");
        assert_eq!(
            shown(&pvc.clone().within("prod")),
            ["RoleBinding/bot-edit -> ClusterRole/edit"]
        );
        assert_eq!(
            shown(&pvc.clone().within("ci")),
            ["RoleBinding/local -> Role/deleter"]
        );
        // a RoleBinding never reaches another namespace or the cluster scope
        assert!(shown(&pvc.clone().within("staging")).is_empty());
        assert!(shown(&pvc).is_empty());
        assert_eq!(
            shown(
                &Request::new(
                    "delete",
                    "admissionregistration.k8s.io",
                    "validatingwebhookconfigurations"
                )
                .named("agentguard")
            ),
            ["ClusterRoleBinding/oops -> ClusterRole/hooks"]
        );
        let other = service_account_principal("prod", "bot");
        assert!(rbac.grants(&other, &pvc.within("prod")).is_empty());
    }

    fn snapshot(definition: AgentDefinition, labelled: &[&str]) -> Snapshot {
        Snapshot::new(
            AgentMatcher::new(&definition).unwrap(),
            labelled.iter().map(|s| s.to_string()).collect(),
            Vec::new(),
        )
    }

    #[test]
    fn globs_expand_against_service_accounts_and_binding_subjects() {
        let snapshot = snapshot(
            AgentDefinition {
                service_accounts: vec!["ci/*".into(), "*/cursor-*".into(), "kube-system/*".into()],
                groups: vec!["ai-agents".into(), "sre".into()],
                usernames: vec!["bot-*".into(), "claude".into()],
                break_glass_groups: vec!["sre".into()],
            },
            &["prod/labelled"],
        );
        let sas: Vec<(String, String)> = [
            ("ci", "deployer"),
            ("prod", "cursor-1"),
            ("prod", "orders"),
            ("prod", "labelled"),
            ("kube-system", "generic-garbage-collector"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        let bound = [
            subject("User", "bot-renovate", None),
            subject("User", "alice", None),
            subject("Group", "developers", None),
        ];
        let subjects: Vec<_> = bound.iter().map(|s| (s, None)).collect();
        let exact_users = ["claude".to_owned()].into();
        let exact_groups = ["ai-agents".to_owned(), "sre".to_owned()].into();
        let found = restricted(
            &snapshot,
            candidates(&sas, &subjects, &exact_users, &exact_groups),
        );
        let labels: Vec<String> = found.iter().map(|i| i.who.label()).collect();
        assert_eq!(
            labels,
            [
                "sa:ci/deployer",
                "sa:prod/cursor-1",
                "sa:prod/labelled",
                "user:bot-renovate",
                "user:claude",
                "group:ai-agents",
            ]
        );
        let labelled = found
            .iter()
            .find(|i| i.who.label() == "sa:prod/labelled")
            .unwrap();
        assert!(labelled.reason.contains("labelled"), "{}", labelled.reason);
    }

    #[test]
    fn a_group_counts_only_for_what_membership_adds() {
        let snapshot = snapshot(
            AgentDefinition {
                groups: vec!["ai".into()],
                usernames: vec!["*".into()],
                ..Default::default()
            },
            &[],
        );
        let found = restricted(
            &snapshot,
            [Who::Group("ai".into()), Who::User("anyone".into())].into(),
        );
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].who, Who::User("anyone".into()));
    }

    #[test]
    fn only_filters_by_service_account_user_or_group() {
        let only = GlobList::new(["ci/*", "bot-*"]).unwrap();
        let sa = |ns: &str, n: &str| Who::ServiceAccount {
            namespace: ns.into(),
            name: n.into(),
        };
        assert!(sa("ci", "x").matches(&only));
        assert!(!sa("prod", "x").matches(&only));
        assert!(Who::User("bot-1".into()).matches(&only));
        assert!(Who::Group("bot-team".into()).matches(&only));
        assert!(!Who::User("alice".into()).matches(&only));
    }

    #[test]
    fn run_flags_are_read_from_args_then_env() {
        let args: Vec<String> = [
            "run",
            "--namespace=$(POD_NAMESPACE)",
            "--agent-service-accounts=ci/*,*/cursor-*",
            "--agent-groups",
            "ai-agents",
            "--agent-service-accounts=prod/bot",
            "--cert-secret=agentguard/tls",
            "--webhook-configuration-name=guard",
            "--leader-election",
            "true",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let env = vec![
            ("AGENTGUARD_AGENT_GROUPS".to_owned(), "ignored".to_owned()),
            (
                "AGENTGUARD_AGENT_USERNAMES".to_owned(),
                "bot-*, ".to_owned(),
            ),
        ];
        let flags = RunFlags::parse(&args, &env);
        assert_eq!(
            flags.list("agent-service-accounts").unwrap(),
            ["ci/*", "*/cursor-*", "prod/bot"]
        );
        assert_eq!(flags.list("agent-groups").unwrap(), ["ai-agents"]);
        assert_eq!(flags.list("agent-usernames").unwrap(), ["bot-*"]);
        assert_eq!(flags.list("break-glass-groups"), None);
        assert_eq!(flags.single("webhook-configuration-name").unwrap(), "guard");
        let install = Install {
            deployment: "agentguard".into(),
            service_account: "agentguard".into(),
            flags: flags.clone(),
            mounted_secret: None,
        };
        assert_eq!(install.tls_secret("agentguard").unwrap(), "tls");
        assert_eq!(install.tls_secret("elsewhere"), None);
    }

    fn install_args(flags: &[&str]) -> Result<Install, String> {
        let args: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
        Ok(Install {
            deployment: "agentguard".into(),
            service_account: "agentguard".into(),
            flags: RunFlags::parse(&args, &[]),
            mounted_secret: None,
        })
    }

    fn audit_args(sas: &[&str], break_glass: &[&str]) -> AuditArgs {
        AuditArgs {
            agent_service_accounts: sas.iter().map(|s| s.to_string()).collect(),
            agent_groups: vec![],
            agent_usernames: vec![],
            break_glass_groups: break_glass.iter().map(|s| s.to_string()).collect(),
            webhook_configuration_name: None,
            only: vec![],
        }
    }

    #[test]
    fn the_agent_definition_comes_from_flags_else_the_deployment() {
        let install = install_args(&[
            "run",
            "--agent-service-accounts=ci/*",
            "--break-glass-groups=sre",
        ]);
        let (def, source) = agent_definition(&audit_args(&["x/y"], &[]), "ag", &install).unwrap();
        assert_eq!(
            (def.service_accounts, source.as_str()),
            (vec!["x/y".to_owned()], "flags")
        );
        assert_eq!(def.break_glass_groups, ["sre"]);
        // an empty flag still counts as given: only labelled ServiceAccounts
        let (def, _) = agent_definition(&audit_args(&[""], &["oncall"]), "ag", &install).unwrap();
        assert!(def.service_accounts.is_empty());
        assert_eq!(def.break_glass_groups, ["oncall"]);
        let (def, source) = agent_definition(&audit_args(&[], &[]), "ag", &install).unwrap();
        assert_eq!(def.service_accounts, ["ci/*"]);
        assert_eq!(source, "Deployment ag/agentguard");
        let failure = agent_definition(&audit_args(&[], &[]), "ag", &Err("no Deployment".into()))
            .unwrap_err();
        assert_eq!(failure.code, 1);
        assert!(
            failure.message.contains("no Deployment"),
            "{}",
            failure.message
        );
    }

    fn webhook(
        selector: Option<LabelSelector>,
        resources: &[&str],
    ) -> ValidatingWebhookConfiguration {
        ValidatingWebhookConfiguration {
            metadata: meta("agentguard", None),
            webhooks: Some(vec![
                k8s_openapi::api::admissionregistration::v1::ValidatingWebhook {
                    name: "validate.agentguard.dev".into(),
                    namespace_selector: selector,
                    rules: Some(vec![RuleWithOperations {
                        operations: Some(vec!["DELETE".into()]),
                        api_groups: Some(vec!["".into()]),
                        api_versions: Some(vec!["*".into()]),
                        resources: Some(resources.iter().map(|s| s.to_string()).collect()),
                        scope: Some("*".into()),
                    }]),
                    ..Default::default()
                },
            ]),
        }
    }

    #[test]
    fn the_webhook_judges_what_its_rules_and_namespace_selector_cover() {
        let excluded = LabelSelector {
            match_expressions: Some(vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                    key: NAMESPACE_NAME_LABEL.into(),
                    operator: "NotIn".into(),
                    values: Some(vec!["agentguard".into(), "kube-system".into()]),
                },
            ]),
            match_labels: None,
        };
        let config = webhook(Some(excluded), &["persistentvolumeclaims", "namespaces"]);
        let labels = |ns: &str| -> BTreeMap<String, String> {
            [(NAMESPACE_NAME_LABEL.to_owned(), ns.to_owned())].into()
        };
        let (prod, own) = (labels("prod"), labels("agentguard"));
        let judges = |c: Option<&ValidatingWebhookConfiguration>,
                      resource,
                      ns: Option<(&str, &BTreeMap<String, String>)>| {
            webhook_judges(c, "agentguard", "", resource, true, ns)
        };
        assert!(judges(
            Some(&config),
            "persistentvolumeclaims",
            Some(("prod", &prod))
        ));
        assert!(!judges(
            Some(&config),
            "persistentvolumeclaims",
            Some(("agentguard", &own))
        ));
        assert!(!judges(Some(&config), "secrets", Some(("prod", &prod))));
        assert!(webhook_judges(
            Some(&config),
            "agentguard",
            "",
            "namespaces",
            false,
            Some(("prod", &prod))
        ));
        assert!(!selects_by_mutable_labels(Some(&config)));
        // without the configuration: as the operator writes it
        assert!(judges(
            None,
            "persistentvolumeclaims",
            Some(("prod", &prod))
        ));
        assert!(!judges(
            None,
            "persistentvolumeclaims",
            Some(("kube-system", &prod))
        ));
        assert!(judges(None, "persistentvolumes", None));

        let by_label = webhook(
            Some(LabelSelector {
                match_labels: Some([("guarded".to_owned(), "yes".to_owned())].into()),
                match_expressions: None,
            }),
            &["*"],
        );
        assert!(!judges(
            Some(&by_label),
            "persistentvolumeclaims",
            Some(("prod", &prod))
        ));
        assert!(selects_by_mutable_labels(Some(&by_label)));
    }

    fn found(severity: Severity) -> Finding {
        Finding {
            identity: "sa:ci/bot".into(),
            severity,
            check: CheckKind::DeleteProtected,
            can: "delete persistentvolumeclaims (1 protected)".into(),
            namespace: Some("prod".into()),
            why: String::new(),
            allowed: vec![],
            granted_by: vec![],
            not_from_rbac: false,
        }
    }

    #[test]
    fn exit_code_is_3_only_for_a_bypass() {
        assert_eq!(exit_code(&[]), 0);
        assert_eq!(exit_code(&[found(Severity::Info)]), 0);
        assert_eq!(
            exit_code(&[found(Severity::Info), found(Severity::Bypass)]),
            3
        );
    }

    #[test]
    fn findings_are_allowed_routes_with_their_grants() {
        let rbac = rbac();
        let identity = Identity {
            who: Who::ServiceAccount {
                namespace: "ci".into(),
                name: "bot".into(),
            },
            principal: service_account_principal("ci", "bot"),
            reason: String::new(),
        };
        let check = Check::verbs(
            CheckKind::WebhookConfiguration,
            Severity::Bypass,
            None,
            "validatingwebhookconfigurations/agentguard".into(),
            "why",
            &["delete", "update", "patch"],
            Request::new(
                "",
                "admissionregistration.k8s.io",
                "validatingwebhookconfigurations",
            )
            .named("agentguard"),
        );
        let mut answers = Answers::new();
        assert!(finding(&identity, &check, &answers, &rbac).is_none());
        for (verb, yes) in [("delete", true), ("update", false), ("patch", true)] {
            answers.insert(
                (identity.principal.clone(), check_request(&check, verb)),
                yes,
            );
        }
        let f = finding(&identity, &check, &answers, &rbac).unwrap();
        assert_eq!(
            f.can,
            "delete,patch validatingwebhookconfigurations/agentguard"
        );
        assert_eq!(f.granted_by.len(), 1);
        assert_eq!(
            f.granted_by[0].to_string(),
            "ClusterRoleBinding/oops -> ClusterRole/hooks"
        );
        // patch comes from no binding: the API server said yes for another reason
        assert!(f.not_from_rbac);

        let rows = table_rows(&[
            f.clone(),
            Finding {
                namespace: Some("a".into()),
                ..f.clone()
            },
        ]);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0][3], "(cluster),a");
        assert_eq!(
            rows[0][4],
            "ClusterRoleBinding/oops -> ClusterRole/hooks, (not from RBAC)"
        );
    }

    fn check_request(check: &Check, verb: &str) -> Request {
        check
            .routes
            .iter()
            .flat_map(|r| &r.needs)
            .find(|r| r.verb == verb)
            .unwrap()
            .clone()
    }

    #[test]
    fn act_as_skips_exec_without_pods() {
        let target = Target {
            namespace: "prod".into(),
            name: Some("orders".into()),
            why: String::new(),
            has_pods: false,
        };
        let check = act_as(&target);
        assert!(check.routes.iter().all(|r| r.label != "exec"));
        assert!(check.prefix.starts_with("act as prod/orders via "));
        let impersonate = &check.routes[0].needs[0];
        assert_eq!(
            (impersonate.name.as_str(), impersonate.namespace.as_str()),
            ("orders", "prod")
        );
    }
}
