//! End-to-end: controllers that delete for an agent. A controller (the StatefulSet controller,
//! the garbage collector, Argo CD, Flux, Crossplane, a provisioner, Velero) is never
//! restricted, so the agent's move is to set it up: create or scale the object it acts on,
//! delete an owner several links up, delete the GitOps object or claim that manages the data,
//! or make a second handle on the same disk. Each route here is tried by an agent (the `edit`
//! role, plus what the route needs) against the real API server and kube-controller-manager,
//! through the configuration agentguard writes, and must be refused while the data stays.
//! Requires `hack/cluster.sh up`; fails (never skips) when the control plane is absent.

mod support;

use std::process::Output;
use std::time::{Duration, Instant};

use support::{Cluster, Guard, TestNamespace, stderr, stdout, unique, wait_until};

/// What the agent was answered: (accepted, stdout and stderr). Cluster-scoped writes reach
/// every running test's configuration; one whose agentguard is shutting down refuses with a
/// webhook call failure, which is not an answer from this test's agentguard, so it is retried.
fn answered(mut run: impl FnMut() -> Output) -> (bool, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = run();
        let text = stdout(&out) + &stderr(&out);
        let foreign_failure =
            text.contains("failed calling webhook") && !text.contains("agentguard: DENIED");
        if !foreign_failure || Instant::now() > deadline {
            return (out.status.success(), text);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn assert_refused(result: (bool, String), action: &str, what: &str) {
    let (ok, text) = result;
    assert!(!ok, "{what}: accepted: {text}");
    assert!(
        text.contains(&format!("agentguard: DENIED {action}")),
        "{what}: refused, but not by agentguard for {action:?}: {text}"
    );
}

fn assert_accepted(result: (bool, String), what: &str) {
    let (ok, text) = result;
    assert!(ok, "{what}: refused: {text}");
}

/// `kubectl create -f -` as `who`.
fn create_as(cluster: &Cluster, who: &str, yaml: &str) -> (bool, String) {
    answered(|| cluster.kubectl_stdin(&[&format!("--as={who}"), "create", "-f", "-"], yaml))
}

/// Polls until the agent's server-side dry run of `args` is denied by agentguard (a new kind
/// is watched and routed within seconds), and returns the denial.
fn wait_denied(ns: &TestNamespace<'_>, agent: &str, args: &[&str]) -> String {
    let mut last = String::new();
    let mut full: Vec<&str> = args.to_vec();
    full.push("--dry-run=server");
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let out = ns.kubectl_as(agent, &full);
        last = stdout(&out) + &stderr(&out);
        if last.contains("agentguard: DENIED") {
            return last;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("{args:?} was never denied by agentguard; last answer: {last}");
}

/// Installs a namespaced CRD of a real project's group (Argo CD, Flux, ...), kept for the
/// rest of the run (other tests may use it at the same time).
fn third_party_crd(cluster: &Cluster, group: &str, plural: &str, kind: &str, scope: &str) {
    let singular = kind.to_ascii_lowercase();
    cluster.apply(&format!(
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: {plural}.{group}\nspec:\n  group: {group}\n  scope: {scope}\n  \
         names: {{plural: {plural}, singular: {singular}, kind: {kind}}}\n  versions:\n    - name: v1\n      served: true\n      storage: true\n      \
         subresources: {{status: {{}}}}\n      schema: {{openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}}}\n"
    ));
    cluster.wait_established(&[&format!("crd/{plural}.{group}")]);
}

fn statefulset(ns: &str, name: &str, replicas: u32, retention: &str, extra_meta: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: {name}\n  namespace: {ns}\n{extra_meta}spec:\n  replicas: {replicas}\n  serviceName: {name}\n  \
         selector: {{matchLabels: {{app: {name}}}}}\n  persistentVolumeClaimRetentionPolicy: {retention}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    \
         spec:\n      containers: [{{name: db, image: postgres}}]\n  volumeClaimTemplates:\n    - metadata: {{name: data, annotations: {{agentguard.dev/protected: \"true\"}}}}\n      \
         spec: {{accessModes: [ReadWriteOnce], resources: {{requests: {{storage: 1Gi}}}}}}\n"
    )
}

#[test]
fn an_agent_cannot_arm_a_statefulset_against_protected_claims() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "ctl-sts");
    let agent = ns.agent("cursor-agent");
    let _guard = Guard::start(&ns, &agent);
    ns.pvc("data-db-0", true);
    ns.pvc("data-db-1", true);

    // Created armed (the claims of an orphaned StatefulSet are adopted by a new one): refused.
    for retention in [
        "{whenDeleted: Delete, whenScaled: Retain}",
        "{whenDeleted: Retain, whenScaled: Delete}",
    ] {
        assert_refused(
            create_as(
                &cluster,
                &agent,
                &statefulset(&ns.name, "db", 2, retention, ""),
            ),
            "create (persistentVolumeClaimRetentionPolicy",
            retention,
        );
    }
    // A human may set it up; the agent still may not scale it down, by any route.
    cluster.apply(&statefulset(
        &ns.name,
        "db",
        2,
        "{whenDeleted: Retain, whenScaled: Delete}",
        "",
    ));
    for replicas in ["0", "1"] {
        assert_refused(
            answered(|| {
                ns.kubectl_as(
                    &agent,
                    &[
                        "scale",
                        "statefulset",
                        "db",
                        &format!("--replicas={replicas}"),
                    ],
                )
            }),
            "scale down (statefulsets/scale) of Scale",
            &format!("kubectl scale --replicas={replicas}"),
        );
    }
    let hpa = |name: &str, min: u32| {
        format!(
            "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  \
             scaleTargetRef: {{apiVersion: apps/v1, kind: StatefulSet, name: db}}\n  minReplicas: {min}\n  maxReplicas: 5\n",
            ns = ns.name
        )
    };
    assert_refused(
        create_as(&cluster, &agent, &hpa("db-low", 1)),
        "create (HorizontalPodAutoscaler on a StatefulSet)",
        "an autoscaler that may scale to one replica",
    );
    assert_refused(
        answered(|| {
            ns.kubectl_as(
                &agent,
                &[
                    "patch",
                    "statefulset",
                    "db",
                    "--type=merge",
                    "-p",
                    r#"{"spec":{"ordinals":{"start":1}}}"#,
                ],
            )
        }),
        "update (persistentVolumeClaimRetentionPolicy.whenScaled: Delete)",
        "ordinals.start moved",
    );
    // What removes no protected replica is not refused: scaling up, and an autoscaler whose
    // minimum keeps both protected ordinals.
    assert_accepted(
        answered(|| ns.kubectl_as(&agent, &["scale", "statefulset", "db", "--replicas=3"])),
        "scale up",
    );
    assert_accepted(
        create_as(&cluster, &agent, &hpa("db-safe", 2)),
        "an autoscaler with minReplicas 2",
    );
    assert!(ns.pvc_intact("data-db-0") && ns.pvc_intact("data-db-1"));
}

#[test]
fn an_agent_cannot_delete_an_owner_several_links_up() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "ctl-chain");
    let agent = ns.agent("cursor-agent");
    let _guard = Guard::start(&ns, &agent);
    // Deployment → ReplicaSet → Pod → its ephemeral claim (made by the ephemeral-volume
    // controller from the template, protected by the template's annotation).
    cluster.apply(&format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: {ns}\nspec:\n  replicas: 1\n  selector: {{matchLabels: {{app: web}}}}\n  \
         template:\n    metadata: {{labels: {{app: web}}}}\n    spec:\n      containers: [{{name: web, image: nginx}}]\n      volumes:\n        - name: scratch\n          \
         ephemeral:\n            volumeClaimTemplate:\n              metadata: {{annotations: {{agentguard.dev/protected: \"true\"}}}}\n              \
         spec: {{accessModes: [ReadWriteOnce], resources: {{requests: {{storage: 1Gi}}}}}}\n",
        ns = ns.name
    ));
    let mut claim = String::new();
    wait_until(
        Duration::from_secs(60),
        "the ephemeral claim of the Deployment's Pod",
        || {
            let rows = ns.kubectl_ok(&[
                "get",
                "pvc",
                "--no-headers",
                "-o",
                "custom-columns=NAME:.metadata.name,OWNER:.metadata.ownerReferences[0].kind",
            ]);
            claim = rows
                .lines()
                .filter_map(|l| l.split_once(char::is_whitespace))
                .find(|(_, owner)| owner.trim() == "Pod")
                .map(|(name, _)| name.to_owned())
                .unwrap_or_default();
            !claim.is_empty()
        },
    );
    let denial = wait_denied(&ns, &agent, &["delete", "deployment", "web"]);
    assert!(
        denial.contains(&format!(
            "through PersistentVolumeClaim {}/{claim}",
            ns.name
        )),
        "{denial}"
    );
    let replicaset = ns
        .kubectl_ok(&["get", "replicaset", "-l", "app=web", "-o", "name"])
        .trim()
        .to_owned();
    wait_denied(&ns, &agent, &["delete", &replicaset]);
    // Orphaning the Deployment deletes nothing else; the ReplicaSet left behind is still a
    // root.
    assert_accepted(
        answered(|| ns.kubectl_as(&agent, &["delete", "deployment", "web", "--cascade=orphan"])),
        "delete the Deployment, orphaning its ReplicaSet",
    );
    assert_refused(
        answered(|| ns.kubectl_as(&agent, &["delete", &replicaset])),
        "delete",
        "the orphaned ReplicaSet",
    );
    assert!(ns.pvc_intact(&claim));
}

#[test]
fn an_agent_cannot_delete_an_operators_resource_that_owns_the_claims() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "ctl-operator");
    let agent = ns.agent("cursor-agent");
    let _guard = Guard::start(&ns, &agent);
    let group = ns.crd("databases", "Database");
    ns.grant("cursor-agent", &format!("databases.{group}"));
    cluster.apply(&format!(
        "apiVersion: {group}/v1\nkind: Database\nmetadata:\n  name: orders\n  namespace: {}\n",
        ns.name
    ));
    let uid = ns.kubectl_ok(&[
        "get",
        &format!("databases.{group}"),
        "orders",
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    // The operator's StatefulSet (owned by its Database) deletes its claims with itself; the
    // StatefulSet controller makes them owned by it.
    let owner = format!(
        "  ownerReferences: [{{apiVersion: {group}/v1, kind: Database, name: orders, uid: {uid}, controller: true}}]\n"
    );
    cluster.apply(&statefulset(
        &ns.name,
        "orders",
        1,
        "{whenDeleted: Delete, whenScaled: Retain}",
        &owner,
    ));
    wait_until(
        Duration::from_secs(60),
        "the StatefulSet controller to create and own data-orders-0",
        || {
            stdout(&ns.kubectl(&[
                "get",
                "pvc",
                "data-orders-0",
                "-o",
                "jsonpath={.metadata.ownerReferences[*].kind}",
            ]))
            .contains("StatefulSet")
        },
    );
    let denial = wait_denied(
        &ns,
        &agent,
        &["delete", &format!("databases.{group}"), "orders"],
    );
    assert!(
        denial.contains(&format!(
            "through PersistentVolumeClaim {}/data-orders-0",
            ns.name
        )),
        "{denial}"
    );
    assert!(ns.pvc_intact("data-orders-0"));
}

#[test]
fn an_agent_cannot_delete_or_repoint_the_application_that_manages_protected_data() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "ctl-gitops");
    let agent = ns.agent("cursor-agent");
    third_party_crd(
        &cluster,
        "argoproj.io",
        "applications",
        "Application",
        "Namespaced",
    );
    third_party_crd(
        &cluster,
        "kustomize.toolkit.fluxcd.io",
        "kustomizations",
        "Kustomization",
        "Namespaced",
    );
    ns.grant("cursor-agent", "applications.argoproj.io");
    ns.grant("cursor-agent", "kustomizations.kustomize.toolkit.fluxcd.io");
    let guard = Guard::start(&ns, &agent);
    // One claim tracked by Argo CD (annotation tracking), one applied by Flux (labels).
    cluster.apply(&format!(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: argo-data\n  namespace: {ns}\n  annotations:\n    agentguard.dev/protected: \"true\"\n    \
         argocd.argoproj.io/tracking-id: orders:/PersistentVolumeClaim:{ns}/argo-data\nspec: {{accessModes: [ReadWriteOnce], resources: {{requests: {{storage: 1Gi}}}}}}\n---\n\
         apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: flux-data\n  namespace: {ns}\n  annotations: {{agentguard.dev/protected: \"true\"}}\n  \
         labels: {{kustomize.toolkit.fluxcd.io/name: apps, kustomize.toolkit.fluxcd.io/namespace: {ns}}}\nspec: {{accessModes: [ReadWriteOnce], resources: {{requests: {{storage: 1Gi}}}}}}\n---\n\
         apiVersion: argoproj.io/v1\nkind: Application\nmetadata:\n  name: orders\n  namespace: {ns}\n  finalizers: [resources-finalizer.argocd.argoproj.io]\nspec:\n  \
         source: {{repoURL: https://git.example.com/orders.git, path: prod}}\n  syncPolicy: {{automated: {{prune: true}}}}\n---\n\
         apiVersion: kustomize.toolkit.fluxcd.io/v1\nkind: Kustomization\nmetadata:\n  name: apps\n  namespace: {ns}\nspec:\n  path: ./prod\n  prune: true\n",
        ns = ns.name
    ));
    guard.wait_routed("applications");
    guard.wait_routed("kustomizations");
    let denial = wait_denied(
        &ns,
        &agent,
        &["delete", "applications.argoproj.io", "orders"],
    );
    assert!(
        denial.contains(&format!(
            "through PersistentVolumeClaim {}/argo-data: Argo CD then deletes (prunes) what it manages, including it",
            ns.name
        )),
        "{denial}"
    );
    assert_refused(
        answered(|| {
            ns.kubectl_as(
                &agent,
                &[
                    "patch",
                    "applications.argoproj.io",
                    "orders",
                    "--type=merge",
                    "-p",
                    r#"{"spec":{"source":{"path":"empty"}}}"#,
                ],
            )
        }),
        "update (Application source or pruning)",
        "the Application pointed at an empty path",
    );
    let denial = wait_denied(
        &ns,
        &agent,
        &[
            "delete",
            "kustomizations.kustomize.toolkit.fluxcd.io",
            "apps",
        ],
    );
    assert!(
        denial.contains(&format!(
            "through PersistentVolumeClaim {}/flux-data: Flux then garbage-collects",
            ns.name
        )),
        "{denial}"
    );
    assert_refused(
        answered(|| {
            ns.kubectl_as(
                &agent,
                &[
                    "patch",
                    "kustomizations.kustomize.toolkit.fluxcd.io",
                    "apps",
                    "--type=merge",
                    "-p",
                    r#"{"spec":{"path":"./empty"}}"#,
                ],
            )
        }),
        "update (Kustomization spec)",
        "the Kustomization pointed at an empty path",
    );
    // Edits that change nothing Argo CD applies stay the agent's to make.
    assert_accepted(
        answered(|| {
            ns.kubectl_as(
                &agent,
                &[
                    "label",
                    "applications.argoproj.io",
                    "orders",
                    "team=payments",
                ],
            )
        }),
        "a label on the Application",
    );
    assert!(ns.pvc_intact("argo-data") && ns.pvc_intact("flux-data"));
}

#[test]
fn an_agent_cannot_delete_the_crossplane_claim_of_a_protected_database() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "ctl-claim");
    let agent = ns.agent("cursor-agent");
    third_party_crd(
        &cluster,
        "apiextensions.crossplane.io",
        "compositeresourcedefinitions",
        "CompositeResourceDefinition",
        "Cluster",
    );
    let group = ns.crd("postgresqlinstances", "PostgreSQLInstance");
    // The managed resource (a cloud database) in the same made-up group.
    cluster.apply(&format!(
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: rdsinstances.{group}\nspec:\n  group: {group}\n  scope: Cluster\n  \
         names: {{plural: rdsinstances, singular: rdsinstance, kind: RDSInstance}}\n  versions:\n    - name: v1\n      served: true\n      storage: true\n      \
         schema: {{openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}}}\n"
    ));
    ns.owns_cluster_object(&format!("crd/rdsinstances.{group}"));
    cluster.wait_established(&[&format!("crd/rdsinstances.{group}")]);
    ns.grant("cursor-agent", &format!("postgresqlinstances.{group}"));
    let _guard = Guard::start(&ns, &agent);
    let xrd = format!("xpostgresqlinstances.{group}");
    let database = unique("orders-db");
    cluster.apply(&format!(
        "apiVersion: apiextensions.crossplane.io/v1\nkind: CompositeResourceDefinition\nmetadata:\n  name: {xrd}\nspec:\n  group: {group}\n  \
         names: {{kind: XPostgreSQLInstance, plural: xpostgresqlinstances}}\n  claimNames: {{kind: PostgreSQLInstance, plural: postgresqlinstances}}\n---\n\
         apiVersion: agentguard.dev/v1alpha1\nkind: ClusterProtectedResource\nmetadata:\n  name: {database}\nspec:\n  targets: [{{apiGroups: [{group}], kinds: [RDSInstance]}}]\n---\n\
         apiVersion: {group}/v1\nkind: RDSInstance\nmetadata:\n  name: {database}\n  labels: {{crossplane.io/claim-name: orders, crossplane.io/claim-namespace: {ns}}}\n---\n\
         apiVersion: {group}/v1\nkind: PostgreSQLInstance\nmetadata:\n  name: orders\n  namespace: {ns}\n",
        ns = ns.name
    ));
    ns.owns_cluster_object(&format!("compositeresourcedefinition/{xrd}"));
    ns.owns_cluster_object(&format!("clusterprotectedresource/{database}"));
    let denial = wait_denied(
        &ns,
        &agent,
        &["delete", &format!("postgresqlinstances.{group}"), "orders"],
    );
    assert!(
        denial.contains(&format!(
            "through RDSInstance {database}: Crossplane then deletes its composite resource"
        )),
        "{denial}"
    );
}

