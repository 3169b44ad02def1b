//! The Helm chart against the real helm and kube-apiserver: it lints and renders for several
//! value sets, installs into a namespace enforcing the Pod Security `restricted` profile with no
//! warning, its RBAC is enough for the operator (run out of cluster with a token of the chart's
//! own ServiceAccount), and upgrade and uninstall leave the cluster usable.
//! This binary runs alone (cargo runs test binaries one after another): the chart's default
//! ClusterProtectedResource is cluster-wide.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::{
    CHART, Cluster, Release, TestNamespace, free_port, http_status, stderr, stdout, wait_until,
};

#[test]
fn chart_lints_and_renders_for_several_value_sets() {
    let cluster = Cluster::connect();
    // The optional objects are validated by the real CRDs of their projects.
    cluster.install_third_party_crds();
    let sets: &[&[&str]] = &[
        &[],
        &[
            "--set",
            "certificates.mode=cert-manager",
            "--set",
            "replicas=3",
            "--set",
            "serviceMonitor.enabled=true",
            "--set",
            "serviceMonitor.labels.release=kube-prometheus-stack",
            "--set",
            "prometheusRule.enabled=true",
        ],
        &[
            "--set",
            "certificates.mode=cert-manager",
            "--set",
            "certificates.certManager.issuerRef.name=corp-ca",
            "--set",
            "certificates.certManager.issuerRef.kind=ClusterIssuer",
            "--set",
            "grafanaDashboard.enabled=false",
        ],
        &[
            "--set",
            "webhook.url=https://127.0.0.1:8443/validate",
            "--set",
            "agents.serviceAccounts={ci/*,*/cursor-*}",
            "--set",
            "agents.groups={ai-agents}",
        ],
        &[
            "--set",
            "availabilityMode.enabled=true",
            "--set",
            "agents.serviceAccounts={ci/*,*/cursor-*,ops/deploy.bot}",
            "--set",
            "agents.groups={ai-agents}",
            "--set",
            "agents.usernames={bot-*}",
            "--set",
            "breakGlassGroups={sre}",
        ],
        &[
            "--set",
            "defaultProtection.enabled=false",
            "--set",
            "crds.upgrade=false",
            "--set",
            "podDisruptionBudget.enabled=false",
            "--set",
            "breakGlassGroups={sre}",
            "--set",
            "networkPolicy.enabled=true",
            "--set",
            "networkPolicy.webhook.from[0].ipBlock.cidr=192.0.2.10/32",
            "--set",
            "networkPolicy.metrics.from[0].namespaceSelector.matchLabels.team=monitoring",
        ],
    ];
    for set in sets {
        let mut lint = vec!["lint", CHART, "--strict"];
        lint.extend_from_slice(set);
        let out = cluster.helm(&lint);
        assert!(
            out.status.success(),
            "helm lint {set:?}: {}{}",
            stdout(&out),
            stderr(&out)
        );
        let rendered = render_all(&cluster, set);
        assert!(rendered.contains("kind: Deployment"), "{set:?}");
        let enabled = |value: &str| set.contains(&value);
        for (kind, shown) in [
            ("ServiceMonitor", enabled("serviceMonitor.enabled=true")),
            ("PrometheusRule", enabled("prometheusRule.enabled=true")),
            ("Certificate", enabled("certificates.mode=cert-manager")),
            ("ConfigMap", !enabled("grafanaDashboard.enabled=false")),
            ("NetworkPolicy", enabled("networkPolicy.enabled=true")),
            // The CRD hook (pre-install/pre-upgrade), the only Job.
            ("Job", !enabled("crds.upgrade=false")),
        ] {
            assert_eq!(
                rendered.contains(&format!("\nkind: {kind}\n")),
                shown,
                "{set:?}: {kind}"
            );
        }
        // Only the replicas carry the selector labels (the Service, the PodDisruptionBudget
        // and the NetworkPolicy select them): the CRD hook's Pod never becomes an endpoint.
        for doc in rendered.split("\n---\n") {
            let Ok(object) = serde_saphyr::from_str::<serde_json::Value>(doc) else {
                continue;
            };
            let labels = object.pointer("/spec/template/metadata/labels");
            if object["kind"] == "Job" {
                assert!(
                    labels.is_some_and(|l| l.get("app.kubernetes.io/name").is_none()),
                    "{set:?}: the hook's Pod has the replicas' selector labels: {labels:?}"
                );
            }
        }
        // The preset agent roles ship with every value set here.
        assert!(
            rendered.contains("kind: ClusterRole\nmetadata:\n  name: agentguard-agent-edit\n"),
            "{set:?}: the preset agent roles"
        );
        // Every rendered object is accepted by the real API server (server-side dry run).
        let apply = dry_run_apply(&cluster, &rendered);
        assert!(apply.status.success(), "{set:?}: {}", stderr(&apply));
        let err = stderr(&apply);
        assert!(
            !err.contains("error") && !err.contains("Error"),
            "{set:?}: {err}"
        );
    }
}

