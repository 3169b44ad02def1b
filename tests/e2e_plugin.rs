//! End-to-end: `kubectl agentguard approve` and `status` against the real API server and a real
//! agentguard webhook. Humans approve and revoke with the plugin; agents are refused by the
//! webhook, whatever the plugin does. Requires `hack/cluster.sh up`; fails (never skips) when
//! the control plane is absent.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use support::{Cluster, Guard, TestNamespace, stderr, stdout, wait_until};

/// The admin kubeconfig's user: the human in these tests.
const ADMIN: &str = "agentguard-admin";

/// Runs `kubectl agentguard` with this kubeconfig.
fn plugin(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kubectl-agentguard"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .expect("run kubectl-agentguard")
}

/// Runs it as the human (the admin kubeconfig).
fn human(cluster: &Cluster, args: &[&str]) -> Output {
    plugin(&cluster.kubeconfig, args)
}

fn human_ok(cluster: &Cluster, args: &[&str]) -> String {
    let out = human(cluster, args);
    assert!(
        out.status.success(),
        "kubectl agentguard {args:?} failed: {}",
        stderr(&out)
    );
    stdout(&out)
}

/// A kubeconfig holding only a token of the namespace's ServiceAccount `sa`, in `dir`.
fn agent_kubeconfig(ns: &TestNamespace<'_>, sa: &str, dir: &Path) -> std::path::PathBuf {
    let token = ns.kubectl_ok(&["create", "token", sa, "--duration=10m"]);
    ns.cluster.token_kubeconfig(dir, token.trim())
}

/// The claim's approval annotations: approved-by, approved-until, approval-reason.
fn approval_of(ns: &TestNamespace<'_>, pvc: &str) -> [String; 3] {
    let get = |key: &str| {
        ns.kubectl_ok(&[
            "get",
            "pvc",
            pvc,
            "-o",
            &format!("jsonpath={{.metadata.annotations.agentguard\\.dev/{key}}}"),
        ])
    };
    [
        get("approved-by"),
        get("approved-until"),
        get("approval-reason"),
    ]
}

fn resource_version(ns: &TestNamespace<'_>, pvc: &str) -> String {
    ns.kubectl_ok(&[
        "get",
        "pvc",
        pvc,
        "-o",
        "jsonpath={.metadata.resourceVersion}",
    ])
}

fn policy(ns: &TestNamespace<'_>, name: &str, names: &str, approval: &str) {
    ns.cluster.apply(&format!(
        "apiVersion: agentguard.dev/v1alpha1\nkind: ProtectedResource\nmetadata:\n  name: {name}\n  namespace: {ns}\n\
         spec:\n  mode: Enforce\n  targets:\n    - apiGroups: [\"\"]\n      kinds: [PersistentVolumeClaim]\n      names: [\"{names}\"]\n{approval}",
        ns = ns.name
    ));
    ns.wait_policy_ready(name);
}

fn approvals_metric(guard: &Guard<'_>, result: &str) -> f64 {
    guard.metric("agentguard_approvals_total", &[("result", result)])
}

/// The command a denial message tells the agent to ask a human for, without `kubectl agentguard`.
fn suggested_command(denial: &str) -> Vec<String> {
    let line = denial
        .lines()
        .find_map(|l| l.split_once("Stop and ask a human to approve: kubectl agentguard "))
        .map(|(_, command)| command.trim().to_owned())
        .unwrap_or_else(|| panic!("no approve command in the denial:\n{denial}"));
    line.split_whitespace().map(str::to_owned).collect()
}

