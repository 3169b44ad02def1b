//! End-to-end: `kubectl agentguard restore` brings a deleted claim back, bound to the volume that
//! was kept for it, against the real API server and the real persistentvolume controller
//! (kube-controller-manager's persistentvolume-binder). There is no provisioner: volumes are
//! created statically, pre-bound to their claim, and removed when the test ends.
//! Requires `hack/cluster.sh up`; fails (never skips) when the control plane is absent.

mod support;

use std::process::{Command, Output};
use std::time::Duration;

use support::{Cluster, Guard, TestNamespace, stderr, stdout, unique, wait_until};

const WAIT: Duration = Duration::from_secs(60);

/// `kubectl agentguard <args>` as the cluster admin.
fn plugin(cluster: &Cluster, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kubectl-agentguard"))
        .arg("--kubeconfig")
        .arg(&cluster.kubeconfig)
        .args(args)
        .output()
        .expect("run kubectl-agentguard")
}

fn get(cluster: &Cluster, args: &[&str], jsonpath: &str) -> String {
    let path = format!("jsonpath={jsonpath}");
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", &path]);
    cluster.kubectl_ok(&all)
}

fn pv_field(cluster: &Cluster, pv: &str, jsonpath: &str) -> String {
    get(cluster, &["pv", pv], jsonpath)
}

fn pvc_field(ns: &TestNamespace<'_>, claim: &str, jsonpath: &str) -> String {
    get(ns.cluster, &["-n", &ns.name, "pvc", claim], jsonpath)
}

/// A volume made by hand, as an administrator or a CSI driver would have, pre-bound to the
/// claim `claim` of the test namespace (so no other claim can take it), removed with the test.
fn static_pv(
    ns: &TestNamespace<'_>,
    claim: &str,
    source: &str,
    class: &str,
    policy: &str,
) -> String {
    let name = unique("e2e-restore-pv");
    let class = if class.is_empty() {
        String::new()
    } else {
        format!("\n  storageClassName: {class}")
    };
    ns.cluster.apply(&format!(
        "apiVersion: v1\nkind: PersistentVolume\nmetadata:\n  name: {name}\nspec:\n  capacity: {{storage: 2Gi}}\n  \
         accessModes: [ReadWriteOnce]\n  persistentVolumeReclaimPolicy: {policy}{class}\n  {source}\n  \
         claimRef: {{namespace: {ns}, name: {claim}}}\n",
        ns = ns.name
    ));
    ns.owns_cluster_object(&format!("pv/{name}"));
    name
}

fn hostpath(pv_hint: &str) -> String {
    format!("hostPath: {{path: /tmp/agentguard-e2e/{pv_hint}}}")
}

/// A claim that asks for exactly `pv`, and the wait until the controller bound both.
fn bound_claim(ns: &TestNamespace<'_>, claim: &str, pv: &str, class: &str) -> String {
    ns.cluster.apply(&format!(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: {claim}\n  namespace: {ns}\nspec:\n  \
         accessModes: [ReadWriteOnce]\n  storageClassName: \"{class}\"\n  volumeName: {pv}\n  \
         resources: {{requests: {{storage: 1Gi}}}}\n",
        ns = ns.name
    ));
    wait_bound(ns, claim, pv);
    pvc_field(ns, claim, "{.metadata.uid}")
}

fn wait_bound(ns: &TestNamespace<'_>, claim: &str, pv: &str) {
    wait_until(WAIT, &format!("claim {claim} and {pv} to be Bound"), || {
        pvc_field(ns, claim, "{.status.phase}") == "Bound"
            && pv_field(ns.cluster, pv, "{.status.phase}") == "Bound"
    });
}

/// Deletes the claim as the admin and waits until it is gone and its volume Released.
fn delete_claim(ns: &TestNamespace<'_>, claim: &str, pv: &str) {
    ns.kubectl_ok(&["delete", "pvc", claim, "--wait=false"]);
    ns.wait_pvc_gone(claim);
    wait_until(WAIT, &format!("{pv} to be Released"), || {
        pv_field(ns.cluster, pv, "{.status.phase}") == "Released"
    });
}

