//! `agentguard manifests static`: agentguard's webhook configurations as files for the API
//! server's `staticManifestsDir` (Kubernetes 1.36+, feature gate
//! `ManifestBasedAdmissionControlConfig`, alpha), and the `AdmissionConfiguration` that loads
//! them. Configurations loaded from files are named `*.static.k8s.io`; no API call can delete or
//! edit them, and the API server refuses to create anything under that suffix.
//!
//! The rules are those of the managed configuration: both are built by
//! [`webhook_config::desired`] and [`webhook_config::desired_sealing`] from the same
//! [`webhook_config::kinds_to_route`], for the kinds given (the API server reads the files at
//! start and every minute; a new protected kind means writing them again).

use std::path::{Path, PathBuf};

use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, MutatingWebhookConfiguration, RuleWithOperations, ValidatingWebhook,
    ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::api::ObjectMeta;
use kube::core::{ApiResource, GroupVersionKind};

use crate::certs::ClientCertificate;
use crate::operator::static_config::{
    PROBE_PATH, PROBE_SECRET, PROBE_WEBHOOK_NAME, STATIC_CONFIGURATION_NAME,
};
use crate::operator::webhook_config::{
    self, Resources, Routes, WebhookParams, WebhookTarget, kinds_to_route,
};

/// File names inside the output directory.
pub const VALIDATING_DIR: &str = "validating";
pub const MUTATING_DIR: &str = "mutating";
pub const ADMISSION_CONFIGURATION: &str = "admission-configuration.yaml";
pub const CLIENT_KUBECONFIG: &str = "webhook-client.kubeconfig";

/// Everything the files are made of.
#[derive(Debug, Clone)]
pub struct StaticManifests {
    /// Target (must be a URL: static manifests do not take `clientConfig.service`), namespace,
    /// selector and failure policy, as for the managed configuration.
    pub params: WebhookParams,
    /// Protected kinds, (group, Kind).
    pub kinds: Vec<(String, String)>,
    /// Owner kinds whose deletion cascades to protected objects (the managed configuration
    /// follows them as protected objects appear; files cannot), routed as roots.
    pub owner_kinds: Vec<(String, String)>,
    /// PEM CA bundle the API server trusts for the webhook's serving certificate.
    pub ca_bundle: Vec<u8>,
    /// The client certificate the API server presents to the webhook (`kubeConfigFile`).
    pub client: Option<ClientCertificate>,
    /// Where the files will be on the API server's host (the AdmissionConfiguration names them
    /// by absolute path).
    pub install_dir: PathBuf,
}

/// The plural Kubernetes gives a kind by default (what CRDs use in practice).
fn plural(group: &str, kind: &str) -> String {
    ApiResource::from_gvk(&GroupVersionKind::gvk(group, "v1", kind)).plural
}

fn resources(kinds: impl IntoIterator<Item = (String, String)>) -> Resources {
    let mut out = Resources::new();
    for (group, kind) in kinds {
        out.entry(group.clone())
            .or_default()
            .insert(plural(&group, &kind));
    }
    out
}

/// The routes the managed configuration would have for these protected kinds and owner kinds
/// of protected objects.
pub fn routes_for(kinds: &[(String, String)], owner_kinds: &[(String, String)]) -> Routes {
    let (protected, roots) = kinds_to_route(kinds, [], owner_kinds.iter().cloned());
    Routes {
        protected: resources(protected),
        roots: resources(roots),
    }
}

fn static_metadata() -> ObjectMeta {
    ObjectMeta {
        name: Some(STATIC_CONFIGURATION_NAME.into()),
        ..Default::default()
    }
}

fn url(params: &WebhookParams) -> anyhow::Result<&str> {
    match &params.target {
        WebhookTarget::Url(url) => Ok(url),
        WebhookTarget::Service { .. } => anyhow::bail!(
            "static manifests need --webhook-url: the API server does not accept clientConfig.service in them"
        ),
    }
}

/// The probe webhook: routes only a dry-run CREATE of [`PROBE_SECRET`] in agentguard's own
/// namespace to [`PROBE_PATH`], so that agentguard can tell that this configuration is in force.
fn probe_webhook(params: &WebhookParams, ca_bundle: &[u8]) -> anyhow::Result<ValidatingWebhook> {
    let url = url(params)?;
    let base = url.strip_suffix("/validate").unwrap_or(url);
    Ok(ValidatingWebhook {
        name: PROBE_WEBHOOK_NAME.into(),
        admission_review_versions: vec!["v1".into()],
        side_effects: "None".into(),
        failure_policy: Some("Fail".into()),
        match_policy: Some("Equivalent".into()),
        timeout_seconds: Some(params.timeout_seconds),
        client_config: WebhookClientConfig {
            ca_bundle: Some(k8s_openapi::ByteString(ca_bundle.to_vec())),
            url: Some(format!("{base}{PROBE_PATH}")),
            service: None,
        },
        namespace_selector: Some(LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "kubernetes.io/metadata.name".into(),
                operator: "In".into(),
                values: Some(vec![params.own_namespace.clone()]),
            }]),
            match_labels: None,
        }),
        object_selector: None,
        match_conditions: Some(vec![MatchCondition {
            name: "probe-only".into(),
            expression: format!(
                "request.dryRun == true && object.metadata.name == '{PROBE_SECRET}'"
            ),
        }]),
        rules: Some(vec![RuleWithOperations {
            operations: Some(vec!["CREATE".into()]),
            api_groups: Some(vec!["".into()]),
            api_versions: Some(vec!["v1".into()]),
            resources: Some(vec!["secrets".into()]),
            scope: Some("Namespaced".into()),
        }]),
    })
}

