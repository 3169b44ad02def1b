//! `kubectl agentguard approve <kind>/<name> --for 30m --reason TEXT`, and `--revoke`.
//!
//! An approval is three annotations on the object, set in one request by the approver
//! themselves: the webhook accepts them only when `approved-by` is the requester's own username,
//! the window fits every protecting policy's maxTTL, and the requester is an allowed approver.
//! The plugin checks the same things first, so a human hears "no" with the reason before any
//! request is sent; the webhook stays the judge (an agent running this gets its denial).

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use jiff::Timestamp;
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::api::{Api, Patch, PatchParams, PostParams, ResourceExt};
use kube::core::DynamicObject;
use serde::Serialize;
use serde_json::{Value, json};

use super::status::{Inventory, Policies, Scope, inventory, policies_failure};
use super::{Ctx, Failure, Outcome, Output, resolve_resource, split_target};
use crate::api::{
    APPROVAL_REASON_ANNOTATION, APPROVED_BACKUP_LOSS_ANNOTATION, APPROVED_BY_ANNOTATION,
    APPROVED_UNTIL_ANNOTATION, DEFAULT_APPROVAL_TTL, PROTECTED_ANNOTATION,
};
use crate::policy::{
    ApproverSet, CascadeHit, ObjectFacts, ProtectedObjects, Snapshot, parse_duration,
};

#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// The object whose deletion you approve, as <kind>/<name> (e.g. pvc/data).
    pub target: String,
    /// How long the approval lasts, e.g. 30m or 1h; at most the protecting policy's maxTTL.
    #[arg(long = "for", value_name = "DURATION", default_value = "30m")]
    pub window: String,
    /// Why; recorded on the object and shown in events and logs.
    #[arg(long)]
    pub reason: Option<String>,
    /// Remove the approval (all its annotations) instead of setting one.
    #[arg(long, conflicts_with_all = ["reason", "window", "destroy_backups"])]
    pub revoke: bool,
    /// Also approve what the deletion destroys beyond the object itself: its backups, or its
    /// final snapshot. Required when the object's own settings (a catalog switch such as
    /// skipFinalSnapshot) would lose them; without it the approval is refused here and would
    /// not count at the deletion.
    #[arg(long)]
    pub destroy_backups: bool,
}

/// One thing that protects the object, as far as an approval is concerned.
#[derive(Debug, Clone)]
struct Protection {
    /// `ProtectedResource prod/orders`, or `annotation agentguard.dev/protected=true`.
    by: String,
    max_ttl: Duration,
    approvers: Option<ApproverSet>,
}

impl Protection {
    fn annotation() -> Self {
        Self {
            by: format!("annotation {PROTECTED_ANNOTATION}=true"),
            max_ttl: DEFAULT_APPROVAL_TTL,
            approvers: None,
        }
    }

    /// Whether this identity may approve. Without named approvers, anyone the guard does not
    /// restrict may (and the webhook refuses restricted identities itself).
    fn allows(&self, username: &str, groups: &[String]) -> bool {
        match &self.approvers {
            None => true,
            Some(a) if a.usernames.is_empty() && a.groups.is_empty() => true,
            Some(a) => {
                a.usernames.contains(username) || groups.iter().any(|g| a.groups.contains(g))
            }
        }
    }

    fn approvers_text(&self) -> String {
        let Some(a) = &self.approvers else {
            return String::new();
        };
        let sorted = |set: &std::collections::HashSet<String>| {
            let mut v: Vec<&str> = set.iter().map(String::as_str).collect();
            v.sort_unstable();
            v.join(", ")
        };
        let mut parts = Vec::new();
        if !a.groups.is_empty() {
            parts.push(format!("groups {}", sorted(&a.groups)));
        }
        if !a.usernames.is_empty() {
            parts.push(format!("usernames {}", sorted(&a.usernames)));
        }
        parts.join("; ")
    }
}

/// What protects an object: directly (policies, annotation), and through the protected data a
/// deletion of it would take with it (a cascade root).
#[derive(Debug, Clone, Default)]
struct Protections {
    direct: Vec<Protection>,
    inherited: Vec<Protection>,
    /// How the object reaches protected data, e.g. `deleting it deletes PersistentVolumeClaim
    /// prod/data`.
    through: Option<String>,
}

