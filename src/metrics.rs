//! The one Prometheus registry and its typed metrics. Names and labels are part of the
//! contract (DESIGN.md, Metrics); nothing outside this module touches the registry.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

const NAMESPACE: &str = "agentguard";

/// The label value for anything outside a label's bounded set: an unknown kind, namespace or
/// policy, or a subject beyond [`SUBJECT_CAP`]. Labels come from reviews, which anyone who
/// reaches the webhook can write, so each label takes values from a bounded set only.
pub const OTHER: &str = "other";

/// Most distinct `subject` values of `agentguard_deletions_blocked_total`; later subjects are
/// counted as [`OTHER`].
pub const SUBJECT_CAP: usize = 100;

/// Admission latencies are sub-millisecond in the common case; the API server's timeout caps
/// the top, so buckets span 50µs to 10s.
const DURATION_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    admission_requests: IntCounterVec,
    deletions_blocked: IntCounterVec,
    admission_duration: HistogramVec,
    approvals: IntCounterVec,
    protected_objects: IntGaugeVec,
    unguarded_objects: IntGaugeVec,
    protected_databases: IntGaugeVec,
    certificate_expiry: prometheus::IntGauge,
    approval_requests: IntGaugeVec,
    watch_last_sync: IntGaugeVec,
    watch_healthy: IntGaugeVec,
    /// Watches given series so far (removed when their kind is no longer watched).
    watches: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Subjects given their own series so far (at most [`SUBJECT_CAP`]).
    subjects: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let admission_requests = IntCounterVec::new(
            Opts::new(
                "admission_requests_total",
                "Admission reviews answered, by decision.",
            )
            .namespace(NAMESPACE),
            &["operation", "resource", "decision", "dry_run"],
        )
        .expect("valid metric");
        let deletions_blocked = IntCounterVec::new(
            Opts::new(
                "deletions_blocked_total",
                "Deletions of protected objects refused to restricted identities (dry runs excluded).",
            )
            .namespace(NAMESPACE),
            &["namespace", "resource", "subject", "policy"],
        )
        .expect("valid metric");
        let admission_duration = HistogramVec::new(
            HistogramOpts::new(
                "admission_duration_seconds",
                "Time to decide an admission review, from parsed request to encoded response.",
            )
            .namespace(NAMESPACE)
            .buckets(DURATION_BUCKETS.to_vec()),
            &["operation"],
        )
        .expect("valid metric");
        let approvals = IntCounterVec::new(
            Opts::new(
                "approvals_total",
                "Approvals accepted, rejected, used by a deletion, or found expired.",
            )
            .namespace(NAMESPACE),
            &["result"],
        )
        .expect("valid metric");
        let protected_objects = IntGaugeVec::new(
            Opts::new(
                "protected_objects",
                "Objects currently protected, by resource.",
            )
            .namespace(NAMESPACE),
            &["resource"],
        )
        .expect("valid metric");
        let unguarded_objects = IntGaugeVec::new(
            Opts::new(
                "unguarded_objects",
                "Objects annotated agentguard.dev/protected=true whose kind agentguard's RBAC does not let it watch (see rbac.extraWatchedResources), by resource.",
            )
            .namespace(NAMESPACE),
            &["resource"],
        )
        .expect("valid metric");
        let protected_databases = IntGaugeVec::new(
            Opts::new(
                "protected_databases",
                "Protected objects of the data-holding catalog's kinds, by kind, whether the provider's own deletion protection is on (on, off, - when the kind has none) and whether deleting them keeps their backups and final snapshot (kept, lost, -).",
            )
            .namespace(NAMESPACE),
            &["kind", "own_protection", "backups"],
        )
        .expect("valid metric");
        let certificate_expiry = prometheus::IntGauge::with_opts(
            Opts::new(
                "certificate_expiry_timestamp_seconds",
                "When the serving certificate expires (Unix time).",
            )
            .namespace(NAMESPACE),
        )
        .expect("valid metric");
        let approval_requests = IntGaugeVec::new(
            Opts::new(
                "approval_requests",
                "DeletionRequests by state (pending, approved, rejected, expired).",
            )
            .namespace(NAMESPACE),
            &["state"],
        )
        .expect("valid metric");
        let watch_last_sync = IntGaugeVec::new(
            Opts::new(
                "watch_last_sync_timestamp_seconds",
                "Last time (Unix) the watch of a resource was known healthy: its connection working and its list complete.",
            )
            .namespace(NAMESPACE),
            &["resource"],
        )
        .expect("valid metric");
        let watch_healthy = IntGaugeVec::new(
            Opts::new(
                "watch_healthy",
                "1 while the watch of a resource is healthy, 0 while it is failing.",
            )
            .namespace(NAMESPACE),
            &["resource"],
        )
        .expect("valid metric");
        // Every state is exported from the start, so "none pending" reads 0, not absent.
        for state in ["pending", "approved", "rejected", "expired"] {
            approval_requests.with_label_values(&[state]).set(0);
        }
        let build_info = IntGaugeVec::new(
            Opts::new(
                "build_info",
                "Always 1; the version label names the running build.",
            )
            .namespace(NAMESPACE),
            &["version"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for collector in [
            Box::new(admission_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(deletions_blocked.clone()),
            Box::new(admission_duration.clone()),
            Box::new(approvals.clone()),
            Box::new(protected_objects.clone()),
            Box::new(unguarded_objects.clone()),
            Box::new(protected_databases.clone()),
            Box::new(certificate_expiry.clone()),
            Box::new(approval_requests.clone()),
            Box::new(watch_last_sync.clone()),
            Box::new(watch_healthy.clone()),
            Box::new(build_info),
        ] {
            registry
                .register(collector)
                .expect("metric registered once");
        }
        Self {
            registry,
            admission_requests,
            deletions_blocked,
            admission_duration,
            approvals,
            protected_objects,
            unguarded_objects,
            protected_databases,
            certificate_expiry,
            approval_requests,
            watch_last_sync,
            watch_healthy,
            watches: Default::default(),
            subjects: Default::default(),
        }
    }

    /// Sets the number of DeletionRequests in each state.
    pub fn set_approval_requests(&self, counts: &[(&str, i64)]) {
        for (state, count) in counts {
            self.approval_requests
                .with_label_values(&[state])
                .set(*count);
        }
    }

    /// Publishes each watch's health at `now` (Unix seconds): a healthy watch's last sync
    /// moves to `now`, a failing one's stays where it was. Watches not named (their kind no
    /// longer watched) drop out, so the resource label holds watched resources only.
    pub fn set_watch_health(&self, watches: &[(String, bool)], now: i64) {
        let current: std::collections::HashSet<&str> =
            watches.iter().map(|(w, _)| w.as_str()).collect();
        let mut exported = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        // Series are updated in place (never reset), so a scrape never sees one missing.
        exported.retain(|w| {
            let keep = current.contains(w.as_str());
            if !keep {
                let _ = self.watch_last_sync.remove_label_values(&[w]);
                let _ = self.watch_healthy.remove_label_values(&[w]);
            }
            keep
        });
        for (watch, healthy) in watches {
            if *healthy {
                self.watch_last_sync.with_label_values(&[watch]).set(now);
            }
            self.watch_healthy
                .with_label_values(&[watch])
                .set(i64::from(*healthy));
            exported.insert(watch.clone());
        }
    }

    /// Records when the certificate being served expires.
    pub fn set_certificate_expiry(&self, unix_seconds: i64) {
        self.certificate_expiry.set(unix_seconds);
    }

    /// Sets the number of protected objects of each resource; resources not named drop to 0.
    pub fn set_protected_objects(&self, counts: &[(String, i64)]) {
        self.protected_objects.reset();
        for (resource, count) in counts {
            self.protected_objects
                .with_label_values(&[resource])
                .set(*count);
        }
    }

    /// Sets the number of annotated objects of each resource agentguard cannot watch;
    /// resources not named drop out. The resources are kinds the API server serves (only those
    /// are recorded), so the label set stays bounded.
    pub fn set_unguarded_objects(&self, counts: &[(String, i64)]) {
        self.unguarded_objects.reset();
        for (resource, count) in counts {
            self.unguarded_objects
                .with_label_values(&[resource])
                .set(*count);
        }
    }

    /// Sets the protected databases by (kind, own protection, backups); combinations not named
    /// drop out. Kinds come from the compiled-in catalog, so the label set stays bounded.
    pub fn set_protected_databases(&self, counts: &[([String; 3], i64)]) {
        self.protected_databases.reset();
        for (labels, count) in counts {
            self.protected_databases
                .with_label_values(&[&labels[0], &labels[1], &labels[2]])
                .set(*count);
        }
    }

    /// Records what happened to an approval: accepted, rejected, used or expired.
    pub fn approval(&self, result: &str) {
        self.approvals.with_label_values(&[result]).inc();
    }

    /// Records one answered review.
    pub fn admission(
        &self,
        operation: &str,
        resource: &str,
        decision: &str,
        dry_run: bool,
        seconds: f64,
    ) {
        self.admission_requests
            .with_label_values(&[
                operation,
                resource,
                decision,
                if dry_run { "true" } else { "false" },
            ])
            .inc();
        self.admission_duration
            .with_label_values(&[operation])
            .observe(seconds);
    }

    /// Records one refused deletion. Callers skip dry runs: they destroyed nothing, and pass
    /// namespace, resource and policy from bounded sets (or [`OTHER`]); the subject is kept
    /// as given for the first [`SUBJECT_CAP`] subjects, [`OTHER`] after.
    pub fn deletion_blocked(&self, namespace: &str, resource: &str, subject: &str, policy: &str) {
        let subject = self.subject_label(subject);
        self.deletions_blocked
            .with_label_values(&[namespace, resource, subject, policy])
            .inc();
    }

    fn subject_label<'a>(&self, subject: &'a str) -> &'a str {
        let mut subjects = self.subjects.lock().unwrap_or_else(|e| e.into_inner());
        if subjects.contains(subject) {
            subject
        } else if subjects.len() < SUBJECT_CAP {
            subjects.insert(subject.to_owned());
            subject
        } else {
            OTHER
        }
    }

    /// The registry in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(out).expect("Prometheus text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_health_keeps_the_last_healthy_time_and_drops_unwatched_resources() {
        let m = Metrics::new();
        let line = |text: &str, name: &str, resource: &str| {
            let prefix = format!("agentguard_{name}{{resource=\"{resource}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
        };
        m.set_watch_health(
            &[
                ("serviceaccounts".into(), true),
                ("persistentvolumeclaims".into(), true),
            ],
            1000,
        );
        m.set_watch_health(
            &[
                ("serviceaccounts".into(), false),
                ("persistentvolumeclaims".into(), true),
            ],
            1060,
        );
        let text = m.render();
        let sync = "watch_last_sync_timestamp_seconds";
        assert_eq!(
            line(&text, sync, "serviceaccounts").as_deref(),
            Some("1000")
        );
        assert_eq!(
            line(&text, "watch_healthy", "serviceaccounts").as_deref(),
            Some("0")
        );
        assert_eq!(
            line(&text, sync, "persistentvolumeclaims").as_deref(),
            Some("1060")
        );
        m.set_watch_health(&[("serviceaccounts".into(), true)], 1120);
        let text = m.render();
        assert_eq!(
            line(&text, sync, "serviceaccounts").as_deref(),
            Some("1120")
        );
        assert_eq!(line(&text, sync, "persistentvolumeclaims"), None);
        assert_eq!(line(&text, "watch_healthy", "persistentvolumeclaims"), None);
    }

    #[test]
    fn renders_contract_names_and_labels() {
        let m = Metrics::new();
        m.admission("DELETE", "persistentvolumeclaims", "denied", false, 0.0002);
        m.deletion_blocked(
            "prod",
            "persistentvolumeclaims",
            "system:serviceaccount:ci:a",
            "annotation",
        );
        let text = m.render();
        for line in [
            r#"agentguard_admission_requests_total{decision="denied",dry_run="false",operation="DELETE",resource="persistentvolumeclaims"} 1"#,
            r#"agentguard_deletions_blocked_total{namespace="prod",policy="annotation",resource="persistentvolumeclaims",subject="system:serviceaccount:ci:a"} 1"#,
            r#"agentguard_admission_duration_seconds_count{operation="DELETE"} 1"#,
            concat!(
                r#"agentguard_build_info{version=""#,
                env!("CARGO_PKG_VERSION"),
                r#""} 1"#
            ),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn subjects_beyond_the_cap_count_as_other() {
        let m = Metrics::new();
        for i in 0..SUBJECT_CAP + 50 {
            let subject = format!("system:serviceaccount:ci:forged-{i}");
            m.deletion_blocked("", "other", &subject, "annotation");
        }
        // A subject seen before the cap filled keeps its series.
        m.deletion_blocked(
            "",
            "other",
            "system:serviceaccount:ci:forged-0",
            "annotation",
        );
        let text = m.render();
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("agentguard_deletions_blocked_total{"))
            .collect();
        assert_eq!(series.len(), SUBJECT_CAP + 1, "{text}");
        assert!(text.contains(r#"subject="other"} 50"#), "{text}");
        assert!(
            text.contains(r#"subject="system:serviceaccount:ci:forged-0"} 2"#),
            "{text}"
        );
    }
}
