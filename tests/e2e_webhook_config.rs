//! End-to-end: agentguard owns its ValidatingWebhookConfiguration. It creates it, keeps its
//! rules equal to what policies need, and restores it within seconds when someone deletes or
//! weakens it. Requires `hack/cluster.sh up`; fails (never skips) without a control plane.

mod support;

use std::time::Duration;

use support::{Cluster, Guard, GuardOptions, TestNamespace, stderr, stdout, wait_until};

fn vwc(cluster: &Cluster, name: &str, path: &str) -> String {
    stdout(&cluster.kubectl(&[
        "get",
        "validatingwebhookconfiguration",
        name,
        "-o",
        &format!("jsonpath={path}"),
    ]))
}

#[test]
fn managed_configuration_is_created_restored_and_follows_policies() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "managed");
    let agent = ns.agent("cursor-agent");
    // Starting waits until the API server really calls agentguard through the configuration
    // agentguard made itself (an agent's dry-run delete of a protected claim is denied).
    let guard = Guard::start(&ns, &agent);
    let name = guard.webhook_name.clone();
    assert_eq!(vwc(&cluster, &name, "{.webhooks[0].failurePolicy}"), "Fail");
    assert_eq!(vwc(&cluster, &name, "{.webhooks[0].sideEffects}"), "None");
    let rules = vwc(&cluster, &name, "{.webhooks[0].rules}");
    for resource in [
        "persistentvolumeclaims",
        "namespaces",
        "customresourcedefinitions",
        "statefulsets",
        "protectedresources",
    ] {
        assert!(rules.contains(resource), "{resource} missing from {rules}");
    }

    // matchConditions let agentguard-relevant updates through, and judge them.
    ns.pvc("data", true);
    let out = ns.kubectl_as(
        &agent,
        &["annotate", "pvc", "data", "agentguard.dev/protected-"],
    );
    assert!(!out.status.success(), "the agent unprotected the claim");
    assert!(
        stderr(&out).contains("agentguard: DENIED"),
        "{}",
        stderr(&out)
    );
    // Every write by a person or an agent to a protected kind is judged (any field may lower
    // its protection: a label a policy selects on)...
    let updates = |g: &Guard<'_>, resource: &str| {
        g.metric(
            "agentguard_admission_requests_total",
            &[
                ("operation", "UPDATE"),
                ("resource", resource),
                ("decision", "allowed"),
                ("dry_run", "false"),
            ],
        )
    };
    ns.pvc("scratch", false);
    let before = updates(&guard, "persistentvolumeclaims");
    ns.kubectl_ok(&["label", "pvc", "scratch", "tier=cold"]);
    assert_eq!(
        updates(&guard, "persistentvolumeclaims"),
        before + 1.0,
        "a person's write to a protected kind did not reach the webhook"
    );
    // ...while a write to a root (a Namespace) that touches nothing the decisions read does
    // not reach it at all.
    let before = updates(&guard, "namespaces");
    ns.kubectl_ok(&["label", "namespace", &ns.name, "tier=cold"]);
    assert_eq!(
        updates(&guard, "namespaces"),
        before,
        "an irrelevant update reached the webhook"
    );
    ns.grant_cluster("cursor-agent", "get,patch,update", "namespaces");
    // Polled: the new grant takes a moment to reach the API server's authorizer.
    let mut last = String::new();
    wait_until(
        Duration::from_secs(15),
        "the agent's approval on its namespace to be denied by agentguard",
        || {
            let out = ns.kubectl_as(
                &agent,
                &[
                    "annotate",
                    "namespace",
                    &ns.name,
                    "agentguard.dev/approved-by=alice",
                ],
            );
            assert!(
                !out.status.success(),
                "an agent wrote an approval on its namespace"
            );
            last = stderr(&out);
            last.contains("agentguard: DENIED")
        },
    );

    // Deleted: restored within seconds, and still enforcing.
    cluster.kubectl_ok(&["delete", "validatingwebhookconfiguration", &name]);
    wait_until(
        Duration::from_secs(15),
        "the configuration to be restored",
        || {
            cluster
                .kubectl(&["get", "validatingwebhookconfiguration", &name])
                .status
                .success()
        },
    );
    wait_until(
        Duration::from_secs(15),
        "the restored configuration to enforce",
        || {
            stderr(&ns.kubectl_as(&agent, &["delete", "pvc", "data", "--dry-run=server"]))
                .contains("agentguard: DENIED")
        },
    );

    // Weakened: put back.
    cluster.kubectl_ok(&[
        "patch",
        "validatingwebhookconfiguration",
        &name,
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/webhooks/0/failurePolicy","value":"Ignore"}]"#,
    ]);
    wait_until(
        Duration::from_secs(15),
        "failurePolicy Fail to be restored",
        || vwc(&cluster, &name, "{.webhooks[0].failurePolicy}") == "Fail",
    );

    // A policy on a new CRD kind adds its resource to the rules within seconds.
    let group = ns.crd("backups", "Backup");
    cluster.apply(&format!(
        "apiVersion: agentguard.dev/v1alpha1\nkind: ProtectedResource\nmetadata:\n  name: backups\n  namespace: {ns}\nspec:\n  targets: [{{apiGroups: [{group}], kinds: [Backup]}}]\n---\n\
         apiVersion: {group}/v1\nkind: Backup\nmetadata:\n  name: nightly\n  namespace: {ns}\n",
        ns = ns.name
    ));
    wait_until(
        Duration::from_secs(15),
        "the Backup kind in the rules",
        || vwc(&cluster, &name, "{.webhooks[0].rules}").contains("backups"),
    );
    ns.grant("cursor-agent", &format!("backups.{group}"));
    wait_until(
        Duration::from_secs(15),
        "the Backup to be protected",
        || {
            stderr(&ns.kubectl_as(&agent, &["delete", &format!("backups.{group}"), "nightly"]))
                .contains(&format!(
                    "agentguard: DENIED delete of Backup {}/nightly",
                    ns.name
                ))
        },
    );
}