impl Protections {
    fn of(
        snapshot: &Snapshot,
        facts: &ObjectFacts<'_>,
        annotated: bool,
        hit: Option<(CascadeHit, String)>,
    ) -> Self {
        let policy = |p: &crate::policy::CompiledPolicy| Protection {
            by: p.id.describe(),
            max_ttl: p.max_ttl,
            approvers: p.approvers.clone(),
        };
        let mut direct: Vec<Protection> =
            snapshot.protecting(facts).into_iter().map(policy).collect();
        if annotated {
            direct.push(Protection::annotation());
        }
        let mut inherited = Vec::new();
        let mut through = None;
        if let Some((hit, how)) = hit {
            through = Some(how);
            let found = hit
                .policies
                .iter()
                .filter_map(|id| snapshot.policy(id))
                .map(policy)
                .chain(hit.annotation.then(Protection::annotation));
            for p in found {
                if !direct
                    .iter()
                    .chain(&inherited)
                    .any(|d: &Protection| d.by == p.by)
                {
                    inherited.push(p);
                }
            }
        }
        Self {
            direct,
            inherited,
            through,
        }
    }

    fn is_empty(&self) -> bool {
        self.direct.is_empty() && self.inherited.is_empty()
    }

    fn all(&self) -> impl Iterator<Item = &Protection> {
        self.direct.iter().chain(&self.inherited)
    }

    /// The longest window agentguard accepts, and what sets it. The webhook checks the window
    /// against the smallest maxTTL of what protects the object when the approval is set (the
    /// default window when nothing protects it directly), and against the protections of the
    /// data a cascade would take when the deletion comes.
    fn cap(&self) -> (Duration, String) {
        let default = self.direct.is_empty().then(|| {
            (
                DEFAULT_APPROVAL_TTL,
                format!(
                    "agentguard's default {} approval window",
                    human(DEFAULT_APPROVAL_TTL)
                ),
            )
        });
        self.all()
            .map(|p| {
                (
                    p.max_ttl,
                    format!("the {} maxTTL of {}", human(p.max_ttl), p.by),
                )
            })
            .chain(default)
            .fold(None, |best: Option<(Duration, String)>, next| match best {
                Some(b) if b.0 <= next.0 => Some(b),
                _ => Some(next),
            })
            .expect("the default window or a protection")
    }

    /// Why agentguard would reject this approval, if it would.
    fn refusal(&self, window: Duration, username: &str, groups: &[String]) -> Option<String> {
        let (cap, set_by) = self.cap();
        if window > cap {
            return Some(format!(
                "--for {} is longer than {set_by}; agentguard would reject it. Approve for at most {}.",
                human(window),
                human(cap)
            ));
        }
        let refused: Vec<String> = self
            .all()
            .filter(|p| !p.allows(username, groups))
            .map(|p| {
                format!(
                    "{username} is not an approver of {} (approvers: {})",
                    p.by,
                    p.approvers_text()
                )
            })
            .collect();
        (!refused.is_empty())
            .then(|| format!("{}; ask one of them to approve.", refused.join("; ")))
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.direct.iter().map(|p| p.by.clone()).collect();
        if let Some(through) = &self.through {
            names.extend(
                self.inherited
                    .iter()
                    .map(|p| format!("{} ({through})", p.by)),
            );
        }
        names
    }
}

/// A window or maxTTL exactly, as policies spell them: `30m`, `1h30m`, `45m30s`.
fn human(d: Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::new();
    for (value, unit) in [(h, 'h'), (m, 'm'), (s, 's')] {
        if value > 0 {
            out.push_str(&format!("{value}{unit}"));
        }
    }
    if out.is_empty() { "0s".to_owned() } else { out }
}

