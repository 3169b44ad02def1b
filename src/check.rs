//! `agentguard check`: proves, from inside the cluster, that the guard holds. Running as an
//! agent's identity (the chart's `helm test` Pod has a ServiceAccount labelled
//! `agentguard.dev/agent=true`), it asks the API server to delete a protected object in a dry
//! run and succeeds only when agentguard refuses it with its standard denial. Nothing is
//! deleted either way: the request is a dry run.

use anyhow::Context;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject};

/// What to try to delete: a core (v1) resource by plural and name, in a namespace or
/// cluster-scoped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub plural: String,
    pub name: String,
    pub namespace: Option<String>,
}

impl Target {
    /// `persistentvolumes/NAME` (cluster-scoped) or `persistentvolumeclaims/NAME` with a
    /// namespace.
    pub fn parse(object: &str, namespace: Option<String>) -> anyhow::Result<Self> {
        let (plural, name) = object
            .split_once('/')
            .filter(|(p, n)| !p.is_empty() && !n.is_empty() && !n.contains('/'))
            .with_context(|| {
                format!("--delete {object:?} must be PLURAL/NAME, e.g. persistentvolumes/probe")
            })?;
        Ok(Self {
            plural: plural.to_owned(),
            name: name.to_owned(),
            namespace,
        })
    }

    fn describe(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{}/{} in {ns}", self.plural, self.name),
            None => format!("{}/{}", self.plural, self.name),
        }
    }
}

/// What the API server answered, judged: Ok with the denial's first line when agentguard
/// refused, an error saying what happened otherwise.
pub fn judge(target: &Target, answer: Result<(), kube::Error>) -> anyhow::Result<String> {
    let what = target.describe();
    match answer {
        Ok(()) => anyhow::bail!(
            "the dry-run delete of {what} was allowed: agentguard did not refuse this identity \
             (is it an agent? is the object protected? is the webhook configuration in place?)"
        ),
        Err(kube::Error::Api(status)) if status.message.contains("agentguard: DENIED") => {
            Ok(status
                .message
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned())
        }
        Err(err) => Err(anyhow::anyhow!(
            "the dry-run delete of {what} failed, but not with agentguard's denial: {err}"
        )),
    }
}

/// Tries the dry-run delete with the in-cluster (or kubeconfig) credentials.
pub async fn run(target: Target, patience: std::time::Duration) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("cannot reach the API server")?;
    let resource = ApiResource {
        group: String::new(),
        version: "v1".into(),
        api_version: "v1".into(),
        kind: String::new(),
        plural: target.plural.clone(),
    };
    let api: Api<DynamicObject> = match &target.namespace {
        Some(ns) => Api::namespaced_with(client, ns, &resource),
        None => Api::all_with(client, &resource),
    };
    let params = DeleteParams {
        dry_run: true,
        ..Default::default()
    };
    // A ServiceAccount labelled a moment ago, or a binding just made, takes a moment to reach
    // agentguard and the authorizer: keep asking for `patience` before saying the guard is not
    // holding.
    let started = std::time::Instant::now();
    loop {
        let answer = api.delete(&target.name, &params).await.map(|_| ());
        match judge(&target, answer) {
            Ok(denial) => {
                println!(
                    "ok: agentguard refused the dry-run delete of {}: {denial}",
                    target.describe()
                );
                return Ok(());
            }
            Err(err) if started.elapsed() >= patience => return Err(err),
            Err(err) => {
                eprintln!("not yet: {err}");
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(Box::new(
            kube::core::Status::failure(message, "Forbidden").with_code(code),
        ))
    }

    #[test]
    fn only_agentguards_denial_passes() {
        let target = Target::parse("persistentvolumes/probe", None).unwrap();
        let denied = status(
            403,
            "admission webhook \"validate.agentguard.dev\" denied the request: agentguard: DENIED delete of PersistentVolume probe by x.\nmore",
        );
        assert!(
            judge(&target, Err(denied))
                .unwrap()
                .contains("agentguard: DENIED")
        );
        assert!(
            judge(&target, Ok(()))
                .unwrap_err()
                .to_string()
                .contains("was allowed")
        );
        let rbac = status(
            403,
            "persistentvolumes \"probe\" is forbidden: User cannot delete",
        );
        assert!(
            judge(&target, Err(rbac))
                .unwrap_err()
                .to_string()
                .contains("not with agentguard's denial")
        );
    }

    #[test]
    fn targets_are_plural_slash_name() {
        assert_eq!(
            Target::parse("persistentvolumeclaims/data", Some("prod".into())).unwrap(),
            Target {
                plural: "persistentvolumeclaims".into(),
                name: "data".into(),
                namespace: Some("prod".into())
            }
        );
        for bad in ["probe", "/probe", "persistentvolumes/", "a/b/c"] {
            assert!(Target::parse(bad, None).is_err(), "{bad}");
        }
    }
}