#[test]
fn a_human_approves_with_the_command_from_the_denial_and_the_agent_deletes() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "plugin-approve");
    let agent = ns.agent("cursor-agent");
    let guard = Guard::start(&ns, &agent);
    ns.pvc("data", true);

    let out = ns.kubectl_as(&agent, &["delete", "pvc", "data"]);
    assert!(!out.status.success(), "the agent deleted a protected claim");
    let command = suggested_command(&stderr(&out));
    assert_eq!(
        command.join(" "),
        format!(
            "approve persistentvolumeclaim/data -n {} --for 30m",
            ns.name
        )
    );

    let args: Vec<&str> = command.iter().map(String::as_str).collect();
    let before = jiff::Timestamp::now();
    let printed = human_ok(&cluster, &args);
    let [by, until, reason] = approval_of(&ns, "data");
    assert_eq!(by, ADMIN);
    assert_eq!(reason, "");
    assert_eq!(
        printed.trim_end(),
        format!(
            "approved delete of PersistentVolumeClaim {}/data for 30m, until {until}, as {ADMIN}",
            ns.name
        )
    );
    assert!(until.ends_with('Z') && !until.contains('.'), "{until}");
    let until: jiff::Timestamp = until.parse().expect("approved-until is RFC 3339");
    // `before` is truncated to the second and taken before the plugin's own clock reading,
    // so the window measured from it may read one second long.
    let window = until.as_second() - before.as_second();
    assert!((1795..=1801).contains(&window), "window {window}s");
    assert_eq!(approvals_metric(&guard, "accepted"), 1.0);

    let out = ns.kubectl_as(&agent, &["delete", "pvc", "data", "--wait=false"]);
    assert!(
        out.status.success(),
        "the approved deletion was refused: {}",
        stderr(&out)
    );
    ns.wait_pvc_gone("data");
    assert_eq!(approvals_metric(&guard, "used"), 1.0);
}

#[test]
fn approvals_the_webhook_would_reject_are_refused_before_any_request() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "plugin-ttl");
    let agent = ns.agent("cursor-agent");
    let guard = Guard::start(&ns, &agent);
    policy(&ns, "orders", "data-*", "  approval:\n    maxTTL: 20m\n");
    policy(
        &ns,
        "vault",
        "vault-*",
        "  approval:\n    approvers:\n      groups: [sre]\n",
    );
    ns.pvc("data-0", false);
    ns.pvc("vault-0", false);
    let (data_version, vault_version) = (
        resource_version(&ns, "data-0"),
        resource_version(&ns, "vault-0"),
    );

    // Longer than the policy's maxTTL.
    let target = ["-n", &ns.name, "approve", "pvc/data-0"];
    let out = human(&cluster, &[&target[..], &["--for", "45m"]].concat());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        stderr(&out).trim_end(),
        format!(
            "error: refusing to approve delete of PersistentVolumeClaim {ns}/data-0: --for 45m is longer than \
             the 20m maxTTL of ProtectedResource {ns}/orders; agentguard would reject it. Approve for at most 20m.",
            ns = ns.name
        )
    );
    // By someone the policy does not name as an approver (the admin is in system:masters).
    let out = human(
        &cluster,
        &["-n", &ns.name, "approve", "pvc/vault-0", "--for", "10m"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "{ADMIN} is not an approver of ProtectedResource {}/vault (approvers: groups sre)",
            ns.name
        )),
        "{}",
        stderr(&out)
    );
    // Not a duration.
    let out = human(&cluster, &[&target[..], &["--for", "1d"]].concat());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    // Nothing was sent: the objects are unchanged and the webhook judged no approval.
    assert_eq!(resource_version(&ns, "data-0"), data_version);
    assert_eq!(resource_version(&ns, "vault-0"), vault_version);
    assert_eq!(
        approval_of(&ns, "data-0"),
        [String::new(), String::new(), String::new()]
    );
    assert_eq!(approvals_metric(&guard, "rejected"), 0.0);
    assert_eq!(approvals_metric(&guard, "accepted"), 0.0);

    // Within the maxTTL it goes through.
    let printed = human_ok(&cluster, &[&target[..], &["--for", "20m"]].concat());
    assert!(printed.contains(" for 20m, until "), "{printed}");
    assert_eq!(approvals_metric(&guard, "accepted"), 1.0);
}

#[test]
fn an_agent_running_approve_gets_the_webhooks_denial() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "plugin-agent");
    let agent = ns.agent("cursor-agent");
    let guard = Guard::start(&ns, &agent);
    ns.pvc("data", true);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = agent_kubeconfig(&ns, "cursor-agent", dir.path());

    let out = plugin(
        &kubeconfig,
        &[
            "approve",
            "persistentvolumeclaim/data",
            "-n",
            &ns.name,
            "--for",
            "30m",
            "--reason",
            "I am sure",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "agentguard: DENIED update of PersistentVolumeClaim {}/data by {agent}: restricted identities \
             may not add, change or remove agentguard.dev/* annotations or labels",
            ns.name
        )),
        "{err}"
    );
    assert!(err.contains("Stop and ask a human."), "{err}");
    assert_eq!(stdout(&out), "");
    assert_eq!(
        approval_of(&ns, "data"),
        [String::new(), String::new(), String::new()]
    );
    assert_eq!(approvals_metric(&guard, "accepted"), 0.0);
    assert!(ns.pvc_intact("data"));
}