#[test]
fn a_new_leader_takes_over_when_the_leader_dies() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "leader");
    let agent = ns.agent("cursor-agent");
    let options = GuardOptions::default();
    let mut guard = Guard::start_with(&ns, &agent, &options);
    let lease = format!("agentguard-{}", ns.name);
    let holder = || {
        stdout(&ns.kubectl(&[
            "get",
            "lease",
            &lease,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ]))
    };
    assert_eq!(holder(), format!("a-{}", ns.name));

    // A second replica serves the webhook too, but does not lead.
    let (webhook_b, metrics_b) = (support::free_port(), support::free_port());
    let mut replica =
        support::spawn_agentguard(&ns, &options, guard.dir.path(), webhook_b, metrics_b, "b");
    wait_until(Duration::from_secs(30), "replica b to be ready", || {
        support::http_status(metrics_b, "/readyz") == Some(200)
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        holder(),
        format!("a-{}", ns.name),
        "b took a lease a still renews"
    );

    guard.kill();
    wait_until(Duration::from_secs(40), "b to take the lease", || {
        holder() == format!("b-{}", ns.name)
    });
    // The new leader reconciles: the configuration now points at b, and agents are still denied.
    let name = guard.webhook_name.clone();
    wait_until(
        Duration::from_secs(15),
        "the configuration to point at b",
        || {
            vwc(&cluster, &name, "{.webhooks[0].clientConfig.url}")
                .contains(&format!(":{webhook_b}/"))
        },
    );
    wait_until(Duration::from_secs(15), "b to enforce", || {
        stderr(&ns.kubectl_as(
            &agent,
            &["delete", "pvc", "agentguard-probe", "--dry-run=server"],
        ))
        .contains("agentguard: DENIED")
    });
    replica.kill().unwrap();
    replica.wait().unwrap();
}

