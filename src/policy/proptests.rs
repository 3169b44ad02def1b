//! Property tests of the safety invariant: a restricted identity never gets a protected object
//! deleted without a valid human approval, and a human's deletion is never refused.

use jiff::Timestamp;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::decision::tests::{AGENT, NOW, Req, at, pvc, snapshot, spec};
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

#[derive(Debug, Clone)]
struct Case {
    user: &'static str,
    groups: Vec<&'static str>,
    protected: Option<String>,
    by: Option<String>,
    until: Option<String>,
    policy: Option<(Option<&'static str>, bool)>,
    collection: bool,
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
    )
        .prop_map(|((user, groups), protected, by, until, policy, collection)| Case {
            user,
            groups,
            protected,
            by,
            until,
            policy,
            collection,
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
