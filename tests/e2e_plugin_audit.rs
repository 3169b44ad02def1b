//! End-to-end: `kubectl agentguard audit` against the real API server. Every permission it
//! reports is the API server's own SubjectAccessReview answer; these tests plant RBAC and check
//! that audit finds it, names the binding, and exits 3 only for a way around the guard.
//!
//! Other tests run side by side in their own namespaces, and ServiceAccounts labelled
//! `agentguard.dev/agent=true` anywhere are restricted identities too, so every run here is
//! narrowed with `--only <namespace>/*` to this test's identities. No ValidatingWebhookConfiguration
//! named like the chart's is assumed: each run names one of its own (absent, unless the test
//! makes it). Requires `hack/cluster.sh up`; fails (never skips) when the control plane is absent.

mod support;

use std::process::{Command, Output};

use serde_json::Value;
use support::{Cluster, Guard, TestNamespace, stderr, stdout, unique};

/// Runs `kubectl agentguard audit` as the cluster admin.
fn audit(cluster: &Cluster, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kubectl-agentguard"))
        .arg("--kubeconfig")
        .arg(&cluster.kubeconfig)
        .arg("audit")
        .args(args)
        .env_remove("KUBECONFIG")
        .env_remove("AGENTGUARD_NAMESPACE")
        .output()
        .expect("run kubectl-agentguard")
}

/// Audit of the ServiceAccounts of `ns` matching `agents`, with a webhook configuration name of
/// this test's own.
fn audit_ns(ns: &TestNamespace<'_>, agents: &str, extra: &[&str]) -> Output {
    let agents = format!("--agent-service-accounts={}/{agents}", ns.name);
    let only = format!("--only={}/*", ns.name);
    let webhook = format!("--webhook-configuration-name=absent-{}", ns.name);
    let mut args = vec![agents.as_str(), only.as_str(), webhook.as_str()];
    args.extend_from_slice(extra);
    audit(ns.cluster, &args)
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exit code")
}

/// The table row of `identity` whose cells contain every one of `needles`.
fn row<'a>(table: &'a str, identity: &str, needles: &[&str]) -> Option<&'a str> {
    table.lines().find(|l| {
        l.split_whitespace().next() == Some(identity) && needles.iter().all(|n| l.contains(n))
    })
}

fn assert_row(out: &Output, identity: &str, needles: &[&str]) {
    let table = stdout(out);
    assert!(
        row(&table, identity, needles).is_some(),
        "no row of {identity} with {needles:?} in:\n{table}\nstderr: {}",
        stderr(out)
    );
}

/// A ClusterRole and a ClusterRoleBinding of it to the namespace's ServiceAccount `sa`, both
/// deleted when the namespace's test ends. Returns the binding's name.
fn cluster_grant(
    ns: &TestNamespace<'_>,
    sa: &str,
    role: &str,
    rule: Option<(&str, &str)>,
) -> String {
    let binding = unique(&format!("{}-{sa}", ns.name));
    if let Some((verbs, resources)) = rule {
        ns.cluster.kubectl_ok(&[
            "create",
            "clusterrole",
            role,
            &format!("--verb={verbs}"),
            &format!("--resource={resources}"),
        ]);
        ns.owns_cluster_object(&format!("clusterrole/{role}"));
    }
    ns.cluster.kubectl_ok(&[
        "create",
        "clusterrolebinding",
        &binding,
        &format!("--clusterrole={role}"),
        &format!("--serviceaccount={}:{sa}", ns.name),
    ]);
    ns.owns_cluster_object(&format!("clusterrolebinding/{binding}"));
    binding
}