/// The protected data that deleting (or repointing) `obj` reaches, and how, judged as the
/// webhook judges a cascade root (whatever the delete's propagationPolicy: an approval covers
/// any deletion) or a PersistentVolume bound to a protected claim.
fn cascade_hit(
    group: &str,
    kind: &str,
    obj: &DynamicObject,
    objects: &dyn ProtectedObjects,
) -> Option<(CascadeHit, String)> {
    let name = obj.metadata.name.as_deref().unwrap_or_default();
    if group.is_empty()
        && kind == "Namespace"
        && let Some(hit) = objects.in_namespace(name)
    {
        let how = format!("deleting it deletes {}", hit.object);
        return Some((hit, how));
    }
    if group == "apiextensions.k8s.io"
        && kind == "CustomResourceDefinition"
        && let (Some(g), Some(k)) = (
            obj.data.pointer("/spec/group").and_then(Value::as_str),
            obj.data.pointer("/spec/names/kind").and_then(Value::as_str),
        )
        && let Some(hit) = objects.of_kind(g, k)
    {
        let how = format!(
            "deleting it deletes its instances, {} among them",
            hit.object
        );
        return Some((hit, how));
    }
    if group == "apps"
        && kind == "StatefulSet"
        && obj
            .data
            .pointer("/spec/persistentVolumeClaimRetentionPolicy/whenDeleted")
            .and_then(Value::as_str)
            == Some("Delete")
    {
        let prefixes: Vec<String> = obj
            .data
            .pointer("/spec/volumeClaimTemplates")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|t| t.pointer("/metadata/name").and_then(Value::as_str))
            .map(|t| format!("{t}-{name}-"))
            .collect();
        let namespace = obj.metadata.namespace.as_deref().unwrap_or_default();
        if let Some(hit) = objects.claims_with_prefix(namespace, &prefixes) {
            let how = format!(
                "deleting it deletes {} (PVC retention policy whenDeleted: Delete)",
                hit.object
            );
            return Some((hit, how));
        }
    }
    if let Some(uid) = obj.metadata.uid.as_deref()
        && let Some(hit) = objects.owned_by(uid)
    {
        let how = format!(
            "deleting it makes the garbage collector delete {}",
            hit.object
        );
        return Some((hit, how));
    }
    if group.is_empty()
        && kind == "PersistentVolume"
        && let (Some(ns), Some(claim)) = (
            obj.data
                .pointer("/spec/claimRef/namespace")
                .and_then(Value::as_str),
            obj.data
                .pointer("/spec/claimRef/name")
                .and_then(Value::as_str),
        )
        && let Some(hit) = objects.claim(ns, claim)
    {
        let how = format!("it holds the data of {}", hit.object);
        return Some((hit, how));
    }
    None
}

/// The end of an approval window starting now: whole seconds, so the annotation reads as
/// RFC 3339 without fractions and never lasts longer than asked.
fn approval_until(now: Timestamp, window: Duration) -> Timestamp {
    let secs = i64::try_from(window.as_secs()).unwrap_or(i64::MAX);
    Timestamp::from_second(now.as_second().saturating_add(secs)).unwrap_or(Timestamp::MAX)
}

/// One merge patch setting the approval's annotations: the webhook judges and seals them
/// together. Without a reason, a previous approval's reason is removed rather than left to
/// describe this one; likewise an earlier acceptance of backup loss.
fn approval_patch(
    by: &str,
    until: Timestamp,
    reason: Option<&str>,
    backup_loss: &[String],
) -> Value {
    let loss = (!backup_loss.is_empty()).then(|| backup_loss.join(","));
    json!({"metadata": {"annotations": {
        APPROVED_BY_ANNOTATION: by,
        APPROVED_UNTIL_ANNOTATION: until.to_string(),
        APPROVAL_REASON_ANNOTATION: reason,
        APPROVED_BACKUP_LOSS_ANNOTATION: loss,
    }}})
}

/// One merge patch removing all the approval's annotations.
fn revoke_patch() -> Value {
    json!({"metadata": {"annotations": {
        APPROVED_BY_ANNOTATION: null,
        APPROVED_UNTIL_ANNOTATION: null,
        APPROVAL_REASON_ANNOTATION: null,
        APPROVED_BACKUP_LOSS_ANNOTATION: null,
    }}})
}

/// What deleting `obj` (of a catalog kind) also destroys as its settings stand: its backups or
/// its final snapshot, one line per switch, with the catalog keys an approval must list.
fn backup_losses(group: &str, kind: &str, obj: &DynamicObject) -> (Vec<String>, Vec<String>) {
    let Some(entry) = crate::catalog::catalog().kind(group, kind) else {
        return Default::default();
    };
    entry
        .backup_losses(&obj.metadata, &obj.data)
        .into_iter()
        .map(|(switch, value)| {
            let state = match value {
                Some(v) => format!("{}={v}", switch.key()),
                None => format!("{} is not set", switch.key()),
            };
            let meaning = switch
                .meaning
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            (switch.key(), format!("{state}{meaning}"))
        })
        .unzip()
}

