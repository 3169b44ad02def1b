//! PolicyReports (`wgpolicyk8s.io/v1alpha2`, the format Kyverno, Kubewarden and Trivy write
//! and Policy Reporter shows): one `agentguard` PolicyReport per namespace with protected
//! objects, and one `agentguard` ClusterPolicyReport for cluster-scoped ones. Each protected
//! object is a result (which policy, whether its volume is pinned to Retain); each deletion an
//! Audit-mode policy would have refused is a `fail` result. The leader rewrites the reports
//! every [`REPORT_INTERVAL`]; when the API server does not serve the CRDs it does nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;

use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};

use crate::api::Mode;
use crate::index::SharedObjects;
use crate::index::objects::{ObjectKey, ProtectedBy};

/// How often the leader rewrites the reports.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(20);
/// Name of every report agentguard writes.
pub const REPORT_NAME: &str = "agentguard";
/// Reason of the Event recorded for a deletion an Audit-mode policy let through.
pub const AUDITED_REASON: &str = "DeletionAudited";
const GROUP: &str = "wgpolicyk8s.io";
const VERSION: &str = "v1alpha2";
const MANAGER: &str = "agentguard";

/// One protected object, as the report shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProtectedItem {
    pub key: ObjectKey,
    pub uid: String,
    pub by: ProtectedBy,
    /// For a database of the data-holding catalog: its own protection, as last read.
    pub posture: Option<crate::catalog::Assessment>,
}

/// A bound claim's volume: its name and reclaim policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    pub name: String,
    pub reclaim_policy: String,
}

/// A deletion an Audit-mode policy would have refused, from its Event.
#[derive(Debug, Clone, PartialEq)]
pub struct Audited {
    pub namespace: Option<String>,
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub message: String,
    pub seconds: i64,
}

fn resource_ref(
    api_version: &str,
    kind: &str,
    namespace: Option<&str>,
    name: &str,
    uid: Option<&str>,
) -> Value {
    let mut r = json!({"apiVersion": api_version, "kind": kind, "name": name});
    if let Some(ns) = namespace {
        r["namespace"] = json!(ns);
    }
    if let Some(uid) = uid.filter(|u| !u.is_empty()) {
        r["uid"] = json!(uid);
    }
    r
}

fn api_version(key: &ObjectKey, versions: &HashMap<String, String>) -> String {
    let version = versions
        .get(&format!("{}/{}", key.group, key.kind))
        .map_or("v1", String::as_str);
    if key.group.is_empty() {
        version.to_owned()
    } else {
        format!("{}/{version}", key.group)
    }
}

/// The reports to write: scope (namespace, or None for the cluster report) to report body
/// (`results` and `summary`). Pure: everything it needs is passed in.
pub fn build(
    protected: &[ProtectedItem],
    volumes: &HashMap<(String, String), Volume>,
    audited: &[Audited],
    versions: &HashMap<String, String>,
    now_seconds: i64,
) -> BTreeMap<Option<String>, Value> {
    // Every protected object is counted in its report's summary; the first
    // MAX_PROTECTED_RESULTS by name are listed (a report is one object: 100,000 results would
    // not fit in etcd, nor be read by anyone).
    let mut by_scope: BTreeMap<Option<&str>, Vec<&ProtectedItem>> = BTreeMap::new();
    for item in protected {
        by_scope
            .entry(item.key.namespace.as_deref())
            .or_default()
            .push(item);
    }
    let mut results: BTreeMap<Option<String>, (Vec<Value>, Summary)> = BTreeMap::new();
    for (scope, mut items) in by_scope {
        items.sort_by(|a, b| a.key.name.cmp(&b.key.name));
        let (listed, summary) = results.entry(scope.map(str::to_owned)).or_default();
        for (n, item) in items.into_iter().enumerate() {
            let judged = judge(item, volumes);
            summary.add(judged.result);
            if n < MAX_PROTECTED_RESULTS {
                listed.push(judged.into_result(item, versions, now_seconds));
            }
        }
        summary.omitted = listed.len().abs_diff(summary.total());
    }
    // Audited deletions: every one counted, the newest MAX_AUDITED_RESULTS per report listed.
    let mut audited: Vec<&Audited> = audited.iter().collect();
    audited.sort_by_key(|a| std::cmp::Reverse(a.seconds));
    let mut audited_listed: HashMap<Option<&str>, usize> = HashMap::new();
    for a in audited {
        let (listed, summary) = results.entry(a.namespace.clone()).or_default();
        summary.add("fail");
        let n = audited_listed.entry(a.namespace.as_deref()).or_default();
        if *n >= MAX_AUDITED_RESULTS {
            summary.omitted += 1;
            continue;
        }
        *n += 1;
        listed.push(json!({
            "source": "agentguard",
            "policy": "audit-mode",
            "rule": "would-have-blocked",
            "category": "data protection",
            "severity": "high",
            "result": "fail",
            "scored": true,
            "message": a.message,
            "timestamp": {"seconds": a.seconds, "nanos": 0},
            "resources": [resource_ref(&a.api_version, &a.kind, a.namespace.as_deref(), &a.name, None)],
        }));
    }
    results
        .into_iter()
        .map(|(scope, (mut listed, summary))| {
            listed.sort_by_key(|r| {
                r["resources"][0]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            });
            let mut report = json!({
                "results": listed,
                "summary": {
                    "pass": summary.pass, "fail": summary.fail, "warn": summary.warn,
                    "error": 0, "skip": 0,
                },
            });
            if summary.omitted > 0 {
                report["metadata"] =
                    json!({"annotations": {OMITTED_ANNOTATION: summary.omitted.to_string()}});
            }
            (scope, report)
        })
        .collect()
}

