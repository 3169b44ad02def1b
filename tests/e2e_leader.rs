//! End-to-end: leader election under faults, against the real control plane. A leader whose
//! API connection hangs, is cut, or is answered too slowly (a TCP proxy between it and the API
//! server) steps down by itself within the renew deadline, another replica takes
//! over, and the API server's audit log shows the two never acted as leader at once. A leader
//! that gets SIGTERM hands the lease back, so another replica takes over within seconds.
//! A replica whose clocks run 40 s ahead of or behind the others' (libfaketime) neither takes a
//! live lease nor takes longer than a lease duration and two retry periods to replace a dead
//! leader.
//! Requires `hack/cluster.sh up` and libfaketime (`apt-get install faketime`); fails (never
//! skips) without either.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use support::{FaultProxy, Guard, GuardOptions, TestNamespace, stdout, wait_until};

/// What agentguard's leader election promises (src/operator/leader.rs).
const RENEW_DEADLINE: Duration = Duration::from_secs(10);
const LEASE_DURATION: Duration = Duration::from_secs(15);

fn holder(ns: &TestNamespace<'_>) -> String {
    stdout(&ns.kubectl(&[
        "get",
        "lease",
        &format!("agentguard-{}", ns.name),
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]))
}

fn log_of(dir: &Path, replica: &str) -> String {
    std::fs::read_to_string(dir.join(format!("agentguard-{replica}.log"))).unwrap_or_default()
}

fn stepped_down(log: &str) -> bool {
    log.lines()
        .any(|l| l.contains("leadership changed") && l.contains("leading=false"))
}

#[test]
fn a_leader_whose_api_server_hangs_steps_down_before_another_takes_over() {
    leader_fault("leader-hang", "hung", FaultProxy::blackhole);
}

#[test]
fn a_leader_whose_api_connections_are_cut_steps_down_before_another_takes_over() {
    leader_fault("leader-cut", "cut", FaultProxy::cut);
}

#[test]
fn a_leader_whose_api_server_answers_too_slowly_steps_down_before_another_takes_over() {
    // Every chunk 6 s late each way: a lease call takes over 12 s, past the renew deadline.
    leader_fault("leader-slow", "slowed", |proxy| {
        proxy.slow(Duration::from_secs(6))
    });
}

