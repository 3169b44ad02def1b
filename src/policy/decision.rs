use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, Operation};

use super::agents::AgentMatcher;
use crate::api::{ANNOTATION_POLICY, PROTECTED_ANNOTATION};

/// What the webhook answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny,
}

impl Verdict {
    /// Value of the `decision` metric label and audit annotation.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Allow => "allowed",
            Verdict::Deny => "denied",
        }
    }
}

/// The object a request is about, as the denial message and metrics name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    /// Kind, e.g. `PersistentVolumeClaim`.
    pub kind: String,
    /// Plural resource, e.g. `persistentvolumeclaims`.
    pub resource: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectRef {
    /// Reads name and namespace from `oldObject` first: for a DeleteCollection the API server
    /// sends one review per item, and on some paths `request.name` is empty.
    fn of(req: &AdmissionRequest<DynamicObject>) -> Self {
        let meta = req.old_object.as_ref().map(|o| &o.metadata);
        let name = meta
            .and_then(|m| m.name.clone())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| req.name.clone());
        let namespace = meta
            .and_then(|m| m.namespace.clone())
            .or_else(|| req.namespace.clone())
            .filter(|n| !n.is_empty());
        Self {
            kind: req.kind.kind.clone(),
            resource: req.resource.resource.clone(),
            namespace,
            name,
        }
    }

    fn qualified_name(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }
}

/// A decision and everything needed to explain it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    /// One line for logs and the `reason` audit annotation.
    pub reason: String,
    /// What protects the object (`annotation`, or a policy), when something does.
    pub policy: Option<String>,
    /// The text returned to the caller; set on denials.
    pub message: Option<String>,
    pub object: ObjectRef,
}

impl Decision {
    fn allow(object: ObjectRef, reason: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Allow,
            reason: reason.into(),
            policy: None,
            message: None,
            object,
        }
    }
}

/// Judges one admission request.
///
/// A DELETE by a restricted identity of an object annotated `agentguard.dev/protected: "true"`
/// is denied; everything else is allowed.
pub fn decide(req: &AdmissionRequest<DynamicObject>, agents: &AgentMatcher) -> Decision {
    let object = ObjectRef::of(req);
    if req.operation != Operation::Delete {
        return Decision::allow(object, "operation is not guarded");
    }
    let username = req.user_info.username.as_deref().unwrap_or_default();
    let groups = req.user_info.groups.as_deref().unwrap_or_default();
    let Some(restriction) = agents.restriction(username, groups) else {
        return Decision::allow(object, "identity is not restricted");
    };
    let Some(old) = req.old_object.as_ref() else {
        // Without the object we cannot tell whether it is protected: fail closed for agents.
        let message = format!(
            "agentguard: DENIED delete of {} {} by {username}: the API server sent no oldObject, \
             so agentguard cannot tell whether it is protected. Ask a human to perform this deletion.",
            object.kind,
            object.qualified_name()
        );
        return Decision {
            verdict: Verdict::Deny,
            reason: format!("{}; object not visible in review", restriction.reason),
            policy: None,
            message: Some(message),
            object,
        };
    };
    if !is_annotated_protected(old) {
        return Decision::allow(object, "object is not protected");
    }
    let message = denial_message(
        &object,
        username,
        "annotation agentguard.dev/protected=true",
    );
    Decision {
        verdict: Verdict::Deny,
        reason: format!("{}; object is protected; no approval", restriction.reason),
        policy: Some(ANNOTATION_POLICY.to_owned()),
        message: Some(message),
        object,
    }
}

