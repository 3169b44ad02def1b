//! A Kubernetes Event (`DeletionBlocked`, type Warning) on each object an agent tried to
//! destroy, so `kubectl describe` shows it next to the object; `DeletionAudited` (type Normal)
//! when an Audit-mode policy let the deletion through. Attempts are folded per object
//! and subject and published at most every [`PUBLISH_INTERVAL`]; the recorder turns repeats
//! into an event series instead of new events.

use std::time::Duration;

use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use crate::index::BlockLedger;

/// Reason of the Event, part of the contract.
pub const REASON: &str = "DeletionBlocked";
const PUBLISH_INTERVAL: Duration = Duration::from_secs(2);

/// Publishes Events for blocked attempts. Never returns.
pub async fn publish_blocked_attempts(
    client: kube::Client,
    ledger: BlockLedger,
    instance: Option<String>,
) {
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: "agentguard".into(),
            instance,
        },
    );
    loop {
        ledger.attempts_notified().await;
        // Let a burst (an agent retrying in a loop) fold into one publish.
        tokio::time::sleep(PUBLISH_INTERVAL).await;
        for attempt in ledger.drain_attempts() {
            let by = if attempt.protected_by.is_empty() {
                "protected"
            } else {
                &attempt.protected_by
            };
            let times = if attempt.count > 1 {
                format!(", {} attempts", attempt.count)
            } else {
                String::new()
            };
            let event = if attempt.audited {
                Event {
                    type_: EventType::Normal,
                    reason: crate::operator::reports::AUDITED_REASON.into(),
                    note: Some(format!(
                        "agentguard would have blocked {subject} from destroying this object ({by}, Audit mode: allowed and recorded){times}",
                        subject = attempt.subject,
                    )),
                    action: "Delete".into(),
                    secondary: None,
                }
            } else {
                Event {
                    type_: EventType::Warning,
                    reason: REASON.into(),
                    note: Some(format!(
                        "agentguard blocked {subject} from destroying this object ({by}){times}. \
                         A human must approve first: kubectl agentguard approve",
                        subject = attempt.subject,
                    )),
                    action: "Delete".into(),
                    secondary: None,
                }
            };
            if let Err(err) = recorder.publish(&event, &attempt.object).await {
                tracing::warn!(error = %err, object = ?attempt.object.name, "cannot record DeletionBlocked event");
            }
        }
    }
}
