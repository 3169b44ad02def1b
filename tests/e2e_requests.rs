//! End-to-end: an agent that is denied asks a human in writing. It files a DeletionRequest
//! with `kubectl agentguard request` (in its own name only), agentguard marks it Pending,
//! announces it with an Event on the object and counts it in `agentguard_approval_requests`,
//! `status` lists it, and a human answers with `approve request/<name>` (which approves the
//! object within maxTTL, so the agent's deletion then succeeds) or `reject`.
//! Requires `hack/cluster.sh up`; fails (never skips) when the control plane is absent.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use support::{Cluster, Guard, GuardOptions, TestNamespace, stderr, stdout, wait_until};

const PLUGIN: &str = env!("CARGO_BIN_EXE_kubectl-agentguard");

/// Every test's agentguard leads its own lease and so answers every DeletionRequest in the
/// cluster (as the one leader does in production): the tests of this file take turns, or one
/// test's short request TTL would expire the other's request.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn plugin(kubeconfig: &Path, ns: &str, args: &[&str]) -> Output {
    Command::new(PLUGIN)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["-n", ns])
        .args(args)
        .output()
        .expect("run kubectl-agentguard")
}

fn request_state(ns: &TestNamespace<'_>, name: &str) -> String {
    stdout(&ns.kubectl(&[
        "get",
        "deletionrequest",
        name,
        "-o",
        "jsonpath={.status.state}",
    ]))
}

/// The name in `filed deletionrequest/<name> in ...`.
fn filed_name(out: &Output) -> String {
    let text = stdout(out);
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("deletionrequest/"))
        .unwrap_or_else(|| panic!("no request name in: {text}{}", stderr(out)))
        .to_owned()
}