/// The `--for` value, checked before anything is sent.
fn parse_window(text: &str) -> Result<Duration, Failure> {
    match parse_duration(text) {
        Some(d) if d.as_secs() >= 1 => Ok(d),
        Some(_) => Err(Failure::with_code(
            2,
            format!("--for {text} is too short: approve for at least 1s"),
        )),
        None => Err(Failure::with_code(
            2,
            format!("--for {text:?} is not a duration like 30m, 1h or 1h30m"),
        )),
    }
}

/// `PersistentVolumeClaim prod/data`, or `PersistentVolume pv-1`.
fn describe(kind: &str, obj: &DynamicObject) -> String {
    match obj.namespace() {
        Some(ns) => format!("{kind} {ns}/{}", obj.name_any()),
        None => format!("{kind} {}", obj.name_any()),
    }
}

/// What `-o json|yaml` prints.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ApprovalRecord {
    /// `approved`, `revoked`, or `none` (a revoke with nothing to revoke).
    action: &'static str,
    object: ObjectRecord,
    #[serde(skip_serializing_if = "Option::is_none")]
    approved_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    approved_until: Option<String>,
    #[serde(rename = "for", skip_serializing_if = "Option::is_none")]
    window: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    protected_by: Vec<String>,
    #[serde(rename = "maxTTL", skip_serializing_if = "Option::is_none")]
    max_ttl: Option<String>,
    /// The catalog switches whose loss of backups this approval accepts.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    backup_loss: Vec<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ObjectRecord {
    api_version: String,
    kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    name: String,
}

fn emit(output: Output, line: &str, record: &ApprovalRecord) {
    match output {
        Output::Table => println!("{line}"),
        output => super::print(output, &[], &[], record),
    }
}

/// The caller's username and groups, as the API server authenticates them.
pub(super) async fn whoami(client: &kube::Client) -> Result<(String, Vec<String>), Failure> {
    let unavailable = |why: String| {
        Failure::new(format!(
            "cannot learn your username from the API server's SelfSubjectReview API \
             (authentication.k8s.io/v1): {why}. An approval must name the approver exactly as \
             the API server knows them, so nothing was changed."
        ))
    };
    let review = SelfSubjectReview {
        metadata: Default::default(),
        status: None,
    };
    let answer = Api::<SelfSubjectReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .map_err(|e| unavailable(Failure::from(e).message))?;
    let user = answer
        .status
        .and_then(|s| s.user_info)
        .ok_or_else(|| unavailable("the answer names no user".into()))?;
    let username = user
        .username
        .filter(|u| !u.is_empty())
        .ok_or_else(|| unavailable("the answer names no user".into()))?;
    Ok((username, user.groups.unwrap_or_default()))
}