fn is_annotated_protected(object: &DynamicObject) -> bool {
    object
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(PROTECTED_ANNOTATION))
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// The denial text an agent reads. Its shape is part of the contract (DESIGN.md): it says what
/// was refused, why, that the agent must not look for another route, and how a human approves.
fn denial_message(object: &ObjectRef, username: &str, protected_by: &str) -> String {
    let namespace_flag = object
        .namespace
        .as_deref()
        .map(|ns| format!(" -n {ns}"))
        .unwrap_or_default();
    format!(
        "agentguard: DENIED delete of {kind} {qualified} by {username}.\n\
         Protected by {protected_by}. This may hold production data.\n\
         Do not retry, and do not try another way to delete, move, or unprotect it.\n\
         Stop and ask a human to approve: kubectl agentguard approve {kind_lower}/{name}{namespace_flag} --for 30m",
        kind = object.kind,
        qualified = object.qualified_name(),
        kind_lower = object.kind.to_ascii_lowercase(),
        name = object.name,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::AgentDefinition;
    use kube::core::admission::AdmissionReview;
    use serde_json::json;

    fn agents() -> AgentMatcher {
        AgentMatcher::new(&AgentDefinition {
            service_accounts: vec!["ci/*".into()],
            ..Default::default()
        })
        .unwrap()
    }

    fn review(
        operation: &str,
        username: &str,
        name: &str,
        old_object: serde_json::Value,
    ) -> AdmissionRequest<DynamicObject> {
        let review: AdmissionReview<DynamicObject> = serde_json::from_value(json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "PersistentVolumeClaim"},
                "resource": {"group": "", "version": "v1", "resource": "persistentvolumeclaims"},
                "name": name,
                "namespace": "prod",
                "operation": operation,
                "userInfo": {"username": username, "groups": ["system:authenticated"]},
                "object": null,
                "oldObject": old_object,
                "dryRun": false
            }
        }))
        .unwrap();
        review.try_into().unwrap()
    }

    fn pvc(annotations: serde_json::Value) -> serde_json::Value {
        json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data", "namespace": "prod", "annotations": annotations},
            "spec": {}
        })
    }

    const AGENT: &str = "system:serviceaccount:ci:cursor-agent";

    #[test]
    fn decision_table() {
        let protected = pvc(json!({"agentguard.dev/protected": "true"}));
        let cases = [
            ("DELETE", AGENT, protected.clone(), Verdict::Deny),
            (
                "DELETE",
                AGENT,
                pvc(json!({"agentguard.dev/protected": "True "})),
                Verdict::Deny,
            ),
            (
                "DELETE",
                AGENT,
                pvc(json!({"agentguard.dev/protected": "false"})),
                Verdict::Allow,
            ),
            ("DELETE", AGENT, pvc(json!({})), Verdict::Allow),
            ("DELETE", AGENT, json!(null), Verdict::Deny),
            ("DELETE", "alice", protected.clone(), Verdict::Allow),
            ("DELETE", "alice", json!(null), Verdict::Allow),
            (
                "DELETE",
                "system:serviceaccount:kube-system:namespace-controller",
                protected.clone(),
                Verdict::Allow,
            ),
            ("UPDATE", AGENT, protected.clone(), Verdict::Allow),
            ("CREATE", AGENT, json!(null), Verdict::Allow),
        ];
        for (op, user, old, verdict) in cases {
            let d = decide(&review(op, user, "data", old.clone()), &agents());
            assert_eq!(d.verdict, verdict, "{op} by {user} of {old}: {}", d.reason);
            assert_eq!(d.message.is_some(), verdict == Verdict::Deny);
        }
    }

    #[test]
    fn denial_message_has_the_contract_shape() {
        let d = decide(
            &review(
                "DELETE",
                AGENT,
                "data",
                pvc(json!({"agentguard.dev/protected": "true"})),
            ),
            &agents(),
        );
        assert_eq!(
            d.message.unwrap(),
            "agentguard: DENIED delete of PersistentVolumeClaim prod/data by system:serviceaccount:ci:cursor-agent.\n\
             Protected by annotation agentguard.dev/protected=true. This may hold production data.\n\
             Do not retry, and do not try another way to delete, move, or unprotect it.\n\
             Stop and ask a human to approve: kubectl agentguard approve persistentvolumeclaim/data -n prod --for 30m"
        );
        assert_eq!(d.policy.as_deref(), Some("annotation"));
        assert_eq!(d.object.resource, "persistentvolumeclaims");
    }

    #[test]
    fn delete_collection_items_are_named_from_old_object() {
        let d = decide(
            &review(
                "DELETE",
                AGENT,
                "",
                pvc(json!({"agentguard.dev/protected": "true"})),
            ),
            &agents(),
        );
        assert_eq!(d.verdict, Verdict::Deny);
        assert_eq!(d.object.name, "data");
        assert_eq!(d.object.namespace.as_deref(), Some("prod"));
    }

    #[test]
    fn cluster_scoped_objects_have_no_namespace_flag() {
        let object = ObjectRef {
            kind: "PersistentVolume".into(),
            resource: "persistentvolumes".into(),
            namespace: None,
            name: "pv-1".into(),
        };
        let m = denial_message(&object, AGENT, "annotation agentguard.dev/protected=true");
        assert!(m.starts_with("agentguard: DENIED delete of PersistentVolume pv-1 by "));
        assert!(
            m.ends_with("approve persistentvolume/pv-1 --for 30m"),
            "{m}"
        );
    }
}
