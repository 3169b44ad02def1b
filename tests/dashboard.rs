//! The Grafana dashboard the chart ships (charts/agentguard/dashboards/agentguard.json).
//!
//! - grafana/dashboard-linter's rules, implemented here over the JSON (its Go module cannot be
//!   fetched here), plus agentguard's own: every query filters on the right job, namespace and
//!   webhook, uses only metrics the code exports, and the layout fits Grafana's 24 columns.
//! - Each rule is shown to catch a broken copy of the dashboard, so none can silently pass.
//! - Grafana's own published schema (@grafana/schema, checked by tsc --strict through
//!   tests/dashboard/check-schema.mjs), and proof that check rejects broken copies.
//!
//! Linter rules not adopted, on purpose:
//! - template-instance-rule / target-instance-rule: the panels add up all replicas (blocks and
//!   decisions are spread over them); a per-instance filter would hide part of them.
//! - target-counter-agg-rule: a counter series that first appears with value 1 has
//!   increase() == 0, so the first block of each new agent/object/policy combination would be
//!   invisible. The queries add those series with `x unless x offset <window>`, which reads
//!   the raw counter.
//!
//! `increase(...[$__range])` is accepted in instant queries (stat and table totals over the
//! dashboard's range); the linter's rate-interval rule is about rate() windows on time series,
//! and rate/irate/increase in range queries must use `$__rate_interval`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::process::{Command, Output};

use agentguard::metrics::Metrics;
use serde_json::{Value, json};

const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/charts/agentguard/dashboards/agentguard.json"
);
const SCHEMA_CHECK: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/dashboard/check-schema.mjs"
);
const WEBHOOK_NAME: &str = "validate.agentguard.dev";
/// What every panel and query names as its data source.
const DATASOURCE_REF: &str = r#"{"type":"prometheus","uid":"${datasource}"}"#;

/// Grafana variables a query may use; the end-to-end test substitutes exactly these.
const QUERY_VARIABLES: &[&str] = &[
    "job",
    "namespace",
    "__rate_interval",
    "__range",
    "__interval",
];
/// Panel types Grafana replaced (Angular plugins, removed in Grafana 12).
const LEGACY_PANEL_TYPES: &[&str] = &[
    "graph",
    "singlestat",
    "grafana-singlestat-panel",
    "table-old",
    "grafana-piechart-panel",
    "grafana-worldmap-panel",
];
/// Panel types whose queries are instant (one value per series over the range).
const INSTANT_PANEL_TYPES: &[&str] = &["stat", "gauge", "bargauge", "table", "piechart"];
/// Grafana unit ids (packages/grafana-data/src/valueFormats/categories.ts), the ones a
/// dashboard like this one can sensibly use.
const UNITS: &[&str] = &[
    "none",
    "string",
    "short",
    "percent",
    "percentunit",
    "locale",
    "sci",
    "bytes",
    "decbytes",
    "bits",
    "decbits",
    "Bps",
    "bps",
    "pps",
    "hertz",
    "ns",
    "µs",
    "ms",
    "s",
    "m",
    "h",
    "d",
    "dtdurationms",
    "dtdurations",
    "dthms",
    "dtdhms",
    "clockms",
    "clocks",
    "dateTimeAsIso",
    "dateTimeAsIsoNoDateIfToday",
    "dateTimeAsUS",
    "dateTimeAsUSNoDateIfToday",
    "dateTimeAsLocal",
    "dateTimeAsLocalNoDateIfToday",
    "dateTimeAsSystem",
    "dateTimeFromNow",
    "cps",
    "ops",
    "reqps",
    "rps",
    "wps",
    "iops",
    "cpm",
    "opm",
    "rpm",
    "wpm",
    "bool",
    "bool_yes_no",
    "bool_on_off",
];

/// Every rule `lint` implements; each must have a case in `each_rule_catches_a_broken_copy`.
const RULES: &[&str] = &[
    "dashboard-identity-rule",
    "template-datasource-rule",
    "template-job-rule",
    "template-namespace-rule",
    "template-label-promql-rule",
    "template-on-time-change-reload",
    "panel-id-unique-rule",
    "panel-legacy-type-rule",
    "panel-datasource-rule",
    "panel-title-description-rule",
    "panel-units-rule",
    "panel-no-targets-rule",
    "panel-gridpos-rule",
    "target-datasource-rule",
    "target-refid-rule",
    "target-promql-rule",
    "target-rate-interval-rule",
    "target-range-variable-rule",
    "target-instant-rule",
    "target-job-rule",
    "target-namespace-rule",
    "target-webhook-name-rule",
    "target-metric-known-rule",
];

fn dashboard() -> Value {
    let text = std::fs::read_to_string(DASHBOARD).expect("read the dashboard");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

// ---------------------------------------------------------------------------------------------
// Findings

#[derive(Debug, Clone, PartialEq, Eq)]
struct Finding {
    rule: &'static str,
    /// The panel's title, or None for the dashboard and its variables.
    panel: Option<String>,
    message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.panel {
            Some(title) => write!(f, "[{}] panel '{}': {}", self.rule, title, self.message),
            None => write!(f, "[{}] dashboard: {}", self.rule, self.message),
        }
    }
}

#[derive(Default)]
struct Findings(Vec<Finding>);

impl Findings {
    fn dashboard(&mut self, rule: &'static str, message: impl Into<String>) {
        self.0.push(Finding {
            rule,
            panel: None,
            message: message.into(),
        });
    }

    fn panel(&mut self, rule: &'static str, panel: &Value, message: impl Into<String>) {
        self.0.push(Finding {
            rule,
            panel: Some(title(panel)),
            message: message.into(),
        });
    }
}

fn title(panel: &Value) -> String {
    match panel["title"].as_str() {
        Some(t) if !t.is_empty() => t.to_owned(),
        _ => format!("<untitled, id {}>", panel["id"]),
    }
}

fn report(findings: &[Finding]) -> String {
    findings
        .iter()
        .map(|f| format!("  {f}"))
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------------------------
// A small PromQL scanner: enough structure for the rules (selectors with their matchers, the
// function a range selector is the argument of, subqueries, offsets, variables). Whether the
// expressions are valid PromQL is for Prometheus itself: the end-to-end test runs every query.

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(String),
    Var(String),
    Open(char),
    Close(char),
    Op(String),
    Comma,
    Colon,
}

