//! Moves delayed tasks into their streams when they are due: scheduled
//! tasks (`run_at_ms`, `delay_ms`), tasks a rate limit parked until their
//! turn, and retries.
//!
//! Every worker runs one promoter for its classes. It calls `promote.lua`
//! (which moves what is due and returns when the delayed set's head is
//! due, by the Redis clock) and sleeps until then, so a task enters its
//! stream within milliseconds of its time without polling. A task that
//! becomes the new head (a submit, a parked task) and a flow change (a
//! pause, a resume, a limit) publish on the promote channel, which wakes
//! the promoter at once; it then also wakes the dispatcher, whose claim
//! passes over paused streams and watches them no more. Promotion is
//! fenced in the script: however many workers call it, each task is
//! promoted once. A missed message costs at most [`MAX_SLEEP`].

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tandem_shared::Class;
use tandem_shared::store::{PROMOTE_BATCH, Store};
use tokio::sync::Notify;

/// The longest the promoter sleeps: a retry due earlier than the head it
/// knew (retries do not publish), or a message lost while the subscription
/// was down, waits no longer.
pub(crate) const MAX_SLEEP: Duration = Duration::from_secs(1);

/// Runs until the worker drops it.
pub(crate) async fn run(store: Store, classes: Vec<Class>, dispatcher: Arc<Notify>) {
    let rung = Arc::new(Notify::new());
    tokio::join!(
        listen(store.clone(), Arc::clone(&rung)),
        promote_loop(store, classes, rung, dispatcher)
    );
}

async fn promote_loop(
    store: Store,
    classes: Vec<Class>,
    rung: Arc<Notify>,
    dispatcher: Arc<Notify>,
) {
    let mut failures = 0u32;
    loop {
        let mut wait = MAX_SLEEP;
        match store.promote(&classes).await {
            Ok(replies) => {
                failures = 0;
                let mut moved = 0;
                for (class, reply) in classes.iter().zip(replies) {
                    match reply {
                        Ok(promoted) => {
                            moved += promoted.promoted;
                            if promoted.promoted >= PROMOTE_BATCH {
                                wait = Duration::ZERO;
                            }
                            if let Some(due) = promoted.next_due_ms {
                                wait = wait.min(Duration::from_millis(
                                    due.saturating_sub(promoted.now_ms),
                                ));
                            }
                        }
                        Err(err) => {
                            tracing::warn!("promoting the due tasks of {class} failed: {err}")
                        }
                    }
                }
                if moved > 0 {
                    tracing::debug!(moved, "promoted due tasks");
                    dispatcher.notify_one();
                }
            }
            Err(err) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!("promoting due tasks failed: {err}; trying again every second");
                }
            }
        }
        if wait.is_zero() {
            continue;
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = rung.notified() => dispatcher.notify_one(),
        }
    }
}

/// Subscribes to the promote channel, resubscribing after connection loss;
/// each message rings `rung`.
async fn listen(store: Store, rung: Arc<Notify>) {
    let channel = store.keys().promote_channel();
    let mut backoff = Duration::from_millis(100);
    loop {
        match store.pubsub().await {
            Ok(mut pubsub) => match pubsub.subscribe(&channel).await {
                Ok(()) => {
                    backoff = Duration::from_millis(100);
                    // Anything published while unsubscribed: look now.
                    rung.notify_one();
                    let mut messages = pubsub.on_message();
                    while messages.next().await.is_some() {
                        rung.notify_one();
                    }
                    tracing::warn!("promote subscription ended; resubscribing");
                }
                Err(err) => tracing::warn!("cannot subscribe to {channel}: {err}"),
            },
            Err(err) => tracing::warn!("the promoter cannot connect for its subscription: {err}"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
