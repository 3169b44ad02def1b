//! `helm install` as users run it, on the real node: the chart with its defaults and the image
//! `hack/image.sh agentguard` builds (imported into the node's containerd), two replicas Ready,
//! the API server calling the webhook through the chart's Service, leader election and
//! self-managed certificates in cluster, and an agent Pod refused a protected claim with the
//! standard message; `helm upgrade` from the previous release of the chart (a CRD change its
//! pre-upgrade hook applies, a changed value, a new image tag), a replica's deletion, a rolling
//! restart and a node drain lose no webhook call from a steady stream; `helm uninstall` leaves
//! the cluster usable. The release namespace enforces Pod Security `restricted`, and the
//! chart's own RBAC must be enough for everything the replicas do (no "forbidden" in their
//! logs, the default policy Ready, a PolicyReport written). One test: the chart's configuration
//! is cluster-wide. Needs `AGENTGUARD_NODE=1 hack/cluster.sh up`.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::{
    CHART, Cluster, Release, TestNamespace, free_port, node_image, stderr, stdout, wait_until,
};

/// Two threads calling the webhook as fast as kubectl goes: the agent's dry-run delete of the
/// protected claim (must be refused by agentguard) and a human's label on it (must succeed).
struct Stream {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<(usize, Vec<String>)>>,
}

impl Stream {
    fn start(apps: &TestNamespace, agent: &str) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let kubectl = apps.cluster.kubectl_path();
        let kubeconfig = apps.cluster.kubeconfig.clone();
        let ns = apps.name.clone();
        let threads = [Some(agent.to_owned()), None]
            .into_iter()
            .map(|as_agent| {
                let (stop, kubectl, kubeconfig, ns) = (
                    stop.clone(),
                    kubectl.clone(),
                    kubeconfig.clone(),
                    ns.clone(),
                );
                std::thread::spawn(move || {
                    let (mut ok, mut failed) = (0, Vec::new());
                    let mut i = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        i += 1;
                        let mut cmd = Command::new(&kubectl);
                        cmd.arg("--kubeconfig").arg(&kubeconfig).args(["-n", &ns]);
                        let out = match &as_agent {
                            Some(agent) => cmd
                                .args(["--as", agent, "delete", "pvc", "data", "--dry-run=server"])
                                .output(),
                            None => cmd
                                .args(["label", "pvc", "data", &format!("n={i}"), "--overwrite"])
                                .output(),
                        }
                        .expect("run kubectl");
                        let right = match &as_agent {
                            Some(_) => {
                                !out.status.success() && stderr(&out).contains("agentguard: DENIED")
                            }
                            None => out.status.success(),
                        };
                        if right {
                            ok += 1;
                        } else {
                            failed.push(stderr(&out));
                        }
                    }
                    (ok, failed)
                })
            })
            .collect();
        Self { stop, threads }
    }

    /// Stops the stream and asserts that at least `least` calls were answered during `what`
    /// and none failed.
    fn stop_losing_none(self, what: &str, least: usize) {
        let (ok, failed) = self.stop();
        eprintln!(
            "{what}: {ok} webhook calls answered, {} failed",
            failed.len()
        );
        assert!(ok >= least, "too few calls during {what}: {ok}");
        assert!(failed.is_empty(), "calls failed during {what}: {failed:#?}");
    }

    fn stop(self) -> (usize, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (mut ok, mut failed) = (0, Vec::new());
        for t in self.threads {
            let (o, f) = t.join().unwrap();
            ok += o;
            failed.extend(f);
        }
        (ok, failed)
    }
}

/// What the default policy tells an agent it refuses, given by the upgrade.
const MESSAGE: &str = "Ask in #storage before touching volumes.";

/// The two tests install releases whose webhooks judge the same namespaces: one at a time.
static ONE_RELEASE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The version a previous release of the chart carries here.
const PREVIOUS: &str = "0.0.9";