/// At most this many protected objects are listed per report (all are counted).
pub const MAX_PROTECTED_RESULTS: usize = 1000;
/// At most this many audited deletions (the newest) are listed per report (all are counted).
pub const MAX_AUDITED_RESULTS: usize = 1000;
/// On a report listing fewer results than it counts: how many are not listed.
pub const OMITTED_ANNOTATION: &str = "agentguard.dev/omitted-results";

/// A report's summary counts.
#[derive(Debug, Default)]
struct Summary {
    pass: usize,
    warn: usize,
    fail: usize,
    /// Protected objects counted but not listed.
    omitted: usize,
}

impl Summary {
    fn add(&mut self, result: &str) {
        match result {
            "pass" => self.pass += 1,
            "warn" => self.warn += 1,
            _ => self.fail += 1,
        }
    }

    fn total(&self) -> usize {
        self.pass + self.warn + self.fail
    }
}

/// What a protected object's result says, before it is written out.
struct Judged {
    result: &'static str,
    message: String,
    policies: Vec<String>,
    properties: BTreeMap<String, String>,
}

fn judge(item: &ProtectedItem, volumes: &HashMap<(String, String), Volume>) -> Judged {
    let key = &item.key;
    let mut policies: Vec<String> = item.by.policies.iter().map(|p| p.label()).collect();
    if item.by.annotation {
        policies.push(crate::api::ANNOTATION_POLICY.to_owned());
    }
    let mut properties = BTreeMap::from([
        ("protectedBy".to_owned(), policies.join(", ")),
        ("mode".to_owned(), format!("{:?}", item.by.mode)),
    ]);
    let (mut result, mut message) = match item.by.mode {
        Mode::Enforce => (
            "pass",
            "protected: agents' deletions are refused without a human's approval".to_owned(),
        ),
        Mode::Warn => (
            "warn",
            "Warn mode: agents' deletions are allowed with a warning".to_owned(),
        ),
        Mode::Audit => (
            "warn",
            "Audit mode: agents' deletions are allowed and recorded".to_owned(),
        ),
    };
    if key.group.is_empty() && &*key.kind == "PersistentVolumeClaim" {
        let claim = (
            key.namespace.as_deref().unwrap_or_default().to_owned(),
            key.name.to_string(),
        );
        if let Some(volume) = volumes.get(&claim) {
            properties.insert("volume".into(), volume.name.clone());
            properties.insert("reclaimPolicy".into(), volume.reclaim_policy.clone());
            if volume.reclaim_policy != "Retain" {
                result = "warn";
                message = format!(
                    "{message}; its volume {} has reclaimPolicy {}: the volume goes with the claim (not pinned to Retain)",
                    volume.name, volume.reclaim_policy
                );
            } else {
                message = format!("{message}; its volume {} is pinned to Retain", volume.name);
            }
        }
    }
    if let Some(posture) = &item.posture {
        properties.insert(
            "ownProtection".into(),
            posture.own_protection_text().to_owned(),
        );
        properties.insert("backupsOnDelete".into(), posture.backups_text().to_owned());
        if posture.is_weakened() {
            result = "warn";
            properties.insert("weakenedBy".into(), posture.weakened.join(", "));
            let mut what = Vec::new();
            if posture.own_protection == Some(false) {
                what.push("the provider's own deletion protection is off");
            }
            if posture.backups_kept == Some(false) {
                what.push("deleting it would also destroy its backups or final snapshot");
            }
            message = format!(
                "{message}; {} ({})",
                what.join(" and "),
                posture.weakened.join(", ")
            );
        }
    }
    Judged {
        result,
        message,
        policies,
        properties,
    }
}