#[test]
fn a_deleted_claim_is_restored_onto_its_retained_volume() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "restore");
    let handle = format!("vol-{}", ns.name);
    let pv = static_pv(
        &ns,
        "data",
        &format!("csi: {{driver: disk.example.com, volumeHandle: {handle}}}"),
        "agentguard-e2e-static",
        "Retain",
    );
    let old_uid = bound_claim(&ns, "data", &pv, "agentguard-e2e-static");
    delete_claim(&ns, "data", &pv);
    assert_eq!(pv_field(&cluster, &pv, "{.spec.claimRef.uid}"), old_uid);

    let out = plugin(&cluster, &["restore", "pvc/data", "-n", &ns.name]);
    assert!(out.status.success(), "restore failed: {}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!(
            "restored persistentvolumeclaim {ns}/data: Bound to persistentvolume {pv} (2Gi, csi disk.example.com volumeHandle={handle})\n",
            ns = ns.name
        )),
        "{text}"
    );
    eprintln!("restore printed:\n{text}");

    let new_uid = pvc_field(&ns, "data", "{.metadata.uid}");
    assert_ne!(new_uid, old_uid, "a new claim");
    assert_eq!(pvc_field(&ns, "data", "{.status.phase}"), "Bound");
    assert_eq!(pvc_field(&ns, "data", "{.spec.volumeName}"), pv);
    assert_eq!(
        pvc_field(&ns, "data", "{.spec.storageClassName}"),
        "agentguard-e2e-static"
    );
    assert_eq!(
        pvc_field(&ns, "data", "{.status.capacity.storage}"),
        "2Gi",
        "the claim asks for all of the volume"
    );
    assert_eq!(pv_field(&cluster, &pv, "{.status.phase}"), "Bound");
    assert_eq!(pv_field(&cluster, &pv, "{.spec.claimRef.uid}"), new_uid);
    assert_eq!(pv_field(&cluster, &pv, "{.spec.csi.volumeHandle}"), handle);
    assert_eq!(
        pv_field(&cluster, &pv, "{.spec.csi.driver}"),
        "disk.example.com"
    );
    assert_eq!(
        pv_field(&cluster, &pv, "{.spec.persistentVolumeReclaimPolicy}"),
        "Retain"
    );

    // Once restored there is nothing left to restore.
    let again = plugin(&cluster, &["restore", "pvc/data", "-n", &ns.name]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("already exists (Bound, volume"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn without_a_retained_volume_restore_refuses_and_says_what_to_check() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "restore-none");

    let out = plugin(&cluster, &["restore", "pvc/data", "-n", &ns.name]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!(
            "error: no retained volume for claim {}/data: it was not protected, or its volume was deleted.",
            ns.name
        )),
        "{err}"
    );
    assert!(err.contains("kubectl get pv"), "{err}");
    assert!(err.contains("--from-pv"), "{err}");
    assert!(
        ns.kubectl_ok(&["get", "pvc", "-o", "name"])
            .trim()
            .is_empty(),
        "no claim was created"
    );

    let missing = plugin(
        &cluster,
        &[
            "restore",
            "pvc/data",
            "-n",
            &ns.name,
            "--from-pv",
            "no-such-volume-anywhere",
        ],
    );
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("persistentvolume no-such-volume-anywhere not found"),
        "{}",
        stderr(&missing)
    );

    for usage in [
        vec!["restore", "deployment/data"],
        vec!["restore", "data"],
        vec!["restore", "pvc/data", "--timeout", "soon"],
    ] {
        let out = plugin(&cluster, &usage);
        assert_eq!(out.status.code(), Some(2), "{usage:?}: {}", stderr(&out));
    }
}

#[test]
fn several_retained_volumes_are_listed_and_from_pv_picks_one() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "restore-two");
    // The claim "data" was deleted and made again twice over: two volumes were its volume.
    let older = static_pv(
        &ns,
        "data",
        &hostpath(&format!("{}-a", ns.name)),
        "",
        "Retain",
    );
    bound_claim(&ns, "data", &older, "");
    delete_claim(&ns, "data", &older);
    // Creation times have whole seconds: let the second volume be visibly newer.
    std::thread::sleep(Duration::from_millis(1100));
    let newer = static_pv(
        &ns,
        "data",
        &hostpath(&format!("{}-b", ns.name)),
        "",
        "Retain",
    );
    bound_claim(&ns, "data", &newer, "");
    delete_claim(&ns, "data", &newer);

    let out = plugin(&cluster, &["restore", "pvc/data", "-n", &ns.name]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    eprintln!("restore refused:\n{err}");
    assert!(
        err.starts_with(&format!(
            "error: 2 retained volumes were the volume of claim {}/data; choose one with --from-pv",
            ns.name
        )),
        "{err}"
    );
    let (at_newer, at_older) = (err.find(&newer).unwrap(), err.find(&older).unwrap());
    assert!(at_newer < at_older, "newest first: {err}");
    assert!(err.contains("hostPath /tmp/agentguard-e2e/"), "{err}");

    // A volume of another claim is not taken for this one.
    let other = plugin(
        &cluster,
        &["restore", "pvc/logs", "-n", &ns.name, "--from-pv", &older],
    );
    assert_eq!(other.status.code(), Some(1));
    assert!(
        stderr(&other).contains(&format!(
            "its claimRef names claim {}/data, not {}/logs",
            ns.name, ns.name
        )),
        "{}",
        stderr(&other)
    );

    let out = plugin(
        &cluster,
        &[
            "restore",
            "pvc/data",
            "-n",
            &ns.name,
            "--from-pv",
            &older,
            "-o",
            "json",
        ],
    );
    assert!(out.status.success(), "restore failed: {}", stderr(&out));
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON output");
    eprintln!("restore -o json:\n{}", stdout(&out));
    let new_uid = pvc_field(&ns, "data", "{.metadata.uid}");
    assert_eq!(record["namespace"], ns.name.as_str());
    assert_eq!(record["claim"], "data");
    assert_eq!(record["claimUid"], new_uid.as_str());
    assert_eq!(record["phase"], "Bound");
    assert_eq!(record["volume"], older.as_str());
    assert_eq!(record["capacity"], "2Gi");
    assert_eq!(record["storageClassName"], "");
    assert_eq!(
        record["source"]["hostPath"]["path"],
        format!("/tmp/agentguard-e2e/{}-a", ns.name).as_str()
    );
    assert_eq!(pv_field(&cluster, &older, "{.spec.claimRef.uid}"), new_uid);
    assert_eq!(pv_field(&cluster, &newer, "{.status.phase}"), "Released");
    assert_ne!(pv_field(&cluster, &newer, "{.spec.claimRef.uid}"), new_uid);
}

