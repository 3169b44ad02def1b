//! Leader election with a coordination.k8s.io Lease. Every replica serves the webhook; only the
//! leader reconciles cluster-wide state (the webhook configuration, certificates, volume
//! pinning, request status, reports).
//!
//! The rules are client-go's leader election, so that an API server that is slow or
//! unreachable cannot make two replicas act as leader at once:
//! - every lease call has a deadline, and a leader that has not renewed within
//!   [`RENEW_DEADLINE`] (shorter than [`LEASE_DURATION`]) of its last successful renewal steps
//!   down by itself, measured on its own monotonic clock: a renewal that hangs ends
//!   leadership instead of prolonging it;
//! - a follower takes a lease only when the record it reads (holder, renew time, resource
//!   version) has not changed for the lease's duration on *its own* monotonic clock since it
//!   first saw that record. Nobody compares a renew time written by another machine with a
//!   local wall clock, so clocks need not agree;
//! - leader-only work runs under [`while_leading`] or [`lead`], which cancel it as soon as
//!   leadership ends, rather than at the top of its next pass;
//! - on shutdown the leader releases the lease (holder emptied), so another replica takes
//!   over within one retry period instead of a lease duration.
//!
//! Why not a library's lease: kube-runtime 5 has no leader election, and kubert's
//! `LeaseManager` judges a claim current by comparing the expiry the holder wrote
//! (`renewTime + leaseDuration`) with the local wall clock (`Claim::is_current`), so a follower
//! whose clock runs ahead takes a live lease, which is the failure this module exists to prevent
//! (`tests/e2e_leader.rs` runs a follower 40 s ahead).

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;

/// How long a lease is valid without renewal (what followers wait, on their own clocks).
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How long a leader keeps leading without a successful renewal.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// How often every replica reads (and the leader renews) the lease.
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);
/// Longest a follower's lease call may take, and the release on shutdown.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// What a lease says, as far as expiry goes: any change restarts a follower's wait.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    holder: String,
    renew_time: Option<MicroTime>,
    resource_version: Option<String>,
    duration: Duration,
}

impl Record {
    fn of(lease: &Lease) -> Self {
        let spec = lease.spec.clone().unwrap_or_default();
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .filter(|s| *s > 0)
            .map_or(LEASE_DURATION, Duration::from_secs);
        Self {
            holder: spec.holder_identity.unwrap_or_default(),
            renew_time: spec.renew_time,
            resource_version: lease.metadata.resource_version.clone(),
            duration,
        }
    }
}

/// One replica's view of the lease, on its own monotonic clock. Pure: every instant is
/// passed in, so the rules are tested without a cluster or a clock.
#[derive(Debug, Clone)]
pub struct Elector {
    identity: String,
    /// The last record read, and when it was first seen in that state.
    observed: Option<(Record, Instant)>,
    /// When the last successful renewal (or acquisition) was sent.
    renewed_at: Option<Instant>,
}

impl Elector {
    pub fn new(identity: impl Into<String>) -> Self {
        Self {
            identity: identity.into(),
            observed: None,
            renewed_at: None,
        }
    }

    /// Records the lease as read at `now` (None: there is no lease). A record that differs
    /// from the last one restarts its clock; an unchanged one keeps the first sighting.
    pub fn observe(&mut self, lease: Option<&Lease>, now: Instant) {
        let Some(lease) = lease else {
            self.observed = None;
            self.renewed_at = None;
            return;
        };
        let record = Record::of(lease);
        if record.holder != self.identity {
            // Someone else holds it (or nobody): whatever we sent last, we do not lead.
            self.renewed_at = None;
        }
        if self.observed.as_ref().is_none_or(|(r, _)| *r != record) {
            self.observed = Some((record, now));
        }
    }

    /// Records a successful write of `lease` by this replica, sent at `sent`.
    pub fn renewed(&mut self, lease: &Lease, sent: Instant) {
        self.observed = Some((Record::of(lease), sent));
        self.renewed_at = Some(sent);
    }

    /// Whether this replica may write the lease at `now`: there is none, it is free
    /// (released), it is ours, or its record has not changed for its duration since we first
    /// saw it.
    pub fn may_take(&self, now: Instant) -> bool {
        match &self.observed {
            None => true,
            Some((record, seen)) => {
                record.holder.is_empty()
                    || record.holder == self.identity
                    || now.saturating_duration_since(*seen) >= record.duration
            }
        }
    }

