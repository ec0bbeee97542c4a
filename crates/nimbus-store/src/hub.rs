//! Live fan-out of committed events to watchers.
//!
//! The hub is called by the backend right after each commit, in revision order, while
//! the backend still serialises writes, so every subscriber sees events in the order they
//! were committed. Sending never blocks: a subscriber whose channel is full is dropped
//! and told (through [`LagSignal`]) where its stream stopped, so the watcher can end with
//! `Compacted` instead of silently skipping events.

use std::sync::{Arc, OnceLock};

use tokio::sync::mpsc;

use crate::{Event, Revision, StoreError};

/// Where a lagging subscriber's stream stopped.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Lag {
    /// Revision of the first event the subscriber did not receive.
    pub first_missed_revision: Revision,
    /// Store revision when the subscriber was dropped.
    pub head_revision: Revision,
}

impl Lag {
    pub fn into_error(self) -> StoreError {
        StoreError::Compacted {
            requested: self.first_missed_revision - 1,
            compacted: self.head_revision,
        }
    }
}

/// Set once by the hub when it drops a subscriber for falling behind.
pub(crate) type LagSignal = Arc<OnceLock<Lag>>;

struct Subscriber {
    prefix: String,
    /// Events are shared, not copied, across subscribers: a commit costs one
    /// copy however many watch it, and an idle subscriber's channel holds
    /// pointers, not whole events.
    sender: mpsc::Sender<Arc<Event>>,
    lag: LagSignal,
}

/// The receiving side of a live subscription.
pub(crate) struct LiveSubscription {
    pub events: mpsc::Receiver<Arc<Event>>,
    /// Set when the hub dropped this subscription because its channel was full; the
    /// channel then closes after the events it already holds.
    pub lag: LagSignal,
}

#[derive(Default)]
pub(crate) struct WatchHub {
    subscribers: Vec<Subscriber>,
}

impl WatchHub {
    pub fn subscribe(&mut self, prefix: &str, capacity: usize) -> LiveSubscription {
        self.remove_closed();
        let (sender, events) = mpsc::channel(capacity.max(1));
        let lag = LagSignal::default();
        self.subscribers.push(Subscriber {
            prefix: prefix.to_string(),
            sender,
            lag: lag.clone(),
        });
        LiveSubscription { events, lag }
    }

    /// Delivers the events of one commit (all at `head_revision`) to matching subscribers.
    pub fn publish(&mut self, events: &[Event], head_revision: Revision) {
        if self.subscribers.is_empty() {
            return;
        }
        let events: Vec<Arc<Event>> = events.iter().cloned().map(Arc::new).collect();
        self.subscribers.retain(|subscriber| {
            for event in &events {
                if !event.kv.key.starts_with(&subscriber.prefix) {
                    continue;
                }
                match subscriber.sender.try_send(Arc::clone(event)) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        tracing::warn!(
                            prefix = %subscriber.prefix,
                            revision = event.revision(),
                            "watcher fell too far behind; ending its stream with Compacted"
                        );
                        let _ = subscriber.lag.set(Lag {
                            first_missed_revision: event.revision(),
                            head_revision,
                        });
                        return false;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return false,
                }
            }
            !subscriber.sender.is_closed()
        });
    }

    pub fn len(&self) -> usize {
        self.subscribers.len()
    }

    pub fn remove_closed(&mut self) {
        self.subscribers
            .retain(|subscriber| !subscriber.sender.is_closed());
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{EventKind, KeyValue};

    /// A put of `key` at `revision`, for tests of the fan-out.
    pub(crate) fn put(key: &str, revision: Revision) -> Event {
        Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: key.to_string(),
                value: b"v".to_vec(),
                create_revision: revision,
                mod_revision: revision,
            },
            prev: None,
        }
    }

    #[test]
    fn full_subscriber_is_dropped_with_lag_and_keeps_what_it_received() {
        let mut hub = WatchHub::default();
        let mut live = hub.subscribe("/a/", 2);
        for revision in 1..=3 {
            hub.publish(&[put("/a/x", revision)], revision);
        }
        assert_eq!(hub.len(), 0);
        assert_eq!(live.events.try_recv().map(|e| e.revision()).ok(), Some(1));
        assert_eq!(live.events.try_recv().map(|e| e.revision()).ok(), Some(2));
        assert!(live.events.try_recv().is_err());
        let lag = live.lag.get().copied();
        assert_eq!(lag.map(|l| l.first_missed_revision), Some(3));
    }

    #[test]
    fn dropped_receivers_are_removed() {
        let mut hub = WatchHub::default();
        let live = hub.subscribe("/a/", 4);
        let _other = hub.subscribe("/b/", 4);
        drop(live);
        hub.remove_closed();
        assert_eq!(hub.len(), 1);
    }
}
