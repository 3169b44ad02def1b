//! End-to-end: availability mode. The webhook's failurePolicy is Ignore, and the chart's
//! ValidatingAdmissionPolicy keeps the simplest rules inside the real API server: with
//! agentguard stopped, an agent still cannot delete an annotated object without an approval,
//! nor touch agentguard.dev/* metadata. What it cannot hold without the webhook (an approval's
//! expiry, ProtectedResource policies) is shown to go through, as the README documents.
//!
//! The policy is cluster-wide; each test installs the chart's rendering under its own name,
//! narrowed to its namespace, and removes it when it ends, so tests run side by side.
//! Requires `hack/cluster.sh up`; fails (never skips) when the control plane is absent.

mod support;

use std::process::Output;
use std::time::Duration;

use agentguard::policy::{AgentDefinition, AgentMatcher};
use support::{
    CHART, Cluster, Guard, GuardOptions, TestNamespace, in_secs, stderr, stdout, wait_until,
};

const TEMPLATE: &str = "templates/availability-policy.yaml";
const ADMIN: &str = "agentguard-admin";

/// `helm template` of the chart (release `agentguard` in namespace `agentguard`).
fn render(cluster: &Cluster, show_only: &str, sets: &[String]) -> Output {
    let mut args: Vec<&str> = vec![
        "template",
        "agentguard",
        CHART,
        "-n",
        "agentguard",
        "--kube-version",
        "1.36.3",
        "--show-only",
        show_only,
    ];
    for set in sets {
        args.extend(["--set", set.as_str()]);
    }
    cluster.helm(&args)
}

/// The chart's ValidatingAdmissionPolicy and binding, installed for one test under the name
/// `agentguard-availability-<namespace>` and narrowed to that namespace; deleted on drop.
struct AvailabilityPolicy<'c> {
    cluster: &'c Cluster,
    name: String,
}

impl<'c> AvailabilityPolicy<'c> {
    /// Renders the policy with `availabilityMode.enabled=true`, agents `<namespace>/*` unless
    /// `sets` names others, applies it, and waits until the API server enforces it: `probe`
    /// (kubectl impersonation flags of an agent) is refused a dry-run delete of the protected
    /// claim `availability-probe`.
    fn install(ns: &TestNamespace<'c>, sets: &[String], probe: &[&str]) -> Self {
        let cluster = ns.cluster;
        let mut all = vec![
            "availabilityMode.enabled=true".to_owned(),
            format!("agents.serviceAccounts={{{}/*}}", ns.name),
        ];
        all.extend_from_slice(sets);
        let out = render(cluster, TEMPLATE, &all);
        assert!(out.status.success(), "helm template: {}", stderr(&out));
        let docs: Vec<serde_json::Value> = stdout(&out)
            .split("\n---")
            .filter(|d| {
                d.lines()
                    .any(|l| !l.trim().is_empty() && !l.starts_with('#'))
            })
            .map(|d| serde_saphyr::from_str(d).expect("a YAML document"))
            .collect();
        assert_eq!(docs.len(), 2, "a policy and a binding");
        let (mut policy, mut binding) = (docs[0].clone(), docs[1].clone());

        // What the chart renders, before the test narrows it.
        assert_eq!(policy["kind"], "ValidatingAdmissionPolicy");
        assert_eq!(policy["metadata"]["name"], "agentguard-availability");
        assert_eq!(policy["spec"]["failurePolicy"], "Fail");
        assert_eq!(
            policy["spec"]["matchConstraints"]["namespaceSelector"]["matchExpressions"],
            serde_json::json!([{
                "key": "kubernetes.io/metadata.name",
                "operator": "NotIn",
                "values": ["agentguard", "kube-system"],
            }])
        );
        assert_eq!(binding["kind"], "ValidatingAdmissionPolicyBinding");
        assert_eq!(binding["spec"]["policyName"], "agentguard-availability");
        assert_eq!(
            binding["spec"]["validationActions"],
            serde_json::json!(["Deny"])
        );

        // Narrowed to this test: its own name, and only its namespace (cluster-scoped objects
        // stay matched, but only this namespace's ServiceAccounts are agents).
        let name = format!("agentguard-availability-{}", ns.name);
        policy["metadata"]["name"] = name.clone().into();
        binding["metadata"]["name"] = name.clone().into();
        binding["spec"]["policyName"] = name.clone().into();
        policy["spec"]["matchConstraints"]["namespaceSelector"]["matchExpressions"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({
                "key": "kubernetes.io/metadata.name",
                "operator": "In",
                "values": [ns.name],
            }));
        let installed = Self { cluster, name };
        let list =
            serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [policy, binding]});
        cluster.apply(&list.to_string());

        ns.pvc("availability-probe", true);
        let refusal = format!("ValidatingAdmissionPolicy '{}'", installed.name);
        wait_until(
            Duration::from_secs(30),
            "the availability policy to be enforced",
            || {
                let mut args = probe.to_vec();
                args.extend(["delete", "pvc", "availability-probe", "--dry-run=server"]);
                stderr(&ns.kubectl(&args)).contains(&refusal)
            },
        );
        installed
    }
}

