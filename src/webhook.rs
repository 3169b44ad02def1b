//! The HTTP edges: the admission endpoint (served over TLS) and the operational endpoints
//! (`/metrics`, `/healthz`, `/readyz`, plain HTTP). Handlers are thin adapters: parse, call
//! [`crate::policy::decide`], answer, count.
//!
//! Every review the API server sends gets a review back with the request's uid; HTTP errors are
//! reserved for bodies that are not reviews at all (wrong content type, malformed, too large).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::core::response::StatusSummary;
use tower_http::timeout::TimeoutLayer;

use crate::api::PROTECTED_ANNOTATION;
use crate::index::objects::{Known, ObjectIndex};
use crate::index::{AnnotatedKinds, AnnotatedWrite};
use crate::index::{Block, BlockLedger, BlockedAttempt, Readiness, SharedObjects, SharedSnapshot};
use crate::metrics::{self, Metrics};
use crate::policy::{self, Decision, ObjectRef, Verdict};
use k8s_openapi::api::core::v1::ObjectReference;

/// The API server's own request limit is 3 MiB per object; an UPDATE review carries the old
/// and the new object plus envelope, so the default leaves room for two full objects.
pub const DEFAULT_MAX_REVIEW_BYTES: usize = 8 * 1024 * 1024;

/// Longest time one request may take end to end, body included (slow senders are cut off).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the admission handler reads on every request.
#[derive(Debug)]
pub struct AdmissionState {
    pub snapshot: SharedSnapshot,
    pub objects: SharedObjects,
    pub metrics: Metrics,
    pub ledger: BlockLedger,
}

impl AdmissionState {
    /// Runs `judge` on the current snapshot and object index, as both endpoints do.
    fn with_view<T>(&self, judge: impl FnOnce(&policy::Snapshot, &ObjectIndex) -> T) -> T {
        // A poisoned lock means a watcher panicked mid-update; the index is still the best
        // view there is, and refusing to judge would block every deletion.
        let objects = self.objects.read().unwrap_or_else(|e| e.into_inner());
        judge(&self.snapshot.load(), &objects)
    }
}

/// Router for the HTTPS admission endpoints: `/validate` and `/seal` (approvals).
pub fn admission_router(state: Arc<AdmissionState>, max_review_bytes: usize) -> Router {
    limited(
        Router::new()
            .route("/validate", post(validate))
            .route("/seal", post(seal)),
        max_review_bytes,
    )
    .with_state(state)
}

