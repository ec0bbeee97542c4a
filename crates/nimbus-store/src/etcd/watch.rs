//! Watches over etcd watches, resumed across disconnects and leader changes.
//!
//! One task per watcher reads the etcd watch stream and forwards events. etcd delivers
//! all events of a revision in one response, so the task remembers the last revision
//! it forwarded; when the stream breaks (member killed, leader change, network), it
//! opens a new etcd watch from that revision + 1 on whichever member answers: no
//! revision is skipped and none is sent twice.

use std::time::Duration;

use etcd_client::{EventType, GetOptions, WatchOptions, WatchResponse};
use tokio::sync::mpsc;

use super::keys::{etcd_revision, store_revision, Namespace};
use super::EtcdStore;
use crate::{Event, EventKind, KeyValue, Result, Revision, StoreError, WatchStream};

/// Longest pause between attempts to re-open a broken watch.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(1);

/// Opens a watch of `prefix` for events after `after_revision`.
pub(super) async fn start(
    store: &EtcdStore,
    prefix: &str,
    after_revision: Revision,
) -> Result<WatchStream> {
    // etcd refuses to read below its compaction point: reading at the last revision
    // the caller already has tells whether every later event is still available
    // (etcd itself would still start a watch one revision earlier).
    if after_revision > 0 {
        let options = GetOptions::new()
            .with_count_only()
            .with_revision(etcd_revision(after_revision));
        let mut kv = store.client.kv_client();
        match kv.get(store.ns.etcd_key(""), Some(options)).await {
            Ok(_) => {}
            Err(etcd_client::Error::GRpcStatus(status))
                if status.message().contains("compacted") =>
            {
                return Err(StoreError::Compacted {
                    requested: after_revision,
                    compacted: compacted_revision(store).await?,
                });
            }
            // A revision beyond the current one: nothing after it is compacted.
            Err(etcd_client::Error::GRpcStatus(status))
                if status.message().contains("future revision") => {}
            Err(err) => return Err(store.error("read the watch's start revision", err)),
        }
    }
    let (start, end) = store.ns.prefix_range(prefix);
    let mut watcher = Forwarder {
        client: store.client.clone(),
        ns: store.ns.clone(),
        endpoints: store.endpoints.clone(),
        start,
        end,
        next_etcd_revision: etcd_revision(after_revision.max(0)) + 1,
    };
    let (first, stream) = watcher
        .open()
        .await
        .map_err(|err| store.error("open a watch", err))?;
    // One slot more than the advertised capacity, kept for the final Compacted.
    let (sender, receiver) = mpsc::channel(crate::WATCH_CHANNEL_CAPACITY + 1);
    tokio::spawn(async move { watcher.run(first, stream, sender).await });
    Ok(receiver)
}

