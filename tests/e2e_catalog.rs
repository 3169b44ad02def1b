//! End-to-end: databases protected out of the box, family by family, against the real API
//! server and the configuration agentguard writes. For every kind of a family that has switches
//! a rule can read (`catalog/data-kinds.yaml`), the test installs its CRD (the published one
//! when `hack/build-tools.sh` copies it from the project's Go module; otherwise one generated
//! from the catalog with the same group, kind, versions and the fields the switches read),
//! creates an object with every switch at its safe value, and checks as an agent with every verb
//! on the kind: its delete is refused, and each dangerous value of each switch is refused. A
//! human's approval then lets the agent delete it. The switches come from the catalog itself, so
//! a switch added there is tested here without a line changed.
//!
//! Families: an operator database with its claims (CloudNativePG), Crossplane (AWS, GCP,
//! Azure), AWS Controllers for Kubernetes, Config Connector and Azure Service Operator. ACK's
//! RDS instance also runs the approval that must accept a loss of backups
//! (`--destroy-backups`) and the posture agentguard shows (status, metric, PolicyReport).
//! Requires `hack/cluster.sh up`; fails (never skips) without a control plane.

mod support;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use agentguard::catalog::{DataKind, E2eCrd, Scope, Switch, catalog};
use serde_json::{Map, Value, json};
use support::{Cluster, Guard, GuardOptions, TestNamespace, stderr, stdout, wait_until};

/// The directory `hack/build-tools.sh` copies the published catalog CRDs into.
fn catalog_crds_dir() -> PathBuf {
    let out = Command::new(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("hack/build-tools.sh"))
        .arg("--print-catalog-crds")
        .output()
        .expect("run hack/build-tools.sh --print-catalog-crds");
    let dir = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    assert!(
        dir.join("s3.services.k8s.aws_buckets.yaml").exists(),
        "no catalog CRDs in {}: run hack/build-tools.sh",
        dir.display()
    );
    dir
}

/// A version name as the API server accepts it (the catalog may add words: "+ storage").
fn is_version(v: &str) -> bool {
    v.starts_with('v')
        && v.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// The JSON value a catalog entry writes (`true`, `Delete`, `"false"`), or None when it is a
/// description in words or `absent`.
fn catalog_value(raw: &Value) -> Option<Value> {
    match raw {
        Value::Bool(_) | Value::Number(_) => Some(raw.clone()),
        Value::String(s) => {
            let s = s.trim();
            if s == "absent" || s == "any other value" {
                return None;
            }
            if let Some(quoted) = s.strip_prefix('"').and_then(|r| r.split('"').next())
                && !quoted.is_empty()
            {
                return Some(Value::String(quoted.to_owned()));
            }
            (!s.contains(char::is_whitespace) && !s.contains('(')).then(|| json!(s))
        }
        _ => None,
    }
}

fn listed(raw: &Value) -> Vec<&Value> {
    match raw {
        Value::Array(items) => items.iter().collect(),
        one => vec![one],
    }
}

/// The schema type of a switch's field, from the values the catalog gives it.
fn field_type(switch: &Switch) -> &'static str {
    let values: Vec<Value> = listed(&switch.safe)
        .into_iter()
        .chain(listed(&switch.dangerous))
        .filter_map(catalog_value)
        .collect();
    if !values.is_empty() && values.iter().all(Value::is_boolean) {
        "boolean"
    } else if !values.is_empty() && values.iter().all(Value::is_number) {
        "integer"
    } else {
        "string"
    }
}

/// A CRD for a catalog kind whose published CRD is not at hand: the catalog's group, kind,
/// plural, scope and versions; the fields its switches read typed as the catalog's values are;
/// everything else open.
fn generated_crd(entry: &DataKind) -> Value {
    let open = || json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    let mut schema = open();
    for switch in entry.switches.iter().filter(|s| s.checkable()) {
        let Some(path) = switch.path.as_deref().filter(|p| p.starts_with("spec.")) else {
            continue;
        };
        let mut node = &mut schema;
        let parts: Vec<&str> = path.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            let properties = node
                .as_object_mut()
                .unwrap()
                .entry("properties")
                .or_insert_with(|| json!({}));
            let leaf = i + 1 == parts.len();
            node = properties
                .as_object_mut()
                .unwrap()
                .entry(*part)
                .or_insert_with(|| {
                    if leaf {
                        json!({"type": field_type(switch)})
                    } else {
                        open()
                    }
                });
        }
    }
    let versions: Vec<&String> = entry.versions.iter().filter(|v| is_version(v)).collect();
    assert!(!versions.is_empty(), "{}: no version", entry.kind);
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{}.{}", entry.plural, entry.group)},
        "spec": {
            "group": entry.group,
            "scope": match entry.scope { Scope::Namespaced => "Namespaced", Scope::Cluster => "Cluster" },
            "names": {"plural": entry.plural, "singular": entry.kind.to_ascii_lowercase(), "kind": entry.kind},
            "versions": versions.iter().enumerate().map(|(i, v)| json!({
                "name": v, "served": true, "storage": i == 0,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": schema.clone()}}},
            })).collect::<Vec<_>>(),
        },
    })
}