impl Drop for AvailabilityPolicy<'_> {
    fn drop(&mut self) {
        let _ = self.cluster.kubectl(&[
            "delete",
            &format!("validatingadmissionpolicybinding/{}", self.name),
            &format!("validatingadmissionpolicy/{}", self.name),
            "--ignore-not-found",
        ]);
    }
}

/// What kubectl prints when the availability policy refuses an agent's deletion of a claim.
fn refused_delete(policy: &str, ns: &str, name: &str, user: &str) -> String {
    format!(
        "Error from server (Forbidden): persistentvolumeclaims \"{name}\" is forbidden: \
         ValidatingAdmissionPolicy '{policy}' with binding '{policy}' denied request: \
         agentguard: DENIED delete of PersistentVolumeClaim {ns}/{name} by {user}. \
         Protected by annotation agentguard.dev/protected=true, through agentguard's availability policy \
         (the API server checks it even when agentguard is unreachable). This may hold production data. \
         Do not retry, and do not try another way to delete, move, or unprotect it. \
         Stop and ask a human to approve: kubectl agentguard approve persistentvolumeclaim/{name} -n {ns} --for 30m. \
         To ask in writing: kubectl agentguard request persistentvolumeclaim/{name} -n {ns} --reason \"<why you need it deleted>\""
    )
}

fn annotation(ns: &TestNamespace<'_>, claim: &str, key: &str) -> String {
    let escaped = key.replace('.', "\\.").replace('/', "\\/");
    stdout(&ns.kubectl(&[
        "get",
        "pvc",
        claim,
        "-o",
        &format!("jsonpath={{.metadata.annotations.{escaped}}}"),
    ]))
}

fn webhook_failure_policy(cluster: &Cluster, name: &str) -> String {
    stdout(&cluster.kubectl(&[
        "get",
        "validatingwebhookconfiguration",
        name,
        "-o",
        "jsonpath={.webhooks[0].failurePolicy}",
    ]))
}

/// agentguard with the webhook's failurePolicy Ignore, as availability mode runs it.
fn ignore() -> GuardOptions {
    GuardOptions {
        failure_policy: Some("Ignore"),
        ..Default::default()
    }
}

