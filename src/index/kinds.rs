//! Kind → resource resolution through API discovery, with each API group fetched once per
//! pass. The object watches, policy status and the webhook configuration all need it.

use std::collections::HashMap;

use kube::api::ApiResource;
use kube::discovery::{self, ApiCapabilities, ApiGroup};

/// Resolves kinds for one pass; make a new one for the next pass to see new CRDs.
#[derive(Default)]
pub struct KindResolver {
    groups: HashMap<String, Option<ApiGroup>>,
}

impl KindResolver {
    /// The resource serving `kind` in `group`, or None when the API server does not serve it
    /// (or discovery failed; the caller looks again on its next pass).
    pub async fn resolve(
        &mut self,
        client: &kube::Client,
        group: &str,
        kind: &str,
    ) -> Option<(ApiResource, ApiCapabilities)> {
        if !self.groups.contains_key(group) {
            let found = discovery::group(client, group).await.ok();
            self.groups.insert(group.to_owned(), found);
        }
        self.groups[group].as_ref()?.recommended_kind(kind)
    }
}