/// Installs a catalog kind's CRD (published when copied by `hack/build-tools.sh`, else
/// generated) and returns the version objects are created in and its schema.
fn install_crd(cluster: &Cluster, entry: &DataKind) -> (String, Value, &'static str) {
    // The catalog says which CRD the tests use; a published one must be there (never a silent
    // fallback to a generated one).
    let published = match entry.crd.e2e {
        Some(E2eCrd::Published) => {
            let file = entry.crd.file.as_deref().and_then(|f| f.rsplit('/').next());
            let path = catalog_crds_dir().join(file.expect("a published CRD names its file"));
            assert!(
                path.exists(),
                "{}: {} missing: hack/build-tools.sh copies it",
                entry.kind,
                path.display()
            );
            Some(path)
        }
        Some(E2eCrd::Generated) => None,
        None => panic!(
            "{}.{}: set crd.e2e in catalog/data-kinds.yaml to say which CRD the tests use",
            entry.kind, entry.group
        ),
    };
    let (crd, source): (Value, _) = match &published {
        Some(file) => {
            let text = std::fs::read_to_string(file).unwrap();
            cluster.kubectl_ok(&[
                "apply",
                "--server-side",
                "--force-conflicts",
                "-f",
                file.to_str().unwrap(),
            ]);
            (serde_saphyr::from_str(&text).unwrap(), "published")
        }
        None => {
            let crd = generated_crd(entry);
            let out = cluster.kubectl_stdin(
                &["apply", "--server-side", "--force-conflicts", "-f", "-"],
                &crd.to_string(),
            );
            assert!(out.status.success(), "generated CRD: {}", stderr(&out));
            (crd, "generated")
        }
    };
    let name = format!("crd/{}.{}", entry.plural, entry.group);
    cluster.wait_established(&[&name]);
    let version = crd["spec"]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["storage"] == json!(true))
        .expect("a storage version");
    (
        version["name"].as_str().unwrap().to_owned(),
        version["schema"]["openAPIV3Schema"].clone(),
        source,
    )
}

/// The smallest value a schema accepts: required fields (and the first `oneOf` branch's) only.
fn minimal(schema: &Value) -> Value {
    if let Some(first) = schema["enum"].as_array().and_then(|e| e.first()) {
        return first.clone();
    }
    match schema["type"].as_str() {
        Some("object") => {
            let mut out = Map::new();
            let required = schema["required"].as_array().into_iter().flatten().chain(
                schema["oneOf"]
                    .as_array()
                    .and_then(|o| o.first())
                    .and_then(|b| b["required"].as_array())
                    .into_iter()
                    .flatten(),
            );
            for field in required.filter_map(Value::as_str) {
                if field != "metadata" {
                    out.insert(field.into(), minimal(&schema["properties"][field]));
                }
            }
            Value::Object(out)
        }
        Some("string") => json!("x"),
        Some("integer") | Some("number") => json!(schema["minimum"].as_i64().unwrap_or(1).max(1)),
        Some("boolean") => json!(false),
        Some("array") => match schema["minItems"].as_u64() {
            Some(n) if n > 0 => json!([minimal(&schema["items"])]),
            _ => json!([]),
        },
        _ if schema["x-kubernetes-int-or-string"] == json!(true) => json!(1),
        _ => json!({}),
    }
}

/// Sets (Some) or removes (None) a switch on a manifest, as a merge patch writes it.
fn set_switch(obj: &mut Value, switch: &Switch, value: Option<Value>) {
    if let Some(key) = &switch.annotation {
        let v = value.map(|v| match v {
            Value::String(s) => Value::String(s),
            other => Value::String(other.to_string()),
        });
        obj["metadata"]["annotations"][key] = v.unwrap_or(Value::Null);
        return;
    }
    let path = switch.path.as_deref().unwrap();
    if let Some(entry) = &switch.contains {
        // Only finalizers: present or not.
        assert_eq!(path, "metadata.finalizers");
        obj["metadata"]["finalizers"] = match value {
            Some(_) => json!([entry]),
            None => Value::Null,
        };
        return;
    }
    let mut node = obj;
    let parts: Vec<&str> = path.split('.').collect();
    for part in &parts[..parts.len() - 1] {
        if !node[*part].is_object() {
            node[*part] = json!({});
        }
        node = &mut node[*part];
    }
    node[parts[parts.len() - 1]] = value.unwrap_or(Value::Null);
}

