//! HTTP-edge tests: the admission and ops routers driven with `oneshot`, no sockets.
//! They check what the API server and probes see: status codes, uids, denial shape, metrics.

use std::sync::Arc;

use agentguard::index::{Readiness, SharedSnapshot};
use agentguard::metrics::Metrics;
use agentguard::policy::{AgentDefinition, AgentMatcher, Snapshot};
use agentguard::webhook::{self, AdmissionState};
use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt;

const LIMIT: usize = 64 * 1024;
const UID: &str = "5b0c2a35-9f5e-4a5e-9d2e-1f0c3c1e7a11";

fn state() -> Arc<AdmissionState> {
    state_with_keys(Default::default())
}

/// Agents are the ServiceAccounts of namespace `agents`; approvals are sealed with `keys`.
fn state_with_keys(keys: agentguard::policy::Keyring) -> Arc<AdmissionState> {
    let agents = AgentMatcher::new(&AgentDefinition {
        service_accounts: vec!["agents/*".into()],
        ..Default::default()
    })
    .unwrap();
    Arc::new(AdmissionState {
        snapshot: SharedSnapshot::new(
            Snapshot::new(agents, Default::default(), vec![]).with_keys(keys),
        ),
        metrics: Metrics::new(),
        ledger: Default::default(),
        objects: Default::default(),
    })
}

fn review(username: &str, protected: bool, dry_run: bool) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": UID,
            "kind": {"group": "", "version": "v1", "kind": "PersistentVolumeClaim"},
            "resource": {"group": "", "version": "v1", "resource": "persistentvolumeclaims"},
            "requestKind": {"group": "", "version": "v1", "kind": "PersistentVolumeClaim"},
            "requestResource": {"group": "", "version": "v1", "resource": "persistentvolumeclaims"},
            "name": "data",
            "namespace": "prod",
            "operation": "DELETE",
            "userInfo": {"username": username, "uid": "1", "groups": ["system:serviceaccounts", "system:authenticated"]},
            "object": null,
            "oldObject": {
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {
                    "name": "data", "namespace": "prod", "uid": "abc",
                    "annotations": if protected { json!({"agentguard.dev/protected": "true"}) } else { json!({}) },
                    "managedFields": [{"manager": "kubectl", "operation": "Update"}]
                },
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
                "status": {"phase": "Pending"}
            },
            "dryRun": dry_run,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        }
    })
}