#[test]
fn a_claim_that_still_exists_is_not_restored() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "restore-exists");
    let pv = static_pv(&ns, "data", &hostpath(&ns.name), "", "Retain");
    let uid = bound_claim(&ns, "data", &pv, "");

    for args in [
        vec!["restore", "pvc/data", "-n", &ns.name],
        vec![
            "restore",
            "persistentvolumeclaim/data",
            "-n",
            &ns.name,
            "--from-pv",
            &pv,
        ],
    ] {
        let out = plugin(&cluster, &args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.contains(&format!(
                "persistentvolumeclaim {}/data already exists (Bound, volume {pv}): there is nothing to restore",
                ns.name
            )),
            "{err}"
        );
    }
    assert_eq!(pvc_field(&ns, "data", "{.metadata.uid}"), uid);
    assert_eq!(
        pv_field(&cluster, &pv, "{.spec.claimRef.uid}"),
        uid,
        "the volume was not touched"
    );
}

#[test]
fn with_timeout_zero_the_claim_is_created_and_the_controller_binds_it_later() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "restore-nowait");
    let pv = static_pv(&ns, "data", &hostpath(&ns.name), "", "Retain");
    bound_claim(&ns, "data", &pv, "");
    delete_claim(&ns, "data", &pv);

    let out = plugin(
        &cluster,
        &["restore", "pvc/data", "-n", &ns.name, "--timeout", "0s"],
    );
    assert!(out.status.success(), "restore failed: {}", stderr(&out));
    assert!(
        stdout(&out).starts_with(&format!(
            "created persistentvolumeclaim {}/data for persistentvolume {pv} (2Gi, hostPath /tmp/agentguard-e2e/{}); not waiting",
            ns.name, ns.name
        )),
        "{}",
        stdout(&out)
    );
    wait_bound(&ns, "data", &pv);
    assert_eq!(
        pv_field(&cluster, &pv, "{.spec.claimRef.uid}"),
        pvc_field(&ns, "data", "{.metadata.uid}")
    );
}

/// The whole story: agentguard pins a protected claim's volume to Retain, an agent cannot
/// delete the claim, a human can (and did, by mistake), and restore brings it back with the data.
#[test]
fn a_protected_claim_deleted_by_a_human_comes_back_on_the_volume_agentguard_kept() {
    let cluster = Cluster::connect();
    let ns = TestNamespace::create(&cluster, "restore-story");
    let agent = ns.agent("cursor-agent");
    let _guard = Guard::start(&ns, &agent);
    // Reclaim policy Delete, as a dynamically provisioned volume has by default.
    let pv = static_pv(&ns, "data", &hostpath(&ns.name), "", "Delete");
    ns.pvc("data", true);
    wait_bound(&ns, "data", &pv);
    wait_until(WAIT, "agentguard to pin the volume to Retain", || {
        pv_field(&cluster, &pv, "{.spec.persistentVolumeReclaimPolicy}") == "Retain"
    });

    let denied = ns.kubectl_as(&agent, &["delete", "pvc", "data", "--wait=false"]);
    assert!(
        !denied.status.success(),
        "the agent deleted a protected claim"
    );
    assert!(
        stderr(&denied).contains("agentguard: DENIED"),
        "{}",
        stderr(&denied)
    );

    delete_claim(&ns, "data", &pv);
    let out = plugin(&cluster, &["restore", "pvc/data", "-n", &ns.name]);
    assert!(out.status.success(), "restore failed: {}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!(
            "Bound to persistentvolume {pv} (2Gi, hostPath /tmp/agentguard-e2e/{})",
            ns.name
        )),
        "{}",
        stdout(&out)
    );
    assert_eq!(pvc_field(&ns, "data", "{.spec.volumeName}"), pv);
    assert_eq!(
        pv_field(&cluster, &pv, "{.spec.claimRef.uid}"),
        pvc_field(&ns, "data", "{.metadata.uid}")
    );
    assert_eq!(
        pv_field(&cluster, &pv, "{.spec.hostPath.path}"),
        format!("/tmp/agentguard-e2e/{}", ns.name)
    );
    assert_eq!(
        pv_field(&cluster, &pv, "{.spec.persistentVolumeReclaimPolicy}"),
        "Retain"
    );
}