/// The value a switch is created with: its safe value (or a placeholder where the catalog
/// describes it: "set"), None when safe means absent.
fn safe_value(switch: &Switch) -> Option<Value> {
    let first = listed(&switch.safe).into_iter().next()?;
    if first.as_str().is_some_and(|s| s.trim() == "absent") {
        return None;
    }
    if switch.contains.is_some() {
        return (first.as_str().map(str::trim) == Some("present")).then_some(json!(true));
    }
    Some(catalog_value(first).unwrap_or_else(|| json!("agentguard-e2e-final")))
}

/// Every dangerous value a switch lists: Some(value) to set, None to remove it. `absent` on a
/// field is also tried as the literal value (CloudNativePG's `ensure: absent`).
fn dangerous_values(switch: &Switch) -> Vec<Option<Value>> {
    listed(&switch.dangerous)
        .into_iter()
        .flat_map(|raw| match raw.as_str().map(str::trim) {
            Some("absent") if switch.path.is_some() && switch.contains.is_none() => {
                vec![None, Some(json!("absent"))]
            }
            Some("absent") => vec![None],
            Some("any other value") => vec![Some(json!("delete"))],
            Some("present") if switch.contains.is_some() => vec![Some(json!(true))],
            _ => catalog_value(raw).map(Some).into_iter().collect(),
        })
        .collect()
}

/// A catalog kind as the tests use it.
struct Subject {
    entry: &'static DataKind,
    /// `plural.group`, as kubectl names it.
    resource: String,
    name: String,
}

/// Installs the kind's CRD and creates one object of it with every switch safe (checked with
/// the catalog's own assessment), as a human.
fn create_subject(
    cluster: &Cluster,
    ns: &TestNamespace,
    entry: &'static DataKind,
    extra: Value,
) -> Subject {
    let (version, schema, source) = install_crd(cluster, entry);
    let name = match entry.scope {
        Scope::Namespaced => "orders".to_owned(),
        Scope::Cluster => format!("{}-orders", ns.name),
    };
    let mut manifest = minimal(&schema);
    // The spec, even where the schema does not require one (the switches live there).
    if schema["properties"]["spec"].is_object() && manifest.get("spec").is_none() {
        manifest["spec"] = minimal(&schema["properties"]["spec"]);
    }
    manifest["apiVersion"] = json!(format!("{}/{version}", entry.group));
    manifest["kind"] = json!(entry.kind);
    manifest["metadata"] = json!({"name": name});
    if entry.scope == Scope::Namespaced {
        manifest["metadata"]["namespace"] = json!(ns.name);
    }
    json_patch::merge(&mut manifest, &extra);
    for switch in entry.switches.iter().filter(|s| s.checkable()) {
        set_switch(&mut manifest, switch, safe_value(switch));
    }
    // A switch whose safe value is "absent" left a null.
    strip_nulls(&mut manifest);
    let meta = serde_json::from_value(manifest["metadata"].clone()).unwrap();
    if let Some(a) = entry.assess(&meta, &manifest) {
        assert!(
            !a.is_weakened(),
            "{}: the safe manifest is weak: {a:?}",
            entry.kind
        );
    }
    let resource = format!("{}.{}", entry.plural, entry.group);
    if entry.scope == Scope::Cluster {
        ns.owns_cluster_object(&format!("{resource}/{name}"));
    }
    cluster.apply(&manifest.to_string());
    eprintln!("{} ({source} CRD, {version}) created", entry.kind);
    Subject {
        entry,
        resource,
        name,
    }
}

fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// The subject's switches as they stand in the API server.
fn switches_now(ns: &TestNamespace, s: &Subject) -> Vec<Option<String>> {
    let out = ns.kubectl_ok(&["get", &s.resource, &s.name, "-o", "json"]);
    let obj: kube::api::DynamicObject = serde_json::from_str(&out).unwrap();
    s.entry
        .switches
        .iter()
        .filter(|sw| sw.checkable())
        .map(|sw| sw.value_on(&obj.metadata, &obj.data))
        .collect()
}

