//! The operator's reconciling side: policy status, and the ValidatingWebhookConfiguration that
//! routes requests to the webhook.

pub mod annotated_kinds;
pub mod approval_keys;
pub mod certificates;
pub mod events;
pub mod leader;
pub mod posture;
pub mod reports;
pub mod requests;
pub mod static_config;
mod status;
mod volumes;
pub mod webhook_config;

pub use status::reconcile_policy_status;
pub use volumes::pin_volumes;

/// Creates `object`, or replaces `existing` with it only if nobody wrote it since it was read
/// (compare-and-swap on resourceVersion): two leaders in a handover cannot both rotate.
pub(crate) async fn write_secret(
    api: &kube::Api<k8s_openapi::api::core::v1::Secret>,
    existing: Option<&k8s_openapi::api::core::v1::Secret>,
    mut object: k8s_openapi::api::core::v1::Secret,
) -> kube::Result<k8s_openapi::api::core::v1::Secret> {
    let params = kube::api::PostParams::default();
    match existing {
        Some(old) => {
            object.metadata.resource_version = old.metadata.resource_version.clone();
            let name = object.metadata.name.clone().unwrap_or_default();
            api.replace(&name, &params, &object).await
        }
        None => api.create(&params, &object).await,
    }
}
