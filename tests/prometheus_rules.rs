//! The chart's alerts (`charts/agentguard/rules/agentguard.rules.yaml`, which the PrometheusRule
//! template embeds verbatim) are valid for Prometheus, pass their `promtool test rules` unit
//! tests (`tests/prometheus/agentguard.rules.test.yaml`), and those unit tests catch the
//! mistakes they exist for: each weakened copy of an alert below must make them fail.
//!
//! promtool is required: without it these tests fail, they never skip.

use std::ffi::OsStr;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const RULES: &str = "charts/agentguard/rules/agentguard.rules.yaml";
const UNIT_TESTS: &str = "tests/prometheus/agentguard.rules.test.yaml";

fn in_repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Runs the promtool of Prometheus 3 that `hack/build-tools.sh` builds (or `$PROMTOOL`). A
/// missing promtool fails the test with how to build it.
fn promtool<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let program = std::env::var_os("PROMTOOL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let dir = Command::new(in_repo("hack/build-tools.sh"))
                .arg("--print-prometheus")
                .output()
                .expect("run hack/build-tools.sh --print-prometheus");
            PathBuf::from(String::from_utf8(dir.stdout).unwrap().trim()).join("promtool")
        });
    match Command::new(&program).args(args).output() {
        Ok(out) => out,
        Err(err) if err.kind() == ErrorKind::NotFound => panic!(
            "{} not found, so the Prometheus alert rules cannot be checked. Build it with \
             hack/build-tools.sh (Prometheus 3 from its Go module), or point PROMTOOL at one.",
            program.display()
        ),
        Err(err) => panic!("cannot run {}: {err}", program.display()),
    }
}

fn printed(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn yaml_file(path: &str) -> Value {
    let text = std::fs::read_to_string(in_repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{path} is not YAML: {e}"))
}

fn rules_of(file: &Value) -> Vec<&Value> {
    file["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|group| group["rules"].as_array().expect("rules").iter())
        .collect()
}

/// The alerting rules (the recording rules left out).
fn alerts_of(file: &Value) -> Vec<&Value> {
    rules_of(file)
        .into_iter()
        .filter(|rule| rule["alert"].is_string())
        .collect()
}

/// The recording rule that records `name`.
fn record_rule_mut<'a>(file: &'a mut Value, name: &str) -> &'a mut Value {
    file["groups"]
        .as_array_mut()
        .expect("groups")
        .iter_mut()
        .flat_map(|group| group["rules"].as_array_mut().expect("rules").iter_mut())
        .find(|rule| rule["record"] == name)
        .unwrap_or_else(|| panic!("no recording rule {name} in {RULES}"))
}

/// The rules (there may be several, e.g. one per severity) that define `alert`.
fn alert_rules_mut<'a>(file: &'a mut Value, alert: &str) -> Vec<&'a mut Value> {
    let rules: Vec<&mut Value> = file["groups"]
        .as_array_mut()
        .expect("groups")
        .iter_mut()
        .flat_map(|group| group["rules"].as_array_mut().expect("rules").iter_mut())
        .filter(|rule| rule["alert"] == alert)
        .collect();
    assert!(!rules.is_empty(), "no rule for alert {alert} in {RULES}");
    rules
}

/// Runs the unit tests, unchanged, against `rules` instead of the real rule file: both are
/// copied into a scratch directory with the repository's layout, so the test file's relative
/// `rule_files` path finds the copy. The rules are written as JSON, which is YAML too.
fn unit_tests_against(rules: &Value) -> Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let rules_path = dir.path().join(RULES);
    let tests_path = dir.path().join(UNIT_TESTS);
    for path in [&rules_path, &tests_path] {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    }
    std::fs::write(&rules_path, serde_json::to_string_pretty(rules).unwrap()).unwrap();
    std::fs::copy(in_repo(UNIT_TESTS), &tests_path).unwrap();
    promtool([
        OsStr::new("test"),
        OsStr::new("rules"),
        tests_path.as_os_str(),
    ])
}