#[test]
fn self_managed_certificates_rotate_under_load_without_a_failed_request() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "rotate");
    let agent = ns.agent("cursor-agent");
    // 60 s certificates rotated when 40 s are left: a rotation starts ~20 s in and its new
    // certificate is served once the configuration read back carries the next CA (within a
    // few seconds; 8 s is only when a warning would be logged).
    let options = GuardOptions {
        self_certs: Some(("60s", "40s", "8s")),
        ..Default::default()
    };
    let guard = Guard::start_with(&ns, &agent, &options);
    let served = || {
        ns.kubectl_ok(&[
            "get",
            "secret",
            "agentguard-tls",
            "-o",
            "jsonpath={.data.tls\\.crt}",
        ])
    };
    let first = served();
    let expiry_before = guard.metric("agentguard_certificate_expiry_timestamp_seconds", &[]);
    assert!(expiry_before > 0.0, "the expiry metric is set");
    ns.pvc("data", true);

    // A steady stream of an agent's refused deletion and a human's guarded update, through the
    // rotation. Every one must be judged by agentguard: no TLS or call failure, ever.
    let started = std::time::Instant::now();
    let (mut judged, mut rotated_at) = (0, None);
    while started.elapsed() < Duration::from_secs(45) {
        let out = ns.kubectl_as(&agent, &["delete", "pvc", "data", "--dry-run=server"]);
        let err = stderr(&out);
        assert!(
            err.contains("agentguard: DENIED"),
            "request {judged} not judged: {err}"
        );
        let out = ns.kubectl(&[
            "annotate",
            "--overwrite",
            "pvc",
            "data",
            &format!("agentguard.dev/note=tick-{judged}"),
        ]);
        assert!(
            out.status.success(),
            "human update {judged} refused: {}",
            stderr(&out)
        );
        judged += 1;
        if rotated_at.is_none() && served() != first {
            rotated_at = Some(started.elapsed());
        }
    }
    let rotated_at = rotated_at.expect("the serving certificate rotated within 45 s");
    assert!(judged > 20, "only {judged} rounds");
    assert!(
        guard.metric("agentguard_certificate_expiry_timestamp_seconds", &[]) > expiry_before,
        "the expiry metric follows the new certificate"
    );
    let bundle = vwc(
        &cluster,
        &guard.webhook_name,
        "{.webhooks[0].clientConfig.caBundle}",
    );
    assert!(!bundle.is_empty());
    eprintln!("rotated after {rotated_at:?}; {judged} rounds, none failed");
}

#[test]
fn without_leader_election_the_configuration_is_not_reapplied_in_a_loop() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "no-lease");
    let agent = ns.agent("cursor-agent");
    let guard = Guard::start_with(
        &ns,
        &agent,
        &GuardOptions {
            no_lease: true,
            ..Default::default()
        },
    );
    // Every PATCH of the configuration the API server answered, from its audit log.
    let patches = || {
        let uri = format!("validatingwebhookconfigurations/{}?", guard.webhook_name);
        cluster
            .audit_log()
            .lines()
            .filter(|l| {
                l.contains("\"verb\":\"patch\"")
                    && l.contains("\"stage\":\"ResponseComplete\"")
                    && l.contains(&uri)
            })
            .count()
    };
    let before = patches();
    std::thread::sleep(Duration::from_secs(10));
    let during = patches() - before;
    // Nothing changed, so nothing needs applying; a closed leadership channel once made every
    // pass look like a change (a PATCH loop as fast as the API server answers).
    assert!(
        during <= 2,
        "{during} PATCHes of an unchanged configuration in 10 s"
    );
}

#[test]
fn on_sigterm_reviews_are_answered_while_unready_then_the_process_exits() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "sigterm");
    let agent = ns.agent("cursor-agent");
    let mut guard = Guard::start_with(
        &ns,
        &agent,
        &GuardOptions {
            extra_args: vec!["--shutdown-delay=4s".into()],
            ..Default::default()
        },
    );
    guard.terminate();
    // Not ready at once, so the endpoint is removed ...
    wait_until(Duration::from_secs(2), "/readyz to fail", || {
        guard.http_get("/readyz").is_some_and(|(s, _)| s != 200)
    });
    // ... while the API server, which has not heard yet, is still answered: an agent's
    // guarded deletion is judged, not failed for want of a listener.
    let out = ns.kubectl_as(
        &agent,
        &["delete", "pvc", "agentguard-probe", "--dry-run=server"],
    );
    assert!(
        stderr(&out).contains("agentguard: DENIED"),
        "a review during the shutdown delay was not answered: {}",
        stderr(&out)
    );
    assert!(
        !guard.exited(),
        "agentguard exited before its shutdown delay"
    );
    wait_until(Duration::from_secs(20), "agentguard to exit", || {
        guard.exited()
    });
}