impl StaticManifests {
    /// The validating and mutating configurations, as the managed ones for the same kinds,
    /// named [`STATIC_CONFIGURATION_NAME`], plus the probe webhook.
    pub fn configurations(
        &self,
    ) -> anyhow::Result<(ValidatingWebhookConfiguration, MutatingWebhookConfiguration)> {
        url(&self.params)?;
        let routes = routes_for(&self.kinds, &self.owner_kinds);
        let mut validating = webhook_config::desired(&self.params, &routes, &self.ca_bundle, None);
        validating.metadata = static_metadata();
        let hooks = validating.webhooks.get_or_insert_with(Vec::new);
        // Static files cannot follow the kinds the annotate webhook learns (the managed
        // configuration, which would, steps aside): leave it out rather than promise routing.
        hooks.retain(|h| h.name != webhook_config::ANNOTATE_WEBHOOK_NAME);
        hooks.push(probe_webhook(&self.params, &self.ca_bundle)?);
        let mut mutating =
            webhook_config::desired_sealing(&self.params, &routes, &self.ca_bundle, None);
        mutating.metadata = static_metadata();
        Ok((validating, mutating))
    }

    /// The `AdmissionConfiguration` for `--admission-control-config-file`.
    pub fn admission_configuration(&self) -> String {
        let dir = &self.install_dir;
        let kubeconfig = match &self.client {
            Some(_) => format!(
                "\n      kubeConfigFile: {}",
                dir.join(CLIENT_KUBECONFIG).display()
            ),
            None => String::new(),
        };
        let plugin = |name: &str, sub: &str| {
            format!(
                "  - name: {name}\n    configuration:\n      apiVersion: apiserver.config.k8s.io/v1\n      kind: WebhookAdmissionConfiguration{kubeconfig}\n      staticManifestsDir: {}\n",
                dir.join(sub).display()
            )
        };
        format!(
            "# Written by `agentguard manifests static`. kube-apiserver 1.36+ loads it with\n\
             #   --feature-gates=ManifestBasedAdmissionControlConfig=true\n\
             #   --admission-control-config-file={}\n\
             apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\nplugins:\n{}{}",
            dir.join(ADMISSION_CONFIGURATION).display(),
            plugin("ValidatingAdmissionWebhook", VALIDATING_DIR),
            plugin("MutatingAdmissionWebhook", MUTATING_DIR),
        )
    }

    /// The kubeconfig that gives the API server its client certificate for the webhook's
    /// `host:port` (the API server picks the user entry named after the host it calls).
    pub fn client_kubeconfig(&self) -> anyhow::Result<Option<String>> {
        let Some(client) = &self.client else {
            return Ok(None);
        };
        let url = url(&self.params)?;
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| anyhow::anyhow!("--webhook-url must start with https://"))?;
        let authority = rest.split('/').next().unwrap_or(rest);
        let host_port = if authority.rsplit_once(':').is_some_and(|(_, p)| {
            !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !authority.ends_with(']')
        }) {
            authority.to_owned()
        } else {
            format!("{authority}:443")
        };
        // ByteString serializes as base64, which is what `*-data` fields hold.
        let b64 = |s: &str| {
            serde_json::to_value(k8s_openapi::ByteString(s.as_bytes().to_vec()))
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        };
        Ok(Some(format!(
            "# Written by `agentguard manifests static`: the client certificate ({name}) kube-apiserver\n\
             # presents to agentguard's webhook at {host_port}.\n\
             apiVersion: v1\nkind: Config\nusers:\n  - name: \"{host_port}\"\n    user:\n      client-certificate-data: {cert}\n      client-key-data: {key}\n",
            name = client.name,
            cert = b64(&client.cert_pem),
            key = b64(&client.key_pem),
        )))
    }

    /// Writes every file into `out` and returns their paths.
    pub fn write(&self, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
        use anyhow::Context as _;
        let (validating, mutating) = self.configurations()?;
        let mut written = Vec::new();
        let mut put = |path: PathBuf, text: String, private: bool| -> anyhow::Result<()> {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            std::fs::write(&path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            if private {
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .with_context(|| format!("cannot restrict {}", path.display()))?;
            }
            written.push(path);
            Ok(())
        };
        let file = format!("{STATIC_CONFIGURATION_NAME}.yaml");
        put(
            out.join(VALIDATING_DIR).join(&file),
            serde_saphyr::to_string(&typed("ValidatingWebhookConfiguration", &validating)?)?,
            false,
        )?;
        put(
            out.join(MUTATING_DIR).join(&file),
            serde_saphyr::to_string(&typed("MutatingWebhookConfiguration", &mutating)?)?,
            false,
        )?;
        put(
            out.join(ADMISSION_CONFIGURATION),
            self.admission_configuration(),
            false,
        )?;
        if let Some(kubeconfig) = self.client_kubeconfig()? {
            put(out.join(CLIENT_KUBECONFIG), kubeconfig, true)?;
        }
        Ok(written)
    }
}

