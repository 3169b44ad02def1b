//! Static mode: when the API server loads agentguard's webhook configurations from files
//! (`agentguard manifests static`, the `staticManifestsDir` of Kubernetes 1.36+), no API call can
//! delete or weaken them, and agentguard's own managed configuration steps aside.
//!
//! Detection must be reliable and cannot read the files (the API server does not show them
//! through its API), so it asks the API server itself: the static validating configuration
//! carries one extra webhook, [`PROBE_WEBHOOK_NAME`], that routes only a dry-run CREATE of the
//! Secret [`PROBE_SECRET`] in agentguard's own namespace to [`PROBE_PATH`], which always
//! refuses it with [`PROBE_MESSAGE`]. The managed configuration has no such webhook. So: that
//! dry-run refused with the probe's words (or, with failurePolicy Fail, failing to call the
//! probe webhook) means the static configuration is in force; the dry-run accepted means it is
//! not. Nothing is ever created (dry run), and agentguard already has `create` on Secrets in
//! its namespace.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::post;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower_http::timeout::TimeoutLayer;

/// The configurations' name in the files: `*.static.k8s.io` is what the API server requires of
/// static manifests, and refuses to anything created through its API.
pub const STATIC_CONFIGURATION_NAME: &str = "agentguard.static.k8s.io";
/// The webhook in the static validating configuration that answers the probe.
pub const PROBE_WEBHOOK_NAME: &str = "static-probe.agentguard.dev";
/// Path of the probe endpoint on the webhook server.
pub const PROBE_PATH: &str = "/static-probe";
/// The Secret whose dry-run creation is the probe (never created).
pub const PROBE_SECRET: &str = "agentguard-static-probe";
/// What the probe endpoint answers.
pub const PROBE_MESSAGE: &str =
    "agentguard: the static webhook configuration (agentguard.static.k8s.io) is in force";
/// How often the probe runs.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// Which configuration routes requests to agentguard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InForce {
    /// Loaded from files by the API server (`agentguard.static.k8s.io`).
    Static,
    /// The ValidatingWebhookConfiguration agentguard writes through the API.
    Managed,
}

/// The probe endpoint: refuses every review it is sent, with [`PROBE_MESSAGE`]. Only the
/// static configuration routes anything here (a dry-run CREATE of [`PROBE_SECRET`]).
pub fn probe_router() -> Router {
    Router::new()
        .route(PROBE_PATH, post(answer_probe))
        .layer(DefaultBodyLimit::max(64 * 1024))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(10),
        ))
}

async fn answer_probe(body: Bytes) -> (StatusCode, axum::Json<serde_json::Value>) {
    let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(&body) {
        Ok(review) => review,
        Err(err) => {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(serde_json::json!({ "error": err.to_string() })),
            );
        }
    };
    let request: Result<AdmissionRequest<DynamicObject>, _> = review.try_into();
    let response = match request {
        Ok(request) => AdmissionResponse::from(&request),
        Err(_) => AdmissionResponse::invalid("not an AdmissionReview request"),
    };
    let review = response.deny(PROBE_MESSAGE).into_review();
    (
        StatusCode::OK,
        axum::Json(serde_json::to_value(review).unwrap_or_default()),
    )
}

