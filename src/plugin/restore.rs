//! `kubectl agentguard restore pvc/<name>`: bring a deleted claim back, bound to the volume that
//! was kept for it.
//!
//! agentguard pins the volumes of protected claims to `Retain`, so once such a claim is deleted
//! its PersistentVolume goes `Released` and keeps the old `spec.claimRef` (namespace, name, uid).
//! The persistentvolume controller never binds a Released volume again by itself: the old uid
//! names a claim that is gone. Restoring takes two writes, in an order that never lets the
//! volume go to anyone else:
//! 1. the volume's claimRef becomes just `{namespace, name}` of the claim (one patch, guarded by
//!    the volume's resourceVersion): the volume is now pre-bound to that name and the
//!    controller marks it Available for that claim only;
//! 2. the claim is created with `spec.volumeName` set and a spec the volume satisfies (class,
//!    access modes, mode, size all taken from the volume), and the controller binds the two.
//!
//! A restore interrupted after step 1 is continued by running it again: a volume that is
//! Available and pre-bound to the claim counts as retained for it.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use k8s_openapi::api::core::v1::{
    PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeSpec,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::{Ctx, Failure, Outcome, Output, human_duration, split_target, table};

/// How often the claim and volume are read while waiting. Polling needs only `get`, which
/// anyone allowed to restore has; a watch would need one more verb.
const POLL: Duration = Duration::from_millis(500);

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The claim to bring back, as pvc/<name> (or persistentvolumeclaim/<name>).
    pub target: String,
    /// The retained PersistentVolume to bind (required when several were this claim's).
    #[arg(long, value_name = "PV")]
    pub from_pv: Option<String>,
    /// How long to wait for the claim to be Bound, e.g. 60s or 2m; 0s creates it without waiting.
    #[arg(long, default_value = "60s", value_parser = parse_timeout)]
    pub timeout: Duration,
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    crate::policy::parse_duration(text)
        .ok_or_else(|| format!("{text:?} is not a duration like 60s or 2m"))
}

/// What `-o json|yaml` prints: the claim as restored and the volume it is bound to.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Restored {
    namespace: String,
    claim: String,
    claim_uid: String,
    /// The claim's phase when the command ended: Bound, or Pending with `--timeout 0s`.
    phase: String,
    volume: String,
    capacity: String,
    storage_class_name: String,
    access_modes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    volume_mode: Option<String>,
    /// The volume's source as the PersistentVolume spells it, e.g. `{"csi": {...}}`.
    source: Value,
    /// The uid of the deleted claim the volume was bound to, when its claimRef still said.
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_claim_uid: Option<String>,
}

