//! One subscription to one channel on one Redis node, with a liveness check: a connection
//! that closes, or that leaves a ping unanswered for too long, ends the subscription, so
//! the owner knows it may have missed messages. It never reconnects by itself.

use std::time::Duration;

use futures_util::StreamExt;
use redis::Client;
use redis::aio::{PubSubSink, PubSubStream};

use super::L2Error;

/// Quiet time after which the connection is pinged.
const PING_INTERVAL: Duration = Duration::from_secs(5);
/// A ping unanswered this long ends the subscription. Generous on purpose: a Redis that
/// stalls for a few seconds loses no messages (they queue), and ending the subscription
/// costs every instance its L1.
const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// A live subscription. Dropping it closes the connection.
#[doc(hidden)]
pub struct Subscription {
    sink: PubSubSink,
    stream: PubSubStream,
    /// When the connection was last heard from: kept here rather than in a timer of
    /// `next()`, so an owner that drops `next()` to do something else (a periodic check)
    /// does not restart the quiet time and never pings.
    heard_at: tokio::time::Instant,
}

impl Subscription {
    /// Connect to `client`'s node and subscribe to `channel`, all within `timeout`.
    pub async fn open(client: &Client, channel: &str, timeout: Duration) -> Result<Self, L2Error> {
        let subscribe = async {
            let (mut sink, stream) = client.get_async_pubsub().await?.split();
            sink.subscribe(channel).await?;
            Ok::<_, redis::RedisError>(Subscription {
                sink,
                stream,
                heard_at: tokio::time::Instant::now(),
            })
        };
        match tokio::time::timeout(timeout, subscribe).await {
            Ok(Ok(s)) => Ok(s),
            // The server answered with a refusal (NOPERM: the ACL user may not SUBSCRIBE, or
            // not on this channel): a command error, so the owner can say so.
            Ok(Err(e)) if super::refused_by_server(&e) => {
                Err(L2Error::Command(super::reply_text(&e)))
            }
            Ok(Err(e)) => Err(L2Error::Connection(e.to_string())),
            Err(_) => Err(L2Error::Connection(format!(
                "subscribing took longer than {timeout:?}"
            ))),
        }
    }

    /// The next message's payload; `None` once the subscription is lost. Cancel-safe: a
    /// dropped call loses no message and keeps the time since the connection was heard.
    pub async fn next(&mut self) -> Option<Vec<u8>> {
        loop {
            tokio::select! {
                msg = self.stream.next() => {
                    self.heard_at = tokio::time::Instant::now();
                    return msg.map(|m| m.get_payload_bytes().to_vec());
                }
                () = tokio::time::sleep_until(self.heard_at + PING_INTERVAL) => {
                    let ping = self.sink.ping::<redis::Value>();
                    match tokio::time::timeout(PING_TIMEOUT, ping).await {
                        Ok(Ok(_)) => self.heard_at = tokio::time::Instant::now(),
                        _ => return None,
                    }
                }
            }
        }
    }
}
