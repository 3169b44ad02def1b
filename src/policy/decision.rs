use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, Operation};

use super::agents::Restriction;
use super::cascade::{CascadeHit, ProtectedObjects, cascade_of, cascade_of_object};
use super::compiled::{CompiledPolicy, ObjectFacts, PolicyRef, Snapshot};
use super::proxy::Reach;
use super::seal::SealInput;
use crate::api::{
    ANNOTATION_POLICY, APPROVAL_SEAL_ANNOTATION, APPROVED_BACKUP_LOSS_ANNOTATION,
    APPROVED_BY_ANNOTATION, APPROVED_UNTIL_ANNOTATION, DEFAULT_APPROVAL_TTL, GROUP, Mode, PREFIX,
    PROTECTED_ANNOTATION,
};

/// What the webhook answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Refused (403 Forbidden).
    Deny,
    /// Allowed, with an admission warning the client prints (policy mode Warn).
    Warn,
    /// Allowed and recorded (policy mode Audit).
    Audit,
}

impl Verdict {
    /// Value of the `decision` metric label and audit annotation.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Allow => "allowed",
            Verdict::Deny => "denied",
            Verdict::Warn => "warned",
            Verdict::Audit => "audited",
        }
    }
}

/// What happened to an approval in this request, for `agentguard_approvals_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApprovalEvent {
    /// A human set a valid approval.
    Accepted,
    /// An approval was refused (wrong approver, bad or too long window).
    Rejected,
    /// A deletion went through because of an approval.
    Used,
    /// A deletion was refused because the approval on the object had expired.
    Expired,
}

impl ApprovalEvent {
    pub fn label(self) -> &'static str {
        match self {
            ApprovalEvent::Accepted => "accepted",
            ApprovalEvent::Rejected => "rejected",
            ApprovalEvent::Used => "used",
            ApprovalEvent::Expired => "expired",
        }
    }
}

/// The object a request is about, as the denial message and metrics name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    /// Kind, e.g. `PersistentVolumeClaim`.
    pub kind: String,
    /// API group, "" for core.
    pub group: String,
    /// Plural resource, e.g. `persistentvolumeclaims`.
    pub resource: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectRef {
    /// Reads name and namespace from the object first (`oldObject` on DELETE): for a
    /// DeleteCollection the API server sends one review per item, and on some paths
    /// `request.name` is empty.
    fn of(req: &AdmissionRequest<DynamicObject>) -> Self {
        let meta = req
            .old_object
            .as_ref()
            .or(req.object.as_ref())
            .map(|o| &o.metadata);
        let name = meta
            .and_then(|m| m.name.clone())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| req.name.clone());
        // The object's own metadata is the truth when present: for a Namespace the request's
        // namespace field names the namespace itself, yet it is cluster-scoped.
        let namespace = match meta {
            Some(m) => m.namespace.clone(),
            None => req.namespace.clone(),
        }
        .filter(|n| !n.is_empty());
        Self {
            kind: req.kind.kind.clone(),
            group: req.kind.group.clone(),
            resource: req.resource.resource.clone(),
            namespace,
            name,
        }
    }

    /// `prod/data`, or `pv-1` for cluster-scoped objects.
    pub fn qualified_name(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }

    fn approve_command(&self) -> String {
        format!(
            "kubectl agentguard approve {} --for 30m",
            self.command_target()
        )
    }

    /// The command an agent runs to ask a human (files a DeletionRequest).
    fn request_command(&self) -> String {
        format!(
            "kubectl agentguard request {} --reason \"<why you need it deleted>\"",
            self.command_target()
        )
    }

    /// `persistentvolumeclaim/data -n prod`.
    fn command_target(&self) -> String {
        let namespace_flag = self
            .namespace
            .as_deref()
            .map(|ns| format!(" -n {ns}"))
            .unwrap_or_default();
        format!(
            "{}/{}{namespace_flag}",
            self.kind.to_ascii_lowercase(),
            self.name
        )
    }
}

/// A decision and everything needed to explain and record it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    /// One line for logs and the `reason` audit annotation.
    pub reason: String,
    /// What protects the object (`annotation`, or a policy label), when something does.
    pub policy: Option<String>,
    /// The text returned to the caller on denials.
    pub message: Option<String>,
    /// An admission warning (Warn mode).
    pub warning: Option<String>,
    pub approval: Option<ApprovalEvent>,
    /// Set when an exempt identity (break glass) acted on a protected object.
    pub exemption: Option<&'static str>,
    /// The policy object that decided a denial or warning, for its status counters.
    pub decided_by: Option<PolicyRef>,
    pub object: ObjectRef,
}

impl Decision {
    fn new(verdict: Verdict, object: ObjectRef, reason: impl Into<String>) -> Self {
        Self {
            verdict,
            reason: reason.into(),
            policy: None,
            message: None,
            warning: None,
            approval: None,
            exemption: None,
            decided_by: None,
            object,
        }
    }

    fn allow(object: ObjectRef, reason: impl Into<String>) -> Self {
        Self::new(Verdict::Allow, object, reason)
    }

    fn deny(object: ObjectRef, reason: impl Into<String>, message: String) -> Self {
        let mut d = Self::new(Verdict::Deny, object, reason);
        d.message = Some(message);
        d
    }
}

/// One thing that protects an object: its own annotation, or a policy.
#[derive(Debug, Clone, Copy)]
enum Protection<'s> {
    Annotation,
    Policy(&'s CompiledPolicy),
}

impl Protection<'_> {
    fn mode(self) -> Mode {
        match self {
            Protection::Annotation => Mode::Enforce,
            Protection::Policy(p) => p.mode,
        }
    }

    fn max_ttl(self) -> Duration {
        match self {
            Protection::Annotation => DEFAULT_APPROVAL_TTL,
            Protection::Policy(p) => p.max_ttl,
        }
    }

    fn describe(self) -> String {
        match self {
            Protection::Annotation => format!("annotation {PROTECTED_ANNOTATION}=true"),
            Protection::Policy(p) => p.id.describe(),
        }
    }

    fn label(self) -> String {
        match self {
            Protection::Annotation => ANNOTATION_POLICY.to_owned(),
            Protection::Policy(p) => p.id.label(),
        }
    }

    /// Whether `username` (with `groups`, when known) may approve for this protection.
    /// Without named approvers any unrestricted identity that is not a ServiceAccount may: an
    /// approval is a person's act, and an agent may be able to act as some ServiceAccount
    /// agentguard does not restrict. A policy may name a ServiceAccount's full username.
    fn allows_approver(self, username: &str, groups: Option<&[String]>) -> bool {
        let named = match self {
            Protection::Policy(p) => p
                .approvers
                .as_ref()
                .is_some_and(|a| a.usernames.contains(username)),
            Protection::Annotation => false,
        };
        if username.starts_with(SERVICE_ACCOUNT_PREFIX) {
            return named;
        }
        let Protection::Policy(p) = self else {
            return true;
        };
        let Some(approvers) = &p.approvers else {
            return true;
        };
        if approvers.usernames.is_empty() && approvers.groups.is_empty() {
            return true;
        }
        approvers.usernames.contains(username)
            || match groups {
                Some(groups) => groups.iter().any(|g| approvers.groups.contains(g)),
                // At deletion time the approver's groups are unknown; the group check was made
                // when the approval was set (an UPDATE this webhook judged).
                None => !approvers.groups.is_empty(),
            }
    }
}

const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// An approval as found on an object.
#[derive(Debug, Clone)]
struct Approval {
    by: String,
    until: Option<Timestamp>,
    until_text: String,
    seal: Option<String>,
    /// `approved-backup-loss`: the switch keys whose loss of backups the approver accepted.
    backup_loss: String,
}

impl Approval {
    fn of(annotations: &BTreeMap<String, String>) -> Option<Self> {
        let by = annotations.get(APPROVED_BY_ANNOTATION);
        let until = annotations.get(APPROVED_UNTIL_ANNOTATION);
        if by.is_none() && until.is_none() {
            return None;
        }
        let until_text = until.cloned().unwrap_or_default();
        Some(Self {
            by: by.map(|s| s.trim().to_owned()).unwrap_or_default(),
            until: until_text.trim().parse().ok(),
            until_text,
            seal: annotations.get(APPROVAL_SEAL_ANNOTATION).cloned(),
            backup_loss: annotations
                .get(APPROVED_BACKUP_LOSS_ANNOTATION)
                .cloned()
                .unwrap_or_default(),
        })
    }

    /// Whether the approver accepted the loss of backups a switch (by catalog key) causes.
    fn accepts_backup_loss(&self, key: &str) -> bool {
        self.backup_loss.split(',').any(|k| k.trim() == key)
    }

    /// What the seal of this approval on `object` (with `uid`) covers. The raw annotation
    /// values are sealed, so any later edit of either voids the seal.
    fn seal_input<'a>(
        &'a self,
        object: &'a ObjectRef,
        uid: &'a str,
        annotations: &'a BTreeMap<String, String>,
    ) -> SealInput<'a> {
        SealInput {
            group: &object.group,
            kind: &object.kind,
            uid,
            approved_by: annotations
                .get(APPROVED_BY_ANNOTATION)
                .map(String::as_str)
                .unwrap_or_default(),
            approved_until: &self.until_text,
            backup_loss: &self.backup_loss,
        }
    }

    /// Why this approval on `on` does not cover `protection` at `now`, if it does not.
    fn problem(
        &self,
        protection: Protection<'_>,
        snapshot: &Snapshot,
        now: Timestamp,
        object: &ObjectRef,
        on: &DynamicObject,
    ) -> Option<ApprovalProblem> {
        if self.by.is_empty() {
            return Some(ApprovalProblem::Invalid(format!(
                "{APPROVED_BY_ANNOTATION} is empty"
            )));
        }
        let Some(until) = self.until else {
            return Some(ApprovalProblem::Invalid(format!(
                "{APPROVED_UNTIL_ANNOTATION} {:?} is not an RFC 3339 time",
                self.until_text
            )));
        };
        if until <= now {
            return Some(ApprovalProblem::Expired(format!(
                "the approval by {} expired at {until}",
                self.by
            )));
        }
        let uid = on.metadata.uid.as_deref().unwrap_or_default();
        let input = self.seal_input(object, uid, annotations(Some(on)));
        if let Err(problem) = snapshot.keys().verify(&input, self.seal.as_deref()) {
            return Some(ApprovalProblem::Invalid(format!(
                "the approval by {} is void: {problem}",
                self.by
            )));
        }
        if exceeds(until, now, protection.max_ttl()) {
            return Some(ApprovalProblem::Invalid(format!(
                "the approval window ends at {until}, more than {} from now ({} maxTTL)",
                human(protection.max_ttl()),
                protection.describe()
            )));
        }
        if snapshot.restricted_anywhere(&self.by, &[]).is_some() {
            return Some(ApprovalProblem::Invalid(format!(
                "{} is a restricted identity and cannot approve",
                self.by
            )));
        }
        if !protection.allows_approver(&self.by, None) {
            return Some(ApprovalProblem::Invalid(format!(
                "{} is not an approver of {}",
                self.by,
                protection.describe()
            )));
        }
        None
    }
}

enum ApprovalProblem {
    Expired(String),
    Invalid(String),
}

fn exceeds(until: Timestamp, now: Timestamp, max: Duration) -> bool {
    let window = until.duration_since(now);
    window.as_secs_f64() > max.as_secs_f64()
}

fn human(d: Duration) -> String {
    let secs = d.as_secs();
    match (secs / 3600, (secs % 3600) / 60, secs % 60) {
        (h, 0, 0) if h > 0 => format!("{h}h"),
        (0, m, 0) => format!("{m}m"),
        (h, m, 0) => format!("{h}h{m}m"),
        _ => format!("{secs}s"),
    }
}

fn annotations(obj: Option<&DynamicObject>) -> &BTreeMap<String, String> {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    obj.and_then(|o| o.metadata.annotations.as_ref())
        .unwrap_or(&EMPTY)
}

fn labels(obj: Option<&DynamicObject>) -> &BTreeMap<String, String> {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    obj.and_then(|o| o.metadata.labels.as_ref())
        .unwrap_or(&EMPTY)
}

fn guard_keys(map: &BTreeMap<String, String>) -> impl Iterator<Item = (&String, &String)> {
    map.iter().filter(|(k, _)| k.starts_with(PREFIX))
}

/// `agentguard.dev/*` annotation and label keys whose presence or value differs.
fn changed_guard_keys(old: Option<&DynamicObject>, new: Option<&DynamicObject>) -> Vec<String> {
    let mut changed = Vec::new();
    for (what, get) in [
        ("annotation", annotations as fn(_) -> _),
        ("label", labels as fn(_) -> _),
    ] {
        let (a, b) = (get(old), get(new));
        for (k, v) in guard_keys(a) {
            if b.get(k) != Some(v) {
                changed.push(format!("{what} {k}"));
            }
        }
        for (k, _) in guard_keys(b) {
            if !a.contains_key(k) {
                changed.push(format!("{what} {k}"));
            }
        }
    }
    changed.sort();
    changed.dedup();
    changed
}