pub async fn run(ctx: &Ctx, args: RestoreArgs) -> Outcome {
    let name = claim_name(&args.target)?.to_owned();
    if ctx.all_namespaces {
        return Err(Failure::with_code(
            2,
            "restore brings back one claim in one namespace: give -n <namespace>, not -A",
        ));
    }
    let ns = ctx.namespace.clone();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let volumes: Api<PersistentVolume> = Api::all(ctx.client.clone());

    if let Some(existing) = claims
        .get_opt(&name)
        .await
        .map_err(|e| api_failure(&format!("cannot read persistentvolumeclaim {ns}/{name}"), e))?
    {
        return Err(Failure::new(claim_exists(&ns, &name, &existing)));
    }

    let volume = match &args.from_pv {
        Some(pv) => {
            let volume = volumes
                .get_opt(pv)
                .await
                .map_err(|e| api_failure(&format!("cannot read persistentvolume {pv}"), e))?
                .ok_or_else(|| Failure::new(format!("persistentvolume {pv} not found")))?;
            if let Some(reason) = unusable(&volume, &ns, &name) {
                return Err(Failure::new(format!(
                    "cannot restore persistentvolumeclaim {ns}/{name} from persistentvolume {pv}: {reason}"
                )));
            }
            volume
        }
        None => {
            let all = volumes
                .list(&ListParams::default())
                .await
                .map_err(|e| api_failure("cannot list persistentvolumes", e))?;
            match choose_volume(&all.items, &ns, &name) {
                Choice::One(volume) => volume.clone(),
                Choice::None(passed) => return Err(Failure::new(no_volume(&ns, &name, &passed))),
                Choice::Several(several) => {
                    return Err(Failure::new(several_volumes(&ns, &name, &several)));
                }
            }
        }
    };
    let pv = name_of(&volume).to_owned();
    let previous_claim_uid = volume
        .spec
        .as_ref()
        .and_then(|s| s.claim_ref.as_ref())
        .and_then(|c| c.uid.clone())
        .filter(|u| !u.is_empty());
    let claim = claim_for(&volume, &ns, &name).map_err(|reason| {
        Failure::new(format!(
            "cannot restore persistentvolumeclaim {ns}/{name} from persistentvolume {pv}: {reason}"
        ))
    })?;

    let deadline = Instant::now() + args.timeout;
    volumes
        .patch(&pv, &PatchParams::default(), &Patch::Merge(repoint_patch(&volume, &ns, &name)))
        .await
        .map_err(|e| match e {
            kube::Error::Api(status) if status.code == 409 => Failure::new(format!(
                "persistentvolume {pv} changed while it was being restored; nothing was changed: run restore again"
            )),
            other => api_failure(&format!("cannot re-point persistentvolume {pv} to claim {ns}/{name}"), other),
        })?;

    // The controller marks the volume Available once it has seen the new claimRef. A claim
    // created before then meets the old claimRef in the controller's cache, is reported as
    // "already bound to a different claim", and waits for the next resync (15s by default).
    if !args.timeout.is_zero() {
        let (_, reserved) = wait_for(&volumes, &pv, deadline, |v| {
            pre_bound_and_available(v, &ns, &name)
        })
        .await
        .map_err(|e| api_failure(&format!("cannot read persistentvolume {pv}"), e))?;
        if !reserved {
            return Err(Failure::new(format!(
                "persistentvolume {pv} is reserved for claim {ns}/{name} (its claimRef names it), but the \
                 persistentvolume controller did not mark it Available within {timeout}; no claim was created.\n\
                 Is kube-controller-manager running? Check: kubectl describe pv {pv}\n\
                 Run the same restore again to continue; nothing else can bind the volume meanwhile.",
                timeout = human_duration(args.timeout.as_secs() as i64),
            )));
        }
    }

    let created = claims.create(&PostParams::default(), &claim).await.map_err(|e| match e {
        kube::Error::Api(status) if status.code == 409 => Failure::new(format!(
            "persistentvolumeclaim {ns}/{name} was created by someone else meanwhile; persistentvolume {pv} \
             is reserved for that name and binds to it if it fits. Check: kubectl describe pvc {name} -n {ns}"
        )),
        other => api_failure(&format!("cannot create persistentvolumeclaim {ns}/{name}"), other),
    })?;

    let mut current = created;
    if !args.timeout.is_zero() {
        let (last, bound) = wait_for(&claims, &name, deadline, |c| is_bound_to(c, &pv))
            .await
            .map_err(|e| {
                api_failure(&format!("cannot read persistentvolumeclaim {ns}/{name}"), e)
            })?;
        if !bound {
            return Err(Failure::new(format!(
                "persistentvolumeclaim {ns}/{name} was created for persistentvolume {pv} but is still {phase} after {timeout}.\n\
                 The volume stays reserved for it, so the binding can still complete. Check why:\n  \
                 kubectl describe pvc {name} -n {ns}\n  kubectl describe pv {pv}",
                phase = phase_of_claim(&last),
                timeout = human_duration(args.timeout.as_secs() as i64),
            )));
        }
        current = last;
    }

    let record = Restored {
        namespace: ns.clone(),
        claim: name.clone(),
        claim_uid: current.metadata.uid.clone().unwrap_or_default(),
        phase: phase_of_claim(&current).to_owned(),
        volume: pv.clone(),
        capacity: capacity(&volume).map(|q| q.0.clone()).unwrap_or_default(),
        storage_class_name: storage_class(&volume).to_owned(),
        access_modes: spec_of(&volume).access_modes.clone().unwrap_or_default(),
        volume_mode: spec_of(&volume).volume_mode.clone(),
        source: volume_source(spec_of(&volume))
            .map(|(kind, body)| Value::Object([(kind, body)].into_iter().collect()))
            .unwrap_or(Value::Null),
        previous_claim_uid,
    };
    match ctx.output {
        Output::Table => {
            let summary = format!(
                "{capacity}, {source}",
                capacity = record.capacity,
                source = describe_source(spec_of(&volume))
            );
            if args.timeout.is_zero() {
                println!(
                    "created persistentvolumeclaim {ns}/{name} for persistentvolume {pv} ({summary}); \
                     not waiting for it to be Bound: kubectl get pvc {name} -n {ns}"
                );
            } else {
                println!(
                    "restored persistentvolumeclaim {ns}/{name}: Bound to persistentvolume {pv} ({summary})"
                );
            }
            println!(
                "note: the new claim has none of the old claim's labels or annotations; if an annotation \
                 protected it, protect it again: kubectl annotate pvc {name} -n {ns} agentguard.dev/protected=true"
            );
        }
        output => super::print(output, &[], &[], &record),
    }
    Ok(ExitCode::SUCCESS)
}

