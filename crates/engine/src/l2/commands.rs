//! The exact commands the cache sends, written once for every store (one server, a
//! Sentinel master, a Cluster): entries (GET, SET PX, UNLINK), the lookup that takes a
//! lease when the entry is missing (`SET NX PX GET`), lease renew/release, namespace
//! generations, publish. Each runs on any async connection; none of them retries.

use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{RedisResult, Script};

use crate::keyspace::INCARNATION_FIELD;

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

pub(crate) fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// `GET key`.
pub(crate) async fn get<C: ConnectionLike>(c: &mut C, key: &str) -> RedisResult<Option<Vec<u8>>> {
    redis::cmd("GET").arg(key).query_async(c).await
}

/// `SET key value PX ttl`.
pub(crate) async fn set<C: ConnectionLike>(
    c: &mut C,
    key: &str,
    value: Vec<u8>,
    ttl: Duration,
) -> RedisResult<()> {
    redis::cmd("SET")
        .arg(key)
        .arg(value)
        .arg("PX")
        .arg(millis(ttl))
        .query_async(c)
        .await
}

/// `UNLINK key`.
pub(crate) async fn unlink<C: ConnectionLike>(c: &mut C, key: &str) -> RedisResult<()> {
    redis::cmd("UNLINK").arg(key).query_async(c).await
}

/// `SET key marker NX PX ttl GET` (Redis 7.0 or later): the value at `key` when there is
/// one (set nothing then), or `None` when this call stored `marker` there. One command, so
/// a lookup that misses has taken the lease in the same round trip, and a hit costs the
/// server about what a `GET` does (no script).
pub(crate) async fn get_or_lease<C: ConnectionLike>(
    c: &mut C,
    key: &str,
    marker: &[u8],
    ttl: Duration,
) -> RedisResult<Option<Vec<u8>>> {
    redis::cmd("SET")
        .arg(key)
        .arg(marker)
        .arg("NX")
        .arg("PX")
        .arg(millis(ttl))
        .arg("GET")
        .query_async(c)
        .await
}

pub(crate) async fn exists<C: ConnectionLike>(c: &mut C, key: &str) -> RedisResult<bool> {
    let n: u64 = redis::cmd("EXISTS").arg(key).query_async(c).await?;
    Ok(n > 0)
}

/// Whether `e` says this user may not run scripts (an ACL without `+eval`/`+evalsha`).
fn scripts_refused(e: &redis::RedisError) -> bool {
    e.code() == Some("NOPERM")
}

/// Compare-and-delete: true when the key held `token` and is now gone. Without the right
/// to run scripts, a `GET` then a `DEL` when it still holds `token`: not atomic, but the
/// key can only change in between if the lease expires in that round trip or a refresh
/// writes over it, and then what is lost is one entry or one lease (a miss, one more
/// fetch), never an answer under the wrong key.
pub(crate) async fn release<C: ConnectionLike>(
    c: &mut C,
    key: &str,
    token: &[u8],
) -> RedisResult<bool> {
    match RELEASE.key(key).arg(token).invoke_async::<u64>(c).await {
        Ok(n) => Ok(n == 1),
        Err(e) if scripts_refused(&e) => {
            let now: Option<Vec<u8>> = get(c, key).await?;
            if now.as_deref() != Some(token) {
                return Ok(false);
            }
            let n: u64 = redis::cmd("DEL").arg(key).query_async(c).await?;
            Ok(n == 1)
        }
        Err(e) => Err(e),
    }
}