impl Judged {
    fn into_result(
        self,
        item: &ProtectedItem,
        versions: &HashMap<String, String>,
        now_seconds: i64,
    ) -> Value {
        let key = &item.key;
        json!({
            "source": "agentguard",
            "policy": self.policies.first().cloned().unwrap_or_default(),
            "rule": "protected",
            "category": "data protection",
            "severity": "info",
            "result": self.result,
            "scored": true,
            "message": self.message,
            "timestamp": {"seconds": now_seconds, "nanos": 0},
            "resources": [resource_ref(&api_version(key, versions), &key.kind, key.namespace.as_deref(), &key.name, Some(&item.uid))],
            "properties": self.properties,
        })
    }
}

/// The deletions Audit-mode policies let through, from a watch of their Events (selected on
/// the server by reason), keyed by the Event's uid. An Event expires (the API server's
/// `--event-ttl`, one hour by default) and leaves the map with its watch event.
#[derive(Default)]
struct AuditLog {
    by_uid: HashMap<String, Audited>,
    /// The first list has been read: until then the reports are not written, since they would
    /// drop every `fail` result.
    synced: bool,
}

/// An audited deletion, from its Event; None when the Event lacks what a result needs.
fn audited_of(e: Event) -> Option<(String, Audited)> {
    let uid = e.metadata.uid?;
    let object = e.involved_object;
    let when = e
        .series
        .and_then(|s| s.last_observed_time)
        .map(|t| t.0)
        .or(e.event_time.map(|t| t.0))
        .or(e.last_timestamp.map(|t| t.0))
        .or(e.first_timestamp.map(|t| t.0))?;
    Some((
        uid,
        Audited {
            namespace: object.namespace.filter(|n| !n.is_empty()),
            api_version: object.api_version?,
            kind: object.kind?,
            name: object.name?,
            message: e.message.unwrap_or_default(),
            seconds: when.as_second(),
        },
    ))
}

/// Keeps `log` equal to the audited deletions' Events. Never returns.
async fn watch_audited(client: kube::Client, log: Arc<Mutex<AuditLog>>) {
    let config = watcher::Config::default().fields(&format!("reason={AUDITED_REASON}"));
    let mut events = watcher(Api::<Event>::all(client), config)
        .default_backoff()
        .boxed();
    let mut listing = HashMap::new();
    while let Some(event) = events.next().await {
        let lock = || log.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            Ok(watcher::Event::Init) => listing.clear(),
            Ok(watcher::Event::InitApply(e)) => listing.extend(audited_of(e)),
            Ok(watcher::Event::InitDone) => {
                let mut log = lock();
                log.by_uid = std::mem::take(&mut listing);
                log.synced = true;
            }
            Ok(watcher::Event::Apply(e)) => lock().by_uid.extend(audited_of(e)),
            Ok(watcher::Event::Delete(e)) => {
                if let Some(uid) = e.metadata.uid {
                    lock().by_uid.remove(&uid);
                }
            }
            Err(err) => tracing::debug!(error = %err, "watching audited deletions' Events"),
        }
    }
}