#[test]
fn an_agent_with_edit_in_its_namespace_is_reported_and_passes() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "audit-clean");
    ns.agent("bot");
    ns.pvc("data", true);
    ns.pvc("scratch", false);

    let out = audit_ns(&ns, "*", &[]);
    assert_eq!(code(&out), 0, "{}\n{}", stdout(&out), stderr(&out));
    let identity = format!("sa:{}/bot", ns.name);
    assert_row(
        &out,
        &identity,
        &[
            " info ",
            "delete persistentvolumeclaims (1 protected)",
            &ns.name,
            "RoleBinding/bot-edit -> ClusterRole/edit",
        ],
    );
    assert!(
        !stdout(&out)
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("bypass")),
        "no bypass expected:\n{}",
        stdout(&out)
    );
    let summary = stdout(&out).lines().last().unwrap_or_default().to_owned();
    assert!(summary.contains("0 bypass findings"), "{summary}");
    assert!(
        stderr(&out).contains(&format!("absent-{}", ns.name)),
        "a missing webhook configuration is pointed out: {}",
        stderr(&out)
    );
}

#[test]
fn json_output_is_a_structured_report() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "audit-json");
    ns.agent("bot");
    ns.pvc("data", true);

    let out = audit_ns(&ns, "bot", &["-o", "json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let report: Value = serde_json::from_str(&stdout(&out)).expect("audit -o json is JSON");
    let identity = format!("sa:{}/bot", ns.name);
    assert_eq!(report["agentDefinition"]["source"], "flags");
    assert_eq!(report["webhookConfiguration"]["found"], false);
    let identities: Vec<&str> = report["identities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["identity"].as_str().unwrap())
        .collect();
    assert_eq!(identities, [identity.as_str()]);
    let findings = report["findings"].as_array().unwrap();
    let delete = findings
        .iter()
        .find(|f| f["identity"] == identity.as_str() && f["check"] == "delete-protected")
        .unwrap_or_else(|| panic!("no delete-protected finding in {report:#}"));
    assert_eq!(delete["severity"], "info");
    assert_eq!(delete["namespace"], ns.name.as_str());
    assert_eq!(delete["allowed"][0]["verb"], "delete");
    assert_eq!(delete["allowed"][0]["resource"], "persistentvolumeclaims");
    assert_eq!(
        delete["grantedBy"][0]["binding"],
        serde_json::json!({"kind": "RoleBinding", "namespace": ns.name, "name": "bot-edit"})
    );
    assert_eq!(
        delete["grantedBy"][0]["role"],
        serde_json::json!({"kind": "ClusterRole", "name": "edit"})
    );
    assert_eq!(report["summary"]["bypass"], 0);
    assert!(report["summary"]["info"].as_u64().unwrap() >= 1);

    let yaml = audit_ns(&ns, "bot", &["-o", "yaml"]);
    assert_eq!(code(&yaml), 0, "{}", stderr(&yaml));
    assert!(
        stdout(&yaml).contains("check: delete-protected"),
        "{}",
        stdout(&yaml)
    );
}

#[test]
fn an_over_broad_cluster_role_binding_is_a_bypass_named_by_its_binding() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "audit-broad");
    ns.agent("bot");
    ns.agent("root");
    ns.pvc("data", true);
    let role = unique(&format!("{}-hooks", ns.name));
    let hooks = cluster_grant(
        &ns,
        "bot",
        &role,
        Some(("delete", "validatingwebhookconfigurations")),
    );
    let admin = cluster_grant(&ns, "root", "cluster-admin", None);

    let out = audit_ns(&ns, "*", &[]);
    assert_eq!(code(&out), 3, "{}\n{}", stdout(&out), stderr(&out));
    assert_row(
        &out,
        &format!("sa:{}/bot", ns.name),
        &[
            " bypass ",
            &format!("delete validatingwebhookconfigurations/absent-{}", ns.name),
            "(cluster)",
            &format!("ClusterRoleBinding/{hooks} -> ClusterRole/{role}"),
        ],
    );
    let root = format!("sa:{}/root", ns.name);
    let admin_grant = format!("ClusterRoleBinding/{admin} -> ClusterRole/cluster-admin");
    for can in [
        "delete,update,patch validatingwebhookconfigurations/",
        "create,update,patch mutatingwebhookconfigurations",
        "create,update,patch mutatingadmissionpolicies",
        "impersonate users,groups,serviceaccounts",
        "escalate,bind clusterroles",
        "create,update,patch clusterrolebindings",
        "act as kube-system/* via impersonate,token,pods",
    ] {
        assert_row(&out, &root, &[" bypass ", can, &admin_grant]);
    }
    // what the webhook guards stays info, even for cluster-admin
    assert_row(
        &out,
        &root,
        &[
            " info ",
            "delete,update,patch customresourcedefinitions/protectedresources.agentguard.dev",
            &admin_grant,
        ],
    );
    assert_row(
        &out,
        &root,
        &[" info ", "delete persistentvolumeclaims", &admin_grant],
    );
    assert_row(
        &out,
        &root,
        &[" info ", &format!("delete namespaces/{}", ns.name)],
    );
    assert!(
        stdout(&out)
            .lines()
            .last()
            .unwrap_or_default()
            .contains("can be bypassed"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn an_impersonation_grant_is_a_bypass() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "audit-imp");
    ns.agent("bot");
    let role = unique(&format!("{}-imp", ns.name));
    let binding = cluster_grant(&ns, "bot", &role, Some(("impersonate", "users")));

    let out = audit_ns(&ns, "bot", &[]);
    assert_eq!(code(&out), 3, "{}\n{}", stdout(&out), stderr(&out));
    assert_row(
        &out,
        &format!("sa:{}/bot", ns.name),
        &[
            " bypass ",
            "impersonate users",
            &format!("ClusterRoleBinding/{binding} -> ClusterRole/{role}"),
        ],
    );
}

#[test]
fn acting_as_an_unrestricted_service_account_that_can_delete_is_a_bypass() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "audit-deputy");
    // `edit` lets the agent impersonate, mint tokens for and run pods as any ServiceAccount of
    // its namespace; the migrator is one, not restricted, and may delete the claim.
    ns.agent("bot");
    ns.agent("migrator");
    ns.pvc("data", true);

    let out = audit_ns(&ns, "bot", &[]);
    assert_eq!(code(&out), 3, "{}\n{}", stdout(&out), stderr(&out));
    assert_row(
        &out,
        &format!("sa:{}/bot", ns.name),
        &[
            " bypass ",
            &format!("act as {}/migrator via impersonate,token,pods", ns.name),
            "RoleBinding/bot-edit -> ClusterRole/edit",
        ],
    );
    assert!(
        row(&stdout(&out), &format!("sa:{}/migrator", ns.name), &[]).is_none(),
        "the migrator is not an agent:\n{}",
        stdout(&out)
    );

    // restricting the whole namespace closes that way
    let out = audit_ns(&ns, "*", &[]);
    assert_eq!(code(&out), 0, "{}\n{}", stdout(&out), stderr(&out));
}