/// Compare-and-pexpire: true when the key held `token` and its life was extended. Without
/// the right to run scripts, `GET` and `PEXPIRE key ttl GT` in one round trip: `GT` only
/// ever lengthens a life, so it cannot shorten an entry written over the marker (entries
/// live far longer than a lease) and at worst extends another holder's lease by one
/// renewal; the `GET` says whether the lease is still ours.
pub(crate) async fn renew<C: ConnectionLike>(
    c: &mut C,
    key: &str,
    token: &[u8],
    ttl: Duration,
) -> RedisResult<bool> {
    match RENEW
        .key(key)
        .arg(token)
        .arg(millis(ttl))
        .invoke_async::<u64>(c)
        .await
    {
        Ok(n) => Ok(n == 1),
        Err(e) if scripts_refused(&e) => {
            let (now, _): (Option<Vec<u8>>, u64) = redis::pipe()
                .cmd("GET")
                .arg(key)
                .cmd("PEXPIRE")
                .arg(key)
                .arg(millis(ttl))
                .arg("GT")
                .query_async(c)
                .await?;
            Ok(now.as_deref() == Some(token))
        }
        Err(e) => Err(e),
    }
}

/// A waiter's check of the lease marker it waits on, so that no marker outlives its lease:
/// a key with no expiry gets one of 1 ms (`PEXPIRE NX` touches nothing else: entries and
/// markers are always written with one), and a marker (`is_marker`) that lives longer
/// than `ttl` (by a quarter) is cut to `ttl` (`PEXPIRE LT`). True when it changed one.
pub(crate) async fn expire_stale_marker<C: ConnectionLike>(
    c: &mut C,
    key: &str,
    ttl: Duration,
    is_marker: fn(&[u8]) -> bool,
) -> RedisResult<bool> {
    let (had_none, now, pttl): (u64, Option<Vec<u8>>, i64) = redis::pipe()
        .cmd("PEXPIRE")
        .arg(key)
        .arg(1)
        .arg("NX")
        .cmd("GET")
        .arg(key)
        .cmd("PTTL")
        .arg(key)
        .query_async(c)
        .await?;
    if had_none == 1 {
        return Ok(true);
    }
    let ttl_ms = millis(ttl);
    let too_long = u64::try_from(pttl).is_ok_and(|left| left > ttl_ms + ttl_ms / 4);
    if !(too_long && now.as_deref().is_some_and(is_marker)) {
        return Ok(false);
    }
    let n: u64 = redis::cmd("PEXPIRE")
        .arg(key)
        .arg(ttl_ms)
        .arg("LT")
        .query_async(c)
        .await?;
    Ok(n == 1)
}

pub(crate) async fn publish<C: ConnectionLike>(
    c: &mut C,
    channel: &str,
    message: &[u8],
) -> RedisResult<()> {
    redis::cmd("PUBLISH")
        .arg(channel)
        .arg(message)
        .query_async::<u64>(c)
        .await
        .map(drop)
}

/// `HSETNX key <incarnation> fresh`, `HSET key field value` and `PUBLISH channel message`,
/// atomically (one script); the record's incarnation after it (0 if unreadable).
pub(crate) async fn hset_publish<C: ConnectionLike>(
    c: &mut C,
    key: &str,
    field: &[u8],
    value: u64,
    channel: &str,
    message: &[u8],
    fresh: u64,
) -> RedisResult<u64> {
    let incarnation: Option<String> = SET_GENERATION
        .key(key)
        .arg(field)
        .arg(value)
        .arg(channel)
        .arg(message)
        .arg(INCARNATION_FIELD)
        .arg(fresh)
        .invoke_async(c)
        .await?;
    Ok(incarnation.and_then(|s| s.parse().ok()).unwrap_or(0))
}

/// The generations record: `HSETNX key <incarnation> fresh` (so a missing record starts a
/// new incarnation, and concurrent creators agree on the first), then in the same round
/// trip every field (`all`) or only the incarnation. Fields whose value is not a counter
/// are skipped. No script: a user without EVAL can still load.
pub(crate) async fn load_generations<C: ConnectionLike>(
    c: &mut C,
    key: &str,
    fresh: u64,
    all: bool,
) -> RedisResult<Vec<(Vec<u8>, u64)>> {
    let mut pipe = redis::pipe();
    pipe.cmd("HSETNX")
        .arg(key)
        .arg(INCARNATION_FIELD)
        .arg(fresh)
        .ignore();
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = if all {
        pipe.cmd("HGETALL").arg(key);
        let (pairs,): (Vec<(Vec<u8>, Vec<u8>)>,) = pipe.query_async(c).await?;
        pairs
    } else {
        pipe.cmd("HGET").arg(key).arg(INCARNATION_FIELD);
        let (value,): (Option<Vec<u8>>,) = pipe.query_async(c).await?;
        value
            .map(|v| (INCARNATION_FIELD.to_vec(), v))
            .into_iter()
            .collect()
    };
    Ok(pairs
        .into_iter()
        .filter_map(|(f, v)| {
            let n = std::str::from_utf8(&v).ok()?.parse().ok()?;
            Some((f, n))
        })
        .collect())
}

