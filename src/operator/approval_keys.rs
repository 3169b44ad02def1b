//! The keys approvals are sealed with, kept in a Secret in agentguard's namespace. The leader
//! creates the first key, adds a new one every `rotate_after`, and drops a key once no approval
//! sealed with it can still be live (the hard cap of an approval window after the next key took
//! over). Every replica loads the Secret and seals with the newest key.
//!
//! Deleting the Secret voids every approval at once: the leader writes a fresh key, which
//! verifies no earlier seal. That is the answer to a leaked key (docs/security.md).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta};
use ring::rand::SecureRandom;
use tokio::sync::watch;

use crate::api::MAX_APPROVAL_TTL;
use crate::index::Readiness;
use crate::policy::{KEY_BYTES, KEY_PREFIX, Keyring, key_created};

/// Readiness gate: sealing keys are loaded.
pub const APPROVAL_KEYS_GATE: &str = "approval-keys";
const SYNC_INTERVAL: Duration = Duration::from_secs(3);

/// Where the keys live and how often they change.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyParams {
    pub secret_namespace: String,
    pub secret_name: String,
    /// A new key seals from this long after the newest one was made.
    pub rotate_after: Duration,
}

/// The Secret data the leader should write, or None when the keys are current. Pure: `now` in
/// unix seconds, `fresh` makes new key material.
pub fn plan(
    data: &BTreeMap<String, Vec<u8>>,
    now: i64,
    rotate_after: Duration,
    fresh: impl FnOnce() -> Vec<u8>,
) -> Option<BTreeMap<String, Vec<u8>>> {
    let mut keys: Vec<(i64, &String)> = data
        .iter()
        .filter(|(_, v)| v.len() >= KEY_BYTES)
        .filter_map(|(id, _)| Some((key_created(id)?, id)))
        .collect();
    keys.sort();
    let mut next: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    // A key is needed while an approval sealed before its successor took over may be live.
    let keep_for = MAX_APPROVAL_TTL.as_secs() as i64;
    for (i, (_, id)) in keys.iter().enumerate() {
        let superseded_at = keys.get(i + 1).map(|(t, _)| *t);
        if superseded_at.is_none_or(|t| now - t <= keep_for) {
            next.insert((*id).clone(), data[*id].clone());
        }
    }
    let newest = keys.last().map(|(t, _)| *t);
    if newest.is_none_or(|t| now - t >= rotate_after.as_secs() as i64) {
        // Ids order by creation; a second key in the same second would collide, so bump.
        let created = newest.map_or(now, |t| now.max(t + 1));
        next.insert(format!("{KEY_PREFIX}{created}"), fresh());
    }
    let unchanged = next.len() == data.len() && next.keys().all(|k| data.contains_key(k));
    (!unchanged).then_some(next)
}

fn random_key() -> Vec<u8> {
    let mut key = vec![0u8; KEY_BYTES];
    ring::rand::SystemRandom::new()
        .fill(&mut key)
        .expect("the operating system's random source failed");
    key
}

fn data_of(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect()
}

/// Keeps the Secret current (leader only) and publishes the keyring (every replica). Never
/// returns.
pub async fn run(
    client: kube::Client,
    params: KeyParams,
    keys_tx: watch::Sender<Keyring>,
    leader: watch::Receiver<bool>,
    readiness: Readiness,
) {
    let api: Api<Secret> = Api::namespaced(client, &params.secret_namespace);
    let mut tick = tokio::time::interval(SYNC_INTERVAL);
    loop {
        tick.tick().await;
        let secret = match api.get_opt(&params.secret_name).await {
            Ok(s) => s,
            Err(err) => {
                tracing::warn!(error = %err, secret = %params.secret_name, "cannot read the approval key Secret");
                continue;
            }
        };
        let mut data = secret.as_ref().map(data_of).unwrap_or_default();
        if *leader.borrow()
            && let Some(next) = plan(
                &data,
                jiff::Timestamp::now().as_second(),
                params.rotate_after,
                random_key,
            )
        {
            let object = Secret {
                metadata: ObjectMeta {
                    name: Some(params.secret_name.clone()),
                    namespace: Some(params.secret_namespace.clone()),
                    labels: Some(
                        [(
                            "app.kubernetes.io/managed-by".to_owned(),
                            "agentguard".to_owned(),
                        )]
                        .into(),
                    ),
                    ..Default::default()
                },
                type_: Some("Opaque".into()),
                data: Some(
                    next.iter()
                        .map(|(k, v)| (k.clone(), ByteString(v.clone())))
                        .collect(),
                ),
                ..Default::default()
            };
            // Cancelled if leadership ends while the write is in flight.
            let written = super::leader::while_leading(
                &leader,
                super::write_secret(&api, secret.as_ref(), object),
            )
            .await;
            match written {
                None => tracing::info!("leadership ended: the approval key Secret was not written"),
                Some(Ok(_)) => {
                    tracing::info!(keys = ?next.keys().collect::<Vec<_>>(), "approval keys updated");
                    data = next;
                }
                Some(Err(err)) => {
                    tracing::warn!(error = %err, "cannot write the approval key Secret; retrying")
                }
            }
        }
        let keyring = Keyring::from_data(&data);
        if keyring.is_empty() {
            continue;
        }
        keys_tx.send_if_modified(|current| {
            let changed = !current.ids().eq(keyring.ids());
            if changed {
                tracing::info!(keys = ?keyring, "approval keys loaded");
                *current = keyring;
            }
            changed
        });
        readiness.synced(APPROVAL_KEYS_GATE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 24 * 3600;
    const ROTATE: Duration = Duration::from_secs(30 * DAY as u64);

    fn key(byte: u8) -> Vec<u8> {
        vec![byte; KEY_BYTES]
    }

    #[test]
    fn first_key_then_rotation_then_retirement() {
        let now = 1_800_000_000;
        let first = plan(&BTreeMap::new(), now, ROTATE, || key(1)).expect("a first key");
        assert_eq!(first, [(format!("key-{now}"), key(1))].into());
        assert_eq!(plan(&first, now + DAY, ROTATE, || key(2)), None, "current");
        let rotated_at = now + 30 * DAY;
        let rotated = plan(&first, rotated_at, ROTATE, || key(2)).expect("rotation");
        assert_eq!(
            rotated.len(),
            2,
            "the old key still verifies live approvals"
        );
        assert_eq!(rotated[&format!("key-{rotated_at}")], key(2));
        assert_eq!(plan(&rotated, rotated_at + DAY, ROTATE, || key(3)), None);
        let retired = plan(&rotated, rotated_at + DAY + 1, ROTATE, || key(3)).expect("retire");
        assert_eq!(
            retired.keys().collect::<Vec<_>>(),
            [&format!("key-{rotated_at}")]
        );
    }

    #[test]
    fn junk_and_short_keys_are_replaced_not_trusted() {
        let now = 1_800_000_000;
        let junk: BTreeMap<String, Vec<u8>> = [
            ("key-1".to_owned(), vec![0; 4]),
            ("hello".to_owned(), key(9)),
        ]
        .into();
        let next = plan(&junk, now, ROTATE, || key(1)).unwrap();
        assert_eq!(next, [(format!("key-{now}"), key(1))].into());
        // A key from the future (clock skew) is kept and not rotated past.
        let future: BTreeMap<String, Vec<u8>> = [(format!("key-{}", now + 10), key(5))].into();
        assert_eq!(plan(&future, now, ROTATE, || key(1)), None);
    }
}