    /// Until when this replica leads: [`RENEW_DEADLINE`] after its last successful renewal,
    /// while the lease last read names it. None: it does not lead.
    pub fn leading_until(&self) -> Option<Instant> {
        let (record, _) = self.observed.as_ref()?;
        (record.holder == self.identity).then_some(())?;
        Some(self.renewed_at? + RENEW_DEADLINE)
    }

    /// Whether this replica leads at `now`.
    pub fn leading(&self, now: Instant) -> bool {
        self.leading_until().is_some_and(|until| now < until)
    }

    /// Whether the lease last read names this replica.
    fn holds(&self) -> bool {
        self.observed
            .as_ref()
            .is_some_and(|(r, _)| r.holder == self.identity)
    }
}

/// Campaigns for the lease until `stopping` turns true, publishing leadership on `leader_tx`;
/// then steps down and releases the lease if it still names this replica.
pub async fn run(
    client: kube::Client,
    namespace: String,
    name: String,
    identity: String,
    leader_tx: watch::Sender<bool>,
    mut stopping: watch::Receiver<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &namespace);
    let mut elector = Elector::new(identity.clone());
    let publish = |leading: bool| {
        leader_tx.send_if_modified(|current| {
            if *current != leading {
                tracing::info!(identity = %identity, leading, "leadership changed");
                *current = leading;
                true
            } else {
                false
            }
        });
    };
    let stop = async move {
        if stopping.wait_for(|s| *s).await.is_err() {
            // Nobody can ask us to stop any more.
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(RETRY_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let until = elector.leading_until().filter(|u| *u > Instant::now());
        tokio::select! {
            _ = tick.tick() => {}
            // Leadership ends on its own clock, whatever the API server does.
            _ = sleep_until(until) => {
                publish(elector.leading(Instant::now()));
                continue;
            }
            _ = &mut stop => break,
        }
        // A leader's call may last until its renew deadline; a follower's a few seconds.
        let deadline = elector
            .leading_until()
            .filter(|u| *u > Instant::now())
            .unwrap_or_else(|| Instant::now() + CALL_TIMEOUT);
        let attempt = tokio::time::timeout_at(deadline, try_acquire(&api, &name, &mut elector));
        let result = tokio::select! {
            result = attempt => result,
            _ = &mut stop => break,
        };
        match result {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, lease = %name, "lease error"),
            Err(_) => tracing::warn!(lease = %name, "lease call timed out"),
        }
        publish(elector.leading(Instant::now()));
    }
    // Shutting down: leader-only work stops first, then the lease is handed back.
    publish(false);
    if elector.holds() {
        match tokio::time::timeout(CALL_TIMEOUT, release(&api, &name, &elector.identity)).await {
            Ok(Ok(true)) => tracing::info!(lease = %name, "lease released"),
            Ok(Ok(false)) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, lease = %name, "cannot release the lease"),
            Err(_) => tracing::warn!(lease = %name, "lease release timed out"),
        }
    }
}

async fn sleep_until(until: Option<Instant>) {
    match until {
        Some(until) => tokio::time::sleep_until(until).await,
        None => std::future::pending().await,
    }
}

fn spec_for(identity: &str, transitions: i32, acquired: Option<MicroTime>) -> LeaseSpec {
    // The times are for people reading the lease; no replica compares them with its clock.
    let now = MicroTime(jiff::Timestamp::now());
    LeaseSpec {
        holder_identity: Some(identity.to_owned()),
        lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
        acquire_time: acquired.or(Some(now.clone())),
        renew_time: Some(now),
        lease_transitions: Some(transitions),
        ..Default::default()
    }
}

