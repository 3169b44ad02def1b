//! The object watches' view of an object: its metadata, minus what the index never reads.
//!
//! A watched object arrives whole. Decoded as [`kube::api::PartialObjectMeta`], its spec and
//! status are skipped but every `managedFields` entry (a JSON tree per field manager) and
//! kubectl's `last-applied-configuration` annotation (a copy of the whole object) are built and
//! then dropped: most of the work of listing 100,000 objects. [`SlimObject`] skips them while
//! parsing instead.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::api::ApiResource;
use kube::core::{DynamicResourceScope, Resource};
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};

/// The annotation kubectl writes on `kubectl apply`: the object as last applied.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// An object of any kind with only the metadata the index reads (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct SlimObject {
    pub metadata: ObjectMeta,
}

/// What is read of `metadata`; every other field is skipped unbuilt.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct SlimMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "annotations_but_last_applied")]
    annotations: Option<BTreeMap<String, String>>,
    owner_references: Option<Vec<OwnerReference>>,
    deletion_timestamp: Option<Time>,
}

impl<'de> Deserialize<'de> for SlimObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Object {
            #[serde(default)]
            metadata: SlimMeta,
        }
        let m = Object::deserialize(deserializer)?.metadata;
        Ok(Self {
            metadata: ObjectMeta {
                name: m.name,
                namespace: m.namespace,
                uid: m.uid,
                resource_version: m.resource_version,
                labels: m.labels,
                annotations: m.annotations,
                owner_references: m.owner_references,
                deletion_timestamp: m.deletion_timestamp,
                ..ObjectMeta::default()
            },
        })
    }
}

/// The annotations, without kubectl's copy of the last applied object (skipped, not built).
fn annotations_but_last_applied<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    struct Annotations;
    impl<'de> Visitor<'de> for Annotations {
        type Value = Option<BTreeMap<String, String>>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map of annotations or null")
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                if key == LAST_APPLIED {
                    map.next_value::<IgnoredAny>()?;
                } else {
                    out.insert(key.into_owned(), map.next_value()?);
                }
            }
            Ok(Some(out))
        }
    }
    deserializer.deserialize_option(Annotations)
}

impl Resource for SlimObject {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn group(dt: &ApiResource) -> Cow<'_, str> {
        dt.group.as_str().into()
    }

    fn version(dt: &ApiResource) -> Cow<'_, str> {
        dt.version.as_str().into()
    }

    fn kind(dt: &ApiResource) -> Cow<'_, str> {
        dt.kind.as_str().into()
    }

    fn api_version(dt: &ApiResource) -> Cow<'_, str> {
        dt.api_version.as_str().into()
    }

    fn plural(dt: &ApiResource) -> Cow<'_, str> {
        dt.plural.as_str().into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_what_the_index_reads_and_drops_managed_fields_and_the_applied_copy() {
        let object = json!({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {
                "name": "data",
                "namespace": "prod",
                "uid": "u-1",
                "resourceVersion": "42",
                "labels": {"app": "db"},
                "annotations": {
                    "agentguard.dev/protected": "true",
                    LAST_APPLIED: "{\"apiVersion\":\"v1\",\"kind\":\"PersistentVolumeClaim\"}",
                    "crossplane.io/external-name": "orders"
                },
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "u-0"}],
                "deletionTimestamp": "2026-12-07T00:00:00Z",
                "managedFields": [{"manager": "kubectl", "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {}}}],
                "finalizers": ["kubernetes.io/pvc-protection"]
            },
            "spec": {"accessModes": ["ReadWriteOnce"]},
            "status": {"phase": "Bound"}
        });
        let slim: SlimObject = serde_json::from_value(object.clone()).unwrap();
        let m = &slim.metadata;
        assert_eq!(m.name.as_deref(), Some("data"));
        assert_eq!(m.namespace.as_deref(), Some("prod"));
        assert_eq!(m.uid.as_deref(), Some("u-1"));
        assert_eq!(m.resource_version.as_deref(), Some("42"));
        assert_eq!(m.labels.as_ref().unwrap()["app"], "db");
        let annotations = m.annotations.as_ref().unwrap();
        assert_eq!(annotations.len(), 2, "{annotations:?}");
        assert_eq!(annotations["agentguard.dev/protected"], "true");
        assert_eq!(annotations["crossplane.io/external-name"], "orders");
        assert_eq!(m.owner_references.as_ref().unwrap()[0].uid, "u-0");
        assert!(m.deletion_timestamp.is_some());
        assert!(m.managed_fields.is_none());
        // The index builds the same entry from it as from the whole metadata.
        let whole: kube::api::PartialObjectMeta<kube::api::DynamicObject> =
            serde_json::from_value(object).unwrap();
        assert!(whole.metadata.managed_fields.is_some());
        let entry = |m| crate::index::objects::ObjectEntry::of_meta("", "PersistentVolumeClaim", m);
        assert_eq!(entry(m), entry(&whole.metadata));
    }

    #[test]
    fn null_or_missing_metadata_fields_are_none() {
        let slim: SlimObject = serde_json::from_value(json!({
            "metadata": {"name": "x", "annotations": null, "labels": null}
        }))
        .unwrap();
        assert!(slim.metadata.annotations.is_none() && slim.metadata.labels.is_none());
        let slim: SlimObject = serde_json::from_value(json!({"kind": "Status"})).unwrap();
        assert!(slim.metadata.name.is_none());
    }
}