/// `weakened` must fail the unit tests, in the test case named `caught_by`.
fn assert_caught(weakened: &Value, what: &str, caught_by: &str) {
    let out = unit_tests_against(weakened);
    let printed = printed(&out);
    assert!(
        !out.status.success(),
        "the unit tests pass although {what}; they no longer guard it:\n{printed}"
    );
    assert!(
        printed.contains(caught_by),
        "with {what}, expected the unit test {caught_by:?} to fail; promtool said:\n{printed}"
    );
}

#[test]
fn rule_file_is_valid() {
    let out = promtool([
        OsStr::new("check"),
        OsStr::new("rules"),
        in_repo(RULES).as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "promtool check rules {RULES} failed:\n{}",
        printed(&out)
    );
}

#[test]
fn rule_unit_tests_pass() {
    let out = promtool([
        OsStr::new("test"),
        OsStr::new("rules"),
        in_repo(UNIT_TESTS).as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "promtool test rules {UNIT_TESTS} failed:\n{}",
        printed(&out)
    );
}

/// The control for the weakened copies below: the scratch copy itself passes.
#[test]
fn scratch_copy_of_the_rules_passes_the_unit_tests() {
    let out = unit_tests_against(&yaml_file(RULES));
    assert!(
        out.status.success(),
        "the unchanged rules fail in the scratch layout:\n{}",
        printed(&out)
    );
}

/// The counter pitfall: a blocked series first appears with value 1, and increase() stays 0.
#[test]
fn unit_tests_catch_a_deletion_alert_blind_to_new_series() {
    let mut rules = yaml_file(RULES);
    for rule in alert_rules_mut(&mut rules, "AgentguardDeletionBlocked") {
        rule["expr"] = "sum by (namespace, resource, subject, policy) \
             (increase(agentguard_deletions_blocked_total[10m]) > 0)"
            .into();
    }
    assert_caught(
        &rules,
        "AgentguardDeletionBlocked uses increase() alone",
        "a brand-new blocked series fires although increase() is still 0",
    );
}

/// The textbook fix, `x unless x offset 10m`, takes every old series for a new one after a
/// Prometheus restart with an empty TSDB.
#[test]
fn unit_tests_catch_a_deletion_alert_replaying_old_blocks_after_a_restart() {
    let mut rules = yaml_file(RULES);
    for rule in alert_rules_mut(&mut rules, "AgentguardDeletionBlocked") {
        rule["expr"] = "sum by (namespace, resource, subject, policy) (\
             increase(agentguard_deletions_blocked_total[10m]) > 0 \
             or (agentguard_deletions_blocked_total \
             unless agentguard_deletions_blocked_total offset 10m))"
            .into();
    }
    assert_caught(
        &rules,
        "AgentguardDeletionBlocked takes series it has not seen 10 minutes ago for new ones",
        "a Prometheus restart does not replay old blocks as new ones",
    );
}

/// The same pitfall one level down: the recorded increase leaves out a new series' value.
#[test]
fn unit_tests_catch_a_recorded_increase_blind_to_new_series() {
    let mut rules = yaml_file(RULES);
    record_rule_mut(&mut rules, "agentguard:deletions_blocked:increase30s")["expr"] =
        "agentguard_deletions_blocked_total - agentguard_deletions_blocked_total offset 30s >= 0"
            .into();
    assert_caught(
        &rules,
        "the recorded increase counts only differences",
        "a brand-new blocked series fires although increase() is still 0",
    );
}

/// Without the `up offset 30s` guard, a series Prometheus has not seen 30 s ago counts in
/// full even when Prometheus itself just started.
#[test]
fn unit_tests_catch_a_recorded_increase_replaying_old_blocks_after_a_restart() {
    let mut rules = yaml_file(RULES);
    let rule = record_rule_mut(&mut rules, "agentguard:deletions_blocked:increase30s");
    let expr = rule["expr"].as_str().unwrap();
    let weakened = expr.replace("(up offset 30s == 1)", "vector(1)");
    assert_ne!(weakened, expr, "the up guard moved; update this test");
    rule["expr"] = weakened
        .replace("and on (job, instance)", "and on ()")
        .into();
    assert_caught(
        &rules,
        "the recorded increase takes series it has not seen 30 s ago for new ones",
        "a Prometheus restart does not replay old blocks as new ones",
    );
}

/// A counter that fell was reset by a restart: what it holds now is new, not nothing.
#[test]
fn unit_tests_catch_a_recorded_increase_losing_blocks_after_a_reset() {
    let mut rules = yaml_file(RULES);
    let rule = record_rule_mut(&mut rules, "agentguard:deletions_blocked:increase30s");
    let expr = rule["expr"].as_str().unwrap();
    let reset =
        "(agentguard_deletions_blocked_total < agentguard_deletions_blocked_total offset 30s)";
    assert!(
        expr.contains(reset),
        "the reset clause moved; update this test"
    );
    rule["expr"] = expr.replace(reset, "vector(0) == 1").into();
    // promtool names the failing expression of a promql_expr_test, not its test case.
    assert_caught(
        &rules,
        "the recorded increase drops a reset counter's new value",
        "expr: \"sum by (subject) (sum_over_time(agentguard:deletions_blocked:increase30s[15m]))\"",
    );
}

/// Ordinary denials are counted by the same API server metric, with error_type="no_error".
#[test]
fn unit_tests_catch_webhook_errors_counting_plain_denials() {
    let mut rules = yaml_file(RULES);
    let rule = record_rule_mut(&mut rules, "agentguard:webhook_rejections:increase30s");
    let expr = rule["expr"].as_str().unwrap();
    let weakened = expr.replace(r#", error_type!="no_error""#, "");
    assert_ne!(
        weakened, expr,
        "the error_type filter moved; update this test"
    );
    rule["expr"] = weakened.into();
    assert_caught(
        &rules,
        "AgentguardWebhookErrors does not filter error_type",
        "ordinary denials and other webhooks' failures do not fire",
    );
}

/// No target at all (every replica gone, or never scraped) has no `up` series to be 0.
#[test]
fn unit_tests_catch_webhook_down_missing_the_absent_case() {
    let mut rules = yaml_file(RULES);
    for rule in alert_rules_mut(&mut rules, "AgentguardWebhookDown") {
        rule["expr"] = r#"max by (job) (up{job="agentguard"}) == 0"#.into();
    }
    assert_caught(
        &rules,
        "AgentguardWebhookDown ignores an absent target",
        "no agentguard target at all fires too",
    );
}

/// The newest sync of a resource across replicas says nothing about each replica: one replica
/// judging with stale state hides behind a healthy one.
#[test]
fn unit_tests_catch_a_watch_alert_hiding_one_stale_replica() {
    let mut rules = yaml_file(RULES);
    for rule in alert_rules_mut(&mut rules, "AgentguardWatchStale") {
        let expr = rule["expr"].as_str().unwrap();
        let weakened = expr.replace("max by (namespace, pod, resource)", "max by (resource)");
        assert_ne!(weakened, expr, "the aggregation moved; update this test");
        rule["expr"] = weakened.into();
    }
    assert_caught(
        &rules,
        "AgentguardWatchStale takes the newest sync across replicas",
        "a watch not healthy for 2 minutes fires; quiet but healthy watches do not",
    );
}

/// Every alert is tested both firing (with its labels and annotations) and silent.
#[test]
fn every_alert_is_tested_firing_and_silent() {
    let rules = yaml_file(RULES);
    let tests = yaml_file(UNIT_TESTS);
    let cases: Vec<&Value> = tests["tests"]
        .as_array()
        .expect("tests")
        .iter()
        .flat_map(|test| test["alert_rule_test"].as_array().into_iter().flatten())
        .collect();
    for rule in alerts_of(&rules) {
        let alert = rule["alert"].as_str().unwrap();
        let mine: Vec<&Value> = cases
            .iter()
            .copied()
            .filter(|case| case["alertname"] == alert)
            .collect();
        let fired = mine.iter().any(|case| {
            case["exp_alerts"].as_array().is_some_and(|alerts| {
                alerts.iter().any(|a| {
                    a["exp_labels"]["severity"] == rule["labels"]["severity"]
                        && a["exp_annotations"]["summary"].is_string()
                        && a["exp_annotations"]["description"].is_string()
                })
            })
        });
        let silent = mine.iter().any(|case| {
            case["exp_alerts"]
                .as_array()
                .is_none_or(|alerts| alerts.is_empty())
        });
        assert!(
            fired,
            "{alert} ({}) has no firing test case with its annotations",
            rule["labels"]["severity"]
        );
        assert!(silent, "{alert} has no test case where it must not fire");
    }
}

/// What Alertmanager routes and people read: a severity, a summary and a description; and no
/// `{{` outside annotations (the chart embeds this file without templating it, and Prometheus
/// expands templates only in labels and annotations of firing alerts).
#[test]
fn every_alert_has_severity_summary_and_description() {
    for rule in alerts_of(&yaml_file(RULES)) {
        let alert = rule["alert"].as_str().unwrap();
        assert!(
            ["info", "warning", "critical"]
                .contains(&rule["labels"]["severity"].as_str().unwrap_or("")),
            "{alert}: severity must be info, warning or critical"
        );
        for annotation in ["summary", "description"] {
            assert!(
                rule["annotations"][annotation]
                    .as_str()
                    .is_some_and(|text| !text.trim().is_empty()),
                "{alert}: no {annotation} annotation"
            );
        }
        for key in ["alert", "expr", "for", "labels"] {
            assert!(
                !rule[key].to_string().contains("{{"),
                "{alert}: templating in {key}"
            );
        }
    }
}

/// Every alert links a runbook in docs/runbooks.md, by an anchor that exists there (a heading
/// named after the alert), so the link in a page someone receives at night leads somewhere.
#[test]
fn every_alert_links_its_runbook() {
    const BASE: &str = "https://github.com/agentguard/agentguard/blob/main/docs/runbooks.md#";
    let file = yaml_file(RULES);
    let runbooks = std::fs::read_to_string(in_repo("docs/runbooks.md")).unwrap();
    let anchors: Vec<String> = runbooks
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|h| h.trim().to_ascii_lowercase().replace(' ', "-"))
        .collect();
    let alerts: Vec<&Value> = rules_of(&file)
        .into_iter()
        .filter(|r| r.get("alert").is_some())
        .collect();
    assert!(alerts.len() >= 9, "{} alerts", alerts.len());
    for rule in alerts {
        let alert = rule["alert"].as_str().unwrap();
        let url = rule["annotations"]["runbook_url"]
            .as_str()
            .unwrap_or_else(|| panic!("{alert} has no runbook_url"));
        let anchor = url
            .strip_prefix(BASE)
            .unwrap_or_else(|| panic!("{alert}: {url} is not in docs/runbooks.md"));
        assert_eq!(anchor, alert.to_ascii_lowercase(), "{alert}: {url}");
        assert!(
            anchors.iter().any(|a| a == anchor),
            "{alert}: docs/runbooks.md has no heading for #{anchor}"
        );
    }
}

/// A recorded increase is the growth since the previous evaluation: its offset must be its
/// group's interval, or the recorded differences leave gaps (offset shorter) or count twice
/// (longer). Every recorded series is read by a unit test.
#[test]
fn recorded_increases_use_their_groups_interval_and_are_tested() {
    let rules = yaml_file(RULES);
    let tests = std::fs::read_to_string(in_repo(UNIT_TESTS)).unwrap();
    let mut recorded = 0;
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let Some(name) = rule["record"].as_str() else {
                continue;
            };
            recorded += 1;
            let interval = group["interval"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: its group has no interval of its own"));
            let expr = rule["expr"].as_str().unwrap();
            let offsets: Vec<&str> = expr
                .split("offset ")
                .skip(1)
                .map(|rest| {
                    rest.split(|c: char| !c.is_ascii_alphanumeric())
                        .next()
                        .unwrap()
                })
                .collect();
            assert!(!offsets.is_empty(), "{name}: no offset");
            assert!(
                offsets.iter().all(|o| *o == interval),
                "{name}: offsets {offsets:?}, group interval {interval}"
            );
            assert!(
                name.ends_with(&format!(":increase{interval}")),
                "{name}: the name says another interval than {interval}"
            );
            assert!(
                tests.contains(name)
                    || alerts_of(&rules)
                        .iter()
                        .any(|a| a["expr"].as_str().unwrap().contains(name)),
                "{name} is read by no unit test and no alert"
            );
        }
    }
    assert!(recorded >= 4, "only {recorded} recording rules");
}
