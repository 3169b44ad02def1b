use std::collections::HashSet;

use serde::Deserialize;

use super::glob::{GlobError, GlobList};

const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";
const KUBE_SYSTEM_SERVICE_ACCOUNTS: &str = "system:serviceaccount:kube-system:";
const KUBE_CONTROLLER_MANAGER: &str = "system:kube-controller-manager";

/// Who the agents are, as a platform team writes it in Helm values or `agentguard run` flags.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentDefinition {
    /// ServiceAccounts as `namespace/name` globs, e.g. `ci/*` or `*/cursor-*`.
    #[serde(default)]
    pub service_accounts: Vec<String>,
    /// Group names; any member is an agent.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Username globs, e.g. `bot-*`.
    #[serde(default)]
    pub usernames: Vec<String>,
    /// Groups that are never restricted, whatever else matches (break glass).
    #[serde(default)]
    pub break_glass_groups: Vec<String>,
}

/// Why an identity is treated as an agent; shown in logs and audit annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restriction {
    pub reason: String,
}

/// ServiceAccount globs, groups and username globs: the agent definition's matching part, and
/// a policy's own `subjects`.
#[derive(Debug, Clone, Default)]
pub struct SubjectMatcher {
    service_accounts: GlobList,
    groups: HashSet<String>,
    usernames: GlobList,
}

impl SubjectMatcher {
    pub fn new(
        service_accounts: &[String],
        groups: &[String],
        usernames: &[String],
    ) -> Result<Self, GlobError> {
        Ok(Self {
            service_accounts: GlobList::new(service_accounts)?,
            groups: names(groups),
            usernames: GlobList::new(usernames)?,
        })
    }

    /// The rule that matches this identity, if any.
    pub fn matches(&self, username: &str, groups: &[String]) -> Option<Restriction> {
        if let Some(sa) = service_account_of(username)
            && let Some(glob) = self.service_accounts.first_match(&sa)
        {
            return Some(Restriction {
                reason: format!("service account {sa} matches agent glob {glob:?}"),
            });
        }
        if let Some(glob) = self.usernames.first_match(username) {
            return Some(Restriction {
                reason: format!("username {username} matches agent glob {glob:?}"),
            });
        }
        groups
            .iter()
            .find(|g| self.groups.contains(*g))
            .map(|group| Restriction {
                reason: format!("member of agent group {group}"),
            })
    }
}

fn names(v: &[String]) -> HashSet<String> {
    v.iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The compiled form of an [`AgentDefinition`]: answers "is this identity restricted?".
#[derive(Debug, Clone, Default)]
pub struct AgentMatcher {
    agents: SubjectMatcher,
    break_glass_groups: HashSet<String>,
}

impl AgentMatcher {
    pub fn new(definition: &AgentDefinition) -> Result<Self, GlobError> {
        Ok(Self {
            agents: SubjectMatcher::new(
                &definition.service_accounts,
                &definition.groups,
                &definition.usernames,
            )?,
            break_glass_groups: names(&definition.break_glass_groups),
        })
    }

    /// Why this identity can never be restricted, if it cannot.
    ///
    /// The cluster's own controllers are never restricted: when a human deletes a namespace,
    /// the namespace controller and garbage collector finish the job under their own names,
    /// and blocking them would wedge the cascade half way instead of protecting anything.
    pub fn exemption(&self, username: &str, groups: &[String]) -> Option<&'static str> {
        if is_cluster_controller(username) {
            return Some("cluster controller");
        }
        groups
            .iter()
            .any(|g| self.break_glass_groups.contains(g))
            .then_some("break-glass group")
    }

    /// `Some` when the global agent definition restricts the identity, with the rule that
    /// made it so. Exempt identities are never restricted.
    pub fn restriction(&self, username: &str, groups: &[String]) -> Option<Restriction> {
        if self.exemption(username, groups).is_some() {
            return None;
        }
        self.agents.matches(username, groups)
    }
}

/// `ns/name` for a ServiceAccount username `system:serviceaccount:ns:name`.
pub(crate) fn service_account_of(username: &str) -> Option<String> {
    let rest = username.strip_prefix(SERVICE_ACCOUNT_PREFIX)?;
    let (namespace, name) = rest.split_once(':')?;
    (!namespace.is_empty() && !name.is_empty() && !name.contains(':'))
        .then(|| format!("{namespace}/{name}"))
}

fn is_cluster_controller(username: &str) -> bool {
    username == KUBE_CONTROLLER_MANAGER || username.starts_with(KUBE_SYSTEM_SERVICE_ACCOUNTS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher() -> AgentMatcher {
        AgentMatcher::new(&AgentDefinition {
            service_accounts: vec!["ci/*".into(), "*/cursor-*".into(), "kube-system/*".into()],
            groups: vec!["ai-agents".into()],
            usernames: vec!["bot-*".into(), "system:kube-controller-manager".into()],
            break_glass_groups: vec!["sre-break-glass".into()],
        })
        .unwrap()
    }

    fn g(groups: &[&str]) -> Vec<String> {
        groups.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn restriction_table() {
        let m = matcher();
        let cases: &[(&str, &[&str], bool)] = &[
            ("system:serviceaccount:ci:deployer", &[], true),
            ("system:serviceaccount:prod:cursor-agent", &[], true),
            ("system:serviceaccount:prod:orders", &[], false),
            ("bot-renovate", &[], true),
            ("alice", &["ai-agents"], true),
            ("alice", &["developers"], false),
            // break glass wins over every agent rule
            ("bot-renovate", &["sre-break-glass"], false),
            (
                "system:serviceaccount:ci:deployer",
                &["sre-break-glass"],
                false,
            ),
            // the cluster's controllers are never restricted, even when a glob names them
            (
                "system:serviceaccount:kube-system:namespace-controller",
                &[],
                false,
            ),
            (
                "system:serviceaccount:kube-system:generic-garbage-collector",
                &[],
                false,
            ),
            ("system:kube-controller-manager", &[], false),
            // a lookalike of a system name is not exempt
            ("system:serviceaccount:kube-systemx:cursor-1", &[], true),
            // malformed service account names match no service account glob
            ("system:serviceaccount:ci", &[], false),
            ("system:serviceaccount:ci:a:b", &[], false),
        ];
        for (user, groups, restricted) in cases {
            assert_eq!(
                m.restriction(user, &g(groups)).is_some(),
                *restricted,
                "{user} {groups:?}"
            );
        }
    }

    #[test]
    fn reason_names_the_rule() {
        let r = matcher()
            .restriction("system:serviceaccount:ci:deployer", &[])
            .unwrap();
        assert_eq!(
            r.reason,
            "service account ci/deployer matches agent glob \"ci/*\""
        );
    }

    #[test]
    fn empty_definition_restricts_nobody() {
        let m = AgentMatcher::new(&AgentDefinition::default()).unwrap();
        assert!(
            m.restriction("system:serviceaccount:ci:x", &g(&["ai-agents"]))
                .is_none()
        );
    }

    #[test]
    fn bad_glob_is_an_error() {
        let def = AgentDefinition {
            service_accounts: vec!["ci/[".into()],
            ..Default::default()
        };
        assert!(AgentMatcher::new(&def).is_err());
    }
}
