//! End-to-end harness: the local control plane started by `hack/cluster.sh up`, a namespace per
//! test, and an agentguard process that registers itself with the real API server: it writes
//! and keeps its own ValidatingWebhookConfiguration (clientConfig.url, caBundle from a CA made
//! per test), exactly as users get it. The harness never registers a configuration of its own,
//! so a green suite says the routes agentguard writes are enough.
//!
//! Nothing here fakes the API server: every assertion is about what it answered.

#![allow(dead_code)]

use std::io::{Read, Write};

use rustls::pki_types::pem::PemObject;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The chart, as users install it.
pub const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/agentguard");

/// Uninstalls a helm release when the test ends however it ends: its ClusterRole, bindings,
/// webhook configurations and ClusterProtectedResources are cluster-scoped and would outlive
/// the namespace.
pub struct Release<'c> {
    pub cluster: &'c Cluster,
    pub name: &'static str,
    pub namespace: String,
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        let _ = self.cluster.helm(&[
            "uninstall",
            self.name,
            "-n",
            &self.namespace,
            "--ignore-not-found",
            "--wait",
        ]);
    }
}

pub const START_HINT: &str = "start the local control plane with `hack/cluster.sh up` \
    (or run every test with `hack/test.sh`)";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The running local control plane. Panics with the command that starts it when it is absent:
/// end-to-end tests never skip silently.
pub struct Cluster {
    pub kubeconfig: PathBuf,
    pub tools: PathBuf,
}

impl Cluster {
    pub fn connect() -> Self {
        let kubeconfig = std::env::var_os("AGENTGUARD_E2E_KUBECONFIG")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join(".cluster/kubeconfig"));
        assert!(
            kubeconfig.exists(),
            "no kubeconfig at {}: {START_HINT}",
            kubeconfig.display()
        );
        Self::connect_to(kubeconfig)
    }

    /// [`Cluster::connect`] to the control plane whose admin kubeconfig is `kubeconfig` (a
    /// suite's own, started with `hack/cluster.sh` and `AGENTGUARD_CLUSTER_DIR`).
    pub fn connect_to(kubeconfig: PathBuf) -> Self {
        let tools = tools_dir();
        let cluster = Self { kubeconfig, tools };
        cluster.wait_ready(Duration::from_secs(60));
        static CRDS: std::sync::OnceLock<()> = std::sync::OnceLock::new();
        CRDS.get_or_init(|| cluster.install_crds());
        cluster
    }

    /// Waits until kube-apiserver's `/readyz` passes. An API server that answers but is not
    /// ready yet (say, reconnecting to a restarted etcd) gets `timeout`; one that does not
    /// answer at all fails at once, with the command that starts it.
    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let ready = self.kubectl(&["get", "--raw", "/readyz"]);
            if ready.status.success() {
                return;
            }
            let err = stderr(&ready);
            assert!(
                Instant::now() < deadline && err.contains("readyz check failed"),
                "the control plane does not answer ({err}): {START_HINT}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Applies `crds/` (the generated CRDs) and waits until the API server serves them.
    fn install_crds(&self) {
        let crds = repo_root().join("crds");
        self.kubectl_ok(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            crds.to_str().unwrap(),
        ]);
        self.wait_established(&[
            "crd/protectedresources.agentguard.dev",
            "crd/clusterprotectedresources.agentguard.dev",
        ]);
    }

    /// Installs the third-party CRDs `hack/build-tools.sh` copies from those projects' Go
    /// modules: prometheus-operator's ServiceMonitor and PrometheusRule, cert-manager's
    /// Certificate and Issuer (the chart's optional objects) with the ClusterIssuer and
    /// CertificateRequest its controller also watches, CSI snapshots and Velero's Backup
    /// and DeleteBackupRequest (deletion by proxy), and wgpolicyk8s.io PolicyReports.
    pub fn install_third_party_crds(&self) {
        let out = Command::new(repo_root().join("hack/build-tools.sh"))
            .arg("--print-crds")
            .output()
            .expect("run hack/build-tools.sh --print-crds");
        let dir = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        assert!(
            dir.join("wgpolicyk8s.io_clusterpolicyreports.yaml")
                .exists()
                && dir
                    .join("cert-manager.io_certificaterequests.yaml")
                    .exists(),
            "no third-party CRDs in {}: run hack/build-tools.sh",
            dir.display()
        );
        self.kubectl_ok(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            dir.to_str().unwrap(),
        ]);
        self.wait_established(&[
            "crd/servicemonitors.monitoring.coreos.com",
            "crd/prometheusrules.monitoring.coreos.com",
            "crd/certificates.cert-manager.io",
            "crd/issuers.cert-manager.io",
            "crd/clusterissuers.cert-manager.io",
            "crd/certificaterequests.cert-manager.io",
            "crd/volumesnapshots.snapshot.storage.k8s.io",
            "crd/volumesnapshotcontents.snapshot.storage.k8s.io",
            "crd/volumesnapshotclasses.snapshot.storage.k8s.io",
            "crd/backups.velero.io",
            "crd/deletebackuprequests.velero.io",
            "crd/policyreports.wgpolicyk8s.io",
            "crd/clusterpolicyreports.wgpolicyk8s.io",
        ]);
    }

    /// Waits until each CRD (`crd/<name>`) is Established. Polled: `kubectl wait` fails at once
    /// when a CRD created a moment ago has no status conditions yet.
    pub fn wait_established(&self, crds: &[&str]) {
        for crd in crds {
            wait_until(
                Duration::from_secs(60),
                &format!("{crd} Established"),
                || {
                    stdout(&self.kubectl(&[
                        "get",
                        crd,
                        "-o",
                        "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
                    ])) == "True"
                },
            );
        }
    }

    pub fn kubectl_path(&self) -> PathBuf {
        self.tools.join("kubectl")
    }

    /// Waits until the ClusterProtectedResource `name` says Ready=True.
    pub fn wait_cluster_policy_ready(&self, name: &str, within: Duration) {
        wait_until(within, &format!("{name} to be Ready"), || {
            stdout(&self.kubectl(&[
                "get",
                "clusterprotectedresource",
                name,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ])) == "True"
        });
    }

    /// helm (the pinned release from the tool cache) against this cluster.
    pub fn helm(&self, args: &[&str]) -> Output {
        Command::new(self.tools.join("helm"))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .expect("run helm")
    }

    /// kubectl as the cluster admin (system:masters).
    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(self.kubectl_path())
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .expect("run kubectl")
    }

    /// kubectl as admin, panicking with kubectl's own words when it fails.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            stderr(&out)
        );
        stdout(&out)
    }

    /// kubectl with stdin (for `apply -f -`).
    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> Output {
        let mut child = Command::new(self.kubectl_path())
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    pub fn apply(&self, yaml: &str) {
        let out = self.kubectl_stdin(&["apply", "-f", "-"], yaml);
        assert!(
            out.status.success(),
            "apply failed: {}\n{yaml}",
            stderr(&out)
        );
    }

    fn raw_config(&self, path: &str) -> String {
        self.kubectl_ok(&[
            "config",
            "view",
            "--raw",
            "-o",
            &format!("jsonpath={{{path}}}"),
        ])
    }

    /// The API server's audit log (`hack/cluster.sh` writes it beside the kubeconfig).
    pub fn audit_log(&self) -> String {
        let path = self.kubeconfig.parent().unwrap().join("logs/audit.log");
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }

    /// A kubeconfig that authenticates with `token` only (no client certificate), as an agent's
    /// sandbox would hold.
    pub fn token_kubeconfig(&self, dir: &Path, token: &str) -> PathBuf {
        let server = self.raw_config(".clusters[0].cluster.server");
        let ca = self.raw_config(".clusters[0].cluster.certificate-authority-data");
        let path = dir.join("agent.kubeconfig");
        let yaml = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n\
             users:\n- name: agent\n  user:\n    token: {token}\ncontexts:\n- name: agent\n  context:\n    cluster: local\n    user: agent\ncurrent-context: agent\n"
        );
        std::fs::write(&path, yaml).unwrap();
        path
    }
}