#[test]
fn with_the_webhook_down_the_policy_keeps_the_simplest_rules() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "avail-down");
    let agent = ns.agent("cursor-agent");
    let as_agent = format!("--as={agent}");
    let mut guard = Guard::start_with(&ns, &agent, &ignore());
    let break_glass = format!("{}-break-glass", ns.name);
    let policy = AvailabilityPolicy::install(
        &ns,
        &[format!("breakGlassGroups={{{break_glass}}}")],
        &[&as_agent],
    );
    for (claim, protected) in [
        ("data", true),
        ("approved", true),
        ("human", true),
        ("glass", true),
        ("scratch", false),
    ] {
        ns.pvc(claim, protected);
    }
    // A protected volume: cluster-scoped, so its review has no namespace at all.
    let pv = format!("pv-{}", ns.name);
    cluster.apply(&format!(
        "apiVersion: v1\nkind: PersistentVolume\nmetadata:\n  name: {pv}\n  annotations: {{agentguard.dev/protected: \"true\"}}\n\
         spec:\n  capacity: {{storage: 1Gi}}\n  accessModes: [ReadWriteOnce]\n  persistentVolumeReclaimPolicy: Retain\n  \
         hostPath: {{path: /tmp/{pv}}}\n"
    ));
    ns.owns_cluster_object(&format!("pv/{pv}"));
    ns.grant_cluster("cursor-agent", "get,delete", "persistentvolumes");
    // RBAC lets the agent at the policies and CRDs: the availability policy must stop it.
    ns.grant("cursor-agent", "protectedresources.agentguard.dev");
    ns.grant_cluster(
        "cursor-agent",
        "get,delete,patch",
        "customresourcedefinitions,apiservices.apiregistration.k8s.io",
    );
    cluster.apply(&format!(
        "apiVersion: agentguard.dev/v1alpha1\nkind: ProtectedResource\nmetadata:\n  name: orders\n  namespace: {}\n\
         spec:\n  mode: Enforce\n  targets:\n    - apiGroups: [\"\"]\n      kinds: [PersistentVolumeClaim]\n",
        ns.name
    ));

    guard.kill();
    assert!(guard.http_get("/readyz").is_none(), "agentguard still runs");
    assert_eq!(
        webhook_failure_policy(&cluster, &guard.webhook_name),
        "Ignore"
    );

    // (a) The agent's delete of an annotated claim is refused by the API server itself.
    let out = ns.kubectl_as(&agent, &["delete", "pvc", "data"]);
    assert!(!out.status.success(), "the protected claim was deleted");
    assert_eq!(
        stderr(&out).trim_end(),
        refused_delete(&policy.name, &ns.name, "data", &agent)
    );
    assert!(ns.pvc_intact("data"));

    // The same for a cluster-scoped volume, named in full.
    let out = ns.kubectl_as(&agent, &["delete", "pv", &pv, "--dry-run=server"]);
    assert!(
        stderr(&out).contains(&format!(
            "agentguard: DENIED delete of PersistentVolume {pv} by {agent}. Protected by annotation"
        )) && stderr(&out).contains(&format!(
            "kubectl agentguard approve persistentvolume/{pv} --for 30m."
        )),
        "{}",
        stderr(&out)
    );

    // (b) Nor can it unprotect the claim or forge an approval.
    let attempts: &[(&[&str], &str)] = &[
        (
            &["annotate", "pvc", "data", "agentguard.dev/protected-"],
            "annotation agentguard.dev/protected",
        ),
        (
            &[
                "annotate",
                "--overwrite",
                "pvc",
                "data",
                "agentguard.dev/protected=false",
            ],
            "annotation agentguard.dev/protected",
        ),
        (
            &[
                "annotate",
                "pvc",
                "data",
                "agentguard.dev/approved-by=agentguard-admin",
            ],
            "annotation agentguard.dev/approved-by",
        ),
        (
            &[
                "annotate",
                "pvc",
                "data",
                "agentguard.dev/approved-by=agentguard-admin",
                "agentguard.dev/approved-until=2099-01-01T00:00:00Z",
            ],
            "annotation agentguard.dev/approved-until",
        ),
        (
            &["label", "pvc", "data", "agentguard.dev/protected=true"],
            "label agentguard.dev/protected",
        ),
    ];
    for (args, touched) in attempts {
        let out = ns.kubectl_as(&agent, args);
        assert!(!out.status.success(), "{args:?} was allowed");
        let err = stderr(&out);
        assert!(
            err.contains(&format!("ValidatingAdmissionPolicy '{}'", policy.name))
                && err.contains(&format!(
                    "agentguard: DENIED update of PersistentVolumeClaim {}/data by {agent}: \
                     restricted identities may not add, change or remove agentguard.dev/* annotations or labels (",
                    ns.name
                ))
                && err.contains(touched)
                && err.contains(&format!(
                    "Stop and ask a human; if it must be deleted, ask them to approve: \
                     kubectl agentguard approve persistentvolumeclaim/data -n {} --for 30m",
                    ns.name
                )),
            "{args:?}: {err}"
        );
    }
    assert_eq!(annotation(&ns, "data", "agentguard.dev/protected"), "true");
    assert_eq!(annotation(&ns, "data", "agentguard.dev/approved-by"), "");
    // Other metadata is the agent's to change.
    let out = ns.kubectl_as(&agent, &["annotate", "pvc", "data", "note=agent-was-here"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // (c) Nor can it delete a policy, or the CRD that would take every policy with it, or
    // point agentguard's API group elsewhere, so nothing is lost for good while the webhook is
    // down.
    for (args, object) in [
        (
            vec!["delete", "protectedresource", "orders", "--dry-run=server"],
            format!("ProtectedResource {}/orders", ns.name),
        ),
        (
            vec![
                "delete",
                "crd",
                "clusterprotectedresources.agentguard.dev",
                "--dry-run=server",
            ],
            "CustomResourceDefinition clusterprotectedresources.agentguard.dev".to_owned(),
        ),
        // Nor the APIService that says which server answers for agentguard's group.
        (
            vec![
                "delete",
                "apiservice",
                "v1alpha1.agentguard.dev",
                "--dry-run=server",
            ],
            "APIService v1alpha1.agentguard.dev".to_owned(),
        ),
    ] {
        let out = ns.kubectl_as(&agent, &args);
        let err = stderr(&out);
        assert!(
            !out.status.success()
                && err.contains(&format!("ValidatingAdmissionPolicy '{}'", policy.name))
                && err.contains(&format!(
                    "agentguard: DENIED delete of {object} by {agent}. Restricted identities may not \
                     change or delete agentguard policies or their definitions, nor APIServices"
                )),
            "{args:?}: {err}"
        );
    }

    // (d) A human annotates and deletes protected claims.
    ns.kubectl_ok(&["annotate", "pvc", "human", "note=checked-by-a-human"]);
    ns.kubectl_ok(&["annotate", "pvc", "human", "agentguard.dev/protected-"]);
    ns.kubectl_ok(&["annotate", "pvc", "human", "agentguard.dev/protected=true"]);
    ns.kubectl_ok(&["delete", "pvc", "human", "--wait=false"]);
    ns.wait_pvc_gone("human");

    // (e) A human's approval lets the agent delete that claim.
    ns.kubectl_ok(&[
        "annotate",
        "pvc",
        "approved",
        &format!("agentguard.dev/approved-by={ADMIN}"),
        &format!("agentguard.dev/approved-until={}", in_secs(600)),
    ]);
    let out = ns.kubectl_as(&agent, &["delete", "pvc", "approved", "--wait=false"]);
    assert!(out.status.success(), "{}", stderr(&out));
    ns.wait_pvc_gone("approved");

    // (f) What is not protected is the agent's to delete.
    let out = ns.kubectl_as(&agent, &["delete", "pvc", "scratch", "--wait=false"]);
    assert!(out.status.success(), "{}", stderr(&out));
    ns.wait_pvc_gone("scratch");

    // Break-glass groups are never restricted, as in the webhook.
    let out = ns.kubectl(&[
        as_agent.as_str(),
        &format!("--as-group={break_glass}"),
        "delete",
        "pvc",
        "glass",
        "--wait=false",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    ns.wait_pvc_gone("glass");
    assert!(ns.pvc_intact("data"));
}

/// The documented gap: CEL has no clock and sees no ProtectedResource, so while the webhook is
/// down an expired approval counts, and a claim protected only by a policy is not protected.
#[test]
fn with_the_webhook_down_expired_approvals_and_policies_do_not_hold() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "avail-gap");
    let agent = ns.agent("cursor-agent");
    let as_agent = format!("--as={agent}");
    let mut guard = Guard::start_with(&ns, &agent, &ignore());
    let _policy = AvailabilityPolicy::install(&ns, &[], &[&as_agent]);
    cluster.apply(&format!(
        "apiVersion: agentguard.dev/v1alpha1\nkind: ProtectedResource\nmetadata:\n  name: orders\n  namespace: {}\n\
         spec:\n  targets:\n    - apiGroups: [\"\"]\n      kinds: [PersistentVolumeClaim]\n      names: [\"orders-*\"]\n",
        ns.name
    ));
    ns.pvc("orders-0", false);
    ns.pvc("expiring", true);
    // While agentguard runs, both are refused, by the webhook.
    wait_until(
        Duration::from_secs(30),
        "the ProtectedResource to be in force",
        || {
            stderr(&ns.kubectl_as(&agent, &["delete", "pvc", "orders-0", "--dry-run=server"]))
                .contains("Protected by ProtectedResource")
        },
    );
    ns.kubectl_ok(&[
        "annotate",
        "pvc",
        "expiring",
        &format!("agentguard.dev/approved-by={ADMIN}"),
        &format!("agentguard.dev/approved-until={}", in_secs(3)),
    ]);

    guard.kill();
    std::thread::sleep(Duration::from_secs(4));
    let until: jiff::Timestamp = annotation(&ns, "expiring", "agentguard.dev/approved-until")
        .parse()
        .unwrap();
    assert!(until < jiff::Timestamp::now(), "the approval has expired");

    let out = ns.kubectl_as(&agent, &["delete", "pvc", "expiring", "--wait=false"]);
    assert!(
        out.status.success(),
        "an expired approval passes the availability policy (the documented gap): {}",
        stderr(&out)
    );
    ns.wait_pvc_gone("expiring");
    let out = ns.kubectl_as(&agent, &["delete", "pvc", "orders-0", "--wait=false"]);
    assert!(
        out.status.success(),
        "a policy-protected claim is not protected by the availability policy: {}",
        stderr(&out)
    );
    ns.wait_pvc_gone("orders-0");
}

#[test]
fn with_the_webhook_running_the_full_rules_still_apply() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "avail-up");
    let agent = ns.agent("cursor-agent");
    let as_agent = format!("--as={agent}");
    let guard = Guard::start_with(&ns, &agent, &ignore());
    let policy = AvailabilityPolicy::install(&ns, &[], &[&as_agent]);
    assert_eq!(
        webhook_failure_policy(&cluster, &guard.webhook_name),
        "Ignore"
    );
    ns.pvc("data", true);
    ns.pvc("expiring", true);

    // The API server runs admission policies before webhooks: the plain case is refused by the
    // policy, and agentguard never sees it.
    let out = ns.kubectl_as(&agent, &["delete", "pvc", "data"]);
    assert_eq!(
        stderr(&out).trim_end(),
        refused_delete(&policy.name, &ns.name, "data", &agent)
    );

    // An expired approval passes the policy and is refused by the webhook.
    ns.kubectl_ok(&[
        "annotate",
        "pvc",
        "expiring",
        &format!("agentguard.dev/approved-by={ADMIN}"),
        &format!("agentguard.dev/approved-until={}", in_secs(3)),
    ]);
    std::thread::sleep(Duration::from_secs(4));
    let out = ns.kubectl_as(&agent, &["delete", "pvc", "expiring"]);
    assert!(!out.status.success(), "an expired approval counted");
    let err = stderr(&out);
    assert!(
        err.starts_with(
            "Error from server (Forbidden): admission webhook \"validate.agentguard.dev\" denied the request: \
             agentguard: DENIED delete of PersistentVolumeClaim"
        ) && err.contains(&format!(
            "The approval on it does not count: the approval by {ADMIN} expired at"
        )),
        "{err}"
    );
    assert!(ns.pvc_intact("expiring"));
    assert_eq!(
        guard.metric(
            "agentguard_deletions_blocked_total",
            &[
                ("namespace", &ns.name),
                ("resource", "persistentvolumeclaims"),
                ("subject", &agent),
                ("policy", "annotation"),
            ],
        ),
        1.0,
        "only the webhook's refusal is counted by agentguard"
    );

    // A claim protected by a ProtectedResource only: the webhook's rule, not the policy's.
    cluster.apply(&format!(
        "apiVersion: agentguard.dev/v1alpha1\nkind: ProtectedResource\nmetadata:\n  name: orders\n  namespace: {}\n\
         spec:\n  targets:\n    - apiGroups: [\"\"]\n      kinds: [PersistentVolumeClaim]\n      names: [\"orders-*\"]\n",
        ns.name
    ));
    ns.pvc("orders-0", false);
    wait_until(
        Duration::from_secs(30),
        "the webhook to refuse a policy-protected claim",
        || {
            stderr(&ns.kubectl_as(&agent, &["delete", "pvc", "orders-0"])).contains(
                "admission webhook \"validate.agentguard.dev\" denied the request: \
                 agentguard: DENIED delete of PersistentVolumeClaim",
            )
        },
    );
    assert!(ns.pvc_intact("orders-0"));
}

