//! Scale of agentguard's in-memory state: the real `ObjectIndex` (protected-object index) and a
//! compiled policy `Snapshot`, fed N claims, with the real `policy::decide` timed against them.
//!
//! Memory is counted by a global allocator that tracks live heap bytes (exact, allocator
//! overhead excluded) and cross-checked against VmRSS. Prints one JSON document on stdout.
//!
//!   index-scale [N ...]          default 1000 10000 100000

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use agentguard::api::{Mode, ProtectionSpec, Target};
use agentguard::index::objects::{ObjectEntry, ObjectIndex, ObjectKey};
use agentguard::policy::{
    AgentDefinition, AgentMatcher, PolicyRef, ProtectedObjects, Snapshot, Verdict, compile, decide,
};
use jiff::Timestamp;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionReview};
use serde_json::{Value, json};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the counter only observes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const AGENT: &str = "system:serviceaccount:agents:agent";
/// Claims are spread over this many namespaces (a cluster with many tenants).
const NAMESPACES: usize = 100;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

fn rss_kib() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The chart's default policy (every claim and volume) and the bench's agents.
fn snapshot(extra_policies: usize) -> Snapshot {
    let agents = AgentMatcher::new(&AgentDefinition {
        service_accounts: vec!["agents/*".into()],
        groups: vec![],
        usernames: vec![],
        break_glass_groups: vec!["sre-break-glass".into()],
    })
    .expect("agent definition");
    let mut policies = vec![
        compile(
            PolicyRef::cluster("default-volumes"),
            &ProtectionSpec::new(
                Mode::Enforce,
                vec![Target::kinds(
                    &[""],
                    &["PersistentVolumeClaim", "PersistentVolume"],
                )],
            ),
        )
        .expect("default policy"),
    ];
    for i in 0..extra_policies {
        let mut target = Target::kinds(&[""], &["PersistentVolumeClaim"]);
        target.names = vec![format!("team-{i}-*")];
        policies.push(
            compile(
                PolicyRef::namespaced(&format!("ns-{}", i % NAMESPACES), &format!("team-{i}")),
                &ProtectionSpec::new(Mode::Enforce, vec![target]),
            )
            .expect("team policy"),
        );
    }
    Snapshot::new(agents, Default::default(), policies)
}

fn uid(i: usize) -> String {
    format!("{:08x}-0000-4000-8000-{:012x}", i as u32, i as u64)
}

fn entry(i: usize) -> ObjectEntry {
    let namespace = format!("ns-{}", i % NAMESPACES);
    let labels: BTreeMap<String, String> = [
        ("app.kubernetes.io/name".to_owned(), "orders-db".to_owned()),
        (
            "app.kubernetes.io/instance".to_owned(),
            format!("orders-{}", i % 50),
        ),
    ]
    .into();
    let mut annotations = BTreeMap::new();
    if i % 10 == 0 {
        annotations.insert("agentguard.dev/protected".to_owned(), "true".to_owned());
    }
    ObjectEntry::new(
        ObjectKey::new(
            "",
            "PersistentVolumeClaim",
            Some(&namespace),
            &format!("data-orders-{i}"),
        ),
        &uid(i),
        labels,
        &annotations,
        vec![],
    )
}

fn claim(i: usize, labels: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": format!("data-orders-{i}"), "namespace": format!("ns-{}", i % NAMESPACES),
            "uid": uid(i), "resourceVersion": "12345", "creationTimestamp": "2026-11-01T10:00:00Z",
            "labels": labels,
            "annotations": {"agentguard.dev/protected": "true",
                            "pv.kubernetes.io/bind-completed": "yes"},
            "finalizers": ["kubernetes.io/pvc-protection"]
        },
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "100Gi"}},
                 "storageClassName": "gold", "volumeMode": "Filesystem", "volumeName": format!("pv-{i}")},
        "status": {"phase": "Bound", "accessModes": ["ReadWriteOnce"], "capacity": {"storage": "100Gi"}}
    })
}

fn request(
    op: &str,
    (group, kind, resource): (&str, &str, &str),
    name: &str,
    namespace: Option<&str>,
    old: Value,
    new: Value,
) -> AdmissionRequest<DynamicObject> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_value(json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": group, "version": "v1", "kind": kind},
            "resource": {"group": group, "version": "v1", "resource": resource},
            "name": name, "namespace": namespace, "operation": op,
            "userInfo": {"username": AGENT, "groups": ["system:serviceaccounts",
                         "system:serviceaccounts:agents", "system:authenticated"]},
            "object": new, "oldObject": old, "dryRun": false,
            "options": if op == "DELETE" { json!({"kind": "DeleteOptions", "apiVersion": "meta.k8s.io/v1"}) } else { Value::Null }
        }
    }))
    .expect("review");
    review.try_into().expect("request")
}

