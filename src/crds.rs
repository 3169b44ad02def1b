//! `agentguard crd --apply`: brings the cluster's agentguard CRDs up to this release's. Helm
//! installs a chart's `crds/` once and never upgrades them, so the chart runs this from a
//! pre-install/pre-upgrade hook Job before anything else of the release changes: a policy
//! field a new release adds is then kept rather than pruned by the old schema.
//!
//! It never downgrades: a CRD labelled with a newer release is left alone (an older schema
//! would prune what newer policies say, on every read). A version label it cannot read is an
//! error, not a guess.

use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use semver::Version;

use crate::api::{CRD_VERSION_LABEL, crds};

/// The field manager of the CRDs' fields (server-side apply).
pub const FIELD_MANAGER: &str = "agentguard-crds";

/// What to do with one CRD, given the release that wrote the one in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Absent, unlabelled (written before releases labelled their CRDs), as old or older.
    Apply,
    /// Written by a newer release: left as it is.
    KeepNewer(Version),
}

/// Decides for one CRD: `theirs` is the cluster CRD's version label (None when the CRD is
/// absent or has no label), `ours` this release's version.
pub fn plan(theirs: Option<&str>, ours: &Version) -> anyhow::Result<Plan> {
    let Some(theirs) = theirs else {
        return Ok(Plan::Apply);
    };
    let theirs = Version::parse(theirs).with_context(|| {
        format!(
            "its label {CRD_VERSION_LABEL}={theirs:?} is not a version, so agentguard cannot tell \
             whether applying {ours} would downgrade it; correct or remove the label"
        )
    })?;
    Ok(if theirs > *ours {
        Plan::KeepNewer(theirs)
    } else {
        Plan::Apply
    })
}

/// Applies every CRD that is absent or older, waits until each is Established, and returns
/// one line per CRD saying what happened. Every CRD is planned before any is written, so a
/// label it cannot read changes nothing.
pub async fn apply(client: kube::Client, wait: Duration) -> anyhow::Result<Vec<String>> {
    let ours = Version::parse(env!("CARGO_PKG_VERSION")).expect("Cargo.toml has a semver");
    let api: Api<CustomResourceDefinition> = Api::all(client);
    let mut planned = Vec::new();
    for crd in crds() {
        let name = crd.metadata.name.clone().expect("generated CRDs are named");
        let current = api
            .get_opt(&name)
            .await
            .with_context(|| format!("cannot read CustomResourceDefinition {name}"))?;
        let label = current
            .as_ref()
            .and_then(|c| c.metadata.labels.as_ref())
            .and_then(|l| l.get(CRD_VERSION_LABEL))
            .cloned();
        let plan = plan(label.as_deref(), &ours)
            .with_context(|| format!("CustomResourceDefinition {name}"))?;
        let before = match (label, current.is_some()) {
            (Some(from), _) => from,
            (None, true) => "unlabelled".to_owned(),
            (None, false) => "absent".to_owned(),
        };
        planned.push((crd, name, plan, before));
    }
    let mut report = Vec::new();
    for (crd, name, plan, before) in planned {
        if let Plan::KeepNewer(theirs) = plan {
            report.push(format!(
                "{name}: kept; the cluster's is from agentguard {theirs}, newer than {ours}"
            ));
            continue;
        }
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
        .with_context(|| format!("cannot apply CustomResourceDefinition {name}"))?;
        established(&api, &name, wait).await?;
        report.push(format!("{name}: {before} -> {ours}"));
    }
    Ok(report)
}

/// Waits until the API server serves `name` (Established and NamesAccepted).
async fn established(
    api: &Api<CustomResourceDefinition>,
    name: &str,
    wait: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let crd = api
            .get(name)
            .await
            .with_context(|| format!("cannot read CustomResourceDefinition {name}"))?;
        let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
        let holds = |kind: &str| {
            conditions
                .iter()
                .any(|c| c.type_ == kind && c.status == "True")
        };
        if holds("Established") && holds("NamesAccepted") {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let seen: Vec<String> = conditions
                .iter()
                .map(|c| {
                    format!(
                        "{}={} ({})",
                        c.type_,
                        c.status,
                        c.message.as_deref().unwrap_or_default()
                    )
                })
                .collect();
            bail!(
                "CustomResourceDefinition {name} is not Established after {wait:?}: {}",
                if seen.is_empty() {
                    "no conditions yet".to_owned()
                } else {
                    seen.join(", ")
                }
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_downgrades_and_refuses_to_guess() {
        let ours = Version::parse("0.3.0").unwrap();
        assert_eq!(plan(None, &ours).unwrap(), Plan::Apply);
        assert_eq!(plan(Some("0.2.9"), &ours).unwrap(), Plan::Apply);
        assert_eq!(plan(Some("0.3.0"), &ours).unwrap(), Plan::Apply);
        assert_eq!(plan(Some("0.3.0-rc.1"), &ours).unwrap(), Plan::Apply);
        assert_eq!(
            plan(Some("0.10.0"), &ours).unwrap(),
            Plan::KeepNewer(Version::parse("0.10.0").unwrap())
        );
        let err = plan(Some("latest"), &ours).unwrap_err().to_string();
        assert!(err.contains("\"latest\" is not a version"), "{err}");
    }

    #[test]
    fn every_crd_carries_this_releases_version() {
        for crd in crds() {
            let labels = crd.metadata.labels.unwrap_or_default();
            assert_eq!(
                labels.get(CRD_VERSION_LABEL).map(String::as_str),
                Some(env!("CARGO_PKG_VERSION"))
            );
        }
    }
}
