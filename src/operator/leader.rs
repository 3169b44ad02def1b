//! Leader election with a coordination.k8s.io Lease. Every replica serves the webhook; only the
//! leader reconciles cluster-wide state (the webhook configuration, volume pinning). A leader
//! that stops renewing loses the lease after its duration, and another replica takes it.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;

/// How long a lease is valid without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
const RETRY_PERIOD: Duration = Duration::from_secs(2);

/// Whether `lease` may be taken by `identity` at `now`: free, ours, or expired.
pub fn can_take(lease: &LeaseSpec, identity: &str, now: jiff::Timestamp) -> bool {
    let holder = lease.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() || holder == identity {
        return true;
    }
    let duration = lease
        .lease_duration_seconds
        .unwrap_or(LEASE_DURATION.as_secs() as i32);
    let renewed = lease
        .renew_time
        .as_ref()
        .or(lease.acquire_time.as_ref())
        .map(|t| t.0);
    renewed.is_none_or(|t| t + jiff::SignedDuration::from_secs(duration.into()) < now)
}

/// Campaigns for the lease forever, publishing leadership on `leader_tx`.
pub async fn run(
    client: kube::Client,
    namespace: String,
    name: String,
    identity: String,
    leader_tx: watch::Sender<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &namespace);
    let mut tick = tokio::time::interval(RETRY_PERIOD);
    loop {
        tick.tick().await;
        let now = jiff::Timestamp::now();
        let leading = match try_acquire(&api, &name, &identity, now).await {
            Ok(leading) => leading,
            Err(err) => {
                tracing::warn!(error = %err, lease = %name, "lease error");
                // Without a successful renewal we cannot know we still lead: step down.
                false
            }
        };
        leader_tx.send_if_modified(|current| {
            if *current != leading {
                tracing::info!(identity = %identity, leading, "leadership changed");
                *current = leading;
                true
            } else {
                false
            }
        });
    }
}

async fn try_acquire(
    api: &Api<Lease>,
    name: &str,
    identity: &str,
    now: jiff::Timestamp,
) -> kube::Result<bool> {
    let fresh_spec = |transitions: i32, acquired: Option<MicroTime>| LeaseSpec {
        holder_identity: Some(identity.to_owned()),
        lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
        acquire_time: acquired.or(Some(MicroTime(now))),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..Default::default()
    };
    let Some(mut lease) = api.get_opt(name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..Default::default()
            },
            spec: Some(fresh_spec(0, None)),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    if !can_take(&spec, identity, now) {
        return Ok(false);
    }
    let ours = spec.holder_identity.as_deref() == Some(identity);
    let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
    lease.spec = Some(fresh_spec(
        transitions,
        if ours { spec.acquire_time } else { None },
    ));
    // resourceVersion in the object makes this a compare-and-swap: two replicas racing for an
    // expired lease cannot both win.
    match api.replace(name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, renewed_secs_ago: i64, now: jiff::Timestamp) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(
                now - jiff::SignedDuration::from_secs(renewed_secs_ago),
            )),
            ..Default::default()
        }
    }

    #[test]
    fn lease_rules() {
        let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        assert!(can_take(&lease("a", 5, now), "a", now), "renew our own");
        assert!(
            !can_take(&lease("b", 5, now), "a", now),
            "someone else's fresh lease"
        );
        assert!(
            can_take(&lease("b", 16, now), "a", now),
            "someone else's expired lease"
        );
        assert!(can_take(&lease("", 1, now), "a", now), "released lease");
        assert!(can_take(&LeaseSpec::default(), "a", now), "empty lease");
    }
}
