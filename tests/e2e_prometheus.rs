//! A real Prometheus scrapes agentguard and the real API server while agents are blocked,
//! humans approve, and one webhook is down. Then every query of the Grafana dashboard the chart
//! ships returns data, every alert rule the chart ships evaluates without error (and the
//! blocked-deletion and webhook-error alerts are active), and `hack/render-dashboard.py` draws
//! every panel from that Prometheus.
//!
//! Requires `hack/cluster.sh up` and Prometheus 3 (`hack/build-tools.sh` builds it from its
//! Go module); fails, never skips, without them. Set AGENTGUARD_DASHBOARD_PNG_DIR to keep the pictures (the README's
//! come from this test: `AGENTGUARD_DASHBOARD_PNG_DIR=docs/dashboard cargo test --test
//! e2e_prometheus`).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::{Cluster, Guard, TestNamespace, free_port, in_secs, stderr, stdout, wait_until};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const ADMIN: &str = "agentguard-admin";

/// Grafana's variables, as this test's Prometheus sees them: scraped every second, so a
/// two-minute rate window always holds many samples; the counting panels' least interval
/// (30 s, the recording rules' interval) is their step.
const VARIABLES: &[(&str, &str)] = &[
    ("$__rate_interval", "2m"),
    ("$__interval", "30s"),
    ("$__range", "10m"),
    ("${job}", "agentguard"),
    ("$job", "agentguard"),
    ("${namespace}", ".*"),
    ("$namespace", ".*"),
];