#[test]
fn protected_objects_the_webhook_does_not_judge_are_a_bypass() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "audit-unjudged");
    ns.agent("bot");
    ns.pvc("data", true);
    // A configuration whose namespace selector leaves this namespace out (and takes no other):
    // the API server never calls it, so nothing stands between the agent and the claim.
    let name = unique(&format!("{}-vwc", ns.name));
    cluster.apply(&format!(
        r#"apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata:
  name: {name}
webhooks:
  - name: validate.agentguard.dev
    admissionReviewVersions: [v1]
    sideEffects: None
    failurePolicy: Ignore
    timeoutSeconds: 1
    clientConfig:
      url: https://127.0.0.1:9/validate
    namespaceSelector:
      matchLabels:
        agentguard-audit-e2e: {name}
    rules:
      - operations: [DELETE]
        apiGroups: [""]
        apiVersions: ["*"]
        resources: [persistentvolumeclaims, namespaces]
"#
    ));
    ns.owns_cluster_object(&format!("validatingwebhookconfiguration/{name}"));

    let agents = format!("--agent-service-accounts={}/bot", ns.name);
    let only = format!("--only={}/*", ns.name);
    let webhook = format!("--webhook-configuration-name={name}");
    let out = audit(&cluster, &[&agents, &only, &webhook]);
    assert_eq!(code(&out), 3, "{}\n{}", stdout(&out), stderr(&out));
    assert_row(
        &out,
        &format!("sa:{}/bot", ns.name),
        &[
            " bypass ",
            "delete persistentvolumeclaims (1 protected; not judged by the webhook)",
            "RoleBinding/bot-edit -> ClusterRole/edit",
        ],
    );
    assert!(
        !stderr(&out).contains("not found"),
        "the configuration exists: {}",
        stderr(&out)
    );

    // The configuration agentguard writes itself (the one users get) does judge them.
    let guard = Guard::start(&ns, &format!("system:serviceaccount:{}:bot", ns.name));
    let webhook = format!("--webhook-configuration-name={}", guard.webhook_name);
    let out = audit(&cluster, &[&agents, &only, &webhook]);
    assert!(
        !stdout(&out).contains("not judged by the webhook"),
        "agentguard's own configuration judges the claim:\n{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(code(&out), 0, "{}\n{}", stdout(&out), stderr(&out));
}

