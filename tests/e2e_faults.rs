//! Faults, with protected data never lost: while an agent keeps trying to delete protected
//! claims (real deletes, not dry runs) and a human keeps working (creating and deleting
//! ConfigMaps), the webhook process is killed and restarted, the API server is restarted, and
//! etcd is restarted. After each: no protected claim is gone, the human's operations succeed
//! again, the agent is refused by agentguard again, and the time to recover is printed.
//! (Certificate rotation under load and leader failover: tests/e2e_webhook_config.rs.)
//!
//! This binary restarts the shared test control plane; cargo runs test binaries one after
//! another, so no other suite sees it. Requires `hack/cluster.sh up`.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::{Cluster, Guard, GuardOptions, TestNamespace, stderr};

const CLAIMS: [&str; 3] = ["orders-db", "billing-db", "backups"];

fn restart(cluster: &Cluster, component: &str) {
    let dir: PathBuf = cluster.kubeconfig.parent().unwrap().to_owned();
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/hack/cluster.sh"))
        .args(["restart", component])
        .env("AGENTGUARD_CLUSTER_DIR", &dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "hack/cluster.sh restart {component}: {}",
        stderr(&out)
    );
}

/// Seconds until the human's operation succeeds and the agent is refused by agentguard.
fn recovered(ns: &TestNamespace<'_>, agent: &str, fault: &str, since: Instant) -> f64 {
    let deadline = since + Duration::from_secs(120);
    let mut n = 0;
    loop {
        n += 1;
        let cm = format!("after-{}-{n}", fault.replace(' ', "-"));
        let human = ns.kubectl(&["create", "configmap", &cm]).status.success()
            && ns.kubectl(&["delete", "configmap", &cm]).status.success();
        let refused = stderr(&ns.kubectl_as(agent, &["delete", "pvc", CLAIMS[0], "--wait=false"]))
            .contains("agentguard: DENIED");
        if human && refused {
            return since.elapsed().as_secs_f64();
        }
        assert!(
            Instant::now() < deadline,
            "no recovery within 120 s after {fault}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn protected_data_survives_webhook_apiserver_and_etcd_faults() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "faults");
    let agent = ns.agent("cursor-agent");
    let options = GuardOptions::default();
    let mut guard = Guard::start_with(&ns, &agent, &options);
    for claim in CLAIMS {
        ns.pvc(claim, true);
    }

    // The agent, relentlessly: real deletes of every protected claim.
    let stop = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(AtomicUsize::new(0));
    let agent_loop = {
        let (stop, attempts) = (stop.clone(), attempts.clone());
        let (kubectl, kubeconfig, namespace, agent) = (
            cluster.kubectl_path(),
            cluster.kubeconfig.clone(),
            ns.name.clone(),
            agent.clone(),
        );
        std::thread::spawn(move || {
            let mut accepted = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                for claim in CLAIMS {
                    let out = Command::new(&kubectl)
                        .arg("--kubeconfig")
                        .arg(&kubeconfig)
                        .args(["-n", &namespace, &format!("--as={agent}")])
                        .args([
                            "--request-timeout=5s",
                            "delete",
                            "pvc",
                            claim,
                            "--wait=false",
                        ])
                        .output()
                        .unwrap();
                    attempts.fetch_add(1, Ordering::Relaxed);
                    if out.status.success() {
                        accepted.push(claim);
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            accepted
        })
    };

    let mut report = Vec::new();
    // 1. The webhook process dies: the API server fails closed.
    guard.kill();
    let out = ns.kubectl_as(&agent, &["delete", "pvc", CLAIMS[1], "--wait=false"]);
    assert!(
        !out.status.success(),
        "a deletion passed while the webhook was down"
    );
    assert!(
        stderr(&out).contains("failed calling webhook"),
        "{}",
        stderr(&out)
    );
    std::thread::sleep(Duration::from_secs(3));
    let started = Instant::now();
    guard.respawn(&ns, &options);
    report.push((
        "webhook process killed and restarted",
        recovered(&ns, &agent, "webhook", started),
    ));

    // 2. The API server restarts (agentguard's watches must reconnect).
    let started = Instant::now();
    restart(&cluster, "kube-apiserver");
    report.push((
        "kube-apiserver restarted",
        recovered(&ns, &agent, "apiserver", started),
    ));

    // 3. etcd restarts.
    let started = Instant::now();
    restart(&cluster, "etcd");
    report.push(("etcd restarted", recovered(&ns, &agent, "etcd", started)));

    stop.store(true, Ordering::Relaxed);
    let accepted = agent_loop.join().unwrap();
    let tries = attempts.load(Ordering::Relaxed);
    for (fault, secs) in &report {
        println!("{fault}: recovered in {secs:.1} s");
    }
    println!("agent deletion attempts during the run: {tries}");
    assert!(tries > 20, "the agent made only {tries} attempts");
    assert!(
        accepted.is_empty(),
        "agent deletions accepted: {accepted:?}"
    );
    for claim in CLAIMS {
        assert!(ns.pvc_intact(claim), "protected claim {claim} was deleted");
    }
    drop(guard);
    // Requests work again well before the API server's own etcd check turns healthy: leave
    // the shared control plane fully ready for the suites that run after this one.
    cluster.wait_ready(Duration::from_secs(120));
}
