//! The operator's reconciling side: policy status, and the ValidatingWebhookConfiguration that
//! routes requests to the webhook.

pub mod approval_keys;
pub mod certificates;
pub mod events;
pub mod leader;
pub mod reports;
pub mod requests;
mod status;
mod volumes;
pub mod webhook_config;

pub use status::reconcile_policy_status;
pub use volumes::pin_volumes;