/// The chart as a previous release shipped it: version [`PREVIOUS`], no CRD hook (releases
/// before it had none), and CRDs whose policy schema has no `spec.message` yet, labelled
/// [`PREVIOUS`]. Those CRDs are put in the cluster as that release's install left them (Helm
/// skips `crds/` when the CRDs exist, as they do here). Returns the chart's directory.
fn previous_chart(cluster: &Cluster, dir: &std::path::Path) -> String {
    let chart = dir.join("agentguard");
    let copied = Command::new("cp")
        .args(["-r", CHART])
        .arg(&chart)
        .status()
        .unwrap();
    assert!(copied.success());
    std::fs::remove_file(chart.join("templates/crd-upgrade.yaml")).unwrap();
    let meta = std::fs::read_to_string(chart.join("Chart.yaml")).unwrap();
    let current = format!("\nversion: {}\n", env!("CARGO_PKG_VERSION"));
    assert!(meta.contains(&current), "Chart.yaml has no {current:?}");
    std::fs::write(
        chart.join("Chart.yaml"),
        meta.replace(&current, &format!("\nversion: {PREVIOUS}\n")),
    )
    .unwrap();
    let mut docs = String::new();
    for crd in agentguard::api::crds() {
        let mut crd = serde_json::to_value(crd).unwrap();
        crd["metadata"]["labels"][agentguard::api::CRD_VERSION_LABEL] = PREVIOUS.into();
        if let Some(spec) =
            crd.pointer_mut("/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties")
            && let Some(props) = spec.as_object_mut()
        {
            props.remove("message");
        }
        docs.push_str(&format!("---\n{crd}\n"));
    }
    let crds = chart.join("crds/agentguard.dev.yaml");
    std::fs::write(&crds, docs).unwrap();
    cluster.kubectl_ok(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        crds.to_str().unwrap(),
    ]);
    chart.to_str().unwrap().to_owned()
}

/// `spec.message` of the chart's default ClusterProtectedResource, as the API server serves it.
fn default_policy_message(cluster: &Cluster) -> String {
    cluster.kubectl_ok(&[
        "get",
        "clusterprotectedresource",
        "default-volumes",
        "-o",
        "jsonpath={.spec.message}",
    ])
}

/// What to read when a call to the replicas failed: their Pods, addresses and last log lines.
fn replicas_state(ns: &TestNamespace) -> String {
    let pods = ns.kubectl(&["get", "pods,endpointslices", "-o", "wide"]);
    let logs = ns.kubectl(&[
        "logs",
        "-l",
        "app.kubernetes.io/name=agentguard",
        "--tail=15",
        "--prefix",
    ]);
    format!("{}{}{}", stdout(&pods), stdout(&logs), stderr(&logs))
}