/// Two replicas; `fault` hits the leader's API connection. The leader steps down by itself
/// within the renew deadline, the other takes over only after, the healed leader stays a
/// follower, and the API server's audit log shows the two never acted as leader at once.
fn leader_fault(prefix: &str, what: &str, fault: impl Fn(&FaultProxy)) {
    let cluster = support::Cluster::connect();
    let ns = TestNamespace::create(&cluster, prefix);
    let agent = ns.agent("cursor-agent");
    let dir = tempfile::tempdir().unwrap();
    // Each replica is a user of its own, so the audit log tells whose writes are whose; a
    // reaches the API server through a proxy that can hang.
    let proxy = FaultProxy::start(support::api_server_port(&cluster.kubeconfig));
    let user_a = format!("system:serviceaccount:{}:replica-a", ns.name);
    let user_b = format!("system:serviceaccount:{}:replica-b", ns.name);
    let direct_a = support::replica_kubeconfig(&ns, dir.path(), "replica-a");
    let kubeconfig_a = proxy.kubeconfig(&direct_a, &dir.path().join("proxied-a.kubeconfig"));
    let kubeconfig_b = support::replica_kubeconfig(&ns, dir.path(), "replica-b");
    let agents = Some(format!("{}/cursor-*", ns.name));
    let options_a = GuardOptions {
        agent_service_accounts: agents.clone(),
        kubeconfig: Some(kubeconfig_a),
        ..Default::default()
    };
    let options_b = GuardOptions {
        agent_service_accounts: agents,
        kubeconfig: Some(kubeconfig_b),
        ..Default::default()
    };
    let guard = Guard::start_with(&ns, &agent, &options_a);
    assert_eq!(holder(&ns), format!("a-{}", ns.name));
    let (webhook_b, metrics_b) = (support::free_port(), support::free_port());
    let mut replica_b =
        support::spawn_agentguard(&ns, &options_b, guard.dir.path(), webhook_b, metrics_b, "b");
    wait_until(Duration::from_secs(30), "replica b to be ready", || {
        support::http_status(metrics_b, "/readyz") == Some(200)
    });
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(holder(&ns), format!("a-{}", ns.name), "b took a live lease");

    // The fault: every call the leader makes hangs, is cut, or is answered too late.
    let hung = Instant::now();
    fault(&proxy);
    wait_until(
        RENEW_DEADLINE + Duration::from_secs(3),
        "a to step down by itself",
        || stepped_down(&log_of(guard.dir.path(), "a")),
    );
    let step_down = hung.elapsed();
    wait_until(Duration::from_secs(30), "b to take the lease", || {
        holder(&ns) == format!("b-{}", ns.name)
    });
    let takeover = hung.elapsed();
    eprintln!(
        "a stepped down {step_down:?} after its API connection was {what}; b led after {takeover:?}"
    );
    assert!(
        step_down <= RENEW_DEADLINE + Duration::from_secs(2),
        "a stepped down after {step_down:?}"
    );
    assert!(takeover > step_down, "b led before a stepped down");

    // The API server answers a again: a stays a follower of a lease b keeps renewing.
    proxy.heal();
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(
        holder(&ns),
        format!("b-{}", ns.name),
        "a took the lease back"
    );
    let log_a = log_of(guard.dir.path(), "a");
    let after_step_down = log_a
        .lines()
        .skip_while(|l| !(l.contains("leadership changed") && l.contains("leading=false")))
        .collect::<Vec<_>>();
    assert!(
        !after_step_down
            .iter()
            .any(|l| l.contains("leadership changed") && l.contains("leading=true")),
        "a led again while b held the lease: {after_step_down:#?}"
    );

    // At most one leader at any time, from what the API server recorded. A replica leads from
    // a successful lease write until at most RENEW_DEADLINE after its last one; every write
    // of the lease or of the webhook configurations by a replica falls in its own span, and
    // the spans do not overlap.
    let lease = format!("agentguard-{}", ns.name);
    let writes = support::audit_writes(&cluster);
    let lease_writes = |user: &str| {
        writes
            .iter()
            .filter(|w| w.user == user && w.resource == "leases" && w.name == lease)
            .filter(|w| (200..300).contains(&w.code))
            .map(|w| w.at)
            .collect::<Vec<_>>()
    };
    let (leases_a, leases_b) = (lease_writes(&user_a), lease_writes(&user_b));
    assert!(!leases_a.is_empty() && !leases_b.is_empty(), "{writes:#?}");
    let a_until = *leases_a.last().unwrap() + RENEW_DEADLINE;
    let b_from = leases_b[0];
    assert!(
        a_until <= b_from,
        "a led until {a_until} (last renewal + renew deadline), b from {b_from}"
    );
    let gap = b_from.duration_since(*leases_a.last().unwrap());
    eprintln!("a's last renewal to b's first: {gap:?} (lease duration {LEASE_DURATION:?})");
    for w in writes.iter().filter(|w| {
        (200..300).contains(&w.code)
            && w.resource.ends_with("webhookconfigurations")
            && w.name == guard.webhook_name
    }) {
        if w.user == user_a {
            assert!(w.at <= a_until, "a wrote after its leadership: {w:?}");
        } else if w.user == user_b {
            assert!(w.at >= b_from, "b wrote before its leadership: {w:?}");
        }
    }
    replica_b.kill().unwrap();
    replica_b.wait().unwrap();
}

