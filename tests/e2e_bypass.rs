//! End-to-end: one agent ServiceAccount with broad but realistic RBAC (a platform bot: `edit`
//! in its namespace, and cluster-wide rights on webhook configurations, deployments, secrets,
//! volumes, CRDs, namespaces, pods and impersonation) tries every route we know to destroy
//! protected data or disarm the guard. Each row either is refused by agentguard, or is one only
//! RBAC can stop, and then `kubectl agentguard audit` must flag the permission that allows it.
//! Destructive attempts run as server-side dry runs, which agentguard judges exactly like the
//! real request (so the fixture survives for the next row). `docs/security.md` lists the same
//! rows; a test keeps the two in step.
//! Requires `hack/cluster.sh up`; fails (never skips) when the control plane is absent.

mod support;

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use support::{Cluster, Guard, GuardOptions, TestNamespace, in_secs, stderr, stdout, wait_until};

/// How a row must end.
enum Expect {
    /// agentguard refuses it (the denial is its message).
    Guarded,
    /// It goes through agentguard; RBAC alone can stop it, and audit flags this check kind.
    RbacOnly(&'static str),
}

struct Row {
    name: &'static str,
    expect: Expect,
    /// kubectl arguments, run as the agent (impersonated by the admin, or with its own token
    /// when `own_token`).
    args: Vec<String>,
    own_token: bool,
    stdin: Option<String>,
}

fn row(name: &'static str, expect: Expect, args: &[&str]) -> Row {
    Row {
        name,
        expect,
        args: args.iter().map(|s| s.to_string()).collect(),
        own_token: false,
        stdin: None,
    }
}

/// The rows, by name, as `docs/security.md` must list them.
const ROWS: &[&str] = &[
    "direct delete",
    "DeleteCollection",
    "delete the namespace",
    "delete an owner",
    "delete the CRD",
    "prune the CRD's schema",
    "delete agentguard's CRD",
    "prune agentguard's CRD schema",
    "point agentguard's API group at the agent's Service",
    "register an aggregated API",
    "StatefulSet retention to Delete",
    "PV reclaim policy to Delete",
    "remove the protected annotation",
    "forge an approval",
    "edit a policy",
    "delete a policy",
    "remove helm keep (deletion by proxy)",
    "delete the webhook configuration",
    "scale agentguard to zero",
    "delete agentguard's Secret",
    "impersonate a human",
    "run a pod as agentguard's ServiceAccount",
    "register a mutating webhook",
];

/// A JSON patch that leaves a CRD's schema an empty `spec`: the API server would then prune
/// every field of every instance, on read too (a policy's targets, a database's settings).
const PRUNING_SCHEMA: &str = r#"[{"op":"replace","path":"/spec/versions/0/schema/openAPIV3Schema","value":{"type":"object","properties":{"spec":{"type":"object"}}}}]"#;

#[test]
fn security_doc_lists_every_row() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/security.md"))
        .expect("docs/security.md");
    for name in ROWS {
        assert!(
            doc.contains(&format!("| {name} |")),
            "docs/security.md has no row \"{name}\""
        );
    }
}