/// The node's settings as `hack/node.sh` wrote them beside the kubeconfig. Panics with the
/// command that starts a node when this control plane has none: node suites never skip.
pub fn node_env(cluster: &Cluster) -> std::collections::HashMap<String, String> {
    let path = cluster.kubeconfig.parent().unwrap().join("node.env");
    let env: std::collections::HashMap<String, String> = std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert!(
        env.get("NODE_ENABLED").is_some_and(|v| v == "1"),
        "this control plane has no node ({}): start it with `AGENTGUARD_NODE=1 hack/cluster.sh up` (as root)",
        path.display()
    );
    env
}

/// Builds an image with `hack/image.sh` (`agentguard`, `kubectl`, `etcd`), imports it into the
/// node's containerd, and returns its name.
pub fn node_image(cluster: &Cluster, what: &str, extra: &[&str]) -> String {
    let socket = format!("{}/containerd.sock", node_env(cluster)["NODE_RUN"]);
    let out = Command::new(repo_root().join("hack/image.sh"))
        .args([what, "--import", &socket])
        .args(extra)
        .output()
        .expect("run hack/image.sh");
    assert!(
        out.status.success(),
        "hack/image.sh {what}: {}",
        stderr(&out)
    );
    // The last line is the archive; the name is in its index.
    let archive = stdout(&out).lines().last().unwrap_or_default().to_owned();
    let index = Command::new("tar")
        .args(["-xOf", &archive, "index.json"])
        .output()
        .expect("run tar");
    let index: serde_json::Value = serde_json::from_slice(&index.stdout).expect("index.json");
    index["manifests"][0]["annotations"]["io.containerd.image.name"]
        .as_str()
        .expect("the image's name")
        .to_owned()
}

/// The bin directory of the pinned control-plane tools (`hack/build-tools.sh --print`).
pub fn tools_dir() -> PathBuf {
    let out = Command::new(repo_root().join("hack/build-tools.sh"))
        .arg("--print")
        .output()
        .expect("run hack/build-tools.sh --print");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// A namespace owned by one test; deleted when dropped.
pub struct TestNamespace<'c> {
    pub cluster: &'c Cluster,
    pub name: String,
    /// Cluster-scoped objects (kind/name) this test made, deleted with the namespace.
    cluster_scoped: std::cell::RefCell<Vec<String>>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{:x}{n}", (nanos ^ std::process::id()) & 0xfffff)
}

impl<'c> TestNamespace<'c> {
    pub fn create(cluster: &'c Cluster, prefix: &str) -> Self {
        let name = unique(&format!("e2e-{prefix}"));
        cluster.kubectl_ok(&["create", "namespace", &name]);
        Self {
            cluster,
            name,
            cluster_scoped: Default::default(),
        }
    }

