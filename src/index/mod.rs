//! The watch-fed view the webhook judges with: policies, labelled agent ServiceAccounts and the
//! agent definition, compiled into an immutable [`Snapshot`] that is swapped whole on change.
//! Readers take no lock: one atomic load per review.

mod annotated;
mod kinds;
pub mod objects;
mod slim;
pub mod watch_handles;
mod watch_objects;

pub use annotated::{
    AnnotatedKinds, AnnotatedWrite, MAX_OBJECTS_PER_KIND, RECORD_COMPONENT_LABEL, RecordedKind,
    RecordedKinds, data_key, parse_record, rbac_rule,
};
pub use kinds::{KindResolver, Lookup, served_kind};
pub use watch_objects::run_objects;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::policy::Snapshot;

/// Objects per page when a watch lists. With kube's default of 500, listing 100,000 claims
/// through the API server took about three times as long as in pages of 5,000 (each request
/// has a fixed cost); client-go's informers list without pages at all. One page is held and
/// decoded at a time.
pub const LIST_PAGE_SIZE: u32 = 5000;

/// The configuration every watch lists with: consistent lists (kube's default semantic, not
/// `any_semantic`) in pages of [`LIST_PAGE_SIZE`].
pub fn list_config() -> watcher::Config {
    watcher::Config::default().page_size(LIST_PAGE_SIZE)
}

/// The current snapshot, shared between the watchers (writers) and the webhook (readers).
#[derive(Debug, Clone)]
pub struct SharedSnapshot(Arc<ArcSwap<Snapshot>>);

impl SharedSnapshot {
    pub fn new(snapshot: Snapshot) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(snapshot)))
    }

    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.0.load()
    }

    /// An owned handle, for holding across `.await`.
    pub fn load_full(&self) -> Arc<Snapshot> {
        self.0.load_full()
    }

    pub fn store(&self, snapshot: Snapshot) {
        self.0.store(Arc::new(snapshot));
    }
}

use std::collections::{BTreeSet, HashSet};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PartialObjectMeta, ResourceExt};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use tokio::sync::watch;

use crate::api::{AGENT_LABEL, ClusterProtectedResource, ProtectedResource, ProtectionSpec};
use crate::policy::{AgentMatcher, CompiledPolicy, PolicyRef, compile};

/// The outcome of compiling one policy, for the operator to write into its status.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyHealth {
    pub id: PolicyRef,
    pub generation: Option<i64>,
    /// Empty when the policy is valid and in force.
    pub problems: Vec<String>,
}

/// Reflector stores the snapshot is built from.
#[derive(Clone)]
pub struct Stores {
    pub protected: Store<ProtectedResource>,
    pub cluster_protected: Store<ClusterProtectedResource>,
    pub agents: Store<PartialObjectMeta<ServiceAccount>>,
}

/// Builds a snapshot from the stores, compiling every policy. Invalid policies protect nothing
/// and are reported in the returned health list.
pub fn build_snapshot(
    agents: &AgentMatcher,
    stores: &Stores,
) -> (crate::policy::Snapshot, Vec<PolicyHealth>) {
    let mut policies: Vec<CompiledPolicy> = Vec::new();
    let mut health = Vec::new();
    let mut add = |id: PolicyRef, generation: Option<i64>, spec: &ProtectionSpec| match compile(
        id.clone(),
        spec,
    ) {
        Ok(p) => {
            policies.push(p);
            health.push(PolicyHealth {
                id,
                generation,
                problems: vec![],
            });
        }
        Err(problems) => {
            tracing::warn!(policy = %id.describe(), ?problems, "invalid policy protects nothing");
            health.push(PolicyHealth {
                id,
                generation,
                problems,
            });
        }
    };
    for p in stores.protected.state() {
        let id = PolicyRef::namespaced(&p.namespace().unwrap_or_default(), &p.name_any());
        add(id, p.metadata.generation, &p.spec.protection);
    }
    for p in stores.cluster_protected.state() {
        add(
            PolicyRef::cluster(&p.name_any()),
            p.metadata.generation,
            &p.spec.protection,
        );
    }
    let labelled: HashSet<String> = stores
        .agents
        .state()
        .iter()
        .filter(|sa| sa.labels().get(AGENT_LABEL).is_some_and(|v| v == "true"))
        .map(|sa| format!("{}/{}", sa.namespace().unwrap_or_default(), sa.name_any()))
        .collect();
    // Deterministic order: the same policies always decide in the same order.
    policies.sort_by_key(|p| p.id.label());
    health.sort_by_key(|h| h.id.label());
    (
        crate::policy::Snapshot::new(agents.clone(), labelled, policies),
        health,
    )
}

/// What the object watches must feed the index: the kinds policies target, and how many times
/// the index has needed every kind listed again (it keeps only the labels policies read; when
/// they start reading another, see [`objects::ObjectIndex::reprotect`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Wanted {
    pub kinds: BTreeSet<(String, String)>,
    pub relists: u64,
}

/// What the policy index publishes and reads besides the snapshot.
#[derive(Debug)]
pub struct Feeds {
    /// Compiled policies' health, for their status.
    pub health: watch::Sender<Vec<PolicyHealth>>,
    /// The kinds policies target and the labels they read, for the object index.
    pub kinds: watch::Sender<Option<Wanted>>,
    /// The approval-sealing keys, put into every snapshot.
    pub keys: watch::Receiver<crate::policy::Keyring>,
}

