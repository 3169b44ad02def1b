//! End-to-end: ProtectedResource policies, human approvals, modes, and a guard that the
//! identities it guards against cannot disarm. Each test asserts the real API server's answer.
//! Requires `hack/cluster.sh up`; fails (never skips) when the control plane is absent.

mod support;

use std::time::Duration;

use support::{Cluster, Guard, GuardOptions, TestNamespace, in_secs, stderr, stdout, wait_until};

const ADMIN: &str = "agentguard-admin";

fn policy(ns: &TestNamespace<'_>, name: &str, mode: &str, extra: &str) {
    ns.cluster.apply(&format!(
        "apiVersion: agentguard.dev/v1alpha1\nkind: ProtectedResource\nmetadata:\n  name: {name}\n  namespace: {ns}\n\
         spec:\n  mode: {mode}\n  targets:\n    - apiGroups: [\"\"]\n      kinds: [PersistentVolumeClaim]\n      names: [\"data-*\"]\n{extra}",
        ns = ns.name
    ));
}

/// Grants the agent full rights on agentguard's policies, as a careless cluster-admin-ish token
/// would: only the webhook stands between it and disarming the guard.
fn grant_policy_rights(ns: &TestNamespace<'_>, sa: &str) {
    ns.kubectl_ok(&[
        "create",
        "role",
        "policy-admin",
        "--verb=*",
        "--resource=protectedresources.agentguard.dev",
    ]);
    ns.kubectl_ok(&[
        "create",
        "rolebinding",
        "policy-admin",
        "--role=policy-admin",
        &format!("--serviceaccount={}:{sa}", ns.name),
    ]);
}

fn approvals(guard: &Guard<'_>, result: &str) -> f64 {
    guard.metric("agentguard_approvals_total", &[("result", result)])
}

#[test]
fn policy_protects_and_a_human_approval_lets_the_agent_delete() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "approve");
    let agent = ns.agent("cursor-agent");
    let guard = Guard::start(&ns, &agent);
    policy(&ns, "orders", "Enforce", "  message: \"Ask #db-oncall.\"\n");
    ns.wait_policy_ready("orders");
    ns.pvc("data-0", false);
    ns.pvc("logs-0", false);

    wait_until(
        Duration::from_secs(40),
        "status to count 1 protected object",
        || {
            stdout(&ns.kubectl(&[
                "get",
                "protectedresource",
                "orders",
                "-o",
                "jsonpath={.status.protectedObjects}",
            ])) == "1"
        },
    );
    let out = ns.kubectl_as(&agent, &["delete", "pvc", "data-0"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "Protected by ProtectedResource {}/orders. This may hold production data.",
            ns.name
        )),
        "{err}"
    );
    // The policy's status counts the block and names the last attempt.
    wait_until(Duration::from_secs(30), "status to count the block", || {
        stdout(&ns.kubectl(&[
            "get",
            "protectedresource",
            "orders",
            "-o",
            "jsonpath={.status.blockedDeletions}",
        ])) == "1"
    });
    let last = stdout(&ns.kubectl(&[
        "get",
        "protectedresource",
        "orders",
        "-o",
        "jsonpath={.status.lastBlocked.subject} {.status.lastBlocked.object}",
    ]));
    assert_eq!(
        last,
        format!("{agent} PersistentVolumeClaim {}/data-0", ns.name)
    );
    assert!(
        err.trim_end()
            .ends_with("--reason \"<why you need it deleted>\"\nAsk #db-oncall."),
        "{err}"
    );
    assert!(ns.pvc_intact("data-0"));
    // Names outside the policy's globs are not protected.
    assert!(
        ns.kubectl_as(&agent, &["delete", "pvc", "logs-0", "--wait=false"])
            .status
            .success()
    );

    // A human approves this exact object, naming themselves, for 10 minutes.
    ns.kubectl_ok(&[
        "annotate",
        "pvc",
        "data-0",
        &format!("agentguard.dev/approved-by={ADMIN}"),
        &format!("agentguard.dev/approved-until={}", in_secs(600)),
        "agentguard.dev/approval-reason=migrating to new volume",
    ]);
    assert_eq!(approvals(&guard, "accepted"), 1.0);

    let out = ns.kubectl_as(&agent, &["delete", "pvc", "data-0", "--wait=false"]);
    assert!(
        out.status.success(),
        "approved deletion refused: {}",
        stderr(&out)
    );
    ns.wait_pvc_gone("data-0");
    assert_eq!(approvals(&guard, "used"), 1.0);
    let status = stdout(&ns.kubectl(&[
        "get",
        "protectedresource",
        "orders",
        "-o",
        "jsonpath={.status.observedGeneration}",
    ]));
    assert_eq!(status, "1");
}