#[test]
fn revoke_removes_the_approval_and_the_agent_is_denied_again() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "plugin-revoke");
    let agent = ns.agent("cursor-agent");
    let _guard = Guard::start(&ns, &agent);
    ns.pvc("data", true);

    human_ok(
        &cluster,
        &[
            "approve",
            "pvc/data",
            "-n",
            &ns.name,
            "--for",
            "10m",
            "--reason",
            "moving to new storage",
        ],
    );
    let [by, until, reason] = approval_of(&ns, "data");
    assert_eq!(
        (by.as_str(), reason.as_str()),
        (ADMIN, "moving to new storage")
    );
    let allowed = ns.kubectl_as(&agent, &["delete", "pvc", "data", "--dry-run=server"]);
    assert!(allowed.status.success(), "{}", stderr(&allowed));

    let printed = human_ok(
        &cluster,
        &["approve", "pvc/data", "-n", &ns.name, "--revoke"],
    );
    assert_eq!(
        printed.trim_end(),
        format!(
            "revoked the approval to delete PersistentVolumeClaim {}/data (approved by {ADMIN} until {until}, reason: moving to new storage)",
            ns.name
        )
    );
    assert_eq!(
        approval_of(&ns, "data"),
        [String::new(), String::new(), String::new()]
    );
    let out = ns.kubectl_as(&agent, &["delete", "pvc", "data"]);
    assert!(!out.status.success(), "the agent deleted after the revoke");
    assert!(stderr(&out).contains("agentguard: DENIED delete of PersistentVolumeClaim"));
    assert!(ns.pvc_intact("data"));

    // Revoking again changes nothing and says so.
    let out = human(
        &cluster,
        &[
            "approve", "pvc/data", "-n", &ns.name, "--revoke", "-o", "json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let record: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(record["action"], "none");
}

#[test]
fn status_shows_policies_protection_approvals_and_blocked_attempts() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "plugin-status");
    let agent = ns.agent("cursor-agent");
    let _guard = Guard::start(&ns, &agent);
    policy(&ns, "orders", "data-*", "");
    ns.pvc("data-0", false);
    ns.pvc("data-1", false);
    ns.pvc("logs", false);
    // And the Guard's own probe claim, protected by its annotation: 3 of 4 protected.

    let out = ns.kubectl_as(&agent, &["delete", "pvc", "data-1"]);
    assert!(!out.status.success(), "the agent deleted a protected claim");
    human_ok(
        &cluster,
        &[
            "approve",
            "pvc/data-0",
            "-n",
            &ns.name,
            "--reason",
            "restore drill",
        ],
    );

    let data_1 = format!("PersistentVolumeClaim {}/data-1", ns.name);
    let mut table = String::new();
    wait_until(
        Duration::from_secs(30),
        "status to show the blocked attempt",
        || {
            table = human_ok(&cluster, &["status", "-n", &ns.name]);
            table
                .lines()
                .any(|l| l.contains(&agent) && l.contains(&data_1))
        },
    );
    let json: Value = serde_json::from_str(&human_ok(
        &cluster,
        &["status", "-n", &ns.name, "-o", "json"],
    ))
    .expect("status -o json parses");
    // Other suites may hold a ClusterProtectedResource over every claim while this runs.
    let cluster_policies = json["policies"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["kind"] == "ClusterProtectedResource");

    // POLICIES
    assert!(table.starts_with("POLICIES\n"), "{table}");
    assert!(
        table.lines().any(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            cells.starts_with(&["ProtectedResource", &ns.name, "orders", "Enforce", "True"])
        }),
        "{table}"
    );
    let orders = json["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "orders")
        .expect("orders in policies");
    assert_eq!(orders["namespace"], ns.name.as_str());
    assert_eq!(orders["ready"], "True");

    // PROTECTED OBJECTS
    let claims_row = table
        .lines()
        .skip_while(|l| !l.starts_with("PROTECTED OBJECTS"))
        .find(|l| l.starts_with("PersistentVolumeClaim "))
        .unwrap_or_else(|| panic!("no claim count in\n{table}"));
    let claims = json["protectedObjects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kind"] == "PersistentVolumeClaim")
        .expect("claims counted");
    assert_eq!(claims["total"], 4, "{claims}");
    let protected = claims["protected"].as_u64().unwrap();
    if cluster_policies {
        assert!(protected >= 3, "{claims}");
    } else {
        assert_eq!(protected, 3, "{claims}");
        assert_eq!(
            claims_row.split_whitespace().collect::<Vec<_>>(),
            ["PersistentVolumeClaim", "3", "4"]
        );
    }

    // APPROVALS
    let data_0 = format!("PersistentVolumeClaim {}/data-0", ns.name);
    let approval_row = table
        .lines()
        .find(|l| l.starts_with(&data_0))
        .unwrap_or_else(|| panic!("no approval row in\n{table}"));
    assert!(approval_row.contains(ADMIN), "{approval_row}");
    assert!(
        approval_row.contains(" 29m ") || approval_row.contains(" 30m "),
        "{approval_row}"
    );
    assert!(approval_row.ends_with("restore drill"), "{approval_row}");
    let approvals = json["approvals"].as_array().unwrap();
    assert_eq!(approvals.len(), 1, "{approvals:?}");
    assert_eq!(approvals[0]["object"], data_0.as_str());
    assert_eq!(approvals[0]["approvedBy"], ADMIN);
    assert_eq!(approvals[0]["reason"], "restore drill");
    let left = approvals[0]["secondsLeft"].as_i64().unwrap();
    assert!((1700..=1800).contains(&left), "{left}");

    // BLOCKED
    let blocked = json["blocked"].as_array().unwrap();
    let attempt = blocked
        .iter()
        .find(|b| b["object"] == data_1.as_str())
        .unwrap_or_else(|| panic!("no blocked attempt in {blocked:?}"));
    assert_eq!(attempt["agent"], agent.as_str());
    if !cluster_policies {
        assert_eq!(
            attempt["policy"],
            format!("ProtectedResource/{}/orders", ns.name).as_str()
        );
    }
    assert!(attempt["time"].as_str().is_some_and(|t| t.ends_with('Z')));

    // YAML carries the same, and -A sees this namespace too.
    let yaml = human_ok(&cluster, &["status", "-n", &ns.name, "-o", "yaml"]);
    assert!(yaml.contains(&format!("agent: {agent}")), "{yaml}");
    let all: Value = serde_json::from_str(&human_ok(&cluster, &["status", "-A", "-o", "json"]))
        .expect("status -A -o json parses");
    assert_eq!(all["scope"], "all namespaces");
    assert!(
        all["approvals"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["object"] == data_0.as_str()),
        "{all}"
    );
}

