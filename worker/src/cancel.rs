//! Listens for cancel requests and stops the running tasks they name.
//!
//! The cancel script publishes a task's id on the cancel channel when the
//! task is running. Every worker listens; the one running it cancels the
//! task's token. A missed message (the subscription was down) does not
//! change the outcome, only its speed: the commit script still records the
//! task as cancelled, because the request is also in the task record.

use std::time::Duration;

use futures_util::StreamExt;
use tandem_shared::TaskId;
use tandem_shared::store::Store;

use crate::running::Running;

/// Subscribes to the cancel channel until the worker stops it, resubscribing
/// after connection loss. `subscribed` fires once the first subscription
/// holds, so the worker claims nothing whose cancel it could miss.
pub(crate) async fn listen(
    store: Store,
    running: Running,
    subscribed: tokio::sync::oneshot::Sender<()>,
) {
    let channel = store.keys().cancel_channel();
    let mut backoff = Duration::from_millis(100);
    let mut subscribed = Some(subscribed);
    loop {
        match store.pubsub().await {
            Ok(mut pubsub) => match pubsub.subscribe(&channel).await {
                Ok(()) => {
                    backoff = Duration::from_millis(100);
                    if let Some(tx) = subscribed.take() {
                        let _ = tx.send(());
                    }
                    let mut messages = pubsub.on_message();
                    while let Some(message) = messages.next().await {
                        let payload: Vec<u8> = message.get_payload_bytes().to_vec();
                        let Some(id) = std::str::from_utf8(&payload)
                            .ok()
                            .and_then(|t| t.parse::<TaskId>().ok())
                        else {
                            tracing::warn!(
                                "ignoring a malformed cancel message ({} bytes)",
                                payload.len()
                            );
                            continue;
                        };
                        if running.cancel(&id) {
                            tracing::info!(task = %id, "cancel requested: stopping the task");
                        }
                    }
                    tracing::warn!("cancel subscription ended; resubscribing");
                }
                Err(err) => tracing::warn!("cannot subscribe to {channel}: {err}"),
            },
            Err(err) => tracing::warn!("cancel listener cannot connect: {err}"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