#[test]
fn an_agent_with_broad_rbac_tries_every_route() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "bypass");
    let system = TestNamespace::create(&cluster, "bypass-ag");
    let agent = ns.agent("cursor-agent");
    ns.grant_cluster(
        "cursor-agent",
        "get,list,watch,delete,patch,update",
        "validatingwebhookconfigurations,deployments,deployments/scale,secrets,persistentvolumes,customresourcedefinitions,namespaces",
    );
    ns.grant_cluster("cursor-agent", "impersonate", "users,groups");
    // The aggregation layer and mutating admission: RBAC allows it, so what stops it shows.
    ns.grant_cluster(
        "cursor-agent",
        "get,create,update,patch,delete",
        "apiservices.apiregistration.k8s.io,mutatingwebhookconfigurations.admissionregistration.k8s.io",
    );
    // Policies too: that agentguard, not RBAC, keeps agents off them is what the rows show.
    ns.grant("cursor-agent", "protectedresources.agentguard.dev");
    ns.grant_cluster("cursor-agent", "create", "pods");
    let guard = Guard::start(&ns, &agent);

    // What agentguard's own namespace holds when installed by the chart.
    system.kubectl_ok(&["create", "serviceaccount", "agentguard"]);
    system.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "agentguard-webhook-tls",
        "--from-literal=tls.key=not-a-key",
    ]);
    cluster.apply(&format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: agentguard\n  namespace: {ns}\n  labels: {{app.kubernetes.io/name: agentguard}}\n\
         spec:\n  replicas: 2\n  selector: {{matchLabels: {{app: agentguard}}}}\n  template:\n    metadata: {{labels: {{app: agentguard}}}}\n    \
         spec:\n      serviceAccountName: agentguard\n      containers:\n        - name: agentguard\n          image: ghcr.io/agentguard/agentguard:0.1.0\n          \
         args: [run, --cert-secret=agentguard-webhook-tls]\n",
        ns = system.name
    ));

    // The data and what reaches it.
    ns.pvc("data", true);
    cluster.apply(&format!(
        "apiVersion: agentguard.dev/v1alpha1\nkind: ProtectedResource\nmetadata:\n  name: orders\n  namespace: {ns}\n\
         spec:\n  mode: Enforce\n  targets:\n    - apiGroups: [\"\"]\n      kinds: [PersistentVolumeClaim]\n      names: [\"orders-*\"]\n",
        ns = ns.name
    ));
    // A claim of the StatefulSet below (template `orders`, set `db`), protected by the policy.
    ns.pvc("orders-db-0", false);
    ns.kubectl_ok(&[
        "annotate",
        "pvc",
        "orders-db-0",
        "helm.sh/resource-policy=keep",
    ]);
    let owner_uid = {
        ns.kubectl_ok(&["create", "configmap", "owner"]);
        ns.kubectl_ok(&[
            "get",
            "configmap",
            "owner",
            "-o",
            "jsonpath={.metadata.uid}",
        ])
    };
    cluster.apply(&format!(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: owned\n  namespace: {ns}\n  annotations: {{agentguard.dev/protected: \"true\"}}\n  \
         ownerReferences: [{{apiVersion: v1, kind: ConfigMap, name: owner, uid: {owner_uid}}}]\n\
         spec:\n  accessModes: [ReadWriteOnce]\n  resources: {{requests: {{storage: 1Gi}}}}\n",
        ns = ns.name
    ));
    // A database operator's kind, protected by a policy (the annotation counts only on the
    // kinds in --annotation-kinds).
    let group = ns.crd("databases", "Database");
    cluster.apply(&format!(
        "apiVersion: agentguard.dev/v1alpha1\nkind: ProtectedResource\nmetadata:\n  name: databases\n  namespace: {ns}\n\
         spec:\n  mode: Enforce\n  targets:\n    - apiGroups: [{group}]\n      kinds: [Database]\n---\n\
         apiVersion: {group}/v1\nkind: Database\nmetadata:\n  name: orders\n  namespace: {ns}\n",
        ns = ns.name
    ));
    cluster.apply(&format!(
        "apiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: db\n  namespace: {ns}\nspec:\n  replicas: 0\n  serviceName: db\n  \
         selector: {{matchLabels: {{app: db}}}}\n  persistentVolumeClaimRetentionPolicy: {{whenDeleted: Retain, whenScaled: Retain}}\n  \
         template:\n    metadata: {{labels: {{app: db}}}}\n    spec: {{containers: [{{name: db, image: postgres}}]}}\n  \
         volumeClaimTemplates:\n    - metadata: {{name: orders}}\n      spec: {{accessModes: [ReadWriteOnce], resources: {{requests: {{storage: 1Gi}}}}}}\n",
        ns = ns.name
    ));
    let pv = format!("pv-{}", ns.name);
    cluster.apply(&format!(
        "apiVersion: v1\nkind: PersistentVolume\nmetadata:\n  name: {pv}\nspec:\n  capacity: {{storage: 1Gi}}\n  accessModes: [ReadWriteOnce]\n  \
         persistentVolumeReclaimPolicy: Retain\n  hostPath: {{path: /tmp/{pv}}}\n  claimRef: {{namespace: {ns}, name: data}}\n",
        ns = ns.name
    ));
    ns.owns_cluster_object(&format!("pv/{pv}"));
    // The index learns owners and instances from its watches: wait until a cascade is judged.
    wait_until(
        Duration::from_secs(30),
        "the owner cascade to be known",
        || {
            stderr(&ns.kubectl_as(
                &agent,
                &["delete", "configmap", "owner", "--dry-run=server"],
            ))
            .contains("agentguard: DENIED")
        },
    );
    wait_until(
        Duration::from_secs(30),
        "the databases cascade to be known",
        || {
            stderr(&ns.kubectl_as(
                &agent,
                &[
                    "delete",
                    "crd",
                    &format!("databases.{group}"),
                    "--dry-run=server",
                ],
            ))
            .contains("agentguard: DENIED")
        },
    );
    wait_until(
        Duration::from_secs(30),
        "the orders policy in force",
        || {
            stderr(&ns.kubectl_as(
                &agent,
                &["delete", "pvc", "orders-db-0", "--dry-run=server"],
            ))
            .contains("ProtectedResource")
        },
    );

    let n = ns.name.as_str();
    let mut rows = vec![
        row(
            "direct delete",
            Expect::Guarded,
            &["delete", "pvc", "data", "--dry-run=server"],
        ),
        row(
            "DeleteCollection",
            Expect::Guarded,
            &["delete", "pvc", "--all", "--dry-run=server"],
        ),
        row(
            "delete the namespace",
            Expect::Guarded,
            &["delete", "namespace", n, "--dry-run=server"],
        ),
        row(
            "delete an owner",
            Expect::Guarded,
            &["delete", "configmap", "owner", "--dry-run=server"],
        ),
        row(
            "delete the CRD",
            Expect::Guarded,
            &[
                "delete",
                "crd",
                &format!("databases.{group}"),
                "--dry-run=server",
            ],
        ),
        row(
            "prune the CRD's schema",
            Expect::Guarded,
            &[
                "patch",
                "crd",
                &format!("databases.{group}"),
                "--type=json",
                "-p",
                PRUNING_SCHEMA,
                "--dry-run=server",
            ],
        ),
        row(
            "delete agentguard's CRD",
            Expect::Guarded,
            &[
                "delete",
                "crd",
                "clusterprotectedresources.agentguard.dev",
                "--dry-run=server",
            ],
        ),
        row(
            "prune agentguard's CRD schema",
            Expect::Guarded,
            &[
                "patch",
                "crd",
                "clusterprotectedresources.agentguard.dev",
                "--type=json",
                "-p",
                PRUNING_SCHEMA,
                "--dry-run=server",
            ],
        ),
        row(
            "point agentguard's API group at the agent's Service",
            Expect::Guarded,
            &[
                "patch",
                "apiservice",
                "v1alpha1.agentguard.dev",
                "--type=merge",
                "-p",
                &format!(
                    r#"{{"spec":{{"service":{{"namespace":"{n}","name":"fake-policies"}},"insecureSkipTLSVerify":true}}}}"#
                ),
                "--dry-run=server",
            ],
        ),
        {
            let mut create = row(
                "register an aggregated API",
                Expect::Guarded,
                &["create", "-f", "-", "--dry-run=server"],
            );
            create.stdin = Some(format!(
                "apiVersion: apiregistration.k8s.io/v1\nkind: APIService\nmetadata:\n  name: v1beta1.agentguard.dev\n\
                 spec:\n  group: agentguard.dev\n  version: v1beta1\n  service: {{namespace: {n}, name: fake-policies}}\n  \
                 insecureSkipTLSVerify: true\n  groupPriorityMinimum: 1000\n  versionPriority: 100\n"
            ));
            create
        },
        row(
            "StatefulSet retention to Delete",
            Expect::Guarded,
            &[
                "patch",
                "statefulset",
                "db",
                "--type=merge",
                "-p",
                r#"{"spec":{"persistentVolumeClaimRetentionPolicy":{"whenDeleted":"Delete"}}}"#,
                "--dry-run=server",
            ],
        ),
        row(
            "PV reclaim policy to Delete",
            Expect::Guarded,
            &[
                "patch",
                "pv",
                &pv,
                "--type=merge",
                "-p",
                r#"{"spec":{"persistentVolumeReclaimPolicy":"Delete"}}"#,
                "--dry-run=server",
            ],
        ),
        row(
            "remove the protected annotation",
            Expect::Guarded,
            &[
                "annotate",
                "pvc",
                "data",
                "agentguard.dev/protected-",
                "--dry-run=server",
            ],
        ),
        row(
            "forge an approval",
            Expect::Guarded,
            &[
                "annotate",
                "pvc",
                "data",
                "agentguard.dev/approved-by=agentguard-admin",
                "agentguard.dev/approved-until=2099-01-01T00:00:00Z",
                "--dry-run=server",
            ],
        ),
        row(
            "edit a policy",
            Expect::Guarded,
            &[
                "patch",
                "protectedresource",
                "orders",
                "--type=merge",
                "-p",
                r#"{"spec":{"mode":"Audit"}}"#,
                "--dry-run=server",
            ],
        ),
        row(
            "delete a policy",
            Expect::Guarded,
            &["delete", "protectedresource", "orders", "--dry-run=server"],
        ),
        row(
            "remove helm keep (deletion by proxy)",
            Expect::Guarded,
            &[
                "annotate",
                "pvc",
                "orders-db-0",
                "helm.sh/resource-policy-",
                "--dry-run=server",
            ],
        ),
        row(
            "delete the webhook configuration",
            Expect::RbacOnly("webhook-configuration"),
            &[
                "delete",
                "validatingwebhookconfiguration",
                &guard.webhook_name,
                "--dry-run=server",
            ],
        ),
        row(
            "scale agentguard to zero",
            Expect::RbacOnly("deployment"),
            &[
                "scale",
                "deployment",
                "agentguard",
                "-n",
                &system.name,
                "--replicas=0",
                "--dry-run=server",
            ],
        ),
        row(
            "delete agentguard's Secret",
            Expect::RbacOnly("secret"),
            &[
                "delete",
                "secret",
                "agentguard-webhook-tls",
                "-n",
                &system.name,
                "--dry-run=server",
            ],
        ),
    ];
    let mut impersonate = row(
        "impersonate a human",
        Expect::RbacOnly("impersonate"),
        &[
            "--as=alice",
            "--as-group=system:masters",
            "delete",
            "pvc",
            "data",
            "--dry-run=server",
        ],
    );
    impersonate.own_token = true;
    rows.push(impersonate);
    let mut pod = row(
        "run a pod as agentguard's ServiceAccount",
        Expect::RbacOnly("act-as"),
        &["-n", &system.name, "create", "-f", "-", "--dry-run=server"],
    );
    pod.stdin = Some(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: borrow-token\nspec:\n  serviceAccountName: agentguard\n  \
         containers: [{name: sh, image: busybox, command: [sleep, \"3600\"]}]\n"
            .to_owned(),
    );
    rows.push(pod);
    let mut mutating = row(
        "register a mutating webhook",
        Expect::RbacOnly("mutating-admission"),
        &["create", "-f", "-", "--dry-run=server"],
    );
    mutating.stdin = Some(format!(
        "apiVersion: admissionregistration.k8s.io/v1\nkind: MutatingWebhookConfiguration\nmetadata:\n  name: strip-{n}\n\
         webhooks:\n  - name: strip.example.com\n    admissionReviewVersions: [v1]\n    sideEffects: None\n    \
         failurePolicy: Ignore\n    clientConfig: {{service: {{namespace: {n}, name: strip}}}}\n    \
         rules: [{{apiGroups: [\"\"], apiVersions: [v1], operations: [UPDATE], resources: [persistentvolumeclaims]}}]\n"
    ));
    rows.push(mutating);
    assert_eq!(
        rows.iter().map(|r| r.name).collect::<Vec<_>>(),
        ROWS.to_vec(),
        "the rows and ROWS differ"
    );

    let token = ns.kubectl_ok(&["create", "token", "cursor-agent", "--duration=10m"]);
    let own = cluster.token_kubeconfig(guard.dir.path(), token.trim());
    let run = |r: &Row| -> Output {
        let mut cmd = Command::new(cluster.kubectl_path());
        if r.own_token {
            cmd.arg("--kubeconfig").arg(&own);
        } else {
            cmd.arg("--kubeconfig")
                .arg(&cluster.kubeconfig)
                .arg(format!("--as={agent}"));
        }
        cmd.args(["-n", n]).args(&r.args);
        match &r.stdin {
            Some(input) => {
                use std::io::Write;
                let mut child = cmd
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap();
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(input.as_bytes())
                    .unwrap();
                child.wait_with_output().unwrap()
            }
            None => cmd.output().unwrap(),
        }
    };

    // The audit, for the RBAC-only rows.
    let audit = Command::new(env!("CARGO_BIN_EXE_kubectl-agentguard"))
        .arg("--kubeconfig")
        .arg(&cluster.kubeconfig)
        .args([
            "--agentguard-namespace",
            &system.name,
            "audit",
            &format!("--agent-service-accounts={n}/cursor-agent"),
            "--webhook-configuration-name",
            &guard.webhook_name,
            "--only",
            &format!("{n}/cursor-agent"),
            "-o",
            "json",
        ])
        .output()
        .unwrap();
    assert_eq!(
        audit.status.code(),
        Some(3),
        "audit must exit 3 on bypass paths: {}",
        stderr(&audit)
    );
    let report: Value = serde_json::from_slice(&audit.stdout).unwrap();
    let flagged: BTreeMap<String, String> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] == "bypass")
        .map(|f| {
            (
                f["check"].as_str().unwrap().to_owned(),
                f["can"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();

    let mut failures = Vec::new();
    let mut table = String::from("| route | outcome |\n| --- | --- |\n");
    for r in &rows {
        let out = run(r);
        let err = stderr(&out);
        let outcome = match &r.expect {
            Expect::Guarded => {
                if out.status.success() || !err.contains("agentguard: DENIED") {
                    failures.push(format!(
                        "{}: not refused by agentguard: {}{}",
                        r.name,
                        stdout(&out),
                        err
                    ));
                }
                "refused by agentguard".to_owned()
            }
            Expect::RbacOnly(check) => {
                if !out.status.success() {
                    failures.push(format!(
                        "{}: expected to pass agentguard (RBAC-only), got: {err}",
                        r.name
                    ));
                }
                match flagged.get(*check) {
                    Some(can) => format!("only RBAC; audit flags `{check}`: {can}"),
                    None => {
                        failures.push(format!(
                            "{}: audit did not flag `{check}`: {flagged:?}",
                            r.name
                        ));
                        "only RBAC; NOT flagged".to_owned()
                    }
                }
            }
        };
        table.push_str(&format!("| {} | {outcome} |\n", r.name));
    }
    println!("{table}");
    assert!(failures.is_empty(), "{}\n{table}", failures.join("\n"));
    // The data is all still there.
    for claim in ["data", "orders-db-0", "owned"] {
        assert!(ns.pvc_intact(claim), "{claim} was deleted");
    }
}

// Routes that need their own fixture (a webhook outage, a selector policy, a garbage
// collector given time to act) have their own test below; `docs/security.md` lists them too.

/// The rows with their own test, by name, as `docs/security.md` must list them.
const OWN_TEST_ROWS: &[&str] = &[
    "approve the namespace (cascade root)",
    "ghost owner",
    "relabel out of a selector policy",
    "metadata through the status subresource",
    "unsealed approval (written while the webhook was down)",
    "copied approval seal",
];

#[test]
fn security_doc_lists_every_own_test_row() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/security.md"))
        .expect("docs/security.md");
    for name in OWN_TEST_ROWS {
        assert!(
            doc.contains(&format!("| {name} |")),
            "docs/security.md has no row \"{name}\""
        );
    }
}

/// The human every forged approval below names.
const HUMAN: &str = "alice";
/// The admin's username (the client certificate `hack/cluster.sh` makes).
const ADMIN: &str = "agentguard-admin";

/// Ok when agentguard refused the request; otherwise what happened instead, for `what`.
fn refused(out: &Output, what: &str) -> Result<(), String> {
    let err = stderr(out);
    if out.status.success() {
        return Err(format!(
            "{what}: accepted, not refused: {}{err}",
            stdout(out)
        ));
    }
    // kubectl prints `Error from server (Forbidden): ... denied the request: <message>`.
    match err.split_once("denied the request: ") {
        Some((_, message)) if message.starts_with("agentguard: DENIED") => Ok(()),
        _ => Err(format!(
            "{what}: refused, but not with a message starting `agentguard: DENIED`: {err}"
        )),
    }
}

/// Fails the test with every collected failure.
fn assert_all(failures: Vec<String>) {
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn annotation_of(ns: &TestNamespace<'_>, object: &str, key: &str) -> String {
    let escaped = key.replace('.', "\\.");
    stdout(&ns.kubectl(&[
        "get",
        object,
        "-o",
        &format!("jsonpath={{.metadata.annotations.{escaped}}}"),
    ]))
}

/// The agent sets an approval on the namespace, a cascade root, and then deletes the
/// namespace with the protected claim in it. Only a human may approve, on any object.
#[test]
fn an_agent_cannot_approve_the_namespace_that_holds_protected_data() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "bypass-nsok");
    let agent = ns.agent("cursor-agent");
    ns.grant_cluster("cursor-agent", "get,patch,delete", "namespaces");
    let _guard = Guard::start(&ns, &agent);
    ns.pvc("data", true);
    let delete_ns = || {
        ns.kubectl_as(
            &agent,
            &["delete", "namespace", &ns.name, "--dry-run=server"],
        )
    };
    // The object index learns of the claim from its watch: the cascade is judged first.
    wait_until(
        Duration::from_secs(30),
        "the namespace cascade to be known",
        || stderr(&delete_ns()).contains("agentguard: DENIED"),
    );

    let mut failures = Vec::new();
    let out = ns.kubectl_as(
        &agent,
        &[
            "annotate",
            "namespace",
            &ns.name,
            &format!("agentguard.dev/approved-by={HUMAN}"),
            &format!("agentguard.dev/approved-until={}", in_secs(300)),
        ],
    );
    failures.extend(refused(&out, "the agent's approval on the namespace").err());
    failures.extend(refused(&delete_ns(), "the agent's delete of the namespace").err());
    let on_ns = stdout(&cluster.kubectl(&[
        "get",
        "namespace",
        &ns.name,
        "-o",
        "jsonpath={.metadata.annotations}",
    ]));
    if on_ns.contains("agentguard.dev/approved-by") {
        failures.push(format!(
            "the namespace carries the agent's approval: {on_ns}"
        ));
    }
    let phase = stdout(&cluster.kubectl(&[
        "get",
        "namespace",
        &ns.name,
        "-o",
        "jsonpath={.status.phase}",
    ]));
    assert_eq!(phase, "Active", "the namespace is being deleted");
    assert!(ns.pvc_intact("data"), "the protected claim was deleted");
    assert_all(failures);
}

/// The agent points a protected claim's ownerReferences at an owner that does not exist; the
/// garbage collector would then delete the claim, under its own (unrestricted) name.
#[test]
fn an_agent_cannot_give_a_protected_claim_a_ghost_owner() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "bypass-ghost");
    let agent = ns.agent("cursor-agent");
    let _guard = Guard::start(&ns, &agent);
    ns.pvc("data", true);
    let uid = std::fs::read_to_string("/proc/sys/kernel/random/uuid").unwrap();
    let out = ns.kubectl_as(
        &agent,
        &[
            "patch",
            "pvc",
            "data",
            "--type=merge",
            "-p",
            &format!(
                r#"{{"metadata":{{"ownerReferences":[{{"apiVersion":"v1","kind":"ConfigMap","name":"ghost","uid":"{}"}}]}}}}"#,
                uid.trim()
            ),
        ],
    );
    let mut failures = Vec::new();
    failures.extend(refused(&out, "the agent's ghost owner on the protected claim").err());
    // The garbage collector acts within seconds of seeing an absent owner: the claim must
    // stay, without owners, for all of them.
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        let owners = stdout(&ns.kubectl(&[
            "get",
            "pvc",
            "data",
            "-o",
            "jsonpath={.metadata.ownerReferences}",
        ]));
        if !ns.pvc_intact("data") {
            failures.push(format!(
                "the protected claim is deleted or being deleted (owners: {owners:?})"
            ));
            break;
        }
        if !owners.trim().is_empty() {
            failures.push(format!("the protected claim has owners: {owners}"));
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_all(failures);
}

/// A policy protects claims by label; the agent removes the label, after which the claim is
/// no longer protected. A label change that keeps the claim selected is the agent's business.
#[test]
fn an_agent_cannot_relabel_a_claim_out_of_a_selector_policy() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "bypass-relabel");
    let agent = ns.agent("cursor-agent");
    let _guard = Guard::start(&ns, &agent);
    cluster.apply(&format!(
        "apiVersion: agentguard.dev/v1alpha1\nkind: ProtectedResource\nmetadata:\n  name: orders\n  namespace: {}\n\
         spec:\n  mode: Enforce\n  targets:\n    - apiGroups: [\"\"]\n      kinds: [PersistentVolumeClaim]\n      \
         selector: {{matchLabels: {{app: orders-db}}}}\n",
        ns.name
    ));
    ns.wait_policy_ready("orders");
    ns.pvc("data-0", false);
    ns.kubectl_ok(&["label", "pvc", "data-0", "app=orders-db"]);
    wait_until(
        Duration::from_secs(30),
        "the orders policy in force",
        || {
            stderr(&ns.kubectl_as(&agent, &["delete", "pvc", "data-0", "--dry-run=server"]))
                .contains(&format!(
                    "Protected by ProtectedResource {}/orders",
                    ns.name
                ))
        },
    );

    let mut failures = Vec::new();
    let out = ns.kubectl_as(&agent, &["label", "pvc", "data-0", "tier=hot"]);
    if !out.status.success() {
        failures.push(format!(
            "a label that keeps the claim selected was refused: {}",
            stderr(&out)
        ));
    }
    let out = ns.kubectl_as(&agent, &["label", "pvc", "data-0", "app-"]);
    failures.extend(refused(&out, "the agent's removal of the selected label").err());
    let app = stdout(&ns.kubectl(&[
        "get",
        "pvc",
        "data-0",
        "-o",
        "jsonpath={.metadata.labels.app}",
    ]));
    if app != "orders-db" {
        failures.push(format!("the claim's label app is now {app:?}"));
    }
    assert!(ns.pvc_intact("data-0"), "the protected claim was deleted");
    assert_all(failures);
}

/// The status subresource carries metadata too: the agent forges an approval, and removes the
/// protection, through it.
#[test]
fn an_agent_cannot_change_guard_metadata_through_the_status_subresource() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "bypass-status");
    let agent = ns.agent("cursor-agent");
    // `edit` has no claim status; the route needs it.
    ns.grant("cursor-agent", "persistentvolumeclaims/status");
    let _guard = Guard::start(&ns, &agent);
    ns.pvc("data", true);
    let through_status = |body: String| {
        ns.kubectl_as(
            &agent,
            &[
                "patch",
                "pvc",
                "data",
                "--subresource=status",
                "--type=merge",
                "-p",
                &body,
            ],
        )
    };

    let mut failures = Vec::new();
    let forged = through_status(format!(
        r#"{{"metadata":{{"annotations":{{"agentguard.dev/approved-by":"{HUMAN}","agentguard.dev/approved-until":"{}"}}}}}}"#,
        in_secs(300)
    ));
    failures.extend(refused(&forged, "an approval through status").err());
    let unprotect =
        through_status(r#"{"metadata":{"annotations":{"agentguard.dev/protected":null}}}"#.into());
    failures.extend(refused(&unprotect, "removing the protection through status").err());
    let by = annotation_of(&ns, "pvc/data", "agentguard.dev/approved-by");
    if !by.is_empty() {
        failures.push(format!("the claim carries an approval by {by:?}"));
    }
    let protected = annotation_of(&ns, "pvc/data", "agentguard.dev/protected");
    if protected != "true" {
        failures.push(format!("agentguard.dev/protected is now {protected:?}"));
    }
    assert!(ns.pvc_intact("data"), "the protected claim was deleted");
    assert_all(failures);
}