#[test]
fn approving_what_nothing_protects_is_refused() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "plugin-unprotected");
    let agent = ns.agent("cursor-agent");
    let guard = Guard::start(&ns, &agent);
    ns.kubectl_ok(&["create", "configmap", "settings", "--from-literal=a=b"]);
    let version = || {
        ns.kubectl_ok(&[
            "get",
            "configmap",
            "settings",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ])
    };
    let before = version();

    let out = human(&cluster, &["approve", "configmap/settings", "-n", &ns.name]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert_eq!(
        err.trim_end(),
        format!(
            "error: nothing to approve: ConfigMap {}/settings is not protected. No ProtectedResource or \
             ClusterProtectedResource targets it, it has no agentguard.dev/protected=true annotation, and \
             deleting it would not delete protected data, so agentguard does not stop its deletion.",
            ns.name
        )
    );
    assert_eq!(version(), before);
    assert_eq!(approvals_metric(&guard, "accepted"), 0.0);
    // Indeed the agent may delete it.
    ns.kubectl_ok(&[
        "--as",
        &agent,
        "delete",
        "configmap",
        "settings",
        "--dry-run=server",
    ]);

    // A claim that does not exist, and a target that is not <kind>/<name>.
    let out = human(&cluster, &["approve", "pvc/nope", "-n", &ns.name]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("\"nope\" not found"),
        "{}",
        stderr(&out)
    );
    let out = human(&cluster, &["approve", "pvc", "-n", &ns.name]);
    assert_eq!(out.status.code(), Some(2));
}