/// The probe as `client` sees it: Some(Static) or Some(Managed), None when the API server's
/// answer says neither (unreachable, forbidden).
pub async fn probe(client: &kube::Client, namespace: &str) -> Option<InForce> {
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(PROBE_SECRET.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let params = PostParams {
        dry_run: true,
        ..Default::default()
    };
    match Api::<Secret>::namespaced(client.clone(), namespace)
        .create(&params, &secret)
        .await
    {
        Ok(_) => Some(InForce::Managed),
        Err(kube::Error::Api(status))
            if status.message.contains(PROBE_MESSAGE)
                || status.message.contains(PROBE_WEBHOOK_NAME) =>
        {
            Some(InForce::Static)
        }
        // The name is taken: no webhook refused the CREATE before storage did.
        Err(kube::Error::Api(status)) if status.code == 409 => Some(InForce::Managed),
        Err(err) => {
            tracing::debug!(error = %err, "static configuration probe inconclusive");
            None
        }
    }
}

/// Runs the managed configuration's reconciler (`start_managed`) while the static
/// configuration is absent, and stops it while it is present; the leader then deletes the
/// managed configurations named `configuration_name`, so that only the static one routes. If
/// the static configuration disappears (the API server restarted without it), the managed one
/// takes over again within one probe interval. `in_force` says which is in force. Never
/// returns.
pub async fn supervise(
    client: kube::Client,
    namespace: String,
    configuration_name: String,
    leader: watch::Receiver<bool>,
    in_force: watch::Sender<Option<InForce>>,
    start_managed: impl Fn() -> JoinHandle<()>,
) {
    let mut managed: Option<JoinHandle<()>> = None;
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    let mut first = true;
    loop {
        tick.tick().await;
        let seen = probe(&client, &namespace).await;
        // Until the probe answers once, the managed configuration is what works today.
        let seen = match (seen, first) {
            (Some(seen), _) => seen,
            (None, true) => InForce::Managed,
            (None, false) => continue,
        };
        first = false;
        let before = *in_force.borrow();
        in_force.send_replace(Some(seen));
        match seen {
            InForce::Managed => {
                if managed.is_none() {
                    if before == Some(InForce::Static) {
                        tracing::warn!(
                            "the static webhook configuration is gone; agentguard manages its configuration again"
                        );
                    }
                    managed = Some(start_managed());
                }
            }
            InForce::Static => {
                if let Some(task) = managed.take() {
                    task.abort();
                }
                if before != Some(InForce::Static) {
                    tracing::info!(
                        name = STATIC_CONFIGURATION_NAME,
                        "the static webhook configuration is in force; the managed one steps aside"
                    );
                }
                // Cancelled if leadership ends meanwhile.
                super::leader::while_leading(&leader, delete_managed(&client, &configuration_name))
                    .await;
            }
        }
    }
}

async fn delete_managed(client: &kube::Client, name: &str) {
    let dp = DeleteParams::default();
    let validating = Api::<ValidatingWebhookConfiguration>::all(client.clone());
    let mutating = Api::<MutatingWebhookConfiguration>::all(client.clone());
    // Validating first: a judging rule must not outlive the webhook that seals approvals.
    for result in [
        validating.delete(name, &dp).await.map(|_| ()),
        mutating.delete(name, &dp).await.map(|_| ()),
    ] {
        match result {
            Ok(()) => tracing::info!(%name, "managed webhook configuration deleted (static mode)"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(err) => {
                tracing::warn!(error = %err, %name, "cannot delete the managed webhook configuration")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{Body, to_bytes};
    use axum::http::Request;
    use tower::ServiceExt;

    #[tokio::test]
    async fn the_probe_endpoint_refuses_with_its_message_and_the_uid() {
        let review = serde_json::json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "kind": {"group": "", "version": "v1", "kind": "Secret"},
                "resource": {"group": "", "version": "v1", "resource": "secrets"},
                "name": PROBE_SECRET,
                "namespace": "agentguard",
                "operation": "CREATE",
                "userInfo": {"username": "system:serviceaccount:agentguard:agentguard"},
                "object": {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": PROBE_SECRET}},
                "oldObject": null,
                "dryRun": true
            }
        });
        let resp = probe_router()
            .oneshot(
                Request::post(PROBE_PATH)
                    .header("content-type", "application/json")
                    .body(Body::from(review.to_string()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body: serde_json::Value =
            serde_json::from_slice(&to_bytes(resp.into_body(), usize::MAX).await.unwrap()).unwrap();
        assert_eq!(body["response"]["uid"], "u-1");
        assert_eq!(body["response"]["allowed"], false);
        assert_eq!(body["response"]["status"]["message"], PROBE_MESSAGE);
    }
}