#[test]
fn in_availability_mode_the_operator_writes_failure_policy_ignore() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "avail-managed");
    let agent = ns.agent("cursor-agent");
    let options = ignore();
    // Starting waits until the API server calls agentguard through the configuration it wrote.
    let guard = Guard::start_with(&ns, &agent, &options);
    assert_eq!(
        webhook_failure_policy(&cluster, &guard.webhook_name),
        "Ignore"
    );

    // Set back to Fail by hand, it is restored: the operator owns the field.
    cluster.kubectl_ok(&[
        "patch",
        "validatingwebhookconfiguration",
        &guard.webhook_name,
        "--type=json",
        "-p",
        r#"[{"op": "replace", "path": "/webhooks/0/failurePolicy", "value": "Fail"}]"#,
    ]);
    wait_until(
        Duration::from_secs(30),
        "the operator to restore failurePolicy Ignore",
        || webhook_failure_policy(&cluster, &guard.webhook_name) == "Ignore",
    );
}

/// The chart translates agent globs into CEL; the API server must restrict exactly the
/// identities agentguard's own matcher restricts.
#[test]
fn agent_globs_mean_the_same_in_the_api_server_as_in_agentguard() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "avail-globs");
    let n = ns.name.as_str();
    // Everyone below gets `edit` through this group, so RBAC never decides.
    let people = format!("{n}-people");
    ns.kubectl_ok(&[
        "create",
        "rolebinding",
        "people-edit",
        "--clusterrole=edit",
        &format!("--group={people}"),
    ]);
    let definition = AgentDefinition {
        service_accounts: vec![format!("{n}/cursor-*"), format!("{n}/bot.?")],
        groups: vec![format!("{n}-agents")],
        usernames: vec![format!("{n}-user-*")],
        break_glass_groups: vec![format!("{n}-sre")],
    };
    let list = |v: &[String]| format!("{{{}}}", v.join(","));
    let sets = [
        format!(
            "agents.serviceAccounts={}",
            list(&definition.service_accounts)
        ),
        format!("agents.groups={}", list(&definition.groups)),
        format!("agents.usernames={}", list(&definition.usernames)),
        format!("breakGlassGroups={}", list(&definition.break_glass_groups)),
    ];
    let probe_user = format!("--as=system:serviceaccount:{n}:cursor-probe");
    let probe_group = format!("--as-group={people}");
    let _policy = AvailabilityPolicy::install(&ns, &sets, &[&probe_user, &probe_group]);
    let matcher = AgentMatcher::new(&definition).unwrap();

    let sa = |name: &str| format!("system:serviceaccount:{n}:{name}");
    let cases: Vec<(String, Option<String>, bool)> = vec![
        (sa("cursor-1"), None, true),
        (sa("helper"), None, false),
        (sa("bot.1"), None, true),
        (sa("botx1"), None, false),
        (sa("bot.12"), None, false),
        (format!("system:serviceaccount:{n}x:cursor-1"), None, false),
        (format!("{n}-user-alice"), None, true),
        (format!("{n}-user-a/b"), None, false),
        ("carol".to_owned(), Some(format!("{n}-agents")), true),
        ("carol".to_owned(), None, false),
        (sa("cursor-2"), Some(format!("{n}-sre")), false),
        (
            "system:serviceaccount:kube-system:cursor-1".to_owned(),
            Some(format!("{n}-agents")),
            false,
        ),
    ];
    for (user, group, restricted) in cases {
        let mut groups = vec![people.clone(), "system:authenticated".to_owned()];
        groups.extend(group.clone());
        assert_eq!(
            matcher.restriction(&user, &groups).is_some(),
            restricted,
            "agentguard's matcher on {user} {group:?}"
        );
        let as_user = format!("--as={user}");
        let mut args = vec![as_user.as_str(), probe_group.as_str()];
        let as_group = group.as_ref().map(|g| format!("--as-group={g}"));
        args.extend(as_group.as_deref());
        args.extend(["delete", "pvc", "availability-probe", "--dry-run=server"]);
        let out = ns.kubectl(&args);
        if restricted {
            assert!(
                stderr(&out).contains("agentguard: DENIED delete"),
                "{user} {group:?} should be refused: {}",
                stderr(&out)
            );
        } else {
            assert!(
                out.status.success(),
                "{user} {group:?} should be allowed: {}",
                stderr(&out)
            );
        }
    }
}