/// Readiness gate of the policy and labelled-ServiceAccount watches.
pub const POLICIES_GATE: &str = "policies";
/// Readiness gate of the protected-object watches.
pub const OBJECTS_GATE: &str = "objects";

/// The health names of the policy and labelled-ServiceAccount watches (global state).
pub const POLICY_WATCHES: [&str; 3] = [
    "protectedresources.agentguard.dev",
    "clusterprotectedresources.agentguard.dev",
    "serviceaccounts",
];

/// Watches policies and labelled ServiceAccounts and keeps `shared` current. `readiness` turns
/// true only after every watch has listed once, so a replica never judges with an empty view.
/// Never returns; watch errors are retried with backoff.
pub async fn run(
    client: kube::Client,
    agents: AgentMatcher,
    shared: SharedSnapshot,
    objects: SharedObjects,
    readiness: Readiness,
    feeds: Feeds,
) {
    let Feeds {
        health: health_tx,
        kinds: kinds_tx,
        mut keys,
    } = feeds;
    let (protected, w1) = reflector::store::<ProtectedResource>();
    let (cluster_protected, w2) = reflector::store::<ClusterProtectedResource>();
    let (agent_sas, w3) = reflector::store::<PartialObjectMeta<ServiceAccount>>();
    // Consistent lists (kube's default semantic), not `any_semantic`: a resourceVersion=0 list
    // may come from a lagging API server's cache and miss a policy created just before, and
    // readiness must mean "judging with state at least as new as our start".
    let cfg = list_config();
    // Each watch starts over after an error and when the API server comes back, and records
    // its health: these hold global state, so a stale one makes the replica unready.
    let watch = |name: &str| (name.to_owned(), true, readiness.clone());
    let s1 = {
        let (api, cfg) = (Api::<ProtectedResource>::all(client.clone()), cfg.clone());
        let (name, global, readiness) = watch(POLICY_WATCHES[0]);
        reflector::reflector(
            w1,
            supervised(
                move || watcher(api.clone(), cfg.clone()),
                name,
                global,
                readiness,
            ),
        )
        .map(|e| init_done(0, e))
        .boxed()
    };
    let s2 = {
        let (api, cfg) = (
            Api::<ClusterProtectedResource>::all(client.clone()),
            cfg.clone(),
        );
        let (name, global, readiness) = watch(POLICY_WATCHES[1]);
        reflector::reflector(
            w2,
            supervised(
                move || watcher(api.clone(), cfg.clone()),
                name,
                global,
                readiness,
            ),
        )
        .map(|e| init_done(1, e))
        .boxed()
    };
    let s3 = {
        let api = Api::<PartialObjectMeta<ServiceAccount>>::all(client);
        let cfg = cfg.labels(&format!("{AGENT_LABEL}=true"));
        let (name, global, readiness) = watch(POLICY_WATCHES[2]);
        reflector::reflector(
            w3,
            supervised(
                move || watcher(api.clone(), cfg.clone()),
                name,
                global,
                readiness,
            ),
        )
        .map(|e| init_done(2, e))
        .boxed()
    };
    let stores = Stores {
        protected,
        cluster_protected,
        agents: agent_sas,
    };
    let mut events = futures::stream::select_all([s1, s2, s3]);
    let mut listed = [false; 3];
    let mut keys_open = true;
    loop {
        tokio::select! {
            event = events.next() => match event {
                None => return,
                Some(Err(err)) => {
                    tracing::warn!(error = %err, "watch error; retrying");
                    continue;
                }
                Some(Ok(Some(i))) => listed[i] = true,
                Some(Ok(None)) => {}
            },
            changed = keys.changed(), if keys_open => keys_open = changed.is_ok(),
        }
        if !listed.iter().all(|&l| l) {
            continue;
        }
        let (snapshot, health) = build_snapshot(&agents, &stores);
        let snapshot = snapshot.with_keys(keys.borrow_and_update().clone());
        let kinds: BTreeSet<(String, String)> =
            snapshot.policies().iter().flat_map(|p| p.kinds()).collect();
        let relists = {
            let mut index = objects.write().unwrap_or_else(|e| e.into_inner());
            if index.reprotect(&snapshot) {
                tracing::info!(label_keys = ?snapshot.label_keys(), "policies read new labels; listing every watched kind again");
            }
            index.relists()
        };
        let wanted = Wanted { kinds, relists };
        shared.store(snapshot);
        // The object watches wait for the first value before they report synced, so a replica
        // is not ready before it knows which kinds to index.
        kinds_tx.send_if_modified(|current| {
            let changed = current.as_ref() != Some(&wanted);
            *current = Some(wanted);
            changed
        });
        readiness.synced(POLICIES_GATE);
        health_tx.send_if_modified(|current| {
            let changed = *current != health;
            *current = health;
            changed
        });
    }
}

/// `Some(stream)` when a watch finished its initial list.
fn init_done<K>(
    stream: usize,
    event: Result<watcher::Event<K>, watcher::Error>,
) -> Result<Option<usize>, String> {
    match event {
        Ok(watcher::Event::InitDone) => Ok(Some(stream)),
        Ok(_) => Ok(None),
        Err(err) => Err(err.to_string()),
    }
}

/// The protected-object index shared between its watchers (writers) and the webhook (readers).
/// Reads take a read lock for the length of one lookup; writes are single watch events.
pub type SharedObjects = Arc<std::sync::RwLock<objects::ObjectIndex>>;