#[test]
fn on_sigterm_the_leader_releases_the_lease_and_another_takes_over_at_once() {
    let cluster = support::Cluster::connect();
    let ns = TestNamespace::create(&cluster, "leader-term");
    let agent = ns.agent("cursor-agent");
    let options = GuardOptions::default();
    let mut guard = Guard::start_with(&ns, &agent, &options);
    assert_eq!(holder(&ns), format!("a-{}", ns.name));
    let (webhook_b, metrics_b) = (support::free_port(), support::free_port());
    let mut replica_b =
        support::spawn_agentguard(&ns, &options, guard.dir.path(), webhook_b, metrics_b, "b");
    wait_until(Duration::from_secs(30), "replica b to be ready", || {
        support::http_status(metrics_b, "/readyz") == Some(200)
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(holder(&ns), format!("a-{}", ns.name));

    // SIGTERM: a hands the lease back at once (it keeps answering reviews for its shutdown
    // delay), and b, reading the lease every 2 s, takes it well within a lease duration.
    let terminated = Instant::now();
    guard.terminate();
    wait_until(Duration::from_secs(10), "b to take the lease", || {
        holder(&ns) == format!("b-{}", ns.name)
    });
    let takeover = terminated.elapsed();
    eprintln!("b led {takeover:?} after a got SIGTERM");
    assert!(
        takeover < Duration::from_secs(3),
        "b took {takeover:?} to lead"
    );
    wait_until(Duration::from_secs(20), "a to exit", || guard.exited());

    // The last replica stops: the lease is left free (holder empty), not held by a process
    // that is gone.
    let out = std::process::Command::new("kill")
        .args(["-TERM", &replica_b.id().to_string()])
        .status()
        .unwrap();
    assert!(out.success());
    let exited = replica_b.wait().unwrap();
    assert!(exited.success(), "b exited with {exited}");
    assert_eq!(holder(&ns), "", "the lease still names b after it exited");
}

/// How often a replica reads (and the leader renews) the lease (src/operator/leader.rs).
const RETRY_PERIOD: Duration = Duration::from_secs(2);

/// A replica process killed when the test ends, however it ends.
struct Replica(std::process::Child);

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every (apiGroup, resource) the webhook configuration `name` routes.
fn routed(cluster: &support::Cluster, name: &str) -> BTreeSet<String> {
    let out = cluster.kubectl(&["get", "validatingwebhookconfiguration", name, "-o", "json"]);
    if !out.status.success() {
        return BTreeSet::new();
    }
    let config: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let mut kinds = BTreeSet::new();
    for webhook in config["webhooks"].as_array().into_iter().flatten() {
        for rule in webhook["rules"].as_array().into_iter().flatten() {
            for group in rule["apiGroups"].as_array().into_iter().flatten() {
                for resource in rule["resources"].as_array().into_iter().flatten() {
                    kinds.insert(format!(
                        "{}/{}",
                        group.as_str().unwrap_or_default(),
                        resource.as_str().unwrap_or_default()
                    ));
                }
            }
        }
    }
    kinds
}

/// The wall clock a replica's newest log line carries, minus the real time now.
fn logged_clock_offset(dir: &Path, replica: &str) -> jiff::SignedDuration {
    let log = log_of(dir, replica);
    let logged: jiff::Timestamp = log
        .lines()
        .rev()
        .find_map(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no timestamped line in {replica}'s log: {log}"));
    logged.duration_since(jiff::Timestamp::now())
}

/// Two replicas share a lease; b's clocks (wall and monotonic, through libfaketime) are
/// `offset_secs` away from a's and the API server's. a leads; b starts after it. For several
/// lease durations b never takes the live lease, and the API server's audit log shows that
/// only a writes the lease or the webhook configuration, the configuration never stops routing
/// a kind it routed, and an agent's delete of a protected claim is refused. Then a is killed
/// (no release): b takes over within a lease duration and two retry periods of a's last
/// renewal, never sooner than a lease duration after it, and the holder changes exactly once.
///
/// A follower judging expiry by the holder's renew time against its own wall clock fails
/// both: ahead, it takes the live lease at its first read (two leaders); behind, it waits the
/// offset on top of the lease duration before taking over from a dead leader.
fn a_follower_with_its_clock_offset(prefix: &str, offset_secs: i64) {
    let started = Instant::now();
    let cluster = support::Cluster::connect();
    let _ = support::libfaketime();
    let offset = jiff::SignedDuration::from_secs(offset_secs);
    if offset_secs < 0 {
        // b checks the API server's certificate against its own clock: one issued (by
        // `hack/cluster.sh up`) less than the offset ago is not yet valid for it.
        let cert = cluster
            .kubeconfig
            .parent()
            .unwrap()
            .join("pki/apiserver.crt");
        let issued = std::fs::metadata(&cert)
            .and_then(|m| m.modified())
            .unwrap_or_else(|e| panic!("{}: {e}", cert.display()));
        let age = issued.elapsed().unwrap_or_default();
        let needed = offset.unsigned_abs() + Duration::from_secs(2);
        if age < needed {
            eprintln!(
                "waiting {:?} until the API server's certificate is valid on b's clock",
                needed - age
            );
            std::thread::sleep(needed - age);
        }
    }
    let ns = TestNamespace::create(&cluster, prefix);
    let agent = ns.agent("cursor-agent");
    let dir = tempfile::tempdir().unwrap();
    let user_a = format!("system:serviceaccount:{}:replica-a", ns.name);
    let user_b = format!("system:serviceaccount:{}:replica-b", ns.name);
    let agents = Some(format!("{}/cursor-*", ns.name));
    let options_a = GuardOptions {
        agent_service_accounts: agents.clone(),
        kubeconfig: Some(support::replica_kubeconfig(&ns, dir.path(), "replica-a")),
        ..Default::default()
    };
    let options_b = GuardOptions {
        agent_service_accounts: agents,
        kubeconfig: Some(support::replica_kubeconfig(&ns, dir.path(), "replica-b")),
        clock_offset: Some(format!("{offset_secs:+}s")),
        ..Default::default()
    };
    let mut guard = Guard::start_with(&ns, &agent, &options_a);
    let (a, b) = (format!("a-{}", ns.name), format!("b-{}", ns.name));
    assert_eq!(holder(&ns), a);
    let webhook_name = guard.webhook_name.clone();
    let kinds = routed(&cluster, &webhook_name);
    assert!(
        kinds.contains("/persistentvolumeclaims"),
        "claims not routed: {kinds:?}"
    );
    let (webhook_b, metrics_b) = (support::free_port(), support::free_port());
    let _replica_b = Replica(support::spawn_agentguard(
        &ns,
        &options_b,
        guard.dir.path(),
        webhook_b,
        metrics_b,
        "b",
    ));
    wait_until(Duration::from_secs(30), "replica b to be ready", || {
        support::http_status(metrics_b, "/readyz") == Some(200)
    });
    // The offset is in force: b's log carries its own wall clock.
    let logged = logged_clock_offset(guard.dir.path(), "b");
    eprintln!("b's wall clock is {logged:?} from the real one (offset {offset:?})");
    assert!(
        (logged - offset).unsigned_abs() < Duration::from_secs(5),
        "libfaketime did not move b's clock by {offset:?}: its log is {logged:?} off"
    );

    // Several lease durations with both running: a keeps the lease, the rules keep every kind,
    // the agent's delete of the protected claim is refused.
    let checks = |phase: &str| {
        let now = routed(&cluster, &webhook_name);
        let lost = kinds.difference(&now).collect::<Vec<_>>();
        assert!(lost.is_empty(), "{phase}: the rules lost {lost:?}");
        let delete = ns.kubectl_as(
            &agent,
            &["delete", "pvc", "agentguard-probe", "--dry-run=server"],
        );
        assert!(
            !delete.status.success(),
            "{phase}: the agent's delete of a protected claim was allowed"
        );
        support::stderr(&delete)
    };
    let window = Instant::now();
    while window.elapsed() < 2 * LEASE_DURATION {
        assert_eq!(holder(&ns), a, "b took a live lease");
        assert!(
            checks("both running").contains("agentguard: DENIED"),
            "not judged while both run"
        );
        std::thread::sleep(Duration::from_secs(1));
    }

    // a dies without releasing: b waits out the lease on its own clock, then leads.
    let killed_at = jiff::Timestamp::now();
    let killed = Instant::now();
    guard.kill();
    let bound = LEASE_DURATION + 2 * RETRY_PERIOD + Duration::from_secs(1);
    let deadline = killed + bound + Duration::from_secs(10);
    while holder(&ns) != b {
        assert!(
            Instant::now() < deadline,
            "b did not take over within {:?} of a's death (bound {bound:?}); holder {:?}",
            killed.elapsed(),
            holder(&ns)
        );
        // No webhook answers now (failurePolicy Fail): the delete is still refused.
        checks("no leader");
        std::thread::sleep(Duration::from_millis(500));
    }
    let takeover = killed.elapsed();
    eprintln!("b led {takeover:?} after a was killed (offset {offset:?})");
    assert!(takeover <= bound, "b took {takeover:?} to take over");
    // b now writes the configuration (its own URL) and judges.
    wait_until(Duration::from_secs(20), "b to judge", || {
        checks("b leading").contains("agentguard: DENIED")
    });
    checks("b leading");

    // b's renew times are written on its own (offset) wall clock; nobody compares them.
    let renewed = stdout(&ns.kubectl(&[
        "get",
        "lease",
        &format!("agentguard-{}", ns.name),
        "-o",
        "jsonpath={.spec.renewTime} {.spec.leaseTransitions}",
    ]));
    let (renew_time, transitions) = renewed.split_once(' ').unwrap();
    let renew_time: jiff::Timestamp = renew_time.parse().unwrap();
    let written = renew_time.duration_since(jiff::Timestamp::now());
    assert!(
        (written - offset).unsigned_abs() < Duration::from_secs(5),
        "b's renew time is {written:?} from the real clock, not {offset:?}"
    );
    assert_eq!(transitions, "1", "the lease changed hands more than once");

    // From what the API server recorded: the lease's writers change exactly once, from a to
    // b, after a died; b waited a lease duration after a's last renewal, and took it within
    // two retry periods more; each wrote the webhook configuration only while it led.
    let lease = format!("agentguard-{}", ns.name);
    let writes = support::audit_writes(&cluster);
    let lease_writes = writes
        .iter()
        .filter(|w| w.resource == "leases" && w.name == lease && w.namespace == ns.name)
        .collect::<Vec<_>>();
    let b_early = lease_writes
        .iter()
        .filter(|w| w.user == user_b && w.at < killed_at)
        .collect::<Vec<_>>();
    assert!(b_early.is_empty(), "b wrote the live lease: {b_early:#?}");
    let holders = lease_writes
        .iter()
        .filter(|w| (200..300).contains(&w.code))
        .map(|w| w.user.as_str())
        .collect::<Vec<_>>();
    let mut changes = holders.clone();
    changes.dedup();
    assert_eq!(
        changes,
        [user_a.as_str(), user_b.as_str()],
        "the lease's writers, in order: {holders:?}"
    );
    let ok_at = |user: &str| {
        lease_writes
            .iter()
            .filter(|w| w.user == user && (200..300).contains(&w.code))
            .map(|w| w.at)
            .collect::<Vec<_>>()
    };
    let a_last = *ok_at(&user_a).last().unwrap();
    let b_first = ok_at(&user_b)[0];
    let gap = b_first.duration_since(a_last).unsigned_abs();
    eprintln!("a's last renewal to b's first lease write: {gap:?} (offset {offset:?})");
    assert!(
        gap >= LEASE_DURATION,
        "b took the lease {gap:?} after a's last renewal, before it could expire"
    );
    assert!(
        gap <= LEASE_DURATION + 2 * RETRY_PERIOD + Duration::from_secs(1),
        "b took the lease {gap:?} after a's last renewal"
    );
    let a_until = a_last + RENEW_DEADLINE;
    for w in writes.iter().filter(|w| {
        (200..300).contains(&w.code)
            && w.resource.ends_with("webhookconfigurations")
            && w.name == webhook_name
    }) {
        if w.user == user_a {
            assert!(w.at <= a_until, "a wrote after its leadership: {w:?}");
        } else if w.user == user_b {
            assert!(w.at >= b_first, "b wrote before its leadership: {w:?}");
        }
    }
    // No protected object was deleted: the claim is there, and no delete of a claim in the
    // namespace succeeded.
    assert!(ns.pvc_intact("agentguard-probe"));
    let deleted = writes
        .iter()
        .filter(|w| w.verb == "delete" && w.resource == "persistentvolumeclaims")
        .filter(|w| w.namespace == ns.name && (200..300).contains(&w.code))
        .collect::<Vec<_>>();
    assert!(deleted.is_empty(), "claims deleted: {deleted:#?}");
    eprintln!("offset {offset:?}: passed in {:?}", started.elapsed());
}

#[test]
fn a_follower_whose_clock_runs_ahead_never_takes_a_live_lease_and_takes_over_in_time() {
    a_follower_with_its_clock_offset("leader-ahead", 40);
}

#[test]
fn a_follower_whose_clock_runs_behind_takes_over_from_a_dead_leader_in_time() {
    a_follower_with_its_clock_offset("leader-behind", -40);
}