/// Writes the reports while `leader` says this replica leads. Never returns.
pub async fn run(
    client: kube::Client,
    objects: SharedObjects,
    postures: super::posture::Postures,
    leader: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(REPORT_INTERVAL);
    let mut warned = false;
    // Audited deletions come from a watch of their Events, started the first time this replica
    // writes reports (followers never list them).
    let audited = Arc::new(Mutex::new(AuditLog::default()));
    let mut audit_watch = None;
    loop {
        tick.tick().await;
        if !*leader.borrow() {
            continue;
        }
        match kube::discovery::group(&client, GROUP).await {
            Ok(group) if group.versions().any(|v| v == VERSION) => {}
            _ => {
                if !warned {
                    tracing::info!(
                        "the API server does not serve {GROUP}/{VERSION}: no PolicyReports"
                    );
                    warned = true;
                }
                continue;
            }
        }
        warned = false;
        if audit_watch.is_none() {
            audit_watch = Some(tokio::spawn(watch_audited(client.clone(), audited.clone())));
            // The first list of a few Events takes a moment; the first reports wait for it.
            for _ in 0..50 {
                if audited.lock().unwrap_or_else(|e| e.into_inner()).synced {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        if let Err(err) = write_reports(&client, &objects, &postures, &audited).await {
            tracing::warn!(error = %err, "cannot write PolicyReports; retrying");
        }
    }
}

async fn write_reports(
    client: &kube::Client,
    objects: &SharedObjects,
    postures: &super::posture::Postures,
    audited: &Mutex<AuditLog>,
) -> Result<(), kube::Error> {
    let protected: Vec<ProtectedItem> = {
        let index = objects.read().unwrap_or_else(|e| e.into_inner());
        let postures = postures.read().unwrap_or_else(|e| e.into_inner());
        index
            .protected_entries()
            .map(|(entry, by)| ProtectedItem {
                key: entry.key.clone(),
                uid: entry.uid.to_string(),
                by: by.clone(),
                posture: postures.get(&*entry.uid).map(|a| a.assessment.clone()),
            })
            .collect()
    };
    // Volumes from the index (the watch volume pinning runs), not a list of every volume.
    let volumes: HashMap<(String, String), Volume> = {
        let index = objects.read().unwrap_or_else(|e| e.into_inner());
        index
            .handles_of(crate::index::watch_handles::VOLUMES)
            .filter_map(|pv| {
                let claim = pv.bound.as_ref()?;
                Some((
                    (
                        claim.namespace.as_deref()?.to_owned(),
                        claim.name.to_string(),
                    ),
                    Volume {
                        name: pv.holder.name.to_string(),
                        reclaim_policy: pv.reclaim.as_deref().unwrap_or_default().to_owned(),
                    },
                ))
            })
            .collect()
    };
    let audited: Vec<Audited> = {
        let log = audited.lock().unwrap_or_else(|e| e.into_inner());
        if !log.synced {
            tracing::debug!("audited deletions not listed yet; the reports wait");
            return Ok(());
        }
        log.by_uid.values().cloned().collect()
    };
    let versions = preferred_versions(client, &protected).await;
    let reports = build(
        &protected,
        &volumes,
        &audited,
        &versions,
        jiff::Timestamp::now().as_second(),
    );
    let params = PatchParams::apply(MANAGER).force();
    let labels = json!({"app.kubernetes.io/managed-by": "agentguard"});
    // One namespace refusing (it is being deleted) must not hold back every other report: write
    // the rest, then report the first failure so the pass is retried.
    let mut first_error = None;
    for (scope, body) in &reports {
        let (api, kind) = report_api(client, scope.as_deref());
        let mut report = json!({
            "apiVersion": format!("{GROUP}/{VERSION}"),
            "kind": kind,
            "metadata": {"name": REPORT_NAME, "labels": labels},
            "results": body["results"],
            "summary": body["summary"],
        });
        if let Some(ns) = scope {
            report["metadata"]["namespace"] = json!(ns);
        }
        if let Some(annotations) = body.pointer("/metadata/annotations") {
            report["metadata"]["annotations"] = annotations.clone();
        }
        if let Err(err) = api
            .patch(REPORT_NAME, &params, &Patch::Apply(&report))
            .await
        {
            tracing::debug!(namespace = ?scope, error = %err, "cannot write a PolicyReport");
            first_error.get_or_insert(err);
        }
    }
    // Reports of scopes with nothing protected any more go.
    let selector = ListParams::default().labels("app.kubernetes.io/managed-by=agentguard");
    let (all, _) = report_api(client, Some(""));
    for old in all.list_metadata(&selector).await?.items {
        let ns = old.metadata.namespace.clone();
        if old.metadata.name.as_deref() == Some(REPORT_NAME) && !reports.contains_key(&ns) {
            let (api, _) = report_api(client, ns.as_deref());
            api.delete(REPORT_NAME, &DeleteParams::default()).await?;
        }
    }
    let (cluster, _) = report_api(client, None);
    if !reports.contains_key(&None) && cluster.get_opt(REPORT_NAME).await?.is_some() {
        cluster
            .delete(REPORT_NAME, &DeleteParams::default())
            .await?;
    }
    first_error.map_or(Ok(()), Err)
}

/// The API for the report of `scope`: a namespace's PolicyReport, every namespace's
/// (`Some("")`), or the ClusterPolicyReport (None).
fn report_api(client: &kube::Client, scope: Option<&str>) -> (Api<DynamicObject>, &'static str) {
    let (kind, plural) = match scope {
        Some(_) => ("PolicyReport", "policyreports"),
        None => ("ClusterPolicyReport", "clusterpolicyreports"),
    };
    let resource = ApiResource {
        group: GROUP.into(),
        version: VERSION.into(),
        api_version: format!("{GROUP}/{VERSION}"),
        kind: kind.into(),
        plural: plural.into(),
    };
    let api = match scope {
        Some("") => Api::all_with(client.clone(), &resource),
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    (api, kind)
}

/// The version each kind with protected objects is served at (for `apiVersion`): its group's
/// preferred version, or the first that serves it (see [`crate::index::served_kind`]). Keyed by
/// `group/kind`.
async fn preferred_versions(
    client: &kube::Client,
    protected: &[ProtectedItem],
) -> HashMap<String, String> {
    let mut versions = HashMap::new();
    let mut groups: HashMap<String, Option<kube::discovery::ApiGroup>> = HashMap::new();
    for item in protected {
        let (group, kind) = (&*item.key.group, &*item.key.kind);
        let key = format!("{group}/{kind}");
        if versions.contains_key(&key) {
            continue;
        }
        let version = if group.is_empty() {
            "v1".to_owned()
        } else {
            if !groups.contains_key(group) {
                let found = kube::discovery::group(client, group).await.ok();
                groups.insert(group.to_owned(), found);
            }
            groups[group]
                .as_ref()
                .and_then(|g| crate::index::served_kind(g, kind))
                .map_or_else(|| "v1".to_owned(), |(ar, _)| ar.version)
        };
        versions.insert(key, version);
    }
    versions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicyRef;

    fn item(
        ns: Option<&str>,
        kind: &str,
        name: &str,
        mode: Mode,
        annotation: bool,
    ) -> ProtectedItem {
        ProtectedItem {
            key: ObjectKey {
                group: "".into(),
                kind: kind.into(),
                namespace: ns.map(Into::into),
                name: name.into(),
            },
            uid: format!("uid-{name}"),
            by: ProtectedBy {
                annotation,
                policies: if annotation {
                    vec![]
                } else {
                    vec![PolicyRef::cluster("default-volumes")]
                },
                mode,
            },
            posture: None,
        }
    }

    /// A database whose own protection is off, or whose deletion would take its backups, is
    /// `warn` with what is off; one with everything on passes and says so.
    #[test]
    fn a_database_whose_own_protection_is_off_is_a_warning() {
        let mut weak = item(Some("prod"), "Instance", "orders", Mode::Enforce, true);
        weak.posture = Some(crate::catalog::Assessment {
            own_protection: Some(false),
            backups_kept: Some(false),
            weakened: vec!["spec.deletionPolicy absent".into()],
        });
        let judged = judge(&weak, &HashMap::new());
        assert_eq!(judged.result, "warn");
        assert!(
            judged.message.contains("the provider's own deletion protection is off and deleting it would also destroy its backups or final snapshot (spec.deletionPolicy absent)"),
            "{}",
            judged.message
        );
        assert_eq!(judged.properties["ownProtection"], "off");
        assert_eq!(judged.properties["backupsOnDelete"], "lost");
        let mut strong = weak.clone();
        strong.posture = Some(crate::catalog::Assessment {
            own_protection: Some(true),
            backups_kept: Some(true),
            weakened: vec![],
        });
        let judged = judge(&strong, &HashMap::new());
        assert_eq!(judged.result, "pass");
        assert_eq!(judged.properties["ownProtection"], "on");
    }

    #[test]
    fn a_report_lists_the_first_thousand_by_name_and_counts_them_all() {
        let protected: Vec<ProtectedItem> = (0..2500)
            .map(|i| {
                let mode = if i % 2 == 0 {
                    Mode::Enforce
                } else {
                    Mode::Warn
                };
                item(
                    Some("prod"),
                    "PersistentVolumeClaim",
                    &format!("data-{i:05}"),
                    mode,
                    false,
                )
            })
            .collect();
        let reports = build(&protected, &HashMap::new(), &[], &HashMap::new(), 100);
        let prod = &reports[&Some("prod".to_owned())];
        assert_eq!(
            prod["summary"],
            json!({"pass": 1250, "fail": 0, "warn": 1250, "error": 0, "skip": 0})
        );
        let results = prod["results"].as_array().unwrap();
        assert_eq!(results.len(), MAX_PROTECTED_RESULTS);
        assert_eq!(results[0]["resources"][0]["name"], "data-00000");
        assert_eq!(results[999]["resources"][0]["name"], "data-00999");
        assert_eq!(prod["metadata"]["annotations"][OMITTED_ANNOTATION], "1500");
        // Within the cap nothing is omitted, and no annotation says so.
        let reports = build(&protected[..10], &HashMap::new(), &[], &HashMap::new(), 100);
        assert!(reports[&Some("prod".to_owned())].get("metadata").is_none());
    }

    #[test]
    fn audited_deletions_are_all_counted_and_the_newest_listed() {
        let audited: Vec<Audited> = (0..1200)
            .map(|i| Audited {
                namespace: Some("staging".into()),
                api_version: "v1".into(),
                kind: "PersistentVolumeClaim".into(),
                name: format!("cache-{i:04}"),
                message: "agentguard would have blocked x".into(),
                seconds: i,
            })
            .collect();
        let reports = build(&[], &HashMap::new(), &audited, &HashMap::new(), 100);
        let staging = &reports[&Some("staging".to_owned())];
        assert_eq!(staging["summary"]["fail"], 1200);
        let results = staging["results"].as_array().unwrap();
        assert_eq!(results.len(), MAX_AUDITED_RESULTS);
        // The 200 oldest (seconds 0..200) are the ones left out.
        assert!(
            results
                .iter()
                .all(|r| r["timestamp"]["seconds"].as_i64() >= Some(200))
        );
        assert_eq!(
            staging["metadata"]["annotations"][OMITTED_ANNOTATION],
            "200"
        );
    }

    #[test]
    fn one_report_per_namespace_and_one_for_the_cluster() {
        let protected = vec![
            item(
                Some("prod"),
                "PersistentVolumeClaim",
                "data",
                Mode::Enforce,
                false,
            ),
            item(
                Some("prod"),
                "PersistentVolumeClaim",
                "wal",
                Mode::Enforce,
                true,
            ),
            item(
                Some("staging"),
                "PersistentVolumeClaim",
                "cache",
                Mode::Audit,
                false,
            ),
            item(None, "PersistentVolume", "pv-1", Mode::Enforce, false),
        ];
        let volumes = HashMap::from([
            (
                ("prod".to_owned(), "data".to_owned()),
                Volume {
                    name: "pv-1".into(),
                    reclaim_policy: "Retain".into(),
                },
            ),
            (
                ("prod".to_owned(), "wal".to_owned()),
                Volume {
                    name: "pv-2".into(),
                    reclaim_policy: "Delete".into(),
                },
            ),
        ]);
        let audited = vec![Audited {
            namespace: Some("staging".into()),
            api_version: "v1".into(),
            kind: "PersistentVolumeClaim".into(),
            name: "cache".into(),
            message: "agentguard would have blocked x".into(),
            seconds: 5,
        }];
        let reports = build(&protected, &volumes, &audited, &HashMap::new(), 100);
        assert_eq!(reports.len(), 3);
        let prod = &reports[&Some("prod".to_owned())];
        assert_eq!(
            prod["summary"],
            json!({"pass": 1, "fail": 0, "warn": 1, "error": 0, "skip": 0})
        );
        assert_eq!(prod["results"][0]["resources"][0]["name"], "data");
        assert_eq!(
            prod["results"][0]["policy"],
            "ClusterProtectedResource/default-volumes"
        );
        assert_eq!(prod["results"][0]["properties"]["reclaimPolicy"], "Retain");
        assert_eq!(prod["results"][1]["policy"], "annotation");
        assert_eq!(prod["results"][1]["result"], "warn");
        let staging = &reports[&Some("staging".to_owned())];
        assert_eq!(staging["summary"]["warn"], 1);
        assert_eq!(staging["summary"]["fail"], 1);
        let cluster = &reports[&None];
        assert_eq!(
            cluster["results"][0]["resources"][0]["kind"],
            "PersistentVolume"
        );
        assert!(
            cluster["results"][0]["resources"][0]
                .get("namespace")
                .is_none()
        );
    }
}