/// Readiness: false until every named cache has synced once, false while the state the
/// webhook judges with may be stale (a watch that holds global state, or the API connection
/// itself, has been failing for longer than the staleness bound), and false for good on
/// shutdown. `/readyz` reports it, so a replica never judges with an empty or stale view.
#[derive(Debug, Default, Clone)]
pub struct Readiness(Arc<ReadinessInner>);

#[derive(Debug, Default)]
struct ReadinessInner {
    pending: std::sync::Mutex<HashSet<&'static str>>,
    ready: std::sync::atomic::AtomicBool,
    /// Shutting down: never ready again.
    stopped: std::sync::atomic::AtomicBool,
    fresh: std::sync::Mutex<Freshness>,
    /// Bumped when the API server is reachable again after an outage: every watch starts
    /// over (a connection that went silent may never say so).
    epoch: EpochSender,
}

#[derive(Debug)]
struct EpochSender(watch::Sender<u64>);

impl Default for EpochSender {
    fn default() -> Self {
        Self(watch::channel(0).0)
    }
}

/// Default bound on how long a replica may judge with state it cannot refresh.
pub const DEFAULT_MAX_STALENESS: Duration = Duration::from_secs(60);

/// The health entry of the API connection itself (a periodic request), which holds global
/// state like the policy watches do.
pub const API_HEALTH: &str = "api";

/// Health of the watches, for readiness: pure bookkeeping, time given by the caller.
///
/// A watch is healthy while its connection works; a quiet watch (no event for minutes) is
/// healthy. It is failing from its first error until it delivers again (an event or a
/// completed list). It is stale once failing continuously for longer than the bound.
#[derive(Debug, Clone)]
pub struct Freshness {
    pub max_staleness: Duration,
    watches: std::collections::BTreeMap<String, WatchHealth>,
}

#[derive(Debug, Clone, PartialEq)]
struct WatchHealth {
    /// Its state is global (policies, agents, the API connection): stale means the whole
    /// replica is not ready. Otherwise one kind's objects: stale means that kind is unknown.
    global: bool,
    failing_since: Option<Instant>,
    error: String,
    /// Ever delivered (listed once).
    synced: bool,
}

/// A watch failing for longer than the bound.
#[derive(Debug, Clone, PartialEq)]
pub struct Stale {
    pub watch: String,
    pub global: bool,
    pub failing_for: Duration,
    pub error: String,
}

impl std::fmt::Display for Stale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "watch of {} failing for {}s ({})",
            self.watch,
            self.failing_for.as_secs(),
            self.error
        )
    }
}

impl Default for Freshness {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_STALENESS)
    }
}

impl Freshness {
    pub fn new(max_staleness: Duration) -> Self {
        Self {
            max_staleness,
            watches: Default::default(),
        }
    }

    /// `watch` delivered at `now`: healthy.
    pub fn ok(&mut self, watch: &str, global: bool, now: Instant) {
        let _ = now;
        let entry = self.entry(watch, global);
        entry.failing_since = None;
        entry.error.clear();
        entry.synced = true;
    }

    /// `watch` failed at `now`; failing since its first error in a row.
    pub fn failing(&mut self, watch: &str, global: bool, error: &str, now: Instant) {
        let entry = self.entry(watch, global);
        entry.failing_since.get_or_insert(now);
        entry.error = error.lines().next().unwrap_or_default().to_owned();
    }

    /// Every watch is unverified since `since` (the API server was unreachable): failing
    /// until each delivers again.
    pub fn unverified_since(&mut self, since: Instant, why: &str) {
        for (name, entry) in &mut self.watches {
            if name != API_HEALTH && entry.failing_since.is_none_or(|s| s > since) {
                entry.failing_since = Some(since);
                entry.error = why.to_owned();
            }
        }
    }

    /// The watch is gone (its kind no longer watched).
    pub fn forget(&mut self, watch: &str) {
        self.watches.remove(watch);
    }

    /// Since when `watch` has been failing, if it is.
    pub fn failing_since(&self, watch: &str) -> Option<Instant> {
        self.watches.get(watch).and_then(|w| w.failing_since)
    }

    /// Watches failing for longer than the bound at `now`.
    pub fn stale(&self, now: Instant) -> Vec<Stale> {
        self.watches
            .iter()
            .filter_map(|(name, w)| {
                let failing_for = now.saturating_duration_since(w.failing_since?);
                (failing_for > self.max_staleness).then(|| Stale {
                    watch: name.clone(),
                    global: w.global,
                    failing_for,
                    error: w.error.clone(),
                })
            })
            .collect()
    }

    /// Why the replica's global state is stale at `now`, if it is.
    pub fn global_staleness(&self, now: Instant) -> Option<String> {
        let stale: Vec<String> = self
            .stale(now)
            .iter()
            .filter(|s| s.global)
            .map(Stale::to_string)
            .collect();
        (!stale.is_empty()).then(|| {
            format!(
                "state older than the {}s staleness bound: {}",
                self.max_staleness.as_secs(),
                stale.join("; ")
            )
        })
    }

    /// Each watch that has synced once and whether it is healthy now (for metrics).
    pub fn health(&self) -> Vec<(String, bool)> {
        let api_ok = self.failing_since(API_HEALTH).is_none();
        self.watches
            .iter()
            .filter(|(name, w)| *name != API_HEALTH && w.synced)
            .map(|(name, w)| (name.clone(), api_ok && w.failing_since.is_none()))
            .collect()
    }