fn is_protected_by_annotation(obj: &DynamicObject) -> bool {
    annotations(Some(obj))
        .get(PROTECTED_ANNOTATION)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

fn protections<'s>(
    snapshot: &'s Snapshot,
    object: &ObjectRef,
    obj: &DynamicObject,
) -> Vec<Protection<'s>> {
    let facts = ObjectFacts {
        group: &object.group,
        kind: &object.kind,
        namespace: object.namespace.as_deref(),
        name: &object.name,
        labels: labels(Some(obj)),
    };
    let mut found: Vec<Protection<'s>> = snapshot
        .protecting(&facts)
        .into_iter()
        .map(Protection::Policy)
        .collect();
    if is_protected_by_annotation(obj) {
        found.push(Protection::Annotation);
    }
    found
}

fn is_policy_resource(object: &ObjectRef) -> bool {
    object.group == GROUP
        && matches!(
            object.resource.as_str(),
            "protectedresources" | "clusterprotectedresources"
        )
}

/// agentguard's own CustomResourceDefinitions: deleting one deletes every policy (or request)
/// of its kind, and changing one changes what the API server keeps of them (a schema without
/// `targets` prunes every policy's targets on read). CRD names are `<plural>.<group>`.
fn is_own_definition(object: &ObjectRef) -> bool {
    object.group == "apiextensions.k8s.io"
        && object.kind == "CustomResourceDefinition"
        && object.name.ends_with(&format!(".{GROUP}"))
}

/// APIServices: which server answers for an API group (the aggregation layer). One pointed at
/// a Service of the agent's own would answer for agentguard's policies, or for a protected
/// kind, in place of the API server's storage, and agentguard's watches would read what it
/// serves. Whoever the guard restricts may not write any of them.
fn is_api_service(object: &ObjectRef) -> bool {
    object.group == "apiregistration.k8s.io" && object.resource == "apiservices"
}

fn is_deletion_request(object: &ObjectRef) -> bool {
    object.group == GROUP && object.resource == "deletionrequests"
}

/// DeletionRequests: anyone may file one, in their own name only (`spec.requester` must be the
/// caller, as `approved-by` must be); a restricted identity may withdraw (delete) its request
/// but not change it or its status, which humans and agentguard write.
fn decide_request(
    req: &AdmissionRequest<DynamicObject>,
    snapshot: &Snapshot,
    object: ObjectRef,
    username: &str,
    groups: &[String],
) -> Decision {
    match req.operation {
        Operation::Create => {
            let requester = req
                .object
                .as_ref()
                .and_then(|o| o.data.pointer("/spec/requester"))
                .and_then(|v| v.as_str())
                .unwrap_or_default();
            if requester == username {
                Decision::allow(object, "request filed in the requester's own name")
            } else {
                Decision::deny(
                    object.clone(),
                    "requester is not the caller".to_owned(),
                    format!(
                        "agentguard: DENIED create of DeletionRequest {}: spec.requester must be your own username \"{username}\", not \"{requester}\".",
                        object.qualified_name()
                    ),
                )
            }
        }
        Operation::Update => match snapshot.restricted_anywhere(username, groups) {
            Some(r) => Decision::deny(
                object.clone(),
                format!("{}; requests are answered by humans", r.reason),
                format!(
                    "agentguard: DENIED update of DeletionRequest {} by {username}. A request is answered by a human; wait for the answer. \
                     Stop and ask a human.",
                    object.qualified_name()
                ),
            ),
            None => Decision::allow(object, "identity is not restricted"),
        },
        Operation::Delete | Operation::Connect => {
            Decision::allow(object, "withdrawing a request is allowed")
        }
    }
}

fn verb(op: &Operation) -> &'static str {
    match op {
        Operation::Create => "create",
        Operation::Update => "update",
        Operation::Delete => "delete",
        Operation::Connect => "connect",
    }
}

/// Judges one admission request against a snapshot at time `now`.
pub fn decide(
    req: &AdmissionRequest<DynamicObject>,
    snapshot: &Snapshot,
    objects: &dyn ProtectedObjects,
    now: Timestamp,
) -> Decision {
    let object = ObjectRef::of(req);
    let username = req.user_info.username.as_deref().unwrap_or_default();
    let groups = req.user_info.groups.as_deref().unwrap_or_default();

    // The guard cannot be disarmed by the identities it guards against: not through its
    // policies, nor through the CRDs that define them.
    let off_limits = if is_policy_resource(&object) {
        Some(("policies are off limits", "agentguard policies"))
    } else if is_own_definition(&object) {
        Some((
            "agentguard's definitions are off limits",
            "agentguard's own definitions: that would change or delete every policy of the kind",
        ))
    } else if is_api_service(&object) {
        Some((
            "APIServices are off limits",
            "APIServices: an APIService decides which server answers for an API group, agentguard's policies and protected kinds included",
        ))
    } else {
        None
    };
    if let Some((reason, what)) = off_limits {
        return match snapshot.restricted_anywhere(username, groups) {
            Some(r) => Decision::deny(
                object.clone(),
                format!("{}; {reason}", r.reason),
                format!(
                    "agentguard: DENIED {} of {} {} by {username}. Restricted identities may not create, change or delete {what}. \
                     Stop and ask a human.",
                    verb(&req.operation),
                    object.kind,
                    object.qualified_name()
                ),
            ),
            None => Decision::allow(object, "identity is not restricted"),
        };
    }
    if is_deletion_request(&object) {
        return decide_request(req, snapshot, object, username, groups);
    }
    match req.operation {
        Operation::Create | Operation::Update => {
            decide_write(req, snapshot, objects, now, object, username, groups)
        }
        Operation::Delete => decide_delete(req, snapshot, objects, now, object, username, groups),
        Operation::Connect => Decision::allow(object, "operation is not guarded"),
    }
}

fn decide_write(
    req: &AdmissionRequest<DynamicObject>,
    snapshot: &Snapshot,
    objects: &dyn ProtectedObjects,
    now: Timestamp,
    object: ObjectRef,
    username: &str,
    groups: &[String],
) -> Decision {
    let (old, new) = (req.old_object.as_ref(), req.object.as_ref());
    let changed = changed_guard_keys(old, new);
    if let Some(proxied) = deletion_by_proxy(req, snapshot, objects, now, &object, username, groups)
        && (proxied.verdict == Verdict::Deny || changed.is_empty())
    {
        return proxied;
    }
    if let Some(lowered) =
        lowered_protection(req, snapshot, objects, now, &object, username, groups)
        && lowered.verdict == Verdict::Deny
    {
        return lowered;
    }
    if changed.is_empty() {
        return Decision::allow(object, "no agentguard.dev/* metadata changed");
    }
    if let Some(r) = snapshot.restricted_anywhere(username, groups) {
        let message = format!(
            "agentguard: DENIED {} of {} {} by {username}: restricted identities may not add, change or remove agentguard.dev/* annotations or labels ({}). \
             Do not try another way. Stop and ask a human.",
            verb(&req.operation),
            object.kind,
            object.qualified_name(),
            changed.join(", ")
        );
        return Decision::deny(
            object,
            format!("{}; touched {}", r.reason, changed.join(", ")),
            message,
        );
    }
    let approval_changed = changed.iter().any(|c| {
        c.ends_with(APPROVED_BY_ANNOTATION)
            || c.ends_with(APPROVED_UNTIL_ANNOTATION)
            || c.ends_with(APPROVED_BACKUP_LOSS_ANNOTATION)
    });
    let Some(new_obj) = new else {
        return Decision::allow(object, "identity is not restricted");
    };
    let approval = Approval::of(annotations(Some(new_obj)));
    match (approval_changed, approval) {
        (true, Some(approval)) => {
            let d = judge_new_approval(req, snapshot, objects, now, object, &approval);
            if d.verdict != Verdict::Allow {
                return d;
            }
            // The sealing webhook ran before this one; an accepted approval it did not seal
            // (written through a subresource, or while no key was loaded) would count for
            // nothing, so the human hears it now rather than at the agent's deletion.
            let uid = new_obj.metadata.uid.as_deref().unwrap_or_default();
            let input = approval.seal_input(&d.object, uid, annotations(Some(new_obj)));
            match snapshot.keys().verify(&input, approval.seal.as_deref()) {
                Ok(()) => d,
                Err(problem) => {
                    let message = format!(
                        "agentguard: approval of {} {} not sealed: {problem}. Set approvals with \
                         `kubectl agentguard approve` (or annotate the object itself, not a subresource) \
                         while agentguard is running.",
                        d.object.kind,
                        d.object.qualified_name()
                    );
                    let mut denied = Decision::deny(
                        d.object,
                        format!("approval rejected: not sealed: {problem}"),
                        message,
                    );
                    denied.approval = Some(ApprovalEvent::Rejected);
                    denied
                }
            }
        }
        _ => Decision::allow(object, "identity is not restricted"),
    }
}

/// What a write takes away from an object's protection: the policies it leaves (a label a
/// selector reads), owners it gains (the garbage collector deletes an object whose owners are
/// all gone, and an owner that never existed is gone already), finalizers it loses. Empty when
/// the write leaves the object at least as protected as before.
pub(crate) fn lowerings(
    snapshot: &Snapshot,
    object: &ObjectRef,
    old: &DynamicObject,
    new: &DynamicObject,
) -> Vec<String> {
    let mut lowered = Vec::new();
    let after: Vec<String> = protections(snapshot, object, new)
        .iter()
        .map(|p| p.label())
        .collect();
    for p in protections(snapshot, object, old) {
        if !after.contains(&p.label()) {
            lowered.push(format!("leaves the protection of {}", p.describe()));
        }
    }
    let old_owners: Vec<&str> = old
        .metadata
        .owner_references
        .iter()
        .flatten()
        .map(|o| o.uid.as_str())
        .collect();
    for owner in new.metadata.owner_references.iter().flatten() {
        if !old_owners.contains(&owner.uid.as_str()) {
            lowered.push(format!(
                "adds owner {} {} (uid {})",
                owner.kind, owner.name, owner.uid
            ));
        }
    }
    // A kind's definition is part of its instances' protection: the schema decides what the
    // API server keeps and serves of each (fields it no longer lists are pruned, on read too),
    // and a conversion webhook rewrites them. Any change to it counts.
    if object.group == "apiextensions.k8s.io"
        && object.kind == "CustomResourceDefinition"
        && old.data.get("spec") != new.data.get("spec")
    {
        lowered.push("changes the definition (spec) of a kind with protected instances".to_owned());
    }
    let kept = new.metadata.finalizers.as_deref().unwrap_or_default();
    for finalizer in old.metadata.finalizers.iter().flatten() {
        if !kept.contains(finalizer) {
            lowered.push(format!("removes finalizer {finalizer}"));
        }
    }
    lowered
}

/// Invariant 2: a write (any verb, any subresource) that leaves a protected object, or a root
/// whose deletion would take protected data, less protected than before is judged like a
/// deletion of it: a restricted identity needs a sealed approval.
fn lowered_protection(
    req: &AdmissionRequest<DynamicObject>,
    snapshot: &Snapshot,
    objects: &dyn ProtectedObjects,
    now: Timestamp,
    object: &ObjectRef,
    username: &str,
    groups: &[String],
) -> Option<Decision> {
    let (Some(old), Some(new)) = (req.old_object.as_ref(), req.object.as_ref()) else {
        return None;
    };
    let lowered = lowerings(snapshot, object, old, new);
    if lowered.is_empty() {
        return None;
    }
    let mut found = protections(snapshot, object, old);
    let mut through = String::new();
    if let Some((hit, how)) = cascade_of_object(
        &object.group,
        &object.kind,
        &object.name,
        old,
        false,
        objects,
    ) {
        through = cascade_note(&hit, how);
        inherit(&mut found, &hit, snapshot);
    }
    let action = format!("update ({})", lowered.join(", "));
    let mut decision = judge(Judged {
        snapshot,
        now,
        object: object.clone(),
        username,
        groups,
        found,
        through,
        approval_on: old,
        action: &action,
    });
    decision.reason = format!(
        "{} (lowers protection: {})",
        decision.reason,
        lowered.join(", ")
    );
    Some(decision)
}

fn cascade_note(hit: &CascadeHit, how: &str) -> String {
    format!(
        ", through {hit_object}: {how} it{more}",
        hit_object = hit.object,
        more = if hit.count > 1 {
            format!(" and {} more protected objects", hit.count - 1)
        } else {
            String::new()
        }
    )
}