/// agentguard with failurePolicy Ignore, so that a write can land while it is down.
fn ignore() -> GuardOptions {
    GuardOptions {
        failure_policy: Some("Ignore"),
        ..Default::default()
    }
}

/// An approval agentguard never saw (written while it was down, failurePolicy Ignore) has no
/// seal, and counts for nothing once it is back.
#[test]
fn an_approval_written_while_the_webhook_was_down_does_not_count() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "bypass-unsealed");
    let agent = ns.agent("cursor-agent");
    let options = ignore();
    let mut guard = Guard::start_with(&ns, &agent, &options);
    ns.pvc("data", true);

    guard.kill();
    ns.kubectl_ok(&[
        "annotate",
        "pvc",
        "data",
        &format!("agentguard.dev/approved-by={ADMIN}"),
        &format!("agentguard.dev/approved-until={}", in_secs(300)),
    ]);
    assert_eq!(
        annotation_of(&ns, "pvc/data", "agentguard.dev/approval-seal"),
        "",
        "nothing sealed the approval while agentguard was down"
    );
    guard.respawn(&ns, &options);
    guard.wait_enforcing(&ns, &agent);

    let out = ns.kubectl_as(&agent, &["delete", "pvc", "data", "--dry-run=server"]);
    let mut failures = Vec::new();
    failures.extend(refused(&out, "the agent's delete under an unsealed approval").err());
    // Refused, it must also say why: the agent is to ask for a real approval, not retry.
    if !out.status.success() && !stderr(&out).to_lowercase().contains("not sealed") {
        failures.push(format!(
            "the denial does not say the approval is not sealed: {}",
            stderr(&out)
        ));
    }
    assert!(ns.pvc_intact("data"), "the protected claim was deleted");
    assert_all(failures);
}