fn lex(expr: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '"' | '\'' | '`' => {
                let quote = c;
                let mut value = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(format!("unterminated string in `{expr}`")),
                        Some('\\') if quote != '`' => {
                            if let Some(&next) = chars.get(i + 1) {
                                value.push(next);
                            }
                            i += 2;
                        }
                        Some(&ch) if ch == quote => {
                            i += 1;
                            break;
                        }
                        Some(&ch) => {
                            value.push(ch);
                            i += 1;
                        }
                    }
                }
                out.push(Tok::Str(value));
            }
            '$' => {
                i += 1;
                let name: String = if chars.get(i) == Some(&'{') {
                    let end = chars[i..]
                        .iter()
                        .position(|&ch| ch == '}')
                        .ok_or_else(|| format!("unterminated ${{...}} in `{expr}`"))?;
                    let inner: String = chars[i + 1..i + end].iter().collect();
                    i += end + 1;
                    inner
                } else {
                    let start = i;
                    while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                        i += 1;
                    }
                    chars[start..i].iter().collect()
                };
                if name.is_empty() {
                    return Err(format!("a lone `$` in `{expr}`"));
                }
                out.push(Tok::Var(name));
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                out.push(Tok::Ident(chars[start..i].iter().collect()));
            }
            c if c.is_ascii_digit()
                || (c == '.' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())) =>
            {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
                out.push(Tok::Num(chars[start..i].iter().collect()));
            }
            '(' | '{' | '[' => {
                out.push(Tok::Open(c));
                i += 1;
            }
            ')' | '}' | ']' => {
                out.push(Tok::Close(c));
                i += 1;
            }
            ',' => {
                out.push(Tok::Comma);
                i += 1;
            }
            ':' => {
                out.push(Tok::Colon);
                i += 1;
            }
            '=' | '!' | '~' | '<' | '>' => {
                let start = i;
                while i < chars.len() && matches!(chars[i], '=' | '!' | '~' | '<' | '>') {
                    i += 1;
                }
                out.push(Tok::Op(chars[start..i].iter().collect()));
            }
            '+' | '-' | '*' | '/' | '%' | '^' => {
                out.push(Tok::Op(c.to_string()));
                i += 1;
            }
            other => return Err(format!("unexpected `{other}` in `{expr}`")),
        }
    }
    Ok(out)
}

/// Grafana variables anywhere in `text`, label values included: `$name` and `${name}` (the
/// latter with any `:format` kept, so it does not pass for a plain variable).
fn variables(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        rest = &rest[at + 1..];
        let name = match rest.strip_prefix('{') {
            Some(braced) => braced.split_once('}').map_or(braced, |(name, _)| name),
            None => {
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                &rest[..end]
            }
        };
        out.push(name.to_owned());
    }
    out
}

#[derive(Debug, Default)]
struct Selector {
    metric: String,
    /// (label, operator, value)
    matchers: Vec<(String, String, String)>,
    /// The range of a range selector, as written (`$__rate_interval`, `5m`).
    range: Option<String>,
    /// The function whose argument list directly holds this selector.
    function: Option<String>,
}

#[derive(Debug, Default)]
struct Scan {
    selectors: Vec<Selector>,
    /// (range, resolution) of each subquery, as written.
    subqueries: Vec<(String, String)>,
    offsets: Vec<String>,
    variables: Vec<String>,
}

const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "atan2", "offset"];

fn text_of(tokens: &[Tok]) -> String {
    tokens
        .iter()
        .map(|t| match t {
            Tok::Var(v) => format!("${v}"),
            Tok::Num(n) | Tok::Ident(n) => n.clone(),
            Tok::Colon => ":".into(),
            other => format!("{other:?}"),
        })
        .collect()
}

/// Reads `[...]` at `i` (which is the `[`); returns the inside and the index after `]`.
fn bracket(tokens: &[Tok], i: usize) -> Result<(&[Tok], usize), String> {
    let end = tokens[i..]
        .iter()
        .position(|t| *t == Tok::Close(']'))
        .ok_or("unterminated [")?;
    Ok((&tokens[i + 1..i + end], i + end + 1))
}

fn scan(expr: &str) -> Result<Scan, String> {
    let tokens = lex(expr)?;
    let mut out = Scan {
        variables: variables(expr),
        ..Default::default()
    };
    // For each open `(`: the function or aggregation it calls, if any.
    let mut parens: Vec<Option<String>> = Vec::new();
    let mut pending_aggregation: Option<String> = None;
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            Tok::Ident(word) if GROUPING.contains(&word.as_str()) => {
                // A label list: `by (a, b)`.
                if tokens.get(i + 1) != Some(&Tok::Open('(')) {
                    return Err(format!("`{word}` without a label list"));
                }
                let end = tokens[i..]
                    .iter()
                    .position(|t| *t == Tok::Close(')'))
                    .ok_or("unterminated label list")?;
                i += end + 1;
            }
            Tok::Ident(word) if word == "offset" => {
                match tokens.get(i + 1) {
                    Some(Tok::Num(d)) => out.offsets.push(d.clone()),
                    Some(Tok::Var(v)) => out.offsets.push(format!("${v}")),
                    _ => return Err("`offset` without a duration".into()),
                }
                i += 2;
            }
            Tok::Ident(word) if KEYWORDS.contains(&word.as_str()) => i += 1,
            Tok::Ident(name) => {
                match tokens.get(i + 1) {
                    Some(Tok::Open('(')) => {
                        parens.push(Some(name.clone()));
                        i += 2;
                        continue;
                    }
                    Some(Tok::Ident(next)) if next == "by" || next == "without" => {
                        pending_aggregation = Some(name.clone());
                        i += 1;
                        continue;
                    }
                    _ => {}
                }
                i = selector(&tokens, i, Some(name.clone()), &parens, &mut out)?;
            }
            Tok::Open('{') => i = selector(&tokens, i, None, &parens, &mut out)?,
            Tok::Open('(') => {
                parens.push(pending_aggregation.take());
                i += 1;
            }
            Tok::Close(')') => {
                parens.pop().ok_or("unbalanced )")?;
                i += 1;
                if tokens.get(i) == Some(&Tok::Open('[')) {
                    let (inside, next) = bracket(&tokens, i)?;
                    let colon = inside
                        .iter()
                        .position(|t| *t == Tok::Colon)
                        .ok_or("a range on an expression that is not a subquery")?;
                    out.subqueries
                        .push((text_of(&inside[..colon]), text_of(&inside[colon + 1..])));
                    i = next;
                }
            }
            Tok::Open(c) | Tok::Close(c) => return Err(format!("unexpected `{c}`")),
            _ => i += 1,
        }
    }
    if !parens.is_empty() {
        return Err("unbalanced (".into());
    }
    Ok(out)
}