#[test]
fn the_chart_passes_the_failure_policy_and_refuses_what_it_cannot_translate() {
    let cluster = Cluster::connect();
    let args_of = |sets: &[String]| {
        let out = render(&cluster, "templates/deployment.yaml", sets);
        assert!(out.status.success(), "{}", stderr(&out));
        let deployment: serde_json::Value = serde_saphyr::from_str(&stdout(&out)).unwrap();
        deployment["spec"]["template"]["spec"]["containers"][0]["args"].clone()
    };
    let has = |args: &serde_json::Value, flag: &str| {
        args.as_array()
            .unwrap()
            .iter()
            .any(|a| a.as_str() == Some(flag))
    };
    assert!(has(&args_of(&[]), "--failure-policy=Fail"));
    let enabled = [
        "availabilityMode.enabled=true".to_owned(),
        "agents.serviceAccounts={ci/*}".to_owned(),
    ];
    assert!(has(&args_of(&enabled), "--failure-policy=Ignore"));
    // Off by default: nothing rendered.
    let out = render(&cluster, TEMPLATE, &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("could not find template"),
        "{}",
        stderr(&out)
    );

    for (sets, needle) in [
        (
            vec!["availabilityMode.enabled=true".to_owned()],
            "availabilityMode needs agents.serviceAccounts, agents.groups or agents.usernames",
        ),
        (
            vec![
                "availabilityMode.enabled=true".to_owned(),
                "agents.serviceAccounts={ci/agent-[ab]}".to_owned(),
            ],
            "agent glob \"ci/agent-[ab]\" uses [ ] { } or a backslash",
        ),
        (
            vec!["availabilityMode.enabled=yes".to_owned()],
            "at '/availabilityMode/enabled': got string, want boolean",
        ),
        (
            vec!["availabilityMode.enable=true".to_owned()],
            "additional properties 'enable' not allowed",
        ),
    ] {
        let out = render(&cluster, TEMPLATE, &sets);
        assert!(!out.status.success(), "{sets:?} was accepted");
        assert!(stderr(&out).contains(needle), "{sets:?}: {}", stderr(&out));
    }
}