pub async fn run(ctx: &Ctx, args: ApproveArgs) -> Outcome {
    let (typed_kind, name) = split_target(&args.target)?;
    let window = if args.revoke {
        None
    } else {
        Some(parse_window(&args.window)?)
    };
    let resolved = resolve_resource(&ctx.client, typed_kind).await?;
    let resource = &resolved.resource;
    let api: Api<DynamicObject> = if resolved.namespaced {
        Api::namespaced_with(ctx.client.clone(), &ctx.namespace, resource)
    } else {
        Api::all_with(ctx.client.clone(), resource)
    };
    let obj = api.get(name).await?;
    let what = describe(&resource.kind, &obj);
    let object = ObjectRecord {
        api_version: resource.api_version.clone(),
        kind: resource.kind.clone(),
        namespace: obj.namespace(),
        name: obj.name_any(),
    };
    let annotations = obj.annotations();

    let Some(window) = window else {
        let by = annotations.get(APPROVED_BY_ANNOTATION).cloned();
        let until = annotations.get(APPROVED_UNTIL_ANNOTATION).cloned();
        let reason = annotations.get(APPROVAL_REASON_ANNOTATION).cloned();
        if by.is_none() && until.is_none() && reason.is_none() {
            let record = ApprovalRecord::bare("none", object);
            emit(
                ctx.output,
                &format!("no approval on {what}: nothing to revoke"),
                &record,
            );
            return Ok(ExitCode::SUCCESS);
        }
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(&revoke_patch()),
        )
        .await?;
        let line = format!(
            "revoked the approval to delete {what} (approved by {} until {}{})",
            by.as_deref().unwrap_or("nobody"),
            until.as_deref().unwrap_or("?"),
            reason
                .as_deref()
                .map(|r| format!(", reason: {r}"))
                .unwrap_or_default()
        );
        let record = ApprovalRecord {
            approved_by: by,
            approved_until: until,
            reason,
            ..ApprovalRecord::bare("revoked", object)
        };
        emit(ctx.output, &line, &record);
        return Ok(ExitCode::SUCCESS);
    };

    let (username, groups) = whoami(&ctx.client).await?;
    let annotated = annotations
        .get(PROTECTED_ANNOTATION)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    let (group, kind) = (resource.group.as_str(), resource.kind.as_str());
    let namespace = obj.namespace();
    // Policies of the object's namespace; for a Namespace, of the namespace it holds; for other
    // cluster-scoped objects (a CRD, an owner), everywhere.
    let scope = match (&namespace, group, kind) {
        (Some(ns), _, _) => Scope::Namespace(ns.clone()),
        (None, "", "Namespace") => Scope::Namespace(obj.name_any()),
        (None, _, _) => Scope::All,
    };
    // `known`: whether the policies could be read, so that what protects the object is known.
    let (protections, known) = match Policies::list(&ctx.client, &scope).await {
        Ok(policies) => {
            let inventory: Inventory =
                inventory(&ctx.client, &policies, &policies.kinds(), &scope).await;
            for problem in &inventory.unreadable {
                eprintln!(
                    "warning: cannot list {problem}; protection through it is not checked here"
                );
            }
            let facts = ObjectFacts {
                group,
                kind,
                namespace: namespace.as_deref(),
                name: &obj.name_any(),
                labels: obj.labels(),
            };
            let hit = cascade_hit(group, kind, &obj, &inventory.index);
            let found = Protections::of(&policies.snapshot, &facts, annotated, hit);
            if found.is_empty() {
                return Err(Failure::new(format!(
                    "nothing to approve: {what} is not protected. No ProtectedResource or \
                     ClusterProtectedResource targets it, it has no {PROTECTED_ANNOTATION}=true \
                     annotation, and deleting it would not delete protected data, so agentguard \
                     does not stop its deletion."
                )));
            }
            (found, true)
        }
        Err(err) => {
            // An identity that may not read policies (an agent's token, typically): the webhook
            // judges the approval on its own.
            eprintln!(
                "warning: cannot read agentguard policies ({}); only the {PROTECTED_ANNOTATION} \
                 annotation is checked here, agentguard's webhook checks the rest",
                policies_failure(err).message
            );
            let direct = if annotated {
                vec![Protection::annotation()]
            } else {
                vec![]
            };
            let found = Protections {
                direct,
                ..Default::default()
            };
            (found, false)
        }
    };
    // With nothing known to protect it (policies unreadable), there is no cap to check here.
    let judged = known || !protections.is_empty();
    if judged && let Some(why) = protections.refusal(window, &username, &groups) {
        return Err(Failure::new(format!(
            "refusing to approve delete of {what}: {why}"
        )));
    }
    let (loss_keys, loss_lines) = backup_losses(group, kind, &obj);
    if !loss_lines.is_empty() && !args.destroy_backups {
        return Err(Failure::new(format!(
            "refusing to approve delete of {what}: deleting it also destroys its backups or its final snapshot:\n  - {}\n\
             Approve with --destroy-backups to accept that loss too, or change those settings first \
             (an approval without it does not count at the deletion).",
            loss_lines.join("\n  - ")
        )));
    }
    let cap = judged.then(|| protections.cap().0);
    let until = approval_until(Timestamp::now(), window);
    let reason = args
        .reason
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty());
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(&approval_patch(&username, until, reason, &loss_keys)),
    )
    .await?;
    let mut line = format!(
        "approved delete of {what} for {}, until {until}, as {username}{}",
        human(window),
        reason
            .map(|r| format!(" (reason: {r})"))
            .unwrap_or_default()
    );
    if !loss_lines.is_empty() {
        line.push_str(&format!(
            "\nincluding the loss of its backups or final snapshot:\n  - {}",
            loss_lines.join("\n  - ")
        ));
    }
    let record = ApprovalRecord {
        approved_by: Some(username),
        approved_until: Some(until.to_string()),
        window: Some(human(window)),
        seconds: Some(window.as_secs()),
        reason: reason.map(str::to_owned),
        protected_by: protections.names(),
        max_ttl: cap.map(human),
        backup_loss: loss_keys,
        ..ApprovalRecord::bare("approved", object)
    };
    emit(ctx.output, &line, &record);
    Ok(ExitCode::SUCCESS)
}

