//! End-to-end: a real kube-apiserver calls agentguard over TLS for deletions of claims.
//! Requires `hack/cluster.sh up`; fails (never skips) when the control plane is absent.

mod support;

use support::{Cluster, Guard, TestNamespace, stderr, stdout};

fn denial(ns: &str, name: &str, user: &str) -> String {
    format!(
        "Error from server (Forbidden): admission webhook \"validate.agentguard.dev\" denied the request: \
         agentguard: DENIED delete of PersistentVolumeClaim {ns}/{name} by {user}.\n\
         Protected by annotation agentguard.dev/protected=true. This may hold production data.\n\
         Do not retry, and do not try another way to delete, move, or unprotect it.\n\
         Stop and ask a human to approve: kubectl agentguard approve persistentvolumeclaim/{name} -n {ns} --for 30m\n\
         To ask in writing: kubectl agentguard request persistentvolumeclaim/{name} -n {ns} --reason \"<why you need it deleted>\""
    )
}

/// `agentguard_deletions_blocked_total` for claims protected by their annotation.
fn blocked_claims(guard: &Guard<'_>, ns: &TestNamespace<'_>, agent: &str) -> f64 {
    guard.metric(
        "agentguard_deletions_blocked_total",
        &[
            ("namespace", &ns.name),
            ("resource", "persistentvolumeclaims"),
            ("subject", agent),
            ("policy", "annotation"),
        ],
    )
}

#[test]
fn agent_with_a_token_request_token_cannot_delete_a_protected_claim() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "token");
    let agent = ns.agent("cursor-agent");
    let guard = Guard::start(&ns, &agent);
    ns.pvc("data", true);

    // The agent acts with its own short-lived token, as an agent sandbox would.
    let token = ns.kubectl_ok(&["create", "token", "cursor-agent", "--duration=10m"]);
    let kubeconfig = cluster.token_kubeconfig(guard.dir.path(), token.trim());
    let as_agent = |args: &[&str]| {
        std::process::Command::new(cluster.kubectl_path())
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["-n", &ns.name])
            .args(args)
            .output()
            .unwrap()
    };
    let whoami = as_agent(&[
        "auth",
        "whoami",
        "-o",
        "jsonpath={.status.userInfo.username}",
    ]);
    assert_eq!(
        stdout(&whoami),
        agent,
        "token authenticates as the agent: {}",
        stderr(&whoami)
    );

    let out = as_agent(&["delete", "pvc", "data"]);
    assert!(!out.status.success());
    assert_eq!(stderr(&out).trim_end(), denial(&ns.name, "data", &agent));
    assert!(ns.pvc_intact("data"), "the protected claim must survive");

    // The same token may delete what is not protected.
    ns.pvc("scratch", false);
    let out = as_agent(&["delete", "pvc", "scratch", "--wait=false"]);
    assert!(out.status.success(), "{}", stderr(&out));
    ns.wait_pvc_gone("scratch");
}

#[test]
fn impersonated_agent_is_denied_and_a_human_is_not() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "impersonate");
    let agent = ns.agent("cursor-agent");
    let guard = Guard::start(&ns, &agent);
    ns.pvc("data", true);
    ns.pvc("scratch", false);

    let out = ns.kubectl_as(&agent, &["delete", "pvc", "data"]);
    assert!(!out.status.success());
    assert_eq!(stderr(&out).trim_end(), denial(&ns.name, "data", &agent));
    assert!(ns.pvc_intact("data"));

    let out = ns.kubectl_as(&agent, &["delete", "pvc", "scratch", "--wait=false"]);
    assert!(out.status.success(), "{}", stderr(&out));
    ns.wait_pvc_gone("scratch");

    // A human (the admin, not matched by any agent rule) deletes the protected claim.
    let out = ns.kubectl(&["delete", "pvc", "data", "--wait=false"]);
    assert!(out.status.success(), "{}", stderr(&out));
    ns.wait_pvc_gone("data");

    let blocked = blocked_claims(&guard, &ns, &agent);
    assert_eq!(blocked, 1.0);
}