/// The claim's name from `pvc/<name>`; any other kind is a usage error.
fn claim_name(target: &str) -> Result<&str, Failure> {
    let (kind, name) = split_target(target)?;
    match kind.to_ascii_lowercase().as_str() {
        "pvc" | "persistentvolumeclaim" | "persistentvolumeclaims" => Ok(name),
        _ => Err(Failure::with_code(
            2,
            format!(
                "restore brings back persistentvolumeclaims only: give pvc/<name>, got {target:?}"
            ),
        )),
    }
}

fn api_failure(context: &str, err: kube::Error) -> Failure {
    let forbidden = matches!(&err, kube::Error::Api(s) if s.code == 403);
    let mut failure = Failure::from(err);
    failure.message = format!("{context}: {}", failure.message);
    if forbidden {
        failure.message.push_str(
            "\nrestore needs get, list and patch on persistentvolumes and get and create on \
             persistentvolumeclaims",
        );
    }
    failure
}

fn claim_exists(ns: &str, name: &str, claim: &PersistentVolumeClaim) -> String {
    if claim.metadata.deletion_timestamp.is_some() {
        return format!(
            "persistentvolumeclaim {ns}/{name} is being deleted (Terminating): wait until it is gone, then run restore \
             again. A Pod still using it keeps it: kubectl describe pvc {name} -n {ns}"
        );
    }
    let bound_to = claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .filter(|v| !v.is_empty())
        .map(|v| format!(", volume {v}"))
        .unwrap_or_default();
    format!(
        "persistentvolumeclaim {ns}/{name} already exists ({phase}{bound_to}): there is nothing to restore. \
         restore only brings back a claim that is gone, under its own name",
        phase = phase_of_claim(claim),
    )
}

fn spec_of(pv: &PersistentVolume) -> &PersistentVolumeSpec {
    static EMPTY: std::sync::OnceLock<PersistentVolumeSpec> = std::sync::OnceLock::new();
    pv.spec
        .as_ref()
        .unwrap_or_else(|| EMPTY.get_or_init(Default::default))
}

fn name_of(pv: &PersistentVolume) -> &str {
    pv.metadata.name.as_deref().unwrap_or_default()
}