/// The store revision history is compacted to, from the compact revision etcd reports
/// to a watch that starts before it.
async fn compacted_revision(store: &EtcdStore) -> Result<Revision> {
    let mut client = store.client.watch_client();
    let options = WatchOptions::new().with_start_revision(1);
    let (_watcher, mut stream) = client
        .watch(store.ns.etcd_key("\u{0}compaction-probe"), Some(options))
        .await
        .map_err(|err| store.error("find the compacted revision", err))?;
    let wait = async {
        loop {
            match stream.message().await {
                Ok(Some(response)) if response.compact_revision() > 0 => {
                    return Ok(store_revision(response.compact_revision()))
                }
                Ok(Some(_)) => continue,
                Ok(None) => return Ok(0),
                Err(err) => return Err(store.error("find the compacted revision", err)),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or(Ok(0))
}

struct Forwarder {
    client: etcd_client::Client,
    ns: Namespace,
    endpoints: String,
    start: Vec<u8>,
    end: Vec<u8>,
    /// The etcd revision of the first event not yet forwarded.
    next_etcd_revision: i64,
}

type EtcdWatch = (etcd_client::Watcher, etcd_client::WatchStream);

enum Outcome {
    /// The caller dropped its stream, or the watch ended for good.
    Done,
    /// The etcd stream broke: re-open it from `next_etcd_revision`.
    Broken,
}

impl Forwarder {
    async fn open(&mut self) -> std::result::Result<EtcdWatch, etcd_client::Error> {
        let options = WatchOptions::new()
            .with_range(self.end.clone())
            .with_start_revision(self.next_etcd_revision)
            .with_prev_key();
        self.client
            .watch_client()
            .watch(self.start.clone(), Some(options))
            .await
    }

    async fn run(
        &mut self,
        mut watcher: etcd_client::Watcher,
        mut stream: etcd_client::WatchStream,
        sender: mpsc::Sender<Result<Event>>,
    ) {
        let mut delay = Duration::from_millis(50);
        loop {
            match self.forward(&mut stream, &sender).await {
                Outcome::Done => {
                    let _ = watcher.cancel().await;
                    return;
                }
                Outcome::Broken => {}
            }
            // Re-open on any member that answers, until the caller gives up.
            loop {
                if sender.is_closed() {
                    return;
                }
                match self.open().await {
                    Ok((new_watcher, new_stream)) => {
                        tracing::info!(endpoints = %self.endpoints, from_revision = store_revision(self.next_etcd_revision), "etcd watch resumed");
                        watcher = new_watcher;
                        stream = new_stream;
                        delay = Duration::from_millis(50);
                        break;
                    }
                    Err(err) => {
                        tracing::warn!(endpoints = %self.endpoints, %err, "re-opening an etcd watch failed; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = sender.closed() => return,
                        }
                        delay = (delay * 2).min(MAX_RETRY_DELAY);
                    }
                }
            }
        }
    }

    async fn forward(
        &mut self,
        stream: &mut etcd_client::WatchStream,
        sender: &mpsc::Sender<Result<Event>>,
    ) -> Outcome {
        loop {
            let message = tokio::select! {
                message = stream.message() => message,
                _ = sender.closed() => return Outcome::Done,
            };
            let response = match message {
                Ok(Some(response)) => response,
                Ok(None) => return Outcome::Broken,
                Err(err) => {
                    tracing::warn!(endpoints = %self.endpoints, %err, "etcd watch broke; resuming");
                    return Outcome::Broken;
                }
            };
            if response.compact_revision() > 0 {
                let _ = sender.try_send(Err(StoreError::Compacted {
                    requested: store_revision(self.next_etcd_revision - 1).max(0),
                    compacted: store_revision(response.compact_revision()),
                }));
                return Outcome::Done;
            }
            if response.canceled() {
                tracing::warn!(endpoints = %self.endpoints, reason = response.cancel_reason(), "etcd cancelled a watch; resuming");
                return Outcome::Broken;
            }
            if !self.deliver(&response, sender) {
                return Outcome::Done;
            }
        }
    }

    /// Forwards one response's events, never blocking: a caller that stopped reading
    /// gets Compacted in the slot kept for it, and the watch ends. False when the watch
    /// is over.
    fn deliver(&mut self, response: &WatchResponse, sender: &mpsc::Sender<Result<Event>>) -> bool {
        let head = response.header().map(|h| h.revision()).unwrap_or(0);
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let revision = kv.mod_revision();
            // A resumed watch repeats nothing already forwarded.
            if revision < self.next_etcd_revision {
                continue;
            }
            if sender.capacity() <= 1 {
                tracing::warn!(endpoints = %self.endpoints, revision = store_revision(revision), "watcher fell too far behind; ending its stream with Compacted");
                let _ = sender.try_send(Err(StoreError::Compacted {
                    requested: store_revision(revision) - 1,
                    compacted: store_revision(head.max(revision)),
                }));
                return false;
            }
            let converted = self.event(event.event_type(), kv, event.prev_kv());
            if sender.try_send(Ok(converted)).is_err() {
                return false;
            }
        }
        if let Some(last) = response.events().last().and_then(|e| e.kv()) {
            self.next_etcd_revision = self.next_etcd_revision.max(last.mod_revision() + 1);
        }
        true
    }

    fn kv(&self, kv: &etcd_client::KeyValue) -> KeyValue {
        KeyValue {
            key: self.ns.store_key(kv.key()),
            value: kv.value().to_vec(),
            create_revision: store_revision(kv.create_revision()),
            mod_revision: store_revision(kv.mod_revision()),
        }
    }

    fn event(
        &self,
        kind: EventType,
        kv: &etcd_client::KeyValue,
        prev: Option<&etcd_client::KeyValue>,
    ) -> Event {
        let prev = prev.map(|prev| self.kv(prev));
        match kind {
            EventType::Put => Event {
                kind: EventKind::Put,
                kv: self.kv(kv),
                prev,
            },
            EventType::Delete => {
                // etcd's delete event carries only the key and the delete's revision;
                // the trait's carries the deleted value.
                let mut deleted = prev.clone().unwrap_or_else(|| self.kv(kv));
                deleted.mod_revision = store_revision(kv.mod_revision());
                Event {
                    kind: EventKind::Delete,
                    kv: deleted,
                    prev,
                }
            }
        }
    }
}