/// Add `field` to each hash of `KEYS` (one script: the keys must share a Cluster slot),
/// whose values all start with a 13-digit deadline in Unix milliseconds: keep at most
/// `ARGV[3]` fields per hash (dropping those past their deadline first, then those with
/// the earliest), and keep each hash alive as long as its latest deadline (`PEXPIRE NX`,
/// then `GT`: Redis 7.0; no per-field expiry needed).
static HSET_CAPPED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cap = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
for _, key in ipairs(KEYS) do
  redis.call('hset', key, ARGV[1], ARGV[2])
  if redis.call('hlen', key) > cap then
    local all = redis.call('hgetall', key)
    local live = {}
    for i = 1, #all, 2 do
      local deadline = tonumber(string.sub(all[i + 1], 1, 13)) or 0
      if deadline <= now then
        redis.call('hdel', key, all[i])
      else
        live[#live + 1] = {all[i], deadline}
      end
    end
    if #live > cap then
      table.sort(live, function(a, b) return a[2] < b[2] end)
      for i = 1, #live - cap do
        redis.call('hdel', key, live[i][1])
      end
    end
  end
  redis.call('pexpire', key, ARGV[5], 'NX')
  redis.call('pexpire', key, ARGV[5], 'GT')
end
return 1",
    )
});

/// The deadline prefix of the values `hset_capped` keeps: 13 decimal digits.
pub fn deadline_prefix(deadline_ms: u64) -> [u8; 13] {
    let mut out = [b'0'; 13];
    let mut n = deadline_ms.min(9_999_999_999_999);
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out
}

/// See [`HSET_CAPPED`]: `value` must start with [`deadline_prefix`].
pub(crate) async fn hset_capped<C: ConnectionLike>(
    c: &mut C,
    keys: &[String],
    field: &[u8],
    value: &[u8],
    cap: usize,
    now_ms: u64,
    ttl: Duration,
) -> RedisResult<()> {
    let mut invocation = HSET_CAPPED.prepare_invoke();
    for key in keys {
        invocation.key(key);
    }
    let _: i64 = invocation
        .arg(field)
        .arg(value)
        .arg(cap)
        .arg(now_ms)
        .arg(millis(ttl))
        .invoke_async(c)
        .await?;
    Ok(())
}

/// `HGETALL` of each key, in one pipeline (one round trip; in a Cluster the keys must
/// share a slot).
pub(crate) async fn hgetall_many<C: ConnectionLike>(
    c: &mut C,
    keys: &[String],
) -> RedisResult<Vec<Vec<(Vec<u8>, Vec<u8>)>>> {
    let mut pipe = redis::pipe();
    for key in keys {
        pipe.cmd("HGETALL").arg(key);
    }
    pipe.query_async(c).await
}

/// `MGET keys` (in a Cluster the keys must share a slot).
pub(crate) async fn mget<C: ConnectionLike>(
    c: &mut C,
    keys: &[String],
) -> RedisResult<Vec<Option<Vec<u8>>>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    redis::cmd("MGET").arg(keys).query_async(c).await
}

/// `HDEL key fields...`.
pub(crate) async fn hdel<C: ConnectionLike>(
    c: &mut C,
    key: &str,
    fields: &[Vec<u8>],
) -> RedisResult<()> {
    if fields.is_empty() {
        return Ok(());
    }
    let _: i64 = redis::cmd("HDEL")
        .arg(key)
        .arg(fields)
        .query_async(c)
        .await?;
    Ok(())
}
