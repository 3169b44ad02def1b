//! End-to-end: readiness means "judging with fresh state", against the real control plane.
//! A policy naming a kind agentguard may not list does not hold a new replica unready: the
//! policy says Ready=False with the RBAC rule to add, and agents' deletions of that kind are
//! refused. A replica whose API connection hangs goes unready within the staleness bound and
//! refuses agents' guarded writes (humans keep working); once the connection heals it starts
//! its watches over and is ready again.
//! Requires `hack/cluster.sh up`; fails (never skips) without a control plane.

mod support;

use std::time::{Duration, Instant};

use support::{
    Cluster, FaultProxy, Guard, GuardOptions, TestNamespace, stderr, stdout, wait_until,
};

fn ready_condition(ns: &TestNamespace<'_>, policy: &str) -> (String, String) {
    let get = |field: &str| {
        stdout(&ns.kubectl(&[
            "get",
            "protectedresource",
            policy,
            "-o",
            &format!("jsonpath={{.status.conditions[?(@.type==\"Ready\")].{field}}}"),
        ]))
    };
    (get("status"), get("message"))
}

#[test]
fn a_policy_naming_an_unlistable_kind_is_not_ready_but_the_replica_is() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "unlistable");
    // agentguard runs as a ServiceAccount of another namespace that may read every API group
    // but the CRD's.
    let home = TestNamespace::create(&cluster, "unlistable-op");
    let group = home.crd("vaults", "Vault");
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = home.operator_blind_to(&group, dir.path());
    let agent = ns.agent("cursor-agent");
    ns.grant("cursor-agent", &format!("vaults.{group}"));
    // The policy exists before the replica starts, as it does at a rollout or a restart.
    cluster.apply(&format!(
        "apiVersion: agentguard.dev/v1alpha1\nkind: ProtectedResource\nmetadata:\n  name: vaults\n  namespace: {ns}\nspec:\n  \
         targets: [{{apiGroups: [{group}], kinds: [Vault]}}]\n---\n\
         apiVersion: {group}/v1\nkind: Vault\nmetadata:\n  name: keys\n  namespace: {ns}\n",
        ns = ns.name
    ));

    // Becomes ready (Guard::start_with waits 30 s for /readyz) and enforces.
    let started = Instant::now();
    let guard = Guard::start_with(
        &ns,
        &agent,
        &GuardOptions {
            kubeconfig: Some(kubeconfig),
            ..Default::default()
        },
    );
    println!(
        "replica ready and enforcing {:.1}s after start, with a policy naming an unlistable kind",
        started.elapsed().as_secs_f64()
    );

    // The policy is not Ready, and says which rule to add.
    let rule = format!(
        "{{apiGroups: [\"{group}\"], resources: [\"vaults\"], verbs: [\"list\", \"watch\"]}}"
    );
    let mut shown = (String::new(), String::new());
    wait_until(
        Duration::from_secs(30),
        "policy Ready=False naming the RBAC rule",
        || {
            shown = ready_condition(&ns, "vaults");
            shown.0 == "False"
                && shown
                    .1
                    .contains(&format!("agentguard may not list vaults.{group}"))
                && shown.1.contains(&rule)
        },
    );
    println!("policy condition: {shown:?}");

    // An agent's deletion of an object of that kind is refused.
    guard.wait_routed("vaults");
    wait_until(
        Duration::from_secs(30),
        "the agent's delete of the Vault to be denied",
        || {
            stderr(&ns.kubectl_as(
                &agent,
                &[
                    "delete",
                    &format!("vaults.{group}"),
                    "keys",
                    "--dry-run=server",
                ],
            ))
            .contains("agentguard: DENIED delete of Vault")
        },
    );
    // The replica stays ready.
    assert_eq!(guard.http_get("/readyz").map(|(s, _)| s), Some(200));
}

const MAX_STALENESS: Duration = Duration::from_secs(10);
/// Detection adds at most one API check (a third of the bound) and one tick (a sixth).
const MARGIN: Duration = Duration::from_secs(10);

