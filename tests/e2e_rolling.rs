//! End-to-end: a rolling restart of two replicas fails no admission call. Two agentguard
//! processes serve the webhook behind a TCP load balancer of the test's own
//! (`support::Balancer`: round robin over the replicas whose `/readyz` answers 200, checked
//! every second, as a Service's endpoints follow a terminating Pod), and the webhook
//! configuration agentguard writes calls the balancer. While an agent's refused deletions and a
//! human's guarded updates run without pause, each replica in turn gets SIGTERM (as the kubelet
//! sends on a rollout), exits, and is started again; then the other. Every call must be judged:
//! the agent's refused by agentguard, the human's let through, none failing for want of a
//! webhook. Requires `hack/cluster.sh up`; fails (never skips) without a control plane.

mod support;

use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::{Cluster, GuardOptions, TestNamespace, TwoReplicas, stderr, wait_until};

fn ready(metrics: u16) -> bool {
    support::http_status(metrics, "/readyz") == Some(200)
}

#[test]
fn a_rolling_restart_under_load_fails_no_admission_call() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "rolling");
    let agent = ns.agent("cursor-agent");
    let mut replicas = TwoReplicas::start(
        &ns,
        &agent,
        GuardOptions {
            agent_service_accounts: Some(format!("{}/cursor-*", ns.name)),
            ..Default::default()
        },
    );
    let [ports_a, ports_b] = replicas.ports;
    let mut replica_b = replicas.spawn_b(&ns);
    wait_until(Duration::from_secs(30), "replica b to be ready", || {
        ready(ports_b.1)
    });
    ns.pvc("data", true);

    let stop = AtomicBool::new(false);
    let (refused, updated) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let failures = Mutex::new(Vec::<String>::new());
    let started = Instant::now();
    let mut timeline = Vec::new();
    // The load's threads call kubectl through the cluster (a TestNamespace stays on this one).
    let (cluster, name, as_agent) = (&cluster, ns.name.clone(), format!("--as={agent}"));
    std::thread::scope(|s| {
        // Two agents' refused deletions and one human's guarded update, back to back.
        for _ in 0..2 {
            s.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    let out = cluster.kubectl(&[
                        "-n",
                        &name,
                        &as_agent,
                        "delete",
                        "pvc",
                        "data",
                        "--dry-run=server",
                    ]);
                    let err = stderr(&out);
                    if err.contains("agentguard: DENIED") {
                        refused.fetch_add(1, Ordering::SeqCst);
                    } else {
                        let at = started.elapsed();
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("{at:?} agent: {err}"));
                    }
                }
            });
        }
        s.spawn(|| {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let out = cluster.kubectl(&[
                    "-n",
                    &name,
                    "annotate",
                    "--overwrite",
                    "pvc",
                    "data",
                    &format!("agentguard.dev/note=tick-{n}"),
                ]);
                if out.status.success() {
                    updated.fetch_add(1, Ordering::SeqCst);
                } else {
                    let at = started.elapsed();
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("{at:?} human: {}", stderr(&out)));
                }
            }
        });

        std::thread::sleep(Duration::from_secs(3));
        // Replica a (the leader) first: SIGTERM, exit, a new process on the same ports.
        timeline.push((started.elapsed(), "SIGTERM to a"));
        replicas.a.terminate();
        wait_until(Duration::from_secs(25), "replica a to exit", || {
            replicas.a.exited()
        });
        timeline.push((started.elapsed(), "a exited"));
        replicas.respawn_a(&ns);
        wait_until(
            Duration::from_secs(30),
            "the new replica a to be ready",
            || ready(ports_a.1),
        );
        timeline.push((started.elapsed(), "new a ready"));
        std::thread::sleep(Duration::from_secs(3));
        // Then replica b.
        timeline.push((started.elapsed(), "SIGTERM to b"));
        let status = Command::new("kill")
            .args(["-TERM", &replica_b.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        wait_until(Duration::from_secs(25), "replica b to exit", || {
            replica_b.try_wait().unwrap().is_some()
        });
        timeline.push((started.elapsed(), "b exited"));
        replica_b = replicas.spawn_b(&ns);
        wait_until(
            Duration::from_secs(30),
            "the new replica b to be ready",
            || ready(ports_b.1),
        );
        timeline.push((started.elapsed(), "new b ready"));
        std::thread::sleep(Duration::from_secs(3));
        stop.store(true, Ordering::SeqCst);
    });
    let _ = replica_b.kill();
    let _ = replica_b.wait();

    let (refused, updated) = (refused.into_inner(), updated.into_inner());
    let failures = failures.into_inner().unwrap();
    eprintln!("timeline: {timeline:?}");
    eprintln!(
        "{refused} agent deletions refused, {updated} human updates, {} failed",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "admission calls failed during the rolling restart: {failures:#?}\ntimeline: {timeline:?}"
    );
    // Enough calls to have covered every step of the restart.
    assert!(
        refused >= 40 && updated >= 15,
        "{refused} refused, {updated} updated"
    );
}