/// A human sets an approval: it must name themselves, end in the future, fit every protecting
/// policy's maxTTL, and come from an allowed approver of everything the object protects,
/// directly or through what its deletion would take with it (a namespace's claims, a CRD's
/// instances, an owner's dependents).
fn judge_new_approval(
    req: &AdmissionRequest<DynamicObject>,
    snapshot: &Snapshot,
    objects: &dyn ProtectedObjects,
    now: Timestamp,
    object: ObjectRef,
    approval: &Approval,
) -> Decision {
    let username = req.user_info.username.as_deref().unwrap_or_default();
    let groups = req.user_info.groups.as_deref().unwrap_or_default();
    let Some(obj) = req.object.as_ref() else {
        return Decision::allow(object, "no object");
    };
    let mut found = protections(snapshot, &object, obj);
    if let Some((hit, _)) = cascade_of_object(
        &object.group,
        &object.kind,
        &object.name,
        obj,
        false,
        objects,
    ) {
        inherit(&mut found, &hit, snapshot);
    }
    let mut problems = Vec::new();
    if matches!(req.operation, Operation::Create) {
        problems.push(
            "an approval is sealed to an object that exists: create the object first, then approve it"
                .to_owned(),
        );
    }
    if approval.by != username {
        problems.push(format!(
            "{APPROVED_BY_ANNOTATION} must be your own username {username:?}, not {:?}",
            approval.by
        ));
    }
    match approval.until {
        None => problems.push(format!(
            "{APPROVED_UNTIL_ANNOTATION} {:?} is not an RFC 3339 time like 2030-01-01T12:00:00Z",
            approval.until_text
        )),
        Some(until) if until <= now => problems.push(format!(
            "{APPROVED_UNTIL_ANNOTATION} {until} is not in the future"
        )),
        Some(until) => {
            let cap = found
                .iter()
                .map(|p| p.max_ttl())
                .min()
                .unwrap_or(DEFAULT_APPROVAL_TTL);
            if exceeds(until, now, cap) {
                problems.push(format!(
                    "{APPROVED_UNTIL_ANNOTATION} {until} is more than {} from now (maxTTL)",
                    human(cap)
                ));
            }
        }
    }
    if found.is_empty() && username.starts_with(SERVICE_ACCOUNT_PREFIX) {
        problems.push(format!(
            "{username} is a ServiceAccount; an approval is a person's act unless a policy names the ServiceAccount as an approver"
        ));
    }
    for p in &found {
        if !p.allows_approver(username, Some(groups)) {
            problems.push(if username.starts_with(SERVICE_ACCOUNT_PREFIX) {
                format!(
                    "{username} is a ServiceAccount and {} does not name it as an approver",
                    p.describe()
                )
            } else {
                format!("{username} is not an approver of {}", p.describe())
            });
        }
    }
    if problems.is_empty() {
        let mut d = Decision::allow(object, format!("approval by {username} accepted"));
        d.approval = Some(ApprovalEvent::Accepted);
        d.policy = found.first().map(|p| p.label());
        return d;
    }
    let message = format!(
        "agentguard: approval of {} {} rejected: {}.",
        object.kind,
        object.qualified_name(),
        problems.join("; ")
    );
    let mut d = Decision::deny(
        object,
        format!("approval rejected: {}", problems.join("; ")),
        message,
    );
    d.approval = Some(ApprovalEvent::Rejected);
    d
}

/// The JSON patch agentguard's sealing (mutating) webhook returns for a write: add the seal
/// when it accepts the approval the write leaves on the object, remove a seal that no longer
/// verifies, nothing otherwise. It never refuses; the validating webhook, which runs after it,
/// decides. A restricted identity's approval is never sealed.
pub fn seal_patch(
    req: &AdmissionRequest<DynamicObject>,
    snapshot: &Snapshot,
    objects: &dyn ProtectedObjects,
    now: Timestamp,
) -> Option<json_patch::Patch> {
    use json_patch::jsonptr::PointerBuf;
    use json_patch::{AddOperation, PatchOperation, RemoveOperation};
    if !matches!(req.operation, Operation::Create | Operation::Update) {
        return None;
    }
    let new = req.object.as_ref()?;
    let annotations = annotations(Some(new));
    let path = PointerBuf::from_tokens(["metadata", "annotations", APPROVAL_SEAL_ANNOTATION]);
    let remove = || {
        annotations.contains_key(APPROVAL_SEAL_ANNOTATION).then(|| {
            json_patch::Patch(vec![PatchOperation::Remove(RemoveOperation {
                path: path.clone(),
            })])
        })
    };
    let Some(approval) = Approval::of(annotations) else {
        return remove();
    };
    let object = ObjectRef::of(req);
    let uid = new.metadata.uid.as_deref().unwrap_or_default();
    let input = approval.seal_input(&object, uid, annotations);
    if snapshot
        .keys()
        .verify(&input, approval.seal.as_deref())
        .is_ok()
    {
        return None;
    }
    let username = req.user_info.username.as_deref().unwrap_or_default();
    let groups = req.user_info.groups.as_deref().unwrap_or_default();
    let accepted = matches!(req.operation, Operation::Update)
        && snapshot.restricted_anywhere(username, groups).is_none()
        && judge_new_approval(req, snapshot, objects, now, object.clone(), &approval).verdict
            == Verdict::Allow;
    match (accepted, snapshot.keys().seal(&input)) {
        (true, Some(seal)) => Some(json_patch::Patch(vec![PatchOperation::Add(AddOperation {
            path,
            value: serde_json::Value::String(seal),
        })])),
        _ => remove(),
    }
}

fn decide_delete(
    req: &AdmissionRequest<DynamicObject>,
    snapshot: &Snapshot,
    objects: &dyn ProtectedObjects,
    now: Timestamp,
    object: ObjectRef,
    username: &str,
    groups: &[String],
) -> Decision {
    let Some(old) = req.old_object.as_ref() else {
        // Without the object we cannot tell whether it is protected: fail closed for agents.
        return match snapshot.restricted_anywhere(username, groups) {
            Some(r) => {
                let message = format!(
                    "agentguard: DENIED delete of {} {} by {username}: the API server sent no oldObject, \
                     so agentguard cannot tell whether it is protected. Ask a human to perform this deletion.",
                    object.kind,
                    object.qualified_name()
                );
                Decision::deny(
                    object,
                    format!("{}; object not visible in review", r.reason),
                    message,
                )
            }
            None => Decision::allow(object, "identity is not restricted"),
        };
    };
    let mut found = protections(snapshot, &object, old);
    let mut through = String::new();
    if let Some((hit, how)) = cascade_of(req, old, objects) {
        // Judge the root as the protected data it would take with it.
        through = cascade_note(&hit, how);
        inherit(&mut found, &hit, snapshot);
    } else if let Some(blind) = objects.blind(&object.group, &object.kind)
        && found.is_empty()
        && let Some(r) = snapshot.restricted_anywhere(username, groups)
    {
        // An owner of protected data whose kind agentguard may not watch: what its deletion
        // takes along cannot be seen, so it is refused.
        let message = format!(
            "agentguard: DENIED delete of {} {} by {username}: {blind}, so agentguard cannot tell whether this \
             deletion would take protected data with it. Do not try another way. Stop and ask a human.",
            object.kind,
            object.qualified_name()
        );
        return Decision::deny(object, format!("{}; {blind}", r.reason), message);
    } else if let Some(loading) = objects.loading()
        && found.is_empty()
        && let Some(r) = snapshot.restricted_anywhere(username, groups)
    {
        // Invariant 5: the index cannot yet say what this deletion would take with it.
        let message = format!(
            "agentguard: DENIED delete of {} {} by {username}: agentguard is still loading the objects of {loading}, \
             so it cannot tell whether this deletion would take protected data with it. Retry in a few seconds; \
             if it is refused again, stop and ask a human.",
            object.kind,
            object.qualified_name()
        );
        return Decision::deny(
            object,
            format!("{}; index still loading {loading}", r.reason),
            message,
        );
    }
    judge(Judged {
        snapshot,
        now,
        object,
        username,
        groups,
        found,
        through,
        approval_on: old,
        action: "delete",
    })
}

/// Adds the protections of the data a request would reach through `hit` (a cascade, a volume's
/// claim), once each.
fn inherit<'s>(found: &mut Vec<Protection<'s>>, hit: &CascadeHit, snapshot: &'s Snapshot) {
    let inherited = hit
        .policies
        .iter()
        .filter_map(|id| snapshot.policy(id))
        .map(Protection::Policy)
        .chain(hit.annotation.then_some(Protection::Annotation));
    for p in inherited {
        if !found.iter().any(|f| f.label() == p.label()) {
            found.push(p);
        }
    }
}

/// A destructive request and what protects its target, ready to be judged.
struct Judged<'s, 'r> {
    snapshot: &'s Snapshot,
    now: Timestamp,
    object: ObjectRef,
    username: &'r str,
    groups: &'r [String],
    found: Vec<Protection<'s>>,
    /// How a cascade root reaches protected data (empty for the data itself).
    through: String,
    /// The object whose approval annotations count.
    approval_on: &'r DynamicObject,
    /// `delete`, or an update that destroys data by other means.
    action: &'r str,
}

/// The common judgement of a destructive request: exemptions, restriction per protection,
/// approval, then the strictest mode among what is left.
fn judge(j: Judged<'_, '_>) -> Decision {
    let Judged {
        snapshot,
        now,
        object,
        username,
        groups,
        found,
        through,
        approval_on,
        action,
    } = j;
    if found.is_empty() {
        return Decision::allow(object, "object is not protected");
    }
    if let Some(exemption) = snapshot.agents.exemption(username, groups) {
        let mut d = Decision::allow(object, format!("{exemption}: never restricted"));
        d.exemption = Some(exemption);
        d.policy = found.first().map(|p| p.label());
        return d;
    }
    let restricted: Vec<_> = found
        .iter()
        .filter_map(|&p| {
            let policy = match p {
                Protection::Policy(policy) => Some(policy),
                Protection::Annotation => None,
            };
            snapshot
                .restriction(username, groups, policy)
                .map(|r| (p, r))
        })
        .collect();
    if restricted.is_empty() {
        let mut d = Decision::allow(object, "identity is not restricted");
        d.policy = found.first().map(|p| p.label());
        return d;
    }
    let approval = Approval::of(annotations(Some(approval_on)));
    let unapproved: Vec<_> = restricted
        .iter()
        .filter_map(|(p, r)| {
            let problem = match &approval {
                None => Some(None),
                Some(a) => a.problem(*p, snapshot, now, &object, approval_on).map(Some),
            };
            problem.map(|problem| (*p, r, problem))
        })
        .collect();
    let Some(&(strongest, restriction, ref problem)) =
        unapproved.iter().max_by_key(|(p, _, _)| p.mode())
    else {
        let approval = approval.expect("every protection approved implies an approval");
        // The object deleted is the one whose settings count, cascade root or not.
        if action == "delete"
            && let Some(denied) =
                unaccepted_backup_loss(&object, approval_on, &approval, &restricted, username)
        {
            return denied;
        }
        let mut d = Decision::allow(
            object,
            format!("approved by {} until {}", approval.by, approval.until_text),
        );
        d.approval = Some(ApprovalEvent::Used);
        d.policy = restricted.first().map(|(p, _)| p.label());
        return d;
    };
    let approval_note = match problem {
        Some(ApprovalProblem::Expired(why)) | Some(ApprovalProblem::Invalid(why)) => {
            format!(" The approval on it does not count: {why}.")
        }
        None => String::new(),
    };
    let protected_by = format!("{}{through}", strongest.describe());
    let reason = format!(
        "{}; protected by {}; {}",
        restriction.reason,
        protected_by,
        match problem {
            None => "no approval".to_owned(),
            Some(ApprovalProblem::Expired(w)) | Some(ApprovalProblem::Invalid(w)) => w.clone(),
        }
    );
    let event =
        matches!(problem, Some(ApprovalProblem::Expired(_))).then_some(ApprovalEvent::Expired);
    let mut d = match strongest.mode() {
        Mode::Enforce => {
            let extra = match strongest {
                Protection::Policy(p) => p.message.as_deref(),
                Protection::Annotation => None,
            };
            Decision::deny(
                object.clone(),
                reason,
                denial_message(
                    &object,
                    action,
                    username,
                    &protected_by,
                    extra,
                    &approval_note,
                ),
            )
        }
        Mode::Warn => {
            let mut d = Decision::new(Verdict::Warn, object.clone(), reason);
            d.warning = Some(format!(
                "agentguard: {action} of {} {} by {username} is protected by {} (mode Warn; Enforce would deny it). Ask a human first: {}",
                object.kind,
                object.qualified_name(),
                protected_by,
                object.approve_command()
            ));
            d
        }
        Mode::Audit => Decision::new(Verdict::Audit, object.clone(), reason),
    };
    d.policy = Some(strongest.label());
    if let Protection::Policy(p) = strongest {
        d.decided_by = Some(p.id.clone());
    }
    d.approval = event;
    d
}