    /// `kubectl -n <ns>` as admin.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        self.cluster.kubectl(&all)
    }

    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl -n {} {args:?} failed: {}",
            self.name,
            stderr(&out)
        );
        stdout(&out)
    }

    /// `kubectl -n <ns> --as=<user>` (impersonation by the admin).
    pub fn kubectl_as(&self, user: &str, args: &[&str]) -> Output {
        let as_flag = format!("--as={user}");
        let mut all = vec![as_flag.as_str()];
        all.extend_from_slice(args);
        self.kubectl(&all)
    }

    /// A ServiceAccount with the built-in `edit` role in this namespace: broad enough to
    /// delete claims, which is exactly what an agent with a careless token has.
    pub fn agent(&self, name: &str) -> String {
        self.kubectl_ok(&["create", "serviceaccount", name]);
        self.kubectl_ok(&[
            "create",
            "rolebinding",
            &format!("{name}-edit"),
            "--clusterrole=edit",
            &format!("--serviceaccount={}:{name}", self.name),
        ]);
        format!("system:serviceaccount:{}:{name}", self.name)
    }

    pub fn pvc(&self, name: &str, protected: bool) {
        let annotations = if protected {
            "\n  annotations:\n    agentguard.dev/protected: \"true\""
        } else {
            ""
        };
        self.cluster.apply(&format!(
            "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: {name}\n  namespace: {ns}{annotations}\n\
             spec:\n  accessModes: [ReadWriteOnce]\n  resources:\n    requests:\n      storage: 1Gi\n",
            ns = self.name
        ));
    }

    /// Waits until the ProtectedResource is in force: its status says Ready=True (the
    /// webhook's snapshot is built from the same watch, before the status is written).
    pub fn wait_policy_ready(&self, name: &str) {
        // 60 s: a CI machine building beside the tests has answered in over 30.
        wait_until(
            Duration::from_secs(60),
            &format!("policy {name} Ready"),
            || {
                stdout(&self.kubectl(&[
                    "get",
                    "protectedresource",
                    name,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
                ])) == "True"
            },
        );
    }

    /// True when the claim exists and is not being deleted.
    pub fn pvc_intact(&self, name: &str) -> bool {
        let out = self.kubectl(&[
            "get",
            "pvc",
            name,
            "-o",
            "jsonpath={.metadata.deletionTimestamp}",
        ]);
        out.status.success() && stdout(&out).trim().is_empty()
    }

    /// Waits until the claim is gone (the PVC-protection controller drops its finalizer).
    pub fn wait_pvc_gone(&self, name: &str) {
        wait_until(
            Duration::from_secs(60),
            &format!("pvc {name} to be deleted"),
            || {
                let out = self.kubectl(&["get", "pvc", name, "--ignore-not-found", "-o", "name"]);
                out.status.success() && stdout(&out).trim().is_empty()
            },
        );
    }
}

impl TestNamespace<'_> {
    /// Registers a cluster-scoped object (`kind/name`) for deletion when the test ends.
    pub fn owns_cluster_object(&self, object: &str) {
        self.cluster_scoped.borrow_mut().push(object.to_owned());
    }

    /// Installs a namespaced CRD `<plural>.<namespace>.example.com` (kind `kind`, any fields),
    /// removed when the test ends, waits until it is served, and returns its group.
    pub fn crd(&self, plural: &str, kind: &str) -> String {
        let group = format!("{}.example.com", self.name);
        let singular = kind.to_ascii_lowercase();
        self.cluster.apply(&format!(
            "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: {plural}.{group}\nspec:\n  group: {group}\n  scope: Namespaced\n  \
             names: {{plural: {plural}, singular: {singular}, kind: {kind}}}\n  versions:\n    - name: v1\n      served: true\n      storage: true\n      \
             schema: {{openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}}}\n"
        ));
        self.owns_cluster_object(&format!("crd/{plural}.{group}"));
        self.cluster
            .wait_established(&[&format!("crd/{plural}.{group}")]);
        group
    }

    /// Runs `args` in a Pod of `image` (kubectl's, from [`node_image`]) as ServiceAccount `sa`,
    /// with its mounted token, and returns the Pod's phase and log once it has finished.
    pub fn run_pod(&self, image: &str, sa: &str, args: &[&str]) -> (String, String) {
        let name = unique("pod");
        let pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": self.name},
            "spec": {
                "serviceAccountName": sa,
                "restartPolicy": "Never",
                "containers": [{
                    "name": "agent", "image": image, "imagePullPolicy": "Never", "args": args,
                    "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                        "runAsNonRoot": true, "capabilities": {"drop": ["ALL"]}},
                }],
            },
        });
        self.cluster.apply(&pod.to_string());
        let mut phase = String::new();
        wait_until(
            Duration::from_secs(90),
            &format!("pod {name} finished"),
            || {
                phase =
                    stdout(&self.kubectl(&["get", "pod", &name, "-o", "jsonpath={.status.phase}"]));
                phase == "Succeeded" || phase == "Failed"
            },
        );
        (phase, self.kubectl_ok(&["logs", &name]))
    }

    /// The chart's agent roles, applied as `<ns>-agent-edit` and `<ns>-agent-view` and deleted
    /// when the test ends. Returns (edit, view).
    pub fn install_agent_roles(&self) -> (String, String) {
        let out = Command::new(self.cluster.tools.join("helm"))
            .args(["template", "agentguard"])
            .arg(repo_root().join("charts/agentguard"))
            .args([
                "--kube-version",
                "1.36.3",
                "--show-only",
                "templates/agent-roles.yaml",
            ])
            .output()
            .expect("run helm");
        assert!(out.status.success(), "helm template: {}", stderr(&out));
        let (edit, view) = (
            format!("{}-agent-edit", self.name),
            format!("{}-agent-view", self.name),
        );
        let rendered = stdout(&out)
            .replace("name: agentguard-agent-edit\n", &format!("name: {edit}\n"))
            .replace("name: agentguard-agent-view\n", &format!("name: {view}\n"));
        assert!(rendered.contains(&edit) && rendered.contains(&view));
        self.owns_cluster_object(&format!("clusterrole/{edit}"));
        self.owns_cluster_object(&format!("clusterrole/{view}"));
        self.cluster.apply(&rendered);
        (edit, view)
    }

    /// Grants the namespace's ServiceAccount `sa` every verb on `resource` in this namespace.
    pub fn grant(&self, sa: &str, resource: &str) {
        let name = unique(&format!("{sa}-all"));
        self.kubectl_ok(&[
            "create",
            "role",
            &name,
            "--verb=*",
            &format!("--resource={resource}"),
        ]);
        self.kubectl_ok(&[
            "create",
            "rolebinding",
            &name,
            &format!("--role={name}"),
            &format!("--serviceaccount={}:{sa}", self.name),
        ]);
    }

    /// Grants the namespace's ServiceAccount `sa` cluster-wide `verbs` on `resources` through a
    /// ClusterRole and binding removed when the test ends.
    pub fn grant_cluster(&self, sa: &str, verbs: &str, resources: &str) {
        let name = unique(&format!("{}-{sa}", self.name));
        self.cluster.kubectl_ok(&[
            "create",
            "clusterrole",
            &name,
            &format!("--verb={verbs}"),
            &format!("--resource={resources}"),
        ]);
        self.cluster.kubectl_ok(&[
            "create",
            "clusterrolebinding",
            &name,
            &format!("--clusterrole={name}"),
            &format!("--serviceaccount={}:{sa}", self.name),
        ]);
        self.owns_cluster_object(&format!("clusterrole/{name}"));
        self.owns_cluster_object(&format!("clusterrolebinding/{name}"));
    }
}