#[test]
fn agents_are_read_from_agentguards_deployment() {
    let cluster = Cluster::connect();
    let install = TestNamespace::create(&cluster, "audit-install");
    let agents = TestNamespace::create(&cluster, "audit-agents");
    agents.agent("bot-1");
    // not an agent, and bound to nothing: no deputy for bot-1 either
    agents.kubectl_ok(&["create", "serviceaccount", "other-1"]);
    agents.pvc("data", true);
    let webhook = format!("absent-{}", install.name);
    // Shaped like the chart's; it never runs (no kubelet, no replicas).
    cluster.apply(&format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: agentguard
  namespace: {ns}
  labels:
    app.kubernetes.io/name: agentguard
spec:
  replicas: 0
  selector:
    matchLabels:
      app.kubernetes.io/name: agentguard
  template:
    metadata:
      labels:
        app.kubernetes.io/name: agentguard
    spec:
      serviceAccountName: agentguard
      containers:
        - name: agentguard
          image: ghcr.io/agentguard/agentguard:test
          args:
            - run
            - --namespace=$(POD_NAMESPACE)
            - --webhook-configuration-name={webhook}
            - --cert-secret=agentguard-webhook-tls
            - --agent-service-accounts={agents}/bot-*
"#,
        ns = install.name,
        agents = agents.name,
    ));

    let agentguard_namespace = format!("--agentguard-namespace={}", install.name);
    let only = format!("--only={}/*", agents.name);
    let out = audit(&cluster, &[&agentguard_namespace, &only, "-o", "json"]);
    assert_eq!(code(&out), 0, "{}\n{}", stdout(&out), stderr(&out));
    let report: Value = serde_json::from_str(&stdout(&out)).expect("JSON report");
    assert_eq!(
        report["agentDefinition"]["source"],
        format!("Deployment {}/agentguard", install.name)
    );
    assert_eq!(
        report["agentDefinition"]["serviceAccounts"],
        serde_json::json!([format!("{}/bot-*", agents.name)])
    );
    assert_eq!(report["webhookConfiguration"]["name"], webhook.as_str());
    let identities: Vec<&str> = report["identities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["identity"].as_str().unwrap())
        .collect();
    assert_eq!(identities, [format!("sa:{}/bot-1", agents.name)]);
    assert!(
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["identity"] == format!("sa:{}/bot-1", agents.name)
                && f["check"] == "delete-protected"),
        "{report:#}"
    );

    // The same agent with edit in agentguard's own namespace can rewrite the Deployment that
    // says who the agents are, and run pods as agentguard's ServiceAccount.
    install.kubectl_ok(&[
        "create",
        "rolebinding",
        "bot-1-edit",
        "--clusterrole=edit",
        &format!("--serviceaccount={}:bot-1", agents.name),
    ]);
    let out = audit(&cluster, &[&agentguard_namespace, &only]);
    assert_eq!(code(&out), 3, "{}\n{}", stdout(&out), stderr(&out));
    let bot = format!("sa:{}/bot-1", agents.name);
    assert_row(
        &out,
        &bot,
        &[
            " bypass ",
            "delete,update,patch,scale deployments/agentguard",
            &install.name,
            "RoleBinding/bot-1-edit -> ClusterRole/edit",
        ],
    );
    assert_row(
        &out,
        &bot,
        &[" bypass ", "update,patch secrets/agentguard-webhook-tls"],
    );
    assert_row(
        &out,
        &bot,
        &[
            " bypass ",
            &format!(
                "act as {}/agentguard via impersonate,token,pods",
                install.name
            ),
        ],
    );
}

