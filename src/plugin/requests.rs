//! DeletionRequests from the terminal: an agent files one (`request <kind>/<name> --reason`),
//! a human answers it (`approve request/<name>`, which approves the target within its policy's
//! maxTTL, or `reject request/<name>`), and `status` lists the pending ones.

use std::process::ExitCode;

use clap::Args;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, ResourceExt};
use serde::Serialize;
use serde_json::json;

use super::approve::{ApproveArgs, whoami};
use super::{Ctx, Failure, Outcome, Output, resolve_resource, split_target};
use crate::api::{
    APPROVED_UNTIL_ANNOTATION, DeletionRequest, DeletionRequestSpec, RequestState, RequestTarget,
};

/// What `approve`/`reject` accept before the slash to mean a DeletionRequest.
pub fn is_request_kind(typed: &str) -> bool {
    matches!(
        typed.to_ascii_lowercase().as_str(),
        "request"
            | "requests"
            | "dr"
            | "deletionrequest"
            | "deletionrequests"
            | "deletionrequests.agentguard.dev"
    )
}

#[derive(Debug, Args)]
pub struct RequestArgs {
    /// The object you need deleted, as <kind>/<name> (e.g. pvc/data).
    pub target: String,
    /// Why you need it deleted: the human who decides reads this.
    #[arg(long)]
    pub reason: String,
}

#[derive(Debug, Args)]
pub struct RejectArgs {
    /// The request, as request/<name>.
    pub target: String,
    /// Why not; the agent reads this.
    #[arg(long)]
    pub reason: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RequestRecord {
    action: &'static str,
    namespace: String,
    name: String,
    target: RequestTarget,
    requester: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    decided_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    approved_until: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

fn emit(output: Output, line: &str, record: &RequestRecord) {
    match output {
        Output::Table => println!("{line}"),
        output => super::print(output, &[], &[], record),
    }
}

fn state(request: &DeletionRequest) -> RequestState {
    request
        .status
        .as_ref()
        .and_then(|s| s.state)
        .unwrap_or_default()
}

/// `kubectl agentguard request <kind>/<name> --reason TEXT`: files a DeletionRequest in the
/// caller's own name.
pub async fn file(ctx: &Ctx, args: RequestArgs) -> Outcome {
    let (typed_kind, name) = split_target(&args.target)?;
    let reason = args.reason.trim();
    if reason.is_empty() {
        return Err(Failure::with_code(2, "--reason must say why"));
    }
    // A request lives in the caller's namespace; a cluster-scoped target is named by name.
    let resolved = resolve_resource(&ctx.client, typed_kind).await?;
    let (username, _) = whoami(&ctx.client).await?;
    let kind = resolved.resource.kind.clone();
    let spec = DeletionRequestSpec {
        target: RequestTarget {
            api_version: resolved.resource.api_version.clone(),
            kind: kind.clone(),
            name: name.to_owned(),
        },
        reason: reason.to_owned(),
        requester: username.clone(),
    };
    let mut request = DeletionRequest::new("", spec);
    request.metadata.name = None;
    request.metadata.generate_name = Some(format!(
        "{}-{}-",
        kind.to_ascii_lowercase(),
        name.chars().take(40).collect::<String>()
    ));
    let api: Api<DeletionRequest> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let created = api.create(&PostParams::default(), &request).await?;
    let request_name = created.name_any();
    let line = format!(
        "filed deletionrequest/{request_name} in {ns}: asks a human to approve delete of {kind} {target}.\n\
         Wait for the answer; do not try another way. A human answers with:\n  \
         kubectl agentguard approve request/{request_name} -n {ns} --for 30m\n  \
         kubectl agentguard reject request/{request_name} -n {ns} --reason \"...\"",
        ns = ctx.namespace,
        target = if resolved.namespaced {
            format!("{}/{name}", ctx.namespace)
        } else {
            name.to_owned()
        },
    );
    emit(
        ctx.output,
        &line,
        &RequestRecord {
            action: "filed",
            namespace: ctx.namespace.clone(),
            name: request_name,
            target: created.spec.target.clone(),
            requester: username,
            decided_by: None,
            approved_until: None,
            reason: Some(reason.to_owned()),
        },
    );
    Ok(ExitCode::SUCCESS)
}

async fn pending(
    ctx: &Ctx,
    name: &str,
) -> Result<(Api<DeletionRequest>, DeletionRequest), Failure> {
    let api: Api<DeletionRequest> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let request = api.get(name).await?;
    let state = state(&request);
    if state != RequestState::Pending {
        return Err(Failure::new(format!(
            "deletionrequest/{name} in {} is {}, not Pending: nothing to answer",
            ctx.namespace,
            state.label()
        )));
    }
    Ok((api, request))
}

async fn answer(
    api: &Api<DeletionRequest>,
    name: &str,
    state: RequestState,
    by: &str,
    approved_until: Option<Timestamp>,
    message: Option<&str>,
) -> Result<(), Failure> {
    let mut status = json!({
        "state": state,
        "decidedBy": by,
        "decidedAt": Time(Timestamp::now()),
    });
    if let Some(until) = approved_until {
        status["approvedUntil"] = json!(Time(until));
    }
    if let Some(m) = message {
        status["message"] = json!(m);
    }
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({ "status": status })),
    )
    .await?;
    Ok(())
}

