//! End-to-end: leader election under faults, against the real control plane. A leader whose
//! API server hangs steps down by itself within the renew deadline, another replica takes
//! over, and the API server's audit log shows the two never acted as leader at once. A leader
//! that gets SIGTERM hands the lease back, so another replica takes over within seconds.
//! Requires `hack/cluster.sh up`; fails (never skips) without a control plane.

mod support;

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
    let cluster = support::Cluster::connect();
    let ns = TestNamespace::create(&cluster, "leader-hang");
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

    // The leader's API server hangs: every call it makes, open or new, gets no answer.
    let hung = Instant::now();
    proxy.blackhole();
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
    eprintln!("a stepped down {step_down:?} after its API server hung; b led after {takeover:?}");
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