/// As the agent: the delete is refused (dry run and real), and every dangerous value of every
/// readable switch is refused, leaving the object as it was. Returns how many patches were
/// refused.
fn agent_is_refused_everything(ns: &TestNamespace, agent: &str, s: &Subject) -> usize {
    let started = Instant::now();
    loop {
        let out = ns.kubectl_as(agent, &["delete", &s.resource, &s.name, "--dry-run=server"]);
        if stderr(&out).contains(&format!("agentguard: DENIED delete of {}", s.entry.kind)) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{} not protected after 60 s; the agent's dry run: {}{}",
            s.entry.kind,
            stdout(&out),
            stderr(&out)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!(
        "{} protected {:.1}s after it was created",
        s.entry.kind,
        started.elapsed().as_secs_f64()
    );
    let out = ns.kubectl_as(agent, &["delete", &s.resource, &s.name, "--wait=false"]);
    assert!(
        !out.status.success(),
        "the agent deleted {}/{}",
        s.resource,
        s.name
    );
    let before = switches_now(ns, s);
    let mut refused = 0;
    for switch in s.entry.switches.iter().filter(|sw| sw.checkable()) {
        for value in dangerous_values(switch) {
            let mut patch = json!({});
            set_switch(&mut patch, switch, value.clone());
            let out = ns.kubectl_as(
                agent,
                &[
                    "patch",
                    &s.resource,
                    &s.name,
                    "--type=merge",
                    "-p",
                    &patch.to_string(),
                ],
            );
            if out.status.success() && stdout(&out).contains("(no change)") {
                // The CRD defaults the field: removing it changes nothing.
                continue;
            }
            if !out.status.success() && stderr(&out).contains("Unsupported value") {
                // Not a value this CRD accepts (`absent` tried as a literal).
                continue;
            }
            assert!(
                !out.status.success() && stderr(&out).contains("agentguard: DENIED update"),
                "{}: the agent set {} to {value:?}: {}{}",
                s.entry.kind,
                switch.name(),
                stdout(&out),
                stderr(&out)
            );
            refused += 1;
        }
    }
    assert_eq!(
        switches_now(ns, s),
        before,
        "{}: a switch moved",
        s.entry.kind
    );
    // A write that leaves every switch as it was goes through.
    let out = ns.kubectl_as(
        agent,
        &[
            "label",
            &s.resource,
            &s.name,
            "team=payments",
            "--overwrite",
        ],
    );
    assert!(out.status.success(), "a harmless label: {}", stderr(&out));
    eprintln!(
        "{}: {refused} dangerous switch values refused",
        s.entry.kind
    );
    refused
}

/// `kubectl agentguard` as the cluster admin (a human).
fn plugin(cluster: &Cluster, ns: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kubectl-agentguard"))
        .arg("--kubeconfig")
        .arg(&cluster.kubeconfig)
        .args(["-n", ns])
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .expect("run kubectl-agentguard")
}

/// A human approves `object` for 10 minutes with `kubectl agentguard approve`.
fn approve(cluster: &Cluster, ns: &str, object: &str, extra: &[&str]) {
    let mut args = vec!["approve", object, "--for", "10m"];
    args.extend_from_slice(extra);
    let out = plugin(cluster, ns, &args);
    assert!(out.status.success(), "approve {object}: {}", stderr(&out));
}

/// After a human's approval the agent's delete goes through and the object goes.
fn approved_delete(cluster: &Cluster, ns: &TestNamespace, agent: &str, s: &Subject) {
    approve(
        cluster,
        &ns.name,
        &format!("{}/{}", s.resource, s.name),
        &[],
    );
    let out = ns.kubectl_as(agent, &["delete", &s.resource, &s.name, "--wait=false"]);
    assert!(
        out.status.success(),
        "{}: approved delete: {}",
        s.entry.kind,
        stderr(&out)
    );
    wait_until(
        Duration::from_secs(30),
        &format!("{} gone", s.entry.kind),
        || {
            stdout(&ns.kubectl(&[
                "get",
                &s.resource,
                &s.name,
                "--ignore-not-found",
                "-o",
                "name",
            ]))
            .trim()
            .is_empty()
        },
    );
}

/// Cluster-scoped objects reach every running agentguard's webhooks (the API server applies no
/// namespaceSelector to them), so another test's agentguard would seal their approvals with its
/// own key. The test with cluster-scoped kinds runs alone; the others share.
static CLUSTER_SCOPED: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    CLUSTER_SCOPED.read().unwrap_or_else(|e| e.into_inner())
}