#[test]
fn an_agent_cannot_make_a_second_handle_on_protected_storage() {
    let cluster = Cluster::connect();
    cluster.install_third_party_crds();
    let ns = TestNamespace::create(&cluster, "ctl-handle");
    let agent = ns.agent("cursor-agent");
    ns.grant_cluster(
        "cursor-agent",
        "create,get,patch,delete",
        "persistentvolumes,volumesnapshotcontents",
    );
    let _guard = Guard::start(&ns, &agent);
    let n = &ns.name;
    // The protected claim's volume, and a protected snapshot with its content. A storage class
    // no claim asks for keeps the binder from pairing these volumes with the test's claims.
    ns.pvc("data", true);
    cluster.apply(&format!(
        "apiVersion: v1\nkind: PersistentVolume\nmetadata:\n  name: {n}-disk\nspec:\n  capacity: {{storage: 1Gi}}\n  accessModes: [ReadWriteOnce]\n  \
         storageClassName: agentguard-e2e-none\n  persistentVolumeReclaimPolicy: Retain\n  hostPath: {{path: /var/lib/agentguard-e2e/{n}}}\n  \
         claimRef: {{namespace: {n}, name: data}}\n---\n\
         apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshot\nmetadata:\n  name: nightly\n  namespace: {n}\n  annotations: {{agentguard.dev/protected: \"true\"}}\n\
         spec:\n  source: {{volumeSnapshotContentName: {n}-nightly}}\n---\n\
         apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshotContent\nmetadata:\n  name: {n}-nightly\nspec:\n  deletionPolicy: Retain\n  driver: hostpath.csi.k8s.io\n  \
         source: {{snapshotHandle: snap-{n}}}\n  volumeSnapshotRef: {{namespace: {n}, name: nightly}}\n"
    ));
    for object in [
        format!("pv/{n}-disk"),
        format!("volumesnapshotcontent/{n}-nightly"),
        format!("pv/{n}-alias"),
        format!("volumesnapshotcontent/{n}-alias"),
    ] {
        ns.owns_cluster_object(&object);
    }
    let volume = |policy: &str| {
        format!(
            "apiVersion: v1\nkind: PersistentVolume\nmetadata:\n  name: {n}-alias\nspec:\n  capacity: {{storage: 1Gi}}\n  accessModes: [ReadWriteOnce]\n  \
             storageClassName: agentguard-e2e-none\n  persistentVolumeReclaimPolicy: {policy}\n  hostPath: {{path: /var/lib/agentguard-e2e/{n}/}}\n"
        )
    };
    assert_refused(
        create_as(&cluster, &agent, &volume("Delete")),
        "create (PersistentVolume on a protected disk)",
        "a second PersistentVolume for the protected disk",
    );
    // Retained, it deletes nothing; set to Delete later, it is refused the same way.
    assert_accepted(
        create_as(&cluster, &agent, &volume("Retain")),
        "a retained second volume",
    );
    assert_refused(
        answered(|| {
            cluster.kubectl(&[
                &format!("--as={agent}"),
                "patch",
                "pv",
                &format!("{n}-alias"),
                "--type=merge",
                "-p",
                r#"{"spec":{"persistentVolumeReclaimPolicy":"Delete"}}"#,
            ])
        }),
        "update (PersistentVolume on a protected disk)",
        "the second volume set to Delete",
    );
    assert_refused(
        create_as(
            &cluster,
            &agent,
            &format!(
                "apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshotContent\nmetadata:\n  name: {n}-alias\nspec:\n  deletionPolicy: Delete\n  \
                 driver: hostpath.csi.k8s.io\n  source: {{snapshotHandle: snap-{n}}}\n  volumeSnapshotRef: {{namespace: {n}, name: other}}\n"
            ),
        ),
        "create (VolumeSnapshotContent on a protected snapshot)",
        "a second VolumeSnapshotContent for the protected snapshot",
    );
    assert!(ns.pvc_intact("data"));
}

