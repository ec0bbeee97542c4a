//! Waiting for one resource to reach a state: read it once, then follow
//! its collection's watch stream from that revision, so a command returns
//! the moment the change is stored instead of at the next poll.

use std::time::Duration;

use futures::StreamExt;
use nimbus_api::client::{Client, ClientError};
use nimbus_api::resources::Object;
use nimbus_api::{ErrorCode, WatchEvent, WatchEventType};

/// How a wait ended.
pub enum Waited<T> {
    /// The resource reached the state; as it was then.
    Done(T),
    /// The resource was deleted (or never existed).
    Gone,
    /// The deadline passed; the resource as last seen.
    TimedOut(T),
}

/// Pause before watching again after a stream ended without an error
/// (history compacted, the server closed it): the new read answers for
/// everything in between, this only keeps a misbehaving server from
/// being asked in a tight loop.
const REWATCH_PAUSE: Duration = Duration::from_millis(100);

/// Wait until `done` holds for resource `name` of `collection` (a list
/// path such as `/v1/projects/p/instances`). `known` is the resource as a
/// call just returned it, which saves the first read.
pub async fn until<T: Object>(
    client: &Client,
    collection: &str,
    name: &str,
    known: Option<T>,
    timeout: Duration,
    done: impl Fn(&T) -> bool,
) -> Result<Waited<T>, ClientError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut current = known;
    loop {
        let seen = match current.take() {
            Some(o) => o,
            None => match client.get::<T>(&format!("{collection}/{name}")).await {
                Ok(o) => o,
                Err(e) if e.code() == Some(ErrorCode::NotFound) => return Ok(Waited::Gone),
                Err(e) => return Err(e),
            },
        };
        if done(&seen) {
            return Ok(Waited::Done(seen));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(Waited::TimedOut(seen));
        }
        // Every change after the revision read is on the stream, so
        // nothing between the read and the watch is missed.
        let url = format!(
            "{collection}?watch=true&revision={}",
            seen.metadata().revision
        );
        let events = match tokio::time::timeout_at(
            deadline,
            client.watch_lines::<WatchEvent<T>>(&url),
        )
        .await
        {
            Err(_) => return Ok(Waited::TimedOut(seen)),
            Ok(events) => events?,
        };
        let mut events = Box::pin(events);
        let mut last = seen;
        loop {
            let event = match tokio::time::timeout_at(deadline, events.next()).await {
                Err(_) => return Ok(Waited::TimedOut(last)),
                Ok(None) => break,
                Ok(Some(event)) => event?,
            };
            if event.event_type == WatchEventType::Error {
                break;
            }
            let Some(object) = event.object else {
                continue;
            };
            if object.metadata().name != name {
                continue;
            }
            if event.event_type == WatchEventType::Deleted {
                return Ok(Waited::Gone);
            }
            if done(&object) {
                return Ok(Waited::Done(object));
            }
            last = object;
        }
        current = None;
        tokio::time::sleep(REWATCH_PAUSE).await;
    }
}