/// Reads a selector at `i` (its metric name, or `{` for a bare one); returns the next index.
fn selector(
    tokens: &[Tok],
    mut i: usize,
    metric: Option<String>,
    parens: &[Option<String>],
    out: &mut Scan,
) -> Result<usize, String> {
    let mut sel = Selector {
        metric: metric.clone().unwrap_or_default(),
        function: parens.last().cloned().flatten(),
        ..Default::default()
    };
    if metric.is_some() {
        i += 1;
    }
    if tokens.get(i) == Some(&Tok::Open('{')) {
        i += 1;
        loop {
            match tokens.get(i..i + 3) {
                Some([Tok::Ident(label), Tok::Op(op), Tok::Str(value)])
                    if ["=", "!=", "=~", "!~"].contains(&op.as_str()) =>
                {
                    if label == "__name__" && op == "=" {
                        sel.metric = value.clone();
                    }
                    sel.matchers
                        .push((label.clone(), op.clone(), value.clone()));
                    i += 3;
                }
                _ if tokens.get(i) == Some(&Tok::Close('}')) => {}
                _ => return Err("a malformed label matcher".into()),
            }
            match tokens.get(i) {
                Some(Tok::Comma) => i += 1,
                Some(Tok::Close('}')) => {
                    i += 1;
                    break;
                }
                _ => return Err("a malformed label matcher list".into()),
            }
        }
    }
    if tokens.get(i) == Some(&Tok::Open('[')) {
        let (inside, next) = bracket(tokens, i)?;
        if let Some(colon) = inside.iter().position(|t| *t == Tok::Colon) {
            out.subqueries
                .push((text_of(&inside[..colon]), text_of(&inside[colon + 1..])));
        } else {
            sel.range = Some(text_of(inside));
        }
        i = next;
    }
    if sel.metric.is_empty() {
        return Err("a selector without a metric name".into());
    }
    out.selectors.push(sel);
    Ok(i)
}

// ---------------------------------------------------------------------------------------------
// The metrics the code exports, with their labels, from agentguard's own registry.

fn exported_metrics() -> BTreeMap<String, BTreeSet<String>> {
    let m = Metrics::new();
    m.admission("DELETE", "persistentvolumeclaims", "denied", false, 0.001);
    m.deletion_blocked("prod", "persistentvolumeclaims", "agent", "annotation");
    m.approval("accepted");
    m.set_protected_objects(&[("persistentvolumeclaims".into(), 1)]);
    m.set_unguarded_objects(&[("databases".into(), 1)]);
    m.set_protected_databases(&[(
        [
            "Instance.rds.aws.upbound.io".into(),
            "off".into(),
            "lost".into(),
        ],
        1,
    )]);
    m.set_certificate_expiry(1);
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in m.render().lines().filter(|l| !l.starts_with('#')) {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out.entry(line[..name_end].to_owned()).or_default();
        if let Some(rest) = line[name_end..].strip_prefix('{') {
            for pair in rest[..rest.find('}').unwrap()].split(',') {
                if let Some((label, _)) = pair.split_once('=') {
                    labels.insert(label.to_owned());
                }
            }
        }
    }
    out
}

/// Metrics other than agentguard's that the dashboard reads, with their labels.
fn other_metrics() -> BTreeMap<String, BTreeSet<String>> {
    let labels = |ls: &[&str]| ls.iter().map(|l| l.to_string()).collect::<BTreeSet<_>>();
    let mut out = BTreeMap::new();
    out.insert("up".to_owned(), labels(&[]));
    let duration = labels(&["name", "type", "operation", "rejected"]);
    for suffix in ["_bucket", "_sum", "_count"] {
        let mut l = duration.clone();
        if suffix == "_bucket" {
            l.insert("le".into());
        }
        out.insert(
            format!("apiserver_admission_webhook_admission_duration_seconds{suffix}"),
            l,
        );
    }
    out.insert(
        "apiserver_admission_webhook_rejection_count".to_owned(),
        labels(&["name", "type", "operation", "error_type", "rejection_code"]),
    );
    out
}

/// The series the chart's recording rules record, each with the metric it is recorded from
/// (the first exported or API server metric its expression reads).
fn recorded_metrics(known: &BTreeMap<String, BTreeSet<String>>) -> BTreeMap<String, String> {
    let rules: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/charts/agentguard/rules/agentguard.rules.yaml"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut out = BTreeMap::new();
    for rule in rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
    {
        let (Some(name), Some(expr)) = (rule["record"].as_str(), rule["expr"].as_str()) else {
            continue;
        };
        let source = scan(expr)
            .unwrap_or_else(|e| panic!("recording rule {name}: {e}"))
            .selectors
            .into_iter()
            .map(|s| s.metric)
            .find(|m| known.contains_key(m))
            .unwrap_or_else(|| panic!("recording rule {name} reads no known metric"));
        out.insert(name.to_owned(), source);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The rules

fn is_datasource_ref(v: &Value) -> bool {
    v["type"] == "prometheus" && matches!(v["uid"].as_str(), Some("${datasource}" | "$datasource"))
}

fn panels_flat(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().into_iter().flatten() {
        out.push(p);
        if p["type"] == "row" {
            out.extend(p["panels"].as_array().into_iter().flatten());
        }
    }
    out
}

fn variable<'a>(d: &'a Value, name: &str) -> Option<&'a Value> {
    d["templating"]["list"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == name)
}

fn lint(d: &Value) -> Vec<Finding> {
    let mut f = Findings::default();
    lint_dashboard(d, &mut f);
    lint_variables(d, &mut f);
    let mut known: BTreeMap<String, BTreeSet<String>> = exported_metrics()
        .into_iter()
        .chain(other_metrics())
        .collect();
    // A recorded series has its source metric's labels, and is held to its source's rules.
    let recorded = recorded_metrics(&known);
    for (name, source) in &recorded {
        let labels = known[source].clone();
        known.insert(name.clone(), labels);
    }

    let all = panels_flat(d);
    let mut ids = BTreeMap::new();
    for p in &all {
        match p["id"].as_u64() {
            Some(id) => {
                if let Some(other) = ids.insert(id, title(p)) {
                    f.panel(
                        "panel-id-unique-rule",
                        p,
                        format!("id {id} is also the id of '{other}'"),
                    );
                }
            }
            None => f.panel("panel-id-unique-rule", p, "has no integer id"),
        }
    }
    lint_layout(d, &mut f);

    for p in all.into_iter().filter(|p| p["type"] != "row") {
        lint_panel(p, &known, &recorded, &mut f);
    }
    f.0
}

fn lint_dashboard(d: &Value, f: &mut Findings) {
    const RULE: &str = "dashboard-identity-rule";
    if d["uid"] != "agentguard" {
        f.dashboard(RULE, format!("uid must be 'agentguard', is {}", d["uid"]));
    }
    if d["title"] != "agentguard" {
        f.dashboard(
            RULE,
            format!("title must be 'agentguard', is {}", d["title"]),
        );
    }
    let tags = d["tags"].as_array();
    if tags.is_none_or(|t| t.is_empty() || t.iter().any(|t| !t.is_string())) {
        f.dashboard(RULE, "needs tags (a non-empty list of strings)");
    }
    if d["schemaVersion"].as_u64().is_none_or(|v| v < 39) {
        f.dashboard(
            RULE,
            format!(
                "schemaVersion must be 39 or later, is {}",
                d["schemaVersion"]
            ),
        );
    }
}

