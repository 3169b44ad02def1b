//! End-to-end: `kubectl agentguard agent create|list|token|revoke` and the chart's
//! `agentCredentials` against the real API server. An agent's kubeconfig works in the namespaces
//! named and nowhere else, its protected deletions are denied because of its label alone, its
//! token expires and dies with its ServiceAccount, and `create` converges.
//!
//! The chart's preset ClusterRoles have fixed names, and a leftover one would stop
//! `tests/e2e_chart.rs` from installing the chart; so each test applies the chart's rendering of
//! `templates/agent-roles.yaml` under names of its own (deleted when it ends) and passes them
//! with `--role`. Each test has its own agents namespace (`--agents-namespace`). Requires
//! `hack/cluster.sh up`; fails (never skips) when the control plane is absent.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;
use support::{Cluster, Guard, GuardOptions, TestNamespace, stderr, stdout, wait_until};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/agentguard");

/// Runs `kubectl agentguard` with this kubeconfig.
fn plugin(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kubectl-agentguard"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .env_remove("KUBECONFIG")
        .env_remove("AGENTGUARD_NAMESPACE")
        .env_remove("AGENTGUARD_AGENTS_NAMESPACE")
        .output()
        .expect("run kubectl-agentguard")
}

fn plugin_ok(kubeconfig: &Path, args: &[&str]) -> String {
    let out = plugin(kubeconfig, args);
    assert!(
        out.status.success(),
        "kubectl agentguard {args:?} failed ({:?}): {}{}",
        out.status.code(),
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// kubectl with the agent's kubeconfig (and nothing of the admin's).
fn as_agent(cluster: &Cluster, kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new(cluster.kubectl_path())
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .expect("run kubectl")
}

/// A name for this test's agents namespace, deleted when the test ends (the plugin creates it).
fn agents_namespace(ns: &TestNamespace<'_>) -> String {
    let name = format!("{}-agents", ns.name);
    ns.owns_cluster_object(&format!("namespace/{name}"));
    name
}

fn username(agents_ns: &str, name: &str) -> String {
    format!("system:serviceaccount:{agents_ns}:{name}")
}

/// `kubectl auth can-i` as the admin, asking about `user` (a SubjectAccessReview).
fn can_i_as(cluster: &Cluster, user: &str, args: &[&str]) -> bool {
    let as_flag = format!("--as={user}");
    let mut all = vec!["auth", "can-i", as_flag.as_str()];
    all.extend_from_slice(args);
    let out = cluster.kubectl(&all);
    match stdout(&out).trim() {
        "yes" => true,
        "no" => false,
        other => panic!("can-i {args:?}: {other:?} {}", stderr(&out)),
    }
}

fn whoami(cluster: &Cluster, kubeconfig: &Path) -> Output {
    as_agent(
        cluster,
        kubeconfig,
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ],
    )
}

fn forbidden(out: &Output) -> bool {
    !out.status.success() && stderr(out).to_ascii_lowercase().contains("forbidden")
}

fn unauthorized(out: &Output) -> bool {
    !out.status.success() && stderr(out).contains("Unauthorized")
}

/// The token in an agent kubeconfig.
fn token_of(kubeconfig: &Path) -> String {
    let config: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(kubeconfig).unwrap()).unwrap();
    config["users"][0]["user"]["token"]
        .as_str()
        .expect("a token")
        .to_owned()
}

fn b64url() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

fn jwt_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&b64url().decode(payload).unwrap()).unwrap()
}

fn seconds(rfc3339: &str) -> i64 {
    rfc3339
        .parse::<jiff::Timestamp>()
        .unwrap_or_else(|e| panic!("{rfc3339:?}: {e}"))
        .as_second()
}

