//! The cache a Rust user would write by hand in front of the same Redis, to compare the L2
//! hit against: the key is the SHA-256 of the request's `serde_json` bytes (no canonical
//! form, so field order or `1` vs `1.0` would make a new key), the value is the answer's
//! plain JSON stored with `SET key json EX ttl`, and a hit is a `GET` and
//! `serde_json::from_slice`. It skips what the real cache does on every hit (canonical key,
//! envelope and checksum, deadline and breaker, single-flight, metrics), and that is the point.

use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use sha2::{Digest, Sha256};

use llm_cache::{ChatRequest, ChatResponse};

/// A plain Redis-backed answer cache on one multiplexed connection, shared by all callers.
#[derive(Clone)]
pub struct HandWrittenCache {
    conn: MultiplexedConnection,
    prefix: &'static str,
    ttl_secs: u64,
}

impl HandWrittenCache {
    pub fn new(conn: MultiplexedConnection, prefix: &'static str, ttl_secs: u64) -> Self {
        HandWrittenCache {
            conn,
            prefix,
            ttl_secs,
        }
    }

    /// `{prefix}{hex SHA-256 of the request's JSON}`, as `hex::encode` would write it.
    pub fn key(&self, request: &ChatRequest) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let json = serde_json::to_vec(request).expect("a request serializes");
        let digest = Sha256::digest(&json);
        let mut key = String::with_capacity(self.prefix.len() + 64);
        key.push_str(self.prefix);
        for b in digest {
            key.push(HEX[usize::from(b >> 4)] as char);
            key.push(HEX[usize::from(b & 0xf)] as char);
        }
        key
    }

    /// The stored answer, or `None` when there is none (or it no longer parses).
    pub async fn get(&self, request: &ChatRequest) -> redis::RedisResult<Option<ChatResponse>> {
        let mut conn = self.conn.clone();
        let bytes: Option<Vec<u8>> = conn.get(self.key(request)).await?;
        Ok(bytes.and_then(|b| serde_json::from_slice(&b).ok()))
    }

    pub async fn set(
        &self,
        request: &ChatRequest,
        answer: &ChatResponse,
    ) -> redis::RedisResult<()> {
        let json = serde_json::to_vec(answer).expect("an answer serializes");
        let mut conn = self.conn.clone();
        conn.set_ex(self.key(request), json, self.ttl_secs).await
    }
}