#[test]
fn chart_in_url_mode_installs_restricted_upgrades_and_uninstalls() {
    let cluster = Cluster::connect();
    cluster.install_third_party_crds();
    let ns = TestNamespace::create(&cluster, "chart");
    ns.kubectl_ok(&[
        "label",
        "namespace",
        &ns.name,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/warn=restricted",
    ]);
    let apps = TestNamespace::create(&cluster, "chartapps");
    let agent = apps.agent("cursor-agent");
    let (webhook_port, metrics_port) = (free_port(), free_port());
    let config_name = format!("agentguard-{}", ns.name);
    let release = "agentguard";
    let url = format!("https://127.0.0.1:{webhook_port}/validate");
    let agents = format!("agents.serviceAccounts={{{}/cursor-*}}", apps.name);
    let values: Vec<String> = vec![
        "--set".into(),
        format!("webhook.url={url}"),
        "--set".into(),
        format!("webhook.configurationName={config_name}"),
        "--set".into(),
        agents,
        // The CRD hook's Job needs a node; tests/e2e_helm.rs runs it on one.
        "--set".into(),
        "crds.upgrade=false".into(),
    ];
    let mut install = vec![
        "install",
        release,
        CHART,
        "-n",
        ns.name.as_str(),
        "--wait=false",
    ];
    install.extend(values.iter().map(String::as_str));
    let out = cluster.helm(&install);
    let _release = Release {
        cluster: &cluster,
        name: release,
        namespace: ns.name.clone(),
    };
    assert!(out.status.success(), "helm install: {}", stderr(&out));
    assert!(
        !stderr(&out).contains("Warning"),
        "helm install warned: {}",
        stderr(&out)
    );

    // `webhook.url` mode (development, tests): the operator runs out of cluster with the
    // Deployment's arguments and a token of the chart's own ServiceAccount. In cluster, with
    // real Pods, the same RBAC is checked by tests/e2e_helm.rs.
    let token = ns.kubectl_ok(&["create", "token", release, "--duration=1h"]);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = cluster.token_kubeconfig(dir.path(), token.trim());
    let args_json = ns.kubectl_ok(&[
        "get",
        "deployment",
        release,
        "-o",
        "jsonpath={.spec.template.spec.containers[0].args}",
    ]);
    let args: Vec<String> = serde_json::from_str::<Vec<String>>(&args_json)
        .unwrap()
        .into_iter()
        .map(|a| a.replace("$(POD_NAMESPACE)", &ns.name))
        .collect();
    let log = std::fs::File::create(dir.path().join("operator.log")).unwrap();
    let mut operator = Command::new(env!("CARGO_BIN_EXE_agentguard"))
        .args(&args)
        .arg(format!("--webhook-addr=127.0.0.1:{webhook_port}"))
        .arg(format!("--metrics-addr=127.0.0.1:{metrics_port}"))
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAME", "chart-operator")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(dir.path().join("operator.log")).unwrap_or_default();
    wait_until(
        Duration::from_secs(60),
        "the operator to be ready with the chart's RBAC",
        || http_status(metrics_port, "/readyz") == Some(200),
    );
    let vwc = |path: &str| {
        stdout(&cluster.kubectl(&[
            "get",
            "validatingwebhookconfiguration",
            &config_name,
            "-o",
            &format!("jsonpath={path}"),
        ]))
    };
    wait_until(
        Duration::from_secs(30),
        "the operator to fill in the chart's webhook configuration",
        || vwc("{.webhooks[0].clientConfig.url}") == url,
    );
    cluster.wait_cluster_policy_ready("default-volumes", Duration::from_secs(30));
    apps.pvc("data", false);
    wait_until(
        Duration::from_secs(30),
        "the agent's deletion to be denied",
        || {
            stderr(&apps.kubectl_as(&agent, &["delete", "pvc", "data", "--dry-run=server"]))
                .contains("Protected by ClusterProtectedResource default-volumes")
        },
    );
    // PolicyReports are written with the chart's RBAC too.
    wait_until(
        Duration::from_secs(60),
        "the PolicyReport of the claim's namespace",
        || {
            apps.kubectl(&["get", "policyreport", "agentguard"])
                .status
                .success()
        },
    );
    // A write into a namespace another test is deleting is refused as Forbidden too ("being
    // terminated"); that is the namespace's state, not a missing permission.
    let denied: Vec<String> = log()
        .lines()
        .filter(|l| l.to_ascii_lowercase().contains("forbidden"))
        .filter(|l| !l.contains("because it is being terminated"))
        .map(str::to_owned)
        .collect();
    assert!(
        denied.is_empty(),
        "the operator lacked a permission:\n{}",
        denied.join("\n")
    );

    // The built-in roles carry agentguard's kinds: view reads them, edit may ask (file a
    // DeletionRequest), admin keeps the namespace's ProtectedResources.
    for (role, user) in [("view", "viewer"), ("edit", "editor"), ("admin", "nsadmin")] {
        apps.kubectl_ok(&[
            "create",
            "rolebinding",
            &format!("{user}-{role}"),
            &format!("--clusterrole={role}"),
            &format!("--user={user}"),
        ]);
    }
    let can = |user: &str, verb: &str, resource: &str| {
        let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
        let mut args = vec!["auth", "can-i", verb, resource, "--as", user];
        if !subresource.is_empty() {
            args.extend(["--subresource", subresource]);
        }
        stdout(&apps.kubectl(&args)).trim() == "yes"
    };
    wait_until(
        Duration::from_secs(30),
        "the built-in roles to aggregate agentguard's kinds",
        || {
            can("viewer", "list", "protectedresources.agentguard.dev")
                && can("editor", "create", "deletionrequests.agentguard.dev")
                && can("nsadmin", "create", "protectedresources.agentguard.dev")
        },
    );
    assert!(can("viewer", "list", "deletionrequests.agentguard.dev"));
    assert!(!can("viewer", "create", "deletionrequests.agentguard.dev"));
    assert!(!can(
        "editor",
        "delete",
        "protectedresources.agentguard.dev"
    ));
    assert!(can(
        "nsadmin",
        "patch",
        "deletionrequests.agentguard.dev/status"
    ));

    // Upgrade: the webhooks the operator wrote survive helm's three-way merge.
    let mut upgrade = vec![
        "upgrade",
        release,
        CHART,
        "-n",
        ns.name.as_str(),
        "--set",
        "replicas=3",
    ];
    upgrade.extend(values.iter().map(String::as_str));
    let out = cluster.helm(&upgrade);
    assert!(out.status.success(), "helm upgrade: {}", stderr(&out));
    assert_eq!(
        vwc("{.webhooks[0].failurePolicy}"),
        "Fail",
        "upgrade dropped the webhooks"
    );

    // Uninstall while the operator still runs (as its pods would, until helm deletes them): it
    // may re-create the configuration a moment before it loses its RBAC, so the configuration
    // is owned by the chart's ClusterRole and garbage-collected with it.
    let out = cluster.helm(&["uninstall", release, "-n", &ns.name]);
    assert!(
        out.status.success(),
        "helm uninstall: {}{}",
        stdout(&out),
        stderr(&out)
    );
    wait_until(
        Duration::from_secs(60),
        "no webhook configuration left behind",
        || {
            !cluster
                .kubectl(&["get", "validatingwebhookconfiguration", &config_name])
                .status
                .success()
        },
    );
    operator.kill().unwrap();
    operator.wait().unwrap();
    let out = apps.kubectl_as(&agent, &["delete", "pvc", "data", "--wait=false"]);
    assert!(
        out.status.success(),
        "the cluster is not usable after uninstall: {}",
        stderr(&out)
    );
}