#[test]
fn an_agent_cannot_point_a_managed_resource_at_a_protected_database() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "ctl-external");
    let agent = ns.agent("cursor-agent");
    let _guard = Guard::start(&ns, &agent);
    let group = ns.crd("instances", "Instance");
    ns.grant("cursor-agent", &format!("instances.{group}"));
    cluster.apply(&format!(
        "apiVersion: agentguard.dev/v1alpha1\nkind: ProtectedResource\nmetadata:\n  name: databases\n  namespace: {ns}\nspec:\n  \
         targets: [{{apiGroups: [{group}], kinds: [Instance], names: [\"orders*\"]}}]\n---\n\
         apiVersion: {group}/v1\nkind: Instance\nmetadata:\n  name: orders\n  namespace: {ns}\n  annotations: {{crossplane.io/external-name: orders-prod}}\n\
         spec: {{deletionPolicy: Orphan}}\n",
        ns = ns.name
    ));
    ns.wait_policy_ready("databases");
    let instance = |name: &str, external: &str| {
        format!(
            "apiVersion: {group}/v1\nkind: Instance\nmetadata:\n  name: {name}\n  namespace: {ns}\n  annotations: {{crossplane.io/external-name: {external}}}\n\
             spec: {{deletionPolicy: Delete}}\n",
            ns = ns.name
        )
    };
    assert_refused(
        create_as(&cluster, &agent, &instance("copy", "orders-prod")),
        "create (annotation crossplane.io/external-name of a protected resource)",
        "a new managed resource naming the protected database",
    );
    assert_accepted(
        create_as(&cluster, &agent, &instance("scratch", "scratch-db")),
        "a managed resource of its own",
    );
    assert_refused(
        answered(|| {
            ns.kubectl_as(
                &agent,
                &[
                    "annotate",
                    "--overwrite",
                    &format!("instances.{group}"),
                    "scratch",
                    "crossplane.io/external-name=orders-prod",
                ],
            )
        }),
        "update (annotation crossplane.io/external-name of a protected resource)",
        "an existing managed resource retargeted at the protected database",
    );
}