async fn try_acquire(api: &Api<Lease>, name: &str, elector: &mut Elector) -> kube::Result<()> {
    let lease = api.get_opt(name).await?;
    elector.observe(lease.as_ref(), Instant::now());
    let Some(mut lease) = lease else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..Default::default()
            },
            spec: Some(spec_for(&elector.identity, 0, None)),
        };
        let sent = Instant::now();
        return match api.create(&PostParams::default(), &lease).await {
            Ok(created) => {
                elector.renewed(&created, sent);
                Ok(())
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(e),
        };
    };
    if !elector.may_take(Instant::now()) {
        return Ok(());
    }
    let spec = lease.spec.clone().unwrap_or_default();
    let ours = spec.holder_identity.as_deref() == Some(elector.identity.as_str());
    let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
    lease.spec = Some(spec_for(
        &elector.identity,
        transitions,
        if ours { spec.acquire_time } else { None },
    ));
    // resourceVersion in the object makes this a compare-and-swap: two replicas racing for an
    // expired lease cannot both win. The renewal counts from before it was sent.
    let sent = Instant::now();
    match api.replace(name, &PostParams::default(), &lease).await {
        Ok(written) => {
            elector.renewed(&written, sent);
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Empties the lease's holder, as client-go's ReleaseOnCancel does, if it still names
/// `identity` (compare-and-swap: a lease someone else took meanwhile is left alone). True
/// when released.
async fn release(api: &Api<Lease>, name: &str, identity: &str) -> kube::Result<bool> {
    let Some(mut lease) = api.get_opt(name).await? else {
        return Ok(false);
    };
    let spec = lease.spec.get_or_insert_default();
    if spec.holder_identity.as_deref() != Some(identity) {
        return Ok(false);
    }
    let now = MicroTime(jiff::Timestamp::now());
    spec.holder_identity = Some(String::new());
    spec.lease_duration_seconds = Some(1);
    spec.acquire_time = Some(now.clone());
    spec.renew_time = Some(now);
    match api.replace(name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Runs `work` to completion while `leader` says this replica leads, and drops it (cancelling
/// whatever call it is waiting on) as soon as leadership ends. None: not leading, or
/// leadership ended first.
pub async fn while_leading<T>(
    leader: &watch::Receiver<bool>,
    work: impl Future<Output = T>,
) -> Option<T> {
    let mut leader = leader.clone();
    if !*leader.borrow_and_update() {
        return None;
    }
    let lost = async move {
        if leader.wait_for(|leading| !*leading).await.is_err() {
            // A closed channel never changes again (no leader election: always leading).
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        out = work => Some(out),
        () = lost => None,
    }
}

/// Runs the task `start` makes while this replica leads: started when leadership begins,
/// dropped (its work in flight cancelled) when it ends, started afresh when it begins again.
/// For tasks that only a leader runs at all. Never returns.
pub async fn lead<F: Future<Output = ()>>(
    mut leader: watch::Receiver<bool>,
    start: impl Fn() -> F,
) {
    loop {
        if leader.wait_for(|leading| *leading).await.is_err() {
            // Closed while not leading: it never will.
            std::future::pending::<()>().await;
        }
        if while_leading(&leader, start()).await.is_some() {
            // The task ended by itself; do not spin if it ends at once.
            tokio::time::sleep(RETRY_PERIOD).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, renewed: jiff::Timestamp, version: &str) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("l".into()),
                resource_version: Some(version.into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(renewed)),
                ..Default::default()
            }),
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_follower_waits_a_lease_duration_on_its_own_clock_since_it_first_saw_the_record() {
        let t0 = Instant::now();
        let wall = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let mut a = Elector::new("a");
        a.observe(Some(&lease("b", wall, "1")), t0);
        assert!(!a.may_take(t0), "someone else's lease, just seen");
        assert!(!a.may_take(t0 + secs(14)), "unchanged for less than 15 s");
        assert!(a.may_take(t0 + secs(15)), "unchanged for 15 s");
        // Reading the same record again does not restart the wait.
        a.observe(Some(&lease("b", wall, "1")), t0 + secs(10));
        assert!(a.may_take(t0 + secs(15)));
        // A renewal (new record) restarts it.
        a.observe(
            Some(&lease("b", wall + jiff::SignedDuration::from_secs(2), "2")),
            t0 + secs(12),
        );
        assert!(!a.may_take(t0 + secs(26)));
        assert!(a.may_take(t0 + secs(27)));
        assert!(!a.leading(t0 + secs(27)), "a follower does not lead");
    }

    #[test]
    fn a_follower_whose_wall_clock_runs_an_hour_ahead_does_not_take_a_live_lease() {
        // The holder's renew times are an hour behind this follower's wall clock: under a
        // wall-clock comparison the lease looks long expired. It is live: it keeps changing.
        let follower_wall = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let holder_wall = follower_wall - jiff::SignedDuration::from_hours(1);
        let t0 = Instant::now();
        let mut a = Elector::new("a");
        for round in 0..30u64 {
            let renewed = holder_wall + jiff::SignedDuration::from_secs(2 * round as i64);
            let now = t0 + secs(2 * round);
            a.observe(Some(&lease("b", renewed, &round.to_string())), now);
            assert!(!a.may_take(now), "took a live lease at round {round}");
        }
        // And a fresh sighting of an old-looking record is not taken at once either.
        let mut c = Elector::new("c");
        c.observe(Some(&lease("b", holder_wall, "9")), t0);
        assert!(!c.may_take(t0 + secs(1)));
    }

    #[test]
    fn free_released_or_own_leases_are_taken_at_once() {
        let t0 = Instant::now();
        let wall = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let mut a = Elector::new("a");
        assert!(a.may_take(t0), "no lease");
        a.observe(None, t0);
        assert!(a.may_take(t0), "no lease");
        a.observe(Some(&lease("", wall, "1")), t0);
        assert!(a.may_take(t0), "released");
        a.observe(Some(&lease("a", wall, "2")), t0);
        assert!(a.may_take(t0), "ours");
        let empty = Lease {
            spec: Some(LeaseSpec::default()),
            ..Default::default()
        };
        a.observe(Some(&empty), t0);
        assert!(a.may_take(t0), "a lease without a holder");
    }

    #[test]
    fn a_leader_steps_down_at_the_renew_deadline_on_its_own_clock() {
        let t0 = Instant::now();
        let wall = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let mut a = Elector::new("a");
        assert!(!a.leading(t0));
        a.renewed(&lease("a", wall, "1"), t0);
        assert!(a.leading(t0 + secs(9)));
        // No renewal since (calls hang): leadership ends at 10 s, before a follower that saw
        // the same record at t0 may take it at 15 s.
        assert!(!a.leading(t0 + secs(10)));
        assert_eq!(a.leading_until(), Some(t0 + RENEW_DEADLINE));
        let mut b = Elector::new("b");
        b.observe(Some(&lease("a", wall, "1")), t0);
        assert!(!b.may_take(t0 + RENEW_DEADLINE));
        assert!(b.may_take(t0 + LEASE_DURATION));
        // A renewal extends it; reading the lease held by another ends it at once.
        a.renewed(&lease("a", wall, "2"), t0 + secs(8));
        assert!(a.leading(t0 + secs(17)));
        a.observe(Some(&lease("b", wall, "3")), t0 + secs(9));
        assert!(!a.leading(t0 + secs(9)));
        // Reading our own lease again does not renew it.
        a.renewed(&lease("a", wall, "4"), t0 + secs(20));
        a.observe(Some(&lease("a", wall, "4")), t0 + secs(29));
        assert!(!a.leading(t0 + secs(30)));
    }

    #[tokio::test]
    async fn work_in_flight_is_cancelled_when_leadership_ends() {
        let (tx, rx) = watch::channel(true);
        let started = Instant::now();
        let work = tokio::spawn(async move {
            while_leading(&rx, tokio::time::sleep(secs(60)))
                .await
                .is_some()
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send_replace(false);
        assert!(!work.await.unwrap(), "the work was not cancelled");
        assert!(started.elapsed() < secs(5));
        // Not leading: nothing runs.
        let (_tx, rx) = watch::channel(false);
        assert_eq!(while_leading(&rx, async { 1 }).await, None);
        // No leader election (a closed, always-true channel): work runs to completion.
        let rx = watch::channel(true).1;
        assert_eq!(while_leading(&rx, async { 2 }).await, Some(2));
    }

    #[tokio::test]
    async fn a_leader_only_task_runs_only_while_leading() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicI32, Ordering};
        struct Running(Arc<AtomicI32>);
        impl Drop for Running {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let running = Arc::new(AtomicI32::new(0));
        let (tx, rx) = watch::channel(false);
        let counter = running.clone();
        let task = tokio::spawn(lead(rx, move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                let _running = Running(counter);
                std::future::pending::<()>().await
            }
        }));
        let now = || running.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(now(), 0, "started while not leading");
        tx.send_replace(true);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(now(), 1, "not started on leading");
        tx.send_replace(false);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(now(), 0, "still running after leadership ended");
        tx.send_replace(true);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(now(), 1, "not restarted when leading again");
        task.abort();
    }
}