/// The object as JSON with its apiVersion and kind (k8s-openapi leaves them to the caller).
fn typed(kind: &str, object: &impl serde::Serialize) -> anyhow::Result<serde_json::Value> {
    let mut value = serde_json::to_value(object)?;
    if let Some(map) = value.as_object_mut() {
        map.insert(
            "apiVersion".into(),
            "admissionregistration.k8s.io/v1".into(),
        );
        map.insert("kind".into(), kind.into());
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifests() -> StaticManifests {
        StaticManifests {
            params: WebhookParams {
                configuration_name: "agentguard".into(),
                target: WebhookTarget::Url("https://10.96.0.50/validate".into()),
                own_namespace: "agentguard".into(),
                namespace_label: None,
                exclude_namespaces: vec![],
                timeout_seconds: 5,
                annotations: Default::default(),
                labels: Default::default(),
                failure_policy: "Fail".into(),
                owner_cluster_role: None,
            },
            kinds: vec![
                ("".into(), "PersistentVolumeClaim".into()),
                ("snapshot.storage.k8s.io".into(), "VolumeSnapshot".into()),
            ],
            owner_kinds: vec![("apps".into(), "Deployment".into())],
            ca_bundle: b"CA".to_vec(),
            client: Some(ClientCertificate {
                name: "kube-apiserver".into(),
                cert_pem: "CERT".into(),
                key_pem: "KEY".into(),
            }),
            install_dir: "/etc/kubernetes/agentguard".into(),
        }
    }

    #[test]
    fn the_static_rules_are_the_managed_rules_for_the_same_kinds() {
        let m = manifests();
        let (validating, mutating) = m.configurations().unwrap();
        assert_eq!(
            validating.metadata.name.as_deref(),
            Some("agentguard.static.k8s.io")
        );
        assert_eq!(
            mutating.metadata.name.as_deref(),
            Some("agentguard.static.k8s.io")
        );
        let routes = routes_for(&m.kinds, &m.owner_kinds);
        assert!(routes.protected[""].contains("persistentvolumeclaims"));
        assert!(routes.roots["apps"].contains("deployments"));
        assert!(routes.protected["snapshot.storage.k8s.io"].contains("volumesnapshots"));
        let managed = webhook_config::desired(&m.params, &routes, b"CA", None);
        let hooks = validating.webhooks.as_ref().unwrap();
        assert_eq!(hooks.len(), 2);
        assert_eq!(hooks[0], managed.webhooks.as_ref().unwrap()[0]);
        assert_eq!(hooks[1].name, PROBE_WEBHOOK_NAME);
        assert_eq!(
            hooks[1].client_config.url.as_deref(),
            Some("https://10.96.0.50/static-probe")
        );
        let sealing = webhook_config::desired_sealing(&m.params, &routes, b"CA", None);
        assert_eq!(mutating.webhooks, sealing.webhooks);
    }

    #[test]
    fn a_service_target_is_refused_with_the_reason() {
        let mut m = manifests();
        m.params.target = WebhookTarget::Service {
            namespace: "agentguard".into(),
            name: "agentguard".into(),
            port: 443,
        };
        let err = m.configurations().unwrap_err().to_string();
        assert!(err.contains("--webhook-url"), "{err}");
    }

    #[test]
    fn the_admission_configuration_names_both_directories_and_the_kubeconfig() {
        let m = manifests();
        let text = m.admission_configuration();
        for needle in [
            "kind: AdmissionConfiguration",
            "name: ValidatingAdmissionWebhook",
            "name: MutatingAdmissionWebhook",
            "kind: WebhookAdmissionConfiguration",
            "staticManifestsDir: /etc/kubernetes/agentguard/validating",
            "staticManifestsDir: /etc/kubernetes/agentguard/mutating",
            "kubeConfigFile: /etc/kubernetes/agentguard/webhook-client.kubeconfig",
        ] {
            assert!(text.contains(needle), "{needle} missing:\n{text}");
        }
        let kubeconfig = m.client_kubeconfig().unwrap().unwrap();
        // Port 443 is implied by the URL; the API server looks the user up as host:port.
        assert!(
            kubeconfig.contains("- name: \"10.96.0.50:443\""),
            "{kubeconfig}"
        );
        let m = StaticManifests {
            params: WebhookParams {
                target: WebhookTarget::Url("https://127.0.0.1:8443/validate".into()),
                ..m.params.clone()
            },
            ..m
        };
        let kubeconfig = m.client_kubeconfig().unwrap().unwrap();
        assert!(
            kubeconfig.contains("- name: \"127.0.0.1:8443\""),
            "{kubeconfig}"
        );
    }
}