#[test]
fn self_managed_secret_deleted_or_damaged_changes_nothing_served_or_published() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "secret-loss");
    let agent = ns.agent("cursor-agent");
    let options = GuardOptions {
        self_certs: Some(("1h", "10m", "8s")),
        ..Default::default()
    };
    let guard = Guard::start_with(&ns, &agent, &options);
    let key = |k: &str| {
        stdout(&ns.kubectl(&[
            "get",
            "secret",
            "agentguard-tls",
            "-o",
            &format!("jsonpath={{.data.{}}}", k.replace('.', "\\.")),
        ]))
    };
    let (cert, bundle) = (key("tls.crt"), key("ca-bundle.crt"));
    assert!(!cert.is_empty() && !bundle.is_empty());
    let published = || {
        vwc(
            &cluster,
            &guard.webhook_name,
            "{.webhooks[0].clientConfig.caBundle}",
        )
    };
    let before = published();
    ns.pvc("data", true);
    let judged = |what: &str| {
        for round in 0..10 {
            let out = ns.kubectl_as(&agent, &["delete", "pvc", "data", "--dry-run=server"]);
            assert!(
                stderr(&out).contains("agentguard: DENIED"),
                "{what}, round {round}: not judged: {}",
                stderr(&out)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    // Deleted: the leader writes the same certificate and bundle back.
    ns.kubectl_ok(&["delete", "secret", "agentguard-tls"]);
    judged("after the Secret was deleted");
    wait_until(Duration::from_secs(20), "the Secret written back", || {
        key("tls.crt") == cert
    });
    assert_eq!(
        key("ca-bundle.crt"),
        bundle,
        "the same bundle is written back"
    );
    assert_eq!(published(), before, "the caBundle did not change");
    // Damaged: a key that does not match; then a bundle that does not trust the certificate.
    for (field, value) in [
        ("tls.key", "Z2FyYmFnZQ=="),
        ("ca-bundle.crt", "Z2FyYmFnZQ=="),
    ] {
        ns.kubectl_ok(&[
            "patch",
            "secret",
            "agentguard-tls",
            "--type=merge",
            "-p",
            &format!("{{\"data\":{{\"{field}\":\"{value}\"}}}}"),
        ]);
        judged(&format!("after {field} was damaged"));
        wait_until(Duration::from_secs(20), "the Secret repaired", || {
            key(field) != value
        });
        assert_eq!(key("tls.crt"), cert, "{field}: the same certificate");
        assert_eq!(key("ca-bundle.crt"), bundle, "{field}: the same bundle");
        assert_eq!(published(), before, "{field}: the caBundle did not change");
    }
    judged("at the end");
}

/// The chart's webhook settings reach the configurations agentguard keeps: the timeout on every
/// webhook, annotations (AKS's admissions enforcer opt-out) and labels on both configurations.
/// An annotation another controller adds is left alone, and one of agentguard's that someone
/// removes comes back: neither side rewrites the other's fields.
#[test]
fn webhook_settings_from_flags_are_kept_and_others_annotations_left_alone() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "settings");
    let agent = ns.agent("cursor-agent");
    let guard = Guard::start_with(
        &ns,
        &agent,
        &GuardOptions {
            extra_args: vec![
                "--webhook-timeout-seconds=12".into(),
                "--webhook-configuration-annotation=admissions.enforcer/disabled=true".into(),
                "--webhook-configuration-label=team=platform".into(),
            ],
            ..Default::default()
        },
    );
    let name = guard.webhook_name.clone();
    let get = |kind: &str, path: &str| {
        stdout(&cluster.kubectl(&["get", kind, &name, "-o", &format!("jsonpath={path}")]))
    };
    for kind in [
        "validatingwebhookconfiguration",
        "mutatingwebhookconfiguration",
    ] {
        let timeouts = get(kind, "{.webhooks[*].timeoutSeconds}");
        assert!(
            !timeouts.is_empty() && timeouts.split_whitespace().all(|t| t == "12"),
            "{kind}: timeouts {timeouts}"
        );
        assert_eq!(
            get(
                kind,
                "{.metadata.annotations.admissions\\.enforcer/disabled}"
            ),
            "true",
            "{kind}"
        );
        assert_eq!(get(kind, "{.metadata.labels.team}"), "platform", "{kind}");
        assert_eq!(
            get(kind, "{.metadata.labels.app\\.kubernetes\\.io/managed-by}"),
            "agentguard",
            "{kind}"
        );
    }

    // Someone else's annotation stays; agentguard's own, removed, is put back.
    cluster.kubectl_ok(&[
        "annotate",
        "validatingwebhookconfiguration",
        &name,
        "example.com/audited=yes",
        "admissions.enforcer/disabled-",
    ]);
    wait_until(
        Duration::from_secs(40),
        "agentguard's annotation to be put back",
        || {
            get(
                "validatingwebhookconfiguration",
                "{.metadata.annotations.admissions\\.enforcer/disabled}",
            ) == "true"
        },
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        get(
            "validatingwebhookconfiguration",
            "{.metadata.annotations.example\\.com/audited}"
        ),
        "yes",
        "another writer's annotation was removed"
    );
    // And still judged through it.
    ns.pvc("data", true);
    let out = ns.kubectl_as(&agent, &["delete", "pvc", "data", "--dry-run=server"]);
    assert!(
        stderr(&out).contains("agentguard: DENIED"),
        "{}",
        stderr(&out)
    );
}