impl TestNamespace<'_> {
    /// A kubeconfig, written into `dir`, for the ServiceAccount `operator` of this namespace,
    /// which may do anything on every API group the API server serves except `excluded`:
    /// agentguard's identity when a test needs a kind it may not list or watch.
    pub fn operator_blind_to(&self, excluded: &str, dir: &Path) -> PathBuf {
        let mut groups: Vec<String> = stdout(&self.cluster.kubectl(&["api-versions"]))
            .lines()
            .map(|v| v.rsplit_once('/').map_or("", |(g, _)| g).to_owned())
            .filter(|g| g != excluded)
            .collect();
        groups.sort();
        groups.dedup();
        let groups: Vec<String> = groups.iter().map(|g| format!("\"{g}\"")).collect();
        let role = format!("{}-operator", self.name);
        self.cluster.apply(&format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: {role}\n\
             rules:\n  - apiGroups: [{}]\n    resources: [\"*\"]\n    verbs: [\"*\"]\n",
            groups.join(", ")
        ));
        self.owns_cluster_object(&format!("clusterrole/{role}"));
        self.kubectl_ok(&["create", "serviceaccount", "operator"]);
        self.cluster.kubectl_ok(&[
            "create",
            "clusterrolebinding",
            &role,
            &format!("--clusterrole={role}"),
            &format!("--serviceaccount={}:operator", self.name),
        ]);
        self.owns_cluster_object(&format!("clusterrolebinding/{role}"));
        let token = self.kubectl_ok(&["create", "token", "operator", "--duration=1h"]);
        self.cluster.token_kubeconfig(dir, token.trim())
    }
}

impl Drop for TestNamespace<'_> {
    fn drop(&mut self) {
        for object in self.cluster_scoped.borrow().iter() {
            let _ = self
                .cluster
                .kubectl(&["delete", object, "--ignore-not-found", "--wait=false"]);
        }
        let _ = self
            .cluster
            .kubectl(&["delete", "namespace", &self.name, "--wait=false"]);
    }
}

/// An agentguard process serving the webhook for one namespace only (namespaceSelector), so
/// tests run side by side, each with its own process, metrics and configuration.
pub struct Guard<'c> {
    cluster: &'c Cluster,
    child: Option<Child>,
    pub webhook_name: String,
    pub metrics_port: u16,
    pub webhook_port: u16,
    pub dir: tempfile::TempDir,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How a test's agentguard is configured.
#[derive(Debug, Clone, Default)]
pub struct GuardOptions {
    /// `--agent-service-accounts`; default every ServiceAccount of the test namespace.
    pub agent_service_accounts: Option<String>,
    /// `--break-glass-groups`.
    pub break_glass_groups: Option<String>,
    /// Self-managed certificates in a Secret of the test namespace: (validity, rotate before,
    /// promote after), as agentguard duration flags. None: certificate files from the test.
    pub self_certs: Option<(&'static str, &'static str, &'static str)>,
    /// Write PolicyReports (cluster-wide; off unless a test is about them).
    pub policy_reports: bool,
    /// More `agentguard run` flags.
    pub extra_args: Vec<String>,
    /// The webhook's failurePolicy (`Fail` or `Ignore`), as `--failure-policy`. None: Fail.
    pub failure_policy: Option<&'static str>,
    /// Run as someone other than the cluster admin (e.g. a ServiceAccount with less RBAC).
    pub kubeconfig: Option<PathBuf>,
    /// Run without leader election (`--leader-election=false`): this one process always leads.
    pub no_lease: bool,
    /// `--webhook-url` (e.g. a [`Balancer`] in front of several replicas). None: this
    /// replica's own port.
    pub webhook_url: Option<String>,
    /// The (webhook, metrics) ports to listen on. None: free ports picked at start.
    pub ports: Option<(u16, u16)>,
    /// The certificate, key and CA files agentguard starts on (cert-manager's Secret, say).
    /// None: a CA and a certificate made by the harness.
    pub tls_files: Option<agentguard::certs::CertificateBundle>,
    /// Run with the process's clocks (wall and monotonic) offset by libfaketime, e.g. `+40s`
    /// or `-40s` (libfaketime's `FAKETIME` syntax). None: the machine's clocks.
    pub clock_offset: Option<String>,
}

/// libfaketime's preload library (Debian package `faketime`, which pulls in `libfaketime`).
/// Panics with the package to install when it is absent: the clock-offset tests never skip.
pub fn libfaketime() -> PathBuf {
    let mut candidates = vec![
        PathBuf::from("/usr/lib/faketime/libfaketime.so.1"),
        PathBuf::from("/usr/local/lib/faketime/libfaketime.so.1"),
    ];
    // Debian and Ubuntu install it under the multiarch directory (/usr/lib/x86_64-linux-gnu).
    if let Ok(dirs) = std::fs::read_dir("/usr/lib") {
        for dir in dirs.flatten() {
            candidates.push(dir.path().join("faketime/libfaketime.so.1"));
        }
    }
    candidates
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "libfaketime.so.1 not found under /usr/lib/*/faketime or /usr/local/lib/faketime: \
                 install it with `apt-get install faketime` (Debian package faketime)"
            )
        })
}