/// The limits every admission endpoint shares: body size and time end to end.
fn limited<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    max_review_bytes: usize,
) -> Router<S> {
    router
        .layer(DefaultBodyLimit::max(max_review_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
}

/// Router for `/annotate`, the webhook that learns kinds from the `agentguard.dev/protected`
/// annotation (merged into the admission router by the runtime).
pub fn annotate_router(kinds: AnnotatedKinds, max_review_bytes: usize) -> Router {
    limited(
        Router::new().route("/annotate", post(annotate)),
        max_review_bytes,
    )
    .with_state(kinds)
}

/// Someone annotated an object of a kind agentguard does not route yet: record the kind (when
/// the API server serves it) and tell them, in a warning kubectl prints, whether agentguard
/// now guards it or which RBAC rule it lacks. Never refuses: the annotation itself is fine.
async fn annotate(
    State(kinds): State<AnnotatedKinds>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = match parse_review(&headers, &body) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    let mut response = AdmissionResponse::from(&request);
    let object = request.object.as_ref();
    let protected = object
        .and_then(|o| o.metadata.annotations.as_ref())
        .and_then(|a| a.get(PROTECTED_ANNOTATION))
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    if protected
        && request
            .sub_resource
            .as_deref()
            .unwrap_or_default()
            .is_empty()
    {
        let name = object
            .and_then(|o| o.metadata.name.clone())
            .unwrap_or_else(|| request.name.clone());
        let write = AnnotatedWrite {
            group: request.kind.group.clone(),
            version: request.kind.version.clone(),
            kind: request.kind.kind.clone(),
            resource: request.resource.resource.clone(),
            namespace: request.namespace.clone().filter(|ns| !ns.is_empty()),
            name,
            dry_run: request.dry_run,
        };
        if let Some(warning) = kinds.admit(&write).await {
            response.warnings = Some(vec![warning]);
        }
    }
    json_review(response)
}

/// Reads the body as an `admission.k8s.io/v1` AdmissionReview with a request; anything else
/// gets the HTTP error (or, for a review without a request, the invalid review) to send back.
fn parse_review(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<AdmissionRequest<DynamicObject>, Box<Response>> {
    if !is_json(headers) {
        return Err(Box::new(plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected Content-Type: application/json",
        )));
    }
    let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(body) {
        Ok(review) => review,
        Err(err) => {
            tracing::warn!(error = %err, "malformed AdmissionReview");
            return Err(Box::new(plain(
                StatusCode::BAD_REQUEST,
                &format!("malformed AdmissionReview: {err}"),
            )));
        }
    };
    // Only what the API server sends (the configuration asks for v1): anything else is not a
    // review, and answering it would echo a type the caller did not ask about.
    if review.types.api_version != "admission.k8s.io/v1" || review.types.kind != "AdmissionReview" {
        return Err(Box::new(plain(
            StatusCode::BAD_REQUEST,
            "malformed AdmissionReview: expected apiVersion admission.k8s.io/v1, kind AdmissionReview",
        )));
    }
    review.try_into().map_err(|_| {
        tracing::warn!("AdmissionReview without a request");
        Box::new(json_review(AdmissionResponse::invalid(
            "AdmissionReview has no request",
        )))
    })
}

/// The sealing (mutating) webhook: adds agentguard's seal to an approval it accepts, removes
/// a seal that no longer verifies. It never refuses; `/validate`, which the API server calls
/// after every mutating webhook, decides.
async fn seal(
    State(state): State<Arc<AdmissionState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = match parse_review(&headers, &body) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    let patch = state.with_view(|snapshot, objects| {
        policy::seal_patch(&request, snapshot, objects, jiff::Timestamp::now())
    });
    let response = AdmissionResponse::from(&request);
    let Some(patch) = patch else {
        return json_review(response);
    };
    let sealed = patch
        .0
        .iter()
        .any(|op| matches!(op, json_patch::PatchOperation::Add(_)));
    tracing::info!(
        uid = %request.uid,
        user = request.user_info.username.as_deref().unwrap_or_default(),
        kind = %request.kind.kind,
        namespace = request.namespace.as_deref().unwrap_or_default(),
        name = %request.name,
        sealed,
        "approval {}", if sealed { "sealed" } else { "seal removed" }
    );
    match response.clone().with_patch(patch) {
        Ok(patched) => json_review(patched),
        Err(err) => {
            // Without the seal the approval counts for nothing: safe, and /validate says why.
            tracing::error!(error = %err, "cannot serialize the seal patch");
            json_review(response)
        }
    }
}

async fn validate(
    State(state): State<Arc<AdmissionState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = match parse_review(&headers, &body) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    let started = Instant::now();
    let target = request.old_object.as_ref().or(request.object.as_ref());
    let uid = target
        .and_then(|o| o.metadata.uid.clone())
        .unwrap_or_default();
    let (decision, labels) = state.with_view(|snapshot, objects| {
        let decision = policy::decide(&request, snapshot, objects, jiff::Timestamp::now());
        let decision = refuse_if_stale(&request, snapshot, objects, decision);
        let labels = Labels::of(&decision, &uid, snapshot, objects);
        (decision, labels)
    });
    let response = respond(&request, &decision);
    record(
        &state.metrics,
        &request,
        &decision,
        &labels,
        started.elapsed(),
    );
    // Denials are attempts to show on the object; so are deletions an Audit-mode policy let
    // through (what it would have refused, for the PolicyReports).
    let denied = decision.verdict == Verdict::Deny
        && decision.approval != Some(policy::ApprovalEvent::Rejected);
    let audited = decision.verdict == Verdict::Audit;
    if (denied || audited) && !request.dry_run {
        let object = &decision.object;
        let subject = request.user_info.username.as_deref().unwrap_or_default();
        let block = Block {
            policy: decision.decided_by.clone().filter(|_| denied),
            attempt: BlockedAttempt {
                object: ObjectReference {
                    api_version: Some(match request.kind.group.as_str() {
                        "" => request.kind.version.clone(),
                        group => format!("{group}/{}", request.kind.version),
                    }),
                    kind: Some(object.kind.clone()),
                    namespace: object.namespace.clone(),
                    name: Some(object.name.clone()),
                    uid: Some(uid),
                    ..Default::default()
                },
                subject: subject.to_owned(),
                protected_by: decision.policy.clone().unwrap_or_default(),
                count: 1,
                audited,
            },
        };
        // Recorded (status count, Event, PolicyReport) only for an object the index vouches
        // for: anyone who reaches this endpoint can name any object and any subject.
        let index = state.objects.read().unwrap_or_else(|e| e.into_inner());
        state.ledger.submit(block, &index);
    }
    json_review(response)
}

/// Invariant 5 in time: while the policies, agents or the API connection are older than the
/// staleness bound (`--max-staleness`), a restricted identity's write that agentguard would
/// let through is refused instead, with a reason that says so. Denials stand (refusing is
/// safe whatever changed unseen); everyone else, humans and the cluster's controllers, keeps
/// being judged as before.
fn refuse_if_stale(
    request: &AdmissionRequest<DynamicObject>,
    snapshot: &policy::Snapshot,
    objects: &ObjectIndex,
    mut decision: Decision,
) -> Decision {
    if decision.verdict == Verdict::Deny {
        return decision;
    }
    let Some(stale) = objects.stale() else {
        return decision;
    };
    let username = request.user_info.username.as_deref().unwrap_or_default();
    let groups = request.user_info.groups.as_deref().unwrap_or_default();
    let Some(restriction) = snapshot.restricted_anywhere(username, groups) else {
        return decision;
    };
    let object = &decision.object;
    let operation = format!("{:?}", request.operation).to_lowercase();
    decision.message = Some(format!(
        "agentguard: DENIED {operation} of {} {} by {username}: agentguard's view of policies and protected \
         objects is stale ({stale}), so it cannot tell whether this is safe. Retry in a minute; if it is \
         refused again, stop and ask a human.",
        object.kind,
        object.qualified_name()
    ));
    decision.verdict = Verdict::Deny;
    decision.reason = format!("{}; stale state", restriction.reason);
    decision.warning = None;
    decision.approval = None;
    decision.decided_by = None;
    decision
}

/// Kinds agentguard judges whatever the policies say: cascade roots, the kinds it always
/// routes, the default annotation kinds, and the kinds of the deletion-by-proxy table.
const BUILTIN_KINDS: &[(&str, &str)] = &[
    ("", "Namespace"),
    ("apiextensions.k8s.io", "CustomResourceDefinition"),
    ("apps", "StatefulSet"),
    ("", "ServiceAccount"),
    ("", "PersistentVolume"),
    ("", "PersistentVolumeClaim"),
    ("snapshot.storage.k8s.io", "VolumeSnapshot"),
    ("snapshot.storage.k8s.io", "VolumeSnapshotContent"),
    (crate::api::GROUP, "ProtectedResource"),
    (crate::api::GROUP, "ClusterProtectedResource"),
    (crate::api::GROUP, "DeletionRequest"),
];

/// The metric labels a review is counted under, each from a bounded set (anything else is
/// [`metrics::OTHER`]): a review's kind, namespace and policy are whatever its sender wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Labels {
    /// The plural of a kind agentguard knows (built in, targeted by a policy, listed by the
    /// index, or the kind of an owner the index knows by this uid), when the review's plural
    /// is that kind's.
    resource: String,
    /// A namespace known to exist: the index holds a protected object there, or the object
    /// itself, or a ProtectedResource lives there. Empty for cluster-scoped objects.
    namespace: String,
    /// `annotation`, a policy of the snapshot, or empty.
    policy: Option<String>,
}

impl Labels {
    fn of(
        decision: &Decision,
        uid: &str,
        snapshot: &policy::Snapshot,
        index: &ObjectIndex,
    ) -> Self {
        let object: &ObjectRef = &decision.object;
        let known = index.known(uid);
        let (group, kind) = (object.group.as_str(), object.kind.as_str());
        let known_kind = BUILTIN_KINDS.contains(&(group, kind))
            || policy::PROXY_RULES.iter().any(|r| match r.applies {
                policy::Applies::Update(g, k)
                | policy::Applies::Create(g, k)
                | policy::Applies::Write(g, k) => g == group && k == kind,
                _ => false,
            })
            || index.has_listed(group, kind)
            || snapshot
                .policies()
                .iter()
                .any(|p| p.kinds().any(|(g, k)| g == group && k == kind))
            || matches!(known, Some(Known::Owner { group: g, kind: k, .. }) if g == group && k == kind);
        // A subresource's review names the parent's resource with the subresource's kind
        // (`statefulsets` with kind Scale): the proxy table's subresources are known as such.
        let known_subresource = policy::PROXY_RULES.iter().any(|r| {
            matches!(r.applies, policy::Applies::Subresource(_, resource, _) if resource == object.resource)
        });
        let resource =
            if known_subresource || (known_kind && object.resource == plural(group, kind)) {
                object.resource.clone()
            } else {
                metrics::OTHER.to_owned()
            };
        let namespace = match object.namespace.as_deref() {
            None => String::new(),
            Some(ns)
                if index.has_protected_in(ns)
                    || matches!(known, Some(Known::Object(key)) if key.namespace.as_deref() == Some(ns))
                    || snapshot
                        .policies()
                        .iter()
                        .any(|p| p.id.namespace.as_deref() == Some(ns)) =>
            {
                ns.to_owned()
            }
            Some(_) => metrics::OTHER.to_owned(),
        };
        // Decisions name only policies of the snapshot; checked all the same.
        let policy = decision.policy.as_ref().map(|label| {
            let known = label == crate::api::ANNOTATION_POLICY
                || snapshot.policies().iter().any(|p| &p.id.label() == label);
            if known {
                label.clone()
            } else {
                metrics::OTHER.to_owned()
            }
        });
        Self {
            resource,
            namespace,
            policy,
        }
    }
}

/// The plural Kubernetes derives from a kind (`PersistentVolumeClaim` → `persistentvolumeclaims`).
fn plural(group: &str, kind: &str) -> String {
    kube::core::ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(group, "v1", kind)).plural
}