#[test]
fn an_agent_cannot_move_a_protected_backups_expiry() {
    let cluster = Cluster::connect();
    cluster.install_third_party_crds();
    let ns = TestNamespace::create(&cluster, "ctl-velero");
    let agent = ns.agent("cursor-agent");
    ns.grant("cursor-agent", "backups.velero.io");
    let _guard = Guard::start(&ns, &agent);
    cluster.apply(&format!(
        "apiVersion: agentguard.dev/v1alpha1\nkind: ProtectedResource\nmetadata:\n  name: backups\n  namespace: {ns}\nspec:\n  \
         targets: [{{apiGroups: [velero.io], kinds: [Backup]}}]\n---\n\
         apiVersion: velero.io/v1\nkind: Backup\nmetadata:\n  name: nightly\n  namespace: {ns}\nspec: {{ttl: 720h0m0s}}\n",
        ns = ns.name
    ));
    ns.wait_policy_ready("backups");
    assert_refused(
        answered(|| {
            ns.kubectl_as(
                &agent,
                &[
                    "patch",
                    "backups.velero.io",
                    "nightly",
                    "--type=merge",
                    "-p",
                    r#"{"spec":{"ttl":"1m0s"}}"#,
                ],
            )
        }),
        "update (Backup expiry)",
        "the Backup's ttl shortened",
    );
    assert_eq!(
        ns.kubectl_ok(&[
            "get",
            "backups.velero.io",
            "nightly",
            "-o",
            "jsonpath={.spec.ttl}"
        ]),
        "720h0m0s"
    );
}

/// The routes above, by test name, as `docs/security.md` must list them.
const DOC_ROWS: &[&str] = &[
    "an_agent_cannot_arm_a_statefulset_against_protected_claims",
    "an_agent_cannot_delete_an_owner_several_links_up",
    "an_agent_cannot_delete_an_operators_resource_that_owns_the_claims",
    "an_agent_cannot_delete_or_repoint_the_application_that_manages_protected_data",
    "an_agent_cannot_delete_the_crossplane_claim_of_a_protected_database",
    "an_agent_cannot_make_a_second_handle_on_protected_storage",
    "an_agent_cannot_point_a_managed_resource_at_a_protected_database",
    "an_agent_cannot_move_a_protected_backups_expiry",
];

#[test]
fn security_doc_lists_every_controller_route() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/security.md"))
        .expect("docs/security.md");
    for name in DOC_ROWS {
        assert!(
            doc.contains(&format!("e2e_controllers (`{name}`)")),
            "docs/security.md has no row for e2e_controllers::{name}"
        );
    }
}