/// Starts one agentguard process for `ns`, logging to `<dir>/agentguard-<replica>.log`. It
/// manages the ValidatingWebhookConfiguration `agentguard-<ns>` (the one users get), scoped to
/// namespaces labelled `agentguard-e2e=<ns>` (namespaced kinds only: the API server applies
/// no namespaceSelector to cluster-scoped kinds, so every running test's agentguard judges
/// those).
pub fn spawn_agentguard(
    ns: &TestNamespace<'_>,
    options: &GuardOptions,
    dir: &Path,
    webhook_port: u16,
    metrics_port: u16,
    replica: &str,
) -> Child {
    let log = std::fs::File::create(dir.join(format!("agentguard-{replica}.log"))).unwrap();
    Command::new(env!("CARGO_BIN_EXE_agentguard"))
        .args([
            "run",
            "--webhook-addr",
            &format!("127.0.0.1:{webhook_port}"),
        ])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .args(match options.self_certs {
            None => vec![
                format!("--tls-cert-file={}", dir.join("tls.crt").display()),
                format!("--tls-key-file={}", dir.join("tls.key").display()),
            ],
            Some((validity, rotate_before, promote_after)) => vec![
                format!("--cert-secret={}/agentguard-tls", ns.name),
                "--cert-hosts=127.0.0.1".to_owned(),
                format!("--cert-validity={validity}"),
                format!("--cert-rotate-before={rotate_before}"),
                format!("--cert-promote-after={promote_after}"),
            ],
        })
        .arg(format!(
            "--agent-service-accounts={}",
            options
                .agent_service_accounts
                .clone()
                .unwrap_or_else(|| format!("{}/*", ns.name))
        ))
        .args(
            options
                .break_glass_groups
                .iter()
                .map(|g| format!("--break-glass-groups={g}")),
        )
        .arg(format!(
            "--webhook-configuration-name=agentguard-{}",
            ns.name
        ))
        .arg(format!(
            "--webhook-url={}",
            options
                .webhook_url
                .clone()
                .unwrap_or_else(|| format!("https://127.0.0.1:{webhook_port}/validate"))
        ))
        .arg(format!("--ca-file={}", dir.join("ca.crt").display()))
        .arg(format!(
            "--webhook-namespace-label=agentguard-e2e={}",
            ns.name
        ))
        .arg(format!(
            "--failure-policy={}",
            options.failure_policy.unwrap_or("Fail")
        ))
        .arg(format!("--policy-reports={}", options.policy_reports))
        .args(&options.extra_args)
        .arg(format!("--lease-namespace={}", ns.name))
        .arg(format!("--lease-name=agentguard-{}", ns.name))
        .args(options.no_lease.then_some("--leader-election=false"))
        .env("POD_NAME", format!("{replica}-{}", ns.name))
        .env(
            "KUBECONFIG",
            options
                .kubeconfig
                .as_ref()
                .unwrap_or(&ns.cluster.kubeconfig),
        )
        .env("RUST_LOG", "info,agentguard=debug")
        .envs(options.clock_offset.iter().flat_map(|offset| {
            // libfaketime's default moves both clocks: CLOCK_REALTIME (what the process writes
            // as renew times and logs) and CLOCK_MONOTONIC (what its timers and Instants read).
            [
                ("LD_PRELOAD", libfaketime().into_os_string()),
                ("FAKETIME", offset.into()),
            ]
        }))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start agentguard")
}

impl<'c> Guard<'c> {
    /// Starts `agentguard run` restricting every ServiceAccount of `ns`, and waits until the
    /// API server calls it.
    pub fn start(ns: &TestNamespace<'c>, probe_agent: &str) -> Self {
        Self::start_with(ns, probe_agent, &GuardOptions::default())
    }

    /// Labels the test namespace `agentguard-e2e=<ns>`, starts `agentguard run` (which writes
    /// its own webhook configuration for that label), and waits until the API server calls it.
    pub fn start_with(ns: &TestNamespace<'c>, probe_agent: &str, options: &GuardOptions) -> Self {
        let cluster = ns.cluster;
        let dir = tempfile::tempdir().unwrap();
        let bundle = options.tls_files.clone().unwrap_or_else(|| {
            agentguard::certs::generate(&["127.0.0.1".into()], Duration::from_secs(3600))
                .expect("generate certificates")
        });
        std::fs::write(dir.path().join("tls.crt"), &bundle.cert_pem).unwrap();
        std::fs::write(dir.path().join("tls.key"), &bundle.key_pem).unwrap();
        std::fs::write(dir.path().join("ca.crt"), &bundle.ca_pem).unwrap();
        ns.kubectl_ok(&[
            "label",
            "namespace",
            &ns.name,
            &format!("agentguard-e2e={}", ns.name),
        ]);
        let (webhook_port, metrics_port) =
            options.ports.unwrap_or_else(|| (free_port(), free_port()));
        let child = spawn_agentguard(ns, options, dir.path(), webhook_port, metrics_port, "a");
        let mut guard = Self {
            cluster,
            child: Some(child),
            webhook_name: format!("agentguard-{}", ns.name),
            metrics_port,
            webhook_port,
            dir,
        };
        wait_until(Duration::from_secs(30), "agentguard /readyz", || {
            guard.http_get("/readyz").is_some_and(|(s, _)| s == 200)
        });
        ns.pvc("agentguard-probe", true);
        guard.wait_enforcing(ns, probe_agent);
        guard
    }

    /// Waits until the API server calls this agentguard and it judges: `probe_agent`'s dry-run
    /// delete of the protected claim `agentguard-probe` is denied. A new configuration (or a
    /// restarted process) takes a moment to reach the admission chain: probe, never sleep a
    /// fixed time. With failurePolicy Ignore, only this tells "judged" from "not called".
    pub fn wait_enforcing(&mut self, ns: &TestNamespace<'_>, probe_agent: &str) {
        wait_until(Duration::from_secs(30), "webhook registered", || {
            let out = ns.kubectl_as(
                probe_agent,
                &["delete", "pvc", "agentguard-probe", "--dry-run=server"],
            );
            stderr(&out).contains("agentguard: DENIED")
        });
        self.child_alive_or_panic();
    }

    fn child_alive_or_panic(&mut self) {
        if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
            panic!("agentguard exited with {status}: {}", self.log());
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agentguard-a.log")).unwrap_or_default()
    }

    /// The process id of the running webhook process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the webhook process again, with the same ports and certificates.
    pub fn respawn(&mut self, ns: &TestNamespace<'_>, options: &GuardOptions) {
        self.kill();
        self.child = Some(spawn_agentguard(
            ns,
            options,
            self.dir.path(),
            self.webhook_port,
            self.metrics_port,
            "a",
        ));
    }

