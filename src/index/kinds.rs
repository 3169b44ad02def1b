//! Kind → resource resolution through API discovery, with each API group fetched once per
//! pass. The object watches, policy status and the webhook configuration all need it.

use std::collections::HashMap;
use std::time::Duration;

use kube::api::ApiResource;
use kube::discovery::{self, ApiCapabilities, ApiGroup};

/// How long one group's discovery may take. kube's client retries a 503 (an aggregated API
/// whose backend is down answers so) with backoff for minutes; the callers hold a loop while
/// they wait, so a group that does not answer in time is unknown (looked up again next pass).
pub const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(5);

/// The resource serving `kind` in a discovered group: in the group's preferred version, or else
/// in the first other version that serves it. A group's kinds need not share versions (a
/// Crossplane provider serves `Instance` at v1beta3 and `Cluster` only up to v1beta2), and
/// kube's `recommended_kind` looks in the preferred version only: a kind served elsewhere
/// would pass for not served, and go unprotected.
pub fn served_kind(group: &ApiGroup, kind: &str) -> Option<(ApiResource, ApiCapabilities)> {
    group.recommended_kind(kind).or_else(|| {
        group.versions().find_map(|version| {
            group
                .versioned_resources(version)
                .into_iter()
                .find(|(ar, _)| ar.kind == kind)
        })
    })
}

/// Resolves kinds for one pass; make a new one for the next pass to see new CRDs.
#[derive(Default)]
pub struct KindResolver {
    /// Err(true): the API server does not serve the group; Err(false): discovery failed.
    groups: HashMap<String, Result<ApiGroup, bool>>,
    /// The API groups the server lists (`/apis`), read once per resolver: a group it does not
    /// list is not served, with no further call. Policies naming many kinds whose CRDs are not
    /// installed (the data-holding catalog's) then cost one request per pass, not a discovery
    /// per group. None: not read yet; Some(None): the read failed (each group is asked).
    listed_groups: Option<Option<std::collections::HashSet<String>>>,
}

/// What discovery says of a kind.
pub enum Lookup {
    Served(ApiResource, ApiCapabilities),
    /// The API server answered, and does not serve it.
    NotServed,
    /// Discovery failed: whether it is served is unknown.
    Unknown,
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
        match self.lookup(client, group, kind).await {
            Lookup::Served(resource, caps) => Some((resource, caps)),
            Lookup::NotServed | Lookup::Unknown => None,
        }
    }

    /// Like [`KindResolver::resolve`], telling "not served" from "discovery failed".
    pub async fn lookup(&mut self, client: &kube::Client, group: &str, kind: &str) -> Lookup {
        if !group.is_empty() && !self.groups.contains_key(group) {
            if self.listed_groups.is_none() {
                let listed =
                    match tokio::time::timeout(DISCOVERY_TIMEOUT, client.list_api_groups()).await {
                        Ok(Ok(list)) => Some(list.groups.into_iter().map(|g| g.name).collect()),
                        _ => None,
                    };
                self.listed_groups = Some(listed);
            }
            if let Some(Some(listed)) = &self.listed_groups
                && !listed.contains(group)
            {
                self.groups.insert(group.to_owned(), Err(true));
            }
        }
        if !self.groups.contains_key(group) {
            let found = match tokio::time::timeout(
                DISCOVERY_TIMEOUT,
                discovery::group(client, group),
            )
            .await
            {
                Ok(found) => found.map_err(|err| {
                    matches!(
                        err,
                        kube::Error::Discovery(kube::error::DiscoveryError::MissingApiGroup(_))
                    )
                }),
                Err(_) => {
                    tracing::warn!(group, "discovery timed out");
                    Err(false)
                }
            };
            self.groups.insert(group.to_owned(), found);
        }
        match &self.groups[group] {
            Ok(api_group) => match served_kind(api_group, kind) {
                Some((resource, caps)) => Lookup::Served(resource, caps),
                None => Lookup::NotServed,
            },
            Err(true) => Lookup::NotServed,
            Err(false) => Lookup::Unknown,
        }
    }
}
