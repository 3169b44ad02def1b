//! End-to-end: `agentguard.dev/protected` on any kind (issue 16, part 2). Annotating an object
//! of a kind agentguard does not watch makes agentguard watch and route that kind within
//! seconds, and kubectl prints a warning saying so; when agentguard's RBAC cannot list it, the
//! warning names the rule for `rbac.extraWatchedResources`, and `kubectl agentguard status`
//! and `agentguard_unguarded_objects` show the object as annotated but unguarded. Reviews
//! forged by someone who can reach the webhook and naming made-up kinds record nothing.
//! Requires `hack/cluster.sh up`.

mod support;

use std::process::{Command, Output};
use std::time::Duration;

use support::{Cluster, Guard, GuardOptions, TestNamespace, stderr, stdout, wait_until};

const RECORD: &str = "agentguard-annotated-kinds";

/// `kubectl agentguard` as the human (the admin kubeconfig).
fn plugin(cluster: &Cluster, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kubectl-agentguard"))
        .arg("--kubeconfig")
        .arg(&cluster.kubeconfig)
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .expect("run kubectl-agentguard")
}

/// The record agentguard keeps in the test namespace (its lease namespace), or "".
fn record(ns: &TestNamespace<'_>) -> String {
    stdout(&ns.kubectl(&["get", "configmap", RECORD, "-o", "jsonpath={.data}"]))
}

fn create(ns: &TestNamespace<'_>, group: &str, kind: &str, name: &str) {
    ns.cluster.apply(&format!(
        "apiVersion: {group}/v1\nkind: {kind}\nmetadata:\n  name: {name}\n  namespace: {}\nspec:\n  size: 1\n",
        ns.name
    ));
}

#[test]
fn annotating_an_unwatched_kind_guards_it_within_seconds() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "annotate");
    let agent = ns.agent("cursor-agent");
    let mut guard = Guard::start(&ns, &agent);
    // A kind no policy targets and not in --annotation-kinds (a database operator's).
    let group = ns.crd("databases", "Database");
    ns.grant("cursor-agent", &format!("databases.{group}"));
    let resource = format!("databases.{group}");
    create(&ns, &group, "Database", "orders");

    let out = ns.kubectl(&[
        "annotate",
        &resource,
        "orders",
        "agentguard.dev/protected=true",
    ]);
    assert!(out.status.success(), "annotate: {}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "Warning: agentguard now guards Database ({resource})"
        )),
        "no warning that agentguard now guards it: {}",
        stderr(&out)
    );

    // Within seconds the agent's deletion is refused with agentguard's message.
    wait_until(
        Duration::from_secs(30),
        "the agent's delete of the annotated Database to be denied",
        || {
            let out = ns.kubectl_as(&agent, &["delete", &resource, "orders", "--dry-run=server"]);
            stderr(&out).contains(&format!(
                "agentguard: DENIED delete of Database {}/orders by {agent}.",
                ns.name
            ))
        },
    );
    let out = ns.kubectl_as(&agent, &["delete", &resource, "orders"]);
    assert!(
        !out.status.success(),
        "the agent deleted an annotated Database"
    );
    assert!(
        stderr(&out).contains("Stop and ask a human to approve"),
        "{}",
        stderr(&out)
    );
    // A second object of the kind needs no new warning: the kind is routed and indexed.
    create(&ns, &group, "Database", "invoices");
    let out = ns.kubectl(&[
        "annotate",
        &resource,
        "invoices",
        "agentguard.dev/protected=true",
    ]);
    assert!(out.status.success(), "annotate: {}", stderr(&out));
    wait_until(Duration::from_secs(15), "invoices to be protected", || {
        stderr(&ns.kubectl_as(
            &agent,
            &["delete", &resource, "invoices", "--dry-run=server"],
        ))
        .contains("agentguard: DENIED")
    });

    // Durable: recorded, and a restarted agentguard still guards the kind.
    wait_until(Duration::from_secs(15), "the kind to be recorded", || {
        record(&ns).contains(&format!("\"{resource}\""))
    });
    guard.respawn(&ns, &GuardOptions::default());
    guard.wait_enforcing(&ns, &agent);
    let out = ns.kubectl_as(&agent, &["delete", &resource, "orders", "--dry-run=server"]);
    assert!(
        stderr(&out).contains("agentguard: DENIED delete of Database"),
        "after a restart: {}",
        stderr(&out)
    );
    // Status counts the kind's protected objects with the others.
    let status = plugin(
        &cluster,
        &["status", "-n", &ns.name, "--agentguard-namespace", &ns.name],
    );
    assert!(status.status.success(), "status: {}", stderr(&status));
    assert!(
        stdout(&status).contains(&format!("Database.{group}")),
        "status does not list the Database kind: {}",
        stdout(&status)
    );
}