    /// Sends SIGTERM to the webhook process (as the kubelet does on a rollout).
    pub fn terminate(&self) {
        let pid = self.child.as_ref().expect("agentguard running").id();
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid}");
    }

    /// Whether the webhook process has exited.
    pub fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| c.try_wait().unwrap().is_some())
    }

    /// Kills the webhook process, leaving its configuration registered.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until agentguard's configuration routes `resource` (a plural, e.g.
    /// `volumesnapshotclasses`): a kind whose CRD was installed a moment ago is routed at the
    /// operator's next reconcile, once discovery serves it.
    pub fn wait_routed(&self, resource: &str) {
        wait_until(
            Duration::from_secs(30),
            &format!("{resource} routed to the webhook"),
            || {
                stdout(&self.cluster.kubectl(&[
                    "get",
                    "validatingwebhookconfiguration",
                    &self.webhook_name,
                    "-o",
                    "jsonpath={.webhooks[0].rules[*].resources}",
                ]))
                .contains(&format!("\"{resource}\""))
            },
        );
    }

    pub fn http_get(&self, path: &str) -> Option<(u16, String)> {
        let url = format!("http://127.0.0.1:{}{path}", self.metrics_port);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into();
        let mut resp = agent.get(&url).call().ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.body_mut().read_to_string().ok()?))
    }

    /// The value of one metric sample, by exact name and label set, or 0 when absent.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let (status, text) = self.http_get("/metrics").expect("GET /metrics");
        assert_eq!(status, 200);
        let mut sorted = labels.to_vec();
        sorted.sort();
        let rendered: Vec<String> = sorted.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        let prefix = if rendered.is_empty() {
            format!("{name} ")
        } else {
            format!("{name}{{{}}} ", rendered.join(","))
        };
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0.0)
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        // The validating and mutating configurations it writes under its one name must go:
        // with failurePolicy Fail and no process behind them, they would block the namespace's
        // controllers (a claim's pvc-protection finalizer is removed by an UPDATE they route)
        // and every test's cluster-scoped writes. Without a moment when they point at a dead
        // process, for tests running beside this one: SIGTERM first (the leader steps down, so
        // it stops putting its configurations back, and keeps answering reviews for its
        // shutdown delay), then the configurations go, then the process. They are deleted once
        // more after it: a process without leader election may have written them back.
        let delete = |cluster: &Cluster, name: &str| {
            for kind in [
                "validatingwebhookconfiguration",
                "mutatingwebhookconfiguration",
            ] {
                let _ = cluster.kubectl(&["delete", kind, name, "--ignore-not-found"]);
            }
        };
        let running = self
            .child
            .as_mut()
            .and_then(|c| matches!(c.try_wait(), Ok(None)).then(|| c.id()));
        if let Some(pid) = running {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            std::thread::sleep(Duration::from_millis(300));
            delete(self.cluster, &self.webhook_name);
        }
        self.kill();
        delete(self.cluster, &self.webhook_name);
    }
}

/// A TCP proxy on loopback between one agentguard replica and the API server, for fault
/// tests. It forwards bytes, so TLS passes through untouched (the API server's certificate
/// names 127.0.0.1, whatever the port). Faults, until [`FaultProxy::heal`]:
/// [`FaultProxy::blackhole`] makes every connection, open or new, swallow what it is sent and
/// answer nothing, as a partitioned or hung API server does (connections that saw it stay
/// dead); [`FaultProxy::cut`] closes new connections at once and open ones at their next
/// use, as a resetting load balancer does; [`FaultProxy::slow`] forwards every chunk, each
/// way, only after a delay, as an overloaded API server answers.
pub struct FaultProxy {
    pub port: u16,
    faults: Faults,
}

#[derive(Clone, Default)]
struct Faults {
    blackholed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    delay_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl FaultProxy {
    /// Starts a proxy to `127.0.0.1:upstream`; its threads live as long as the test process.
    pub fn start(upstream: u16) -> Self {
        use std::sync::Arc;
        use std::sync::atomic::AtomicBool;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let faults = Faults::default();
        let shared = faults.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if shared.cut.load(Ordering::SeqCst) {
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    continue;
                }
                let dead = Arc::new(AtomicBool::new(shared.blackholed.load(Ordering::SeqCst)));
                let server = if dead.load(Ordering::SeqCst) {
                    None
                } else {
                    std::net::TcpStream::connect(("127.0.0.1", upstream)).ok()
                };
                let Some(server) = server else {
                    // Accepted, then silence: read and drop until the client gives up.
                    let faults = shared.clone();
                    std::thread::spawn(move || Self::pump(client, None, &faults, &dead));
                    continue;
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (f1, f2, d1, d2) = (shared.clone(), shared.clone(), dead.clone(), dead);
                std::thread::spawn(move || Self::pump(client, Some(server), &f1, &d1));
                std::thread::spawn(move || Self::pump(s2, Some(c2), &f2, &d2));
            }
        });
        Self { port, faults }
    }

    /// Copies `from` to `to` until `from` closes: late while slow; reading and dropping once
    /// the blackhole is on (or the connection saw it); closing both sides once cut.
    fn pump(
        mut from: std::net::TcpStream,
        mut to: Option<std::net::TcpStream>,
        faults: &Faults,
        dead: &std::sync::atomic::AtomicBool,
    ) {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if faults.cut.load(Ordering::SeqCst) {
                let _ = from.shutdown(std::net::Shutdown::Both);
                break;
            }
            if faults.blackholed.load(Ordering::SeqCst) {
                dead.store(true, Ordering::SeqCst);
            }
            if dead.load(Ordering::SeqCst) {
                continue;
            }
            let delay = faults.delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                std::thread::sleep(Duration::from_millis(delay));
            }
            if to
                .as_mut()
                .is_none_or(|to| to.write_all(&buf[..n]).is_err())
            {
                break;
            }
        }
        if let Some(to) = to {
            let how = if faults.cut.load(Ordering::SeqCst) {
                std::net::Shutdown::Both
            } else {
                std::net::Shutdown::Write
            };
            let _ = to.shutdown(how);
        }
    }

    pub fn blackhole(&self) {
        self.faults.blackholed.store(true, Ordering::SeqCst);
    }

    pub fn cut(&self) {
        self.faults.cut.store(true, Ordering::SeqCst);
    }

    pub fn slow(&self, delay: Duration) {
        self.faults
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn heal(&self) {
        self.faults.blackholed.store(false, Ordering::SeqCst);
        self.faults.cut.store(false, Ordering::SeqCst);
        self.faults.delay_ms.store(0, Ordering::SeqCst);
    }

    /// A copy of the kubeconfig `source` (one cluster, `server: https://127.0.0.1:<port>`)
    /// whose server is this proxy.
    pub fn kubeconfig(&self, source: &Path, target: &Path) -> PathBuf {
        let text = std::fs::read_to_string(source).unwrap();
        let upstream = api_server_port(source);
        let moved = text.replace(
            &format!("https://127.0.0.1:{upstream}"),
            &format!("https://127.0.0.1:{}", self.port),
        );
        assert_ne!(moved, text, "no 127.0.0.1 server in {}", source.display());
        std::fs::write(target, moved).unwrap();
        target.to_path_buf()
    }
}