fn phase_of(pv: &PersistentVolume) -> &str {
    pv.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

fn phase_of_claim(claim: &PersistentVolumeClaim) -> &str {
    claim
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

fn capacity(pv: &PersistentVolume) -> Option<&Quantity> {
    spec_of(pv).capacity.as_ref()?.get("storage")
}

fn storage_class(pv: &PersistentVolume) -> &str {
    spec_of(pv)
        .storage_class_name
        .as_deref()
        .unwrap_or_default()
}

/// Whether the volume's claimRef names the claim `ns/name` (whatever its uid).
fn names_claim(pv: &PersistentVolume, ns: &str, name: &str) -> bool {
    spec_of(pv)
        .claim_ref
        .as_ref()
        .is_some_and(|c| c.namespace.as_deref() == Some(ns) && c.name.as_deref() == Some(name))
}

/// Why the volume cannot be bound to a new claim `ns/name`, or None when it can: it is kept
/// (Retain), not being deleted, not bound, and either unclaimed or claimed by that name.
fn unusable(pv: &PersistentVolume, ns: &str, name: &str) -> Option<String> {
    let spec = spec_of(pv);
    if pv.metadata.deletion_timestamp.is_some() {
        return Some("it is being deleted".into());
    }
    let policy = spec
        .persistent_volume_reclaim_policy
        .as_deref()
        .unwrap_or("Retain");
    if policy != "Retain" {
        return Some(format!(
            "its reclaim policy is {policy}, not Retain: the cluster deletes or recycles it once released"
        ));
    }
    if let Some(c) = &spec.claim_ref
        && !names_claim(pv, ns, name)
    {
        let other = format!(
            "{}/{}",
            c.namespace.as_deref().unwrap_or_default(),
            c.name.as_deref().unwrap_or_default()
        );
        return Some(format!(
            "its claimRef names claim {other}, not {ns}/{name}; restore only brings a claim back under its \
             own namespace and name (kubectl agentguard restore pvc/{cname} -n {cns} --from-pv {pv})",
            cname = c.name.as_deref().unwrap_or_default(),
            cns = c.namespace.as_deref().unwrap_or_default(),
            pv = name_of(pv),
        ));
    }
    match phase_of(pv) {
        "Released" | "Available" => None,
        "Bound" => Some(
            "it is still Bound: if its claim was deleted just now, wait until `kubectl get pv` shows it Released"
                .into(),
        ),
        other => Some(format!("its phase is {other}, not Released or Available")),
    }
}

/// After the re-pointing patch, the controller's acknowledgement: Available, claimRef naming
/// the claim without a uid.
fn pre_bound_and_available(pv: &PersistentVolume, ns: &str, name: &str) -> bool {
    phase_of(pv) == "Available"
        && names_claim(pv, ns, name)
        && spec_of(pv)
            .claim_ref
            .as_ref()
            .and_then(|c| c.uid.as_deref())
            .is_none_or(str::is_empty)
}

fn is_bound_to(claim: &PersistentVolumeClaim, pv: &str) -> bool {
    phase_of_claim(claim) == "Bound"
        && claim.spec.as_ref().and_then(|s| s.volume_name.as_deref()) == Some(pv)
}

/// The outcome of looking for the volume of a deleted claim among all PersistentVolumes.
#[derive(Debug)]
enum Choice<'a> {
    One(&'a PersistentVolume),
    /// None usable; the volumes that named the claim, with why each is not usable.
    None(Vec<(&'a PersistentVolume, String)>),
    /// Several usable, newest first.
    Several(Vec<&'a PersistentVolume>),
}

/// The volumes whose claimRef names `ns/name` and that are kept and free: Released, or
/// Available and pre-bound to that name (a restore interrupted after its first write).
fn choose_volume<'a>(pvs: &'a [PersistentVolume], ns: &str, name: &str) -> Choice<'a> {
    let mut usable = Vec::new();
    let mut passed = Vec::new();
    for pv in pvs.iter().filter(|pv| names_claim(pv, ns, name)) {
        let reason = unusable(pv, ns, name).or_else(|| {
            let stale_uid = spec_of(pv)
                .claim_ref
                .as_ref()
                .and_then(|c| c.uid.as_deref())
                .is_some_and(|u| !u.is_empty());
            (phase_of(pv) == "Available" && stale_uid)
                .then(|| "it is Available but still names an old claim's uid".to_owned())
        });
        match reason {
            None => usable.push(pv),
            Some(reason) => passed.push((pv, reason)),
        }
    }
    match usable.len() {
        0 => Choice::None(passed),
        1 => Choice::One(usable[0]),
        _ => {
            usable.sort_by(|a, b| {
                b.metadata
                    .creation_timestamp
                    .cmp(&a.metadata.creation_timestamp)
                    .then_with(|| name_of(a).cmp(name_of(b)))
            });
            Choice::Several(usable)
        }
    }
}

fn no_volume(ns: &str, name: &str, passed: &[(&PersistentVolume, String)]) -> String {
    let mut out = format!(
        "no retained volume for claim {ns}/{name}: it was not protected, or its volume was deleted.\n\
         Looked for persistentvolumes that are Released, have reclaim policy Retain, and whose claimRef names \
         {ns}/{name}."
    );
    for (pv, reason) in passed {
        out.push_str(&format!("\n  {}: not usable: {reason}", name_of(pv)));
    }
    out.push_str(
        "\nCheck: kubectl get pv (the CLAIM column shows what each volume was bound to). If you know which \
         volume holds the data, name it with --from-pv <pv>.",
    );
    out
}

fn several_volumes(ns: &str, name: &str, several: &[&PersistentVolume]) -> String {
    let rows: Vec<Vec<String>> = several
        .iter()
        .map(|pv| {
            vec![
                name_of(pv).to_owned(),
                time_or_dash(pv.metadata.creation_timestamp.as_ref()),
                phase_of(pv).to_owned(),
                time_or_dash(
                    pv.status
                        .as_ref()
                        .and_then(|s| s.last_phase_transition_time.as_ref()),
                ),
                capacity(pv)
                    .map(|q| q.0.clone())
                    .unwrap_or_else(|| "-".into()),
                describe_source(spec_of(pv)),
            ]
        })
        .collect();
    format!(
        "{count} retained volumes were the volume of claim {ns}/{name}; choose one with --from-pv <pv> \
         (newest first):\n{table}",
        count = several.len(),
        table = table(
            &["NAME", "CREATED", "PHASE", "SINCE", "CAPACITY", "SOURCE"],
            &rows
        )
    )
}

fn time_or_dash(time: Option<&Time>) -> String {
    time.map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| "-".into())
}

/// The JSON merge patch that pre-binds the volume to `ns/name`: claimRef becomes just that
/// namespace and name (the deleted claim's uid and resourceVersion dropped, or the controller
/// would keep the volume Released), and the volume's resourceVersion makes the API server
/// refuse it if anyone changed the volume since it was checked.
fn repoint_patch(pv: &PersistentVolume, ns: &str, name: &str) -> Value {
    json!({
        "metadata": {"resourceVersion": pv.metadata.resource_version},
        "spec": {"claimRef": {
            "namespace": ns,
            "name": name,
            "uid": null,
            "resourceVersion": null,
            "apiVersion": null,
            "kind": null,
            "fieldPath": null,
        }},
    })
}

/// The claim that the persistentvolume controller binds to `pv`: everything it compares
/// (storage class, volume attributes class, volume mode, size) is taken from the volume, with
/// its access modes; nothing else (labels, annotations, selectors) is carried over.
fn claim_for(pv: &PersistentVolume, ns: &str, name: &str) -> Result<PersistentVolumeClaim, String> {
    let spec = spec_of(pv);
    let size = capacity(pv).ok_or("it has no spec.capacity.storage")?;
    let access_modes = spec
        .access_modes
        .clone()
        .filter(|m| !m.is_empty())
        .ok_or("it has no spec.accessModes")?;
    Ok(PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(ns.to_owned()),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(access_modes),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_owned(), size.clone())])),
                limits: None,
            }),
            // Explicitly "" when the volume has no class: left unset, the DefaultStorageClass
            // admission plugin would give the claim the default class, which the volume lacks.
            storage_class_name: Some(storage_class(pv).to_owned()),
            volume_attributes_class_name: spec.volume_attributes_class_name.clone(),
            volume_mode: spec.volume_mode.clone(),
            volume_name: Some(name_of(pv).to_owned()),
            ..Default::default()
        }),
        status: None,
    })
}

