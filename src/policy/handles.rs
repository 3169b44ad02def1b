//! Second handles on the same data: a PersistentVolume names its disk by a handle (a CSI
//! volume handle, an NFS export, a cloud disk id), a VolumeSnapshotContent its snapshot, a
//! Crossplane managed resource its cloud resource by `crossplane.io/external-name`. A new object
//! that carries the handle of protected data is a second way to delete it: create the PV with
//! reclaimPolicy Delete, delete it, and the provisioner deletes the protected disk. These
//! functions read the handle so the index can compare.

use serde_json::Value;

/// Crossplane's name of the external resource a managed resource stands for.
pub const EXTERNAL_NAME: &str = "crossplane.io/external-name";

fn s<'v>(v: &'v Value, pointer: &str) -> Option<&'v str> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// The storage a PersistentVolume's spec points at, as one comparable string; None for a
/// spec without a source agentguard knows (such a PV cannot alias a known disk).
pub fn volume_identity(spec: &Value) -> Option<String> {
    if let (Some(driver), Some(handle)) = (s(spec, "/csi/driver"), s(spec, "/csi/volumeHandle")) {
        return Some(format!("csi:{driver}:{handle}"));
    }
    if let (Some(server), Some(path)) = (s(spec, "/nfs/server"), s(spec, "/nfs/path")) {
        return Some(format!("nfs:{server}:{}", path.trim_end_matches('/')));
    }
    let single: &[(&str, &str)] = &[
        ("hostpath", "/hostPath/path"),
        ("local", "/local/path"),
        ("aws-ebs", "/awsElasticBlockStore/volumeID"),
        ("gce-pd", "/gcePersistentDisk/pdName"),
        ("azure-disk", "/azureDisk/diskURI"),
        ("azure-file", "/azureFile/shareName"),
        ("cinder", "/cinder/volumeID"),
        ("vsphere", "/vsphereVolume/volumePath"),
        ("portworx", "/portworxVolume/volumeID"),
    ];
    for (source, pointer) in single {
        if let Some(id) = s(spec, pointer) {
            // `/data/` and `/data` are the same directory.
            let id = if id.len() > 1 {
                id.trim_end_matches('/')
            } else {
                id
            };
            return Some(format!("{source}:{id}"));
        }
    }
    if let (Some(portal), Some(iqn)) = (s(spec, "/iscsi/targetPortal"), s(spec, "/iscsi/iqn")) {
        let lun = spec
            .pointer("/iscsi/lun")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        return Some(format!("iscsi:{portal}:{iqn}:{lun}"));
    }
    if let (Some(pool), Some(image)) = (s(spec, "/rbd/pool"), s(spec, "/rbd/image")) {
        return Some(format!("rbd:{pool}/{image}"));
    }
    None
}

/// The snapshot a VolumeSnapshotContent points at: its pre-provisioned source handle, or the
/// handle the snapshotter recorded in its status.
pub fn snapshot_identity(content: &Value) -> Option<String> {
    let handle = s(content, "/spec/source/snapshotHandle")
        .or_else(|| s(content, "/status/snapshotHandle"))?;
    let driver = s(content, "/spec/driver").unwrap_or_default();
    Some(format!("snapshot:{driver}:{handle}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_same_disk_reads_the_same_whatever_else_differs() {
        let a = json!({"csi": {"driver": "ebs.csi.aws.com", "volumeHandle": "vol-1", "fsType": "ext4"},
                       "persistentVolumeReclaimPolicy": "Retain"});
        let b = json!({"csi": {"driver": "ebs.csi.aws.com", "volumeHandle": "vol-1"},
                       "persistentVolumeReclaimPolicy": "Delete"});
        assert_eq!(volume_identity(&a), volume_identity(&b));
        assert_eq!(
            volume_identity(&a).as_deref(),
            Some("csi:ebs.csi.aws.com:vol-1")
        );
        let other_driver =
            json!({"csi": {"driver": "pd.csi.storage.gke.io", "volumeHandle": "vol-1"}});
        assert_ne!(volume_identity(&a), volume_identity(&other_driver));
        assert_eq!(
            volume_identity(&json!({"nfs": {"server": "10.0.0.1", "path": "/exports/db/"}})),
            volume_identity(&json!({"nfs": {"server": "10.0.0.1", "path": "/exports/db"}}))
        );
        assert_eq!(
            volume_identity(&json!({"hostPath": {"path": "/data/orders/"}})).as_deref(),
            Some("hostpath:/data/orders")
        );
        assert_eq!(
            volume_identity(&json!({"capacity": {"storage": "1Gi"}})),
            None
        );
    }

    #[test]
    fn snapshots_read_from_source_or_status() {
        let bound = json!({"spec": {"driver": "d", "source": {"volumeHandle": "vol-1"}},
                           "status": {"snapshotHandle": "snap-1"}});
        let imported = json!({"spec": {"driver": "d", "source": {"snapshotHandle": "snap-1"}}});
        assert_eq!(snapshot_identity(&bound), snapshot_identity(&imported));
        assert_eq!(snapshot_identity(&json!({"spec": {"driver": "d"}})), None);
    }
}