fn lint_variables(d: &Value, f: &mut Findings) {
    let list = d["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let datasources: Vec<&Value> = list.iter().filter(|v| v["type"] == "datasource").collect();
    match datasources.as_slice() {
        [] => f.dashboard("template-datasource-rule", "has no data source variable"),
        [ds] => {
            if ds["name"] != "datasource" {
                f.dashboard(
                    "template-datasource-rule",
                    format!(
                        "the data source variable must be named 'datasource', is {}",
                        ds["name"]
                    ),
                );
            }
            if ds["query"] != "prometheus" {
                f.dashboard(
                    "template-datasource-rule",
                    format!(
                        "the data source variable must list prometheus data sources, lists {}",
                        ds["query"]
                    ),
                );
            }
            if ds["label"] != "Data source" {
                f.dashboard(
                    "template-datasource-rule",
                    format!(
                        "the data source variable should be labeled 'Data source', is {}",
                        ds["label"]
                    ),
                );
            }
        }
        _ => f.dashboard(
            "template-datasource-rule",
            "has more than one data source variable",
        ),
    }

    for v in list.iter().filter(|v| v["type"] == "query") {
        let name = v["name"].as_str().unwrap_or("?");
        if !is_datasource_ref(&v["datasource"]) {
            f.dashboard(
                "template-datasource-rule",
                format!(
                    "variable '{name}' must query ${{datasource}}, queries {}",
                    v["datasource"]
                ),
            );
        }
        if v["refresh"] != 2 {
            f.dashboard(
                "template-on-time-change-reload",
                format!(
                    "variable '{name}' must refresh on time range change (2), is {}",
                    v["refresh"]
                ),
            );
        }
        let query = v["query"].as_str().unwrap_or_default();
        let ok = ["label_values(", "label_names(", "metrics(", "query_result("]
            .iter()
            .any(|fun| query.starts_with(fun))
            && query.ends_with(')');
        let inner = query
            .split_once('(')
            .map(|(_, rest)| rest.trim_end_matches(')'))
            .unwrap_or_default();
        let selector = inner.rsplit_once(',').map_or(inner, |(s, _)| s);
        match scan(selector) {
            Ok(s) if ok => {
                if let Some(bad) = s.variables.iter().find(|x| *x != "job") {
                    f.dashboard(
                        "template-label-promql-rule",
                        format!("variable '{name}' uses ${bad}; only $job is defined before it"),
                    );
                }
            }
            Ok(_) => f.dashboard(
                "template-label-promql-rule",
                format!("variable '{name}' has no label_values(...) style query: {query:?}"),
            ),
            Err(e) => f.dashboard(
                "template-label-promql-rule",
                format!("variable '{name}' query {query:?}: {e}"),
            ),
        }
    }

    match variable(d, "job") {
        None => f.dashboard("template-job-rule", "has no 'job' variable"),
        Some(job) => {
            let want = [
                ("type", json!("query")),
                ("label", json!("Job")),
                ("multi", json!(true)),
                ("includeAll", json!(true)),
                ("allValue", json!(".+")),
            ];
            for (key, value) in want {
                if job[key] != value {
                    f.dashboard(
                        "template-job-rule",
                        format!("the job variable needs {key} = {value}, has {}", job[key]),
                    );
                }
            }
            if !job["query"].as_str().is_some_and(|q| {
                q.starts_with("label_values(agentguard_build_info") && q.ends_with(", job)")
            }) {
                f.dashboard(
                    "template-job-rule",
                    format!(
                        "the job variable must list label_values(agentguard_build_info, job), \
                         lists {}",
                        job["query"]
                    ),
                );
            }
            let current = &job["current"]["value"];
            if *current != json!(["agentguard"]) && *current != "agentguard" {
                f.dashboard(
                    "template-job-rule",
                    format!("the job variable must default to agentguard, defaults to {current}"),
                );
            }
        }
    }

    match variable(d, "namespace") {
        None => f.dashboard("template-namespace-rule", "has no 'namespace' variable"),
        Some(ns) => {
            let want = [
                ("type", json!("query")),
                ("multi", json!(true)),
                ("includeAll", json!(true)),
                ("allValue", json!(".*")),
            ];
            for (key, value) in want {
                if ns[key] != value {
                    f.dashboard(
                        "template-namespace-rule",
                        format!(
                            "the namespace variable needs {key} = {value}, has {}",
                            ns[key]
                        ),
                    );
                }
            }
            if !ns["query"].as_str().is_some_and(|q| {
                q.starts_with("label_values(agentguard_deletions_blocked_total")
                    && q.ends_with(", namespace)")
            }) {
                f.dashboard(
                    "template-namespace-rule",
                    format!(
                        "the namespace variable must list the namespace label of agentguard_deletions_blocked_total, lists {}",
                        ns["query"]
                    ),
                );
            }
        }
    }
}

/// Every panel (rows included) lies in Grafana's 24 columns, and no two overlap.
fn lint_layout(d: &Value, f: &mut Findings) {
    const RULE: &str = "panel-gridpos-rule";
    let mut placed: Vec<(String, [u64; 4])> = Vec::new();
    for p in panels_flat(d) {
        let g = &p["gridPos"];
        let Some([x, y, w, h]) = ["x", "y", "w", "h"]
            .map(|k| g[k].as_u64())
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .and_then(|v| <[u64; 4]>::try_from(v).ok())
        else {
            f.panel(RULE, p, format!("gridPos needs integer x, y, w and h: {g}"));
            continue;
        };
        if w == 0 || h == 0 || x + w > 24 {
            f.panel(RULE, p, format!("gridPos {g} does not fit 24 columns"));
        }
        for (other, [ox, oy, ow, oh]) in &placed {
            if x < ox + ow && *ox < x + w && y < oy + oh && *oy < y + h {
                f.panel(RULE, p, format!("overlaps '{other}'"));
            }
        }
        placed.push((title(p), [x, y, w, h]));
    }
}

fn lint_panel(
    p: &Value,
    known: &BTreeMap<String, BTreeSet<String>>,
    recorded: &BTreeMap<String, String>,
    f: &mut Findings,
) {
    let kind = p["type"].as_str().unwrap_or_default();
    if LEGACY_PANEL_TYPES.contains(&kind) {
        f.panel(
            "panel-legacy-type-rule",
            p,
            format!("uses the legacy panel type '{kind}'"),
        );
    }
    if !is_datasource_ref(&p["datasource"]) {
        f.panel(
            "panel-datasource-rule",
            p,
            format!("must use {DATASOURCE_REF}, uses {}", p["datasource"]),
        );
    }
    for key in ["title", "description"] {
        if p[key].as_str().is_none_or(|s| s.trim().is_empty()) {
            f.panel("panel-title-description-rule", p, format!("has no {key}"));
        }
    }
    let unit = &p["fieldConfig"]["defaults"]["unit"];
    if !unit.as_str().is_some_and(|u| UNITS.contains(&u)) {
        f.panel(
            "panel-units-rule",
            p,
            format!("has no or an invalid unit: {unit}"),
        );
    }
    for o in p["fieldConfig"]["overrides"]
        .as_array()
        .into_iter()
        .flatten()
    {
        for prop in o["properties"].as_array().into_iter().flatten() {
            if prop["id"] == "unit" && !prop["value"].as_str().is_some_and(|u| UNITS.contains(&u)) {
                f.panel(
                    "panel-units-rule",
                    p,
                    format!("an override sets an invalid unit: {}", prop["value"]),
                );
            }
        }
    }

    let targets = p["targets"].as_array().cloned().unwrap_or_default();
    if targets.is_empty() {
        f.panel("panel-no-targets-rule", p, "has no queries");
    }
    let instant_panel = INSTANT_PANEL_TYPES.contains(&kind);
    let mut ref_ids = BTreeSet::new();
    for t in &targets {
        let ref_id = t["refId"].as_str().unwrap_or_default();
        if ref_id.is_empty() {
            f.panel("target-refid-rule", p, "a query has no refId");
        } else if !ref_ids.insert(ref_id.to_owned()) {
            f.panel(
                "target-refid-rule",
                p,
                format!("refId {ref_id} is used twice"),
            );
        }
        let at = format!("query {ref_id}");
        if !is_datasource_ref(&t["datasource"]) {
            f.panel(
                "target-datasource-rule",
                p,
                format!("{at} must use {DATASOURCE_REF}, uses {}", t["datasource"]),
            );
        }
        let instant = t["instant"] == true && t["range"] != true;
        if instant_panel && !instant {
            f.panel(
                "target-instant-rule",
                p,
                format!("{at} must be instant (instant: true, range: false) in a {kind} panel"),
            );
        }
        if !instant_panel && (t["instant"] == true || t["range"] == false) {
            f.panel(
                "target-instant-rule",
                p,
                format!("{at} must be a range query in a {kind} panel"),
            );
        }
        let expr = t["expr"].as_str().unwrap_or_default();
        if expr.trim().is_empty() {
            f.panel("target-promql-rule", p, format!("{at} has no expr"));
            continue;
        }
        let scan = match scan(expr) {
            Ok(s) => s,
            Err(e) => {
                f.panel("target-promql-rule", p, format!("{at}: {e}"));
                continue;
            }
        };
        lint_expr(p, &at, instant, &scan, known, recorded, f);
    }
}

fn lint_expr(
    p: &Value,
    at: &str,
    instant: bool,
    scan: &Scan,
    known: &BTreeMap<String, BTreeSet<String>>,
    recorded: &BTreeMap<String, String>,
    f: &mut Findings,
) {
    for v in &scan.variables {
        if !QUERY_VARIABLES.contains(&v.as_str()) {
            f.panel(
                "target-promql-rule",
                p,
                format!(
                    "{at} uses ${v}; queries may use only ${}",
                    QUERY_VARIABLES.join(", $")
                ),
            );
        }
    }
    if scan.selectors.is_empty() {
        f.panel("target-promql-rule", p, format!("{at} reads no metric"));
    }
    // A subquery step may be the interval a recorded increase is recorded at (`...:increase30s`
    // read every 30s sees each recorded sample once).
    let variable_duration = |d: &str| {
        d.strip_prefix('$')
            .is_some_and(|v| ["__rate_interval", "__range", "__interval"].contains(&v))
            || scan
                .selectors
                .iter()
                .any(|s| s.metric.ends_with(&format!(":increase{d}")))
    };
    let durations = scan
        .selectors
        .iter()
        .filter_map(|s| s.range.clone())
        .chain(
            scan.subqueries
                .iter()
                .flat_map(|(r, s)| [r.clone(), s.clone()]),
        )
        .chain(scan.offsets.iter().cloned());
    for d in durations {
        if !variable_duration(&d) {
            f.panel(
                "target-range-variable-rule",
                p,
                format!(
                    "{at} uses the fixed duration '{d}'; \
                     use $__rate_interval, $__range or $__interval"
                ),
            );
        }
    }

    for s in &scan.selectors {
        let has = |label: &str, op: &str, value: &str| {
            s.matchers
                .iter()
                .any(|(l, o, v)| l == label && o == op && v == value)
        };
        if let (Some(range), Some(fun)) = (&s.range, &s.function)
            && ["rate", "irate", "increase"].contains(&fun.as_str())
        {
            let totals = fun == "increase" && instant && range == "$__range";
            if range != "$__rate_interval" && !totals {
                f.panel(
                    "target-rate-interval-rule",
                    p,
                    format!(
                        "{at}: {fun}({}[{range}]) must use [$__rate_interval] (or increase(...[$__range]) in an instant query)",
                        s.metric
                    ),
                );
            }
        }
        let source = recorded.get(&s.metric).unwrap_or(&s.metric);
        if (source.starts_with("agentguard_") || source == "up") && !has("job", "=~", "$job") {
            f.panel(
                "target-job-rule",
                p,
                format!("{at}: {} needs job=~\"$job\"", s.metric),
            );
        }
        if source == "agentguard_deletions_blocked_total" && !has("namespace", "=~", "$namespace") {
            f.panel(
                "target-namespace-rule",
                p,
                format!("{at}: {} needs namespace=~\"$namespace\"", s.metric),
            );
        }
        if source.starts_with("apiserver_admission_webhook_") && !has("name", "=", WEBHOOK_NAME) {
            f.panel(
                "target-webhook-name-rule",
                p,
                format!("{at}: {} needs name=\"{WEBHOOK_NAME}\"", s.metric),
            );
        }
        match known.get(&s.metric) {
            None => f.panel(
                "target-metric-known-rule",
                p,
                format!(
                    "{at} reads {}, which neither agentguard nor the API server exports",
                    s.metric
                ),
            ),
            Some(labels) => {
                for (label, _, _) in &s.matchers {
                    if label != "job" && label != "__name__" && !labels.contains(label) {
                        f.panel(
                            "target-metric-known-rule",
                            p,
                            format!(
                                "{at}: {} has no label '{label}' (it has {labels:?})",
                                s.metric
                            ),
                        );
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The tests

#[test]
fn dashboard_passes_the_linter_rules() {
    let findings = lint(&dashboard());
    assert!(
        findings.is_empty(),
        "the dashboard breaks rules:\n{}",
        report(&findings)
    );
}

#[test]
fn dashboard_shows_what_agentguard_promises() {
    // The panels DESIGN.md and the chart promise, by what they query.
    let d = dashboard();
    let exprs: Vec<(String, String, String)> = panels_flat(&d)
        .into_iter()
        .flat_map(|p| {
            let kind = p["type"].as_str().unwrap_or_default().to_owned();
            let title = title(p);
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |t| {
                    (
                        kind.clone(),
                        title.clone(),
                        t["expr"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let wants: &[(&str, &str, &[&str])] = &[
        (
            "blocked deletions over time (0, not empty, when there are none)",
            "timeseries",
            &["agentguard:deletions_blocked:increase30s", "vector(0)"],
        ),
        (
            "blocked deletions by agent",
            "timeseries",
            &["agentguard:deletions_blocked:increase30s", "by (subject)"],
        ),
        (
            "blocked deletions by namespace and resource",
            "timeseries",
            &[
                "agentguard:deletions_blocked:increase30s",
                "by (namespace, resource)",
            ],
        ),
        (
            "blocked deletions by policy",
            "timeseries",
            &["agentguard:deletions_blocked:increase30s", "by (policy)"],
        ),
        (
            "admission decisions by outcome",
            "timeseries",
            &["agentguard:admission_requests:increase30s", "by (decision)"],
        ),
        (
            "approvals by result",
            "timeseries",
            &["agentguard:approvals:increase30s", "by (result)"],
        ),
        (
            "agentguard's p50",
            "timeseries",
            &[
                "histogram_quantile(0.5",
                "agentguard_admission_duration_seconds_bucket",
            ],
        ),
        (
            "agentguard's p99",
            "timeseries",
            &[
                "histogram_quantile(0.99",
                "agentguard_admission_duration_seconds_bucket",
            ],
        ),
        (
            "the API server's p50",
            "timeseries",
            &[
                "histogram_quantile(0.5",
                "apiserver_admission_webhook_admission_duration_seconds_bucket",
            ],
        ),
        (
            "the API server's p99",
            "timeseries",
            &[
                "histogram_quantile(0.99",
                "apiserver_admission_webhook_admission_duration_seconds_bucket",
            ],
        ),
        (
            "webhook call errors",
            "timeseries",
            &[
                "agentguard:webhook_rejections:increase30s",
                "error_type!=\"no_error\"",
            ],
        ),
        (
            "protected objects",
            "bargauge",
            &["agentguard_protected_objects"],
        ),
        (
            "annotated but unguarded objects (0, not empty, when there are none)",
            "bargauge",
            &["agentguard_unguarded_objects", "by (resource)", "vector(0)"],
        ),
        (
            "protected databases whose own protection is off (0 when none)",
            "bargauge",
            &[
                "agentguard_protected_databases",
                "own_protection=\"off\"",
                "vector(0)",
            ],
        ),
        (
            "protected databases whose deletion would lose their backups (0 when none)",
            "bargauge",
            &[
                "agentguard_protected_databases",
                "backups=\"lost\"",
                "vector(0)",
            ],
        ),
        ("replicas up", "stat", &["sum(up{job=~\"$job\"})"]),
        (
            "certificate time left",
            "stat",
            &["agentguard_certificate_expiry_timestamp_seconds", "time()"],
        ),
        ("build info", "stat", &["agentguard_build_info", "version"]),
        (
            "latest blocks: count",
            "table",
            &[
                "agentguard:deletions_blocked:increase30s",
                "subject, policy",
                "sum_over_time(",
            ],
        ),
        (
            "latest blocks: when",
            "table",
            &[
                "agentguard:deletions_blocked:increase30s",
                "timestamp(",
                "> 0",
            ],
        ),
    ];
    let mut missing = Vec::new();
    for (what, kind, needles) in wants {
        if !exprs
            .iter()
            .any(|(k, _, e)| k == kind && needles.iter().all(|n| e.contains(n)))
        {
            missing.push(format!("  {what}: a {kind} panel querying {needles:?}"));
        }
    }
    assert!(
        missing.is_empty(),
        "the dashboard lacks:\n{}",
        missing.join("\n")
    );

    // Counted events are read through the recorded increases (exact, a new series' first
    // value included), never from a raw counter, whose increase() misses that value and
    // extrapolates.
    for (_, title, expr) in &exprs {
        for counter in [
            "agentguard_deletions_blocked_total",
            "agentguard_admission_requests_total",
            "agentguard_approvals_total",
            "apiserver_admission_webhook_rejection_count",
        ] {
            assert!(
                !expr.contains(counter),
                "panel '{title}' reads {counter}; read its recorded increase: {expr}"
            );
        }
    }
}

/// Finds a panel by title, in rows too.
fn panel_mut<'a>(d: &'a mut Value, wanted: &str) -> &'a mut Value {
    fn walk<'a>(panels: &'a mut Value, wanted: &str) -> Option<&'a mut Value> {
        for p in panels.as_array_mut()? {
            if p["title"] == wanted {
                return Some(p);
            }
            if p["type"] == "row"
                && let Some(found) = walk(&mut p["panels"], wanted)
            {
                return Some(found);
            }
        }
        None
    }
    walk(&mut d["panels"], wanted).unwrap_or_else(|| panic!("no panel titled '{wanted}'"))
}

/// The first panel of a type, and its title.
fn first_of<'a>(d: &'a mut Value, kind: &str) -> (String, &'a mut Value) {
    let title = panels_flat(d)
        .into_iter()
        .find(|p| p["type"] == kind)
        .map(title)
        .unwrap_or_else(|| panic!("no {kind} panel"));
    let panel = panel_mut(d, &title);
    (title, panel)
}

/// The first panel whose first query's expr contains `needle`, and its title.
fn querying<'a>(d: &'a mut Value, needle: &str) -> (String, &'a mut Value) {
    let title = panels_flat(d)
        .into_iter()
        .find(|p| {
            p["targets"][0]["expr"]
                .as_str()
                .is_some_and(|e| e.contains(needle))
        })
        .map(title)
        .unwrap_or_else(|| panic!("no panel querying {needle}"));
    let panel = panel_mut(d, &title);
    (title, panel)
}

fn edit_expr(panel: &mut Value, from: &str, to: &str) {
    let expr = panel["targets"][0]["expr"].as_str().unwrap().to_owned();
    assert!(expr.contains(from), "`{from}` not in {expr}");
    panel["targets"][0]["expr"] = json!(expr.replacen(from, to, 1));
}

type Breakage = fn(&mut Value) -> Option<String>;

#[test]
fn each_rule_catches_a_broken_copy() {
    // (rule, what is broken, the breakage: returns the title of the panel it broke, if any)
    let cases: &[(&str, &str, Breakage)] = &[
        ("dashboard-identity-rule", "another uid", |d| {
            d["uid"] = json!("other");
            None
        }),
        ("dashboard-identity-rule", "an old schemaVersion", |d| {
            d["schemaVersion"] = json!(27);
            None
        }),
        ("template-datasource-rule", "no data source variable", |d| {
            d["templating"]["list"]
                .as_array_mut()
                .unwrap()
                .retain(|v| v["type"] != "datasource");
            None
        }),
        (
            "template-datasource-rule",
            "a variable querying a fixed data source",
            |d| {
                d["templating"]["list"][1]["datasource"]["uid"] = json!("P1809F7CD0C75ACF3");
                None
            },
        ),
        ("template-job-rule", "no job variable", |d| {
            d["templating"]["list"]
                .as_array_mut()
                .unwrap()
                .retain(|v| v["name"] != "job");
            None
        }),
        ("template-job-rule", "a single-select job variable", |d| {
            let list = d["templating"]["list"].as_array_mut().unwrap();
            list.iter_mut().find(|v| v["name"] == "job").unwrap()["multi"] = json!(false);
            None
        }),
        (
            "template-namespace-rule",
            "a namespace variable without All",
            |d| {
                let list = d["templating"]["list"].as_array_mut().unwrap();
                list.iter_mut().find(|v| v["name"] == "namespace").unwrap()["includeAll"] =
                    json!(false);
                None
            },
        ),
        (
            "template-label-promql-rule",
            "a variable query that is not label_values",
            |d| {
                let list = d["templating"]["list"].as_array_mut().unwrap();
                list.iter_mut().find(|v| v["name"] == "namespace").unwrap()["query"] =
                    json!("prod,staging");
                None
            },
        ),
        (
            "template-on-time-change-reload",
            "a variable refreshed only on load",
            |d| {
                let list = d["templating"]["list"].as_array_mut().unwrap();
                list.iter_mut().find(|v| v["name"] == "job").unwrap()["refresh"] = json!(1);
                None
            },
        ),
        ("panel-id-unique-rule", "a duplicated panel id", |d| {
            let (title, p) = first_of(d, "timeseries");
            p["id"] = json!(2);
            Some(title)
        }),
        ("panel-legacy-type-rule", "a graph panel", |d| {
            let (title, p) = first_of(d, "timeseries");
            p["type"] = json!("graph");
            Some(title)
        }),
        (
            "panel-datasource-rule",
            "a hard-coded panel data source",
            |d| {
                let (title, p) = first_of(d, "stat");
                p["datasource"]["uid"] = json!("P1809F7CD0C75ACF3");
                Some(title)
            },
        ),
        (
            "panel-title-description-rule",
            "a panel without description",
            |d| {
                let (title, p) = first_of(d, "bargauge");
                p.as_object_mut().unwrap().remove("description");
                Some(title)
            },
        ),
        ("panel-units-rule", "a panel without unit", |d| {
            let (title, p) = first_of(d, "timeseries");
            p["fieldConfig"]["defaults"]
                .as_object_mut()
                .unwrap()
                .remove("unit");
            Some(title)
        }),
        ("panel-units-rule", "an invalid unit override", |d| {
            let (title, p) = first_of(d, "table");
            p["fieldConfig"]["overrides"][0]["properties"][0] =
                json!({"id": "unit", "value": "seconds"});
            Some(title)
        }),
        ("panel-no-targets-rule", "a panel without queries", |d| {
            let (title, p) = first_of(d, "stat");
            p["targets"] = json!([]);
            Some(title)
        }),
        ("panel-gridpos-rule", "a panel wider than the grid", |d| {
            let (title, p) = first_of(d, "table");
            p["gridPos"]["x"] = json!(4);
            Some(title)
        }),
        ("panel-gridpos-rule", "overlapping panels", |d| {
            let (title, p) = first_of(d, "bargauge");
            p["gridPos"]["y"] = json!(0);
            Some(title)
        }),
        (
            "target-datasource-rule",
            "a hard-coded query data source",
            |d| {
                let (title, p) = first_of(d, "timeseries");
                p["targets"][0]["datasource"] = json!({"type": "prometheus", "uid": "prometheus"});
                Some(title)
            },
        ),
        ("target-refid-rule", "a repeated refId", |d| {
            let (title, p) = querying(d, "agentguard_admission_duration_seconds_bucket");
            p["targets"][1]["refId"] = json!("A");
            Some(title)
        }),
        ("target-promql-rule", "an empty expr", |d| {
            let (title, p) = first_of(d, "bargauge");
            p["targets"][0]["expr"] = json!("");
            Some(title)
        }),
        ("target-promql-rule", "an undefined variable", |d| {
            let (title, p) = querying(d, "up{");
            edit_expr(p, "$job", "$instance");
            Some(title)
        }),
        ("target-promql-rule", "an unbalanced parenthesis", |d| {
            let (title, p) = querying(d, "agentguard_certificate_expiry_timestamp_seconds");
            edit_expr(p, "min(", "min((");
            Some(title)
        }),
        ("target-rate-interval-rule", "rate over [5m]", |d| {
            let (title, p) = querying(d, "agentguard_admission_duration_seconds_bucket");
            edit_expr(p, "[$__rate_interval]", "[5m]");
            Some(title)
        }),
        (
            "target-rate-interval-rule",
            "increase over $__range in a time series",
            |d| {
                let (title, p) = querying(d, "agentguard:approvals:increase30s");
                edit_expr(
                    p,
                    "sum_over_time(agentguard:approvals:increase30s{job=~\"$job\"}[$__interval])",
                    "increase(agentguard_approvals_total{job=~\"$job\"}[$__range])",
                );
                Some(title)
            },
        ),
        ("target-range-variable-rule", "a fixed window", |d| {
            let (title, p) = querying(d, "agentguard:approvals:increase30s");
            edit_expr(p, "[$__interval]", "[5m]");
            Some(title)
        }),
        ("target-instant-rule", "a range query in a stat", |d| {
            let (title, p) = first_of(d, "stat");
            p["targets"][0]["instant"] = json!(false);
            p["targets"][0]["range"] = json!(true);
            Some(title)
        }),
        (
            "target-instant-rule",
            "an instant query in a time series",
            |d| {
                let (title, p) = first_of(d, "timeseries");
                p["targets"][0]["instant"] = json!(true);
                p["targets"][0]["range"] = json!(false);
                Some(title)
            },
        ),
        (
            "target-job-rule",
            "an agentguard metric without the job filter",
            |d| {
                let (title, p) = querying(d, "agentguard_protected_objects");
                edit_expr(p, "{job=~\"$job\"}", "");
                Some(title)
            },
        ),
        (
            "target-namespace-rule",
            "blocked deletions without the namespace filter",
            |d| {
                let (title, p) = querying(d, "agentguard:deletions_blocked:increase30s");
                edit_expr(p, ", namespace=~\"$namespace\"", "");
                Some(title)
            },
        ),
        (
            "target-webhook-name-rule",
            "API server metrics of every webhook",
            |d| {
                let (title, p) = querying(
                    d,
                    "apiserver_admission_webhook_admission_duration_seconds_bucket",
                );
                edit_expr(p, "name=\"validate.agentguard.dev\"", "type=\"validating\"");
                Some(title)
            },
        ),
        ("target-metric-known-rule", "a misspelt metric", |d| {
            let (title, p) = querying(d, "agentguard_protected_objects");
            edit_expr(
                p,
                "agentguard_protected_objects",
                "agentguard_protected_object",
            );
            Some(title)
        }),
        (
            "target-metric-known-rule",
            "a label the metric lacks",
            |d| {
                let (title, p) = querying(d, "agentguard:approvals:increase30s");
                edit_expr(p, "{job=~\"$job\"}", "{job=~\"$job\", decision=\"denied\"}");
                Some(title)
            },
        ),
    ];

    let covered: BTreeSet<&str> = cases.iter().map(|(rule, _, _)| *rule).collect();
    let untested: Vec<&&str> = RULES.iter().filter(|r| !covered.contains(**r)).collect();
    assert!(
        untested.is_empty(),
        "rules without a breaking case: {untested:?}"
    );
    let unknown: Vec<&&str> = covered.iter().filter(|r| !RULES.contains(r)).collect();
    assert!(
        unknown.is_empty(),
        "cases for rules not in RULES: {unknown:?}"
    );

    let original = dashboard();
    let mut failures = Vec::new();
    for (rule, what, breakage) in cases {
        let mut broken = original.clone();
        let panel = breakage(&mut broken);
        let findings = lint(&broken);
        let hit = findings
            .iter()
            .any(|f| f.rule == *rule && (panel.is_none() || f.panel == panel));
        if !hit {
            failures.push(format!(
                "  {rule} missed {what}{}; found:\n{}",
                panel
                    .map(|t| format!(" in panel '{t}'"))
                    .unwrap_or_default(),
                report(&findings)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "rules that let a broken dashboard through:\n{}",
        failures.join("\n")
    );
}

#[test]
fn scanner_reads_selectors_ranges_and_functions() {
    let s = scan(
        r#"sum by (le) (rate(a_total{job=~"$job", x!="y"}[$__rate_interval])) / ignoring(le) max_over_time(timestamp(b offset $__range)[$__range:$__interval]) or vector(0)"#,
    )
    .unwrap();
    let sels: Vec<(&str, Option<&str>, Option<&str>)> = s
        .selectors
        .iter()
        .map(|s| (s.metric.as_str(), s.range.as_deref(), s.function.as_deref()))
        .collect();
    assert_eq!(
        sels,
        [
            ("a_total", Some("$__rate_interval"), Some("rate")),
            ("b", None, Some("timestamp")),
        ]
    );
    assert_eq!(s.selectors[0].matchers.len(), 2);
    assert_eq!(
        s.subqueries,
        [("$__range".to_owned(), "$__interval".to_owned())]
    );
    assert_eq!(s.offsets, ["$__range"]);
    assert_eq!(
        s.variables,
        ["job", "__rate_interval", "__range", "__range", "__interval"]
    );
    for bad in ["rate(x[5m]", "x{a=}", "sum(x))", "x{a=\"b\"", "x[5m"] {
        assert!(scan(bad).is_err(), "{bad} scanned");
    }
}

// ---------------------------------------------------------------------------------------------
// Grafana's published schema

fn require_node() {
    for (tool, arg) in [("node", "--version"), ("npm", "--version")] {
        let ok = Command::new(tool)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            ok,
            "`{tool}` is needed to check the dashboard against Grafana's schema (@grafana/schema with \
             tsc): install Node.js 18 or later with npm (Debian/Ubuntu: `apt-get install nodejs npm`; \
             elsewhere see https://nodejs.org). The check installs its packages itself into \
             ${{XDG_CACHE_HOME:-$HOME/.cache}}/agentguard/dashboard-check/."
        );
    }
}

fn schema_check(path: &str) -> Output {
    require_node();
    Command::new("node")
        .arg(SCHEMA_CHECK)
        .arg(path)
        .output()
        .expect("run node")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn dashboard_satisfies_grafanas_schema() {
    let out = schema_check(DASHBOARD);
    assert!(out.status.success(), "schema check failed:\n{}", text(&out));
}

#[test]
fn schema_check_rejects_broken_dashboards() {
    let cases: &[(&str, Breakage)] = &[
        ("a gridPos height that is not a number", |d| {
            first_of(d, "stat").1["gridPos"]["h"] = json!("x");
            None
        }),
        ("an unknown top-level field", |d| {
            d["dashboardVersion"] = json!(2);
            None
        }),
        ("an unknown time series option", |d| {
            first_of(d, "timeseries").1["options"]["legend"]["position"] = json!("bottom");
            None
        }),
        ("an unknown query field", |d| {
            first_of(d, "table").1["targets"][0]["query"] = json!("up");
            None
        }),
        ("a value outside an enum", |d| {
            first_of(d, "stat").1["fieldConfig"]["defaults"]["thresholds"]["mode"] =
                json!("absolut");
            None
        }),
        ("a missing required option", |d| {
            first_of(d, "stat").1["options"]
                .as_object_mut()
                .unwrap()
                .remove("reduceOptions");
            None
        }),
    ];
    let dir = tempfile::tempdir().unwrap();
    let original = dashboard();
    let mut failures = Vec::new();
    for (i, (what, breakage)) in cases.iter().enumerate() {
        let mut broken = original.clone();
        breakage(&mut broken);
        let path = dir.path().join(format!("broken-{i}.json"));
        std::fs::write(&path, serde_json::to_string_pretty(&broken).unwrap()).unwrap();
        let out = schema_check(path.to_str().unwrap());
        let said = text(&out);
        // Exit 1 is "does not satisfy"; 2 would be the check failing to run at all.
        if out.status.code() != Some(1)
            || !said.contains("error TS")
            || !said.contains(&format!("broken-{i}.json:"))
        {
            failures.push(format!("  {what}: exit {:?}\n{said}", out.status.code()));
        }
    }
    assert!(
        failures.is_empty(),
        "the schema check let broken dashboards through:\n{}",
        failures.join("\n")
    );
}