/// The spec fields of a PersistentVolume that are not its volume source.
const NOT_SOURCE: &[&str] = &[
    "accessModes",
    "capacity",
    "claimRef",
    "mountOptions",
    "nodeAffinity",
    "persistentVolumeReclaimPolicy",
    "storageClassName",
    "volumeAttributesClassName",
    "volumeMode",
];

/// The volume source (`csi`, `hostPath`, `nfs`, …) and its fields.
fn volume_source(spec: &PersistentVolumeSpec) -> Option<(String, Value)> {
    let Ok(Value::Object(fields)) = serde_json::to_value(spec) else {
        return None;
    };
    fields
        .into_iter()
        .find(|(key, value)| !NOT_SOURCE.contains(&key.as_str()) && !value.is_null())
}

/// The volume source in a few words: which disk this is, for a human to recognize.
fn describe_source(spec: &PersistentVolumeSpec) -> String {
    let Some((kind, body)) = volume_source(spec) else {
        return "no volume source".into();
    };
    let field = |key: &str| body.get(key).and_then(Value::as_str);
    match kind.as_str() {
        "csi" => format!(
            "csi {} volumeHandle={}",
            field("driver").unwrap_or("?"),
            field("volumeHandle").unwrap_or("?")
        ),
        "nfs" => format!(
            "nfs {}:{}",
            field("server").unwrap_or("?"),
            field("path").unwrap_or("?")
        ),
        _ => match [
            "path",
            "volumeID",
            "pdName",
            "diskName",
            "shareName",
            "volumePath",
            "image",
            "targetPortal",
        ]
        .iter()
        .find_map(|k| field(k))
        {
            Some(id) => format!("{kind} {id}"),
            None => kind,
        },
    }
}

