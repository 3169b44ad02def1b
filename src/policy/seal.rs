//! Approval seals: an approval counts only if agentguard accepted it. When the webhook accepts a
//! human's approval it adds `agentguard.dev/approval-seal`, a MAC over the object's identity and
//! the approval, under a key only agentguard holds. Whoever writes approval annotations by
//! another path (a subresource, a kind not routed, a copy from another object, an etcd restore,
//! a write while the webhook was down) cannot produce a seal that verifies for this object.
//!
//! The seal is `v1:<key id>:<hex HMAC-SHA256>`. The MAC covers a versioned, newline-separated
//! message of group, kind, uid, approved-by and approved-until, and, when the approval also
//! accepts a loss of backups, the `approved-backup-loss` list; none of those may contain a
//! newline that would let one field's text pose as another's, so such input is never sealed.

use std::collections::BTreeMap;

use ring::hmac;

/// Seal format version, first field of every seal.
const VERSION: &str = "v1";

/// Secret data keys holding sealing keys are `<KEY_PREFIX><unix seconds of creation>`.
pub const KEY_PREFIX: &str = "key-";

/// Bytes of a freshly generated key.
pub const KEY_BYTES: usize = 32;

/// What a seal binds: the object (by uid, which is never reused) and the approval on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealInput<'a> {
    pub group: &'a str,
    pub kind: &'a str,
    pub uid: &'a str,
    pub approved_by: &'a str,
    pub approved_until: &'a str,
    /// `approved-backup-loss`, empty when the approval accepts no loss of backups (the message
    /// is then what it was before this field existed, so earlier seals still verify).
    pub backup_loss: &'a str,
}

impl SealInput<'_> {
    fn message(&self) -> Option<String> {
        let fields = [
            self.group,
            self.kind,
            self.uid,
            self.approved_by,
            self.approved_until,
        ];
        if self.uid.is_empty()
            || fields.iter().any(|f| f.contains('\n'))
            || self.backup_loss.contains('\n')
        {
            return None;
        }
        let mut message = format!("agentguard-approval-{VERSION}\n{}", fields.join("\n"));
        if !self.backup_loss.is_empty() {
            message.push_str("\nbackup-loss:");
            message.push_str(self.backup_loss);
        }
        Some(message)
    }
}

/// Why a seal does not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SealProblem {
    /// No seal on the object.
    Missing,
    /// agentguard holds no key (not loaded yet, or the Secret is missing).
    NoKeys,
    /// Not of the form `v1:<key id>:<hex>`.
    Malformed,
    /// Made with a key agentguard no longer (or never) held.
    UnknownKey(String),
    /// The MAC does not match this object and approval.
    Mismatch,
}

impl std::fmt::Display for SealProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SealProblem::Missing => write!(
                f,
                "it is not sealed by agentguard (it was not written through agentguard's webhook)"
            ),
            SealProblem::NoKeys => write!(f, "agentguard has no sealing key loaded yet"),
            SealProblem::Malformed => write!(f, "its seal is malformed"),
            SealProblem::UnknownKey(id) => write!(
                f,
                "its seal was made with key {id:?}, which agentguard does not hold"
            ),
            SealProblem::Mismatch => write!(
                f,
                "its seal does not match this object and approval (copied or forged)"
            ),
        }
    }
}

/// The sealing keys, newest last. The newest seals; any key still held verifies.
#[derive(Clone, Default)]
pub struct Keyring {
    keys: Vec<(String, hmac::Key)>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Key ids only: key material never reaches a log.
        f.debug_list()
            .entries(self.keys.iter().map(|(id, _)| id))
            .finish()
    }
}

/// Creation time (unix seconds) encoded in a key id, for ordering.
pub fn key_created(id: &str) -> Option<i64> {
    id.strip_prefix(KEY_PREFIX)?.parse().ok()
}

impl Keyring {
    /// Keys from a Secret's data. Entries that are not `key-<unix seconds>` with at least
    /// [`KEY_BYTES`] bytes are ignored (a short key would be guessable).
    pub fn from_data(data: &BTreeMap<String, Vec<u8>>) -> Self {
        let mut keys: Vec<(i64, String, hmac::Key)> = data
            .iter()
            .filter(|(_, v)| v.len() >= KEY_BYTES)
            .filter_map(|(id, v)| {
                Some((
                    key_created(id)?,
                    id.clone(),
                    hmac::Key::new(hmac::HMAC_SHA256, v),
                ))
            })
            .collect();
        keys.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        Self {
            keys: keys.into_iter().map(|(_, id, k)| (id, k)).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Ids of the keys held, oldest first.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(id, _)| id.as_str())
    }

    /// The seal for `input` under the newest key; None without keys or for unsealable input.
    pub fn seal(&self, input: &SealInput<'_>) -> Option<String> {
        let (id, key) = self.keys.last()?;
        let tag = hmac::sign(key, input.message()?.as_bytes());
        Some(format!("{VERSION}:{id}:{}", hex(tag.as_ref())))
    }

