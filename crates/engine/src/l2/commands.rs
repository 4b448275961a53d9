//! The cache's own commands, each written once for every topology: entries (GET, SET PX,
//! UNLINK), the lookup that takes a lease when the entry is missing (`SET NX PX GET`),
//! lease renew/release (scripts, with a fallback for users without EVAL), the waiters'
//! check of a stale marker, namespace generations, publish. Each builds its command, runs
//! it through the guard ([`Guarded::attempt`]) and reads the reply as the cache needs it.
//! None of them retries.

use std::sync::LazyLock;
use std::time::Duration;

use redis::{Cmd, FromRedisValue, RedisResult, Script};

use super::guard::{L2Read, LeaseRead, NoAnswer, Path};
use super::{Connection, Guarded, L2Error};
use crate::keyspace::INCARNATION_FIELD;
use crate::stats::Counters;

/// Delete the lease only if the key still holds our marker: a late release must never free
/// a lease that expired and was taken by another instance, nor delete a value written since.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end",
    )
});

/// Set a namespace's generation and announce it in one step, so that the announcements
/// reach every subscriber in the order the generations were set. A record that was lost
/// gets a fresh incarnation in the same step (never the caller's old one: that would bring
/// back the other namespaces' pre-purge entries); the reply is the record's incarnation.
static SET_GENERATION: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "redis.call('hsetnx', KEYS[1], ARGV[5], ARGV[6]) redis.call('hset', KEYS[1], ARGV[1], ARGV[2]) redis.call('publish', ARGV[3], ARGV[4]) return redis.call('hget', KEYS[1], ARGV[5])",
    )
});

/// Extend the lease only if it still holds our token.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end",
    )
});

fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl Guarded {
    /// `cmd`, under the guard, its reply read as `T`.
    async fn query<T: FromRedisValue>(
        &self,
        op: &'static str,
        key: Option<&str>,
        path: Path,
        cmd: Cmd,
    ) -> Result<T, NoAnswer> {
        let query = |mut c: Connection| async move { cmd.query_async(&mut c).await };
        self.attempt(op, key, path, query).await
    }

    /// `GET key`.
    pub(crate) async fn get(&self, key: &str) -> L2Read {
        match self
            .query("get", Some(key), Path::Request, Cmd::get(key))
            .await
        {
            Ok(Some(bytes)) => L2Read::Hit(bytes),
            Ok(None) => L2Read::Miss,
            Err(_) => L2Read::Unavailable,
        }
    }

    /// Many `GET`s at once: one `MGET` per group of [`Store::by_node`](super::Store::by_node)
    /// (one for a single server, one per node for a Cluster, where the client splits it by
    /// slot on that node), the groups at once, each under the guard and the L2 deadline.
    /// One read per key, in order; a group that got no answer reads `Unavailable`.
    pub(crate) async fn get_many(&self, keys: &[String]) -> Vec<L2Read> {
        if keys.is_empty() {
            return Vec::new();
        }
        let groups = self.store().by_node(keys);
        let reads = groups.iter().map(|group| async move {
            let names: Vec<&str> = group.iter().map(|&i| keys[i].as_str()).collect();
            let got: Result<Vec<Option<Vec<u8>>>, NoAnswer> = self
                .query("mget", Some(names[0]), Path::Request, Cmd::mget(&names))
                .await;
            let reads: Vec<L2Read> = match got {
                Ok(values) if values.len() == group.len() => values
                    .into_iter()
                    .map(|v| v.map_or(L2Read::Miss, L2Read::Hit))
                    .collect(),
                _ => group.iter().map(|_| L2Read::Unavailable).collect(),
            };
            reads
        });
        let mut out: Vec<L2Read> = keys.iter().map(|_| L2Read::Unavailable).collect();
        for (group, reads) in groups
            .iter()
            .zip(futures_util::future::join_all(reads).await)
        {
            for (&i, read) in group.iter().zip(reads) {
                out[i] = read;
            }
        }
        out
    }

    /// `SET key value PX ttl` under the L2 deadline; false when it was not written. A write
    /// the server refused (OOM under `noeviction`...) is counted in `l2_writes_refused`.
    pub async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> bool {
        matches!(self.write(key, value, ttl, Path::Request).await, Some(true))
    }

    /// [`set`](Self::set) off every request's path: under the
    /// [`background_deadline`](Self::background_deadline), and a timeout does not open the
    /// breaker (the writes behind). `None` when it was not sent or got no answer in time
    /// (worth another try later), `Some(false)` when the server refused it.
    pub(crate) async fn set_in_background(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Option<bool> {
        let path = Path::Background(self.background_deadline());
        self.write(key, value, ttl, path).await
    }

    async fn write(&self, key: &str, value: Vec<u8>, ttl: Duration, path: Path) -> Option<bool> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value).arg("PX").arg(millis(ttl));
        match self.query::<()>("set", Some(key), path, cmd).await {
            Ok(()) => Some(true),
            Err(NoAnswer::Refused) => {
                Counters::incr(&self.counters.l2_writes_refused);
                Some(false)
            }
            Err(NoAnswer::Skipped | NoAnswer::Failed) => None,
        }
    }

    /// `UNLINK key`; false when Redis did not answer.
    pub async fn unlink(&self, key: &str) -> bool {
        let cmd = Cmd::unlink(key);
        self.query::<()>("unlink", Some(key), Path::Request, cmd)
            .await
            .is_ok()
    }

    /// `PING` under the deadline and the breaker (for `health()`); counted like any operation.
    pub(crate) async fn ping(&self) -> bool {
        let ping = super::inspect::ping::<Connection>;
        self.attempt("ping", None, Path::Request, ping)
            .await
            .is_ok()
    }

    /// `PUBLISH channel message`; false when Redis did not answer.
    pub(crate) async fn publish(&self, channel: &str, message: &[u8]) -> bool {
        // Classic PUBLISH reaches subscribers on every node of a cluster: any node will do.
        let cmd = Cmd::publish(channel, message);
        self.query::<()>("publish", None, Path::Request, cmd)
            .await
            .is_ok()
    }

    /// The lookup that takes the lease when the entry is missing: `SET key marker NX PX ttl
    /// GET` (Redis 7.0 or later), in the entry's own key. One command, so a lookup that
    /// misses has taken the lease in the same round trip, and a hit costs the server about
    /// what a `GET` does (no script). After a lookup the server refused (OOM under
    /// `noeviction`, which refuses every `SET`; NOPERM; a server older than 7.0, which does
    /// not know `NX` with `GET`) the caller reads with a plain `GET` and fetches without a
    /// lease (counted in `leases_refused`), so for that key single-flight holds per
    /// instance, not across instances.
    pub(crate) async fn get_or_lease(&self, key: &str, marker: &[u8], ttl: Duration) -> LeaseRead {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key)
            .arg(marker)
            .arg("NX")
            .arg("PX")
            .arg(millis(ttl))
            .arg("GET");
        match self.query("get", Some(key), Path::Request, cmd).await {
            Ok(Some(bytes)) => LeaseRead::Found(bytes),
            Ok(None) => LeaseRead::Leased,
            // Counted by the caller, once per flight that goes on without a lease.
            Err(NoAnswer::Refused) => LeaseRead::Refused,
            Err(NoAnswer::Skipped | NoAnswer::Failed) => LeaseRead::Unavailable,
        }
    }

    /// Release the lease at `key` if it holds `token` (compare-and-delete), in the
    /// background: under the background deadline, its timeouts do not open the breaker.
    /// True when the key held `token` and is now gone; `None`: no answer. Without the right
    /// to run scripts, a `GET` then a `DEL` when it still holds `token`: not atomic, but the
    /// key can only change in between if the lease expires in that round trip or a refresh
    /// writes over it, and then what is lost is one entry or one lease (a miss, one more
    /// fetch), never an answer under the wrong key.
    pub(crate) async fn release(&self, key: &str, token: &[u8]) -> Option<bool> {
        let path = Path::Background(self.background_deadline());
        let release = |mut c: Connection| async move {
            match RELEASE.key(key).arg(token).invoke_async(&mut c).await {
                Err(e) if scripts_refused(&e) => {
                    let now: Option<Vec<u8>> = Cmd::get(key).query_async(&mut c).await?;
                    if now.as_deref() != Some(token) {
                        return Ok(false);
                    }
                    Cmd::del(key)
                        .query_async::<u64>(&mut c)
                        .await
                        .map(|n| n == 1)
                }
                done => done.map(|n: u64| n == 1),
            }
        };
        self.attempt("release", Some(key), path, release).await.ok()
    }

    /// Extend the lease at `key` to `ttl` if it holds `token` (compare-and-pexpire), in the
    /// background, under a deadline of a third of `ttl` (the next renewal is due then) at
    /// most. True when it did; `None`: no answer. Without the right to run scripts, `GET`
    /// and `PEXPIRE key ttl GT` in one round trip: `GT` only ever lengthens a life, so it
    /// cannot shorten an entry written over the marker (entries live far longer than a
    /// lease) and at worst extends another holder's lease by one renewal; the `GET` says
    /// whether the lease is still ours.
    pub(crate) async fn renew(&self, key: &str, token: &[u8], ttl: Duration) -> Option<bool> {
        let deadline = self.background_deadline().min(ttl / 3).max(self.deadline);
        let ms = millis(ttl);
        let renew = |mut c: Connection| async move {
            match RENEW.key(key).arg(token).arg(ms).invoke_async(&mut c).await {
                Err(e) if scripts_refused(&e) => {
                    let mut pipe = redis::pipe();
                    pipe.get(key).cmd("PEXPIRE").arg(key).arg(ms).arg("GT");
                    let (now, _): (Option<Vec<u8>>, u64) = pipe.query_async(&mut c).await?;
                    Ok(now.as_deref() == Some(token))
                }
                done => done.map(|n: u64| n == 1),
            }
        };
        let path = Path::Background(deadline);
        self.attempt("renew", Some(key), path, renew).await.ok()
    }

    /// A waiter's check of the lease marker it waits on, so that no marker outlives its
    /// lease: a key with no expiry gets one of 1 ms (`PEXPIRE NX` touches nothing else:
    /// entries and markers are always written with one), and a marker (`is_marker`) that
    /// lives longer than `ttl` (by a quarter) is cut to `ttl` (`PEXPIRE LT`). True when it
    /// changed one (counted in `stale_leases_expired`).
    pub(crate) async fn expire_stale_marker(
        &self,
        key: &str,
        ttl: Duration,
        is_marker: fn(&[u8]) -> bool,
    ) -> bool {
        let ms = millis(ttl);
        let expire = |mut c: Connection| async move {
            let mut pipe = redis::pipe();
            pipe.cmd("PEXPIRE")
                .arg(key)
                .arg(1)
                .arg("NX")
                .get(key)
                .pttl(key);
            let (had_none, now, pttl): (u64, Option<Vec<u8>>, i64) =
                pipe.query_async(&mut c).await?;
            if had_none == 1 {
                return Ok(true);
            }
            let too_long = u64::try_from(pttl).is_ok_and(|left| left > ms + ms / 4);
            if !(too_long && now.as_deref().is_some_and(is_marker)) {
                return Ok(false);
            }
            let cut = redis::cmd("PEXPIRE").arg(key).arg(ms).arg("LT").to_owned();
            cut.query_async::<u64>(&mut c).await.map(|n| n == 1)
        };
        let attempt = self.attempt("expire_stale_marker", Some(key), Path::Request, expire);
        let changed = attempt.await.unwrap_or(false);
        if changed {
            Counters::incr(&self.counters.stale_leases_expired);
        }
        changed
    }

    /// `HSETNX key <incarnation> fresh`, `HSET key field value` and `PUBLISH channel
    /// message`, atomically (one script, [`SET_GENERATION`]); the record's incarnation
    /// after it (0 if unreadable), `None` when Redis did not answer.
    pub(crate) async fn hset_publish(
        &self,
        key: &str,
        field: &[u8],
        value: u64,
        channel: &str,
        message: &[u8],
        fresh: u64,
    ) -> Option<u64> {
        let op = |mut c: Connection| async move {
            let mut script = SET_GENERATION.key(key);
            script.arg(field).arg(value).arg(channel).arg(message);
            script.arg(INCARNATION_FIELD).arg(fresh);
            script.invoke_async::<Option<String>>(&mut c).await
        };
        let incarnation = self.attempt("hset_publish", Some(key), Path::Request, op);
        let incarnation = incarnation.await.ok()?;
        Some(incarnation.and_then(|s| s.parse().ok()).unwrap_or(0))
    }

    /// The generations record: `HSETNX key <incarnation> fresh` (so a missing record
    /// starts a new incarnation, and concurrent creators agree on the first), then in the
    /// same round trip every field (`all`) or only the incarnation; fields whose value is
    /// not a counter are skipped. No script: a user without EVAL can still load. Under
    /// `deadline`, outside the breaker: it runs in the background, retried by its owner,
    /// and must not starve behind request traffic that keeps the breaker open on a slow
    /// link. Failures are noted for `health()` and refusals warned about, like any
    /// operation's.
    pub(crate) async fn load_generations(
        &self,
        key: &str,
        fresh: u64,
        all: bool,
        deadline: Duration,
    ) -> Option<Vec<(Vec<u8>, u64)>> {
        let op = "load_generations";
        let load = |mut c: Connection| async move {
            let mut pipe = redis::pipe();
            pipe.hset_nx(key, INCARNATION_FIELD, fresh).ignore();
            let pairs: Vec<(Vec<u8>, Vec<u8>)> = if all {
                let (pairs,) = pipe.hgetall(key).query_async(&mut c).await?;
                pairs
            } else {
                let (value,): (Option<Vec<u8>>,) = pipe
                    .hget(key, INCARNATION_FIELD)
                    .query_async(&mut c)
                    .await?;
                value.map_or_else(Vec::new, |v| vec![(INCARNATION_FIELD.to_vec(), v)])
            };
            let counter =
                |(f, v): (Vec<u8>, Vec<u8>)| Some((f, std::str::from_utf8(&v).ok()?.parse().ok()?));
            RedisResult::Ok(pairs.into_iter().filter_map(counter).collect())
        };
        let run = self.store().run(Some(key), load);
        match tokio::time::timeout(deadline, run).await {
            Ok(Ok(v)) => {
                self.mark_reachable();
                Some(v)
            }
            Ok(Err(L2Error::NotConnected)) => None,
            Ok(Err(e)) => {
                let why = e.to_string();
                self.counters.note_l2_error(op, &why);
                if matches!(e, L2Error::Command(_)) {
                    self.warn_refused(op, &why);
                }
                None
            }
            Err(_) => {
                let why = format!("no answer within {deadline:?}");
                self.counters.note_l2_error(op, &why);
                None
            }
        }
    }
}

/// Whether `e` says this user may not run scripts (an ACL without `+eval`/`+evalsha`).
fn scripts_refused(e: &redis::RedisError) -> bool {
    e.code() == Some("NOPERM")
}