#[test]
fn bad_values_fail_with_a_readable_error() {
    let cluster = Cluster::connect();
    let cases = [
        ("replicas=abc", "at '/replicas': got string, want integer"),
        (
            "certificates.mode=vault",
            "at '/certificates/mode': value must be one of 'self', 'cert-manager'",
        ),
        (
            "agents.serviceAccounts={cursor}",
            "at '/agents/serviceAccounts/0': 'cursor' does not match pattern",
        ),
        ("webhook.url=http://insecure", "at '/webhook/url'"),
        (
            "defaultProtection.maxTTL=1d",
            "at '/defaultProtection/maxTTL'",
        ),
        (
            "defaultProtection.mode=Block",
            "at '/defaultProtection/mode': value must be one of 'Enforce', 'Warn', 'Audit'",
        ),
        ("replcias=3", "additional properties 'replcias' not allowed"),
        (
            "agentCredentials.agents[0].name=Cursor,agentCredentials.agents[0].namespaces={dev}",
            "at '/agentCredentials/agents/0/name': 'Cursor' does not match pattern",
        ),
        (
            "agentCredentials.agents[0].name=cursor",
            "at '/agentCredentials/agents/0': missing property 'namespaces'",
        ),
        (
            "agentCredentials.agents[0].name=cursor,agentCredentials.agents[0].namespaces={kube-system}",
            "refusing to bind an agent in namespace kube-system",
        ),
        (
            "agentCredentials.agents[0].name=cursor,agentCredentials.agents[0].namespaces={agentguard-agents}",
            "refusing to bind an agent in namespace agentguard-agents",
        ),
    ];
    for (set, needle) in cases {
        let out = template_with(&cluster, set);
        assert!(!out.status.success(), "{set} was accepted");
        assert!(stderr(&out).contains(needle), "{set}: {}", stderr(&out));
    }
}