    /// Whether `seal` is a valid seal of `input` under any key held (constant-time compare).
    pub fn verify(&self, input: &SealInput<'_>, seal: Option<&str>) -> Result<(), SealProblem> {
        let seal = seal.map(str::trim).filter(|s| !s.is_empty());
        let Some(seal) = seal else {
            return Err(SealProblem::Missing);
        };
        if self.keys.is_empty() {
            return Err(SealProblem::NoKeys);
        }
        let mut parts = seal.splitn(3, ':');
        let (Some(VERSION), Some(id), Some(mac)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(SealProblem::Malformed);
        };
        let Some(tag) = unhex(mac) else {
            return Err(SealProblem::Malformed);
        };
        let Some((_, key)) = self.keys.iter().find(|(k, _)| k == id) else {
            return Err(SealProblem::UnknownKey(id.to_owned()));
        };
        let message = input.message().ok_or(SealProblem::Mismatch)?;
        hmac::verify(key, message.as_bytes(), &tag).map_err(|_| SealProblem::Mismatch)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A keyring with one fixed key, for decision tests.
    pub fn keyring() -> Keyring {
        Keyring::from_data(&[("key-100".to_owned(), vec![7u8; KEY_BYTES])].into())
    }

    fn input<'a>(uid: &'a str, by: &'a str, until: &'a str) -> SealInput<'a> {
        SealInput {
            group: "",
            kind: "PersistentVolumeClaim",
            uid,
            approved_by: by,
            approved_until: until,
            backup_loss: "",
        }
    }

    #[test]
    fn a_seal_verifies_only_for_its_object_and_approval() {
        let keys = keyring();
        let good = input("uid-1", "alice", "2030-01-01T00:00:00Z");
        let seal = keys.seal(&good).unwrap();
        assert!(seal.starts_with("v1:key-100:"));
        assert_eq!(keys.verify(&good, Some(&seal)), Ok(()));
        for other in [
            input("uid-2", "alice", "2030-01-01T00:00:00Z"),
            input("uid-1", "bob", "2030-01-01T00:00:00Z"),
            input("uid-1", "alice", "2030-01-01T00:00:01Z"),
            SealInput {
                kind: "PersistentVolume",
                ..good
            },
            SealInput {
                group: "snapshot.storage.k8s.io",
                ..good
            },
            SealInput {
                backup_loss: "spec.forProvider.skipFinalSnapshot",
                ..good
            },
        ] {
            let theirs = keys.seal(&other).unwrap();
            assert_eq!(
                keys.verify(&good, Some(&theirs)),
                Err(SealProblem::Mismatch),
                "{other:?}"
            );
            assert_eq!(
                keys.verify(&other, Some(&seal)),
                Err(SealProblem::Mismatch),
                "{other:?}"
            );
        }
    }

    #[test]
    fn missing_malformed_and_foreign_seals_are_void() {
        let keys = keyring();
        let i = input("uid-1", "alice", "2030-01-01T00:00:00Z");
        assert_eq!(keys.verify(&i, None), Err(SealProblem::Missing));
        assert_eq!(keys.verify(&i, Some(" ")), Err(SealProblem::Missing));
        for bad in [
            "v1",
            "v1:key-100",
            "v1:key-100:zz",
            "v2:key-100:00",
            "v1:key-100:abc",
        ] {
            assert_eq!(
                keys.verify(&i, Some(bad)),
                Err(SealProblem::Malformed),
                "{bad}"
            );
        }
        // Another installation's key (or a key dropped by rotation) verifies nothing here.
        let other = Keyring::from_data(&[("key-200".to_owned(), vec![9u8; KEY_BYTES])].into());
        let foreign = other.seal(&i).unwrap();
        assert_eq!(
            keys.verify(&i, Some(&foreign)),
            Err(SealProblem::UnknownKey("key-200".into()))
        );
        // Same id, other material: a forged key id does not help.
        let forged = Keyring::from_data(&[("key-100".to_owned(), vec![8u8; KEY_BYTES])].into());
        assert_eq!(
            keys.verify(&i, Some(&forged.seal(&i).unwrap())),
            Err(SealProblem::Mismatch)
        );
        assert_eq!(
            Keyring::default().verify(&i, Some("v1:key-100:00")),
            Err(SealProblem::NoKeys)
        );
    }

    #[test]
    fn the_newest_key_seals_and_older_keys_still_verify() {
        let old = keyring();
        let i = input("uid-1", "alice", "2030-01-01T00:00:00Z");
        let old_seal = old.seal(&i).unwrap();
        let rotated = Keyring::from_data(
            &[
                ("key-100".to_owned(), vec![7u8; KEY_BYTES]),
                ("key-50".to_owned(), vec![1u8; KEY_BYTES]),
                ("key-300".to_owned(), vec![3u8; KEY_BYTES]),
                ("key-400".to_owned(), vec![4u8; 8]),
                ("not-a-key".to_owned(), vec![5u8; KEY_BYTES]),
            ]
            .into(),
        );
        assert_eq!(
            rotated.ids().collect::<Vec<_>>(),
            ["key-50", "key-100", "key-300"]
        );
        assert!(rotated.seal(&i).unwrap().starts_with("v1:key-300:"));
        assert_eq!(rotated.verify(&i, Some(&old_seal)), Ok(()));
    }

    #[test]
    fn fields_cannot_pose_as_each_other() {
        let keys = keyring();
        assert_eq!(keys.seal(&input("uid-1", "alice\nuid-2", "x")), None);
        assert_eq!(keys.seal(&input("", "alice", "x")), None);
        assert!(format!("{keys:?}").contains("key-100"));
        assert!(!format!("{keys:?}").contains("7, 7"));
    }
}