/// `--webhook-exclude-namespaces` (the chart's `webhook.excludeNamespaces`): a namespace named
/// there is not judged, and no one can bring another namespace under that name, because the
/// API server keeps the `kubernetes.io/metadata.name` label equal to the name.
#[test]
fn excluded_namespaces_are_not_judged_and_a_name_cannot_be_borrowed() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "judged");
    let other = TestNamespace::create(&cluster, "excluded");
    let agent = ns.agent("cursor-agent");
    // The other namespace is in this guard's scope (its test label), then excluded by name.
    cluster.kubectl_ok(&[
        "label",
        "namespace",
        &other.name,
        &format!("agentguard-e2e={}", ns.name),
    ]);
    other.kubectl_ok(&[
        "create",
        "rolebinding",
        "cursor-agent-edit",
        "--clusterrole=edit",
        &format!("--serviceaccount={}:cursor-agent", ns.name),
    ]);
    let _guard = Guard::start_with(
        &ns,
        &agent,
        &GuardOptions {
            extra_args: vec![format!("--webhook-exclude-namespaces={}", other.name)],
            ..Default::default()
        },
    );
    ns.pvc("data", true);
    other.pvc("data", true);
    let delete = |at: &TestNamespace<'_>| {
        at.kubectl_as(&agent, &["delete", "pvc", "data", "--dry-run=server"])
    };
    let refused = delete(&ns);
    assert!(
        stderr(&refused).contains("agentguard: DENIED"),
        "{}",
        stderr(&refused)
    );
    let excluded = delete(&other);
    assert!(
        excluded.status.success(),
        "the excluded namespace was judged: {}",
        stderr(&excluded)
    );
    // Even the cluster admin cannot give the judged namespace the excluded one's name label.
    let _ = cluster.kubectl(&[
        "label",
        "namespace",
        &ns.name,
        &format!("kubernetes.io/metadata.name={}", other.name),
        "--overwrite",
    ]);
    assert_eq!(
        cluster.kubectl_ok(&[
            "get",
            "namespace",
            &ns.name,
            "-o",
            "jsonpath={.metadata.labels.kubernetes\\.io/metadata\\.name}",
        ]),
        ns.name
    );
    let refused = delete(&ns);
    assert!(
        stderr(&refused).contains("agentguard: DENIED"),
        "{}",
        stderr(&refused)
    );
}