/// The RoleBindings labelled as the agent's: (namespace, name, ClusterRole, uid), sorted.
fn labelled_bindings(
    cluster: &Cluster,
    agents_ns: &str,
    name: &str,
) -> Vec<(String, String, String, String)> {
    let out = cluster.kubectl_ok(&[
        "get",
        "rolebindings",
        "-A",
        "-l",
        &format!("agentguard.dev/agent-name={name},agentguard.dev/agent-namespace={agents_ns}"),
        "-o",
        "json",
    ]);
    let list: Value = serde_json::from_str(&out).unwrap();
    let mut rows: Vec<_> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            (
                s(&b["metadata"]["namespace"]),
                s(&b["metadata"]["name"]),
                s(&b["roleRef"]["name"]),
                s(&b["metadata"]["uid"]),
            )
        })
        .collect();
    rows.sort();
    rows
}

fn sa_field(cluster: &Cluster, agents_ns: &str, name: &str, path: &str) -> String {
    cluster.kubectl_ok(&[
        "get",
        "serviceaccount",
        name,
        "-n",
        agents_ns,
        "-o",
        &format!("jsonpath={path}"),
    ])
}

#[test]
fn an_agents_kubeconfig_works_only_where_it_was_bound_and_its_label_makes_it_an_agent() {
    let cluster = Cluster::connect();
    // kubectl auth can-i resolves volumesnapshots through discovery: the CSI snapshot CRDs
    // must be served, as on a cluster with snapshots.
    cluster.install_third_party_crds();
    let ns = TestNamespace::create(&cluster, "agent-scope");
    let elsewhere = TestNamespace::create(&cluster, "agent-elsewhere");
    let (edit, _) = ns.install_agent_roles();
    let agents_ns = agents_namespace(&ns);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bot.kubeconfig");

    let printed = plugin_ok(
        &cluster.kubeconfig,
        &[
            "agent",
            "create",
            "bot",
            "--agents-namespace",
            &agents_ns,
            "--namespaces",
            &ns.name,
            "--role",
            &edit,
            "--ttl",
            "1h",
            "--kubeconfig-out",
            file.to_str().unwrap(),
        ],
    );
    let user = username(&agents_ns, "bot");
    for needle in [
        format!("namespace/{agents_ns} created"),
        format!("serviceaccount/bot created in {agents_ns} (labelled agentguard.dev/agent=true"),
        format!(
            "rolebinding/agentguard-agent-bot created in {} (ClusterRole {edit})",
            ns.name
        ),
        format!("a token for {user}, namespace {}", ns.name),
        "(in 1h); the API server refuses it after that".to_owned(),
        format!("export KUBECONFIG={}", file.display()),
        "to Kubernetes, an agent holding your credentials is you".to_owned(),
    ] {
        assert!(printed.contains(&needle), "no {needle:?} in:\n{printed}");
    }
    eprintln!("--- create printed:\n{printed}");

    // The file: private, the token only, the admin's cluster, the first namespace.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains("client-key") && !text.contains("client-certificate"));
    let config: Value = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(config["contexts"][0]["context"]["namespace"], ns.name);
    assert_eq!(
        sa_field(
            &cluster,
            &agents_ns,
            "bot",
            "{.metadata.labels.agentguard\\.dev/agent}"
        ),
        "true"
    );
    assert_eq!(
        sa_field(
            &cluster,
            &agents_ns,
            "bot",
            "{.automountServiceAccountToken}"
        ),
        "false"
    );
    // TokenRequest tokens are never stored: no token Secret exists for the agent.
    let secrets = cluster.kubectl_ok(&["get", "secrets", "-n", &agents_ns, "-o", "name"]);
    assert!(secrets.trim().is_empty(), "{secrets}");

    let out = whoami(&cluster, &file);
    assert_eq!(stdout(&out), user, "{}", stderr(&out));

    // Real requests: its namespace yes, elsewhere no.
    let ok = as_agent(
        &cluster,
        &file,
        &["create", "configmap", "notes", "--from-literal=a=b"],
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
    let ok = as_agent(&cluster, &file, &["get", "pods"]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    for args in [
        vec!["get", "pods", "-n", elsewhere.name.as_str()],
        vec!["create", "configmap", "x", "-n", elsewhere.name.as_str()],
        vec!["get", "secrets"],
        vec!["get", "namespaces"],
        vec![
            "create",
            "rolebinding",
            "me",
            "--clusterrole=admin",
            "--user=x",
        ],
        vec!["create", "token", "default"],
        vec!["get", "serviceaccount", "bot", "-n", agents_ns.as_str()],
    ] {
        let out = as_agent(&cluster, &file, &args);
        assert!(
            forbidden(&out),
            "{args:?}: {}{}",
            stdout(&out),
            stderr(&out)
        );
    }

    // SubjectAccessReviews (kubectl auth can-i --as): what the role allows and leaves out.
    let here = ns.name.as_str();
    let there = elsewhere.name.as_str();
    let ns_here = format!("namespaces/{here}");
    let cases: &[(&[&str], bool)] = &[
        (&["create", "deployments.apps", "-n", here], true),
        (&["delete", "persistentvolumeclaims", "-n", here], true),
        (
            &[
                "create",
                "volumesnapshots.snapshot.storage.k8s.io",
                "-n",
                here,
            ],
            true,
        ),
        (
            &[
                "delete",
                "volumesnapshots.snapshot.storage.k8s.io",
                "-n",
                here,
            ],
            false,
        ),
        (
            &["create", "deletionrequests.agentguard.dev", "-n", here],
            true,
        ),
        (&["get", "pods", "--subresource=log", "-n", here], true),
        (&["list", "pods", "-n", there], false),
        (&["create", "deployments.apps", "-n", there], false),
        (&["get", "secrets", "-n", here], false),
        (&["list", "secrets", "-n", here], false),
        (&["create", "secrets", "-n", here], false),
        (
            &[
                "create",
                "serviceaccounts",
                "--subresource=token",
                "-n",
                here,
            ],
            false,
        ),
        (&["create", "serviceaccounts", "-n", here], false),
        (&["create", "pods", "--subresource=exec", "-n", here], false),
        (
            &["create", "pods", "--subresource=portforward", "-n", here],
            false,
        ),
        (&["impersonate", "serviceaccounts", "-n", here], false),
        (
            &[
                "create",
                "rolebindings.rbac.authorization.k8s.io",
                "-n",
                here,
            ],
            false,
        ),
        (&["bind", "clusterroles.rbac.authorization.k8s.io"], false),
        (&["delete", &ns_here], false),
        (
            &["delete", "customresourcedefinitions.apiextensions.k8s.io"],
            false,
        ),
        (
            &[
                "patch",
                "validatingwebhookconfigurations.admissionregistration.k8s.io",
            ],
            false,
        ),
        (
            &["delete", "networkpolicies.networking.k8s.io", "-n", here],
            false,
        ),
        (
            &["update", "protectedresources.agentguard.dev", "-n", here],
            false,
        ),
    ];
    for (args, expected) in cases {
        assert_eq!(can_i_as(&cluster, &user, args), *expected, "can-i {args:?}");
    }
    // The same questions from the agent's own kubeconfig (SelfSubjectAccessReview).
    for (args, expected) in [
        (vec!["create", "deployments.apps"], "yes"),
        (vec!["get", "secrets"], "no"),
        (vec!["list", "pods", "-n", there], "no"),
    ] {
        let mut all = vec!["auth", "can-i"];
        all.extend_from_slice(&args);
        let out = as_agent(&cluster, &file, &all);
        assert_eq!(stdout(&out).trim(), expected, "{args:?} {}", stderr(&out));
    }

    // The webhook denies its protected deletions because of the label alone: this agentguard's
    // agent definition matches no one.
    let options = GuardOptions {
        agent_service_accounts: Some("nobody/*".to_owned()),
        ..Default::default()
    };
    let _guard = Guard::start_with(&ns, &user, &options);
    ns.pvc("data", true);
    let out = as_agent(&cluster, &file, &["delete", "pvc", "data"]);
    assert!(!out.status.success(), "the agent deleted a protected claim");
    assert!(
        stderr(&out).contains(&format!(
            "agentguard: DENIED delete of PersistentVolumeClaim {}/data by {user}.",
            ns.name
        )),
        "{}",
        stderr(&out)
    );
    assert!(ns.pvc_intact("data"));
    // Its own, unprotected work it may remove.
    let out = as_agent(&cluster, &file, &["delete", "configmap", "notes"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn create_converges_and_list_flags_bindings_agentguard_did_not_make() {
    let cluster = Cluster::connect();
    let a = TestNamespace::create(&cluster, "agent-a");
    let b = TestNamespace::create(&cluster, "agent-b");
    let c = TestNamespace::create(&cluster, "agent-c");
    let (edit, view) = a.install_agent_roles();
    let agents_ns = agents_namespace(&a);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bot.kubeconfig");
    let create = |namespaces: &str, role: &str| {
        plugin_ok(
            &cluster.kubeconfig,
            &[
                "agent",
                "create",
                "bot",
                "--agents-namespace",
                &agents_ns,
                "--namespaces",
                namespaces,
                "--role",
                role,
                "--ttl",
                "10m",
                "--kubeconfig-out",
                file.to_str().unwrap(),
            ],
        )
    };
    let uid = || sa_field(&cluster, &agents_ns, "bot", "{.metadata.uid}");

    create(&format!("{},{}", a.name, b.name), &edit);
    let first_uid = uid();
    let first = labelled_bindings(&cluster, &agents_ns, "bot");
    assert_eq!(
        first
            .iter()
            .map(|(ns, name, role, _)| (ns.as_str(), name.as_str(), role.as_str()))
            .collect::<Vec<_>>(),
        [
            (a.name.as_str(), "agentguard-agent-bot", edit.as_str()),
            (b.name.as_str(), "agentguard-agent-bot", edit.as_str()),
        ]
    );
    let first_token = dir.path().join("first.kubeconfig");
    std::fs::copy(&file, &first_token).unwrap();

    // Again: the same ServiceAccount, the same bindings (not re-created), nothing added.
    let again = create(&format!("{},{}", a.name, b.name), &edit);
    assert!(again.contains("serviceaccount/bot unchanged"), "{again}");
    assert!(again.contains(&format!(
        "rolebinding/agentguard-agent-bot unchanged in {}",
        a.name
    )));
    assert_eq!(uid(), first_uid);
    assert_eq!(labelled_bindings(&cluster, &agents_ns, "bot"), first);
    let sas = cluster.kubectl_ok(&[
        "get",
        "serviceaccounts",
        "-n",
        &agents_ns,
        "-l",
        "agentguard.dev/agent=true",
        "-o",
        "name",
    ]);
    assert_eq!(sas.trim(), "serviceaccount/bot");

    // b,c: a's binding goes, c's comes, b's stays as it was.
    let moved = create(&format!("{},{}", b.name, c.name), &edit);
    assert!(
        moved.contains(&format!(
            "rolebinding/agentguard-agent-bot deleted in {} (namespace no longer named)",
            a.name
        )),
        "{moved}"
    );
    assert!(moved.contains("serviceaccount/bot updated"), "{moved}");
    assert_eq!(uid(), first_uid);
    let now = labelled_bindings(&cluster, &agents_ns, "bot");
    assert_eq!(
        now.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
        [b.name.as_str(), c.name.as_str()]
    );
    assert_eq!(now[0], first[1], "b's binding was re-created");
    assert_eq!(
        sa_field(
            &cluster,
            &agents_ns,
            "bot",
            "{.metadata.annotations.agentguard\\.dev/agent-namespaces}"
        ),
        format!("{},{}", b.name, c.name)
    );
    // The token issued first is the same identity: it now works in c and no longer in a.
    wait_until(
        Duration::from_secs(5),
        "a's binding to stop counting",
        || {
            forbidden(&as_agent(
                &cluster,
                &first_token,
                &["get", "configmaps", "-n", &a.name],
            ))
        },
    );
    let in_c = as_agent(
        &cluster,
        &first_token,
        &["get", "configmaps", "-n", &c.name],
    );
    assert!(in_c.status.success(), "{}", stderr(&in_c));

    // Another role: bindings replaced (roleRef cannot change in place).
    let viewed = create(&format!("{},{}", b.name, c.name), &view);
    assert!(
        viewed.contains(&format!(
            "rolebinding/agentguard-agent-bot replaced in {} (ClusterRole {view}, was ClusterRole/{edit})",
            b.name
        )),
        "{viewed}"
    );
    let now = labelled_bindings(&cluster, &agents_ns, "bot");
    assert!(now.iter().all(|r| r.2 == view), "{now:?}");
    assert!(!can_i_as(
        &cluster,
        &username(&agents_ns, "bot"),
        &["create", "configmaps", "-n", &b.name]
    ));

    // A binding made by hand naming the agent: list flags it, revoke leaves it and says so.
    a.kubectl_ok(&[
        "create",
        "rolebinding",
        "extra",
        "--clusterrole=admin",
        &format!("--serviceaccount={agents_ns}:bot"),
    ]);
    let listed = plugin_ok(
        &cluster.kubeconfig,
        &["agent", "list", "--agents-namespace", &agents_ns],
    );
    eprintln!("--- list printed:\n{listed}");
    let row = listed
        .lines()
        .find(|l| l.starts_with(&format!("{agents_ns}/bot ")))
        .unwrap_or_else(|| panic!("no row for the agent in:\n{listed}"));
    for needle in [
        view.as_str(),
        &format!("{},{}", b.name, c.name),
        "kubectl-agentguard",
        &format!(
            "RoleBinding/{}/extra -> ClusterRole/admin not made by agentguard",
            a.name
        ),
    ] {
        assert!(row.contains(needle), "no {needle:?} in {row:?}");
    }
    let json: Value = serde_json::from_str(&plugin_ok(
        &cluster.kubeconfig,
        &[
            "agent",
            "list",
            "--agents-namespace",
            &agents_ns,
            "-o",
            "json",
        ],
    ))
    .unwrap();
    let agent = json
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["namespace"] == agents_ns.as_str() && a["name"] == "bot")
        .unwrap();
    assert_eq!(agent["otherBindings"][0]["name"], "extra");
    assert_eq!(agent["bound"].as_array().unwrap().len(), 2);

    let out = plugin(
        &cluster.kubeconfig,
        &["agent", "revoke", "bot", "--agents-namespace", &agents_ns],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "warning: RoleBinding/{}/extra -> ClusterRole/admin still names {agents_ns}/bot",
            a.name
        )),
        "{}",
        stderr(&out)
    );
    assert!(labelled_bindings(&cluster, &agents_ns, "bot").is_empty());
}

fn join<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<&'a str> {
    [a, b].concat()
}

/// Signs `header.claims` with the local control plane's service-account key (RS256), as the
/// API server signs its tokens.
fn sign(cluster: &Cluster, header: &str, claims: &Value) -> String {
    let key = cluster.kubeconfig.parent().unwrap().join("pki/sa.key");
    assert!(key.exists(), "no {}", key.display());
    let input = format!(
        "{header}.{}",
        b64url().encode(serde_json::to_vec(claims).unwrap())
    );
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(&key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run openssl");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    format!("{input}.{}", b64url().encode(out.stdout))
}

#[test]
fn tokens_expire_and_revoke_cuts_every_one_off() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "agent-ttl");
    let (edit, _) = ns.install_agent_roles();
    let agents_ns = agents_namespace(&ns);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bot.kubeconfig");
    let path = file.to_str().unwrap();
    let base = ["agent", "--agents-namespace", agents_ns.as_str()];

    // Out of bounds: refused before anything is made.
    for (ttl, needle) in [("5m", "shorter than 10m"), ("25h", "longer than 24h")] {
        let out = plugin(
            &cluster.kubeconfig,
            &join(
                &base,
                &[
                    "create",
                    "bot",
                    "--namespaces",
                    &ns.name,
                    "--ttl",
                    ttl,
                    "--kubeconfig-out",
                    path,
                ],
            ),
        );
        assert_eq!(out.status.code(), Some(2), "{ttl}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{}", stderr(&out));
        assert!(!file.exists());
    }

    let out = plugin(
        &cluster.kubeconfig,
        &join(
            &base,
            &[
                "create",
                "bot",
                "--namespaces",
                &ns.name,
                "--kubeconfig-out",
                "/nonexistent/bot.kubeconfig",
            ],
        ),
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not a file in an existing directory"),
        "{}",
        stderr(&out)
    );
    assert!(
        !cluster
            .kubectl(&["get", "namespace", &agents_ns])
            .status
            .success(),
        "usage errors change nothing"
    );

    // The shortest the API server issues: 10 minutes, read back from the token itself.
    let json: Value = serde_json::from_str(&plugin_ok(
        &cluster.kubeconfig,
        &join(
            &base,
            &[
                "create",
                "bot",
                "--namespaces",
                &ns.name,
                "--role",
                &edit,
                "--ttl",
                "10m",
                "--kubeconfig-out",
                path,
                "-o",
                "json",
            ],
        ),
    ))
    .unwrap();
    let token = token_of(&file);
    let claims = jwt_claims(&token);
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert_eq!(exp - iat, 600, "{claims}");
    assert_eq!(seconds(json["expiresAt"].as_str().unwrap()), exp);
    assert_eq!(json["requestedTtlSeconds"], 600);
    assert_eq!(claims["sub"], username(&agents_ns, "bot"));
    assert_eq!(
        claims["kubernetes.io"]["serviceaccount"]["uid"], json["uid"],
        "the token names this ServiceAccount's uid"
    );
    let now = jiff::Timestamp::now().as_second();
    assert!((now - 5..=now + 5).contains(&iat), "iat {iat}, now {now}");

    // `token` prints the expiry the API server set, the same as in the JWT.
    let fresh = dir.path().join("fresh.kubeconfig");
    let printed = plugin_ok(
        &cluster.kubeconfig,
        &join(
            &base,
            &[
                "token",
                "bot",
                "--ttl",
                "10m",
                "--kubeconfig-out",
                fresh.to_str().unwrap(),
            ],
        ),
    );
    let fresh_exp = jwt_claims(&token_of(&fresh))["exp"].as_i64().unwrap();
    let printed_at = printed
        .lines()
        .find_map(|l| l.strip_prefix("it expires at "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no expiry in:\n{printed}"));
    assert_eq!(seconds(printed_at), fresh_exp, "{printed}");
    assert!(printed.contains("(in 10m)"), "{printed}");

    // An expired token is refused: the same claims re-signed with the cluster's own key pass,
    // and with the validity window moved an hour into the past they are refused.
    let header = token.split('.').next().unwrap();
    let resigned = sign(&cluster, header, &claims);
    let server = cluster.kubectl_ok(&[
        "config",
        "view",
        "--raw",
        "-o",
        "jsonpath={.clusters[0].cluster.server}",
    ]);
    let with_token = |token: &str| {
        as_agent(
            &cluster,
            Path::new("/dev/null"),
            &[
                &format!("--server={server}"),
                "--insecure-skip-tls-verify",
                &format!("--token={token}"),
                "auth",
                "whoami",
                "-o",
                "jsonpath={.status.userInfo.username}",
            ],
        )
    };
    let out = with_token(&resigned);
    assert_eq!(
        stdout(&out),
        username(&agents_ns, "bot"),
        "{}",
        stderr(&out)
    );
    let mut past = claims.clone();
    past["iat"] = (iat - 4200).into();
    past["nbf"] = (iat - 4200).into();
    past["exp"] = (iat - 3600).into();
    let out = with_token(&sign(&cluster, header, &past));
    assert!(
        unauthorized(&out),
        "an expired token passed: {}",
        stderr(&out)
    );

    // Revoke: the bindings go first (authorization fails at once), then the ServiceAccount; a
    // token the API server has not seen in the last 10 s is refused outright at once, one used
    // just before within the API server's 10 s token cache.
    let out = whoami(&cluster, &file);
    assert!(out.status.success(), "{}", stderr(&out));
    let revoked_at = Instant::now();
    let printed = plugin_ok(&cluster.kubeconfig, &join(&base, &["revoke", "bot"]));
    eprintln!("--- revoke printed:\n{printed}");
    assert!(
        printed.contains(&format!("serviceaccount/bot deleted in {agents_ns}")),
        "{printed}"
    );
    let out = whoami(&cluster, &fresh);
    assert!(
        unauthorized(&out),
        "an unused token still authenticates: {}",
        stderr(&out)
    );
    wait_until(
        Duration::from_secs(5),
        "the used token to lose its rights",
        || {
            forbidden(&as_agent(&cluster, &file, &["get", "pods"]))
                || unauthorized(&as_agent(&cluster, &file, &["get", "pods"]))
        },
    );
    wait_until(
        Duration::from_secs(15),
        "the used token to be refused",
        || unauthorized(&whoami(&cluster, &file)),
    );
    let elapsed = revoked_at.elapsed();
    eprintln!("used token refused {elapsed:?} after revoke");
    assert!(elapsed < Duration::from_secs(12), "{elapsed:?}");
    assert!(labelled_bindings(&cluster, &agents_ns, "bot").is_empty());

    let out = plugin(
        &cluster.kubeconfig,
        &join(&base, &["token", "bot", "--kubeconfig-out", path]),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no agent bot"), "{}", stderr(&out));

    // The same name again is a new ServiceAccount (new uid): the old tokens stay dead.
    plugin_ok(
        &cluster.kubeconfig,
        &join(
            &base,
            &[
                "create",
                "bot",
                "--namespaces",
                &ns.name,
                "--role",
                &edit,
                "--ttl",
                "10m",
                "--kubeconfig-out",
                fresh.to_str().unwrap(),
            ],
        ),
    );
    assert_ne!(
        sa_field(&cluster, &agents_ns, "bot", "{.metadata.uid}"),
        json["uid"].as_str().unwrap()
    );
    assert!(whoami(&cluster, &fresh).status.success());
    assert!(unauthorized(&whoami(&cluster, &file)));
    assert!(unauthorized(&with_token(&resigned)));
}

#[test]
fn chart_declared_agents_are_audited_listed_and_served_tokens() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "agent-chart");
    let (edit, _) = ns.install_agent_roles();
    let agents_ns = agents_namespace(&ns);
    ns.pvc("data", true);
    let out = Command::new(cluster.tools.join("helm"))
        .args([
            "template",
            "agentguard",
            CHART,
            "-n",
            "agentguard",
            "--kube-version",
            "1.36.3",
            "--show-only",
            "templates/agents.yaml",
            "--set",
            &format!("agentCredentials.namespace={agents_ns}"),
            "--set",
            "agentCredentials.agents[0].name=declared",
            "--set",
            &format!("agentCredentials.agents[0].namespaces={{{}}}", ns.name),
            "--set",
            &format!("agentCredentials.agents[0].role={edit}"),
        ])
        .output()
        .expect("run helm");
    assert!(out.status.success(), "helm template: {}", stderr(&out));
    cluster.apply(&stdout(&out));

    // audit counts it as a restricted identity because of its label (the definition given
    // matches no one), and the preset role gives it no way around the guard.
    let audit = |output: &str| {
        plugin(
            &cluster.kubeconfig,
            &[
                "audit",
                "--agent-service-accounts=nobody/none",
                &format!("--only={agents_ns}/declared"),
                &format!("--webhook-configuration-name=absent-{}", ns.name),
                "-o",
                output,
            ],
        )
    };
    let out = audit("json");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let identities = report["identities"].as_array().unwrap();
    assert_eq!(identities.len(), 1, "{identities:?}");
    let identity = identities[0].to_string();
    assert!(
        identity.contains(&format!("sa:{agents_ns}/declared")),
        "{identity}"
    );
    assert!(identity.contains("labelled"), "{identity}");
    let table = audit("table");
    eprintln!("--- audit printed:\n{}", stdout(&table));
    let row = stdout(&table)
        .lines()
        .find(|l| l.starts_with(&format!("sa:{agents_ns}/declared ")))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no row in:\n{}", stdout(&table)));
    for needle in [
        " info ",
        "delete persistentvolumeclaims (1 protected)",
        &format!("RoleBinding/agentguard-agent-declared -> ClusterRole/{edit}"),
    ] {
        assert!(row.contains(needle), "no {needle:?} in {row:?}");
    }
    assert!(
        stdout(&table).contains("0 bypass findings"),
        "{}",
        stdout(&table)
    );

    let listed = plugin_ok(
        &cluster.kubeconfig,
        &["agent", "list", "--agents-namespace", &agents_ns],
    );
    let row = listed
        .lines()
        .find(|l| l.starts_with(&format!("{agents_ns}/declared ")))
        .unwrap_or_else(|| panic!("no row in:\n{listed}"));
    assert!(
        row.contains(&edit) && row.contains(&ns.name) && row.contains("Helm"),
        "{row}"
    );

    // The plugin mints its tokens, and leaves its definition to the chart.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("declared.kubeconfig");
    plugin_ok(
        &cluster.kubeconfig,
        &[
            "agent",
            "token",
            "declared",
            "--agents-namespace",
            &agents_ns,
            "--ttl",
            "10m",
            "--kubeconfig-out",
            file.to_str().unwrap(),
        ],
    );
    let out = whoami(&cluster, &file);
    assert_eq!(
        stdout(&out),
        username(&agents_ns, "declared"),
        "{}",
        stderr(&out)
    );
    let out = as_agent(&cluster, &file, &["get", "pvc", "data"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = plugin(
        &cluster.kubeconfig,
        &[
            "agent",
            "create",
            "declared",
            "--agents-namespace",
            &agents_ns,
            "--namespaces",
            &ns.name,
            "--role",
            &edit,
            "--kubeconfig-out",
            file.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("declared in the agentguard chart's values"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_agents_kubeconfig_carries_a_certificate_authority_file_inline() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "agent-ca");
    let (_, view) = ns.install_agent_roles();
    let agents_ns = agents_namespace(&ns);
    let dir = tempfile::tempdir().unwrap();

    // The admin's kubeconfig, with its CA in a file named by a relative path.
    let raw = |path: &str| {
        cluster.kubectl_ok(&[
            "config",
            "view",
            "--raw",
            "-o",
            &format!("jsonpath={{{path}}}"),
        ])
    };
    let ca = base64::engine::general_purpose::STANDARD
        .decode(raw(".clusters[0].cluster.certificate-authority-data"))
        .unwrap();
    std::fs::create_dir(dir.path().join("pki")).unwrap();
    std::fs::write(dir.path().join("pki/ca.crt"), &ca).unwrap();
    let human: PathBuf = dir.path().join("human.kubeconfig");
    std::fs::write(
        &human,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {server}\n    certificate-authority: pki/ca.crt\n\
             users:\n- name: admin\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\n\
             contexts:\n- name: other\n  context:\n    cluster: nowhere\n    user: admin\n- name: admin\n  context:\n    cluster: local\n    user: admin\n\
             current-context: other\n",
            server = raw(".clusters[0].cluster.server"),
            cert = raw(".users[0].user.client-certificate-data"),
            key = raw(".users[0].user.client-key-data"),
        ),
    )
    .unwrap();
    let file = dir.path().join("out/reader.kubeconfig");
    std::fs::create_dir(dir.path().join("out")).unwrap();
    let args = [
        "--context",
        "admin",
        "agent",
        "create",
        "reader",
        "--agents-namespace",
        &agents_ns,
        "--namespaces",
        &ns.name,
        "--role",
        &view,
        "--ttl",
        "10m",
        "--kubeconfig-out",
        file.to_str().unwrap(),
    ];
    plugin_ok(&human, &args);
    let config: Value = serde_saphyr::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let inline = config["clusters"][0]["cluster"]["certificate-authority-data"]
        .as_str()
        .unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(inline)
            .unwrap(),
        ca
    );
    assert!(
        config["clusters"][0]["cluster"]
            .get("certificate-authority")
            .is_none()
    );
    // It verifies the API server with that CA (no insecure flag), from any directory.
    let out = whoami(&cluster, &file);
    assert_eq!(
        stdout(&out),
        username(&agents_ns, "reader"),
        "{}",
        stderr(&out)
    );
    let out = as_agent(&cluster, &file, &["create", "configmap", "x"]);
    assert!(forbidden(&out), "view may not write: {}", stderr(&out));

    // Without --context the plugin's current context names a cluster that is not there.
    let out = plugin(&human, &args[2..]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("nowhere"), "{}", stderr(&out));
}