    fn entry(&mut self, watch: &str, global: bool) -> &mut WatchHealth {
        self.watches
            .entry(watch.to_owned())
            .or_insert_with(|| WatchHealth {
                global,
                failing_since: None,
                error: String::new(),
                synced: false,
            })
    }
}

impl Readiness {
    /// Not ready until each of `gates` is marked synced.
    pub fn waiting_for(gates: &[&'static str]) -> Self {
        let r = Self::default();
        *r.0.pending.lock().unwrap_or_else(|e| e.into_inner()) = gates.iter().copied().collect();
        r
    }

    /// Sets the staleness bound (default [`DEFAULT_MAX_STALENESS`]).
    pub fn with_max_staleness(self, bound: Duration) -> Self {
        self.fresh().max_staleness = bound;
        self
    }

    pub fn max_staleness(&self) -> Duration {
        self.fresh().max_staleness
    }

    fn fresh(&self) -> std::sync::MutexGuard<'_, Freshness> {
        self.0.fresh.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks one cache synced; ready once none is pending.
    pub fn synced(&self, gate: &'static str) {
        let mut pending = self.0.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.remove(gate) {
            tracing::info!(cache = gate, "cache synced");
        }
        if pending.is_empty() && !self.0.ready.load(std::sync::atomic::Ordering::Acquire) {
            tracing::info!("all caches synced; ready");
            self.set(true);
        }
    }

    pub fn set(&self, ready: bool) {
        let stopped = self.0.stopped.load(std::sync::atomic::Ordering::Acquire);
        self.0
            .ready
            .store(ready && !stopped, std::sync::atomic::Ordering::Release);
    }

    /// Not ready from now on, whatever syncs later (shutdown).
    pub fn stop(&self) {
        self.0
            .stopped
            .store(true, std::sync::atomic::Ordering::Release);
        self.set(false);
    }

    /// Shutting down (SIGTERM came): draining, never ready again.
    pub fn is_stopping(&self) -> bool {
        self.0.stopped.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Synced, not stopping, and judging with fresh state.
    pub fn is_ready(&self) -> bool {
        self.not_ready().is_none()
    }

    /// Why the replica is not ready, or None when it is.
    pub fn not_ready(&self) -> Option<String> {
        if self.0.stopped.load(std::sync::atomic::Ordering::Acquire) {
            return Some("shutting down".to_owned());
        }
        if !self.0.ready.load(std::sync::atomic::Ordering::Acquire) {
            let mut pending: Vec<&str> = self
                .0
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .copied()
                .collect();
            pending.sort();
            return Some(format!("caches not synced yet: {}", pending.join(", ")));
        }
        self.staleness()
    }

    /// Why the global state (policies, agents, the API connection) is stale now, if it is.
    pub fn staleness(&self) -> Option<String> {
        self.fresh().global_staleness(Instant::now())
    }

    /// `watch` delivered: healthy.
    pub fn watch_ok(&self, watch: &str, global: bool) {
        let mut fresh = self.fresh();
        if fresh.failing_since(watch).is_some() {
            tracing::info!(watch, "watch healthy again");
        }
        fresh.ok(watch, global, Instant::now());
    }

    /// `watch` failed.
    pub fn watch_failing(&self, watch: &str, global: bool, error: &str) {
        self.fresh().failing(watch, global, error, Instant::now());
    }

    /// How long `watch` has been failing, if it is.
    pub fn failing_for(&self, watch: &str) -> Option<Duration> {
        self.fresh()
            .failing_since(watch)
            .map(|s| Instant::now().saturating_duration_since(s))
    }

    pub fn forget_watch(&self, watch: &str) {
        self.fresh().forget(watch);
    }

    /// Each watch that has synced once and whether it is healthy now.
    pub fn watch_health(&self) -> Vec<(String, bool)> {
        self.fresh().health()
    }

    /// Bumped when every watch must start over.
    pub fn epoch(&self) -> watch::Receiver<u64> {
        self.0.epoch.0.subscribe()
    }

    /// One check of the API connection at `started`: when it recovers after failing, every
    /// watch is unverified since the outage began and starts over.
    fn api_checked(&self, result: Result<(), String>, started: Instant) {
        let mut fresh = self.fresh();
        match result {
            Ok(()) => {
                if let Some(since) = fresh.failing_since(API_HEALTH) {
                    tracing::info!(
                        down_for_secs = started.saturating_duration_since(since).as_secs(),
                        "API server reachable again; restarting every watch"
                    );
                    fresh
                        .unverified_since(since, "restarting after the API server was unreachable");
                    fresh.ok(API_HEALTH, true, started);
                    drop(fresh);
                    self.0.epoch.0.send_modify(|e| *e += 1);
                } else {
                    fresh.ok(API_HEALTH, true, started);
                }
            }
            Err(error) => {
                if fresh.failing_since(API_HEALTH).is_none() {
                    tracing::warn!(%error, "API server unreachable");
                }
                fresh.failing(API_HEALTH, true, &error, started);
            }
        }
    }
}

/// Checks the API connection periodically (a watch on a quiet kind says nothing for
/// minutes, even over a dead connection), publishes staleness to the index and watch health
/// to the metrics. Never returns.
pub async fn run_freshness(
    client: kube::Client,
    readiness: Readiness,
    objects: SharedObjects,
    metrics: crate::metrics::Metrics,
) {
    let bound = readiness.max_staleness();
    let every = (bound / 6).clamp(Duration::from_millis(250), Duration::from_secs(5));
    let timeout = (bound / 3).clamp(Duration::from_secs(1), Duration::from_secs(10));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stale_before: Option<String> = None;
    loop {
        tick.tick().await;
        let started = Instant::now();
        let result = match tokio::time::timeout(timeout, client.apiserver_version()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err(format!(
                "no answer from the API server within {} ms",
                timeout.as_millis()
            )),
        };
        readiness.api_checked(result, started);
        let stale = readiness.staleness();
        if stale != stale_before {
            match &stale {
                Some(why) => {
                    tracing::warn!(%why, "judging agents' guarded writes refused: stale state")
                }
                None => tracing::info!("state fresh again"),
            }
            objects
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .set_stale(stale.clone());
            stale_before = stale;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default();
        metrics.set_watch_health(&readiness.watch_health(), now);
    }
}

/// Runs the watcher streams `make` builds, recording their health as `watch` in `readiness`:
/// after an error it waits (backoff) and starts over with a fresh list, so a recovered watch
/// says so even on a quiet kind; it also starts over when the readiness epoch changes (the
/// API server was unreachable: connections may be dead without an error). Never ends.
pub fn supervised<K, S, F>(
    make: F,
    watch: String,
    global: bool,
    readiness: Readiness,
) -> impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send
where
    K: Send + 'static,
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    F: Fn() -> S + Send + 'static,
{
    const FIRST_BACKOFF: Duration = Duration::from_millis(500);
    const MAX_BACKOFF: Duration = Duration::from_secs(10);
    struct State<S, F> {
        make: F,
        stream: Option<std::pin::Pin<Box<S>>>,
        epoch: watch::Receiver<u64>,
        epoch_open: bool,
        wait: Option<Duration>,
        backoff: Duration,
        watch: String,
        global: bool,
        readiness: Readiness,
    }
    let mut epoch = readiness.epoch();
    epoch.mark_unchanged();
    let state = State {
        make,
        stream: None,
        epoch,
        epoch_open: true,
        wait: None,
        backoff: FIRST_BACKOFF,
        watch,
        global,
        readiness,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(wait) = st.wait.take() {
                tokio::time::sleep(wait).await;
            }
            let State {
                make,
                stream,
                epoch,
                epoch_open,
                ..
            } = &mut st;
            let current = stream.get_or_insert_with(|| Box::pin(make()));
            tokio::select! {
                biased;
                changed = epoch.changed(), if *epoch_open => {
                    if changed.is_ok() {
                        tracing::info!(watch = %st.watch, "starting the watch over");
                        st.stream = None;
                    } else {
                        st.epoch_open = false;
                    }
                }
                item = current.next() => match item {
                    None => st.stream = None,
                    Some(Ok(event)) => {
                        if !matches!(event, watcher::Event::Init | watcher::Event::InitApply(_)) {
                            st.readiness.watch_ok(&st.watch, st.global);
                            st.backoff = FIRST_BACKOFF;
                        }
                        return Some((Ok(event), st));
                    }
                    Some(Err(err)) => {
                        st.readiness
                            .watch_failing(&st.watch, st.global, &err.to_string());
                        st.stream = None;
                        st.wait = Some(st.backoff);
                        st.backoff = (st.backoff * 2).min(MAX_BACKOFF);
                        return Some((Err(err), st));
                    }
                },
            }
        }
    })
}

/// Blocked deletions per policy not yet written into the policy's status, and attempts not yet
/// published as Events. The webhook submits (a mutex taken on denials only, never on the allow
/// path); the operator drains.
///
/// Anyone who reaches the webhook can post a review naming any object and any subject, so
/// nothing is recorded for an object until the index vouches for it ([`BlockLedger::submit`]):
/// the review's uid must be one the index holds (or an owner of one it holds). Attempts on
/// objects the index does not know yet (created a moment ago) wait up to [`VERIFY_WINDOW`]
/// for their watch event, in a queue of at most [`UNVERIFIED_CAP`]; then they are dropped.
#[derive(Debug, Default, Clone)]
pub struct BlockLedger {
    pending: Arc<std::sync::Mutex<std::collections::HashMap<PolicyRef, PendingBlocks>>>,
    notify: Arc<tokio::sync::Notify>,
    attempts: Arc<std::sync::Mutex<std::collections::HashMap<(String, String), BlockedAttempt>>>,
    attempts_notify: Arc<tokio::sync::Notify>,
    unverified: Arc<std::sync::Mutex<std::collections::VecDeque<(Instant, Block)>>>,
}

/// How long an attempt on an object the index does not hold waits for it to appear.
pub const VERIFY_WINDOW: Duration = Duration::from_secs(10);
/// Most attempts waiting for the index at once; beyond it the oldest are dropped.
pub const UNVERIFIED_CAP: usize = 1024;
/// Most distinct (object, subject) attempts folded between two Event publishes.
pub const ATTEMPTS_CAP: usize = 10_000;
/// How often waiting attempts are looked up in the index again.
const VERIFY_INTERVAL: Duration = Duration::from_millis(500);

/// A blocked (or audited) attempt as the webhook saw it, before the index vouches for its
/// object.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    /// The policy whose status counts it (Enforce denials decided by a policy).
    pub policy: Option<PolicyRef>,
    /// The object as the review names it (uid included), and who tried.
    pub attempt: BlockedAttempt,
}

