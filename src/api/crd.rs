//! `ProtectedResource` and `ClusterProtectedResource`, group `agentguard.dev`, `v1alpha1`.
//! Both share [`ProtectionSpec`]; the schema (with CEL rules) rejects what it can at creation,
//! and [`crate::policy::compile`] reports the rest as `Ready=False` with a reason.

// kube-derive repeats `type_ = "integer"` across printer columns by design; clippy reads that as a
// duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What happens when a restricted identity deletes a protected object without approval.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    JsonSchema,
)]
pub enum Mode {
    /// Allow, and record the attempt only.
    Audit,
    /// Allow, with an admission warning the client prints.
    Warn,
    /// Deny (403 Forbidden).
    #[default]
    Enforce,
}

/// Objects a policy protects: a kind in one of the API groups (or every kind of the
/// data-holding catalog), narrowed by optional filters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.catalog) || (has(self.apiGroups) && size(self.apiGroups) > 0)").message("apiGroups must list at least one group (\"\" is the core group), unless the target names catalog").field_path(".apiGroups"))]
#[x_kube(validation = Rule::new("has(self.catalog) || (has(self.kinds) && size(self.kinds) > 0)").message("kinds must list at least one kind, unless the target names catalog").field_path(".kinds"))]
#[x_kube(validation = Rule::new("!has(self.catalog) || (!has(self.apiGroups) && !has(self.kinds))").message("a target names catalog or apiGroups and kinds, not both"))]
pub struct Target {
    /// API groups; "" is the core group. Required unless `catalog` is set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_groups: Vec<String>,
    /// Kinds, e.g. PersistentVolumeClaim. Required unless `catalog` is set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<String>,
    /// Every kind of agentguard's catalog of data-holding kinds (databases, buckets, backups:
    /// `catalog/data-kinds.yaml`) that the API server serves, instead of `apiGroups` and
    /// `kinds`. A kind whose CRD is installed later is protected within seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog: Option<CatalogTarget>,
    /// Object name globs; empty means every name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// Label selector on the object; absent means every object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Namespace globs (ClusterProtectedResource only); empty means every namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
}

/// Which families of the data-holding catalog a target covers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CatalogTarget {
    /// Families to cover (e.g. `cloudnative-pg`, `ack-rds`); empty means every family.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub families: Vec<String>,
    /// Families left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_families: Vec<String>,
}

/// Who a policy restricts, instead of the global agent definition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Subjects {
    /// ServiceAccounts as namespace/name globs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<String>,
    /// Group names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Username globs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub usernames: Vec<String>,
}

/// Who may approve, when not every unrestricted identity may.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Approvers {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub usernames: Vec<String>,
}

/// How approvals are accepted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalSpec {
    /// Longest approval window accepted, e.g. 30m or 1h (default 1h, at most 24h).
    #[serde(default, rename = "maxTTL", skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(h|m|s))+$"))]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s') && duration(self) <= duration('24h')").message("maxTTL must be more than 0s and at most 24h"))]
    pub max_ttl: Option<String>,
    /// Who may approve; default any identity that is not restricted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvers: Option<Approvers>,
}

/// The spec both policy kinds share.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProtectionSpec {
    /// Enforce (deny), Warn (allow with a warning) or Audit (allow, record only).
    #[serde(default)]
    pub mode: Mode,
    /// What is protected.
    #[schemars(length(min = 1))]
    pub targets: Vec<Target>,
    /// Who is restricted; default is the global agent definition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subjects: Option<Subjects>,
    /// How approvals are accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalSpec>,
    /// Keep the disk: set the reclaim policy of the PersistentVolumes bound to protected claims
    /// to Retain, so even an approved or mistaken deletion leaves the data for recovery.
    /// Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain_volumes: Option<bool>,
    /// Text appended to the denial message, e.g. whom to ask.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub message: Option<String>,
}

/// Protects objects in the policy's own namespace.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "agentguard.dev",
    version = "v1alpha1",
    kind = "ProtectedResource",
    namespaced,
    status = "ProtectionStatus",
    shortname = "pr",
    category = "agentguard",
    doc = "Protects objects in this namespace from deletion by restricted identities (AI agents, bots) without human approval.",
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(
        name = "Protected",
        type_ = "integer",
        json_path = ".status.protectedObjects"
    ),
    printcolumn(
        name = "Blocked",
        type_ = "integer",
        json_path = ".status.blockedDeletions"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self.targets.all(t, !has(t.namespaces) || size(t.namespaces) == 0)").message("targets[].namespaces is only allowed in ClusterProtectedResource; a ProtectedResource protects its own namespace"))]
pub struct ProtectedResourceSpec {
    #[serde(flatten)]
    pub protection: ProtectionSpec,
}

/// Protects objects in any namespace, and cluster-scoped objects such as PersistentVolumes.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "agentguard.dev",
    version = "v1alpha1",
    kind = "ClusterProtectedResource",
    status = "ProtectionStatus",
    shortname = "cpr",
    category = "agentguard",
    doc = "Protects objects in any namespace, and cluster-scoped objects, from deletion by restricted identities (AI agents, bots) without human approval.",
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(
        name = "Protected",
        type_ = "integer",
        json_path = ".status.protectedObjects"
    ),
    printcolumn(
        name = "Blocked",
        type_ = "integer",
        json_path = ".status.blockedDeletions"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct ClusterProtectedResourceSpec {
    #[serde(flatten)]
    pub protection: ProtectionSpec,
}

/// The last blocked attempt, for `kubectl get -o yaml` and the plugin's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastBlocked {
    pub time: Time,
    pub subject: String,
    pub object: String,
}

/// Status both policy kinds share, written by the operator.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProtectionStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub protected_objects: i64,
    #[serde(default)]
    pub blocked_deletions: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_blocked: Option<LastBlocked>,
}