#[test]
fn an_agent_asks_in_writing_and_a_human_answers() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = Cluster::connect();
    cluster.wait_established(&["crd/deletionrequests.agentguard.dev"]);
    let ns = TestNamespace::create(&cluster, "requests");
    let agent = ns.agent("cursor-agent");
    // What the chart's aggregated ClusterRole gives every editor: filing requests. The status
    // subresource too, so that the webhook (not RBAC) is what stops an agent answering itself.
    ns.grant("cursor-agent", "deletionrequests.agentguard.dev");
    ns.grant("cursor-agent", "deletionrequests.agentguard.dev/status");
    let guard = Guard::start(&ns, &agent);
    ns.pvc("data", true);
    ns.pvc("logs", true);
    let token = ns.kubectl_ok(&["create", "token", "cursor-agent", "--duration=10m"]);
    let agent_kubeconfig = cluster.token_kubeconfig(guard.dir.path(), token.trim());

    // Denied, the agent reads how to ask, and asks with that exact command.
    let out = ns.kubectl_as(&agent, &["delete", "pvc", "data"]);
    let denial = stderr(&out);
    let ask = format!(
        "To ask in writing: kubectl agentguard request persistentvolumeclaim/data -n {} --reason",
        ns.name
    );
    assert!(denial.contains(&ask), "{denial}");
    let out = plugin(
        &agent_kubeconfig,
        &ns.name,
        &[
            "request",
            "persistentvolumeclaim/data",
            "--reason",
            "the migration to the new cluster is done; this is the old copy",
        ],
    );
    assert!(out.status.success(), "request: {}", stderr(&out));
    let name = filed_name(&out);
    assert!(
        stdout(&out).contains(&format!("kubectl agentguard approve request/{name}")),
        "{}",
        stdout(&out)
    );
    let requester = stdout(&ns.kubectl(&[
        "get",
        "deletionrequest",
        &name,
        "-o",
        "jsonpath={.spec.requester}",
    ]));
    assert_eq!(requester, agent);

    // agentguard admits it: Pending with an expiry, an Event on the claim, the gauge.
    wait_until(Duration::from_secs(30), "the request to be Pending", || {
        request_state(&ns, &name) == "Pending"
    });
    wait_until(
        Duration::from_secs(30),
        "a DeletionRequested event on the claim",
        || {
            stdout(&ns.kubectl(&[
                "get",
                "events",
                "--field-selector",
                "reason=DeletionRequested,involvedObject.name=data",
                "-o",
                "jsonpath={.items[*].message}",
            ]))
            .contains(&format!("approve request/{name}"))
        },
    );
    wait_until(Duration::from_secs(30), "the pending gauge", || {
        guard.metric("agentguard_approval_requests", &[("state", "pending")]) == 1.0
    });

    // The agent can neither file in someone else's name nor answer its own request.
    let forged = cluster.kubectl_stdin(
        &[&format!("--as={agent}"), "create", "-f", "-"],
        &format!(
            "apiVersion: agentguard.dev/v1alpha1\nkind: DeletionRequest\nmetadata:\n  name: forged\n  namespace: {}\n\
             spec:\n  target: {{apiVersion: v1, kind: PersistentVolumeClaim, name: data}}\n  reason: x\n  requester: alice\n",
            ns.name
        ),
    );
    assert!(!forged.status.success(), "a forged requester was accepted");
    assert!(
        stderr(&forged).contains("spec.requester must be your own username"),
        "{}",
        stderr(&forged)
    );
    let answered = ns.kubectl_as(
        &agent,
        &[
            "patch",
            "deletionrequest",
            &name,
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"state":"Approved"}}"#,
        ],
    );
    assert!(
        !answered.status.success(),
        "the agent approved its own request"
    );
    assert_eq!(request_state(&ns, &name), "Pending");

    // A human sees it in status and approves it.
    let status = plugin(&cluster.kubeconfig, &ns.name, &["status"]);
    assert!(status.status.success(), "{}", stderr(&status));
    let text = stdout(&status);
    assert!(text.contains("REQUESTS (pending)"), "{text}");
    assert!(text.contains(&name), "{text}");
    let out = plugin(
        &cluster.kubeconfig,
        &ns.name,
        &["approve", &format!("request/{name}"), "--for", "15m"],
    );
    assert!(out.status.success(), "approve request: {}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!(
            "approved delete of PersistentVolumeClaim {}/data for 15m",
            ns.name
        )),
        "{}",
        stdout(&out)
    );
    assert_eq!(request_state(&ns, &name), "Approved");
    let out = ns.kubectl_as(&agent, &["delete", "pvc", "data", "--wait=false"]);
    assert!(
        out.status.success(),
        "approved deletion refused: {}",
        stderr(&out)
    );
    // Answered once only.
    let again = plugin(
        &cluster.kubeconfig,
        &ns.name,
        &["approve", &format!("request/{name}")],
    );
    assert!(!again.status.success());
    assert!(stderr(&again).contains("not Pending"), "{}", stderr(&again));

    // A second request, rejected: the claim stays protected.
    let out = plugin(
        &agent_kubeconfig,
        &ns.name,
        &["request", "pvc/logs", "--reason", "cleanup"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let second = filed_name(&out);
    wait_until(
        Duration::from_secs(30),
        "the second request Pending",
        || request_state(&ns, &second) == "Pending",
    );
    let out = plugin(
        &cluster.kubeconfig,
        &ns.name,
        &[
            "reject",
            &format!("request/{second}"),
            "--reason",
            "logs are evidence",
        ],
    );
    assert!(out.status.success(), "reject: {}", stderr(&out));
    assert_eq!(request_state(&ns, &second), "Rejected");
    assert!(
        !ns.kubectl_as(&agent, &["delete", "pvc", "logs"])
            .status
            .success()
    );
    wait_until(Duration::from_secs(30), "the gauge to follow", || {
        guard.metric("agentguard_approval_requests", &[("state", "rejected")]) == 1.0
            && guard.metric("agentguard_approval_requests", &[("state", "approved")]) == 1.0
            && guard.metric("agentguard_approval_requests", &[("state", "pending")]) == 0.0
    });
}

#[test]
fn unanswered_requests_expire() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = Cluster::connect();
    cluster.wait_established(&["crd/deletionrequests.agentguard.dev"]);
    let ns = TestNamespace::create(&cluster, "request-ttl");
    let agent = ns.agent("cursor-agent");
    ns.grant("cursor-agent", "deletionrequests.agentguard.dev");
    let options = GuardOptions {
        extra_args: vec!["--request-ttl=4s".into()],
        ..Default::default()
    };
    let guard = Guard::start_with(&ns, &agent, &options);
    let token = ns.kubectl_ok(&["create", "token", "cursor-agent", "--duration=10m"]);
    let kubeconfig = cluster.token_kubeconfig(guard.dir.path(), token.trim());
    ns.pvc("data", true);
    let out = plugin(
        &kubeconfig,
        &ns.name,
        &["request", "pvc/data", "--reason", "nobody will answer"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let name = filed_name(&out);
    wait_until(Duration::from_secs(30), "the request to expire", || {
        request_state(&ns, &name) == "Expired"
    });
    let out = plugin(
        &cluster.kubeconfig,
        &ns.name,
        &["approve", &format!("request/{name}")],
    );
    assert!(!out.status.success(), "an expired request was approved");
    assert!(
        stderr(&out).contains("is expired, not Pending"),
        "{}",
        stderr(&out)
    );
    assert!(ns.pvc_intact("data"));
}