/// Whether the index vouches for the block's object; if so, names it as the index does. False
/// (and the block unchanged) when the index does not know the review's uid, or knows it as
/// another kind of object.
fn vouch(block: &mut Block, index: &objects::ObjectIndex) -> bool {
    let reference = &mut block.attempt.object;
    let uid = reference.uid.clone().unwrap_or_default();
    let api_version = reference.api_version.clone().unwrap_or_default();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", &api_version));
    match index.known(&uid) {
        Some(objects::Known::Object(key)) => {
            // The index's names, not the review's: the Event lands on the object that exists.
            reference.api_version = Some(if key.group.is_empty() {
                version.to_owned()
            } else {
                format!("{}/{version}", key.group)
            });
            reference.kind = Some(key.kind.to_string());
            reference.namespace = key.namespace.as_deref().map(str::to_owned);
            reference.name = Some(key.name.to_string());
            true
        }
        Some(objects::Known::Owner {
            group: owner_group,
            kind,
            namespace,
        }) if owner_group == group
            && reference.kind.as_deref() == Some(kind)
            && (reference.namespace.is_none() || reference.namespace.as_deref() == namespace) =>
        {
            true
        }
        _ => false,
    }
}

/// One blocked attempt, for the Event on the object (aggregated per object and subject).
#[derive(Debug, Clone, PartialEq)]
pub struct BlockedAttempt {
    pub object: k8s_openapi::api::core::v1::ObjectReference,
    pub subject: String,
    /// `ClusterProtectedResource/default-volumes`, or `annotation`.
    pub protected_by: String,
    /// Attempts since the last drain.
    pub count: u32,
    /// Allowed by an Audit-mode policy (would have been refused in Enforce mode).
    pub audited: bool,
}