async fn post(
    router: Router,
    content_type: Option<&str>,
    body: impl Into<Body>,
) -> (StatusCode, Vec<u8>) {
    let mut req = Request::post("/validate");
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let resp = router
        .oneshot(req.body(body.into()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    (
        status,
        to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec(),
    )
}

async fn post_review(router: Router, review: &Value) -> Value {
    let (status, body) = post(router, Some("application/json"), review.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test]
async fn agent_delete_of_protected_object_is_denied_with_403_and_uid() {
    let out = post_review(
        webhook::admission_router(state(), LIMIT),
        &review("system:serviceaccount:agents:cursor", true, false),
    )
    .await;
    assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(out["kind"], "AdmissionReview");
    let r = &out["response"];
    assert_eq!(r["uid"], UID);
    assert_eq!(r["allowed"], false);
    assert_eq!(r["status"]["code"], 403);
    assert_eq!(r["status"]["reason"], "Forbidden");
    let message = r["status"]["message"].as_str().unwrap();
    assert!(message.starts_with("agentguard: DENIED delete of PersistentVolumeClaim prod/data by system:serviceaccount:agents:cursor."), "{message}");
    assert_eq!(r["auditAnnotations"]["decision"], "denied");
    assert_eq!(r["auditAnnotations"]["policy"], "annotation");
}

#[tokio::test]
async fn other_requests_are_allowed_with_uid() {
    for (user, protected) in [
        ("system:serviceaccount:agents:cursor", false),
        ("alice", true),
    ] {
        let out = post_review(
            webhook::admission_router(state(), LIMIT),
            &review(user, protected, false),
        )
        .await;
        assert_eq!(out["response"]["uid"], UID);
        assert_eq!(out["response"]["allowed"], true, "{user}");
        assert_eq!(out["response"]["auditAnnotations"]["decision"], "allowed");
    }
}

/// Puts the claim `prod/data` (uid `abc`, annotated protected) in the index, as its watch does.
fn index_claim(state: &AdmissionState) {
    use agentguard::index::objects::{ObjectEntry, ObjectKey};
    let annotations = [("agentguard.dev/protected".to_owned(), "true".to_owned())].into();
    let entry = ObjectEntry::new(
        ObjectKey {
            group: "".into(),
            kind: "PersistentVolumeClaim".into(),
            namespace: Some("prod".into()),
            name: "data".into(),
        },
        "abc",
        Default::default(),
        &annotations,
        vec![],
    );
    state
        .objects
        .write()
        .unwrap()
        .upsert(entry, &state.snapshot.load());
}

/// A review of `kind` (plural `resource`) `namespace/name` with uid `uid`, annotated protected,
/// deleted by `username`: what a caller who reaches the Service can write.
fn forged(
    kind: &str,
    resource: &str,
    namespace: &str,
    name: &str,
    uid: &str,
    username: &str,
) -> Value {
    let mut r = review(username, true, false);
    let req = &mut r["request"];
    req["kind"]["kind"] = json!(kind);
    req["requestKind"]["kind"] = json!(kind);
    req["resource"]["resource"] = json!(resource);
    req["requestResource"]["resource"] = json!(resource);
    req["namespace"] = json!(namespace);
    req["name"] = json!(name);
    req["oldObject"]["kind"] = json!(kind);
    req["oldObject"]["metadata"]["namespace"] = json!(namespace);
    req["oldObject"]["metadata"]["name"] = json!(name);
    req["oldObject"]["metadata"]["uid"] = json!(uid);
    r
}

#[tokio::test]
async fn forged_reviews_get_bounded_labels_and_record_nothing() {
    use agentguard::index::VERIFY_WINDOW;
    use agentguard::metrics::SUBJECT_CAP;
    let state = state();
    index_claim(&state);
    let router = webhook::admission_router(state.clone(), LIMIT);
    for i in 0..300 {
        let out = post_review(
            router.clone(),
            &forged(
                &format!("Widget{i}"),
                &format!("widget{i}s"),
                &format!("ns-{i}"),
                &format!("obj-{i}"),
                &format!("forged-{i}"),
                &format!("system:serviceaccount:agents:forged-{i}"),
            ),
        )
        .await;
        // The caller still gets the safe answer.
        assert_eq!(out["response"]["allowed"], false);
    }
    // Known kind and name, forged uid: framing a real claim.
    let out = post_review(
        router.clone(),
        &forged(
            "PersistentVolumeClaim",
            "persistentvolumeclaims",
            "prod",
            "data",
            "not-the-claims-uid",
            "system:serviceaccount:agents:framed",
        ),
    )
    .await;
    assert_eq!(out["response"]["allowed"], false);
    let text = state.metrics.render();
    let series = |metric: &str| {
        text.lines()
            .filter(|l| l.starts_with(&format!("{metric}{{")))
            .collect::<Vec<_>>()
    };
    let requests = series("agentguard_admission_requests_total");
    assert_eq!(requests.len(), 2, "{requests:#?}");
    assert!(
        requests
            .iter()
            .any(|l| l.contains(r#"resource="other""#) && l.ends_with(" 300")),
        "{requests:#?}"
    );
    let blocked = series("agentguard_deletions_blocked_total");
    assert!(blocked.len() <= SUBJECT_CAP + 2, "{} series", blocked.len());
    for line in &blocked {
        assert!(
            line.contains(r#"namespace="other""#) || line.contains(r#"namespace="prod""#),
            "{line}"
        );
    }
    assert!(
        blocked
            .iter()
            .any(|l| l.contains(r#"resource="other""#) && l.contains(r#"subject="other""#)),
        "{blocked:#?}"
    );
    // Nothing recorded, now or once the index had every chance to vouch for the objects.
    let later = std::time::Instant::now() + VERIFY_WINDOW + VERIFY_WINDOW;
    state
        .ledger
        .verify_pending(&state.objects.read().unwrap(), later);
    assert_eq!(state.ledger.unverified(), 0);
    assert!(state.ledger.drain_attempts().is_empty());
    assert!(state.ledger.drain().is_empty());
}

#[tokio::test]
async fn blocks_on_indexed_objects_are_recorded_as_the_index_names_them() {
    let state = state();
    let router = webhook::admission_router(state.clone(), LIMIT);
    // The review arrives before the claim's watch event: it waits for the index.
    let agent = "system:serviceaccount:agents:cursor";
    post_review(router.clone(), &review(agent, true, false)).await;
    assert_eq!(state.ledger.unverified(), 1);
    index_claim(&state);
    state
        .ledger
        .verify_pending(&state.objects.read().unwrap(), std::time::Instant::now());
    // A review naming the claim's uid under another name is recorded on the claim.
    post_review(
        router,
        &forged(
            "PersistentVolumeClaim",
            "persistentvolumeclaims",
            "prod",
            "other-name",
            "abc",
            agent,
        ),
    )
    .await;
    let attempts = state.ledger.drain_attempts();
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(attempts[0].count, 2);
    assert_eq!(attempts[0].object.name.as_deref(), Some("data"));
    assert_eq!(attempts[0].object.uid.as_deref(), Some("abc"));
}

#[tokio::test]
async fn metrics_count_blocks_but_not_dry_runs() {
    let state = state();
    index_claim(&state);
    let router = webhook::admission_router(state.clone(), LIMIT);
    post_review(
        router.clone(),
        &review("system:serviceaccount:agents:cursor", true, false),
    )
    .await;
    let dry = post_review(
        router,
        &review("system:serviceaccount:agents:cursor", true, true),
    )
    .await;
    assert_eq!(
        dry["response"]["allowed"], false,
        "dry runs are judged the same"
    );
    let text = state.metrics.render();
    let has = |line: &str| text.lines().any(|l| l == line);
    assert!(
        has(
            r#"agentguard_deletions_blocked_total{namespace="prod",policy="annotation",resource="persistentvolumeclaims",subject="system:serviceaccount:agents:cursor"} 1"#
        ),
        "{text}"
    );
    assert!(
        has(
            r#"agentguard_admission_requests_total{decision="denied",dry_run="true",operation="DELETE",resource="persistentvolumeclaims"} 1"#
        ),
        "{text}"
    );
    assert!(
        has(
            r#"agentguard_admission_requests_total{decision="denied",dry_run="false",operation="DELETE",resource="persistentvolumeclaims"} 1"#
        ),
        "{text}"
    );
}

#[tokio::test]
async fn warn_mode_answers_allowed_with_a_warning() {
    use agentguard::api::{Mode, ProtectionSpec, Target};
    use agentguard::policy::{PolicyRef, compile};
    let spec = ProtectionSpec::new(
        Mode::Warn,
        vec![Target::kinds(&[""], &["PersistentVolumeClaim"])],
    );
    let policy = compile(PolicyRef::cluster("volumes"), &spec).unwrap();
    let agents = AgentMatcher::new(&AgentDefinition {
        service_accounts: vec!["agents/*".into()],
        ..Default::default()
    })
    .unwrap();
    let state = Arc::new(AdmissionState {
        snapshot: SharedSnapshot::new(Snapshot::new(agents, Default::default(), vec![policy])),
        metrics: Metrics::new(),
        ledger: Default::default(),
        objects: Default::default(),
    });
    let out = post_review(
        webhook::admission_router(state, LIMIT),
        &review("system:serviceaccount:agents:cursor", false, false),
    )
    .await;
    let r = &out["response"];
    assert_eq!(r["allowed"], true);
    assert_eq!(r["auditAnnotations"]["decision"], "warned");
    assert_eq!(
        r["auditAnnotations"]["policy"],
        "ClusterProtectedResource/volumes"
    );
    let warning = r["warnings"][0].as_str().unwrap();
    assert!(warning.starts_with("agentguard: delete of PersistentVolumeClaim prod/data by system:serviceaccount:agents:cursor is protected by ClusterProtectedResource volumes"), "{warning}");
}

#[tokio::test]
async fn malformed_json_is_400_with_one_line() {
    for body in [
        "{",
        "not json",
        r#"{"request": {"uid": 5}}"#,
        &"[".repeat(10_000),
    ] {
        let (status, out) = post(
            webhook::admission_router(state(), LIMIT),
            Some("application/json"),
            body.to_string(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body:.40}");
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("malformed AdmissionReview: "), "{text}");
        assert_eq!(text.trim_end().lines().count(), 1, "{text}");
    }
}

/// Found by fuzzing: a body with another kind or apiVersion was answered as if it were a
/// review, echoing the caller's type back. Only admission.k8s.io/v1 AdmissionReviews are.
#[tokio::test]
async fn only_v1_admission_reviews_are_answered() {
    for (api_version, kind) in [
        ("admission.k8s.io/v1", "AdmissionRevi.ew"),
        ("admission.k8s.io/v1beta1", "AdmissionReview"),
        ("v1", "Pod"),
    ] {
        let mut body = review("system:serviceaccount:agents:bot", true, false);
        body["apiVersion"] = json!(api_version);
        body["kind"] = json!(kind);
        let (status, out) = post(
            webhook::admission_router(state(), LIMIT),
            Some("application/json"),
            body.to_string(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{api_version} {kind}");
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("expected apiVersion admission.k8s.io/v1"),
            "{text}"
        );
    }
}

#[tokio::test]
async fn review_without_request_gets_an_invalid_review_not_an_http_error() {
    let out = post_review(
        webhook::admission_router(state(), LIMIT),
        &json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}),
    )
    .await;
    assert_eq!(out["response"]["allowed"], false);
    assert_eq!(out["response"]["status"]["reason"], "InvalidRequest");
}

#[tokio::test]
async fn wrong_content_type_is_415() {
    for ct in [None, Some("text/plain"), Some("application/yaml")] {
        let (status, _) = post(
            webhook::admission_router(state(), LIMIT),
            ct,
            review("alice", false, false).to_string(),
        )
        .await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct:?}");
    }
    let (status, _) = post(
        webhook::admission_router(state(), LIMIT),
        Some("application/json; charset=utf-8"),
        review("alice", false, false).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn oversized_body_is_413() {
    let mut big = review("system:serviceaccount:agents:cursor", true, false);
    big["request"]["oldObject"]["data"] = json!("x".repeat(LIMIT));
    let (status, _) = post(
        webhook::admission_router(state(), LIMIT),
        Some("application/json"),
        big.to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // The default limit accepts a review holding an object at the API server's own 3 MiB limit.
    let mut near_limit = review("system:serviceaccount:agents:cursor", true, false);
    near_limit["request"]["oldObject"]["data"] = json!("x".repeat(3 * 1024 * 1024));
    let out = post_review(
        webhook::admission_router(state(), webhook::DEFAULT_MAX_REVIEW_BYTES),
        &near_limit,
    )
    .await;
    assert_eq!(out["response"]["allowed"], false);
}

#[tokio::test]
async fn ops_endpoints_report_health_readiness_and_metrics() {
    let metrics = Metrics::new();
    let readiness = Readiness::default();
    let get = |path: &'static str| {
        let router = webhook::ops_router(metrics.clone(), readiness.clone());
        async move {
            let resp = router
                .oneshot(Request::get(path).body(Body::empty()).unwrap())
                .await
                .unwrap();
            let status = resp.status();
            (
                status,
                String::from_utf8(
                    to_bytes(resp.into_body(), usize::MAX)
                        .await
                        .unwrap()
                        .to_vec(),
                )
                .unwrap(),
            )
        }
    };
    assert_eq!(get("/healthz").await.0, StatusCode::OK);
    assert_eq!(get("/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
    readiness.set(true);
    assert_eq!(get("/readyz").await.0, StatusCode::OK);
    let (status, body) = get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("agentguard_build_info{version="), "{body}");
}

/// `/seal`, the sealing (mutating) webhook: a human's approval comes back with a JSON patch
/// that adds agentguard's seal; an agent's gets no patch; garbage gets an HTTP error as on
/// `/validate`.
#[tokio::test]
async fn seal_endpoint_patches_a_humans_approval_only() {
    use agentguard::policy::{KEY_BYTES, Keyring};
    let state = state_with_keys(Keyring::from_data(
        &[("key-100".to_owned(), vec![3u8; KEY_BYTES])].into(),
    ));
    let until = (jiff::Timestamp::now() + jiff::SignedDuration::from_mins(10)).to_string();
    let approval = |username: &str| {
        let claim = |annotations: Value| {
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                   "metadata": {"name": "data", "namespace": "prod", "uid": "abc", "annotations": annotations}})
        };
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": UID,
                "kind": {"group": "", "version": "v1", "kind": "PersistentVolumeClaim"},
                "resource": {"group": "", "version": "v1", "resource": "persistentvolumeclaims"},
                "name": "data", "namespace": "prod", "operation": "UPDATE",
                "userInfo": {"username": username, "groups": ["system:authenticated"]},
                "object": claim(json!({"agentguard.dev/protected": "true",
                    "agentguard.dev/approved-by": username, "agentguard.dev/approved-until": until})),
                "oldObject": claim(json!({"agentguard.dev/protected": "true"})),
                "dryRun": false
            }
        })
    };
    let call = |body: Value| {
        let router = webhook::admission_router(state.clone(), LIMIT);
        async move {
            let resp = router
                .oneshot(
                    Request::post("/seal")
                        .header("content-type", "application/json")
                        .body(Body::from(body.to_string()))
                        .unwrap(),
                )
                .await
                .unwrap();
            let status = resp.status();
            let bytes = to_bytes(resp.into_body(), usize::MAX).await.unwrap();
            (status, bytes.to_vec())
        }
    };
    let (status, body) = call(approval("alice")).await;
    assert_eq!(status, StatusCode::OK);
    let response: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(response["response"]["uid"], UID);
    assert_eq!(response["response"]["allowed"], true);
    assert_eq!(response["response"]["patchType"], "JSONPatch", "{response}");
    // kube serializes the patch bytes as a JSON array of numbers, which the API server's Go
    // decoder reads into its []byte as it would read base64.
    let bytes: Vec<u8> = serde_json::from_value(response["response"]["patch"].clone()).unwrap();
    let patch: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(patch[0]["op"], "add");
    assert_eq!(
        patch[0]["path"],
        "/metadata/annotations/agentguard.dev~1approval-seal"
    );
    assert!(
        patch[0]["value"]
            .as_str()
            .unwrap()
            .starts_with("v1:key-100:")
    );

    let (_, body) = call(approval("system:serviceaccount:agents:bot")).await;
    let response: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        response["response"]["allowed"], true,
        "sealing never refuses"
    );
    assert!(response["response"].get("patch").is_none(), "{response}");

    let (status, _) = call(json!({"not": "a review"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// `/annotate` answers every review with its uid and never refuses; with no API server to
/// confirm a kind is served, it records nothing and warns nothing.
#[tokio::test]
async fn annotate_answers_and_records_nothing_it_cannot_confirm() {
    let kinds = agentguard::index::AnnotatedKinds::new(None);
    let router = webhook::annotate_router(kinds.clone(), 1 << 20);
    let body = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": UID,
            "kind": {"group": "made-up.example.com", "version": "v1", "kind": "Ghost"},
            "resource": {"group": "made-up.example.com", "version": "v1", "resource": "ghosts"},
            "name": "x",
            "namespace": "prod",
            "operation": "CREATE",
            "userInfo": {"username": "alice"},
            "object": {"apiVersion": "made-up.example.com/v1", "kind": "Ghost",
                       "metadata": {"name": "x", "namespace": "prod",
                                    "annotations": {"agentguard.dev/protected": "true"}}},
            "oldObject": null,
            "dryRun": false
        }
    });
    let response = router
        .oneshot(
            Request::post("/annotate")
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
    let review: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(review["response"]["uid"], UID);
    assert_eq!(review["response"]["allowed"], true);
    assert!(review["response"]["warnings"].is_null(), "{review}");
    assert!(kinds.snapshot().is_empty());
}

/// Past the staleness bound, a restricted identity's write that would pass is refused with a
/// reason naming the staleness; humans are judged as before; fresh again, agents too.
#[tokio::test]
async fn stale_state_refuses_agents_but_not_humans() {
    let state = state();
    let stale = "state older than the 10s staleness bound: watch of api failing for 11s (timeout)";
    state
        .objects
        .write()
        .unwrap()
        .set_stale(Some(stale.to_owned()));
    let agent = "system:serviceaccount:agents:cursor";
    let out = post_review(
        webhook::admission_router(state.clone(), LIMIT),
        &review(agent, false, false),
    )
    .await;
    let r = &out["response"];
    assert_eq!(r["uid"], UID);
    assert_eq!(r["allowed"], false);
    assert_eq!(r["status"]["code"], 403);
    let message = r["status"]["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!(
            "agentguard: DENIED delete of PersistentVolumeClaim prod/data by {agent}: agentguard's view of policies and protected objects is stale ({stale})"
        )),
        "{message}"
    );
    assert!(!message.contains("not found"), "{message}");
    // A protected object's denial stands as it was.
    let out = post_review(
        webhook::admission_router(state.clone(), LIMIT),
        &review(agent, true, false),
    )
    .await;
    let message = out["response"]["status"]["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!(
            "agentguard: DENIED delete of PersistentVolumeClaim prod/data by {agent}."
        )) && !message.contains("stale"),
        "{message}"
    );
    // A human is judged as before.
    let out = post_review(
        webhook::admission_router(state.clone(), LIMIT),
        &review("alice", true, false),
    )
    .await;
    assert_eq!(out["response"]["allowed"], true);
    // Fresh again.
    state.objects.write().unwrap().set_stale(None);
    let out = post_review(
        webhook::admission_router(state.clone(), LIMIT),
        &review(agent, false, false),
    )
    .await;
    assert_eq!(out["response"]["allowed"], true);
}

#[tokio::test]
async fn readyz_says_why_it_is_not_ready() {
    let readiness = Readiness::waiting_for(&["policies", "objects"]);
    let router = webhook::ops_router(Metrics::new(), readiness.clone());
    let resp = router
        .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&body),
        "not ready: caches not synced yet: objects, policies\n"
    );
}