#[test]
fn helm_install_runs_agentguard_in_cluster() {
    let _one = ONE_RELEASE.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = Cluster::connect();
    // PolicyReports are written only where their CRDs are served.
    cluster.install_third_party_crds();
    node_image(&cluster, "agentguard", &[]);
    let kubectl_image = node_image(&cluster, "kubectl", &[]);
    let ns = TestNamespace::create(&cluster, "helm");
    ns.kubectl_ok(&[
        "label",
        "namespace",
        &ns.name,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/warn=restricted",
    ]);
    let apps = TestNamespace::create(&cluster, "helmapps");
    let agent = apps.agent("cursor-agent");
    apps.pvc("data", true);
    // Installed from the previous release of the chart, upgraded to this one below.
    let tmp = tempfile::tempdir().unwrap();
    let previous = previous_chart(&cluster, tmp.path());
    let installed = Instant::now();
    let out = cluster.helm(&[
        "install",
        "agentguard",
        &previous,
        "-n",
        &ns.name,
        "--set",
        &format!("agents.serviceAccounts={{{}/cursor-*}}", apps.name),
        "--wait",
        "--timeout",
        "4m",
    ]);
    let _release = Release {
        cluster: &cluster,
        name: "agentguard",
        namespace: ns.name.clone(),
    };
    assert!(
        out.status.success(),
        "helm install: {}{}\n{}",
        stdout(&out),
        stderr(&out),
        ns.kubectl(&["get", "pods", "-o", "wide"])
            .stdout
            .escape_ascii()
    );
    // Both replicas Ready, from the image built here.
    ns.kubectl_ok(&[
        "rollout",
        "status",
        "deployment/agentguard",
        "--timeout=120s",
    ]);
    let ready = ns.kubectl_ok(&[
        "get",
        "deployment",
        "agentguard",
        "-o",
        "jsonpath={.status.readyReplicas}",
    ]);
    assert_eq!(ready.trim(), "2");
    eprintln!(
        "helm install: both replicas Ready {:.1}s after install",
        installed.elapsed().as_secs_f64()
    );
    // In cluster: one replica holds the lease, the certificate Secret is agentguard's own, and
    // the webhook configuration points at the Service with that CA.
    let pods = ns.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/name=agentguard",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]);
    wait_until(Duration::from_secs(60), "a replica holds the lease", || {
        let holder = stdout(&ns.kubectl(&[
            "get",
            "lease",
            "-o",
            "jsonpath={.items[*].spec.holderIdentity}",
        ]));
        !holder.is_empty() && pods.split_whitespace().any(|p| holder.contains(p))
    });
    let service = cluster.kubectl_ok(&[
        "get",
        "validatingwebhookconfiguration",
        "agentguard",
        "-o",
        "jsonpath={.webhooks[0].clientConfig.service.name}/{.webhooks[0].clientConfig.service.namespace}",
    ]);
    assert_eq!(service, format!("agentguard/{}", ns.name));
    wait_until(Duration::from_secs(60), "the caBundle is set", || {
        !stdout(&cluster.kubectl(&[
            "get",
            "validatingwebhookconfiguration",
            "agentguard",
            "-o",
            "jsonpath={.webhooks[0].clientConfig.caBundle}",
        ]))
        .is_empty()
    });

    // An agent Pod with its mounted token: refused through the Service, word for word.
    let mut last = String::new();
    wait_until(Duration::from_secs(60), "the agent Pod is refused", || {
        let (phase, log) = apps.run_pod(
            &kubectl_image,
            "cursor-agent",
            &["delete", "pvc", "data", "--dry-run=server"],
        );
        last = log.clone();
        phase == "Failed" && log.contains("agentguard: DENIED")
    });
    assert!(
        last.contains(&format!(
            "agentguard: DENIED delete of PersistentVolumeClaim {}/data by {agent}.",
            apps.name
        )),
        "{last}"
    );
    assert!(apps.pvc_intact("data"));
    // `helm test`: the chart's own proof that an agent is refused (a labelled ServiceAccount's
    // dry-run delete of a protected probe volume, from a Pod of the agentguard image).
    // (The Pod is deleted once it succeeded, with the rest of the test's objects, so only its
    // phase is left to read; `agentguard check` itself is tested in e2e_admission.)
    let out = cluster.helm(&["test", "agentguard", "-n", &ns.name, "--timeout", "2m"]);
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        out.status.success(),
        "helm test: {said}\n{}",
        replicas_state(&ns)
    );
    let pod_phase = said
        .split("TEST SUITE:")
        .find(|suite| {
            suite
                .trim_start()
                .starts_with("agentguard-test-agent-is-denied")
        })
        .and_then(|suite| suite.lines().find(|l| l.trim_start().starts_with("Phase:")))
        .map(|l| l.split_whitespace().last().unwrap_or_default().to_owned());
    assert_eq!(pod_phase.as_deref(), Some("Succeeded"), "helm test: {said}");
    // The chart's RBAC is enough: the default policy is Ready and the claim's namespace has
    // its PolicyReport.
    cluster.wait_cluster_policy_ready("default-volumes", Duration::from_secs(60));
    wait_until(
        Duration::from_secs(90),
        "the PolicyReport of the claim's namespace",
        || {
            apps.kubectl(&["get", "policyreport", "agentguard"])
                .status
                .success()
        },
    );

    // Nothing the replicas did was refused for want of a permission. (A write into a namespace
    // another test is deleting is refused as "being terminated": that namespace's state.)
    let no_permission_missing = |when: &str| {
        let logs = ns.kubectl_ok(&[
            "logs",
            "-l",
            "app.kubernetes.io/name=agentguard",
            "--tail=-1",
            "--prefix",
        ]);
        let denied: Vec<&str> = logs
            .lines()
            .filter(|l| l.to_ascii_lowercase().contains("forbidden"))
            .filter(|l| !l.contains("because it is being terminated"))
            .collect();
        assert!(
            denied.is_empty(),
            "{when}: a replica lacked a permission:\n{}",
            denied.join("\n")
        );
    };
    no_permission_missing("after install");

    // The previous release's schema has no spec.message: the API server prunes it.
    let pruned = cluster.kubectl_ok(&[
        "patch",
        "clusterprotectedresource",
        "default-volumes",
        "--type=merge",
        "-p",
        &serde_json::json!({"spec": {"message": MESSAGE}}).to_string(),
        "--dry-run=server",
        "-o",
        "jsonpath={.spec.message}",
    ]);
    assert_eq!(pruned, "", "the previous schema kept spec.message");

    // `helm upgrade` to this release, with a changed value and a new image tag, rolls both
    // replicas under a steady stream of an agent's refused deletions and a human's allowed
    // updates of the protected claim, each a webhook call: none may fail. Its pre-upgrade hook
    // brings the CRDs to this release's first, so the policy keeps its message.
    let tag = format!("{}-upgrade", env!("CARGO_PKG_VERSION"));
    node_image(&cluster, "agentguard", &["--tag", &tag]);
    let stream = Stream::start(&apps, &agent);
    let out = cluster.helm(&[
        "upgrade",
        "agentguard",
        CHART,
        "-n",
        &ns.name,
        "--reuse-values",
        "--set",
        &format!("image.tag={tag}"),
        "--set",
        "resources.requests.cpu=60m",
        "--set",
        &format!("defaultProtection.message={MESSAGE}"),
        "--wait",
        "--timeout",
        "4m",
    ]);
    assert!(out.status.success(), "helm upgrade: {}", stderr(&out));
    ns.kubectl_ok(&[
        "rollout",
        "status",
        "deployment/agentguard",
        "--timeout=120s",
    ]);
    std::thread::sleep(Duration::from_secs(5));
    stream.stop_losing_none("helm upgrade", 21);
    // The old replicas terminate (their shutdown delay) after the new ones are Ready.
    wait_until(
        Duration::from_secs(90),
        &format!("every replica runs {tag}"),
        || {
            let images = stdout(&ns.kubectl(&[
                "get",
                "pods",
                "-l",
                "app.kubernetes.io/name=agentguard",
                "-o",
                "jsonpath={.items[*].spec.containers[0].image}",
            ]));
            images.split_whitespace().count() == 2
                && images.split_whitespace().all(|i| i.ends_with(&tag))
        },
    );

    no_permission_missing("after the upgrade");
    // The CRDs are this release's, applied by the hook (whose Job and RBAC are gone), and the
    // message the upgrade gives the policy is kept (without the hook, the old schema would
    // prune it: Helm patches a custom resource with the difference between its manifests).
    let crd = |jsonpath: &str| {
        cluster.kubectl_ok(&[
            "get",
            "crd",
            "clusterprotectedresources.agentguard.dev",
            "-o",
            &format!("jsonpath={jsonpath}"),
        ])
    };
    assert_eq!(
        crd("{.metadata.labels.app\\.kubernetes\\.io/version}"),
        env!("CARGO_PKG_VERSION")
    );
    assert!(
        crd("{.metadata.managedFields[*].manager}").contains(agentguard::crds::FIELD_MANAGER),
        "the CRD was not applied by the hook"
    );
    assert_eq!(
        default_policy_message(&cluster),
        MESSAGE,
        "after the upgrade"
    );
    let hooks = stdout(&ns.kubectl(&["get", "job,serviceaccount", "-o", "name"]))
        + &stdout(&cluster.kubectl(&["get", "clusterrole,clusterrolebinding", "-o", "name"]));
    assert!(
        !hooks.contains("agentguard-crds"),
        "the hook's objects outlived it: {hooks}"
    );

    // One replica deleted under the same stream: nothing is lost.
    let stream = Stream::start(&apps, &agent);
    std::thread::sleep(Duration::from_secs(3));
    let victim = ns.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/name=agentguard",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ]);
    ns.kubectl_ok(&["delete", "pod", victim.trim()]);
    wait_until(Duration::from_secs(120), "two replicas Ready again", || {
        stdout(&ns.kubectl(&[
            "get",
            "deployment",
            "agentguard",
            "-o",
            "jsonpath={.status.readyReplicas}",
        ]))
        .trim()
            == "2"
    });
    std::thread::sleep(Duration::from_secs(3));
    stream.stop_losing_none("pod deleted", 11);

    // A rolling restart (`kubectl rollout restart`) under the same stream: nothing is lost.
    let stream = Stream::start(&apps, &agent);
    std::thread::sleep(Duration::from_secs(3));
    ns.kubectl_ok(&["rollout", "restart", "deployment/agentguard"]);
    ns.kubectl_ok(&[
        "rollout",
        "status",
        "deployment/agentguard",
        "--timeout=180s",
    ]);
    std::thread::sleep(Duration::from_secs(3));
    stream.stop_losing_none("rolling restart", 11);

    // A node drain under the same stream: the PodDisruptionBudget lets one replica go and
    // holds the other (its replacement cannot start on the cordoned node), so a webhook keeps
    // answering; uncordoned, the replacement starts.
    let node = cluster.kubectl_ok(&["get", "nodes", "-o", "jsonpath={.items[0].metadata.name}"]);
    let stream = Stream::start(&apps, &agent);
    std::thread::sleep(Duration::from_secs(2));
    let drain = cluster.kubectl(&[
        "drain",
        node.trim(),
        "--pod-selector=app.kubernetes.io/name=agentguard",
        "--ignore-daemonsets",
        "--timeout=25s",
    ]);
    let said = format!("{}{}", stdout(&drain), stderr(&drain));
    let ready_during = ns.kubectl_ok(&[
        "get",
        "deployment",
        "agentguard",
        "-o",
        "jsonpath={.status.readyReplicas}",
    ]);
    cluster.kubectl_ok(&["uncordon", node.trim()]);
    stream.stop_losing_none("node drain", 1);
    assert!(
        !drain.status.success() && said.contains("disruption budget"),
        "the drain was not held by the PodDisruptionBudget: {said}"
    );
    assert_eq!(ready_during.trim(), "1", "replicas Ready while drained");
    ns.kubectl_ok(&[
        "rollout",
        "status",
        "deployment/agentguard",
        "--timeout=120s",
    ]);

    // Uninstalled, the cluster works: no configuration is left to call a webhook that is gone.
    let out = cluster.helm(&["uninstall", "agentguard", "-n", &ns.name, "--wait"]);
    assert!(out.status.success(), "helm uninstall: {}", stderr(&out));
    let left = cluster.kubectl_ok(&[
        "get",
        "validatingwebhookconfiguration,mutatingwebhookconfiguration",
        "-o",
        "name",
    ]);
    assert!(
        !left.lines().any(|l| l.ends_with("/agentguard")),
        "left behind: {left}"
    );
    apps.pvc("after", false);
    apps.kubectl_ok(&["delete", "pvc", "after", "--wait=false"]);
}