/// Builds the answer for a decision, keeping the request's uid. Denials carry code 403 and
/// reason Forbidden so kubectl prints the message as `Error from server (Forbidden): ...`.
fn respond(request: &AdmissionRequest<DynamicObject>, decision: &Decision) -> AdmissionResponse {
    let mut response = AdmissionResponse::from(request);
    let annotations = &mut response.audit_annotations;
    annotations.insert("decision".into(), decision.verdict.label().into());
    annotations.insert("reason".into(), decision.reason.clone());
    if let Some(policy) = &decision.policy {
        annotations.insert("policy".into(), policy.clone());
    }
    if let Some(exemption) = decision.exemption {
        annotations.insert("exemption".into(), exemption.into());
    }
    if let Some(warning) = &decision.warning {
        response.warnings = Some(vec![warning.clone()]);
    }
    if decision.verdict == Verdict::Deny {
        response = response.deny(decision.message.as_deref().unwrap_or(&decision.reason));
        response.result.status = Some(StatusSummary::Failure);
        response.result.code = 403;
        response.result.reason = "Forbidden".into();
    }
    response
}

fn record(
    metrics: &Metrics,
    request: &AdmissionRequest<DynamicObject>,
    decision: &Decision,
    labels: &Labels,
    elapsed: Duration,
) {
    let operation = operation_label(request);
    let object = &decision.object;
    let username = request.user_info.username.as_deref().unwrap_or_default();
    metrics.admission(
        operation,
        &labels.resource,
        decision.verdict.label(),
        request.dry_run,
        elapsed.as_secs_f64(),
    );
    if let Some(event) = decision.approval {
        metrics.approval(event.label());
    }
    if decision.verdict == Verdict::Deny
        && !request.dry_run
        && decision.approval != Some(policy::ApprovalEvent::Rejected)
    {
        metrics.deletion_blocked(
            &labels.namespace,
            &labels.resource,
            username,
            labels.policy.as_deref().unwrap_or_default(),
        );
    }
    let namespace = object.namespace.as_deref().unwrap_or_default();
    if decision.verdict == Verdict::Allow
        && decision.exemption.is_none()
        && decision.approval.is_none()
    {
        tracing::debug!(
            uid = %request.uid, operation, user = username, kind = %object.kind, namespace,
            name = %object.name, reason = %decision.reason, "allowed"
        );
    } else {
        tracing::info!(
            uid = %request.uid, operation, user = username, kind = %object.kind, namespace,
            name = %object.name, dry_run = request.dry_run, decision = decision.verdict.label(),
            policy = decision.policy.as_deref().unwrap_or_default(), reason = %decision.reason,
            "judged"
        );
    }
}

fn operation_label(request: &AdmissionRequest<DynamicObject>) -> &'static str {
    use kube::core::admission::Operation;
    match request.operation {
        Operation::Create => "CREATE",
        Operation::Update => "UPDATE",
        Operation::Delete => "DELETE",
        Operation::Connect => "CONNECT",
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

fn plain(status: StatusCode, line: &str) -> Response {
    // One line, whatever the parser said, so logs and clients show it whole.
    let line: String = line.lines().collect::<Vec<_>>().join(" ");
    (status, format!("{line}\n")).into_response()
}

fn json_review(response: AdmissionResponse) -> Response {
    axum::Json(response.into_review()).into_response()
}

#[derive(Clone)]
struct OpsState {
    metrics: Metrics,
    readiness: Readiness,
}

/// Router for the plain-HTTP operational endpoints.
pub fn ops_router(metrics: Metrics, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(OpsState { metrics, readiness })
}

async fn metrics_handler(State(state): State<OpsState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn readyz(State(state): State<OpsState>) -> Response {
    match state.readiness.not_ready() {
        None => (StatusCode::OK, "ok\n").into_response(),
        Some(why) => plain(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("not ready: {why}"),
        ),
    }
}