impl ApprovalRecord {
    fn bare(action: &'static str, object: ObjectRecord) -> Self {
        Self {
            action,
            object,
            approved_by: None,
            approved_until: None,
            window: None,
            seconds: None,
            reason: None,
            protected_by: vec![],
            max_ttl: None,
            backup_loss: vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};

    use super::*;
    use crate::api::{ApprovalSpec, Approvers, Mode, ProtectionSpec, Target};
    use crate::policy::{AgentMatcher, PolicyRef, compile};

    fn policy(
        id: PolicyRef,
        max_ttl: Option<&str>,
        approvers: Option<Approvers>,
    ) -> crate::policy::CompiledPolicy {
        let mut spec = ProtectionSpec::new(
            Mode::Enforce,
            vec![Target::kinds(&[""], &["PersistentVolumeClaim"])],
        );
        spec.approval = Some(ApprovalSpec {
            max_ttl: max_ttl.map(Into::into),
            approvers,
        });
        compile(id, &spec).unwrap()
    }

    fn snapshot(policies: Vec<crate::policy::CompiledPolicy>) -> Snapshot {
        Snapshot::new(AgentMatcher::default(), HashSet::new(), policies)
    }

    fn protections(snapshot: &Snapshot, annotated: bool) -> Protections {
        let labels = BTreeMap::new();
        let facts = ObjectFacts {
            group: "",
            kind: "PersistentVolumeClaim",
            namespace: Some("prod"),
            name: "data",
            labels: &labels,
        };
        Protections::of(snapshot, &facts, annotated, None)
    }

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn the_smallest_max_ttl_applies_and_is_named() {
        let snap = snapshot(vec![
            policy(PolicyRef::cluster("volumes"), Some("2h"), None),
            policy(PolicyRef::namespaced("prod", "orders"), Some("20m"), None),
        ]);
        let p = protections(&snap, false);
        assert_eq!(
            p.cap(),
            (
                20 * MIN,
                "the 20m maxTTL of ProtectedResource prod/orders".into()
            )
        );
        assert_eq!(p.refusal(20 * MIN, "alice", &[]), None);
        assert_eq!(
            p.refusal(30 * MIN, "alice", &[]).unwrap(),
            "--for 30m is longer than the 20m maxTTL of ProtectedResource prod/orders; \
             agentguard would reject it. Approve for at most 20m."
        );
        // The annotation brings the default 1h cap, as the webhook applies it.
        let snap = snapshot(vec![policy(
            PolicyRef::cluster("volumes"),
            Some("2h"),
            None,
        )]);
        let p = protections(&snap, true);
        assert_eq!(
            p.cap(),
            (
                60 * MIN,
                "the 1h maxTTL of annotation agentguard.dev/protected=true".into()
            )
        );
        let p = protections(&snapshot(vec![]), false);
        assert!(p.is_empty());
        assert_eq!(
            p.cap(),
            (60 * MIN, "agentguard's default 1h approval window".into())
        );
    }

    #[test]
    fn cascade_roots_take_the_caps_of_the_data_they_would_delete() {
        let snap = snapshot(vec![policy(
            PolicyRef::namespaced("prod", "orders"),
            Some("10m"),
            None,
        )]);
        let labels = BTreeMap::new();
        let facts = ObjectFacts {
            group: "",
            kind: "Namespace",
            namespace: None,
            name: "prod",
            labels: &labels,
        };
        let hit = CascadeHit {
            object: "PersistentVolumeClaim prod/data".into(),
            count: 1,
            annotation: true,
            policies: vec![PolicyRef::namespaced("prod", "orders")],
        };
        let how = format!("deleting it deletes {}", hit.object);
        let p = Protections::of(&snap, &facts, false, Some((hit, how)));
        assert!(p.direct.is_empty() && !p.is_empty());
        assert_eq!(p.cap().0, 10 * MIN);
        assert_eq!(
            p.names(),
            vec![
                "ProtectedResource prod/orders (deleting it deletes PersistentVolumeClaim prod/data)",
                "annotation agentguard.dev/protected=true (deleting it deletes PersistentVolumeClaim prod/data)",
            ]
        );
    }

    #[test]
    fn named_approvers_only() {
        let approvers = Approvers {
            groups: vec!["sre".into()],
            usernames: vec!["bob".into()],
        };
        let snap = snapshot(vec![policy(
            PolicyRef::cluster("volumes"),
            None,
            Some(approvers),
        )]);
        let p = protections(&snap, false);
        assert_eq!(p.refusal(MIN, "bob", &[]), None);
        assert_eq!(p.refusal(MIN, "alice", &["sre".into()]), None);
        assert_eq!(
            p.refusal(MIN, "alice", &["dev".into()]).unwrap(),
            "alice is not an approver of ClusterProtectedResource volumes \
             (approvers: groups sre; usernames bob); ask one of them to approve."
        );
        let open = Approvers::default();
        let snap = snapshot(vec![policy(
            PolicyRef::cluster("volumes"),
            None,
            Some(open),
        )]);
        assert_eq!(protections(&snap, false).refusal(MIN, "alice", &[]), None);
    }

    #[test]
    fn one_patch_sets_or_removes_all_the_approval_annotations() {
        let until: Timestamp = "2026-11-26T10:30:00Z".parse().unwrap();
        assert_eq!(
            approval_patch("alice", until, Some("migrating"), &[]),
            json!({"metadata": {"annotations": {
                "agentguard.dev/approved-by": "alice",
                "agentguard.dev/approved-until": "2026-11-26T10:30:00Z",
                "agentguard.dev/approval-reason": "migrating",
                "agentguard.dev/approved-backup-loss": null,
            }}})
        );
        let loss = [
            "spec.forProvider.skipFinalSnapshot".to_owned(),
            "spec.forProvider.deleteAutomatedBackups".to_owned(),
        ];
        assert_eq!(
            approval_patch("alice", until, None, &loss)["metadata"]["annotations"]["agentguard.dev/approved-backup-loss"],
            "spec.forProvider.skipFinalSnapshot,spec.forProvider.deleteAutomatedBackups"
        );
        assert_eq!(
            approval_patch("alice", until, None, &[])["metadata"]["annotations"]["agentguard.dev/approval-reason"],
            Value::Null
        );
        let revoke = revoke_patch();
        let removed = revoke["metadata"]["annotations"].as_object().unwrap();
        assert_eq!(removed.len(), 4);
        assert!(removed.values().all(Value::is_null));
    }

    /// The approver is told what the deletion also destroys, by the keys the approval lists.
    #[test]
    fn backup_losses_are_named_with_their_meaning() {
        let rds = |forprovider: Value| {
            obj(
                json!({"apiVersion": "rds.aws.upbound.io/v1beta1", "kind": "Instance",
                "metadata": {"name": "orders", "uid": "u"}, "spec": {"forProvider": forprovider}}),
            )
        };
        let (keys, lines) = backup_losses(
            "rds.aws.upbound.io",
            "Instance",
            &rds(json!({"skipFinalSnapshot": true, "deleteAutomatedBackups": false})),
        );
        assert_eq!(keys, ["spec.forProvider.skipFinalSnapshot"]);
        assert!(
            lines[0].starts_with("spec.forProvider.skipFinalSnapshot=true: "),
            "{lines:?}"
        );
        // deleteAutomatedBackups defaults to true: not set, the backups go.
        let (keys, _) = backup_losses("rds.aws.upbound.io", "Instance", &rds(json!({})));
        assert_eq!(keys, ["spec.forProvider.deleteAutomatedBackups"]);
        let (keys, _) = backup_losses(
            "",
            "PersistentVolumeClaim",
            &rds(json!({"skipFinalSnapshot": true})),
        );
        assert!(keys.is_empty());
    }

    #[test]
    fn windows_end_on_a_whole_second_never_later_than_asked() {
        let now: Timestamp = "2026-11-26T10:00:00.987Z".parse().unwrap();
        assert_eq!(
            approval_until(now, 30 * MIN).to_string(),
            "2026-11-26T10:30:00Z"
        );
        assert_eq!(parse_window("30m").unwrap(), 30 * MIN);
        assert_eq!(human(parse_window("1.5h").unwrap()), "1h30m");
        assert_eq!(human(parse_window("20m30s").unwrap()), "20m30s");
        assert_eq!(human(parse_window("90s").unwrap()), "1m30s");
        assert_eq!(parse_window("1h30m").unwrap(), 90 * MIN);
        assert_eq!(parse_window("0s").unwrap_err().code, 2);
        assert_eq!(parse_window("1d").unwrap_err().code, 2);
        assert_eq!(parse_window("soon").unwrap_err().code, 2);
    }

    fn obj(value: Value) -> DynamicObject {
        serde_json::from_value(value).unwrap()
    }

    struct Claims;

    impl ProtectedObjects for Claims {
        fn in_namespace(&self, ns: &str) -> Option<CascadeHit> {
            (ns == "prod").then(hit)
        }
        fn of_kind(&self, group: &str, kind: &str) -> Option<CascadeHit> {
            (group == "db.example.com" && kind == "Database").then(hit)
        }
        fn owned_by(&self, uid: &str) -> Option<CascadeHit> {
            (uid == "owner-1").then(hit)
        }
        fn claims_with_prefix(&self, ns: &str, prefixes: &[String]) -> Option<CascadeHit> {
            (ns == "prod" && prefixes.iter().any(|p| p == "data-db-")).then(hit)
        }
        fn claim(&self, ns: &str, name: &str) -> Option<CascadeHit> {
            (ns == "prod" && name == "data-db-0").then(hit)
        }
    }

    fn hit() -> CascadeHit {
        CascadeHit {
            object: "PersistentVolumeClaim prod/data-db-0".into(),
            count: 1,
            annotation: true,
            policies: vec![],
        }
    }

    #[test]
    fn cascade_roots_are_recognised_like_the_webhook_does() {
        let cases = [
            ("", "Namespace", json!({"metadata": {"name": "prod"}}), true),
            ("", "Namespace", json!({"metadata": {"name": "dev"}}), false),
            (
                "apiextensions.k8s.io",
                "CustomResourceDefinition",
                json!({"metadata": {"name": "databases.db.example.com"}, "spec": {"group": "db.example.com", "names": {"kind": "Database"}}}),
                true,
            ),
            (
                "apps",
                "StatefulSet",
                json!({"metadata": {"name": "db", "namespace": "prod"}, "spec": {"persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete"}, "volumeClaimTemplates": [{"metadata": {"name": "data"}}]}}),
                true,
            ),
            (
                "apps",
                "StatefulSet",
                json!({"metadata": {"name": "db", "namespace": "prod"}, "spec": {"volumeClaimTemplates": [{"metadata": {"name": "data"}}]}}),
                false,
            ),
            (
                "",
                "ConfigMap",
                json!({"metadata": {"name": "c", "namespace": "prod", "uid": "owner-1"}}),
                true,
            ),
            (
                "",
                "ConfigMap",
                json!({"metadata": {"name": "c", "namespace": "prod", "uid": "other"}}),
                false,
            ),
            (
                "",
                "PersistentVolume",
                json!({"metadata": {"name": "pv-1"}, "spec": {"claimRef": {"namespace": "prod", "name": "data-db-0"}}}),
                true,
            ),
            (
                "",
                "PersistentVolume",
                json!({"metadata": {"name": "pv-2"}, "spec": {"claimRef": {"namespace": "prod", "name": "other"}}}),
                false,
            ),
        ];
        for (group, kind, value, root) in cases {
            let mut with_type = value.clone();
            with_type["apiVersion"] = json!("v1");
            with_type["kind"] = json!(kind);
            let o = obj(with_type);
            assert_eq!(
                cascade_hit(group, kind, &o, &Claims).is_some(),
                root,
                "{kind} {value}"
            );
        }
    }
}