/// One rendered template of the chart, parsed.
/// `helm template` with one `--set` value: whether the chart takes it, and what it says.
fn template_with(cluster: &Cluster, value: &str) -> std::process::Output {
    cluster.helm(&[
        "template",
        "agentguard",
        CHART,
        "--kube-version",
        "1.36.3",
        "--set",
        value,
    ])
}

/// Every template of the chart rendered for namespace `default` with `set`. The `helm test`
/// objects are left out: their Pod names a ServiceAccount helm creates only for the test (they
/// run for real in tests/e2e_helm.rs).
fn render_all(cluster: &Cluster, set: &[&str]) -> String {
    let mut args = vec![
        "template",
        "agentguard",
        CHART,
        "-n",
        "default",
        "--kube-version",
        "1.36.3",
        "--set",
        "webhook.configurationName=agentguard-render-check",
        "--skip-tests",
    ];
    args.extend_from_slice(set);
    let out = cluster.helm(&args);
    assert!(
        out.status.success(),
        "helm template {set:?}: {}",
        stderr(&out)
    );
    stdout(&out)
}

/// Server-side apply as a dry run, each object in the namespace it names: valid whether or not
/// the objects exist already.
fn dry_run_apply(cluster: &Cluster, rendered: &str) -> std::process::Output {
    cluster.kubectl_stdin(
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--dry-run=server",
            "-f",
            "-",
        ],
        rendered,
    )
}

fn render_one(cluster: &Cluster, template: &str, set: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "template",
        "agentguard",
        CHART,
        "-n",
        "monitoring",
        "--kube-version",
        "1.36.3",
        "--show-only",
        template,
    ];
    args.extend_from_slice(set);
    let out = cluster.helm(&args);
    assert!(out.status.success(), "helm template: {}", stderr(&out));
    serde_saphyr::from_str(&stdout(&out)).expect("one YAML document")
}

