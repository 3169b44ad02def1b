#![allow(dead_code)] // each fuzz target uses one check; tests/fuzz_regressions.rs both
//! What the fuzz targets check, shared with `tests/fuzz_regressions.rs` (which replays the
//! corpus and every kept crash under `cargo test`): one place for the properties.

use std::sync::{Arc, OnceLock};

use agentguard::api::{Mode, ProtectionSpec, Target};
use agentguard::index::SharedSnapshot;
use agentguard::metrics::Metrics;
use agentguard::policy::{
    AgentDefinition, AgentMatcher, PolicyRef, Snapshot, compile, parse_duration,
};
use agentguard::webhook::{self, AdmissionState};
use axum::body::Body;
use axum::http::Request;
use tower::ServiceExt;

fn router() -> &'static axum::Router {
    static ROUTER: OnceLock<axum::Router> = OnceLock::new();
    ROUTER.get_or_init(|| {
        let agents = AgentMatcher::new(&AgentDefinition {
            service_accounts: vec!["agents/*".into(), "*/cursor-*".into()],
            groups: vec!["ai-agents".into()],
            ..Default::default()
        })
        .unwrap();
        let spec = ProtectionSpec::new(
            Mode::Enforce,
            vec![Target::kinds(
                &["", "snapshot.storage.k8s.io"],
                &["PersistentVolumeClaim", "VolumeSnapshot"],
            )],
        );
        let policy = compile(PolicyRef::cluster("default-volumes"), &spec).unwrap();
        let state = Arc::new(AdmissionState {
            snapshot: SharedSnapshot::new(Snapshot::new(agents, Default::default(), vec![policy])),
            metrics: Metrics::new(),
            ledger: Default::default(),
            objects: Default::default(),
        });
        webhook::admission_router(state, 8 * 1024 * 1024)
    })
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

/// Any bytes POSTed to /validate get an AdmissionReview with a decision, or a 4xx: never a
/// panic, never a 5xx.
pub fn check_review(data: &[u8]) {
    let request = Request::post("/validate")
        .header("content-type", "application/json")
        .body(Body::from(data.to_vec()))
        .unwrap();
    let response = runtime()
        .block_on(router().clone().oneshot(request))
        .unwrap();
    let status = response.status();
    assert!(
        status.is_success() || status.is_client_error(),
        "status {status}"
    );
    if status.is_success() {
        let body = runtime()
            .block_on(http_body_util::BodyExt::collect(response.into_body()))
            .unwrap()
            .to_bytes();
        let review: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(review["kind"], "AdmissionReview");
        assert!(review["response"]["allowed"].is_boolean());
    }
}

/// Any policy text: durations parse or not, a spec compiles or reports its problems; never a
/// panic.
pub fn check_policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_duration(text);
    if let Ok(spec) = serde_saphyr::from_str::<ProtectionSpec>(text) {
        let _ = compile(PolicyRef::namespaced("prod", "fuzz"), &spec);
        let _ = compile(PolicyRef::cluster("fuzz"), &spec);
    }
}