impl Target {
    /// Every object of `kinds` in `api_groups`, with no further filter.
    pub fn kinds(api_groups: &[&str], kinds: &[&str]) -> Self {
        Self {
            api_groups: api_groups.iter().map(|s| s.to_string()).collect(),
            kinds: kinds.iter().map(|s| s.to_string()).collect(),
            catalog: None,
            names: vec![],
            selector: None,
            namespaces: vec![],
        }
    }

    /// Every kind of the data-holding catalog's families (all when empty).
    pub fn catalog(families: &[&str], exclude_families: &[&str]) -> Self {
        Self {
            catalog: Some(CatalogTarget {
                families: families.iter().map(|s| s.to_string()).collect(),
                exclude_families: exclude_families.iter().map(|s| s.to_string()).collect(),
            }),
            ..Self::kinds(&[], &[])
        }
    }
}

impl ProtectionSpec {
    /// A spec with these targets and defaults for everything else.
    pub fn new(mode: Mode, targets: Vec<Target>) -> Self {
        Self {
            mode,
            targets,
            subjects: None,
            approval: None,
            retain_volumes: None,
            message: None,
        }
    }
}

/// The object a DeletionRequest asks to delete, in the request's namespace (or cluster-scoped).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestTarget {
    /// e.g. `v1`, `snapshot.storage.k8s.io/v1`.
    #[schemars(length(min = 1))]
    pub api_version: String,
    /// e.g. `PersistentVolumeClaim`.
    #[schemars(length(min = 1))]
    pub kind: String,
    #[schemars(length(min = 1))]
    pub name: String,
}

/// An agent asks a human to approve one deletion. Created by the agent (`kubectl agentguard
/// request`), answered by a human (`kubectl agentguard approve request/<name>` or `reject`).
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "agentguard.dev",
    version = "v1alpha1",
    kind = "DeletionRequest",
    namespaced,
    status = "DeletionRequestStatus",
    shortname = "dr",
    category = "agentguard",
    doc = "A request, by an agent, that a human approve the deletion of one protected object.",
    printcolumn(name = "Kind", type_ = "string", json_path = ".spec.target.kind"),
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.target.name"),
    printcolumn(name = "Requester", type_ = "string", json_path = ".spec.requester"),
    printcolumn(name = "State", type_ = "string", json_path = ".status.state"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("a DeletionRequest's spec cannot be changed; file a new one"))]
#[serde(rename_all = "camelCase")]
pub struct DeletionRequestSpec {
    pub target: RequestTarget,
    /// Why the agent needs the deletion, for the human who decides.
    #[schemars(length(min = 1, max = 2048))]
    pub reason: String,
    /// The username of whoever filed it; agentguard refuses a request that names someone else.
    #[schemars(length(min = 1))]
    pub requester: String,
}

/// Where a DeletionRequest stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum RequestState {
    #[default]
    Pending,
    Approved,
    Rejected,
    Expired,
}

impl RequestState {
    /// The `state` label of `agentguard_approval_requests`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
            Self::Expired => "expired",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeletionRequestStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<RequestState>,
    /// Who approved or rejected it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<Time>,
    /// A Pending request expires then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// For an approval: the approval written on the target lasts until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_until: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The label that says which agentguard release wrote a CRD: `agentguard crd --apply` never
/// replaces a CRD of a newer release with an older one.
pub const CRD_VERSION_LABEL: &str = "app.kubernetes.io/version";

/// agentguard's CRDs, labelled with this release's version.
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![
        ProtectedResource::crd(),
        ClusterProtectedResource::crd(),
        DeletionRequest::crd(),
    ];
    for crd in &mut crds {
        crd.metadata.labels = Some(
            [(
                CRD_VERSION_LABEL.to_owned(),
                env!("CARGO_PKG_VERSION").to_owned(),
            )]
            .into(),
        );
    }
    crds
}

/// The CRDs as one multi-document YAML stream: the output of `agentguard crd` and the
/// content of `crds/`.
pub fn crd_yaml() -> String {
    let docs = crds()
        .iter()
        .map(|crd| serde_saphyr::to_string(crd).expect("CRDs serialize to YAML"))
        .collect::<Vec<_>>();
    docs.iter().map(|d| format!("---\n{d}")).collect::<String>()
}