const CNPG: &[&str] = &["cloudnative-pg"];
const CROSSPLANE: &[&str] = &["crossplane-aws", "crossplane-gcp", "crossplane-azure"];
const ACK: &[&str] = &["ack-rds", "ack-dynamodb", "ack-s3"];
const CONFIG_CONNECTOR: &[&str] = &["config-connector"];
const AZURE_SERVICE_OPERATOR: &[&str] = &["azure-service-operator"];
/// The kind the default-databases test installs while agentguard runs.
const INSTALLED_LATER: (&str, &str) = ("postgres-operator.crunchydata.com", "PostgresCluster");

/// The catalog's `crd.e2e` marks exactly the kinds these tests install (so the README's table,
/// rendered from it, says the truth about which CRD each was tested on). Needs no cluster.
#[test]
fn the_catalog_marks_exactly_the_kinds_tested_here() {
    let mut tested: Vec<(String, String)> = [
        CNPG,
        CROSSPLANE,
        ACK,
        CONFIG_CONNECTOR,
        AZURE_SERVICE_OPERATOR,
    ]
    .iter()
    .flat_map(|families| kinds_of(families))
    .map(|k| (k.group.clone(), k.kind.clone()))
    .chain([(INSTALLED_LATER.0.to_owned(), INSTALLED_LATER.1.to_owned())])
    .collect();
    tested.sort();
    let mut marked: Vec<(String, String)> = catalog()
        .kinds
        .iter()
        .filter(|k| k.crd.e2e.is_some())
        .map(|k| (k.group.clone(), k.kind.clone()))
        .collect();
    marked.sort();
    assert_eq!(marked, tested);
}

/// The kinds of the families named whose switches a rule can read.
fn kinds_of(families: &[&str]) -> Vec<&'static DataKind> {
    let kinds: Vec<&DataKind> = catalog()
        .kinds
        .iter()
        .filter(|k| families.iter().any(|f| k.family == *f))
        .filter(|k| k.switches.iter().any(Switch::checkable))
        .collect();
    assert!(!kinds.is_empty(), "{families:?}: no kinds with switches");
    kinds
}

/// The chart's `default-databases` ClusterProtectedResource as `helm template` renders it, named
/// after the test's namespace and narrowed to it (`namespaces: [<ns>]`), so the tests running
/// beside this one see no new protection.
fn default_databases_policy(cluster: &Cluster, ns: &str) -> String {
    let out = Command::new(cluster.tools.join("helm"))
        .args([
            "template",
            "agentguard",
            concat!(env!("CARGO_MANIFEST_DIR"), "/charts/agentguard"),
            "--kube-version",
            "1.36.3",
            "--show-only",
            "templates/default-protection.yaml",
        ])
        .output()
        .expect("run helm");
    assert!(out.status.success(), "helm template: {}", stderr(&out));
    let rendered = stdout(&out);
    let policy = rendered
        .split("\n---\n")
        .find(|doc| doc.contains("name: default-databases"))
        .expect("the chart renders default-databases");
    assert!(policy.contains("- catalog:"), "{policy}");
    policy
        .replace("name: default-databases", &format!("name: {ns}-databases"))
        .replace(
            "    - catalog:",
            &format!("    - namespaces: [{ns}]\n      catalog:"),
        )
}

/// The test's namespace with the chart's default policy narrowed to it, an agent with every
/// verb on the families' kinds, and agentguard running.
fn family_setup<'c>(
    cluster: &'c Cluster,
    prefix: &str,
    kinds: &[&DataKind],
    options: &GuardOptions,
) -> (TestNamespace<'c>, String, Guard<'c>) {
    let ns = TestNamespace::create(cluster, prefix);
    let agent = ns.agent("cursor-agent");
    let policy = format!("{}-databases", ns.name);
    cluster.apply(&default_databases_policy(cluster, &ns.name));
    ns.owns_cluster_object(&format!("clusterprotectedresource/{policy}"));
    // kubectl checks a Role's resources against discovery: the CRDs come first.
    for entry in kinds {
        install_crd(cluster, entry);
    }
    let namespaced: Vec<String> = kinds
        .iter()
        .filter(|k| k.scope == Scope::Namespaced)
        .map(|k| format!("{}.{}", k.plural, k.group))
        .collect();
    let cluster_scoped: Vec<String> = kinds
        .iter()
        .filter(|k| k.scope == Scope::Cluster)
        .map(|k| format!("{}.{}", k.plural, k.group))
        .collect();
    if !namespaced.is_empty() {
        ns.grant("cursor-agent", &namespaced.join(","));
    }
    if !cluster_scoped.is_empty() {
        ns.grant_cluster("cursor-agent", "*", &cluster_scoped.join(","));
    }
    let guard = Guard::start_with(&ns, &agent, options);
    (ns, agent, guard)
}