/// A block counts protected objects again at most every 2 s; one inside that gap is not
/// dropped but recounted when the gap ends, so the status does not wait for the 15 s tick.
#[test]
fn a_block_inside_the_recount_gap_still_refreshes_the_count() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "recount");
    let agent = ns.agent("cursor-agent");
    let _guard = Guard::start(&ns, &agent);
    policy(&ns, "orders", "Enforce", "");
    ns.wait_policy_ready("orders");
    let status = |path: &str| {
        stdout(&ns.kubectl(&[
            "get",
            "protectedresource",
            "orders",
            "-o",
            &format!("jsonpath={path}"),
        ]))
    };
    // The first block recounts at once (the gap since the policy's count is over).
    ns.pvc("data-0", false);
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        !ns.kubectl_as(&agent, &["delete", "pvc", "data-0"])
            .status
            .success()
    );
    wait_until(Duration::from_secs(10), "the first block's recount", || {
        status("{.status.protectedObjects}/{.status.blockedDeletions}") == "1/1"
    });
    // A second claim and its block right after: inside the gap.
    ns.pvc("data-1", false);
    assert!(
        !ns.kubectl_as(&agent, &["delete", "pvc", "data-1"])
            .status
            .success()
    );
    wait_until(Duration::from_secs(5), "the postponed recount", || {
        status("{.status.protectedObjects}/{.status.blockedDeletions}") == "2/2"
    });
}

#[test]
fn expired_and_foreign_approvals_do_not_count() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "expired");
    let agent = ns.agent("cursor-agent");
    let guard = Guard::start(&ns, &agent);
    policy(&ns, "orders", "Enforce", "");
    ns.wait_policy_ready("orders");
    ns.pvc("data-0", false);

    // Approving in someone else's name is rejected at the moment it is set.
    let out = ns.kubectl(&[
        "annotate",
        "pvc",
        "data-0",
        "agentguard.dev/approved-by=alice",
        &format!("agentguard.dev/approved-until={}", in_secs(600)),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!(
            "agentguard.dev/approved-by must be your own username \"{ADMIN}\", not \"alice\""
        )),
        "{}",
        stderr(&out)
    );
    assert_eq!(approvals(&guard, "rejected"), 1.0);

    // An approval longer than maxTTL (default 1h) is rejected too.
    let out = ns.kubectl(&[
        "annotate",
        "pvc",
        "data-0",
        &format!("agentguard.dev/approved-by={ADMIN}"),
        &format!("agentguard.dev/approved-until={}", in_secs(2 * 3600)),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("(maxTTL)"), "{}", stderr(&out));

    // A short approval, then let it expire.
    ns.kubectl_ok(&[
        "annotate",
        "pvc",
        "data-0",
        &format!("agentguard.dev/approved-by={ADMIN}"),
        &format!("agentguard.dev/approved-until={}", in_secs(3)),
    ]);
    std::thread::sleep(Duration::from_secs(4));
    let out = ns.kubectl_as(&agent, &["delete", "pvc", "data-0"]);
    assert!(!out.status.success(), "an expired approval must not count");
    assert!(
        stderr(&out).contains(
            "The approval on it does not count: the approval by agentguard-admin expired at"
        ),
        "{}",
        stderr(&out)
    );
    assert!(ns.pvc_intact("data-0"));
    assert_eq!(approvals(&guard, "expired"), 1.0);
}