/// A TCP load balancer on loopback in front of webhook replicas, as a Service with kube-proxy
/// is: a new connection goes to the next backend in rotation (round robin), an open one stays
/// with its backend until either side closes it. A backend is in rotation while its `/readyz`
/// answers 200, checked every second (a terminating Pod leaves its Service's endpoints about
/// that fast). With no backend in rotation a connection is closed at once.
pub struct Balancer {
    pub port: u16,
    backends: std::sync::Arc<std::sync::Mutex<Vec<(u16, u16, bool)>>>,
}

impl Balancer {
    /// Starts the balancer with no backends; its threads live as long as the test process.
    pub fn start() -> Self {
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let backends: Arc<Mutex<Vec<(u16, u16, bool)>>> = Arc::default();
        let checked = backends.clone();
        std::thread::spawn(move || {
            loop {
                let ports: Vec<u16> = checked.lock().unwrap().iter().map(|b| b.1).collect();
                let ready: Vec<bool> = ports
                    .iter()
                    .map(|&m| http_status(m, "/readyz") == Some(200))
                    .collect();
                for (b, r) in checked.lock().unwrap().iter_mut().zip(ready) {
                    b.2 = r;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        let routed = backends.clone();
        std::thread::spawn(move || {
            let mut next = 0usize;
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let in_rotation = || -> Vec<u16> {
                    let backends = routed.lock().unwrap();
                    backends.iter().filter(|b| b.2).map(|b| b.0).collect()
                };
                let mut ready = in_rotation();
                if ready.is_empty() {
                    // None yet (the first replica has just started): ask them now rather than
                    // at the next check, so a test's first request does not race the checker.
                    let ports: Vec<(u16, u16)> =
                        routed.lock().unwrap().iter().map(|b| (b.0, b.1)).collect();
                    ready = ports
                        .into_iter()
                        .filter(|&(_, m)| http_status(m, "/readyz") == Some(200))
                        .map(|(w, _)| w)
                        .collect();
                }
                if ready.is_empty() {
                    continue;
                }
                next = next.wrapping_add(1);
                let Ok(server) =
                    std::net::TcpStream::connect(("127.0.0.1", ready[next % ready.len()]))
                else {
                    continue;
                };
                let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (mut client, mut server) = (client, server);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut client, &mut s2);
                    let _ = s2.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut server, &mut c2);
                    let _ = c2.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Self { port, backends }
    }

    /// Adds a replica listening on `webhook` with its probes on `metrics`; it takes
    /// connections once its `/readyz` answers 200.
    pub fn add(&self, webhook: u16, metrics: u16) {
        self.backends
            .lock()
            .unwrap()
            .push((webhook, metrics, false));
    }
}

/// Two replicas behind one address, as a Deployment's two Pods behind its Service: replica a is
/// the test's [`Guard`] (its webhook configuration names the [`Balancer`]), replica b another
/// process on a's directory, started by [`TwoReplicas::spawn_b`] (and again after a restart).
pub struct TwoReplicas<'c> {
    /// Declared first, so it stops before the balancer in front of it.
    pub a: Guard<'c>,
    pub balancer: Balancer,
    /// The (webhook, metrics) ports of a and of b.
    pub ports: [(u16, u16); 2],
    options: GuardOptions,
}

impl<'c> TwoReplicas<'c> {
    /// Starts the balancer with both replicas in it, and replica a with `options` (its webhook
    /// URL and ports are set here). b is not started.
    pub fn start(ns: &TestNamespace<'c>, probe_agent: &str, options: GuardOptions) -> Self {
        let balancer = Balancer::start();
        let ports = [(free_port(), free_port()), (free_port(), free_port())];
        for (webhook, metrics) in ports {
            balancer.add(webhook, metrics);
        }
        let options = GuardOptions {
            webhook_url: Some(format!("https://127.0.0.1:{}/validate", balancer.port)),
            ..options
        };
        let a = Guard::start_with(
            ns,
            probe_agent,
            &GuardOptions {
                ports: Some(ports[0]),
                ..options.clone()
            },
        );
        Self {
            a,
            balancer,
            ports,
            options,
        }
    }

    /// The options of replica `replica` (0 is a, 1 is b).
    pub fn options(&self, replica: usize) -> GuardOptions {
        GuardOptions {
            ports: Some(self.ports[replica]),
            ..self.options.clone()
        }
    }

    /// Starts replica b.
    pub fn spawn_b(&self, ns: &TestNamespace<'_>) -> Child {
        let (webhook, metrics) = self.ports[1];
        spawn_agentguard(
            ns,
            &self.options(1),
            self.a.dir.path(),
            webhook,
            metrics,
            "b",
        )
    }

    /// Starts replica a again, after it stopped.
    pub fn respawn_a(&mut self, ns: &TestNamespace<'_>) {
        let options = self.options(0);
        self.a.respawn(ns, &options);
    }
}

/// The loopback port of the API server a kubeconfig names.
pub fn api_server_port(kubeconfig: &Path) -> u16 {
    let text = std::fs::read_to_string(kubeconfig).unwrap();
    text.lines()
        .find_map(|l| l.trim().strip_prefix("server: https://127.0.0.1:"))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no loopback server in {}", kubeconfig.display()))
}

/// A kubeconfig at `<dir>/<name>.kubeconfig` for a new ServiceAccount `name` of `ns` bound to
/// cluster-admin: each agentguard replica is then a user of its own in the API server's audit
/// log. Keep `name` out of the agent definition (`GuardOptions::agent_service_accounts`).
pub fn replica_kubeconfig(ns: &TestNamespace<'_>, dir: &Path, name: &str) -> PathBuf {
    ns.kubectl_ok(&["create", "serviceaccount", name]);
    let binding = unique(&format!("{}-{name}", ns.name));
    ns.cluster.kubectl_ok(&[
        "create",
        "clusterrolebinding",
        &binding,
        "--clusterrole=cluster-admin",
        &format!("--serviceaccount={}:{name}", ns.name),
    ]);
    ns.owns_cluster_object(&format!("clusterrolebinding/{binding}"));
    let token = ns.kubectl_ok(&["create", "token", name, "--duration=2h"]);
    let written = ns.cluster.token_kubeconfig(dir, token.trim());
    let path = dir.join(format!("{name}.kubeconfig"));
    std::fs::rename(written, &path).unwrap();
    path
}

/// One completed write (create, update, patch, delete) in the API server's audit log.
#[derive(Debug, Clone)]
pub struct AuditWrite {
    /// When the API server received it.
    pub at: jiff::Timestamp,
    pub user: String,
    pub verb: String,
    pub resource: String,
    pub namespace: String,
    pub name: String,
    pub code: u16,
}

/// Every completed write in the API server's audit log, in order.
pub fn audit_writes(cluster: &Cluster) -> Vec<AuditWrite> {
    cluster
        .audit_log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["stage"] == "ResponseComplete")
        .filter(|e| {
            ["create", "update", "patch", "delete"].contains(&e["verb"].as_str().unwrap_or(""))
        })
        .map(|e| {
            let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
            AuditWrite {
                at: s(&e["requestReceivedTimestamp"]).parse().unwrap(),
                user: s(&e["user"]["username"]),
                verb: s(&e["verb"]),
                resource: s(&e["objectRef"]["resource"]),
                namespace: s(&e["objectRef"]["namespace"]),
                name: s(&e["objectRef"]["name"]),
                code: e["responseStatus"]["code"].as_u64().unwrap_or(0) as u16,
            }
        })
        .collect()
}

/// A kubeconfig whose API server does not exist (a loopback port nothing listens on): the
/// process starts, and every watch fails and retries.
pub fn dead_kubeconfig(dir: &Path) -> PathBuf {
    let dead = free_port();
    let path = dir.join("dead.kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: dead, cluster: {{server: 'https://127.0.0.1:{dead}', insecure-skip-tls-verify: true}}}}]\n\
             users: [{{name: u, user: {{token: x}}}}]\ncontexts: [{{name: c, context: {{cluster: dead, user: u}}}}]\ncurrent-context: c\n"
        ),
    )
    .unwrap();
    path
}

/// The HTTP status of a plain GET on loopback, or None when nothing answers.
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    agent
        .get(&format!("http://127.0.0.1:{port}{path}"))
        .call()
        .ok()
        .map(|r| r.status().as_u16())
}