#[test]
fn delete_all_and_delete_collection_leave_protected_claims() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "collection");
    let agent = ns.agent("cursor-agent");
    let _guard = Guard::start(&ns, &agent);
    ns.pvc("data", true);
    for name in ["scratch-1", "scratch-2"] {
        ns.pvc(name, false);
    }

    // kubectl lists and deletes one by one: the protected one is refused, the rest go.
    let out = ns.kubectl_as(&agent, &["delete", "pvc", "--all", "--wait=false"]);
    assert!(!out.status.success(), "one deletion must fail");
    assert!(
        stderr(&out).contains("agentguard: DENIED delete of PersistentVolumeClaim"),
        "{}",
        stderr(&out)
    );
    ns.wait_pvc_gone("scratch-1");
    ns.wait_pvc_gone("scratch-2");
    assert!(ns.pvc_intact("data"));
    // The webhook's probe claim is protected too and survived.
    assert!(ns.pvc_intact("agentguard-probe"));

    // A real DeleteCollection (one API call) reaches the webhook as one review per item.
    ns.pvc("scratch-3", false);
    let out = ns.kubectl_as(
        &agent,
        &[
            "delete",
            "--raw",
            &format!("/api/v1/namespaces/{}/persistentvolumeclaims", ns.name),
        ],
    );
    assert!(!out.status.success(), "delete collection must be refused");
    assert!(
        stderr(&out).contains("agentguard: DENIED"),
        "{}",
        stderr(&out)
    );
    assert!(ns.pvc_intact("data"));
    assert!(ns.pvc_intact("agentguard-probe"));
}

#[test]
fn server_side_dry_run_tells_the_agent_the_truth_and_is_counted_apart() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "dryrun");
    let agent = ns.agent("cursor-agent");
    let guard = Guard::start(&ns, &agent);
    ns.pvc("data", true);
    let labels = |dry_run| {
        [
            ("operation", "DELETE"),
            ("resource", "persistentvolumeclaims"),
            ("decision", "denied"),
            ("dry_run", dry_run),
        ]
    };
    let dry_before = guard.metric("agentguard_admission_requests_total", &labels("true"));

    let out = ns.kubectl_as(&agent, &["delete", "pvc", "data", "--dry-run=server"]);
    assert!(!out.status.success());
    assert_eq!(stderr(&out).trim_end(), denial(&ns.name, "data", &agent));
    assert!(ns.pvc_intact("data"));

    assert_eq!(
        guard.metric("agentguard_admission_requests_total", &labels("true")),
        dry_before + 1.0
    );
    assert_eq!(
        guard.metric("agentguard_admission_requests_total", &labels("false")),
        0.0
    );
    let blocked = blocked_claims(&guard, &ns, &agent);
    assert_eq!(
        blocked, 0.0,
        "dry runs destroyed nothing and are not blocked attempts"
    );
}

#[test]
fn with_the_webhook_down_the_api_server_refuses_the_deletion() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "failclosed");
    let agent = ns.agent("cursor-agent");
    let mut guard = Guard::start(&ns, &agent);
    ns.pvc("data", true);

    guard.kill();
    let out = ns.kubectl_as(&agent, &["delete", "pvc", "data"]);
    assert!(
        !out.status.success(),
        "fail-closed: no webhook, no deletion"
    );
    let err = stderr(&out);
    assert!(
        err.contains("failed calling webhook \"validate.agentguard.dev\""),
        "{err}"
    );
    assert!(ns.pvc_intact("data"));

    // APIService writes are routed (agents may not make one), but never the API server's own
    // registrations: a new CRD's group is served while agentguard is down.
    let group = ns.crd("widgets", "Widget");
    support::wait_until(
        std::time::Duration::from_secs(30),
        "the API server to register the new group's APIService",
        || {
            cluster
                .kubectl(&["get", "apiservice", &format!("v1.{group}")])
                .status
                .success()
        },
    );
    ns.kubectl_ok(&["get", "widgets"]);
    // Anyone else's APIService write waits for agentguard, as every routed write does.
    let out = cluster.kubectl(&[
        "label",
        "apiservice",
        &format!("v1.{group}"),
        "note=while-down",
        "--dry-run=server",
    ]);
    assert!(
        !out.status.success()
            && stderr(&out).contains("failed calling webhook \"validate.agentguard.dev\""),
        "{}",
        stderr(&out)
    );
}