#[test]
fn agents_cannot_disarm_the_guard() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "disarm");
    let agent = ns.agent("cursor-agent");
    grant_policy_rights(&ns, "cursor-agent");
    let _guard = Guard::start(&ns, &agent);
    policy(&ns, "orders", "Enforce", "");
    ns.wait_policy_ready("orders");
    ns.pvc("data-0", true);

    let attempts: Vec<(&str, Vec<String>)> = vec![
        (
            "remove protected",
            vec![
                "annotate".into(),
                "pvc".into(),
                "data-0".into(),
                "agentguard.dev/protected-".into(),
            ],
        ),
        (
            "set protected=false",
            vec![
                "annotate".into(),
                "--overwrite".into(),
                "pvc".into(),
                "data-0".into(),
                "agentguard.dev/protected=false".into(),
            ],
        ),
        (
            "approve itself",
            vec![
                "annotate".into(),
                "pvc".into(),
                "data-0".into(),
                format!("agentguard.dev/approved-by={agent}"),
                format!("agentguard.dev/approved-until={}", in_secs(600)),
            ],
        ),
        (
            "forge a human's approval",
            vec![
                "annotate".into(),
                "pvc".into(),
                "data-0".into(),
                format!("agentguard.dev/approved-by={ADMIN}"),
                format!("agentguard.dev/approved-until={}", in_secs(600)),
            ],
        ),
        (
            "delete the policy",
            vec!["delete".into(), "protectedresource".into(), "orders".into()],
        ),
        (
            "switch the policy to Audit",
            vec![
                "patch".into(),
                "protectedresource".into(),
                "orders".into(),
                "--type=merge".into(),
                "-p".into(),
                r#"{"spec":{"mode":"Audit"}}"#.into(),
            ],
        ),
        (
            "un-label itself",
            vec![
                "label".into(),
                "serviceaccount".into(),
                "cursor-agent".into(),
                "agentguard.dev/agent=false".into(),
            ],
        ),
    ];
    for (what, args) in attempts {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = ns.kubectl_as(&agent, &args);
        assert!(!out.status.success(), "{what}: the agent succeeded");
        assert!(
            stderr(&out).contains("agentguard: DENIED"),
            "{what}: {}",
            stderr(&out)
        );
    }
    let create = format!(
        "apiVersion: agentguard.dev/v1alpha1\nkind: ProtectedResource\nmetadata:\n  name: agent-made\n  namespace: {}\nspec:\n  targets: [{{apiGroups: [\"\"], kinds: [ConfigMap]}}]\n",
        ns.name
    );
    let out = cluster.kubectl_stdin(&[&format!("--as={agent}"), "apply", "-f", "-"], &create);
    assert!(!out.status.success(), "the agent created a policy");
    assert!(
        stderr(&out).contains("may not create, change or delete agentguard policies"),
        "{}",
        stderr(&out)
    );

    assert!(ns.pvc_intact("data-0"));
    let mode = stdout(&ns.kubectl(&[
        "get",
        "protectedresource",
        "orders",
        "-o",
        "jsonpath={.spec.mode}",
    ]));
    assert_eq!(mode, "Enforce");
}

#[test]
fn labelled_service_accounts_are_agents() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "labelled");
    let probe = ns.agent("cursor-probe");
    let helper = ns.agent("helper");
    let options = GuardOptions {
        agent_service_accounts: Some(format!("{}/cursor-*", ns.name)),
        ..Default::default()
    };
    let _guard = Guard::start_with(&ns, &probe, &options);
    ns.pvc("data-0", true);

    // Not an agent by any glob: allowed... until a human labels it.
    let out = ns.kubectl_as(&helper, &["delete", "pvc", "data-0", "--dry-run=server"]);
    assert!(out.status.success(), "{}", stderr(&out));
    ns.kubectl_ok(&[
        "label",
        "serviceaccount",
        "helper",
        "agentguard.dev/agent=true",
    ]);
    wait_until(
        Duration::from_secs(30),
        "label to reach the snapshot",
        || {
            stderr(&ns.kubectl_as(&helper, &["delete", "pvc", "data-0", "--dry-run=server"]))
                .contains("agentguard: DENIED delete")
        },
    );
    let out = ns.kubectl_as(
        &helper,
        &["label", "serviceaccount", "helper", "agentguard.dev/agent-"],
    );
    assert!(!out.status.success(), "an agent un-labelled itself");
    assert!(ns.pvc_intact("data-0"));
}

#[test]
fn warn_mode_prints_a_warning_and_audit_mode_counts() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "modes");
    let agent = ns.agent("cursor-agent");
    let guard = Guard::start(&ns, &agent);
    policy(&ns, "warned", "Warn", "");
    ns.wait_policy_ready("warned");
    ns.pvc("data-0", false);

    let out = ns.kubectl_as(&agent, &["delete", "pvc", "data-0", "--wait=false"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("Warning: agentguard: delete of PersistentVolumeClaim {}/data-0 by {agent} is protected by ProtectedResource {}/warned (mode Warn", ns.name, ns.name)),
        "kubectl must print the warning: {err}"
    );
    ns.wait_pvc_gone("data-0");

    ns.kubectl_ok(&["delete", "protectedresource", "warned"]);
    policy(&ns, "audited", "Audit", "");
    ns.wait_policy_ready("audited");
    ns.pvc("data-1", false);
    let out = ns.kubectl_as(&agent, &["delete", "pvc", "data-1", "--wait=false"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("Warning"), "{}", stderr(&out));
    ns.wait_pvc_gone("data-1");
    let labels = |decision| {
        [
            ("operation", "DELETE"),
            ("resource", "persistentvolumeclaims"),
            ("decision", decision),
            ("dry_run", "false"),
        ]
    };
    assert_eq!(
        guard.metric("agentguard_admission_requests_total", &labels("warned")),
        1.0
    );
    assert_eq!(
        guard.metric("agentguard_admission_requests_total", &labels("audited")),
        1.0
    );
}