/// A seal is for one object: a human's genuine approval of claim A, seal included, copied
/// onto claim B while agentguard is down, does not approve B. A's approval still counts.
#[test]
fn a_seal_copied_to_another_claim_does_not_count() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "bypass-copied");
    let agent = ns.agent("cursor-agent");
    let options = ignore();
    let mut guard = Guard::start_with(&ns, &agent, &options);
    ns.pvc("a", true);
    ns.pvc("b", true);
    // A human approves A through agentguard, which seals it.
    ns.kubectl_ok(&[
        "annotate",
        "pvc",
        "a",
        &format!("agentguard.dev/approved-by={ADMIN}"),
        &format!("agentguard.dev/approved-until={}", in_secs(300)),
    ]);
    let keys = [
        "agentguard.dev/approved-by",
        "agentguard.dev/approved-until",
        "agentguard.dev/approval-seal",
    ];
    let copied: Vec<String> = keys
        .iter()
        .map(|k| format!("{k}={}", annotation_of(&ns, "pvc/a", k)))
        .collect();

    guard.kill();
    let mut args = vec!["annotate", "pvc", "b"];
    args.extend(copied.iter().map(String::as_str));
    ns.kubectl_ok(&args);
    guard.respawn(&ns, &options);
    guard.wait_enforcing(&ns, &agent);

    let mut failures = Vec::new();
    let out = ns.kubectl_as(&agent, &["delete", "pvc", "b", "--dry-run=server"]);
    failures.extend(refused(&out, "the agent's delete of B under A's copied approval").err());
    let seal = annotation_of(&ns, "pvc/a", "agentguard.dev/approval-seal");
    if !seal.starts_with("v1:") {
        failures.push(format!(
            "the human's approval of A was not sealed (approval-seal {seal:?})"
        ));
    }
    let out = ns.kubectl_as(&agent, &["delete", "pvc", "a", "--dry-run=server"]);
    if !out.status.success() {
        failures.push(format!(
            "the agent's delete of A, genuinely approved, was refused: {}",
            stderr(&out)
        ));
    }
    assert!(
        ns.pvc_intact("a") && ns.pvc_intact("b"),
        "a claim was deleted"
    );
    assert_all(failures);
}
