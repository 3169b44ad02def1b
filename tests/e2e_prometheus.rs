//! A real Prometheus 3 scrapes agentguard and the real API server.
//!
//! `dashboard_queries_and_alerts_work_against_a_real_prometheus`: while agents are blocked,
//! humans approve and one webhook is down, every query of the Grafana dashboard the chart
//! ships returns data, every alert rule the chart ships evaluates without error (the
//! blocked-deletion and webhook-error alerts active), and `hack/render-dashboard.py` draws
//! every panel.
//!
//! `the_dashboard_tells_the_story_exactly`: a scripted story, and every counting panel read as
//! Grafana reads it over the default range, value by value. The README's pictures come from
//! it: `AGENTGUARD_DASHBOARD_PNG_DIR=docs/dashboard cargo test --test e2e_prometheus story`.
//!
//! Requires `hack/cluster.sh up` and Prometheus 3 (`hack/build-tools.sh` builds it from its
//! Go module); fails, never skips, without them.

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
    /// API server as kube-prometheus-stack does (job "apiserver", client certificate), every
    /// second.
    fn start(cluster: &Cluster, metrics_port: u16) -> Self {
        Self::start_with(cluster, &[(metrics_port, "agentguard-0")], "1s")
    }

    /// [`Prometheus::start`] with several replicas (metrics port, Pod name: the ServiceMonitor's
    /// `pod` target label) scraped every `scrape`.
    fn start_with(cluster: &Cluster, replicas: &[(u16, &str)], scrape: &str) -> Self {
        let binary = prometheus_binary();
        let dir = tempfile::tempdir().unwrap();
        let (server, ca, cert, key) = api_server_credentials(cluster, dir.path());
        let port = free_port();
        let rules = Path::new(ROOT).join("charts/agentguard/rules/agentguard.rules.yaml");
        let config = format!(
            r#"global:
  scrape_interval: {scrape}
  evaluation_interval: {scrape}
rule_files: ["{rules}"]
scrape_configs:
  - job_name: agentguard
    honor_labels: true
    static_configs:
{targets}
  - job_name: apiserver
    scheme: https
    tls_config: {{ca_file: "{ca}", cert_file: "{cert}", key_file: "{key}"}}
    static_configs:
      - targets: ["{server}"]
"#,
            rules = rules.display(),
            targets = replicas
                .iter()
                .map(|(port, pod)| format!(
                    "      - targets: [\"127.0.0.1:{port}\"]\n        labels: {{namespace: agentguard-system, pod: {pod}}}\n"
                ))
                .collect::<String>()
                .trim_end(),
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
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
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
    // Blocked attempts by two agents, spread over a few scrapes so rates see them rise.
    for round in 0..3 {
        for (who, name) in [
            (&agent, "orders-db"),
            (&agent, "cache"),
            (&other_agent, "orders-wal"),
        ] {
            let out = delete_as(who, name);
            assert!(!out.status.success(), "round {round}: {who} deleted {name}");
        }
        std::thread::sleep(Duration::from_secs(2));
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

    // Every panel can be drawn from this Prometheus.
    let scratch = tempfile::tempdir().unwrap();
    render(&prometheus, scratch.path(), "5m", true);
    drop(guard);
}

/// Draws every panel of the dashboard from `prometheus` over the last `range` into `out_dir`
/// with `hack/render-dashboard.py` (`require_data`: every query must return something), and
/// checks that each picture is there.
fn render(prometheus: &Prometheus, out_dir: &Path, range: &str, require_data: bool) {
    let render = Command::new("python3")
        .arg(Path::new(ROOT).join("hack/render-dashboard.py"))
        .args(["--prometheus", &prometheus.url()])
        .args(["--out", out_dir.to_str().unwrap()])
        .args(["--range", range, "--rate-interval", "1m"])
        .args(require_data.then_some("--require-data"))
        .output()
        .expect("run python3 hack/render-dashboard.py");
    assert!(
        render.status.success(),
        "render-dashboard.py failed: {}{}\nprometheus log:\n{}",
        stdout(&render),
        stderr(&render),
        prometheus.log()
    );
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(ROOT).join("charts/agentguard/dashboards/agentguard.json"),
        )
        .unwrap(),
    )
    .unwrap();
    for (title, _) in panels(&dashboard) {
        let png = out_dir.join(format!("{}.png", slug(&title)));
        let bytes = std::fs::read(&png)
            .unwrap_or_else(|e| panic!("{title}: no picture at {}: {e}", png.display()));
        assert!(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
            "{title}: not a PNG"
        );
    }
    assert!(out_dir.join("dashboard.png").exists());
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

// ---------------------------------------------------------------------------------------------
// The scripted story: every counting panel read as Grafana reads it, value by value.

/// Both tests here make a webhook outage, and the API server counts every webhook named
/// validate.agentguard.dev together: one test at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Scrape interval of the story's Prometheus.
const SCRAPE_SECS: u64 = 5;
/// The dashboard's default time range (`now-6h`).
const RANGE_SECS: u64 = 6 * 3600;

/// Something the story did, and what the dashboard must count for it.
#[derive(Debug, Clone)]
struct Event {
    what: &'static str,
    /// Unix seconds when it happened.
    at: f64,
    count: f64,
    subject: String,
    policy: String,
}

impl Event {
    /// The steps a count of this event may land in: it is recorded at the first rule
    /// evaluation (every 30 s) after the scrape that saw it, and a step of 30 s ending at T
    /// holds what was recorded in (T - 30 s, T].
    fn holds(&self, step_end: f64) -> bool {
        step_end >= self.at && step_end <= self.at + (SCRAPE_SECS + 30 + 30 + 10) as f64
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Grafana's `$__interval` for a panel: the range over the panel's data points (its width in
/// pixels: 80 per grid column on a 1920-pixel screen), rounded as Grafana's roundInterval does,
/// and never below the panel's least `interval`.
fn grafana_interval(panel: &Value) -> u64 {
    let width = panel["gridPos"]["w"].as_u64().unwrap_or(12) * 80;
    let raw = RANGE_SECS as f64 / width as f64;
    let rounded = [
        (1.5, 1),
        (3.5, 2),
        (7.5, 5),
        (12.5, 10),
        (17.5, 15),
        (25.0, 20),
        (45.0, 30),
        (90.0, 60),
        (210.0, 120),
        (450.0, 300),
    ]
    .iter()
    .find(|(below, _)| raw < *below)
    .map_or(600, |(_, r)| *r);
    let least = panel["interval"]
        .as_str()
        .map_or(0, |i| i.trim_end_matches('s').parse::<u64>().unwrap());
    rounded.max(least)
}

/// One series a panel's query returned: its refId, its labels, and `(step end, value)` points
/// (one for an instant query).
type Series = (String, serde_json::Map<String, Value>, Vec<(f64, f64)>);

/// What the story did, and when it ended.
struct Story {
    ns: String,
    end: f64,
    blocks: Vec<Event>,
    approvals: Vec<Event>,
    outage: Event,
}

/// A panel's queries, evaluated as Grafana evaluates them over the default range ending at
/// `end`.
fn evaluate(prometheus: &Prometheus, panel: &Value, end: f64) -> Vec<Series> {
    let interval = grafana_interval(panel);
    // $__rate_interval: the larger of $__interval plus one scrape and four scrapes.
    let rate_interval = (interval + SCRAPE_SECS).max(4 * SCRAPE_SECS);
    let variables = [
        ("$__rate_interval", format!("{rate_interval}s")),
        ("$__interval", format!("{interval}s")),
        ("$__range", format!("{RANGE_SECS}s")),
        ("${job}", "agentguard".into()),
        ("$job", "agentguard".into()),
        ("${namespace}", ".*".into()),
        ("$namespace", ".*".into()),
    ];
    let step = interval as f64;
    let (start, end_aligned) = (
        ((end - RANGE_SECS as f64) / step).floor() * step,
        (end / step).ceil() * step,
    );
    let mut out = Vec::new();
    for target in panel["targets"].as_array().into_iter().flatten() {
        let expr = variables
            .iter()
            .fold(target["expr"].as_str().unwrap().to_owned(), |e, (k, v)| {
                e.replace(k, v)
            });
        let ref_id = target["refId"].as_str().unwrap_or("A").to_owned();
        if target["instant"] == true {
            let answer = prometheus.api(
                "/api/v1/query",
                &[("query", &expr), ("time", &end.to_string())],
            );
            assert_eq!(answer["status"], "success", "{expr}: {answer}");
            for r in answer["data"]["result"].as_array().unwrap() {
                let v: f64 = r["value"][1].as_str().unwrap().parse().unwrap();
                let metric = r["metric"].as_object().cloned().unwrap_or_default();
                out.push((ref_id.clone(), metric, vec![(end, v)]));
            }
        } else {
            let answer = prometheus.api(
                "/api/v1/query_range",
                &[
                    ("query", &expr),
                    ("start", &start.to_string()),
                    ("end", &end_aligned.to_string()),
                    ("step", &step.to_string()),
                ],
            );
            assert_eq!(answer["status"], "success", "{expr}: {answer}");
            for r in answer["data"]["result"].as_array().unwrap() {
                let points = r["values"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| {
                        (
                            p[0].as_f64().unwrap(),
                            p[1].as_str().unwrap().parse().unwrap(),
                        )
                    })
                    .collect();
                let metric = r["metric"].as_object().cloned().unwrap_or_default();
                out.push((ref_id.clone(), metric, points));
            }
        }
    }
    out
}

/// Compares a time series with the events it must show: every step outside their windows is
/// 0 (or absent before the series existed), and the steps in each event's window add up to
/// its count. Mismatches are pushed to `wrong`, named after `what`.
fn expect_steps(what: &str, points: &[(f64, f64)], events: &[&Event], wrong: &mut Vec<String>) {
    let mut sums = vec![0.0; events.len()];
    for (at, value) in points {
        if *value == 0.0 {
            continue;
        }
        match events.iter().position(|e| e.holds(*at)) {
            Some(i) => sums[i] += value,
            None => wrong.push(format!(
                "{what}: {value} at {at}, when nothing happened (events: {:?})",
                events.iter().map(|e| (e.what, e.at)).collect::<Vec<_>>()
            )),
        }
    }
    for (event, sum) in events.iter().zip(sums) {
        if sum != event.count {
            wrong.push(format!(
                "{what}: {sum} in the steps after {} (at {}), expected {}",
                event.what, event.at, event.count
            ));
        }
    }
}

/// What a person reads on each counting panel, against what the story did. Returns the
/// mismatches; `only` limits the check to one panel.
fn story_mismatches(
    prometheus: &Prometheus,
    dashboard: &Value,
    story: &Story,
    only: Option<&str>,
) -> Vec<String> {
    let Story {
        ns,
        end,
        blocks,
        approvals,
        outage,
    } = story;
    let (ns, end) = (ns.as_str(), *end);
    let mut wrong = Vec::new();
    let mut stack: Vec<&Value> = dashboard["panels"].as_array().unwrap().iter().collect();
    let mut panels = Vec::new();
    while let Some(p) = stack.pop() {
        stack.extend(p["panels"].as_array().into_iter().flatten());
        panels.push(p);
    }
    let panel = |title: &str| {
        *panels
            .iter()
            .find(|p| p["title"] == title)
            .unwrap_or_else(|| panic!("no panel {title}"))
    };
    let all: Vec<&Event> = blocks.iter().collect();
    let total: f64 = blocks.iter().map(|e| e.count).sum();
    let label = |m: &serde_json::Map<String, Value>, k: &str| {
        m.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let titles = [
        "Deletions blocked",
        "Deletions blocked over time",
        "Deletions blocked by agent",
        "Deletions blocked by namespace and resource",
        "Deletions blocked by policy",
        "Latest blocks",
        "Admission decisions by outcome",
        "Approvals by result",
        "Webhook call errors",
        "Webhook call errors seen by the API server",
    ];
    for title in titles.into_iter().filter(|t| only.is_none_or(|o| o == *t)) {
        let series = evaluate(prometheus, panel(title), end);
        let single = |wrong: &mut Vec<String>| -> Vec<(f64, f64)> {
            if series.len() != 1 {
                wrong.push(format!("{title}: {} series, expected 1", series.len()));
            }
            series.first().map(|s| s.2.clone()).unwrap_or_default()
        };
        match title {
            "Deletions blocked" | "Webhook call errors" => {
                let want = if title == "Webhook call errors" {
                    outage.count
                } else {
                    total
                };
                let got = single(&mut wrong).first().map_or(f64::NAN, |p| p.1);
                if got != want {
                    wrong.push(format!("{title}: reads {got}, expected {want}"));
                }
            }
            "Deletions blocked over time" => {
                let points = single(&mut wrong);
                expect_steps(title, &points, &all, &mut wrong);
                let first = points.first().map(|p| p.0).unwrap_or_default();
                if points.iter().any(|p| p.1.is_nan()) || first > end - RANGE_SECS as f64 + 60.0 {
                    wrong.push(format!(
                        "{title}: not 0 from the start of the range (first point at {first})"
                    ));
                }
            }
            "Deletions blocked by agent"
            | "Deletions blocked by policy"
            | "Deletions blocked by namespace and resource" => {
                let key = |e: &Event| match title {
                    "Deletions blocked by agent" => e.subject.clone(),
                    "Deletions blocked by policy" => e.policy.clone(),
                    _ => format!("{ns}/persistentvolumeclaims"),
                };
                let mut keys: Vec<String> = blocks.iter().map(key).collect();
                keys.sort();
                keys.dedup();
                let mut seen = Vec::new();
                for (_, metric, points) in &series {
                    let k = match title {
                        "Deletions blocked by agent" => label(metric, "subject"),
                        "Deletions blocked by policy" => label(metric, "policy"),
                        _ => format!(
                            "{}/{}",
                            label(metric, "namespace"),
                            label(metric, "resource")
                        ),
                    };
                    let mine: Vec<&Event> = blocks.iter().filter(|e| key(e) == k).collect();
                    if mine.is_empty() {
                        wrong.push(format!("{title}: a series {k} the story never made"));
                    }
                    expect_steps(&format!("{title} ({k})"), points, &mine, &mut wrong);
                    seen.push(k);
                }
                seen.sort();
                if seen != keys {
                    wrong.push(format!("{title}: series {seen:?}, expected {keys:?}"));
                }
            }
            "Latest blocks" => {
                let mut rows: Vec<(String, String, f64)> = Vec::new();
                for (ref_id, metric, points) in &series {
                    let (subject, policy) = (label(metric, "subject"), label(metric, "policy"));
                    let value = points[0].1;
                    let mine: Vec<&Event> = blocks
                        .iter()
                        .filter(|e| e.subject == subject && e.policy == policy)
                        .collect();
                    if ref_id == "A" {
                        let want: f64 = mine.iter().map(|e| e.count).sum();
                        if value != want || label(metric, "namespace") != ns {
                            wrong.push(format!(
                                "{title}: {subject} {policy} in {:?}: {value} blocks, expected {want} in {ns}",
                                label(metric, "namespace")
                            ));
                        }
                        rows.push((subject, policy, value));
                    } else if let Some(last) = mine.last()
                        && !last.holds(value / 1000.0)
                    {
                        wrong.push(format!(
                            "{title}: last block of {subject} {policy} shown at {}, it happened at {}",
                            value / 1000.0,
                            last.at
                        ));
                    }
                }
                let mut want: Vec<(String, String)> = blocks
                    .iter()
                    .map(|e| (e.subject.clone(), e.policy.clone()))
                    .collect();
                want.sort();
                want.dedup();
                let mut got: Vec<(String, String)> =
                    rows.into_iter().map(|(s, p, _)| (s, p)).collect();
                got.sort();
                if got != want {
                    wrong.push(format!("{title}: rows {got:?}, expected {want:?}"));
                }
            }
            "Admission decisions by outcome" => {
                // Only the story's deletions are refused; other decisions (the operator's own
                // writes) are allowed and keep coming.
                let denied: Vec<&Series> = series
                    .iter()
                    .filter(|s| label(&s.1, "decision") == "denied")
                    .collect();
                match denied.as_slice() {
                    [one] => expect_steps(&format!("{title} (denied)"), &one.2, &all, &mut wrong),
                    _ => wrong.push(format!("{title}: {} denied series", denied.len())),
                }
            }
            "Approvals by result" => {
                for event in approvals {
                    let points: Vec<(f64, f64)> = series
                        .iter()
                        .filter(|s| label(&s.1, "result") == event.subject)
                        .flat_map(|s| s.2.clone())
                        .collect();
                    expect_steps(
                        &format!("{title} ({})", event.subject),
                        &points,
                        &[event],
                        &mut wrong,
                    );
                }
            }
            "Webhook call errors seen by the API server" => {
                let points: Vec<(f64, f64)> = series.iter().flat_map(|s| s.2.clone()).collect();
                expect_steps(title, &points, &[outage], &mut wrong);
            }
            _ => unreachable!(),
        }
    }
    wrong
}

/// The API server's own count of failed calls to webhooks named validate.agentguard.dev.
fn api_server_webhook_failures(cluster: &Cluster) -> f64 {
    cluster
        .kubectl_ok(&["get", "--raw", "/metrics"])
        .lines()
        .filter(|l| {
            l.starts_with("apiserver_admission_webhook_rejection_count{")
                && l.contains("name=\"validate.agentguard.dev\"")
                && !l.contains("error_type=\"no_error\"")
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

#[test]
fn the_dashboard_tells_the_story_exactly() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "story");
    let (a, b, c) = (
        ns.agent("cursor-agent"),
        ns.agent("claude-agent"),
        ns.agent("devin-agent"),
    );
    // Two replicas behind one address, as behind the chart's Service.
    let replicas = support::TwoReplicas::start(&ns, &a, Default::default());
    let [ports_a, ports_b] = replicas.ports;
    let ready = |port| support::http_status(port, "/readyz") == Some(200);
    let mut replica_b = replicas.spawn_b(&ns);
    wait_until(Duration::from_secs(30), "replica b ready", || {
        ready(ports_b.1)
    });

    // What the agents go for: claims protected by annotation, and by a policy.
    cluster.apply(&format!(
        "apiVersion: agentguard.dev/v1alpha1\nkind: ProtectedResource\nmetadata:\n  name: orders\n  namespace: {ns}\n\
         spec:\n  mode: Enforce\n  targets:\n    - apiGroups: [\"\"]\n      kinds: [PersistentVolumeClaim]\n      names: [\"orders-*\"]\n  approval:\n    maxTTL: 1h\n",
        ns = ns.name
    ));
    for (claim, annotated) in [("cache", true), ("orders-db", false), ("scratch", true)] {
        ns.pvc(claim, annotated);
    }
    let by_policy = format!("ProtectedResource/{}/orders", ns.name);
    wait_until(
        Duration::from_secs(30),
        "the orders policy in force",
        || {
            stderr(&ns.kubectl_as(&b, &["delete", "pvc", "orders-db", "--dry-run=server"]))
                .contains(&format!("ProtectedResource {}/orders", ns.name))
        },
    );

    let prometheus = Prometheus::start_with(
        &cluster,
        &[(ports_a.1, "agentguard-a"), (ports_b.1, "agentguard-b")],
        &format!("{SCRAPE_SECS}s"),
    );
    let started = unix_now();
    // The recording rules count a first event only on a target up 30 s before.
    wait_until(Duration::from_secs(120), "30 s of scrapes", || {
        prometheus.query("up offset 30s == 1").len() == 3
    });
    // From here on, every failed call to the webhook is the story's: there must be none but
    // the outage's (not even while replica b restarts).
    let failures_before = api_server_webhook_failures(&cluster);

    let block = |who: &str, claim: &str, times: u32, policy: &str, what: &'static str| {
        let at = unix_now();
        for _ in 0..times {
            let out = ns.kubectl_as(who, &["delete", "pvc", claim, "--wait=false"]);
            assert!(
                stderr(&out).contains("agentguard: DENIED"),
                "{what}: {}",
                stderr(&out)
            );
        }
        Event {
            what,
            at,
            count: times.into(),
            subject: who.to_owned(),
            policy: policy.to_owned(),
        }
    };
    let pause = || std::thread::sleep(Duration::from_secs(80));
    let mut blocks = Vec::new();
    // Agent A, three times at one moment.
    blocks.push(block(&a, "cache", 3, "annotation", "A blocked 3 times"));
    std::thread::sleep(Duration::from_secs(40));
    // Replica b restarts: its counters start again from nothing.
    Command::new("kill")
        .args(["-TERM", &replica_b.id().to_string()])
        .status()
        .unwrap();
    wait_until(Duration::from_secs(25), "replica b to exit", || {
        replica_b.try_wait().unwrap().is_some()
    });
    replica_b = replicas.spawn_b(&ns);
    wait_until(Duration::from_secs(30), "replica b ready again", || {
        ready(ports_b.1)
    });
    std::thread::sleep(Duration::from_secs(40));
    // Agent B, five times, on the policy's claim.
    blocks.push(block(&b, "orders-db", 5, &by_policy, "B blocked 5 times"));
    pause();
    // A new agent's first block: a brand-new series.
    blocks.push(block(&c, "scratch", 1, "annotation", "C's first block"));
    pause();
    // A human approves one deletion and agent C uses it.
    let approved_at = unix_now();
    ns.kubectl_ok(&[
        "annotate",
        "pvc",
        "scratch",
        &format!("agentguard.dev/approved-by={ADMIN}"),
        &format!("agentguard.dev/approved-until={}", in_secs(600)),
    ]);
    let out = ns.kubectl_as(&c, &["delete", "pvc", "scratch", "--wait=false"]);
    assert!(
        out.status.success(),
        "approved deletion refused: {}",
        stderr(&out)
    );
    let approvals: Vec<Event> = ["accepted", "used"]
        .into_iter()
        .map(|result| Event {
            what: "an approval",
            at: approved_at,
            count: 1.0,
            subject: result.to_owned(),
            policy: String::new(),
        })
        .collect();
    pause();
    // A webhook outage: another namespace's agentguard dies and leaves its configuration.
    let down = TestNamespace::create(&cluster, "story-down");
    let down_agent = down.agent("cursor-agent");
    down.pvc("data", false);
    let mut down_guard = Guard::start(&down, &down_agent);
    let outage_at = unix_now();
    down_guard.kill();
    for _ in 0..3 {
        wait_until(
            Duration::from_secs(30),
            "a call to the dead webhook",
            || {
                stderr(&down.kubectl_as(&down_agent, &["delete", "pvc", "data", "--wait=false"]))
                    .contains("failed calling webhook")
            },
        );
    }
    drop(down_guard);
    let outage = Event {
        what: "the webhook outage",
        at: outage_at,
        count: api_server_webhook_failures(&cluster) - failures_before,
        subject: String::new(),
        policy: String::new(),
    };
    assert!(outage.count >= 3.0, "{outage:?}");
    // The last scrape and the evaluation after it.
    std::thread::sleep(Duration::from_secs(SCRAPE_SECS + 40));
    let end = unix_now();

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(ROOT).join("charts/agentguard/dashboards/agentguard.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let story = Story {
        ns: ns.name.clone(),
        end,
        blocks,
        approvals,
        outage,
    };
    let wrong = story_mismatches(&prometheus, &dashboard, &story, None);
    assert!(
        wrong.is_empty(),
        "the dashboard does not tell the story:\n{}\nevents: {:#?}\n{:#?}\n{:#?}",
        wrong.join("\n"),
        story.blocks,
        story.approvals,
        story.outage
    );

    // The check catches a panel that counts the old way: increase() over overlapping windows.
    let mut broken = dashboard.clone();
    let mut stack: Vec<&mut Value> = broken["panels"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .collect();
    while let Some(p) = stack.pop() {
        if p["title"] == "Deletions blocked over time" {
            p["targets"][0]["expr"] = "sum(increase(agentguard_deletions_blocked_total{job=~\"$job\", namespace=~\"$namespace\"}[$__rate_interval])) or vector(0)".into();
        } else if let Some(children) = p["panels"].as_array_mut() {
            stack.extend(children.iter_mut());
        }
    }
    let caught = story_mismatches(
        &prometheus,
        &broken,
        &story,
        Some("Deletions blocked over time"),
    );
    assert!(
        !caught.is_empty(),
        "the old increase() query passed the story"
    );
    eprintln!("the old query, caught: {}", caught.join("; "));

    // The README's pictures come from this story: AGENTGUARD_DASHBOARD_PNG_DIR=docs/dashboard.
    let scratch = tempfile::tempdir().unwrap();
    let out_dir = std::env::var_os("AGENTGUARD_DASHBOARD_PNG_DIR")
        .map(|d| Path::new(ROOT).join(d))
        .unwrap_or_else(|| scratch.path().to_owned());
    let minutes = ((end - started) / 60.0).ceil() as u64 + 1;
    render(&prometheus, &out_dir, &format!("{minutes}m"), false);
    let _ = replica_b.kill();
    let _ = replica_b.wait();
}