/// An RFC 3339 time `secs` from now, to the second, as `agentguard.dev/approved-until` takes it.
pub fn in_secs(secs: i64) -> String {
    (jiff::Timestamp::now() + jiff::SignedDuration::from_secs(secs))
        .round(jiff::Unit::Second)
        .unwrap()
        .to_string()
}

pub fn wait_until(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// POSTs a tiny body to /validate over TLS, presenting `client` if given. Ok(status line) when
/// the server answered over HTTP, Err(what failed) otherwise.
pub fn tls_post_validate(
    port: u16,
    ca_pem: &str,
    client: Option<&agentguard::certs::ClientCertificate>,
) -> Result<String, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some(c) => builder
            .with_client_auth_cert(
                rustls::pki_types::CertificateDer::pem_slice_iter(c.cert_pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap(),
                rustls::pki_types::PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    let body = "{}";
    tls.write_all(
        format!(
            "POST /validate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    tls.flush().map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    match tls.read_to_end(&mut answer) {
        Ok(_) => {}
        Err(e) if answer.is_empty() => return Err(e.to_string()),
        Err(_) => {}
    }
    let text = String::from_utf8_lossy(&answer);
    match text.lines().next() {
        Some(line) if line.starts_with("HTTP/1.1 ") => Ok(line.to_owned()),
        _ => Err(format!("no HTTP answer: {text:?}")),
    }
}

/// Starts `agentguard run` serving `tls.crt`/`tls.key` from `dir` with `extra` flags and no
/// API server (the watches just retry; serving TLS needs none), waits until it answers
/// `/healthz`, and returns the process and its webhook port.
pub fn serve_tls_files(dir: &Path, extra: &[String]) -> (Child, u16) {
    let (webhook, metrics) = (free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_agentguard"))
        .args(["run", "--webhook-addr", &format!("127.0.0.1:{webhook}")])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics}")])
        .arg(format!("--tls-cert-file={}", dir.join("tls.crt").display()))
        .arg(format!("--tls-key-file={}", dir.join("tls.key").display()))
        .args([
            "--manage-webhook-configuration=false",
            "--leader-election=false",
        ])
        .args(extra)
        .env("KUBECONFIG", dead_kubeconfig(dir))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_status(metrics, "/healthz") != Some(200) {
        assert!(Instant::now() < deadline, "agentguard did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    (child, webhook)
}