/// `hostNetwork: true` with ports of one's own, for clusters whose API server cannot reach Pod
/// IPs: the replica listens on its node's address, the Service's EndpointSlice names that
/// address and port, and the API server calls it there (an agent's deletion refused). A second
/// release beside nothing else: its own webhook configuration, no default policies (the claim
/// is protected by its annotation), no fixed-name agent roles.
#[test]
fn host_network_mode_answers_the_api_server() {
    let _one = ONE_RELEASE.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = Cluster::connect();
    node_image(&cluster, "agentguard", &[]);
    // No Pod Security label: host networking needs the privileged level.
    let ns = TestNamespace::create(&cluster, "hostnet");
    let apps = TestNamespace::create(&cluster, "hostnetapps");
    let agent = apps.agent("cursor-agent");
    apps.pvc("data", true);
    let (webhook_port, metrics_port) = (free_port(), free_port());
    let out = cluster.helm(&[
        "install",
        "hostnet",
        CHART,
        "-n",
        &ns.name,
        "--set",
        "hostNetwork=true",
        "--set",
        "replicas=1",
        "--set",
        &format!("ports.webhook={webhook_port}"),
        "--set",
        &format!("ports.metrics={metrics_port}"),
        "--set",
        "webhook.configurationName=agentguard-hostnet",
        "--set",
        "defaultProtection.enabled=false",
        "--set",
        "agentCredentials.installRoles=false",
        "--set",
        &format!("agents.serviceAccounts={{{}/cursor-*}}", apps.name),
        "--wait",
        "--timeout",
        "3m",
    ]);
    let _release = Release {
        cluster: &cluster,
        name: "hostnet",
        namespace: ns.name.clone(),
    };
    assert!(
        out.status.success(),
        "helm install: {}{}\n{}",
        stdout(&out),
        stderr(&out),
        ns.kubectl(&["get", "pods", "-o", "wide"])
            .stdout
            .escape_ascii()
    );
    let ips = ns.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/name=agentguard",
        "-o",
        "jsonpath={.items[0].status.podIP} {.items[0].status.hostIP}",
    ]);
    let (pod_ip, host_ip) = ips.trim().split_once(' ').expect("pod and host IP");
    assert_eq!(pod_ip, host_ip, "the replica is not on its node's network");
    let endpoint = ns.kubectl_ok(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=hostnet-agentguard",
        "-o",
        "jsonpath={.items[0].endpoints[0].addresses[0]} {.items[0].ports[?(@.name==\"https\")].port}",
    ]);
    assert_eq!(endpoint.trim(), format!("{host_ip} {webhook_port}"));
    wait_until(
        Duration::from_secs(60),
        "the API server to call the webhook on the node's address",
        || {
            stderr(&apps.kubectl_as(&agent, &["delete", "pvc", "data", "--dry-run=server"]))
                .contains("agentguard: DENIED")
        },
    );
    assert!(apps.pvc_intact("data"));
}