/// Median ns per call over 15 batches sized to ~20 ms each.
fn time_ns(mut f: impl FnMut()) -> f64 {
    let started = Instant::now();
    let mut calibrate = 0u64;
    while started.elapsed().as_millis() < 20 {
        f();
        calibrate += 1;
    }
    let batch = calibrate.max(1);
    let mut samples: Vec<f64> = (0..15)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..batch {
                f();
            }
            t.elapsed().as_nanos() as f64 / batch as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() {
    let sizes: Vec<usize> = {
        let args: Vec<usize> = std::env::args()
            .skip(1)
            .map(|a| a.parse().expect("N is a number"))
            .collect();
        if args.is_empty() {
            vec![1_000, 10_000, 100_000]
        } else {
            args
        }
    };
    let now = Timestamp::from_second(1_800_000_000).expect("timestamp");

    let mut snapshots = Vec::new();
    for policies in [0usize, 100, 1000] {
        let before = live();
        let snap = snapshot(policies);
        let bytes = live() - before;
        snapshots.push(json!({"policies": policies + 1, "bytes": bytes}));
        drop(snap);
    }

    let snap = snapshot(0);
    let mut rows = Vec::new();
    for &n in &sizes {
        let entries: Vec<ObjectEntry> = (0..n).map(entry).collect();
        let (heap_before, rss_before) = (live(), rss_kib());
        let started = Instant::now();
        let mut index = ObjectIndex::default();
        for e in entries {
            index.upsert(e, &snap);
        }
        let build = started.elapsed();
        let heap = live() - heap_before;
        let rss = rss_kib() - rss_before;
        assert_eq!(index.len(), n);
        assert_eq!(
            index.protected_count(),
            n,
            "the default policy protects every claim"
        );

        let target = 0;
        let delete = request(
            "DELETE",
            ("", "PersistentVolumeClaim", "persistentvolumeclaims"),
            &format!("data-orders-{target}"),
            Some("ns-0"),
            claim(target, json!({"app.kubernetes.io/name": "orders-db"})),
            Value::Null,
        );
        let update = request(
            "UPDATE",
            ("", "PersistentVolumeClaim", "persistentvolumeclaims"),
            &format!("data-orders-{target}"),
            Some("ns-0"),
            claim(target, json!({"app.kubernetes.io/name": "orders-db"})),
            claim(
                target,
                json!({"app.kubernetes.io/name": "orders-db", "bench-seq": "1"}),
            ),
        );
        let namespace_delete = request(
            "DELETE",
            ("", "Namespace", "namespaces"),
            "ns-0",
            None,
            json!({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": "ns-0", "uid": "11111111-2222-4333-8444-555555555555"}}),
            Value::Null,
        );
        let verdict = |r: &AdmissionRequest<DynamicObject>| decide(r, &snap, &index, now).verdict;
        assert_eq!(
            verdict(&delete),
            Verdict::Deny,
            "agent delete of a protected claim"
        );
        assert_eq!(
            verdict(&update),
            Verdict::Allow,
            "agent adds a harmless label"
        );
        assert_eq!(
            verdict(&namespace_delete),
            Verdict::Deny,
            "namespace holding claims"
        );

        let decide_delete = time_ns(|| {
            black_box(decide(black_box(&delete), &snap, &index, now));
        });
        let decide_update = time_ns(|| {
            black_box(decide(black_box(&update), &snap, &index, now));
        });
        let decide_namespace = time_ns(|| {
            black_box(decide(black_box(&namespace_delete), &snap, &index, now));
        });
        let claim_lookup = time_ns(|| {
            black_box(index.claim(black_box("ns-0"), black_box("data-orders-0")));
        });
        // What a CustomResourceDefinition delete asks when its N instances are protected: the
        // same set walk as for a namespace, over every protected object of the kind.
        let kind_lookup = time_ns(|| {
            black_box(index.of_kind(black_box(""), black_box("PersistentVolumeClaim")));
        });
        let parse_delete_body = serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": serde_json::to_value(&delete_review_value(target)).expect("value")
        }))
        .expect("body");
        let parse = time_ns(|| {
            let r: AdmissionReview<DynamicObject> =
                serde_json::from_slice(black_box(&parse_delete_body)).expect("parse");
            black_box(r);
        });
        let row = json!({
            "objects": n,
            "namespace_size": n.div_ceil(NAMESPACES),
            "index_heap_bytes": heap,
            "index_bytes_per_object": heap as f64 / n as f64,
            "rss_delta_kib": rss,
            "upsert_ns_per_object": build.as_nanos() as f64 / n as f64,
            "decide_delete_claim_ns": decide_delete,
            "decide_update_claim_ns": decide_update,
            "decide_delete_namespace_ns": decide_namespace,
            "claim_lookup_ns": claim_lookup,
            "of_kind_lookup_ns": kind_lookup,
            "parse_review_ns": parse,
            "review_bytes": parse_delete_body.len(),
        });
        eprintln!("{row}");
        rows.push(row);
        drop(index);
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({"snapshot": snapshots, "index": rows})).expect("json")
    );
}

fn delete_review_value(i: usize) -> Value {
    json!({
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
        "kind": {"group": "", "version": "v1", "kind": "PersistentVolumeClaim"},
        "resource": {"group": "", "version": "v1", "resource": "persistentvolumeclaims"},
        "name": format!("data-orders-{i}"), "namespace": "ns-0", "operation": "DELETE",
        "userInfo": {"username": AGENT, "groups": ["system:serviceaccounts",
                     "system:serviceaccounts:agents", "system:authenticated"]},
        "object": {"kind": "DeleteOptions", "apiVersion": "meta.k8s.io/v1"},
        "oldObject": claim(i, json!({"app.kubernetes.io/name": "orders-db"})),
        "dryRun": false
    })
}