#[test]
fn a_replica_with_a_hung_api_connection_goes_unready_and_refuses_agents_then_recovers() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "stale");
    let dir = tempfile::tempdir().unwrap();
    let proxy = FaultProxy::start(support::api_server_port(&cluster.kubeconfig));
    let direct = support::replica_kubeconfig(&ns, dir.path(), "replica");
    let through_proxy = proxy.kubeconfig(&direct, &dir.path().join("proxied.kubeconfig"));
    let agent = ns.agent("cursor-agent");
    let guard = Guard::start_with(
        &ns,
        &agent,
        &GuardOptions {
            kubeconfig: Some(through_proxy),
            agent_service_accounts: Some(format!("{}/cursor-*", ns.name)),
            extra_args: vec![format!("--max-staleness={}s", MAX_STALENESS.as_secs())],
            no_lease: true,
            ..Default::default()
        },
    );
    ns.pvc("scratch", false);
    let agent_delete =
        |name: &str| stderr(&ns.kubectl_as(&agent, &["delete", "pvc", name, "--dry-run=server"]));
    // Fresh: the agent may delete an unprotected claim, not the protected one.
    wait_until(Duration::from_secs(30), "scratch claim judged", || {
        agent_delete("scratch").is_empty()
    });
    assert!(agent_delete("agentguard-probe").contains("agentguard: DENIED delete"));
    // The series must be there with this value (an absent one is not "unhealthy").
    let healthy = |value: f64| {
        let wanted = format!(
            "agentguard_watch_healthy{{resource=\"protectedresources.agentguard.dev\"}} {value}"
        );
        guard
            .http_get("/metrics")
            .is_some_and(|(_, text)| text.lines().any(|l| l == wanted))
    };
    // The gauges are refreshed every tick (a sixth of the bound).
    wait_until(
        Duration::from_secs(5),
        "watch_healthy 1 while fresh",
        || healthy(1.0),
    );
    assert!(
        guard.metric(
            "agentguard_watch_last_sync_timestamp_seconds",
            &[("resource", "serviceaccounts")]
        ) > 0.0
    );

    // The API connection hangs (the API server can still call the webhook).
    proxy.blackhole();
    let cut = Instant::now();
    let mut body = String::new();
    wait_until(
        MAX_STALENESS + MARGIN,
        "/readyz 503 naming staleness",
        || match guard.http_get("/readyz") {
            Some((503, text)) => {
                body = text;
                true
            }
            _ => false,
        },
    );
    let unready_after = cut.elapsed();
    println!(
        "unready {:.1}s after the blackhole (bound {}s): {}",
        unready_after.as_secs_f64(),
        MAX_STALENESS.as_secs(),
        body.trim()
    );
    assert!(
        unready_after >= MAX_STALENESS,
        "unready before the bound: {unready_after:?}"
    );
    assert!(body.contains("staleness bound"), "{body}");
    // Agents' guarded writes are refused, saying why; a human's still go through.
    let mut refused = String::new();
    wait_until(
        Duration::from_secs(10),
        "the agent's delete refused as stale",
        || {
            refused = agent_delete("scratch");
            refused.contains("agentguard: DENIED delete") && refused.contains("stale")
        },
    );
    println!("agent refused: {}", refused.trim());
    assert!(!refused.contains("not found"), "{refused}");
    let human = ns.kubectl(&["delete", "pvc", "scratch", "--dry-run=server"]);
    assert!(human.status.success(), "human delete: {}", stderr(&human));
    wait_until(
        Duration::from_secs(5),
        "watch_healthy 0 while stale",
        || healthy(0.0),
    );

    // Healed: the watches start over, and the replica is ready and judging normally again.
    proxy.heal();
    let healed = Instant::now();
    wait_until(MAX_STALENESS + MARGIN, "/readyz 200 after healing", || {
        guard.http_get("/readyz").is_some_and(|(s, _)| s == 200)
    });
    println!(
        "ready again {:.1}s after healing",
        healed.elapsed().as_secs_f64()
    );
    wait_until(
        Duration::from_secs(10),
        "the agent's delete judged again",
        || agent_delete("scratch").is_empty(),
    );
    assert!(agent_delete("agentguard-probe").contains("agentguard: DENIED delete"));
    wait_until(Duration::from_secs(5), "watch_healthy 1 again", || {
        healthy(1.0)
    });
    let log = guard.log();
    assert!(
        log.contains("restarting every watch"),
        "no watch restart in the log"
    );
}