/// An operator's database and its claims: CloudNativePG's Cluster (published CRD), whose
/// instance claims the operator creates owned by the Cluster, so the garbage collector deletes
/// them with it; its ScheduledBackup and Database. Approved, the Cluster's deletion takes the
/// claims with it: what the approval let go is exactly what the catalog says.
#[test]
fn operator_database_family_cloudnative_pg() {
    let _shared = shared();
    let cluster = Cluster::connect();
    let kinds = kinds_of(CNPG);
    let (ns, agent, _guard) = family_setup(&cluster, "cat-cnpg", &kinds, &GuardOptions::default());
    let mut subjects = Vec::new();
    for entry in &kinds {
        let s = create_subject(&cluster, &ns, entry, json!({}));
        agent_is_refused_everything(&ns, &agent, &s);
        subjects.push(s);
    }
    // The claims the operator would create for instance 1, owned by the Cluster.
    let db = subjects
        .iter()
        .find(|s| s.entry.kind == "Cluster")
        .expect("Cluster is a cloudnative-pg kind with switches");
    let uid = ns.kubectl_ok(&[
        "get",
        &db.resource,
        &db.name,
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    for claim in ["orders-1", "orders-1-wal"] {
        cluster.apply(&format!(
            "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: {claim}\n  namespace: {ns}\n  ownerReferences:\n\
             \x20 - {{apiVersion: postgresql.cnpg.io/v1, kind: Cluster, name: {name}, uid: {uid}, controller: true, blockOwnerDeletion: true}}\n\
             spec:\n  accessModes: [ReadWriteOnce]\n  resources: {{requests: {{storage: 1Gi}}}}\n",
            ns = ns.name,
            name = db.name
        ));
    }
    // Orphaning the claims does not help: the Cluster itself is protected.
    let out = ns.kubectl_as(
        &agent,
        &["delete", &db.resource, &db.name, "--cascade=orphan"],
    );
    assert!(!out.status.success(), "orphaning delete went through");
    approved_delete(&cluster, &ns, &agent, db);
    for claim in ["orders-1", "orders-1-wal"] {
        ns.wait_pvc_gone(claim);
    }
}

/// Crossplane's providers for AWS, GCP and Azure (cluster-scoped managed resources; CRDs
/// generated, the provider modules are not served). The RDS instance also needs the approval to
/// accept its backups' loss once a human has set `skipFinalSnapshot`.
#[test]
fn crossplane_family() {
    let _alone = CLUSTER_SCOPED.write().unwrap_or_else(|e| e.into_inner());
    let cluster = Cluster::connect();
    let kinds = kinds_of(CROSSPLANE);
    let (ns, agent, _guard) = family_setup(&cluster, "cat-xp", &kinds, &GuardOptions::default());
    // Cluster-scoped: the namespaced default policy does not reach them, so one policy names the
    // test's objects by name (the families' kinds, through the catalog).
    cluster.apply(&format!(
        "apiVersion: agentguard.dev/v1alpha1\nkind: ClusterProtectedResource\nmetadata:\n  name: {ns}-crossplane\nspec:\n  targets:\n\
         \x20   - catalog: {{families: [crossplane-aws, crossplane-gcp, crossplane-azure]}}\n      names: [\"{ns}-*\"]\n",
        ns = ns.name
    ));
    ns.owns_cluster_object(&format!("clusterprotectedresource/{}-crossplane", ns.name));
    let mut subjects = Vec::new();
    for entry in &kinds {
        let s = create_subject(&cluster, &ns, entry, json!({}));
        agent_is_refused_everything(&ns, &agent, &s);
        subjects.push(s);
    }
    let rds = subjects
        .iter()
        .find(|s| s.entry.group == "rds.aws.upbound.io" && s.entry.kind == "Instance")
        .expect("the RDS instance");
    backups_need_an_explicit_approval(
        &cluster,
        &ns,
        &agent,
        rds,
        &[
            "patch",
            &rds.resource,
            &rds.name,
            "--type=merge",
            "-p",
            r#"{"spec":{"forProvider":{"skipFinalSnapshot":true}}}"#,
        ],
        "spec.forProvider.skipFinalSnapshot",
    );
    for s in subjects
        .iter()
        .filter(|s| s.name != rds.name || s.entry.kind != "Instance")
    {
        approved_delete(&cluster, &ns, &agent, s);
    }
}

/// A human makes the deletion lose backups (`weaken`, allowed to them). The plugin then refuses
/// an approval without `--destroy-backups` and names the switch; an approval set by hand
/// without it does not count at the agent's delete, which names the switch and the flag; one
/// with the flag lets the agent delete.
fn backups_need_an_explicit_approval(
    cluster: &Cluster,
    ns: &TestNamespace,
    agent: &str,
    s: &Subject,
    weaken: &[&str],
    switch_key: &str,
) {
    ns.kubectl_ok(weaken);
    let object = format!("{}/{}", s.resource, s.name);
    let out = plugin(cluster, &ns.name, &["approve", &object, "--for", "10m"]);
    assert!(!out.status.success(), "approved without --destroy-backups");
    assert!(
        stderr(&out).contains("--destroy-backups") && stderr(&out).contains(switch_key),
        "{}",
        stderr(&out)
    );
    // An approval written by hand (the plugin would refuse it): sealed, but silent on backups.
    let me = ns.kubectl_ok(&[
        "auth",
        "whoami",
        "-o",
        "jsonpath={.status.userInfo.username}",
    ]);
    let until = support::in_secs(600);
    ns.kubectl_ok(&[
        "annotate",
        &s.resource,
        &s.name,
        &format!("agentguard.dev/approved-by={me}"),
        &format!("agentguard.dev/approved-until={until}"),
    ]);
    let out = ns.kubectl_as(agent, &["delete", &s.resource, &s.name, "--dry-run=server"]);
    assert!(
        stderr(&out).contains("does not cover what this deletion also destroys")
            && stderr(&out).contains(switch_key)
            && stderr(&out).contains("--destroy-backups"),
        "{}",
        stderr(&out)
    );
    let out = plugin(
        cluster,
        &ns.name,
        &["approve", &object, "--for", "10m", "--destroy-backups"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(switch_key), "{}", stdout(&out));
    let out = ns.kubectl_as(agent, &["delete", &s.resource, &s.name, "--wait=false"]);
    assert!(
        out.status.success(),
        "approved with --destroy-backups: {}",
        stderr(&out)
    );
}

/// AWS Controllers for Kubernetes: RDS instances and clusters, DynamoDB tables (CRDs
/// generated) and S3 buckets (the published CRD). Also what agentguard shows of a database whose
/// own protection a human turned off: `status`, the metric and the PolicyReport; and the
/// approval that must accept the final snapshot's loss.
#[test]
fn ack_family() {
    let _shared = shared();
    let cluster = Cluster::connect();
    cluster.install_third_party_crds();
    let kinds = kinds_of(ACK);
    let options = GuardOptions {
        policy_reports: true,
        ..Default::default()
    };
    let (ns, agent, guard) = family_setup(&cluster, "cat-ack", &kinds, &options);
    let mut subjects = Vec::new();
    for entry in &kinds {
        let s = create_subject(&cluster, &ns, entry, json!({}));
        agent_is_refused_everything(&ns, &agent, &s);
        subjects.push(s);
    }
    let rds = subjects
        .iter()
        .find(|s| s.entry.kind == "DBInstance")
        .expect("the RDS instance");
    let kind_label = "DBInstance.rds.services.k8s.aws";
    // Every switch safe: its own protection is on.
    wait_until(Duration::from_secs(75), "the metric says on/kept", || {
        guard.metric(
            "agentguard_protected_databases",
            &[
                ("kind", kind_label),
                ("own_protection", "on"),
                ("backups", "kept"),
            ],
        ) == 1.0
    });
    // A human skips the final snapshot (a human may): status, the metric and the report say so.
    ns.kubectl_ok(&[
        "annotate",
        "--overwrite",
        &rds.resource,
        &rds.name,
        "rds.services.k8s.aws/skip-final-snapshot=true",
    ]);
    let out = plugin(&cluster, &ns.name, &["status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let row = stdout(&out)
        .lines()
        .find(|l| l.starts_with(kind_label) && l.contains("/orders"))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no database row in:\n{}", stdout(&out)));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        &cells[..4],
        &[kind_label, &format!("{}/orders", ns.name), "on", "lost"],
        "{row}"
    );
    assert!(
        row.contains("rds.services.k8s.aws/skip-final-snapshot=true"),
        "{row}"
    );
    wait_until(Duration::from_secs(75), "the metric says lost", || {
        guard.metric(
            "agentguard_protected_databases",
            &[
                ("kind", kind_label),
                ("own_protection", "on"),
                ("backups", "lost"),
            ],
        ) == 1.0
    });
    wait_until(Duration::from_secs(90), "the PolicyReport warns", || {
        let report = stdout(&ns.kubectl(&["get", "policyreport", "agentguard", "-o", "json"]));
        serde_json::from_str::<Value>(&report).is_ok_and(|r| {
            r["results"].as_array().into_iter().flatten().any(|res| {
                res["resources"][0]["kind"] == "DBInstance"
                    && res["result"] == "warn"
                    && res["message"].as_str().is_some_and(|m| {
                        m.contains("would also destroy its backups or final snapshot")
                    })
            })
        })
    });
    backups_need_an_explicit_approval(
        &cluster,
        &ns,
        &agent,
        rds,
        &[
            "annotate",
            "--overwrite",
            &rds.resource,
            &rds.name,
            "rds.services.k8s.aws/delete-automated-backups=true",
        ],
        "rds.services.k8s.aws/skip-final-snapshot",
    );
    for s in subjects.iter().filter(|s| s.entry.kind != "DBInstance") {
        approved_delete(&cluster, &ns, &agent, s);
    }
}

/// Google Config Connector: SQL, Spanner, BigQuery, Storage, AlloyDB, Firestore and Bigtable,
/// on the CRDs its module publishes.
#[test]
fn config_connector_family() {
    let _shared = shared();
    for entry in kinds_of(CONFIG_CONNECTOR) {
        assert!(
            entry.crd.published,
            "{}: the catalog says published",
            entry.kind
        );
    }
    each_kind_refused_then_approved("cat-kcc", CONFIG_CONNECTOR);
}

/// Azure Service Operator v2: PostgreSQL flexible servers, Cosmos DB accounts and storage
/// accounts (CRDs generated: its module ships Go types only).
#[test]
fn azure_service_operator_family() {
    let _shared = shared();
    each_kind_refused_then_approved("cat-aso", AZURE_SERVICE_OPERATOR);
}

/// For each kind of the families, one after another: an object refused to the agent (delete
/// and every switch), then deleted by it after a human's approval.
fn each_kind_refused_then_approved(prefix: &str, families: &[&str]) {
    let cluster = Cluster::connect();
    let kinds = kinds_of(families);
    let (ns, agent, _guard) = family_setup(&cluster, prefix, &kinds, &GuardOptions::default());
    for entry in &kinds {
        let s = create_subject(&cluster, &ns, entry, json!({}));
        agent_is_refused_everything(&ns, &agent, &s);
        approved_delete(&cluster, &ns, &agent, &s);
    }
}

#[test]
fn the_default_databases_policy_protects_served_catalog_kinds_and_new_ones_within_seconds() {
    let _shared = shared();
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "catalog-default");
    let agent = ns.agent("cursor-agent");
    let policy = format!("{}-databases", ns.name);
    cluster.apply(&default_databases_policy(&cluster, &ns.name));
    ns.owns_cluster_object(&format!("clusterprotectedresource/{policy}"));
    let _guard = Guard::start(&ns, &agent);
    // In force, and says the catalog kinds this cluster does not serve are no problem.
    wait_until(
        Duration::from_secs(40),
        "the default-databases policy Ready",
        || {
            let get = |field: &str| {
                stdout(&cluster.kubectl(&[
                    "get",
                    "clusterprotectedresource",
                    &policy,
                    "-o",
                    &format!("jsonpath={{.status.conditions[?(@.type==\"Ready\")].{field}}}"),
                ]))
            };
            get("status") == "True" && get("message").contains("catalog kinds not served")
        },
    );
    // A catalog kind whose CRD is installed now (Crunchy PGO's PostgresCluster, generated from
    // the catalog; no other test installs it): protected within seconds.
    let entry = catalog()
        .kind(INSTALLED_LATER.0, INSTALLED_LATER.1)
        .expect("in the catalog");
    ns.owns_cluster_object(&format!("crd/{}.{}", entry.plural, entry.group));
    let installed = Instant::now();
    let s = create_subject(&cluster, &ns, entry, json!({}));
    ns.grant("cursor-agent", &s.resource);
    wait_until(Duration::from_secs(45), "the new kind protected", || {
        let out = ns.kubectl_as(
            &agent,
            &["delete", &s.resource, &s.name, "--dry-run=server"],
        );
        stderr(&out).contains(&format!("Protected by ClusterProtectedResource {policy}"))
    });
    eprintln!(
        "PostgresCluster protected {:.1}s after its CRD was installed",
        installed.elapsed().as_secs_f64()
    );
    approved_delete(&cluster, &ns, &agent, &s);
}