#[test]
fn metrics_record_each_block_with_contract_labels() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "metrics");
    let agent = ns.agent("cursor-agent");
    let guard = Guard::start(&ns, &agent);
    ns.pvc("data", true);
    for _ in 0..3 {
        assert!(
            !ns.kubectl_as(&agent, &["delete", "pvc", "data"])
                .status
                .success()
        );
    }
    let blocked = blocked_claims(&guard, &ns, &agent);
    assert_eq!(blocked, 3.0);
    let denied = guard.metric(
        "agentguard_admission_requests_total",
        &[
            ("operation", "DELETE"),
            ("resource", "persistentvolumeclaims"),
            ("decision", "denied"),
            ("dry_run", "false"),
        ],
    );
    assert_eq!(denied, 3.0);
    let (_, text) = guard.http_get("/metrics").unwrap();
    assert!(
        text.contains("agentguard_admission_duration_seconds_bucket{operation=\"DELETE\""),
        "{text}"
    );
    // Every agentguard in the test cluster sees every protected claim; at least this test's
    // two (the claim and the harness's probe) are counted.
    support::wait_until(
        std::time::Duration::from_secs(20),
        "the protected-objects gauge",
        || {
            guard.metric(
                "agentguard_protected_objects",
                &[("resource", "persistentvolumeclaims")],
            ) >= 2.0
        },
    );
    assert!(text.contains(&format!(
        "agentguard_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    )));
}

#[test]
fn blocked_attempts_show_as_one_event_on_the_object() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "events");
    let agent = ns.agent("cursor-agent");
    let _guard = Guard::start(&ns, &agent);
    ns.pvc("data", true);
    for _ in 0..3 {
        assert!(
            !ns.kubectl_as(&agent, &["delete", "pvc", "data"])
                .status
                .success()
        );
    }
    let events = || {
        stdout(&ns.kubectl(&[
            "get",
            "events",
            "--field-selector",
            "reason=DeletionBlocked,involvedObject.name=data",
            "-o",
            "jsonpath={range .items[*]}{.type} {.involvedObject.kind} {.message}{\"\\n\"}{end}",
        ]))
    };
    support::wait_until(
        std::time::Duration::from_secs(30),
        "a DeletionBlocked event",
        || events().contains(&agent),
    );
    let lines: Vec<String> = events().lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 1, "attempts fold into one event: {lines:?}");
    assert!(
        lines[0].starts_with(&format!(
            "Warning PersistentVolumeClaim agentguard blocked {agent} from destroying this object (annotation)"
        )),
        "{lines:?}"
    );
    let described = ns.kubectl_ok(&["describe", "pvc", "data"]);
    assert!(described.contains("DeletionBlocked"), "{described}");
}

/// `agentguard check` (what the chart's `helm test` Pod runs), with an agent's own token:
/// it succeeds on a protected claim (refused by agentguard, nothing deleted) and fails, saying
/// why, on a claim nothing protects (the dry run was allowed) and on an object it may not
/// delete (refused by RBAC, not by agentguard).
#[test]
fn check_succeeds_only_when_agentguard_refuses_the_agent() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "check");
    let agent = ns.agent("cursor-agent");
    let _guard = Guard::start(&ns, &agent);
    ns.pvc("data", true);
    ns.pvc("scratch", false);
    let token = ns.kubectl_ok(&["create", "token", "cursor-agent", "--duration=10m"]);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = cluster.token_kubeconfig(dir.path(), token.trim());
    let check = |object: &str, namespace: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_agentguard"))
            .args(["check", "--delete", object, "-n", namespace])
            .arg("--patience-seconds=2")
            .env("KUBECONFIG", &kubeconfig)
            .output()
            .unwrap()
    };
    let out = check("persistentvolumeclaims/data", &ns.name);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("ok: agentguard refused the dry-run delete")
            && stdout(&out).contains("agentguard: DENIED"),
        "{}",
        stdout(&out)
    );
    assert!(ns.pvc_intact("data"));
    let out = check("persistentvolumeclaims/scratch", &ns.name);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("was allowed"), "{}", stderr(&out));
    assert!(ns.pvc_intact("scratch"), "a check deleted something");
    let out = check("persistentvolumeclaims/data", "kube-system");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not with agentguard's denial"),
        "{}",
        stderr(&out)
    );
}
