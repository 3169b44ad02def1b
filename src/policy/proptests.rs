//! Property tests of the safety invariant: a restricted identity never gets a protected object
//! deleted without a valid human approval, and a human's deletion is never refused.

use jiff::Timestamp;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::decision::tests::{AGENT, NOW, Req, at, pvc, seal_for, seal_of, snapshot, spec};
use super::{PolicyRef, Verdict};
use crate::api::{ApprovalSpec, Approvers, Mode};

fn maybe(values: &'static [&'static str]) -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        proptest::sample::select(values).prop_map(|s| Some(s.to_owned()))
    ]
}

fn until() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("not-a-time".to_owned())),
        // Boundaries of every window in play, and anything in between.
        proptest::sample::select(vec![
            -3600i64, -1, 0, 1, 1800, 1801, 3600, 3601, 7200, 7201, 86400, 86401
        ])
        .prop_map(|off| Some(at(off))),
        (-7200i64..100_000).prop_map(|off| Some(at(off))),
    ]
}

/// The seal an approval carries: agentguard's, one copied from another object, or none.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Seal {
    Genuine,
    Copied,
    Garbage,
    Missing,
}

fn seal() -> impl Strategy<Value = Seal> {
    prop_oneof![
        3 => Just(Seal::Genuine),
        1 => Just(Seal::Copied),
        1 => Just(Seal::Garbage),
        1 => Just(Seal::Missing),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    user: &'static str,
    groups: Vec<&'static str>,
    protected: Option<String>,
    by: Option<String>,
    until: Option<String>,
    policy: Option<(Option<&'static str>, bool)>,
    collection: bool,
    seal: Seal,
}

fn case() -> impl Strategy<Value = Case> {
    (
        proptest::sample::select(vec![
            (AGENT, vec![]),
            ("bot-x", vec![]),
            ("system:serviceaccount:prod:labelled", vec![]),
            ("carol", vec!["ai-agents"]),
        ]),
        maybe(&["true", "TRUE", " true", "false", "yes", ""]),
        prop_oneof![3 => proptest::sample::select(vec!["alice", "bob"]).prop_map(|s| Some(s.to_owned())), 1 => maybe(&["", AGENT, "bot-y", "system:serviceaccount:prod:labelled"])],
        until(),
        proptest::option::of((
            proptest::option::of(proptest::sample::select(vec!["30m", "2h", "24h"])),
            any::<bool>(),
        )),
        any::<bool>(),
        seal(),
    )
        .prop_map(|((user, groups), protected, by, until, policy, collection, seal)| Case {
            user,
            groups,
            protected,
            by,
            until,
            policy,
            collection,
            seal,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn no_agent_deletes_protected_data_without_a_valid_human_approval(c in case()) {
        let mut annotations = Map::new();
        for (key, value) in [("protected", &c.protected), ("approved-by", &c.by), ("approved-until", &c.until)] {
            if let Some(v) = value {
                annotations.insert(format!("agentguard.dev/{key}"), json!(v));
            }
        }
        let (by, until) = (c.by.clone().unwrap_or_default(), c.until.clone().unwrap_or_default());
        let seal = match c.seal {
            Seal::Genuine if c.by.is_some() && c.until.is_some() => Some(seal_of(&by, &until)),
            Seal::Genuine | Seal::Missing => None,
            Seal::Copied => Some(seal_for("", "PersistentVolumeClaim", "uid-other", &by, &until)),
            Seal::Garbage => Some("v1:key-100:00ff".to_owned()),
        };
        if let Some(seal) = seal {
            annotations.insert("agentguard.dev/approval-seal".into(), json!(seal));
        }
        let mut policies = vec![];
        let mut cap_secs = i64::MAX;
        let mut approvers_only_bob = false;
        if let Some((ttl, bob_only)) = c.policy {
            let mut s = spec(Mode::Enforce, "PersistentVolumeClaim");
            s.approval = Some(ApprovalSpec {
                max_ttl: ttl.map(str::to_owned),
                approvers: bob_only.then(|| Approvers { usernames: vec!["bob".into()], groups: vec![] }),
            });
            cap_secs = cap_secs.min(match ttl { Some("30m") => 1800, Some("2h") => 7200, Some(_) => 86400, None => 3600 });
            approvers_only_bob = bob_only;
            policies.push((PolicyRef::cluster("p"), s));
        }
        let annotated = c.protected.as_deref().is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        if annotated {
            cap_secs = cap_secs.min(3600);
        }
        let snap = snapshot(policies, &["prod/labelled"]);
        let mut req = Req::delete(c.user, pvc(Value::Object(annotations))).groups(&c.groups);
        if c.collection {
            req.name = String::new();
        }
        let d = req.decide(&snap);
        let protected = annotated || c.policy.is_some();
        if protected && d.verdict != Verdict::Deny {
            let by = c.by.clone().unwrap_or_default();
            prop_assert!(by == "alice" || by == "bob", "approved by {by:?}: {}", d.reason);
            prop_assert_eq!(c.seal, Seal::Genuine, "an approval agentguard did not seal counted: {}", d.reason);
            prop_assert!(!approvers_only_bob || by == "bob");
            let until: Timestamp = c.until.clone().unwrap_or_default().parse().expect("a valid approval has a valid time");
            let window = until.as_second() - NOW;
            prop_assert!(window > 0 && window <= cap_secs, "window {window}s, cap {cap_secs}s");
        }
        if !protected {
            prop_assert_eq!(d.verdict, Verdict::Allow);
        }
    }

    #[test]
    fn humans_are_never_refused_a_deletion(
        protected in maybe(&["true", "false"]),
        by in maybe(&["alice", "bot-y"]),
        until in until(),
        with_policy in any::<bool>(),
    ) {
        let mut annotations = Map::new();
        for (key, value) in [("protected", &protected), ("approved-by", &by), ("approved-until", &until)] {
            if let Some(v) = value {
                annotations.insert(format!("agentguard.dev/{key}"), json!(v));
            }
        }
        let policies = if with_policy { vec![(PolicyRef::cluster("p"), spec(Mode::Enforce, "PersistentVolumeClaim"))] } else { vec![] };
        let snap = snapshot(policies, &[]);
        for user in ["alice", "system:serviceaccount:kube-system:generic-garbage-collector"] {
            let d = Req::delete(user, pvc(Value::Object(annotations.clone()))).decide(&snap);
            prop_assert_eq!(d.verdict, Verdict::Allow);
        }
    }
}

/// One write a restricted identity tries on the claim.
#[derive(Debug, Clone)]
enum Write {
    Label(&'static str, Option<&'static str>),
    Annotation(&'static str, Option<&'static str>),
    AddOwner(&'static str),
    RemoveOwner(&'static str),
    AddFinalizer(&'static str),
    RemoveFinalizer(&'static str),
    Spec(&'static str),
}

fn write() -> impl Strategy<Value = Write> {
    let label_value = proptest::option::of(proptest::sample::select(vec!["orders-db", "other"]));
    let owner = proptest::sample::select(vec!["owner-1", "ghost-1", "ghost-2"]);
    let finalizer =
        proptest::sample::select(vec!["kubernetes.io/pvc-protection", "example.com/backup"]);
    prop_oneof![
        (proptest::sample::select(vec!["app", "tier"]), label_value)
            .prop_map(|(k, v)| Write::Label(k, v)),
        (
            proptest::sample::select(vec!["agentguard.dev/protected", "team"]),
            proptest::option::of(proptest::sample::select(vec!["true", "false"]))
        )
            .prop_map(|(k, v)| Write::Annotation(k, v)),
        owner.clone().prop_map(Write::AddOwner),
        owner.prop_map(Write::RemoveOwner),
        finalizer.clone().prop_map(Write::AddFinalizer),
        finalizer.prop_map(Write::RemoveFinalizer),
        proptest::sample::select(vec!["1Gi", "2Gi"]).prop_map(Write::Spec),
    ]
}

fn apply(object: &Value, w: &Write) -> Value {
    let mut next = object.clone();
    let meta = next["metadata"].as_object_mut().unwrap();
    let set = |map: &mut Map<String, Value>, k: &str, v: Option<&str>| match v {
        Some(v) => {
            map.insert(k.to_owned(), json!(v));
        }
        None => {
            map.remove(k);
        }
    };
    match w {
        Write::Label(k, v) => set(
            meta.entry("labels")
                .or_insert(json!({}))
                .as_object_mut()
                .unwrap(),
            k,
            *v,
        ),
        Write::Annotation(k, v) => set(
            meta.entry("annotations")
                .or_insert(json!({}))
                .as_object_mut()
                .unwrap(),
            k,
            *v,
        ),
        Write::AddOwner(uid) => {
            let owners = meta
                .entry("ownerReferences")
                .or_insert(json!([]))
                .as_array_mut()
                .unwrap();
            if !owners.iter().any(|o| o["uid"] == *uid) {
                owners.push(
                    json!({"apiVersion": "v1", "kind": "ConfigMap", "name": uid, "uid": uid}),
                );
            }
        }
        Write::RemoveOwner(uid) => {
            if let Some(owners) = meta
                .get_mut("ownerReferences")
                .and_then(Value::as_array_mut)
            {
                owners.retain(|o| o["uid"] != *uid);
            }
        }
        Write::AddFinalizer(f) => {
            let finalizers = meta
                .entry("finalizers")
                .or_insert(json!([]))
                .as_array_mut()
                .unwrap();
            if !finalizers.iter().any(|x| x == f) {
                finalizers.push(json!(f));
            }
        }
        Write::RemoveFinalizer(f) => {
            if let Some(finalizers) = meta.get_mut("finalizers").and_then(Value::as_array_mut) {
                finalizers.retain(|x| x != f);
            }
        }
        Write::Spec(size) => {
            next["spec"] = json!({"resources": {"requests": {"storage": size}}});
        }
    }
    next
}

fn strings(object: &Value, pointer: &str, field: &str) -> Vec<String> {
    object
        .pointer(pointer)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| {
            if field.is_empty() {
                v.as_str()
            } else {
                v[field].as_str()
            }
        })
        .map(str::to_owned)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Invariant 2: no sequence of writes by a restricted identity leaves a protected object
    /// less protected (out of a policy's selector, unannotated, with an owner it did not have,
    /// without a finalizer it had) unless a human's sealed approval is on it.
    #[test]
    fn no_agent_write_sequence_lowers_protection(
        annotated in any::<bool>(),
        owned in any::<bool>(),
        writes in proptest::collection::vec(write(), 1..8),
    ) {
        let mut selector = spec(Mode::Enforce, "PersistentVolumeClaim");
        selector.targets[0].selector = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
            match_labels: Some([("app".to_owned(), "orders-db".to_owned())].into()),
            match_expressions: None,
        });
        let snap = snapshot(vec![(PolicyRef::cluster("by-label"), selector)], &[]);
        let mut initial = pvc(if annotated { json!({"agentguard.dev/protected": "true"}) } else { json!({}) });
        initial["metadata"]["finalizers"] = json!(["kubernetes.io/pvc-protection"]);
        if owned {
            initial["metadata"]["ownerReferences"] = json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner-1", "uid": "owner-1"}]);
        }
        let mut current = initial.clone();
        for w in &writes {
            let next = apply(&current, w);
            let d = Req::update(AGENT, current.clone(), next.clone()).decide(&snap);
            if d.verdict == Verdict::Allow {
                current = next;
            }
        }
        prop_assert_eq!(&current["metadata"]["labels"]["app"], &json!("orders-db"), "left the selector: {:?}", writes);
        if annotated {
            prop_assert_eq!(&current["metadata"]["annotations"]["agentguard.dev/protected"], &json!("true"));
        }
        let owners = strings(&current, "/metadata/ownerReferences", "uid");
        let initial_owners = strings(&initial, "/metadata/ownerReferences", "uid");
        prop_assert!(owners.iter().all(|o| initial_owners.contains(o)), "gained owners {:?}: {:?}", owners, writes);
        let finalizers = strings(&current, "/metadata/finalizers", "");
        prop_assert!(finalizers.contains(&"kubernetes.io/pvc-protection".to_owned()), "lost a finalizer: {:?}", writes);
    }

    /// The same writes by a human go through: the invariant costs people nothing.
    #[test]
    fn humans_may_lower_protection(writes in proptest::collection::vec(write(), 1..8)) {
        let snap = snapshot(vec![(PolicyRef::cluster("p"), spec(Mode::Enforce, "PersistentVolumeClaim"))], &[]);
        let mut current = pvc(json!({"agentguard.dev/protected": "true"}));
        for w in &writes {
            let next = apply(&current, w);
            let d = Req::update("alice", current.clone(), next.clone()).decide(&snap);
            prop_assert_eq!(d.verdict, Verdict::Allow, "{:?}: {}", w, d.reason);
            current = next;
        }
    }
}