/// Blocks of one policy since the last drain.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingBlocks {
    pub count: i64,
    pub last: crate::api::LastBlocked,
}

impl BlockLedger {
    /// Records a blocked attempt for its policy's status and the object's Event once the index
    /// vouches for the object: now when it holds the review's uid, else when it appears within
    /// [`VERIFY_WINDOW`] (see [`BlockLedger::verify_pending`]). Returns whether it was recorded
    /// now.
    pub fn submit(&self, mut block: Block, index: &objects::ObjectIndex) -> bool {
        if vouch(&mut block, index) {
            self.commit(block);
            return true;
        }
        let mut queue = self.unverified.lock().unwrap_or_else(|e| e.into_inner());
        if queue.len() >= UNVERIFIED_CAP {
            queue.pop_front();
        }
        queue.push_back((Instant::now(), block));
        false
    }

    /// Records the waiting attempts whose objects the index now holds; drops those that waited
    /// longer than [`VERIFY_WINDOW`] at `now`.
    pub fn verify_pending(&self, index: &objects::ObjectIndex, now: Instant) {
        let waiting =
            std::mem::take(&mut *self.unverified.lock().unwrap_or_else(|e| e.into_inner()));
        let mut still = std::collections::VecDeque::new();
        let mut dropped = 0usize;
        for (since, mut block) in waiting {
            if vouch(&mut block, index) {
                self.commit(block);
            } else if now.duration_since(since) < VERIFY_WINDOW {
                still.push_back((since, block));
            } else {
                dropped += 1;
            }
        }
        if dropped > 0 {
            tracing::info!(
                dropped,
                "blocked attempts on objects agentguard does not know: no Event or status count"
            );
        }
        let mut queue = self.unverified.lock().unwrap_or_else(|e| e.into_inner());
        // Submitted meanwhile: after the older ones.
        still.extend(queue.drain(..));
        while still.len() > UNVERIFIED_CAP {
            still.pop_front();
        }
        *queue = still;
    }

    /// Attempts waiting for the index.
    pub fn unverified(&self) -> usize {
        self.unverified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    fn commit(&self, block: Block) {
        let Block { policy, attempt } = block;
        if let Some(policy) = policy {
            let object = &attempt.object;
            let name = match &object.namespace {
                Some(ns) => format!("{ns}/{}", object.name.as_deref().unwrap_or_default()),
                None => object.name.clone().unwrap_or_default(),
            };
            self.record(
                policy,
                &attempt.subject,
                format!("{} {name}", object.kind.as_deref().unwrap_or_default()),
            );
        }
        self.record_attempt(attempt);
    }

    pub fn record(&self, policy: PolicyRef, subject: &str, object: String) {
        let last = crate::api::LastBlocked {
            time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
            subject: subject.to_owned(),
            object,
        };
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let entry = pending.entry(policy).or_insert(PendingBlocks {
            count: 0,
            last: last.clone(),
        });
        entry.count += 1;
        entry.last = last;
        drop(pending);
        self.notify.notify_one();
    }

    /// Records an attempt for the object's Event; repeated attempts by the same subject on the
    /// same object fold into one.
    pub fn record_attempt(&self, attempt: BlockedAttempt) {
        let key = (
            attempt.object.uid.clone().unwrap_or_default(),
            format!("{}/{}", attempt.subject, attempt.audited),
        );
        let mut attempts = self.attempts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(folded) = attempts.get_mut(&key) {
            folded.count += attempt.count;
        } else if attempts.len() < ATTEMPTS_CAP {
            attempts.insert(key, attempt);
        } else {
            tracing::warn!(
                "too many distinct blocked attempts since the last publish; dropped one"
            );
            return;
        }
        drop(attempts);
        self.attempts_notify.notify_one();
    }

    pub fn drain_attempts(&self) -> Vec<BlockedAttempt> {
        std::mem::take(&mut *self.attempts.lock().unwrap_or_else(|e| e.into_inner()))
            .into_values()
            .collect()
    }

    pub async fn attempts_notified(&self) {
        self.attempts_notify.notified().await
    }

    pub fn drain(&self) -> std::collections::HashMap<PolicyRef, PendingBlocks> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Puts back blocks whose status write failed, so they are counted on the next try.
    pub fn restore(&self, policy: PolicyRef, blocks: PendingBlocks) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        match pending.get_mut(&policy) {
            Some(newer) => newer.count += blocks.count,
            None => {
                pending.insert(policy, blocks);
            }
        }
    }