/// `approve request/<name>`: approves the request's target as `approve <kind>/<name>` would
/// (same checks: maxTTL, approvers), then marks the request Approved.
pub async fn approve(ctx: &Ctx, name: &str, args: ApproveArgs) -> Outcome {
    if args.revoke {
        return Err(Failure::with_code(
            2,
            "--revoke applies to an object's approval: kubectl agentguard approve <kind>/<name> --revoke",
        ));
    }
    let (api, request) = pending(ctx, name).await?;
    let target = &request.spec.target;
    let group = target
        .api_version
        .split_once('/')
        .map(|(g, _)| g)
        .unwrap_or_default();
    let typed = if group.is_empty() {
        target.kind.to_ascii_lowercase()
    } else {
        format!("{}.{group}", target.kind.to_ascii_lowercase())
    };
    let reason = args
        .reason
        .clone()
        .unwrap_or_else(|| format!("request {name}: {}", request.spec.reason));
    let code = super::approve::run(
        ctx,
        ApproveArgs {
            target: format!("{typed}/{}", target.name),
            window: args.window.clone(),
            reason: Some(reason.clone()),
            revoke: false,
            destroy_backups: args.destroy_backups,
        },
    )
    .await?;
    // The approval the target now carries.
    let resolved = resolve_resource(&ctx.client, &typed).await?;
    let objects: Api<kube::api::DynamicObject> = if resolved.namespaced {
        Api::namespaced_with(ctx.client.clone(), &ctx.namespace, &resolved.resource)
    } else {
        Api::all_with(ctx.client.clone(), &resolved.resource)
    };
    let until = objects
        .get(&target.name)
        .await?
        .annotations()
        .get(APPROVED_UNTIL_ANNOTATION)
        .and_then(|u| u.parse::<Timestamp>().ok());
    let (username, _) = whoami(&ctx.client).await?;
    answer(
        &api,
        name,
        RequestState::Approved,
        &username,
        until,
        Some(&reason),
    )
    .await?;
    if ctx.output == Output::Table {
        println!(
            "deletionrequest/{name} from {} is Approved",
            request.spec.requester
        );
    }
    Ok(code)
}

/// `reject request/<name>`.
pub async fn reject(ctx: &Ctx, args: RejectArgs) -> Outcome {
    let (typed, name) = split_target(&args.target)?;
    if !is_request_kind(typed) {
        return Err(Failure::with_code(
            2,
            format!("reject takes request/<name>, got {:?}", args.target),
        ));
    }
    let (api, request) = pending(ctx, name).await?;
    let (username, _) = whoami(&ctx.client).await?;
    let reason = args
        .reason
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty());
    answer(&api, name, RequestState::Rejected, &username, None, reason).await?;
    let target = &request.spec.target;
    emit(
        ctx.output,
        &format!(
            "rejected deletionrequest/{name} from {} to delete {} {}{}",
            request.spec.requester,
            target.kind,
            target.name,
            reason
                .map(|r| format!(" (reason: {r})"))
                .unwrap_or_default()
        ),
        &RequestRecord {
            action: "rejected",
            namespace: ctx.namespace.clone(),
            name: name.to_owned(),
            target: target.clone(),
            requester: request.spec.requester.clone(),
            decided_by: Some(username),
            approved_until: None,
            reason: reason.map(str::to_owned),
        },
    );
    Ok(ExitCode::SUCCESS)
}

/// One pending request, for `status`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingRow {
    pub namespace: String,
    pub name: String,
    pub target: String,
    pub requester: String,
    pub reason: String,
    pub age: String,
}

/// Pending requests in `namespace` (None: all), oldest first.
pub async fn pending_rows(client: &kube::Client, namespace: Option<&str>) -> Vec<PendingRow> {
    let api: Api<DeletionRequest> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let Ok(list) = api.list(&ListParams::default()).await else {
        return Vec::new();
    };
    let now = Timestamp::now();
    let mut rows: Vec<(Timestamp, PendingRow)> = list
        .items
        .into_iter()
        .filter(|r| state(r) == RequestState::Pending)
        .map(|r| {
            let created = r
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0)
                .unwrap_or(now);
            let row = PendingRow {
                namespace: r.namespace().unwrap_or_default(),
                name: r.name_any(),
                target: format!("{} {}", r.spec.target.kind, r.spec.target.name),
                requester: r.spec.requester.clone(),
                reason: r.spec.reason.clone(),
                age: super::human_duration(now.duration_since(created).as_secs()),
            };
            (created, row)
        })
        .collect();
    rows.sort_by_key(|(t, _)| *t);
    rows.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_kinds_read_like_kubectl() {
        for typed in ["request", "dr", "DeletionRequest", "deletionrequests"] {
            assert!(is_request_kind(typed), "{typed}");
        }
        assert!(!is_request_kind("pvc"));
    }
}
