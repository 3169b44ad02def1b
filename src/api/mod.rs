//! Names of the agentguard API: group, annotations and labels. The contract lives in DESIGN.md;
//! every other module refers to these constants instead of spelling the strings again.

/// API group of agentguard's own resources.
pub const GROUP: &str = "agentguard.dev";

/// Prefix shared by every agentguard annotation and label.
pub const PREFIX: &str = "agentguard.dev/";

/// `agentguard.dev/protected: "true"` protects an object with the global defaults.
pub const PROTECTED_ANNOTATION: &str = "agentguard.dev/protected";

/// Username of the human who approved a deletion.
pub const APPROVED_BY_ANNOTATION: &str = "agentguard.dev/approved-by";

/// RFC 3339 instant at which an approval expires.
pub const APPROVED_UNTIL_ANNOTATION: &str = "agentguard.dev/approved-until";

/// agentguard's seal over an approval (see `policy::seal`); written only by agentguard.
pub const APPROVAL_SEAL_ANNOTATION: &str = "agentguard.dev/approval-seal";

/// Set with an approval, by the same request: the switches (catalog keys, comma-separated) the
/// approver saw turned on that make the deletion also destroy backups or skip the final
/// snapshot (`kubectl agentguard approve --destroy-backups`). Sealed with the approval.
pub const APPROVED_BACKUP_LOSS_ANNOTATION: &str = "agentguard.dev/approved-backup-loss";

/// Free text explaining an approval.
pub const APPROVAL_REASON_ANNOTATION: &str = "agentguard.dev/approval-reason";

/// `agentguard.dev/agent: "true"` on a ServiceAccount marks it as a restricted identity.
pub const AGENT_LABEL: &str = "agentguard.dev/agent";

/// Value of the `policy` label and audit annotation when an object is protected by its own
/// `agentguard.dev/protected` annotation rather than by a policy object.
pub const ANNOTATION_POLICY: &str = "annotation";

mod crd;

pub use crd::{
    ApprovalSpec, Approvers, CRD_VERSION_LABEL, CatalogTarget, ClusterProtectedResource,
    ClusterProtectedResourceSpec, DeletionRequest, DeletionRequestSpec, DeletionRequestStatus,
    LastBlocked, Mode, ProtectedResource, ProtectedResourceSpec, ProtectionSpec, ProtectionStatus,
    RequestState, RequestTarget, Subjects, Target, crd_yaml, crds,
};

/// Longest approval window any policy may accept.
pub const MAX_APPROVAL_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Approval window when a policy does not set `approval.maxTTL`.
pub const DEFAULT_APPROVAL_TTL: std::time::Duration = std::time::Duration::from_secs(3600);