#[test]
fn without_flags_or_a_deployment_audit_fails_clearly() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "audit-none");
    let out = audit(&cluster, &[&format!("--agentguard-namespace={}", ns.name)]);
    assert_eq!(code(&out), 1, "{}\n{}", stdout(&out), stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("no agent definition"), "{err}");
    assert!(err.contains(&ns.name), "{err}");
    assert!(err.contains("--agent-service-accounts"), "{err}");

    let bad = audit(&cluster, &["--agent-service-accounts=ci/[", "--only=x"]);
    assert_eq!(code(&bad), 2, "{}", stderr(&bad));
}

#[test]
fn acting_as_a_service_account_a_policy_names_as_approver_is_a_bypass() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "audit-approver");
    // The release bot may approve (a policy names it); it holds no other right, so it is no
    // deputy. The agent's `edit` lets it mint tokens for, impersonate and run pods as it.
    ns.agent("bot");
    ns.kubectl_ok(&["create", "serviceaccount", "release-bot"]);
    ns.pvc("data", true);
    cluster.apply(&format!(
        "apiVersion: agentguard.dev/v1alpha1\nkind: ProtectedResource\nmetadata:\n  name: orders\n  namespace: {ns}\n\
         spec:\n  targets: [{{apiGroups: [\"\"], kinds: [PersistentVolumeClaim]}}]\n  \
         approval:\n    approvers:\n      usernames: [\"system:serviceaccount:{ns}:release-bot\"]\n",
        ns = ns.name
    ));
    let out = audit_ns(&ns, "bot", &[]);
    assert_eq!(code(&out), 3, "{}\n{}", stdout(&out), stderr(&out));
    assert_row(
        &out,
        &format!("sa:{}/bot", ns.name),
        &[
            " bypass ",
            &format!("act as {}/release-bot via impersonate,token,pods", ns.name),
        ],
    );
}

#[test]
fn changing_what_a_gitops_tool_applies_is_a_bypass() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "audit-gitops");
    ns.agent("bot");
    // A Flux source's revision decides what its Kustomizations prune; admission cannot tie a
    // change to it to protected data, so audit names who may make one.
    let role = unique(&format!("{}-gitops", ns.name));
    cluster.apply(&format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: {role}\nrules:\n  \
         - apiGroups: [source.toolkit.fluxcd.io]\n    resources: [gitrepositories]\n    verbs: [get, patch]\n"
    ));
    ns.owns_cluster_object(&format!("clusterrole/{role}"));
    let binding = cluster_grant(&ns, "bot", &role, None);

    let out = audit_ns(&ns, "bot", &[]);
    assert_eq!(code(&out), 3, "{}\n{}", stdout(&out), stderr(&out));
    assert_row(
        &out,
        &format!("sa:{}/bot", ns.name),
        &[
            " bypass ",
            "patch gitrepositories.source.toolkit.fluxcd.io",
            &format!("ClusterRoleBinding/{binding} -> ClusterRole/{role}"),
        ],
    );
}