struct Prometheus {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus with the chart's alert rules, scraping agentguard as the chart's
    /// ServiceMonitor does (job "agentguard", honor_labels, a namespace target label) and the
    /// API server as kube-prometheus-stack does (job "apiserver", client certificate).
    fn start(cluster: &Cluster, metrics_port: u16) -> Self {
        let binary = prometheus_binary();
        let dir = tempfile::tempdir().unwrap();
        let (server, ca, cert, key) = api_server_credentials(cluster, dir.path());
        let port = free_port();
        let rules = Path::new(ROOT).join("charts/agentguard/rules/agentguard.rules.yaml");
        let config = format!(
            r#"global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: ["{rules}"]
scrape_configs:
  - job_name: agentguard
    honor_labels: true
    static_configs:
      - targets: ["127.0.0.1:{metrics_port}"]
        labels: {{namespace: agentguard-system}}
  - job_name: apiserver
    scheme: https
    tls_config: {{ca_file: "{ca}", cert_file: "{cert}", key_file: "{key}"}}
    static_configs:
      - targets: ["{server}"]
"#,
            rules = rules.display(),
            ca = ca.display(),
            cert = cert.display(),
            key = key.display(),
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let prometheus = Self { child, port, dir };
        wait_until(Duration::from_secs(60), "prometheus ready", || {
            prometheus.get("/-/ready").is_some()
        });
        prometheus
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn get(&self, path_and_query: &str) -> Option<String> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let mut resp = agent
            .get(format!("{}{path_and_query}", self.url()))
            .call()
            .ok()?;
        (resp.status() == 200).then(|| resp.body_mut().read_to_string().ok())?
    }

    /// POSTs a form to the HTTP API (queries), or GETs when there is none (rules, alerts).
    fn api(&self, path: &str, params: &[(&str, &str)]) -> Value {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let url = format!("{}{path}", self.url());
        let mut resp = if params.is_empty() {
            agent.get(url).call()
        } else {
            agent.post(url).send_form(params.iter().copied())
        }
        .expect("prometheus answers");
        serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap()
    }

    /// An instant query's result vector; panics with Prometheus's error when it does not parse.
    fn query(&self, expr: &str) -> Vec<Value> {
        let answer = self.api("/api/v1/query", &[("query", expr)]);
        assert_eq!(
            answer["status"], "success",
            "query does not run on Prometheus: {expr}\n{answer}"
        );
        answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Prometheus 3 that `hack/build-tools.sh` builds from its Go module, as users of
/// kube-prometheus-stack run it. Missing, the test fails with how to build it.
fn prometheus_binary() -> PathBuf {
    let out = Command::new(Path::new(ROOT).join("hack/build-tools.sh"))
        .arg("--print-prometheus")
        .output()
        .expect("run hack/build-tools.sh --print-prometheus");
    let binary = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()).join("prometheus");
    assert!(
        binary.is_file(),
        "no Prometheus at {}: build it with hack/build-tools.sh",
        binary.display()
    );
    let version = Command::new(&binary).arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    assert!(
        version.starts_with("prometheus, version 3."),
        "not Prometheus 3: {version}"
    );
    binary
}

/// The API server's address and the admin credentials of the test kubeconfig, as files
/// Prometheus can read.
fn api_server_credentials(cluster: &Cluster, dir: &Path) -> (String, PathBuf, PathBuf, PathBuf) {
    let view: Value = serde_json::from_str(&cluster.kubectl_ok(&[
        "config",
        "view",
        "--raw",
        "--minify",
        "--flatten",
        "-o",
        "json",
    ]))
    .unwrap();
    let server = view["clusters"][0]["cluster"]["server"].as_str().unwrap();
    let user = &view["users"][0]["user"];
    let write = |name: &str, b64: &Value| {
        use base64::Engine;
        let path = dir.join(name);
        let pem = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().expect("embedded credentials (--flatten)"))
            .unwrap();
        std::fs::write(&path, pem).unwrap();
        path
    };
    (
        server.trim_start_matches("https://").to_owned(),
        write(
            "ca.crt",
            &view["clusters"][0]["cluster"]["certificate-authority-data"],
        ),
        write("admin.crt", &user["client-certificate-data"]),
        write("admin.key", &user["client-key-data"]),
    )
}

/// Every panel of the dashboard with its title and query expressions (rows flattened).
fn panels(dashboard: &Value) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut stack: Vec<&Value> = dashboard["panels"].as_array().unwrap().iter().collect();
    while let Some(panel) = stack.pop() {
        if let Some(children) = panel["panels"].as_array() {
            stack.extend(children);
        }
        let exprs: Vec<String> = panel["targets"]
            .as_array()
            .map(|ts| {
                ts.iter()
                    .filter_map(|t| t["expr"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if !exprs.is_empty() {
            out.push((panel["title"].as_str().unwrap_or("?").to_owned(), exprs));
        }
    }
    out
}

fn substitute(expr: &str) -> String {
    VARIABLES
        .iter()
        .fold(expr.to_owned(), |e, (var, value)| e.replace(var, value))
}

#[test]
fn dashboard_queries_and_alerts_work_against_a_real_prometheus() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "grafana");
    let agent = ns.agent("cursor-agent");
    let other_agent = ns.agent("claude-agent");
    let guard = Guard::start(&ns, &agent);
    let prometheus = Prometheus::start(&cluster, guard.metrics_port);
    wait_until(
        Duration::from_secs(30),
        "prometheus to scrape agentguard and the API server",
        || {
            let up = prometheus.query("up == 1");
            ["agentguard", "apiserver"]
                .iter()
                .all(|job| up.iter().any(|s| s["metric"]["job"] == *job))
        },
    );

    // The recording rules count a first event only on a target that was up 30 s before (so
    // nothing is replayed after a Prometheus restart): let the targets get that history.
    wait_until(
        Duration::from_secs(90),
        "30 s of scrapes of agentguard and the API server",
        || {
            let up = prometheus.query("up offset 30s == 1");
            ["agentguard", "apiserver"]
                .iter()
                .all(|job| up.iter().any(|s| s["metric"]["job"] == *job))
        },
    );

    // A policy-protected database volume and annotation-protected claims.
    cluster.apply(&format!(
        "apiVersion: agentguard.dev/v1alpha1\nkind: ProtectedResource\nmetadata:\n  name: orders\n  namespace: {ns}\n\
         spec:\n  mode: Enforce\n  targets:\n    - apiGroups: [\"\"]\n      kinds: [PersistentVolumeClaim]\n      names: [\"orders-*\"]\n  approval:\n    maxTTL: 1h\n",
        ns = ns.name
    ));
    ns.pvc("orders-db", false);
    ns.pvc("orders-wal", false);
    ns.pvc("cache", true);
    let delete_as =
        |who: &str, name: &str| ns.kubectl_as(who, &["delete", "pvc", name, "--wait=false"]);
    let by_policy = format!("ProtectedResource {}/orders", ns.name);
    wait_until(
        Duration::from_secs(30),
        "the orders policy in force",
        || {
            let probe = ns.kubectl_as(&agent, &["delete", "pvc", "orders-db", "--dry-run=server"]);
            stderr(&probe).contains(&by_policy)
        },
    );
    // Blocked attempts by two agents, spread over a few scrapes so rates see them rise; when
    // the pictures are kept (for the README), over three minutes, so they show a story.
    let keep = std::env::var_os("AGENTGUARD_DASHBOARD_PNG_DIR").map(PathBuf::from);
    let (rounds, pause) = if keep.is_some() { (18, 10) } else { (3, 2) };
    for round in 0..rounds {
        for (who, name) in [
            (&agent, "orders-db"),
            (&agent, "cache"),
            (&other_agent, "orders-wal"),
        ] {
            let out = delete_as(who, name);
            assert!(!out.status.success(), "round {round}: {who} deleted {name}");
        }
        std::thread::sleep(Duration::from_secs(pause));
    }
    // A human approves one deletion and the agent uses it.
    ns.kubectl_ok(&[
        "annotate",
        "pvc",
        "orders-wal",
        &format!("agentguard.dev/approved-by={ADMIN}"),
        &format!("agentguard.dev/approved-until={}", in_secs(600)),
        "agentguard.dev/approval-reason=rebuilding the WAL volume",
    ]);
    let out = delete_as(&other_agent, "orders-wal");
    assert!(
        out.status.success(),
        "approved deletion refused: {}",
        stderr(&out)
    );

    // A webhook that is down for a second namespace: its own agentguard, killed, leaves the
    // configuration it wrote (failurePolicy Fail) behind. The API server fails closed and
    // counts a calling error.
    let down = TestNamespace::create(&cluster, "grafana-down");
    let down_agent = down.agent("cursor-agent");
    let mut down_guard = Guard::start(&down, &down_agent);
    down_guard.kill();
    down.pvc("data", false);
    wait_until(
        Duration::from_secs(30),
        "the down webhook to refuse",
        || {
            stderr(&down.kubectl_as(&down_agent, &["delete", "pvc", "data", "--wait=false"]))
                .contains("failed calling webhook")
        },
    );
    assert!(
        down.pvc_intact("data"),
        "fail-closed let a deletion through"
    );
    // Its configuration goes with it (it would refuse every cluster-scoped write it routes).
    drop(down_guard);

    // Every query of every panel returns data.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(ROOT).join("charts/agentguard/dashboards/agentguard.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let panels = panels(&dashboard);
    assert!(
        panels.len() >= 10,
        "only {} panels with queries",
        panels.len()
    );
    let mut empty = Vec::new();
    wait_until(
        Duration::from_secs(90),
        "every dashboard query to return data",
        || {
            empty = panels
                .iter()
                .flat_map(|(title, exprs)| exprs.iter().map(move |e| (title, e)))
                .filter(|(_, expr)| prometheus.query(&substitute(expr)).is_empty())
                .map(|(title, expr)| format!("{title}: {expr}"))
                .collect();
            empty.is_empty()
        },
    );
    assert!(empty.is_empty(), "queries without data: {empty:#?}");
    // The blocked-deletion series carry the protected object's namespace, not agentguard's.
    let by_namespace = prometheus.query("sum by (namespace) (agentguard_deletions_blocked_total)");
    assert_eq!(by_namespace.len(), 1, "{by_namespace:?}");
    assert_eq!(by_namespace[0]["metric"]["namespace"], ns.name.as_str());
    let blocked: f64 = prometheus.query(&format!(
        "sum(agentguard_deletions_blocked_total{{namespace=\"{}\",subject=\"{agent}\"}})",
        ns.name
    ))[0]["value"][1]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(blocked >= 6.0, "blocked by {agent}: {blocked}");

    // Every alert rule parses and evaluates; the blocked-deletion and webhook-error alerts
    // are active on this data.
    let mut active = Vec::new();
    // The rule group runs every 30 s: two evaluations.
    wait_until(
        Duration::from_secs(90),
        "the alert rules to be evaluated",
        || {
            let rules = prometheus.api("/api/v1/rules", &[]);
            let all: Vec<&Value> = rules["data"]["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|g| g["rules"].as_array().into_iter().flatten())
                .collect();
            if all.is_empty() || all.iter().any(|r| r["health"] != "ok") {
                return false;
            }
            for rule in &all {
                prometheus.query(rule["query"].as_str().unwrap());
            }
            active = all
                .iter()
                .filter(|r| r["state"] == "pending" || r["state"] == "firing")
                .map(|r| r["name"].as_str().unwrap().to_owned())
                .collect();
            // The test's serving certificate lives one hour: well inside the expiry alert.
            [
                "AgentguardDeletionBlocked",
                "AgentguardWebhookErrors",
                "AgentguardCertificateExpiring",
            ]
            .iter()
            .all(|name| active.iter().any(|n| n == name))
        },
    );
    assert!(
        !active.iter().any(|n| n == "AgentguardWebhookDown"),
        "AgentguardWebhookDown is active while agentguard is up: {active:?}"
    );
    let alerts = prometheus.api("/api/v1/alerts", &[]);
    assert!(
        alerts["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["labels"]["alertname"] == "AgentguardDeletionBlocked"
                && a["labels"]["subject"] == other_agent.as_str()),
        "no blocked-deletion alert for {other_agent}: {alerts}"
    );

    // The pictures: every panel drawn from this Prometheus.
    let scratch = tempfile::tempdir().unwrap();
    let out_dir = keep
        .map(|d| {
            if d.is_absolute() {
                d
            } else {
                Path::new(ROOT).join(d)
            }
        })
        .unwrap_or_else(|| scratch.path().to_owned());
    let render = Command::new("python3")
        .arg(Path::new(ROOT).join("hack/render-dashboard.py"))
        .args(["--prometheus", &prometheus.url()])
        .args(["--out", out_dir.to_str().unwrap()])
        .args(["--range", "5m"])
        .args(["--rate-interval", "2m", "--require-data"])
        .output()
        .expect("run python3 hack/render-dashboard.py");
    assert!(
        render.status.success(),
        "render-dashboard.py failed: {}{}\nprometheus log:\n{}",
        stdout(&render),
        stderr(&render),
        prometheus.log()
    );
    for (title, _) in &panels {
        let png = out_dir.join(format!("{}.png", slug(title)));
        let bytes = std::fs::read(&png)
            .unwrap_or_else(|e| panic!("{title}: no picture at {}: {e}", png.display()));
        assert!(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
            "{title}: not a PNG"
        );
    }
    assert!(out_dir.join("dashboard.png").exists());
    drop(guard);
}

/// File name of a panel's picture, as `hack/render-dashboard.py` names it.
fn slug(title: &str) -> String {
    let mut slug = String::new();
    for c in title.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
    }
    slug.trim_matches('-').to_owned()
}