/// An approved deletion of a catalog kind that, as the object stands, would also destroy its
/// backups or skip its final snapshot is refused (in Enforce mode) unless the approval lists
/// each such switch: the approver must have seen it and said so (`approve --destroy-backups`).
fn unaccepted_backup_loss(
    object: &ObjectRef,
    on: &DynamicObject,
    approval: &Approval,
    restricted: &[(Protection<'_>, Restriction)],
    username: &str,
) -> Option<Decision> {
    let entry = crate::catalog::catalog().kind(&object.group, &object.kind)?;
    let unaccepted: Vec<String> = entry
        .backup_losses(&on.metadata, &on.data)
        .into_iter()
        .filter(|(s, _)| !approval.accepts_backup_loss(&s.key()))
        .map(|(s, value)| match value {
            Some(v) => format!("{}={v}", s.key()),
            None => format!("{} absent (default {})", s.key(), default_text(s)),
        })
        .collect();
    if unaccepted.is_empty() {
        return None;
    }
    let (strongest, restriction) = restricted.iter().max_by_key(|(p, _)| p.mode())?;
    if strongest.mode() != Mode::Enforce {
        return None;
    }
    let losses = unaccepted.join(", ");
    let message = format!(
        "agentguard: DENIED delete of {} {} by {username}. The approval by {} does not cover what this deletion \
         also destroys: its backups or its final snapshot ({losses}). Do not retry, and do not try another way. \
         Stop and ask a human to approve the loss of backups too: {} --destroy-backups",
        object.kind,
        object.qualified_name(),
        approval.by,
        object.approve_command()
    );
    let mut d = Decision::deny(
        object.clone(),
        format!(
            "{}; approved, but the approval does not accept the loss of backups ({losses})",
            restriction.reason
        ),
        message,
    );
    d.policy = Some(strongest.label());
    if let Protection::Policy(p) = strongest {
        d.decided_by = Some(p.id.clone());
    }
    Some(d)
}

/// A switch's default when absent, as the catalog writes it.
fn default_text(switch: &crate::catalog::Switch) -> String {
    match &switch.default {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => "none".to_owned(),
    }
}

/// A write after which another component deletes protected data (a row of
/// [`super::proxy::RULES`], or a switch of the data-holding catalog turned dangerous), judged
/// like a deletion of the data it reaches. The approval that
/// counts is the one already stored on the object: one written in the same request has not
/// been checked, and a new object (a Velero DeleteBackupRequest) carries none.
fn deletion_by_proxy(
    req: &AdmissionRequest<DynamicObject>,
    snapshot: &Snapshot,
    objects: &dyn ProtectedObjects,
    now: Timestamp,
    object: &ObjectRef,
    username: &str,
    groups: &[String],
) -> Option<Decision> {
    let new = req.object.as_ref()?;
    let old = req.old_object.as_ref();
    let creating = matches!(req.operation, Operation::Create);
    let target = super::proxy::Target {
        creating,
        group: &object.group,
        kind: &object.kind,
        resource_group: &req.resource.group,
        resource: &req.resource.resource,
        subresource: req.sub_resource.as_deref().unwrap_or_default(),
    };
    let mut first = None;
    let rules = super::proxy::matching_all(&target, old, new)
        .map(|(rule, reach)| (rule.id.to_owned(), rule.action.to_owned(), reach));
    // The catalog's switches: a database's own protection turned off, or its deletion made to
    // take its backups or final snapshot too, is judged like deleting it.
    let switches = super::proxy::catalog_switches_turned(&target, old, new)
        .into_iter()
        .map(|turned| {
            let value = turned.value.as_deref().unwrap_or("removed");
            let action = format!("update ({}: {value})", turned.switch.name());
            ("catalog-switch".to_owned(), action, Reach::Itself)
        });
    for (id, action, reach) in rules.chain(switches) {
        let decision = judge_proxy(
            req, snapshot, objects, now, object, username, groups, &id, &action, &reach,
        );
        match decision {
            Some(d) if d.verdict == Verdict::Deny => return Some(d),
            Some(d) if first.is_none() => first = Some(d),
            _ => {}
        }
    }
    first
}

/// One deletion-by-proxy rule's judgement of a request, None when it reaches nothing protected.
#[allow(clippy::too_many_arguments)]
fn judge_proxy(
    req: &AdmissionRequest<DynamicObject>,
    snapshot: &Snapshot,
    objects: &dyn ProtectedObjects,
    now: Timestamp,
    object: &ObjectRef,
    username: &str,
    groups: &[String],
    id: &str,
    rule_action: &str,
    reach: &Reach,
) -> Option<Decision> {
    let new = req.object.as_ref()?;
    let old = req.old_object.as_ref();
    let creating = matches!(req.operation, Operation::Create);
    let current = old.unwrap_or(new);
    let mut found = match reach {
        // The request's own object is new, or another kind's stand-in (a Scale, a scaler, a
        // second handle): only what it reaches counts.
        Reach::Other { .. }
        | Reach::StatefulSetOrdinals { .. }
        | Reach::Storage(_)
        | Reach::External { .. } => Vec::new(),
        _ => protections(snapshot, object, current),
    };
    let hit = match reach {
        Reach::Itself => None,
        Reach::BoundClaim { namespace, name } => objects.claim(namespace, name),
        Reach::StatefulSetClaims => {
            let name = new.metadata.name.as_deref().unwrap_or_default();
            let namespace = new.metadata.namespace.as_deref().unwrap_or_default();
            objects.claims_with_prefix(namespace, &super::cascade::claim_prefixes(new, name))
        }
        Reach::Also {
            group,
            kind,
            namespace,
            name,
        }
        | Reach::Other {
            group,
            kind,
            namespace,
            name,
        } => objects.object(group, kind, namespace.as_deref(), name),
        Reach::StatefulSetOrdinals {
            namespace,
            statefulset,
            from,
        } => objects.statefulset_claims(namespace, statefulset, *from),
        Reach::Managed(manager) => objects.managed_by(manager),
        Reach::Storage(identity) => objects.storage(identity),
        Reach::External {
            group,
            kind,
            external,
            uid,
        } => objects.external(group, kind, external, uid),
    };
    let mut through = String::new();
    if let Some(hit) = hit {
        if hit.object != format!("{} {}", object.kind, object.qualified_name()) {
            through = format!(", through {}", hit.object);
        }
        inherit(&mut found, &hit, snapshot);
    }
    if found.is_empty() {
        return None;
    }
    let unapproved = DynamicObject {
        types: None,
        metadata: Default::default(),
        data: serde_json::Value::Null,
    };
    // The same change made when the object is created sets up the same deletion: the verb
    // says which it was.
    let action = match rule_action.split_once(" (") {
        Some(("update" | "write", rest)) => {
            format!("{} ({rest}", if creating { "create" } else { "update" })
        }
        _ => rule_action.to_owned(),
    };
    let mut decision = judge(Judged {
        snapshot,
        now,
        object: object.clone(),
        username,
        groups,
        found,
        through,
        approval_on: if creating { &unapproved } else { current },
        action: &action,
    });
    decision.reason = format!("{} (by proxy: {id})", decision.reason);
    Some(decision)
}

/// The denial text an agent reads. Its shape is part of the contract (DESIGN.md): it says what
/// was refused, why, that the agent must not look for another route, and how a human approves.
fn denial_message(
    object: &ObjectRef,
    action: &str,
    username: &str,
    protected_by: &str,
    extra: Option<&str>,
    approval_note: &str,
) -> String {
    let extra = extra.map(|m| format!("\n{}", m.trim())).unwrap_or_default();
    format!(
        "agentguard: DENIED {action} of {kind} {qualified} by {username}.\n\
         Protected by {protected_by}. This may hold production data.{approval_note}\n\
         Do not retry, and do not try another way to delete, move, or unprotect it.\n\
         Stop and ask a human to approve: {command}\n\
         To ask in writing: {request}{extra}",
        kind = object.kind,
        qualified = object.qualified_name(),
        command = object.approve_command(),
        request = object.request_command(),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::api::{ApprovalSpec, Approvers, ProtectionSpec, Subjects, Target};
    use crate::policy::{AgentDefinition, AgentMatcher, CascadeHit, ProtectedObjects, compile};
    use kube::core::admission::AdmissionReview;
    use serde_json::{Value, json};

    pub const AGENT: &str = "system:serviceaccount:ci:cursor-agent";
    pub const NOW: i64 = 1_800_000_000;

    pub fn now() -> Timestamp {
        Timestamp::from_second(NOW).unwrap()
    }

    pub fn at(offset_secs: i64) -> String {
        Timestamp::from_second(NOW + offset_secs)
            .unwrap()
            .to_string()
    }

    pub fn spec(mode: Mode, kind: &str) -> ProtectionSpec {
        ProtectionSpec::new(mode, vec![Target::kinds(&[""], &[kind])])
    }

    pub fn snapshot(policies: Vec<(PolicyRef, ProtectionSpec)>, labelled: &[&str]) -> Snapshot {
        let agents = AgentMatcher::new(&AgentDefinition {
            service_accounts: vec!["ci/*".into()],
            groups: vec!["ai-agents".into()],
            usernames: vec!["bot-*".into()],
            break_glass_groups: vec!["sre-break-glass".into()],
        })
        .unwrap();
        let compiled = policies
            .into_iter()
            .map(|(id, s)| compile(id, &s).unwrap())
            .collect();
        Snapshot::new(
            agents,
            labelled.iter().map(|s| s.to_string()).collect(),
            compiled,
        )
        .with_keys(crate::policy::seal::tests::keyring())
    }

    /// The seal agentguard's test key gives an approval on the claim `pvc(..)` builds.
    pub fn seal_of(by: &str, until: &str) -> String {
        seal_for("", "PersistentVolumeClaim", "uid-data", by, until)
    }

    /// The seal agentguard's test key gives an approval on any object.
    pub fn seal_for(group: &str, kind: &str, uid: &str, by: &str, until: &str) -> String {
        seal_with_loss(group, kind, uid, by, until, "")
    }

    pub fn seal_with_loss(
        group: &str,
        kind: &str,
        uid: &str,
        by: &str,
        until: &str,
        backup_loss: &str,
    ) -> String {
        crate::policy::seal::tests::keyring()
            .seal(&SealInput {
                group,
                kind,
                uid,
                approved_by: by,
                approved_until: until,
                backup_loss,
            })
            .unwrap()
    }

    pub struct Req {
        pub options: Value,
        pub op: &'static str,
        pub user: String,
        pub groups: Vec<String>,
        pub kind: (&'static str, &'static str, &'static str),
        pub name: String,
        pub old: Value,
        pub new: Value,
    }

    impl Req {
        pub fn delete(user: &str, old: Value) -> Self {
            Self {
                options: Value::Null,
                op: "DELETE",
                user: user.into(),
                groups: vec!["system:authenticated".into()],
                kind: ("", "PersistentVolumeClaim", "persistentvolumeclaims"),
                name: "data".into(),
                old,
                new: Value::Null,
            }
        }

        pub fn update(user: &str, old: Value, new: Value) -> Self {
            Self {
                op: "UPDATE",
                new,
                ..Self::delete(user, old)
            }
        }

        pub fn groups(mut self, groups: &[&str]) -> Self {
            self.groups = groups.iter().map(|s| s.to_string()).collect();
            self
        }

        pub fn build(&self) -> AdmissionRequest<DynamicObject> {
            let (group, kind, resource) = self.kind;
            let review: AdmissionReview<DynamicObject> = serde_json::from_value(json!({
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "request": {
                    "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                    "kind": {"group": group, "version": "v1", "kind": kind},
                    "resource": {"group": group, "version": "v1", "resource": resource},
                    "name": self.name,
                    "namespace": "prod",
                    "operation": self.op,
                    "userInfo": {"username": self.user, "groups": self.groups},
                    "object": self.new,
                    "oldObject": self.old,
                    "dryRun": false,
                    "options": self.options
                }
            }))
            .unwrap();
            review.try_into().unwrap()
        }

        pub fn decide(&self, snapshot: &Snapshot) -> Decision {
            decide(&self.build(), snapshot, &(), now())
        }

        /// What the API server does: the sealing (mutating) webhook's patch applied to the
        /// object first, then the validating decision on the patched request.
        pub fn admit(&self, snapshot: &Snapshot) -> Decision {
            let mut sealed = self.build();
            if let Some(patch) = seal_patch(&sealed, snapshot, &(), now()) {
                let mut object = serde_json::to_value(sealed.object.as_ref().unwrap()).unwrap();
                json_patch::patch(&mut object, &patch).unwrap();
                sealed.object = Some(serde_json::from_value(object).unwrap());
            }
            decide(&sealed, snapshot, &(), now())
        }
    }

    pub fn pvc(annotations: Value) -> Value {
        json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data", "namespace": "prod", "uid": "uid-data", "annotations": annotations, "labels": {"app": "orders-db"}},
            "spec": {}
        })
    }

    fn protected() -> Value {
        pvc(json!({"agentguard.dev/protected": "true"}))
    }

    /// A claim with an approval agentguard sealed.
    fn approved(by: &str, until: &str) -> Value {
        pvc(json!({
            "agentguard.dev/protected": "true",
            "agentguard.dev/approved-by": by,
            "agentguard.dev/approved-until": until,
            "agentguard.dev/approval-seal": seal_of(by, until),
        }))
    }

    /// A claim with approval annotations agentguard never sealed.
    fn unsealed(by: &str, until: &str) -> Value {
        pvc(json!({
            "agentguard.dev/protected": "true",
            "agentguard.dev/approved-by": by,
            "agentguard.dev/approved-until": until,
        }))
    }

    #[test]
    fn annotation_protection_table() {
        let snap = snapshot(vec![], &["prod/labelled"]);
        let cases: Vec<(&str, Req, Verdict)> = vec![
            (
                "agent, protected",
                Req::delete(AGENT, protected()),
                Verdict::Deny,
            ),
            (
                "agent, value True",
                Req::delete(AGENT, pvc(json!({"agentguard.dev/protected": "True "}))),
                Verdict::Deny,
            ),
            (
                "agent, protected=false",
                Req::delete(AGENT, pvc(json!({"agentguard.dev/protected": "false"}))),
                Verdict::Allow,
            ),
            (
                "agent, unprotected",
                Req::delete(AGENT, pvc(json!({}))),
                Verdict::Allow,
            ),
            (
                "agent, no oldObject",
                Req::delete(AGENT, Value::Null),
                Verdict::Deny,
            ),
            (
                "agent by username glob",
                Req::delete("bot-renovate", protected()),
                Verdict::Deny,
            ),
            (
                "agent by group",
                Req::delete("carol", protected()).groups(&["ai-agents"]),
                Verdict::Deny,
            ),
            (
                "labelled service account",
                Req::delete("system:serviceaccount:prod:labelled", protected()),
                Verdict::Deny,
            ),
            ("human", Req::delete("alice", protected()), Verdict::Allow),
            (
                "human, no oldObject",
                Req::delete("alice", Value::Null),
                Verdict::Allow,
            ),
            (
                "break glass",
                Req::delete(AGENT, protected()).groups(&["sre-break-glass"]),
                Verdict::Allow,
            ),
            (
                "namespace controller",
                Req::delete(
                    "system:serviceaccount:kube-system:namespace-controller",
                    protected(),
                ),
                Verdict::Allow,
            ),
            (
                "kube-controller-manager",
                Req::delete("system:kube-controller-manager", protected()),
                Verdict::Allow,
            ),
            (
                "valid approval",
                Req::delete(AGENT, approved("alice", &at(1800))),
                Verdict::Allow,
            ),
            (
                "expired approval",
                Req::delete(AGENT, approved("alice", &at(-1))),
                Verdict::Deny,
            ),
            (
                "approval over default 1h",
                Req::delete(AGENT, approved("alice", &at(3601))),
                Verdict::Deny,
            ),
            (
                "approval by an agent",
                Req::delete(AGENT, approved("bot-x", &at(60))),
                Verdict::Deny,
            ),
            (
                "approval by an agent SA",
                Req::delete(AGENT, approved(AGENT, &at(60))),
                Verdict::Deny,
            ),
            (
                "approval, bad time",
                Req::delete(AGENT, approved("alice", "tomorrow")),
                Verdict::Deny,
            ),
            (
                "approval, empty approver",
                Req::delete(AGENT, approved("", &at(60))),
                Verdict::Deny,
            ),
        ];
        for (what, req, verdict) in cases {
            let d = req.decide(&snap);
            assert_eq!(d.verdict, verdict, "{what}: {}", d.reason);
            assert_eq!(d.message.is_some(), verdict == Verdict::Deny, "{what}");
        }
    }

    #[test]
    fn approvals_are_counted_by_outcome() {
        let snap = snapshot(vec![], &[]);
        assert_eq!(
            Req::delete(AGENT, approved("alice", &at(60)))
                .decide(&snap)
                .approval,
            Some(ApprovalEvent::Used)
        );
        assert_eq!(
            Req::delete(AGENT, approved("alice", &at(-60)))
                .decide(&snap)
                .approval,
            Some(ApprovalEvent::Expired)
        );
        let d = Req::delete(AGENT, approved("alice", &at(-60))).decide(&snap);
        assert!(
            d.message
                .unwrap()
                .contains("The approval on it does not count: the approval by alice expired at")
        );
        assert_eq!(Req::delete(AGENT, protected()).decide(&snap).approval, None);
    }

    #[test]
    fn denial_message_has_the_contract_shape() {
        let snap = snapshot(
            vec![(
                PolicyRef::cluster("default-volumes"),
                spec(Mode::Enforce, "PersistentVolumeClaim"),
            )],
            &[],
        );
        let d = Req::delete(AGENT, pvc(json!({}))).decide(&snap);
        assert_eq!(
            d.message.unwrap(),
            "agentguard: DENIED delete of PersistentVolumeClaim prod/data by system:serviceaccount:ci:cursor-agent.\n\
             Protected by ClusterProtectedResource default-volumes. This may hold production data.\n\
             Do not retry, and do not try another way to delete, move, or unprotect it.\n\
             Stop and ask a human to approve: kubectl agentguard approve persistentvolumeclaim/data -n prod --for 30m\n\
             To ask in writing: kubectl agentguard request persistentvolumeclaim/data -n prod --reason \"<why you need it deleted>\""
        );
        assert_eq!(
            d.policy.as_deref(),
            Some("ClusterProtectedResource/default-volumes")
        );
        assert_eq!(d.object.resource, "persistentvolumeclaims");
    }

    #[test]
    fn deletion_requests_are_filed_in_ones_own_name_and_answered_by_humans() {
        let snap = snapshot(vec![], &[]);
        let request = |requester: &str| {
            json!({
                "apiVersion": "agentguard.dev/v1alpha1", "kind": "DeletionRequest",
                "metadata": {"name": "req-1", "namespace": "prod"},
                "spec": {"target": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "name": "data"},
                         "reason": "rebuild", "requester": requester}
            })
        };
        let as_request = |mut r: Req| {
            r.kind = ("agentguard.dev", "DeletionRequest", "deletionrequests");
            r.name = "req-1".into();
            r
        };
        let file = |user: &str, requester: &str| {
            let mut r = as_request(Req::update(user, Value::Null, request(requester)));
            r.op = "CREATE";
            r.decide(&snap)
        };
        assert_eq!(file(AGENT, AGENT).verdict, Verdict::Allow);
        let forged = file(AGENT, "alice");
        assert_eq!(forged.verdict, Verdict::Deny);
        assert!(
            forged
                .message
                .unwrap()
                .contains("spec.requester must be your own username"),
        );
        // Nor may a human file one in an agent's name.
        assert_eq!(file("alice", AGENT).verdict, Verdict::Deny);
        // The agent cannot answer (update) it; a human can; the agent may withdraw it.
        let update = |user: &str| {
            as_request(Req::update(user, request(AGENT), request(AGENT))).decide(&snap)
        };
        assert_eq!(update(AGENT).verdict, Verdict::Deny);
        assert_eq!(update("alice").verdict, Verdict::Allow);
        assert_eq!(
            as_request(Req::delete(AGENT, request(AGENT)))
                .decide(&snap)
                .verdict,
            Verdict::Allow
        );
    }

    #[test]
    fn policy_message_is_appended() {
        let mut s = spec(Mode::Enforce, "PersistentVolumeClaim");
        s.message = Some("Ask #db-oncall.".into());
        let snap = snapshot(vec![(PolicyRef::namespaced("prod", "orders"), s)], &[]);
        let m = Req::delete(AGENT, pvc(json!({})))
            .decide(&snap)
            .message
            .unwrap();
        assert!(
            m.contains("Protected by ProtectedResource prod/orders."),
            "{m}"
        );
        assert!(
            m.ends_with("--reason \"<why you need it deleted>\"\nAsk #db-oncall."),
            "{m}"
        );
    }

    #[test]
    fn modes_warn_and_audit_allow_and_the_strictest_wins() {
        let warn = snapshot(
            vec![(
                PolicyRef::cluster("w"),
                spec(Mode::Warn, "PersistentVolumeClaim"),
            )],
            &[],
        );
        let d = Req::delete(AGENT, pvc(json!({}))).decide(&warn);
        assert_eq!(d.verdict, Verdict::Warn);
        assert!(
            d.warning
                .unwrap()
                .contains("protected by ClusterProtectedResource w (mode Warn")
        );
        let audit = snapshot(
            vec![(
                PolicyRef::cluster("a"),
                spec(Mode::Audit, "PersistentVolumeClaim"),
            )],
            &[],
        );
        assert_eq!(
            Req::delete(AGENT, pvc(json!({}))).decide(&audit).verdict,
            Verdict::Audit
        );
        let both = snapshot(
            vec![
                (
                    PolicyRef::cluster("a"),
                    spec(Mode::Audit, "PersistentVolumeClaim"),
                ),
                (
                    PolicyRef::cluster("w"),
                    spec(Mode::Warn, "PersistentVolumeClaim"),
                ),
            ],
            &[],
        );
        assert_eq!(
            Req::delete(AGENT, pvc(json!({}))).decide(&both).verdict,
            Verdict::Warn
        );
        // The annotation enforces even when a policy only audits.
        assert_eq!(
            Req::delete(AGENT, protected()).decide(&audit).verdict,
            Verdict::Deny
        );
        // Humans are not warned.
        assert_eq!(
            Req::delete("alice", pvc(json!({}))).decide(&warn).verdict,
            Verdict::Allow
        );
    }

    #[test]
    fn policy_subjects_replace_the_global_definition() {
        let mut s = spec(Mode::Enforce, "PersistentVolumeClaim");
        s.subjects = Some(Subjects {
            usernames: vec!["deploy-bot".into()],
            ..Default::default()
        });
        let snap = snapshot(vec![(PolicyRef::cluster("p"), s)], &[]);
        assert_eq!(
            Req::delete("deploy-bot", pvc(json!({})))
                .decide(&snap)
                .verdict,
            Verdict::Deny
        );
        assert_eq!(
            Req::delete(AGENT, pvc(json!({}))).decide(&snap).verdict,
            Verdict::Allow
        );
        // A policy-only subject is restricted anywhere when it comes to the guard itself.
        let upd = Req::update("deploy-bot", pvc(json!({})), protected());
        assert_eq!(upd.decide(&snap).verdict, Verdict::Deny);
    }

    #[test]
    fn named_approvers_and_max_ttl() {
        let mut s = spec(Mode::Enforce, "PersistentVolumeClaim");
        s.approval = Some(ApprovalSpec {
            max_ttl: Some("30m".into()),
            approvers: Some(Approvers {
                usernames: vec!["bob".into()],
                groups: vec![],
            }),
        });
        let snap = snapshot(vec![(PolicyRef::cluster("p"), s)], &[]);
        let del = |by: &str, secs| {
            Req::delete(AGENT, approved(by, &at(secs)))
                .decide(&snap)
                .verdict
        };
        assert_eq!(del("bob", 1800), Verdict::Allow);
        assert_eq!(del("bob", 1801), Verdict::Deny);
        assert_eq!(del("alice", 600), Verdict::Deny);
    }

    #[test]
    fn delete_collection_items_are_named_from_old_object() {
        let snap = snapshot(vec![], &[]);
        let mut req = Req::delete(AGENT, protected());
        req.name = String::new();
        let d = req.decide(&snap);
        assert_eq!(d.verdict, Verdict::Deny);
        assert_eq!(d.object.name, "data");
        assert_eq!(d.object.namespace.as_deref(), Some("prod"));
    }

    #[test]
    fn cluster_scoped_objects_have_no_namespace_flag() {
        let object = ObjectRef {
            kind: "PersistentVolume".into(),
            group: String::new(),
            resource: "persistentvolumes".into(),
            namespace: None,
            name: "pv-1".into(),
        };
        let m = denial_message(
            &object,
            "delete",
            AGENT,
            "annotation agentguard.dev/protected=true",
            None,
            "",
        );
        assert!(m.starts_with("agentguard: DENIED delete of PersistentVolume pv-1 by "));
        assert!(
            m.contains("approve persistentvolume/pv-1 --for 30m\n")
                && m.ends_with(
                    "request persistentvolume/pv-1 --reason \"<why you need it deleted>\""
                ),
            "{m}"
        );
    }

    #[test]
    fn agents_cannot_touch_guard_metadata() {
        let snap = snapshot(vec![], &[]);
        let sa = |labels: Value| json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "me", "namespace": "ci", "labels": labels}});
        let cases: Vec<(&str, Req, Verdict)> = vec![
            (
                "remove protected",
                Req::update(AGENT, protected(), pvc(json!({}))),
                Verdict::Deny,
            ),
            (
                "set protected=false",
                Req::update(
                    AGENT,
                    protected(),
                    pvc(json!({"agentguard.dev/protected": "false"})),
                ),
                Verdict::Deny,
            ),
            (
                "add protected",
                Req::update(AGENT, pvc(json!({})), protected()),
                Verdict::Deny,
            ),
            (
                "self-approve",
                Req::update(AGENT, protected(), approved(AGENT, &at(60))),
                Verdict::Deny,
            ),
            (
                "forge a human approval",
                Req::update(AGENT, protected(), approved("alice", &at(60))),
                Verdict::Deny,
            ),
            (
                "unrelated change",
                Req::update(
                    AGENT,
                    protected(),
                    pvc(json!({"agentguard.dev/protected": "true", "note": "x"})),
                ),
                Verdict::Allow,
            ),
            (
                "un-label itself",
                Req {
                    kind: ("", "ServiceAccount", "serviceaccounts"),
                    ..Req::update(
                        AGENT,
                        sa(json!({"agentguard.dev/agent": "true"})),
                        sa(json!({})),
                    )
                },
                Verdict::Deny,
            ),
            (
                "create with approval",
                Req {
                    op: "CREATE",
                    ..Req::update(AGENT, Value::Null, approved("alice", &at(60)))
                },
                Verdict::Deny,
            ),
            (
                "human adds protected",
                Req::update("alice", pvc(json!({})), protected()),
                Verdict::Allow,
            ),
        ];
        for (what, req, verdict) in cases {
            let d = req.decide(&snap);
            assert_eq!(d.verdict, verdict, "{what}: {}", d.reason);
        }
    }

    #[test]
    fn human_approval_rules() {
        let mut s = spec(Mode::Enforce, "PersistentVolumeClaim");
        s.approval = Some(ApprovalSpec {
            max_ttl: Some("2h".into()),
            approvers: Some(Approvers {
                usernames: vec![],
                groups: vec!["sre".into()],
            }),
        });
        let snap = snapshot(vec![(PolicyRef::cluster("p"), s)], &[]);
        // Protected by the policy alone (not the annotation, whose cap is 1h).
        let set = |user: &str, groups: &[&str], by: &str, until: &str| {
            let new = pvc(
                json!({"agentguard.dev/approved-by": by, "agentguard.dev/approved-until": until}),
            );
            Req::update(user, pvc(json!({})), new)
                .groups(groups)
                .admit(&snap)
        };
        let ok = set("alice", &["sre"], "alice", &at(3600));
        assert_eq!(
            (ok.verdict, ok.approval),
            (Verdict::Allow, Some(ApprovalEvent::Accepted))
        );
        let cases = [
            (
                set("alice", &["sre"], "bob", &at(3600)),
                "must be your own username",
            ),
            (
                set("alice", &["sre"], "alice", &at(-5)),
                "is not in the future",
            ),
            (
                set("alice", &["sre"], "alice", &at(2 * 3600 + 1)),
                "more than 2h from now",
            ),
            (
                set("alice", &["sre"], "alice", "soon"),
                "is not an RFC 3339 time",
            ),
            (
                set("alice", &["dev"], "alice", &at(60)),
                "alice is not an approver of ClusterProtectedResource p",
            ),
        ];
        for (d, needle) in cases {
            assert_eq!(d.verdict, Verdict::Deny);
            assert_eq!(d.approval, Some(ApprovalEvent::Rejected));
            assert!(
                d.message.as_deref().unwrap().contains(needle),
                "{needle}: {:?}",
                d.message
            );
        }
        // Revoking an approval is always allowed to humans.
        let revoke = Req::update("alice", approved("alice", &at(60)), protected()).decide(&snap);
        assert_eq!(revoke.verdict, Verdict::Allow);
        // On an object protected only by its annotation the default 1h cap applies.
        let plain = snapshot(vec![], &[]);
        let d = Req::update("alice", protected(), approved("alice", &at(3601))).decide(&plain);
        assert_eq!(d.verdict, Verdict::Deny);
    }

    #[test]
    fn policies_are_off_limits_to_agents() {
        let snap = snapshot(vec![], &[]);
        let policy = json!({"apiVersion": "agentguard.dev/v1alpha1", "kind": "ProtectedResource", "metadata": {"name": "p", "namespace": "prod"}, "spec": {"targets": []}});
        for op in ["CREATE", "UPDATE", "DELETE"] {
            let mut req = Req::update(AGENT, policy.clone(), policy.clone());
            req.op = op;
            req.kind = ("agentguard.dev", "ProtectedResource", "protectedresources");
            let d = req.decide(&snap);
            assert_eq!(d.verdict, Verdict::Deny, "{op}");
            req.user = "alice".into();
            assert_eq!(req.decide(&snap).verdict, Verdict::Allow, "{op} by a human");
            req.user = AGENT.into();
            req.kind = (
                "agentguard.dev",
                "ClusterProtectedResource",
                "clusterprotectedresources",
            );
            assert_eq!(
                req.decide(&snap).verdict,
                Verdict::Deny,
                "{op} cluster policy"
            );
        }
    }

    /// A view with one protected claim in `prod`, owned by uid `owner-1`.
    struct OneClaim;

    impl ProtectedObjects for OneClaim {
        fn in_namespace(&self, ns: &str) -> Option<CascadeHit> {
            (ns == "prod").then(hit)
        }
        fn of_kind(&self, group: &str, kind: &str) -> Option<CascadeHit> {
            (group.is_empty() && kind == "PersistentVolumeClaim").then(hit)
        }
        fn owned_by(&self, uid: &str) -> Option<CascadeHit> {
            (uid == "owner-1").then(hit)
        }
        fn claims_with_prefix(&self, ns: &str, prefixes: &[String]) -> Option<CascadeHit> {
            (ns == "prod" && prefixes.iter().any(|p| p == "data-db-")).then(hit)
        }
        fn claim(&self, ns: &str, name: &str) -> Option<CascadeHit> {
            (ns == "prod" && name == "data").then(hit)
        }
    }

    /// A view with a namespace `prod` holding one protected object, and kinds still loading.
    struct View {
        namespace: Option<CascadeHit>,
        loading: Option<String>,
    }

    impl ProtectedObjects for View {
        fn loading(&self) -> Option<String> {
            self.loading.clone()
        }
        fn in_namespace(&self, ns: &str) -> Option<CascadeHit> {
            self.namespace.clone().filter(|_| ns == "prod")
        }
        fn of_kind(&self, _: &str, _: &str) -> Option<CascadeHit> {
            None
        }
        fn owned_by(&self, _: &str) -> Option<CascadeHit> {
            None
        }
        fn claims_with_prefix(&self, _: &str, _: &[String]) -> Option<CascadeHit> {
            None
        }
        fn claim(&self, _: &str, _: &str) -> Option<CascadeHit> {
            None
        }
    }

    fn hit() -> CascadeHit {
        CascadeHit {
            object: "PersistentVolumeClaim prod/data".into(),
            count: 1,
            annotation: true,
            policies: vec![],
        }
    }

    fn root(kind: (&'static str, &'static str, &'static str), old: Value, options: Value) -> Req {
        let mut r = Req::delete(AGENT, old);
        r.kind = kind;
        r.options = options;
        r
    }

    #[test]
    fn cascade_roots_are_judged_as_the_data_they_take() {
        let snap = snapshot(vec![], &[]);
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod"}});
        let owner = |annotations: Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "db", "namespace": "prod", "uid": "owner-1", "annotations": annotations}});
        let sts = json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db", "namespace": "prod", "uid": "sts-9"},
            "spec": {"persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete"}, "volumeClaimTemplates": [{"metadata": {"name": "data"}}]}});
        let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "x"},
            "spec": {"group": "", "names": {"kind": "PersistentVolumeClaim"}}});
        let ns_kind = ("", "Namespace", "namespaces");
        let cm_kind = ("", "ConfigMap", "configmaps");
        let cases: Vec<(&str, Req, Verdict)> = vec![
            (
                "namespace",
                root(ns_kind, ns.clone(), Value::Null),
                Verdict::Deny,
            ),
            (
                "other namespace",
                root(ns_kind, json!({"metadata": {"name": "dev"}}), Value::Null),
                Verdict::Allow,
            ),
            (
                "owner",
                root(
                    cm_kind,
                    owner(json!({})),
                    json!({"propagationPolicy": "Background"}),
                ),
                Verdict::Deny,
            ),
            (
                "owner, no options",
                root(cm_kind, owner(json!({})), Value::Null),
                Verdict::Deny,
            ),
            (
                "owner, orphan",
                root(
                    cm_kind,
                    owner(json!({})),
                    json!({"propagationPolicy": "Orphan"}),
                ),
                Verdict::Allow,
            ),
            (
                "owner, orphanDependents",
                root(cm_kind, owner(json!({})), json!({"orphanDependents": true})),
                Verdict::Allow,
            ),
            (
                "owner approved",
                root(
                    cm_kind,
                    owner(
                        json!({"agentguard.dev/approved-by": "alice", "agentguard.dev/approved-until": at(600),
                               "agentguard.dev/approval-seal": seal_for("", "ConfigMap", "owner-1", "alice", &at(600))}),
                    ),
                    Value::Null,
                ),
                Verdict::Allow,
            ),
            (
                "statefulset",
                root(("apps", "StatefulSet", "statefulsets"), sts, Value::Null),
                Verdict::Deny,
            ),
            (
                "crd",
                root(
                    (
                        "apiextensions.k8s.io",
                        "CustomResourceDefinition",
                        "customresourcedefinitions",
                    ),
                    crd,
                    Value::Null,
                ),
                Verdict::Deny,
            ),
        ];
        for (what, req, verdict) in cases {
            let d = decide(&req.build(), &snap, &OneClaim, now());
            assert_eq!(d.verdict, verdict, "{what}: {}", d.reason);
        }
        let d = decide(
            &root(ns_kind, ns.clone(), Value::Null).build(),
            &snap,
            &OneClaim,
            now(),
        );
        let message = d.message.unwrap();
        assert!(
            message.starts_with(&format!(
                "agentguard: DENIED delete of Namespace prod by {AGENT}.\n"
            )),
            "{message}"
        );
        assert!(
            message.contains("through PersistentVolumeClaim prod/data: it holds it."),
            "{message}"
        );
        assert!(
            message.contains("approve namespace/prod --for 30m\n"),
            "{message}"
        );
        // The namespace controller finishing a human's deletion is never blocked.
        let mut controller = root(ns_kind, ns, Value::Null);
        controller.user = "system:serviceaccount:kube-system:namespace-controller".into();
        assert_eq!(
            decide(&controller.build(), &snap, &OneClaim, now()).verdict,
            Verdict::Allow
        );
    }

    #[test]
    fn a_kinds_definition_is_part_of_its_instances_protection() {
        let snap = snapshot(vec![], &[]);
        let crd_kind = (
            "apiextensions.k8s.io",
            "CustomResourceDefinition",
            "customresourcedefinitions",
        );
        let crd = |name: &str, group: &str, kind: &str, schema: Value| {
            json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": name, "uid": "crd-1"},
                   "spec": {"group": group, "names": {"kind": kind}, "versions": [{"name": "v1", "schema": {"openAPIV3Schema": schema}}]}})
        };
        let full = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {"targets": {"type": "array"}}}}});
        let pruned = json!({"type": "object", "properties": {"spec": {"type": "object"}}});
        let update = |user: &str, old: Value, new: Value| {
            let mut r = Req::update(user, old, new);
            r.kind = crd_kind;
            r
        };
        let ours = |schema: Value| {
            crd(
                "clusterprotectedresources.agentguard.dev",
                GROUP,
                "ClusterProtectedResource",
                schema,
            )
        };
        let mut relabelled = ours(full.clone());
        relabelled["metadata"]["labels"] = json!({"team": "x"});
        let claims = |schema: Value| crd("x", "", "PersistentVolumeClaim", schema);
        let widgets = |schema: Value| crd("widgets.example.com", "example.com", "Widget", schema);
        let mut own_delete = root(crd_kind, ours(full.clone()), Value::Null);
        own_delete.name = "clusterprotectedresources.agentguard.dev".into();
        let cases: Vec<(&str, Req, Verdict)> = vec![
            ("delete agentguard's CRD", own_delete, Verdict::Deny),
            (
                "prune agentguard's schema",
                update(AGENT, ours(full.clone()), ours(pruned.clone())),
                Verdict::Deny,
            ),
            (
                "relabel agentguard's CRD",
                update(AGENT, ours(full.clone()), relabelled),
                Verdict::Deny,
            ),
            (
                "a human upgrades agentguard's CRD",
                update("alice", ours(pruned.clone()), ours(full.clone())),
                Verdict::Allow,
            ),
            (
                "prune the schema of a kind with protected instances",
                update(AGENT, claims(full.clone()), claims(pruned.clone())),
                Verdict::Deny,
            ),
            (
                "label the CRD of a kind with protected instances",
                update(AGENT, claims(full.clone()), {
                    let mut c = claims(full.clone());
                    c["metadata"]["labels"] = json!({"team": "x"});
                    c
                }),
                Verdict::Allow,
            ),
            (
                "change the schema of a kind with nothing protected",
                update(AGENT, widgets(full.clone()), widgets(pruned.clone())),
                Verdict::Allow,
            ),
        ];
        for (what, req, verdict) in cases {
            let d = decide(&req.build(), &snap, &OneClaim, now());
            assert_eq!(d.verdict, verdict, "{what}: {}", d.reason);
        }
        let mut r = update(AGENT, ours(full.clone()), ours(pruned));
        r.name = "clusterprotectedresources.agentguard.dev".into();
        let message = decide(&r.build(), &snap, &OneClaim, now()).message.unwrap();
        assert!(
            message.starts_with(&format!("agentguard: DENIED update of CustomResourceDefinition clusterprotectedresources.agentguard.dev by {AGENT}.")),
            "{message}"
        );
        let message = decide(
            &update(AGENT, claims(full), claims(json!({"type": "object"}))).build(),
            &snap,
            &OneClaim,
            now(),
        )
        .message
        .unwrap();
        assert!(
            message.contains("changes the definition (spec) of a kind with protected instances"),
            "{message}"
        );
    }

    #[test]
    fn api_services_are_off_limits_to_agents() {
        let snap = snapshot(vec![], &[]);
        let service = |group: &str, to: Value| {
            json!({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": {"name": format!("v1alpha1.{group}"), "uid": "as-1"},
                   "spec": {"group": group, "version": "v1alpha1", "service": to, "groupPriorityMinimum": 1000, "versionPriority": 15}})
        };
        let ours = service(GROUP, Value::Null);
        let redirected = service(GROUP, json!({"namespace": "prod", "name": "fake-policies"}));
        let elsewhere = service(
            "metrics.example.com",
            json!({"namespace": "prod", "name": "m"}),
        );
        let with = |mut r: Req| {
            r.kind = ("apiregistration.k8s.io", "APIService", "apiservices");
            r.name = "v1alpha1.agentguard.dev".into();
            r
        };
        let create = |user: &str, new: Value| {
            let mut r = with(Req::update(user, Value::Null, new));
            r.op = "CREATE";
            r
        };
        let cases: Vec<(&str, Req, Verdict)> = vec![
            (
                "point agentguard's group at the agent's Service",
                with(Req::update(AGENT, ours.clone(), redirected.clone())),
                Verdict::Deny,
            ),
            (
                "delete agentguard's APIService",
                with(Req::delete(AGENT, ours.clone())),
                Verdict::Deny,
            ),
            (
                "register an aggregated API of any group",
                create(AGENT, elsewhere.clone()),
                Verdict::Deny,
            ),
            (
                "a human registers an aggregated API",
                create("alice", elsewhere),
                Verdict::Allow,
            ),
            (
                "a human repairs agentguard's APIService",
                with(Req::update("alice", redirected, ours)),
                Verdict::Allow,
            ),
        ];
        for (what, req, verdict) in cases {
            let d = decide(&req.build(), &snap, &OneClaim, now());
            assert_eq!(d.verdict, verdict, "{what}: {}", d.reason);
        }
        let d = decide(
            &with(Req::update(
                AGENT,
                service(GROUP, Value::Null),
                service(GROUP, json!({"namespace": "prod", "name": "x"})),
            ))
            .build(),
            &snap,
            &OneClaim,
            now(),
        );
        assert!(
            d.message.as_deref().unwrap_or_default().starts_with(&format!(
                "agentguard: DENIED update of APIService v1alpha1.agentguard.dev by {AGENT}. Restricted identities may not create, change or delete APIServices"
            )),
            "{:?}",
            d.message
        );
    }

    #[test]
    fn updates_that_arrange_a_later_deletion() {
        let snap = snapshot(vec![], &[]);
        let pv = |policy: &str| {
            json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv-1"},
            "spec": {"persistentVolumeReclaimPolicy": policy, "claimRef": {"namespace": "prod", "name": "data"}}})
        };
        let mut r = Req::update(AGENT, pv("Retain"), pv("Delete"));
        r.kind = ("", "PersistentVolume", "persistentvolumes");
        let d = decide(&r.build(), &snap, &OneClaim, now());
        assert_eq!(d.verdict, Verdict::Deny, "{}", d.reason);
        assert!(d.message.unwrap().starts_with(&format!("agentguard: DENIED update (persistentVolumeReclaimPolicy: Delete) of PersistentVolume pv-1 by {AGENT}.")));
        // Not a protected claim's volume: allowed.
        assert_eq!(
            decide(&r.build(), &snap, &(), now()).verdict,
            Verdict::Allow
        );
        // Already Delete: not a change.
        let same = Req {
            kind: ("", "PersistentVolume", "persistentvolumes"),
            ..Req::update(AGENT, pv("Delete"), pv("Delete"))
        };
        assert_eq!(
            decide(&same.build(), &snap, &OneClaim, now()).verdict,
            Verdict::Allow
        );
        // A human may.
        let human = Req {
            user: "alice".into(),
            ..r
        };
        assert_eq!(
            decide(&human.build(), &snap, &OneClaim, now()).verdict,
            Verdict::Allow
        );
    }

    /// An approved deletion that would also lose the database's backups or final snapshot
    /// counts only when the approval accepts each such switch, sealed with it; a database whose
    /// switches keep its backups needs only the approval.
    #[test]
    fn an_approval_must_accept_the_loss_of_backups_it_causes() {
        let snap = snapshot(vec![], &[]);
        let until = at(600);
        let kind = ("rds.services.k8s.aws", "DBInstance", "dbinstances");
        let db = |switches: Value, loss: Option<&str>, seal_loss: &str| {
            let mut a = json!({
                "agentguard.dev/protected": "true",
                "agentguard.dev/approved-by": "alice",
                "agentguard.dev/approved-until": until,
                "agentguard.dev/approval-seal":
                    seal_with_loss("rds.services.k8s.aws", "DBInstance", "uid-db", "alice", &until, seal_loss),
            });
            if let Some(loss) = loss {
                a["agentguard.dev/approved-backup-loss"] = json!(loss);
            }
            a.as_object_mut()
                .unwrap()
                .extend(switches.as_object().unwrap().clone());
            json!({"apiVersion": "rds.services.k8s.aws/v1alpha1", "kind": "DBInstance",
                "metadata": {"name": "orders", "namespace": "prod", "uid": "uid-db", "annotations": a},
                "spec": {}})
        };
        let delete = |obj: Value| {
            Req {
                kind,
                name: "orders".into(),
                ..Req::delete(AGENT, obj)
            }
            .decide(&snap)
        };
        let keeps = json!({"rds.services.k8s.aws/skip-final-snapshot": "false"});
        assert_eq!(delete(db(keeps.clone(), None, "")).verdict, Verdict::Allow);
        // Absent means skip for ACK's RDS: the final snapshot would not be taken.
        let d = delete(db(json!({}), None, ""));
        assert_eq!(d.verdict, Verdict::Deny, "{}", d.reason);
        let message = d.message.unwrap();
        assert!(
            message.contains("rds.services.k8s.aws/skip-final-snapshot absent")
                && message.contains("--destroy-backups")
                && message.contains("The approval by alice does not cover"),
            "{message}"
        );
        let skip = json!({"rds.services.k8s.aws/skip-final-snapshot": "true",
            "rds.services.k8s.aws/delete-automated-backups": "true"});
        let both = "rds.services.k8s.aws/skip-final-snapshot,rds.services.k8s.aws/delete-automated-backups";
        assert_eq!(
            delete(db(skip.clone(), Some(both), both)).verdict,
            Verdict::Allow
        );
        // Accepting one loss does not accept the other.
        let one = "rds.services.k8s.aws/skip-final-snapshot";
        let d = delete(db(skip.clone(), Some(one), one));
        assert_eq!(d.verdict, Verdict::Deny, "{}", d.reason);
        assert!(
            d.reason.contains("delete-automated-backups=true"),
            "{}",
            d.reason
        );
        // The acceptance is sealed: written after the seal (or changed), the approval is void.
        let d = delete(db(skip.clone(), Some(both), ""));
        assert_eq!(d.verdict, Verdict::Deny, "{}", d.reason);
        assert!(d.reason.contains("void"), "{}", d.reason);
        // A human deletes as before.
        let human = Req {
            kind,
            name: "orders".into(),
            ..Req::delete("alice", db(skip, None, ""))
        };
        assert_eq!(human.decide(&snap).verdict, Verdict::Allow);
        // A database that also owns protected claims (a cascade root) is judged on its own
        // settings too: CloudNativePG's snapshots owned by the Cluster go with it.
        let cnpg = |owner_ref: &str, loss: &str| {
            json!({"apiVersion": "postgresql.cnpg.io/v1", "kind": "Cluster",
                "metadata": {"name": "orders", "namespace": "prod", "uid": "owner-1",
                    "annotations": {
                        "agentguard.dev/protected": "true",
                        "agentguard.dev/approved-by": "alice",
                        "agentguard.dev/approved-until": until,
                        "agentguard.dev/approved-backup-loss": loss,
                        "agentguard.dev/approval-seal": seal_with_loss(
                            "postgresql.cnpg.io", "Cluster", "owner-1", "alice", &until, loss),
                    }},
                "spec": {"backup": {"volumeSnapshot": {"snapshotOwnerReference": owner_ref}}}})
        };
        let delete = |obj: Value| {
            let r = Req {
                kind: ("postgresql.cnpg.io", "Cluster", "clusters"),
                name: "orders".into(),
                ..Req::delete(AGENT, obj)
            };
            decide(&r.build(), &snap, &OneClaim, now())
        };
        let d = delete(cnpg("cluster", ""));
        assert_eq!(d.verdict, Verdict::Deny, "{}", d.reason);
        assert!(
            d.reason.contains("snapshotOwnerReference=cluster"),
            "{}",
            d.reason
        );
        let key = "spec.backup.volumeSnapshot.snapshotOwnerReference";
        assert_eq!(delete(cnpg("cluster", key)).verdict, Verdict::Allow);
        assert_eq!(delete(cnpg("none", "")).verdict, Verdict::Allow);
    }

    /// A switch removed takes its default: removing `deleteAutomatedBackups: false` (default
    /// true) or `deletionPolicy: Orphan` (default Delete) from a protected Crossplane database
    /// turns it on, and is refused like setting it.
    #[test]
    fn removing_a_switch_whose_default_is_dangerous_is_refused() {
        let snap = snapshot(vec![], &[]);
        let rds = |spec: Value| {
            json!({"apiVersion": "rds.aws.upbound.io/v1beta1", "kind": "Instance",
                "metadata": {"name": "orders", "uid": "uid-rds",
                    "annotations": {"agentguard.dev/protected": "true"}},
                "spec": spec})
        };
        let kind = ("rds.aws.upbound.io", "Instance", "instances");
        let update = |user: &str, old: Value, new: Value| {
            Req {
                kind,
                name: "orders".into(),
                ..Req::update(user, old, new)
            }
            .decide(&snap)
        };
        let safe =
            json!({"deletionPolicy": "Orphan", "forProvider": {"deleteAutomatedBackups": false}});
        for removed in [
            json!({"deletionPolicy": "Orphan", "forProvider": {}}),
            json!({"forProvider": {"deleteAutomatedBackups": false}}),
        ] {
            let d = update(AGENT, rds(safe.clone()), rds(removed.clone()));
            assert_eq!(d.verdict, Verdict::Deny, "{removed}: {}", d.reason);
            assert!(d.reason.contains("catalog-switch"), "{}", d.reason);
            assert_eq!(
                update("alice", rds(safe.clone()), rds(removed)).verdict,
                Verdict::Allow
            );
        }
        assert_eq!(
            update(AGENT, rds(safe.clone()), rds(safe)).verdict,
            Verdict::Allow
        );
    }

    /// The data-holding catalog's switches: an agent turning a protected database's own
    /// protection off, or making its deletion take its final snapshot, is refused like deleting
    /// it; turning it back on, an unchanged switch, a human, an unprotected database: allowed.
    #[test]
    fn catalog_switches_turned_dangerous_on_a_protected_database_are_refused() {
        let snap = snapshot(vec![], &[]);
        let db = |annotations: Value| {
            let mut a = json!({"agentguard.dev/protected": "true"});
            a.as_object_mut()
                .unwrap()
                .extend(annotations.as_object().unwrap().clone());
            json!({"apiVersion": "rds.services.k8s.aws/v1alpha1", "kind": "DBInstance",
                "metadata": {"name": "orders", "namespace": "prod", "uid": "uid-db", "annotations": a},
                "spec": {"dbInstanceIdentifier": "orders"}})
        };
        let kind = ("rds.services.k8s.aws", "DBInstance", "dbinstances");
        let keep = json!({"rds.services.k8s.aws/skip-final-snapshot": "false", "services.k8s.aws/deletion-policy": "retain"});
        let req = |user: &str, old: Value, new: Value| Req {
            kind,
            name: "orders".into(),
            ..Req::update(user, old, new)
        };
        // The final snapshot skipped.
        let skip = json!({"rds.services.k8s.aws/skip-final-snapshot": "true", "services.k8s.aws/deletion-policy": "retain"});
        let d = req(AGENT, db(keep.clone()), db(skip.clone())).decide(&snap);
        assert_eq!(d.verdict, Verdict::Deny, "{}", d.reason);
        assert!(
            d.reason.contains("by proxy: catalog-switch"),
            "{}",
            d.reason
        );
        assert!(
            d.message.as_deref().unwrap().starts_with(&format!(
                "agentguard: DENIED update (annotation rds.services.k8s.aws/skip-final-snapshot: true) of DBInstance prod/orders by {AGENT}."
            )),
            "{:?}",
            d.message
        );
        // The annotation that skips nothing removed: absent means skip for ACK's RDS.
        let removed = json!({"services.k8s.aws/deletion-policy": "retain"});
        let d = req(AGENT, db(keep.clone()), db(removed)).decide(&snap);
        assert_eq!(d.verdict, Verdict::Deny, "{}", d.reason);
        // Retain removed: the controller's default (delete, in ACK's chart) applies again.
        let no_policy = json!({"rds.services.k8s.aws/skip-final-snapshot": "false"});
        assert_eq!(
            req(AGENT, db(keep.clone()), db(no_policy))
                .decide(&snap)
                .verdict,
            Verdict::Deny
        );
        // Retain switched to delete.
        let delete = json!({"rds.services.k8s.aws/skip-final-snapshot": "false", "services.k8s.aws/deletion-policy": "delete"});
        assert_eq!(
            req(AGENT, db(keep.clone()), db(delete))
                .decide(&snap)
                .verdict,
            Verdict::Deny
        );
        // Made safer, or left as it was: not a deletion by proxy.
        assert_eq!(
            req(AGENT, db(skip.clone()), db(keep.clone()))
                .decide(&snap)
                .verdict,
            Verdict::Allow
        );
        assert_eq!(
            req(AGENT, db(skip.clone()), db(skip.clone()))
                .decide(&snap)
                .verdict,
            Verdict::Allow
        );
        // A human may.
        assert_eq!(
            req("alice", db(keep.clone()), db(skip.clone()))
                .decide(&snap)
                .verdict,
            Verdict::Allow
        );
        // An unprotected database: not agentguard's to guard.
        let unprotected = |a: Value| {
            let mut o = db(a);
            o["metadata"]["annotations"]
                .as_object_mut()
                .unwrap()
                .remove("agentguard.dev/protected");
            o
        };
        assert_eq!(
            req(AGENT, unprotected(keep.clone()), unprotected(skip))
                .decide(&snap)
                .verdict,
            Verdict::Allow
        );
        // A finalizer that makes the operator delete the claims with the cluster.
        let pxc = |finalizers: Value| {
            json!({"apiVersion": "pxc.percona.com/v1", "kind": "PerconaXtraDBCluster",
                "metadata": {"name": "orders", "namespace": "prod", "uid": "uid-pxc",
                    "annotations": {"agentguard.dev/protected": "true"}, "finalizers": finalizers},
                "spec": {}})
        };
        let d = Req {
            kind: (
                "pxc.percona.com",
                "PerconaXtraDBCluster",
                "perconaxtradbclusters",
            ),
            name: "orders".into(),
            ..Req::update(
                AGENT,
                pxc(json!([])),
                pxc(json!(["percona.com/delete-pxc-pvc"])),
            )
        }
        .decide(&snap);
        assert_eq!(d.verdict, Verdict::Deny, "{}", d.reason);
        assert!(
            d.message
                .unwrap()
                .contains("update (finalizer percona.com/delete-pxc-pvc: present)")
        );
    }

    /// The four routes of issue 15, at the decision level (the end-to-end suite drives them
    /// through the API server).
    #[test]
    fn forged_approval_on_a_cascade_root_is_void() {
        let snap = snapshot(vec![], &[]);
        let until = at(300);
        let ns = |annotations: Value| {
            json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "prod", "uid": "ns-uid", "annotations": annotations}})
        };
        let forged = ns(
            json!({"agentguard.dev/approved-by": "alice", "agentguard.dev/approved-until": until}),
        );
        let kind = ("", "Namespace", "namespaces");
        // Writing it is refused to the agent...
        let mut write = Req::update(AGENT, ns(json!({})), forged.clone());
        write.kind = kind;
        let d = decide(&write.build(), &snap, &OneClaim, now());
        assert_eq!(d.verdict, Verdict::Deny, "{}", d.reason);
        // ...and, written by any other path, it counts for nothing at the deletion.
        let d = decide(
            &root(kind, forged, Value::Null).build(),
            &snap,
            &OneClaim,
            now(),
        );
        assert_eq!(d.verdict, Verdict::Deny, "{}", d.reason);
        assert!(d.message.unwrap().contains("is not sealed by agentguard"));
        // A seal made for another object does not travel with a copy.
        let copied = ns(
            json!({"agentguard.dev/approved-by": "alice", "agentguard.dev/approved-until": until,
            "agentguard.dev/approval-seal": seal_of("alice", &until)}),
        );
        let d = decide(
            &root(kind, copied, Value::Null).build(),
            &snap,
            &OneClaim,
            now(),
        );
        assert!(
            d.message.unwrap().contains("does not match this object"),
            "{}",
            d.reason
        );
        let genuine = ns(
            json!({"agentguard.dev/approved-by": "alice", "agentguard.dev/approved-until": until,
            "agentguard.dev/approval-seal": seal_for("", "Namespace", "ns-uid", "alice", &until)}),
        );
        let d = decide(
            &root(kind, genuine, Value::Null).build(),
            &snap,
            &OneClaim,
            now(),
        );
        assert_eq!(d.verdict, Verdict::Allow, "{}", d.reason);
    }

    #[test]
    fn approvers_of_what_a_root_takes_are_checked_when_sealing() {
        let mut s = spec(Mode::Enforce, "PersistentVolumeClaim");
        s.approval = Some(ApprovalSpec {
            max_ttl: None,
            approvers: Some(Approvers {
                usernames: vec![],
                groups: vec!["sre".into()],
            }),
        });
        let snap = snapshot(vec![(PolicyRef::cluster("p"), s)], &[]);
        let mut with_policy = hit();
        with_policy.policies = vec![PolicyRef::cluster("p")];
        let ns = |annotations: Value| {
            json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "prod", "uid": "ns-uid", "annotations": annotations}})
        };
        let until = at(300);
        let mut req = Req::update(
            "dave",
            ns(json!({})),
            ns(
                json!({"agentguard.dev/approved-by": "dave", "agentguard.dev/approved-until": until}),
            ),
        );
        req.kind = ("", "Namespace", "namespaces");
        let held = View {
            namespace: Some(with_policy),
            loading: None,
        };
        assert_eq!(
            seal_patch(&req.build(), &snap, &held, now()),
            None,
            "dave is not an sre"
        );
        let req = req.groups(&["sre"]);
        assert!(seal_patch(&req.build(), &snap, &held, now()).is_some());
    }

    #[test]
    fn a_ghost_owner_a_relabel_and_a_lost_finalizer_lower_protection() {
        let mut by_label = spec(Mode::Enforce, "PersistentVolumeClaim");
        by_label.targets[0].selector = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                match_labels: Some([("app".to_owned(), "orders-db".to_owned())].into()),
                match_expressions: None,
            },
        );
        let snap = snapshot(vec![(PolicyRef::cluster("by-label"), by_label)], &[]);
        let plain = pvc(json!({}));
        let with = |pointer: &str, value: Value| {
            let mut o = plain.clone();
            *o.pointer_mut(pointer).unwrap() = value;
            o
        };
        let mut ghost = plain.clone();
        ghost["metadata"]["ownerReferences"] =
            json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "ghost", "uid": "ghost-uid"}]);
        let mut finalized = plain.clone();
        finalized["metadata"]["finalizers"] = json!(["kubernetes.io/pvc-protection"]);
        let cases = [
            (
                "ghost owner",
                plain.clone(),
                ghost.clone(),
                "adds owner ConfigMap ghost",
            ),
            (
                "relabel",
                plain.clone(),
                with("/metadata/labels", json!({})),
                "leaves the protection of ClusterProtectedResource by-label",
            ),
            (
                "relabel value",
                plain.clone(),
                with("/metadata/labels", json!({"app": "staging"})),
                "leaves the protection",
            ),
            (
                "finalizer",
                finalized.clone(),
                plain.clone(),
                "removes finalizer kubernetes.io/pvc-protection",
            ),
        ];
        for (what, old, new, needle) in cases {
            // Through the status subresource the review is the same (the whole object); the
            // decision never looks at which subresource carried the write.
            let d = Req::update(AGENT, old.clone(), new.clone()).decide(&snap);
            assert_eq!(d.verdict, Verdict::Deny, "{what}: {}", d.reason);
            assert!(
                d.message.as_deref().unwrap().contains(needle),
                "{what}: {:?}",
                d.message
            );
            assert!(
                d.message
                    .as_deref()
                    .unwrap()
                    .starts_with("agentguard: DENIED update ("),
                "{what}"
            );
            assert_eq!(
                Req::update("alice", old, new).decide(&snap).verdict,
                Verdict::Allow,
                "{what} by a human"
            );
        }
        // Writes that do not lower it go through.
        let tiered = with(
            "/metadata/labels",
            json!({"app": "orders-db", "tier": "db"}),
        );
        assert_eq!(
            Req::update(AGENT, plain.clone(), tiered)
                .decide(&snap)
                .verdict,
            Verdict::Allow
        );
        assert_eq!(
            Req::update(AGENT, ghost, plain.clone())
                .decide(&snap)
                .verdict,
            Verdict::Allow,
            "dropping an owner"
        );
        assert_eq!(
            Req::update(AGENT, plain, finalized).decide(&snap).verdict,
            Verdict::Allow,
            "adding a finalizer"
        );
    }

    #[test]
    fn the_sealing_webhook_seals_only_what_the_validating_one_accepts() {
        let snap = snapshot(vec![], &[]);
        let until = at(600);
        let set = unsealed("alice", &until);
        let human = Req::update("alice", protected(), set.clone());
        let patch =
            seal_patch(&human.build(), &snap, &(), now()).expect("a human's approval is sealed");
        assert_eq!(
            serde_json::to_value(&patch).unwrap(),
            json!([{"op": "add", "path": "/metadata/annotations/agentguard.dev~1approval-seal", "value": seal_of("alice", &until)}])
        );
        assert_eq!(human.admit(&snap).verdict, Verdict::Allow);
        // Without the sealing webhook (a subresource it does not see, no key) the human is told.
        let d = human.decide(&snap);
        assert_eq!(d.verdict, Verdict::Deny);
        assert!(d.message.unwrap().contains("not sealed"));
        // Never for an agent, nor for someone else's name, nor on CREATE (no uid yet).
        assert_eq!(
            seal_patch(
                &Req::update(AGENT, protected(), set.clone()).build(),
                &snap,
                &(),
                now()
            ),
            None
        );
        assert_eq!(
            seal_patch(
                &Req::update("bob", protected(), set.clone()).build(),
                &snap,
                &(),
                now()
            ),
            None
        );
        let create = Req {
            op: "CREATE",
            ..Req::update("alice", Value::Null, set.clone())
        };
        assert_eq!(seal_patch(&create.build(), &snap, &(), now()), None);
        // A seal that no longer verifies is removed; a valid one is left alone.
        let stale = pvc(
            json!({"agentguard.dev/protected": "true", "agentguard.dev/approved-by": "alice",
            "agentguard.dev/approved-until": at(900), "agentguard.dev/approval-seal": seal_of("alice", &until)}),
        );
        let patch = seal_patch(
            &Req::update("bob", protected(), stale).build(),
            &snap,
            &(),
            now(),
        )
        .unwrap();
        assert_eq!(serde_json::to_value(&patch).unwrap()[0]["op"], "remove");
        let sealed = approved("alice", &until);
        assert_eq!(
            seal_patch(
                &Req::update("bob", sealed.clone(), sealed).build(),
                &snap,
                &(),
                now()
            ),
            None
        );
        // A ServiceAccount is no person: it approves only where a policy names it.
        let sa = "system:serviceaccount:ops:deployer";
        let mut named = spec(Mode::Enforce, "PersistentVolumeClaim");
        named.approval = Some(ApprovalSpec {
            max_ttl: None,
            approvers: Some(Approvers {
                usernames: vec![sa.into()],
                groups: vec![],
            }),
        });
        let named = snapshot(vec![(PolicyRef::cluster("p"), named)], &[]);
        let by_sa = Req::update(
            sa,
            pvc(json!({})),
            pvc(json!({"agentguard.dev/approved-by": sa, "agentguard.dev/approved-until": until})),
        );
        let d = by_sa.admit(&snap);
        assert_eq!(d.verdict, Verdict::Deny);
        assert!(
            d.message.unwrap().contains("is a ServiceAccount"),
            "unprotected object, no policy"
        );
        assert_eq!(by_sa.admit(&named).verdict, Verdict::Allow);
    }

    #[test]
    fn while_a_kind_is_loading_agents_may_not_delete_what_might_be_a_root() {
        let loading = View {
            namespace: None,
            loading: Some("Cluster.postgresql.cnpg.io".into()),
        };
        let snap = snapshot(vec![], &[]);
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod", "uid": "ns-uid"}});
        let agent = root(("", "Namespace", "namespaces"), ns.clone(), Value::Null);
        let d = decide(&agent.build(), &snap, &loading, now());
        assert_eq!(d.verdict, Verdict::Deny, "{}", d.reason);
        assert!(
            d.message
                .unwrap()
                .contains("still loading the objects of Cluster.postgresql.cnpg.io")
        );
        assert_eq!(
            decide(&agent.build(), &snap, &(), now()).verdict,
            Verdict::Allow
        );
        let mut human = agent;
        human.user = "alice".into();
        assert_eq!(
            decide(&human.build(), &snap, &loading, now()).verdict,
            Verdict::Allow
        );
    }
}