/// Reads the object every [`POLL`] until `done` says yes or `deadline` passes; the last object
/// read, and whether it was done.
async fn wait_for<K>(
    api: &Api<K>,
    name: &str,
    deadline: Instant,
    done: impl Fn(&K) -> bool,
) -> Result<(K, bool), kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    loop {
        let object = api.get(name).await?;
        if done(&object) {
            return Ok((object, true));
        }
        if Instant::now() >= deadline {
            return Ok((object, false));
        }
        tokio::time::sleep_until((Instant::now() + POLL).min(deadline)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        CSIPersistentVolumeSource, HostPathVolumeSource, ObjectReference, PersistentVolumeStatus,
    };

    fn ts(text: &str) -> Time {
        Time(text.parse().unwrap())
    }

    /// A volume as the API server returns it; `claim` is (namespace, name, uid).
    fn pv(
        name: &str,
        phase: &str,
        policy: &str,
        claim: Option<(&str, &str, &str)>,
    ) -> PersistentVolume {
        PersistentVolume {
            metadata: ObjectMeta {
                name: Some(name.into()),
                resource_version: Some("42".into()),
                creation_timestamp: Some(ts("2025-01-01T00:00:00Z")),
                ..Default::default()
            },
            spec: Some(PersistentVolumeSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                capacity: Some(BTreeMap::from([(
                    "storage".into(),
                    Quantity("10Gi".into()),
                )])),
                persistent_volume_reclaim_policy: Some(policy.into()),
                csi: Some(CSIPersistentVolumeSource {
                    driver: "disk.example.com".into(),
                    volume_handle: format!("vol-{name}"),
                    ..Default::default()
                }),
                claim_ref: claim.map(|(ns, n, uid)| ObjectReference {
                    namespace: Some(ns.into()),
                    name: Some(n.into()),
                    uid: (!uid.is_empty()).then(|| uid.into()),
                    kind: Some("PersistentVolumeClaim".into()),
                    api_version: Some("v1".into()),
                    resource_version: Some("7".into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: Some(PersistentVolumeStatus {
                phase: Some(phase.into()),
                ..Default::default()
            }),
        }
    }

    fn names(pvs: &[&PersistentVolume]) -> Vec<String> {
        pvs.iter().map(|p| name_of(p).to_owned()).collect()
    }

    #[test]
    fn only_pvc_targets_are_accepted() {
        for ok in [
            "pvc/data",
            "persistentvolumeclaim/data",
            "persistentvolumeclaims/data",
            "PVC/data",
        ] {
            assert_eq!(claim_name(ok).unwrap(), "data", "{ok}");
        }
        for bad in ["pv/data", "deployment/data", "data", "pvc/", "pvc/a/b"] {
            assert_eq!(claim_name(bad).unwrap_err().code, 2, "{bad}");
        }
    }

    #[test]
    fn the_released_retained_volume_of_the_claim_is_chosen() {
        let pvs = vec![
            pv(
                "other-ns",
                "Released",
                "Retain",
                Some(("staging", "data", "u1")),
            ),
            pv(
                "other-name",
                "Released",
                "Retain",
                Some(("prod", "logs", "u2")),
            ),
            pv("free", "Available", "Retain", None),
            pv("mine", "Released", "Retain", Some(("prod", "data", "u3"))),
        ];
        match choose_volume(&pvs, "prod", "data") {
            Choice::One(v) => assert_eq!(name_of(v), "mine"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_restore_interrupted_after_repointing_is_continued() {
        let pvs = vec![pv(
            "mine",
            "Available",
            "Retain",
            Some(("prod", "data", "")),
        )];
        assert!(matches!(
            choose_volume(&pvs, "prod", "data"),
            Choice::One(_)
        ));
        assert!(pre_bound_and_available(&pvs[0], "prod", "data"));
    }

    #[test]
    fn volumes_that_cannot_be_restored_are_reported_with_the_reason() {
        let mut deleting = pv(
            "deleting",
            "Released",
            "Retain",
            Some(("prod", "data", "u")),
        );
        deleting.metadata.deletion_timestamp = Some(ts("2025-01-02T00:00:00Z"));
        let pvs = vec![
            pv(
                "deleted-soon",
                "Released",
                "Delete",
                Some(("prod", "data", "u1")),
            ),
            pv("bound", "Bound", "Retain", Some(("prod", "data", "u2"))),
            pv("stale", "Available", "Retain", Some(("prod", "data", "u3"))),
            pv("failed", "Failed", "Retain", Some(("prod", "data", "u4"))),
            deleting,
        ];
        let Choice::None(passed) = choose_volume(&pvs, "prod", "data") else {
            panic!("nothing is usable");
        };
        let reasons: BTreeMap<&str, &str> = passed
            .iter()
            .map(|(p, r)| (name_of(p), r.as_str()))
            .collect();
        assert!(reasons["deleted-soon"].contains("reclaim policy is Delete"));
        assert!(reasons["bound"].contains("still Bound"));
        assert!(reasons["stale"].contains("old claim's uid"));
        assert!(reasons["failed"].contains("phase is Failed"));
        assert!(reasons["deleting"].contains("being deleted"));
        let message = no_volume("prod", "data", &passed);
        assert!(message.starts_with(
            "no retained volume for claim prod/data: it was not protected, or its volume was deleted."
        ));
        assert!(message.contains("deleted-soon: not usable"));
        assert!(message.contains("--from-pv"));
        assert!(matches!(choose_volume(&[], "prod", "data"), Choice::None(p) if p.is_empty()));
    }

    #[test]
    fn several_candidates_are_listed_newest_first() {
        let mut old = pv("pv-old", "Released", "Retain", Some(("prod", "data", "u1")));
        old.metadata.creation_timestamp = Some(ts("2025-01-01T00:00:00Z"));
        let mut new = pv("pv-new", "Released", "Retain", Some(("prod", "data", "u2")));
        new.metadata.creation_timestamp = Some(ts("2025-03-01T12:30:00Z"));
        let pvs = vec![old, new];
        let Choice::Several(several) = choose_volume(&pvs, "prod", "data") else {
            panic!("two candidates");
        };
        assert_eq!(names(&several), ["pv-new", "pv-old"]);
        let message = several_volumes("prod", "data", &several);
        assert!(message.starts_with(
            "2 retained volumes were the volume of claim prod/data; choose one with --from-pv"
        ));
        let new_at = message.find("pv-new").unwrap();
        assert!(new_at < message.find("pv-old").unwrap());
        assert!(message.contains("2025-03-01T12:30:00Z"));
        assert!(message.contains("csi disk.example.com volumeHandle=vol-pv-new"));
    }

    #[test]
    fn an_explicit_volume_must_be_kept_free_and_this_claims() {
        assert_eq!(
            unusable(
                &pv("a", "Released", "Retain", Some(("prod", "data", "u"))),
                "prod",
                "data"
            ),
            None
        );
        assert_eq!(
            unusable(&pv("a", "Available", "Retain", None), "prod", "data"),
            None
        );
        let other = unusable(
            &pv("a", "Released", "Retain", Some(("prod", "logs", "u"))),
            "prod",
            "data",
        )
        .unwrap();
        assert!(
            other.contains("names claim prod/logs, not prod/data"),
            "{other}"
        );
        assert!(
            other.contains("restore pvc/logs -n prod --from-pv a"),
            "{other}"
        );
        assert!(
            unusable(
                &pv("a", "Released", "Recycle", Some(("prod", "data", "u"))),
                "prod",
                "data"
            )
            .is_some()
        );
        assert!(
            unusable(
                &pv("a", "Bound", "Retain", Some(("prod", "data", "u"))),
                "prod",
                "data"
            )
            .is_some()
        );
    }

    #[test]
    fn the_patch_pre_binds_to_just_the_namespace_and_name() {
        let volume = pv("a", "Released", "Retain", Some(("prod", "data", "old-uid")));
        let patch = repoint_patch(&volume, "prod", "data");
        assert_eq!(patch["metadata"]["resourceVersion"], "42");
        // Applied as a merge patch, nulls remove the old claim's fields.
        let mut claim_ref = serde_json::to_value(&volume.spec.as_ref().unwrap().claim_ref).unwrap();
        merge(&mut claim_ref, &patch["spec"]["claimRef"]);
        assert_eq!(claim_ref, json!({"namespace": "prod", "name": "data"}));
    }

    fn merge(target: &mut Value, patch: &Value) {
        match (target, patch) {
            (Value::Object(t), Value::Object(p)) => {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
            (t, p) => *t = p.clone(),
        }
    }

    #[test]
    fn the_claim_is_built_from_the_volume_only() {
        let mut volume = pv("pv-1", "Released", "Retain", Some(("prod", "data", "u")));
        let spec = volume.spec.as_mut().unwrap();
        spec.volume_mode = Some("Block".into());
        spec.access_modes = Some(vec!["ReadWriteOnce".into(), "ReadOnlyMany".into()]);
        let claim = claim_for(&volume, "prod", "data").unwrap();
        assert_eq!(
            serde_json::to_value(&claim).unwrap(),
            json!({
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": "data", "namespace": "prod"},
                "spec": {
                    "accessModes": ["ReadWriteOnce", "ReadOnlyMany"],
                    "resources": {"requests": {"storage": "10Gi"}},
                    "storageClassName": "",
                    "volumeMode": "Block",
                    "volumeName": "pv-1",
                },
            })
        );

        let spec = volume.spec.as_mut().unwrap();
        spec.storage_class_name = Some("fast".into());
        spec.volume_attributes_class_name = Some("gold".into());
        let claim = claim_for(&volume, "prod", "data").unwrap();
        let claim_spec = claim.spec.unwrap();
        assert_eq!(claim_spec.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            claim_spec.volume_attributes_class_name.as_deref(),
            Some("gold")
        );

        volume.spec.as_mut().unwrap().capacity = None;
        assert!(
            claim_for(&volume, "prod", "data")
                .unwrap_err()
                .contains("capacity")
        );
    }

    #[test]
    fn sources_are_described_for_a_human() {
        let volume = pv("pv-1", "Released", "Retain", None);
        assert_eq!(
            describe_source(spec_of(&volume)),
            "csi disk.example.com volumeHandle=vol-pv-1"
        );
        let host = PersistentVolumeSpec {
            host_path: Some(HostPathVolumeSource {
                path: "/mnt/data".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(describe_source(&host), "hostPath /mnt/data");
        let (kind, body) = volume_source(&host).unwrap();
        assert_eq!(
            (kind.as_str(), body),
            ("hostPath", json!({"path": "/mnt/data"}))
        );
        assert_eq!(
            describe_source(&PersistentVolumeSpec::default()),
            "no volume source"
        );
    }

    #[test]
    fn timeouts_read_back_as_given() {
        assert_eq!(parse_timeout("60s").unwrap(), Duration::from_secs(60));
        assert!(parse_timeout("soon").is_err());
    }
}