#[test]
fn chart_ships_the_dashboard_and_alerts_verbatim() {
    let cluster = Cluster::connect();
    let chart = std::path::Path::new(CHART);

    let cm = render_one(&cluster, "templates/dashboard.yaml", &[]);
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let shipped: serde_json::Value =
        serde_json::from_str(cm["data"]["agentguard.json"].as_str().unwrap()).unwrap();
    let file: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(chart.join("dashboards/agentguard.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        shipped, file,
        "the ConfigMap differs from dashboards/agentguard.json"
    );

    let rule_default = render_one(
        &cluster,
        "templates/prometheusrule.yaml",
        &["--set", "prometheusRule.enabled=true"],
    );
    let file: serde_json::Value = serde_saphyr::from_str(
        &std::fs::read_to_string(chart.join("rules/agentguard.rules.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        rule_default["spec"], file,
        "the PrometheusRule differs from rules/agentguard.rules.yaml"
    );
    // One value changes one thing: how long a DeletionRequest may wait.
    let waiting = render_one(
        &cluster,
        "templates/prometheusrule.yaml",
        &[
            "--set",
            "prometheusRule.enabled=true",
            "--set",
            "prometheusRule.requestWaitingFor=2h",
        ],
    );
    let rule = |spec: &serde_json::Value| {
        spec["spec"]["groups"][0]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["alert"] == "AgentguardDeletionRequestWaiting")
            .cloned()
            .expect("the request alert")
    };
    assert_eq!(rule(&waiting)["for"], "2h");
    assert_eq!(rule(&rule_default)["for"], "30m");
    // Prometheus's own templating survives Helm untouched.
    assert!(
        rule_default.to_string().contains("{{ $labels."),
        "alert annotations lost their $labels templates"
    );

    let monitor = render_one(
        &cluster,
        "templates/servicemonitor.yaml",
        &["--set", "serviceMonitor.enabled=true"],
    );
    assert_eq!(monitor["spec"]["jobLabel"], "app.kubernetes.io/name");
    assert_eq!(monitor["spec"]["endpoints"][0]["honorLabels"], true);
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
}

/// Agents declared in values: a labelled ServiceAccount each in the agents namespace and one
/// RoleBinding per namespace named, to the preset or named ClusterRole; the rendering is accepted
/// by the API server (dry run; kube-node-lease and kube-public stand in for the agents' and the
/// working namespace, as every cluster has them), and the preset roles can be left to another
/// release.
#[test]
fn declared_agents_render_as_labelled_service_accounts_and_role_bindings() {
    let cluster = Cluster::connect();
    let set = [
        "--set",
        "agentCredentials.installRoles=false",
        "--set",
        "agentCredentials.namespace=kube-node-lease",
        "--set",
        "agentCredentials.createNamespace=false",
        "--set",
        "agentCredentials.agents[0].name=render-check",
        "--set",
        "agentCredentials.agents[0].namespaces={kube-public}",
        "--set",
        "agentCredentials.agents[1].name=render-view",
        "--set",
        "agentCredentials.agents[1].namespaces={kube-public}",
        "--set",
        "agentCredentials.agents[1].role=view",
    ];
    let mut lint = vec!["lint", CHART, "--strict"];
    lint.extend_from_slice(&set);
    let out = cluster.helm(&lint);
    assert!(
        out.status.success(),
        "helm lint: {}{}",
        stdout(&out),
        stderr(&out)
    );
    let mut template = vec![
        "template",
        "agentguard",
        CHART,
        "-n",
        "agentguard",
        "--kube-version",
        "1.36.3",
    ];
    template.extend_from_slice(&set);
    let out = cluster.helm(&template);
    assert!(out.status.success(), "helm template: {}", stderr(&out));
    let rendered = stdout(&out);
    assert!(
        !rendered.contains("name: agentguard-agent-edit\n  labels"),
        "roles rendered"
    );
    assert!(!rendered.contains("\nkind: Namespace\n"));
    for needle in [
        "kind: ServiceAccount\nmetadata:\n  name: render-check\n  namespace: kube-node-lease\n",
        "    agentguard.dev/agent: \"true\"\n  annotations:\n    agentguard.dev/agent-namespaces: \"kube-public\"\n",
        "kind: RoleBinding\nmetadata:\n  name: agentguard-agent-render-check\n  namespace: kube-public\n",
        "    agentguard.dev/agent-name: render-check\n    agentguard.dev/agent-namespace: kube-node-lease\n",
        "  name: agentguard-agent-edit\nsubjects:\n  - kind: ServiceAccount\n    name: render-check\n    namespace: kube-node-lease\n",
        "  name: agentguard-agent-view\nsubjects:\n  - kind: ServiceAccount\n    name: render-view\n    namespace: kube-node-lease\n",
    ] {
        assert!(rendered.contains(needle), "no {needle:?} in:\n{rendered}");
    }
    let agents_only: Vec<&str> = rendered
        .split("\n---\n")
        .filter(|doc| doc.contains("# Source: agentguard/templates/agents.yaml"))
        .collect();
    assert_eq!(
        agents_only.len(),
        4,
        "two ServiceAccounts, two RoleBindings"
    );
    let apply = cluster.kubectl_stdin(
        &["apply", "--server-side", "--dry-run=server", "-f", "-"],
        &agents_only.join("\n---\n"),
    );
    assert!(apply.status.success(), "{}", stderr(&apply));
}

/// The preset agent roles (`templates/agent-roles.yaml`) grant no way around the guard: no
/// wildcard, nothing of RBAC, Secrets, tokens, impersonation, exec, or cluster-scoped kinds; the
/// view role only reads. (`tests/e2e_agent_credentials.rs` checks them against the API server.)
#[test]
fn agent_roles_leave_out_every_way_around_the_guard() {
    let cluster = Cluster::connect();
    let out = cluster.helm(&[
        "template",
        "agentguard",
        CHART,
        "--kube-version",
        "1.36.3",
        "--show-only",
        "templates/agent-roles.yaml",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let roles: Vec<serde_json::Value> = stdout(&out)
        .split("\n---\n")
        .map(|doc| serde_saphyr::from_str(doc).expect("one YAML document"))
        .collect();
    let name = |r: &serde_json::Value| r["metadata"]["name"].as_str().unwrap().to_owned();
    assert_eq!(
        roles.iter().map(name).collect::<Vec<_>>(),
        ["agentguard-agent-edit", "agentguard-agent-view"]
    );
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default()
    };
    let never = [
        "secrets",
        "serviceaccounts/token",
        "pods/exec",
        "pods/attach",
        "pods/portforward",
        "pods/ephemeralcontainers",
        "pods/proxy",
        "services/proxy",
        "nodes",
        "namespaces",
        "persistentvolumes",
        "customresourcedefinitions",
        "validatingwebhookconfigurations",
        "mutatingwebhookconfigurations",
        "validatingadmissionpolicies",
        "clusterprotectedresources",
        "certificatesigningrequests",
    ];
    let read = ["get", "list", "watch"];
    for role in &roles {
        let role_name = name(role);
        for rule in role["rules"].as_array().unwrap() {
            let (groups, resources, verbs) = (
                strings(&rule["apiGroups"]),
                strings(&rule["resources"]),
                strings(&rule["verbs"]),
            );
            let shown = format!("{role_name}: {rule}");
            assert!(rule.get("nonResourceURLs").is_none(), "{shown}");
            assert!(
                !groups
                    .iter()
                    .chain(&resources)
                    .chain(&verbs)
                    .any(|s| s.contains('*')),
                "wildcard in {shown}"
            );
            assert!(
                !groups.iter().any(|g| g == "rbac.authorization.k8s.io"
                    || g == "authentication.k8s.io"
                    || g == "certificates.k8s.io"),
                "{shown}"
            );
            assert!(
                !verbs
                    .iter()
                    .any(|v| ["impersonate", "escalate", "bind", "approve"].contains(&v.as_str())),
                "{shown}"
            );
            for r in &resources {
                assert!(!never.contains(&r.as_str()), "{r} in {shown}");
            }
            let writes = verbs.iter().any(|v| !read.contains(&v.as_str()));
            if role_name == "agentguard-agent-view" {
                assert!(!writes, "the view role writes: {shown}");
            }
            // Read only even in edit: identities, network boundaries, policies; snapshots are
            // taken, never deleted.
            for read_only in ["serviceaccounts", "networkpolicies", "protectedresources"] {
                if resources.iter().any(|r| r == read_only) {
                    assert!(!writes, "{read_only} written in {shown}");
                }
            }
            if resources.iter().any(|r| r == "volumesnapshots") {
                assert!(!verbs.iter().any(|v| v.starts_with("delete")), "{shown}");
            }
        }
    }
}

/// The server-side dry run above is a real check: the third-party CRDs' schemas refuse a
/// misspelled field, so a template mistake cannot pass as valid.
#[test]
fn third_party_crds_refuse_a_misspelled_field() {
    let cluster = Cluster::connect();
    cluster.install_third_party_crds();
    for (template, set, good, bad) in [
        (
            "templates/servicemonitor.yaml",
            "serviceMonitor.enabled=true",
            "honorLabels:",
            "honourLabels:",
        ),
        (
            "templates/certificate.yaml",
            "certificates.mode=cert-manager",
            "renewBefore:",
            "renewBeforeX:",
        ),
    ] {
        let out = cluster.helm(&[
            "template",
            "agentguard",
            CHART,
            "-n",
            "default",
            "--kube-version",
            "1.36.3",
            "--show-only",
            template,
            "--set",
            set,
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        let rendered = stdout(&out);
        assert!(rendered.contains(good), "{template}: no {good}");
        let apply = |yaml: &str| {
            cluster.kubectl_stdin(
                &[
                    "apply",
                    "--server-side",
                    "--dry-run=server",
                    "-n",
                    "default",
                    "-f",
                    "-",
                ],
                yaml,
            )
        };
        let ok = apply(&rendered);
        assert!(ok.status.success(), "{template}: {}", stderr(&ok));
        let refused = apply(&rendered.replacen(good, bad, 1));
        assert!(!refused.status.success(), "{template}: {bad} was accepted");
        assert!(
            stderr(&refused).contains(bad.trim_end_matches(':')),
            "{template}: {}",
            stderr(&refused)
        );
    }
}

/// The knobs a production cluster needs (issue 21): scheduling, pod metadata, extra arguments
/// and environment, an image from a registry of one's own pinned by digest, pull secrets, a
/// rollout that keeps every replica answering, and a PodDisruptionBudget only where it cannot
/// block a node drain. Each rendering is also accepted by the real API server (dry run), and
/// the chart still takes `global` (as a subchart) while refusing unknown values.
#[test]
fn production_values_render_and_the_disruption_budget_never_blocks_a_drain() {
    let cluster = Cluster::connect();
    cluster.install_third_party_crds();
    let digest = format!("sha256:{}", "ab".repeat(32));
    let set: Vec<String> = [
        "image.registry=registry.example.com:5000",
        &format!("image.digest={digest}"),
        "imagePullSecrets[0].name=regcred",
        "priorityClassName=system-cluster-critical",
        "nodeSelector.role=infra",
        "tolerations[0].key=infra",
        "tolerations[0].operator=Exists",
        "topologySpreadConstraints[0].maxSkew=1",
        "topologySpreadConstraints[0].topologyKey=topology.kubernetes.io/zone",
        "topologySpreadConstraints[0].whenUnsatisfiable=ScheduleAnyway",
        "topologySpreadConstraints[0].labelSelector.matchLabels.app\\.kubernetes\\.io/name=agentguard",
        "podAnnotations.example\\.com/owner=platform",
        "podLabels.team=platform",
        "podLabels.app\\.kubernetes\\.io/name=hijack",
        "extraArgs[0]=--max-staleness=2m",
        "extraEnv[0].name=RUST_BACKTRACE",
        "minReadySeconds=5",
        "terminationGracePeriodSeconds=45",
        "global.imageRegistry=ignored.example.com",
        "webhook.timeoutSeconds=12",
        "webhook.configurationLabels.team=platform",
        "serviceMonitor.enabled=true",
        "serviceMonitor.namespace=kube-public",
        "serviceMonitor.relabelings[0].targetLabel=cluster",
        "serviceMonitor.relabelings[0].replacement=prod-eu",
        "serviceMonitor.metricRelabelings[0].action=labeldrop",
        "serviceMonitor.metricRelabelings[0].regex=le_bucket",
    ]
    .iter()
    .flat_map(|s| ["--set".to_owned(), s.to_string()])
    .chain([
        "--set-string".to_owned(),
        "extraEnv[0].value=1".to_owned(),
        "--set-string".to_owned(),
        "webhook.configurationAnnotations.admissions\\.enforcer/disabled=true".to_owned(),
    ])
    .collect();
    let set: Vec<&str> = set.iter().map(String::as_str).collect();
    let deployment = render_one(&cluster, "templates/deployment.yaml", &set);
    let pod = &deployment["spec"]["template"];
    let container = &pod["spec"]["containers"][0];
    assert_eq!(
        container["image"],
        format!("registry.example.com:5000/agentguard/agentguard@{digest}")
    );
    assert_eq!(pod["spec"]["imagePullSecrets"][0]["name"], "regcred");
    assert_eq!(pod["spec"]["priorityClassName"], "system-cluster-critical");
    assert_eq!(pod["spec"]["nodeSelector"]["role"], "infra");
    assert_eq!(pod["spec"]["tolerations"][0]["key"], "infra");
    assert_eq!(
        pod["spec"]["topologySpreadConstraints"][0]["topologyKey"],
        "topology.kubernetes.io/zone"
    );
    assert_eq!(
        pod["metadata"]["annotations"]["example.com/owner"],
        "platform"
    );
    assert_eq!(pod["metadata"]["labels"]["team"], "platform");
    // The selector labels stay the chart's: a pod label cannot move pods out of the Service.
    assert_eq!(
        pod["metadata"]["labels"]["app.kubernetes.io/name"],
        "agentguard"
    );
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args.last(), Some(&"--max-staleness=2m"), "{args:?}");
    for arg in [
        "--webhook-timeout-seconds=12",
        "--webhook-configuration-annotation=admissions.enforcer/disabled=true",
        "--webhook-configuration-label=team=platform",
    ] {
        assert!(args.contains(&arg), "{arg} not in {args:?}");
    }
    // The ServiceMonitor where Prometheus looks, relabelled, still scraping the release's
    // Service as job "agentguard".
    let monitor = render_one(&cluster, "templates/servicemonitor.yaml", &set);
    assert_eq!(monitor["metadata"]["namespace"], "kube-public");
    assert_eq!(
        monitor["spec"]["namespaceSelector"]["matchNames"][0],
        "monitoring"
    );
    assert_eq!(monitor["spec"]["jobLabel"], "app.kubernetes.io/name");
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["relabelings"][0]["targetLabel"], "cluster");
    assert_eq!(endpoint["metricRelabelings"][0]["action"], "labeldrop");

    // Helm creates the configurations with them too (AKS's enforcer acts on creation).
    let docs = {
        let mut args = vec![
            "template",
            "agentguard",
            CHART,
            "--kube-version",
            "1.36.3",
            "--show-only",
            "templates/webhook-configuration.yaml",
        ];
        args.extend_from_slice(&set);
        stdout(&cluster.helm(&args))
    };
    assert_eq!(
        docs.matches("admissions.enforcer/disabled: \"true\"")
            .count(),
        2,
        "{docs}"
    );
    assert_eq!(docs.matches("team: platform").count(), 2, "{docs}");
    assert!(
        container["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "RUST_BACKTRACE" && e["value"] == "1")
    );
    assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], 45);
    assert_eq!(deployment["spec"]["minReadySeconds"], 5);
    // The default rollout starts a new replica before stopping an old one.
    let defaults = render_one(&cluster, "templates/deployment.yaml", &[]);
    assert_eq!(
        defaults["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        0
    );
    assert_eq!(
        defaults["spec"]["template"]["spec"]["containers"][0]["image"],
        format!(
            "ghcr.io/agentguard/agentguard:{}",
            env!("CARGO_PKG_VERSION")
        )
    );
    assert!(
        defaults["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"].is_object(),
        "the default anti-affinity"
    );

    // The whole rendering is valid for the API server.
    let apply = dry_run_apply(&cluster, &render_all(&cluster, &set));
    assert!(apply.status.success(), "{}", stderr(&apply));

    // The PodDisruptionBudget: rendered only where it leaves a drain possible.
    let pdb = |set: &[&str]| -> Option<serde_json::Value> {
        let mut args = vec![
            "template",
            "agentguard",
            CHART,
            "--kube-version",
            "1.36.3",
            "--show-only",
            "templates/pdb.yaml",
        ];
        args.extend_from_slice(set);
        let out = cluster.helm(&args);
        if !out.status.success() {
            assert!(
                stderr(&out).contains("could not find template"),
                "helm template: {}",
                stderr(&out)
            );
            return None;
        }
        Some(serde_saphyr::from_str(&stdout(&out)).unwrap())
    };
    let spec = pdb(&[]).expect("two replicas: a PDB")["spec"].clone();
    assert_eq!(spec["minAvailable"], 1);
    assert_eq!(spec["unhealthyPodEvictionPolicy"], "AlwaysAllow");
    assert!(
        pdb(&["--set", "replicas=1"]).is_none(),
        "one replica, minAvailable 1"
    );
    assert!(
        pdb(&["--set", "podDisruptionBudget.minAvailable=2"]).is_none(),
        "minAvailable equal to replicas"
    );
    let spec = pdb(&[
        "--set",
        "replicas=1",
        "--set",
        "podDisruptionBudget.maxUnavailable=1",
    ])
    .expect("maxUnavailable never blocks")["spec"]
        .clone();
    assert_eq!(spec["maxUnavailable"], 1);
    assert!(spec.get("minAvailable").is_none());
    assert_eq!(
        pdb(&[
            "--set",
            "replicas=3",
            "--set",
            "podDisruptionBudget.minAvailable=50%"
        ])
        .unwrap()["spec"]["minAvailable"],
        "50%"
    );

    // Still strict: a misspelled value is refused, `global` is not, and an environment value
    // that is not a string is refused by helm rather than by the API server.
    for (value, ok) in [
        ("global.anything=1", true),
        ("nodeSelecter.role=infra", false),
        ("extraEnv[0].name=N,extraEnv[0].value=1", false),
    ] {
        let out = template_with(&cluster, value);
        assert_eq!(out.status.success(), ok, "{value}: {}", stderr(&out));
    }
}
