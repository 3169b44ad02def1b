//! `policy::decide` on the hot path: one parsed admission request, one snapshot, one clock
//! reading. Requests are parsed once, outside the timed loop; each case asserts its verdict
//! before it is measured so a behaviour change cannot pass as a speed-up.
//!
//! Run with `cargo bench --bench decision` (add `-- --quick` for a short run).

mod support;

use std::hint::black_box;
use std::time::Duration;

use agentguard::index::objects::ObjectIndex;
use agentguard::policy::{Decision, Snapshot, Verdict, decide};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use jiff::Timestamp;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionReview};
use serde_json::Value;

use support::{AGENT, HUMAN, agent_groups, human_groups, pvc, review};

fn parse(review: &Value) -> AdmissionRequest<DynamicObject> {
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_value(review.clone()).expect("valid AdmissionReview");
    review.try_into().expect("review has a request")
}

fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).expect("valid timestamp")
}

fn check(what: &str, d: &Decision, verdict: Verdict, reason: &str) {
    assert_eq!(d.verdict, verdict, "{what}: {}", d.reason);
    assert!(d.reason.contains(reason), "{what}: {}", d.reason);
}

fn bench_decide(c: &mut Criterion) {
    let now = now();
    let snap = support::snapshot(support::policies(1));
    // The webhook's protected-object index (cascade checks), empty: every lookup misses, as
    // for a PVC nothing else depends on.
    let objects = ObjectIndex::default();

    let agent_delete = parse(&support::agent_delete());
    let human_delete = parse(&review(
        "DELETE",
        HUMAN,
        &human_groups(),
        pvc("100Gi", "gold"),
        Value::Null,
    ));
    // Resizes the volume and relabels it: nothing under agentguard.dev/ changes.
    let agent_update = parse(&review(
        "UPDATE",
        AGENT,
        &agent_groups(),
        pvc("100Gi", "gold"),
        pvc("200Gi", "silver"),
    ));

    let denied = decide(&agent_delete, &snap, &objects, now);
    check(
        "agent delete",
        &denied,
        Verdict::Deny,
        "protected by ClusterProtectedResource default-volumes",
    );
    check(
        "human delete",
        &decide(&human_delete, &snap, &objects, now),
        Verdict::Allow,
        "identity is not restricted",
    );
    check(
        "agent update",
        &decide(&agent_update, &snap, &objects, now),
        Verdict::Allow,
        "no agentguard.dev/* metadata changed",
    );

    let mut group = c.benchmark_group("decide");
    for (name, req) in [
        ("agent_delete_protected_pvc_denied", &agent_delete),
        ("human_delete_protected_pvc_allowed", &human_delete),
        ("agent_update_nothing_guarded_allowed", &agent_update),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                decide(
                    black_box(req),
                    black_box(&snap),
                    black_box(&objects),
                    black_box(now),
                )
            })
        });
    }
    group.finish();

    // The same denied DELETE against snapshots of growing size. Policies are indexed by
    // (group, kind), so the cost should stay flat: only the few PVC policies are filtered.
    let mut group = c.benchmark_group("decide_agent_delete_by_policy_count");
    for count in [1usize, 10, 100, 1_000] {
        let snap: Snapshot = support::snapshot(support::policies(count));
        assert_eq!(snap.policies().len(), count);
        let d = decide(&agent_delete, &snap, &objects, now);
        assert_eq!(d, denied, "{count} policies must decide like one");
        group.bench_with_input(BenchmarkId::from_parameter(count), &snap, |b, snap| {
            b.iter(|| {
                decide(
                    black_box(&agent_delete),
                    black_box(snap),
                    black_box(&objects),
                    black_box(now),
                )
            })
        });
    }
    group.finish();
}

/// Context for the end-to-end figures: what parsing the ~2 KB review costs next to deciding.
fn bench_parse(c: &mut Criterion) {
    let body = serde_json::to_vec(&support::agent_delete()).expect("serializable");
    c.bench_function("context/parse_agent_delete_review", |b| {
        b.iter(|| {
            let review: AdmissionReview<DynamicObject> =
                serde_json::from_slice(black_box(&body)).expect("valid AdmissionReview");
            let req: AdmissionRequest<DynamicObject> =
                review.try_into().expect("review has a request");
            req
        })
    });
}

criterion_group! {
    name = benches;
    // Sub-microsecond cases settle quickly; this keeps a full run near 30 s on 2 cores.
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_decide, bench_parse
}
criterion_main!(benches);