    pub async fn notified(&self) {
        self.notify.notified().await
    }
}

/// Looks attempts waiting for the index up again, every [`VERIFY_INTERVAL`]. Never returns.
pub async fn verify_blocks(ledger: BlockLedger, objects: SharedObjects) {
    let mut tick = tokio::time::interval(VERIFY_INTERVAL);
    loop {
        tick.tick().await;
        if ledger.unverified() > 0 {
            let index = objects.read().unwrap_or_else(|e| e.into_inner());
            ledger.verify_pending(&index, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::ObjectReference;

    use super::objects::{ObjectEntry, ObjectIndex, ObjectKey, Owner};
    use super::*;
    use crate::policy::{AgentMatcher, Snapshot};

    fn index() -> ObjectIndex {
        let snapshot = Snapshot::new(AgentMatcher::default(), Default::default(), vec![]);
        let mut index = ObjectIndex::default();
        let annotations = BTreeMap::from([(
            crate::api::PROTECTED_ANNOTATION.to_owned(),
            "true".to_owned(),
        )]);
        index.upsert(
            ObjectEntry::new(
                ObjectKey {
                    group: "".into(),
                    kind: "PersistentVolumeClaim".into(),
                    namespace: Some("prod".into()),
                    name: "data-db-0".into(),
                },
                "pvc-uid",
                BTreeMap::new(),
                &annotations,
                vec![Owner {
                    uid: "sts-uid".into(),
                    group: "apps".into(),
                    kind: "StatefulSet".into(),
                }],
            ),
            &snapshot,
        );
        index
    }

    fn block(api_version: &str, kind: &str, ns: &str, name: &str, uid: &str) -> Block {
        Block {
            policy: Some(PolicyRef::namespaced("prod", "orders")),
            attempt: BlockedAttempt {
                object: ObjectReference {
                    api_version: Some(api_version.into()),
                    kind: Some(kind.into()),
                    namespace: Some(ns.into()),
                    name: Some(name.into()),
                    uid: Some(uid.into()),
                    ..Default::default()
                },
                subject: "system:serviceaccount:ci:agent".into(),
                protected_by: "ProtectedResource/prod/orders".into(),
                count: 1,
                audited: false,
            },
        }
    }

    #[test]
    fn only_objects_the_index_holds_are_recorded_and_as_it_names_them() {
        let index = index();
        let ledger = BlockLedger::default();
        // Forged: the claim's kind and name, another uid; an unknown uid; a known uid as
        // another kind of owner.
        assert!(!ledger.submit(
            block("v1", "PersistentVolumeClaim", "prod", "data-db-0", "forged"),
            &index
        ));
        assert!(!ledger.submit(block("v1", "Secret", "kube-system", "x", "nope"), &index));
        assert!(!ledger.submit(
            block("apps/v1", "Deployment", "prod", "db", "sts-uid"),
            &index
        ));
        ledger.verify_pending(&index, Instant::now() + VERIFY_WINDOW);
        assert_eq!(ledger.unverified(), 0);
        assert!(ledger.drain().is_empty());
        assert!(ledger.drain_attempts().is_empty());

        // The claim's uid under another name lands on the claim; its owner is known too.
        assert!(ledger.submit(
            block(
                "v1",
                "PersistentVolumeClaim",
                "default",
                "renamed",
                "pvc-uid"
            ),
            &index
        ));
        assert!(ledger.submit(
            block("apps/v1", "StatefulSet", "prod", "db", "sts-uid"),
            &index
        ));
        let counted = ledger.drain();
        let orders = &counted[&PolicyRef::namespaced("prod", "orders")];
        assert_eq!(orders.count, 2);
        let mut attempts = ledger.drain_attempts();
        attempts.sort_by_key(|a| a.object.kind.clone());
        let names: Vec<_> = attempts
            .iter()
            .map(|a| {
                format!(
                    "{} {} {}/{}",
                    a.object.api_version.as_deref().unwrap_or_default(),
                    a.object.kind.as_deref().unwrap_or_default(),
                    a.object.namespace.as_deref().unwrap_or_default(),
                    a.object.name.as_deref().unwrap_or_default()
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                "v1 PersistentVolumeClaim prod/data-db-0",
                "apps/v1 StatefulSet prod/db"
            ]
        );
    }

    #[test]
    fn attempts_wait_for_the_index_within_a_window_and_a_cap() {
        let ledger = BlockLedger::default();
        let empty = ObjectIndex::default();
        for i in 0..UNVERIFIED_CAP + 10 {
            ledger.submit(
                block("v1", "PersistentVolumeClaim", "prod", "x", &format!("u{i}")),
                &empty,
            );
        }
        assert_eq!(ledger.unverified(), UNVERIFIED_CAP);
        // The claim appears (its watch event came after the review): recorded.
        ledger.submit(
            block(
                "v1",
                "PersistentVolumeClaim",
                "prod",
                "data-db-0",
                "pvc-uid",
            ),
            &empty,
        );
        ledger.verify_pending(&index(), Instant::now());
        assert_eq!(ledger.drain_attempts().len(), 1);
        assert_eq!(ledger.unverified(), UNVERIFIED_CAP - 1);
        // The rest never appear: dropped after the window.
        ledger.verify_pending(&index(), Instant::now() + VERIFY_WINDOW);
        assert_eq!(ledger.unverified(), 0);
        assert!(ledger.drain_attempts().is_empty());
    }

    const BOUND: Duration = Duration::from_secs(10);

    #[test]
    fn a_quiet_watch_is_never_stale_and_a_failing_one_only_past_the_bound() {
        let t0 = Instant::now();
        let mut fresh = Freshness::new(BOUND);
        fresh.ok("serviceaccounts", true, t0);
        // No event for an hour: a quiet kind, not a stale one.
        assert_eq!(fresh.stale(t0 + Duration::from_secs(3600)), vec![]);
        assert_eq!(fresh.global_staleness(t0 + Duration::from_secs(3600)), None);
        // Failing, repeatedly: stale only once the first error in a row is older than the bound.
        let t1 = t0 + Duration::from_secs(100);
        fresh.failing("serviceaccounts", true, "connection refused", t1);
        fresh.failing(
            "serviceaccounts",
            true,
            "connection refused",
            t1 + BOUND / 2,
        );
        assert_eq!(fresh.global_staleness(t1 + BOUND), None);
        let why = fresh
            .global_staleness(t1 + BOUND + Duration::from_secs(1))
            .expect("stale");
        assert!(why.contains("10s staleness bound"), "{why}");
        assert!(
            why.contains("watch of serviceaccounts failing for 11s (connection refused)"),
            "{why}"
        );
        // Delivering again (an event, or a completed relist): fresh at once.
        fresh.ok("serviceaccounts", true, t1 + BOUND * 2);
        assert_eq!(fresh.global_staleness(t1 + BOUND * 3), None);
        // A new error starts a new count.
        fresh.failing("serviceaccounts", true, "again", t1 + BOUND * 3);
        assert_eq!(fresh.global_staleness(t1 + BOUND * 4), None);
    }

    #[test]
    fn a_stale_kind_does_not_make_the_replica_stale() {
        let t0 = Instant::now();
        let mut fresh = Freshness::new(BOUND);
        fresh.ok("protectedresources.agentguard.dev", true, t0);
        fresh.failing("databases.example.com", false, "403 forbidden", t0);
        let later = t0 + BOUND * 2;
        assert_eq!(fresh.global_staleness(later), None);
        let stale = fresh.stale(later);
        assert_eq!(stale.len(), 1);
        assert_eq!(stale[0].watch, "databases.example.com");
        assert!(!stale[0].global);
        // A watch no longer running is forgotten.
        fresh.forget("databases.example.com");
        assert_eq!(fresh.stale(later), vec![]);
    }

    #[test]
    fn after_an_outage_every_watch_is_unverified_until_it_delivers() {
        let t0 = Instant::now();
        let mut fresh = Freshness::new(BOUND);
        fresh.ok("serviceaccounts", true, t0);
        fresh.ok("persistentvolumeclaims", false, t0);
        let down = t0 + Duration::from_secs(5);
        fresh.failing(API_HEALTH, true, "no answer", down);
        assert!(fresh.global_staleness(down + BOUND * 2).is_some());
        assert_eq!(
            fresh.health(),
            vec![
                ("persistentvolumeclaims".to_owned(), false),
                ("serviceaccounts".to_owned(), false)
            ]
        );
        // Back: the API answers, but the watches' connections may be dead without an error.
        let back = down + BOUND * 2;
        fresh.unverified_since(down, "restarting");
        fresh.ok(API_HEALTH, true, back);
        assert!(
            fresh
                .global_staleness(back)
                .is_some_and(|w| w.contains("serviceaccounts")),
            "{:?}",
            fresh.global_staleness(back)
        );
        fresh.ok("serviceaccounts", true, back);
        assert_eq!(fresh.global_staleness(back), None);
        assert_eq!(
            fresh.health(),
            vec![
                ("persistentvolumeclaims".to_owned(), false),
                ("serviceaccounts".to_owned(), true)
            ]
        );
    }

    #[test]
    fn readiness_reports_why_it_is_not_ready() {
        let readiness = Readiness::waiting_for(&[POLICIES_GATE]).with_max_staleness(BOUND);
        assert_eq!(
            readiness.not_ready().as_deref(),
            Some("caches not synced yet: policies")
        );
        readiness.synced(POLICIES_GATE);
        assert!(readiness.is_ready());
        // Failing since long ago (time is injected through the bookkeeping).
        readiness
            .fresh()
            .failing(API_HEALTH, true, "no answer", Instant::now() - BOUND * 2);
        assert!(!readiness.is_ready());
        assert!(
            readiness
                .not_ready()
                .is_some_and(|w| w.contains("watch of api failing"))
        );
        readiness.api_checked(Ok(()), Instant::now());
        assert!(readiness.is_ready());
        readiness.stop();
        assert_eq!(readiness.not_ready().as_deref(), Some("shutting down"));
    }
}