#[test]
fn break_glass_is_allowed_and_recorded() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "breakglass");
    let agent = ns.agent("cursor-agent");
    let group = format!("{}-break-glass", ns.name);
    let options = GuardOptions {
        break_glass_groups: Some(group.clone()),
        ..Default::default()
    };
    let guard = Guard::start_with(&ns, &agent, &options);
    ns.pvc("data-0", true);

    let as_group = format!("--as-group={group}");
    let out = ns.kubectl_as(
        &agent,
        &[&as_group, "delete", "pvc", "data-0", "--wait=false"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    ns.wait_pvc_gone("data-0");
    let log = guard.log();
    assert!(
        log.lines()
            .any(|l| l.contains("data-0") && l.contains("break-glass group")),
        "the break-glass deletion must be recorded in agentguard's log:\n{log}"
    );
    // And in the API server's audit log, under the webhook's name.
    let audit = cluster.audit_log();
    assert!(
        audit.lines().any(|l| l.contains("\"data-0\"")
            && l.contains("\"validate.agentguard.dev/exemption\":\"break-glass group\"")),
        "no audit record of the break-glass deletion"
    );
}

#[test]
fn bad_policies_are_refused_or_reported_not_ignored() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "badpolicy");
    let agent = ns.agent("cursor-agent");
    let _guard = Guard::start(&ns, &agent);
    let doc = |name: &str, spec: &str| {
        format!(
            "apiVersion: agentguard.dev/v1alpha1\nkind: ProtectedResource\nmetadata:\n  name: {name}\n  namespace: {}\nspec:\n{spec}",
            ns.name
        )
    };
    let refused = [
        (
            "ttl",
            "  targets: [{apiGroups: [\"\"], kinds: [PersistentVolumeClaim]}]\n  approval: {maxTTL: 48h}\n",
            "maxTTL must be more than 0s and at most 24h",
        ),
        (
            "ttlformat",
            "  targets: [{apiGroups: [\"\"], kinds: [PersistentVolumeClaim]}]\n  approval: {maxTTL: soon}\n",
            "spec.approval.maxTTL",
        ),
        (
            "mode",
            "  mode: Block\n  targets: [{apiGroups: [\"\"], kinds: [PersistentVolumeClaim]}]\n",
            "Unsupported value: \"Block\"",
        ),
        ("notargets", "  targets: []\n", "spec.targets"),
        (
            "nokinds",
            "  targets: [{apiGroups: [\"\"], kinds: []}]\n",
            "spec.targets[0].kinds",
        ),
        (
            "nsfield",
            "  targets: [{apiGroups: [\"\"], kinds: [PersistentVolumeClaim], namespaces: [\"prod-*\"]}]\n",
            "only allowed in ClusterProtectedResource",
        ),
    ];
    for (name, spec, needle) in refused {
        let out = cluster.kubectl_stdin(&["apply", "-f", "-"], &doc(name, spec));
        assert!(!out.status.success(), "{name}: accepted");
        assert!(stderr(&out).contains(needle), "{name}: {}", stderr(&out));
    }
    // A kind the API server does not serve is reported, not silently ignored.
    cluster.apply(&doc(
        "unknownkind",
        "  targets: [{apiGroups: [example.com], kinds: [FooBar]}]\n",
    ));
    wait_until(
        Duration::from_secs(30),
        "Ready=False on unknownkind",
        || {
            stdout(&ns.kubectl(&[
                "get",
                "protectedresource",
                "unknownkind",
                "-o",
                "jsonpath={.status.conditions[0].reason}: {.status.conditions[0].message}",
            ])) == "UnknownKind: kind FooBar is not served in API group \"example.com\"; install its CRD or fix the target"
        },
    );
    // What the schema cannot see is reported in status, and the policy protects nothing.
    cluster.apply(&doc(
        "badglob",
        "  targets: [{apiGroups: [\"\"], kinds: [PersistentVolumeClaim], names: [\"data-[\"]}]\n",
    ));
    wait_until(Duration::from_secs(30), "Ready=False on badglob", || {
        stdout(&ns.kubectl(&[
            "get",
            "protectedresource",
            "badglob",
            "-o",
            "jsonpath={.status.conditions[0].status}",
        ])) == "False"
    });
    let message = stdout(&ns.kubectl(&[
        "get",
        "protectedresource",
        "badglob",
        "-o",
        "jsonpath={.status.conditions[0].reason}: {.status.conditions[0].message}",
    ]));
    assert_eq!(
        message,
        "InvalidSpec: spec.targets[0].names: invalid glob \"data-[\": error parsing glob 'data-[': unclosed character class; missing ']'"
    );
}