#[test]
fn a_kind_agentguard_cannot_watch_is_reported_unguarded_with_the_rule_to_add() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "unguarded");
    // agentguard's own identity lives elsewhere (it is not one of the namespace's agents), as
    // does the CRD's group, which that identity may not read.
    let home = TestNamespace::create(&cluster, "unguarded-op");
    let group = home.crd("lockedvaults", "LockedVault");
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = home.operator_blind_to(&group, dir.path());
    let agent = ns.agent("cursor-agent");
    ns.grant("cursor-agent", &format!("lockedvaults.{group}"));
    let guard = Guard::start_with(
        &ns,
        &agent,
        &GuardOptions {
            kubeconfig: Some(kubeconfig),
            ..Default::default()
        },
    );
    let resource = format!("lockedvaults.{group}");
    create(&ns, &group, "LockedVault", "keys");

    let out = ns.kubectl(&[
        "annotate",
        &resource,
        "keys",
        "agentguard.dev/protected=true",
    ]);
    assert!(out.status.success(), "annotate: {}", stderr(&out));
    let rule = format!(
        "{{apiGroups: [\"{group}\"], resources: [\"lockedvaults\"], verbs: [\"list\", \"watch\"]}}"
    );
    assert!(
        stderr(&out).contains(&format!(
            "Warning: agentguard cannot watch LockedVault ({resource})"
        )) && stderr(&out).contains("rbac.extraWatchedResources")
            && stderr(&out).contains(&rule),
        "no warning naming the rule to add: {}",
        stderr(&out)
    );

    // The gauge and status say so.
    wait_until(
        Duration::from_secs(30),
        "agentguard_unguarded_objects{resource=lockedvaults} = 1",
        || {
            guard.metric(
                "agentguard_unguarded_objects",
                &[("resource", "lockedvaults")],
            ) == 1.0
        },
    );
    let mut shown = String::new();
    wait_until(
        Duration::from_secs(30),
        "status to show the object unguarded",
        || {
            let out = plugin(
                &cluster,
                &["status", "-n", &ns.name, "--agentguard-namespace", &ns.name],
            );
            shown = format!("{}{}", stdout(&out), stderr(&out));
            out.status.success()
                && shown.contains("ANNOTATED BUT UNGUARDED")
                && shown.contains(&format!("LockedVault.{group}"))
                && shown.contains(&format!("{}/keys", ns.name))
                && shown.contains(&rule)
        },
    );
    // Its direct deletion is still judged: the annotation is on the deleted object.
    wait_until(
        Duration::from_secs(30),
        "the agent's delete of the unguarded LockedVault to be denied",
        || {
            stderr(&ns.kubectl_as(&agent, &["delete", &resource, "keys", "--dry-run=server"]))
                .contains("agentguard: DENIED delete of LockedVault")
        },
    );
}

/// A CREATE review carrying the annotation, as someone who reaches the Service could forge it.
fn forged(ns: &str, group: &str, kind: &str, resource: &str) -> String {
    serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0b7c2a35-9f5e-4a5e-9d2e-1f0c3c1e7a11",
            "kind": {"group": group, "version": "v1", "kind": kind},
            "resource": {"group": group, "version": "v1", "resource": resource},
            "name": "x",
            "namespace": ns,
            "operation": "CREATE",
            "userInfo": {"username": "alice"},
            "object": {
                "apiVersion": format!("{group}/v1"), "kind": kind,
                "metadata": {"name": "x", "namespace": ns,
                             "annotations": {"agentguard.dev/protected": "true"}}
            },
            "oldObject": null,
            "dryRun": false
        }
    })
    .to_string()
}

fn post_annotate(guard: &Guard<'_>, body: &str) -> String {
    let file = guard.dir.path().join("forged.json");
    std::fs::write(&file, body).unwrap();
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "15", "--fail"])
        .arg("--cacert")
        .arg(guard.dir.path().join("ca.crt"))
        .args(["-H", "Content-Type: application/json"])
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(format!("https://127.0.0.1:{}/annotate", guard.webhook_port))
        .output()
        .expect("curl on PATH");
    assert!(out.status.success(), "POST /annotate: {}", stderr(&out));
    stdout(&out)
}

#[test]
fn forged_reviews_naming_made_up_kinds_are_not_recorded() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "forged");
    let agent = ns.agent("cursor-agent");
    let guard = Guard::start(&ns, &agent);
    let group = ns.crd("databases", "Database");
    for (g, kind, resource) in [
        ("made-up.example.com", "Ghost", "ghosts"),
        ("", "Phantom", "phantoms"),
        // A served kind under a resource it is not served as.
        (group.as_str(), "Database", "ghostdatabases"),
    ] {
        for i in 0..20 {
            let body = forged(&ns.name, g, kind, resource).replace("\"x\"", &format!("\"x{i}\""));
            let answer: serde_json::Value =
                serde_json::from_str(&post_annotate(&guard, &body)).expect("a review comes back");
            assert_eq!(answer["response"]["allowed"], true, "{answer}");
            assert!(
                answer["response"]["warnings"].is_null(),
                "a made-up kind got a warning: {answer}"
            );
        }
    }
    // A real kind is recorded; once it is, the forged ones (answered before) would be too.
    let answer = post_annotate(&guard, &forged(&ns.name, &group, "Database", "databases"));
    assert!(
        answer.contains("agentguard now guards Database"),
        "{answer}"
    );
    wait_until(
        Duration::from_secs(15),
        "the real kind to be recorded",
        || record(&ns).contains(&format!("databases.{group}")),
    );
    let recorded = record(&ns);
    for made_up in ["ghosts", "phantoms", "ghostdatabases", "Ghost", "Phantom"] {
        assert!(
            !recorded.contains(made_up),
            "a forged kind was recorded: {recorded}"
        );
    }
    let config = cluster.kubectl_ok(&[
        "get",
        "validatingwebhookconfiguration",
        &guard.webhook_name,
        "-o",
        "jsonpath={.webhooks[0].rules[*].resources}",
    ]);
    assert!(
        !config.contains("ghost") && !config.contains("phantom"),
        "{config}"
    );
}
