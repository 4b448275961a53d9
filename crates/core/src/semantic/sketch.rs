//! Vectors as the indexes hold them: a 256-bit random-hyperplane sketch (the signs of the
//! vector against 256 fixed orthogonal hyperplanes, the same on every instance), the table
//! signatures cut from it (locality-sensitive buckets), the exact cosine that re-ranks,
//! the byte layout of a record (vector + prompt text) and of a bucket member, and the
//! ranking both indexes share.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use crate::tiered::digest::Digest;

/// Bits in a sketch.
pub(crate) const SKETCH_BITS: usize = 256;
/// Bucket tables; each takes [`TABLE_BITS`] bits of the sketch as its signature.
pub(crate) const TABLES: usize = 16;
/// Bits of one table's signature: 16,384 buckets per table and scope.
pub(crate) const TABLE_BITS: usize = 14;
/// Buckets a lookup reads: each table's signature and its one-bit neighbours.
pub(crate) const PROBES: usize = TABLES * (TABLE_BITS + 1);
/// The record layout's version byte.
const RECORD_VERSION: u8 = 1;

/// The signs of a vector against the hyperplanes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sketch(pub [u64; SKETCH_BITS / 64]);

impl Sketch {
    /// The sketch of `v` (any length): the signs of the first 256 coordinates of
    /// `H·D2·H·D1·v`, `v` padded with zeros to a power of two `n` (at least 256), `H` the
    /// Walsh-Hadamard transform and `D1`, `D2` fixed pseudo-random ±1 diagonals of that
    /// `n`. Each bit is the side of `v` of one hyperplane, as with 256 random dense
    /// hyperplanes, but the rows are orthogonal and the cost is `2·n·log2(n)` additions
    /// (about 45,000 at 1,536 dimensions) instead of `256·dims` multiply-adds over 1.5 MB of
    /// hyperplanes. Two rounds, so that a sparse vector (a few non-zero coordinates) meets
    /// dense hyperplanes too.
    pub(crate) fn of(v: &[f32]) -> Sketch {
        let n = v.len().next_power_of_two().max(SKETCH_BITS);
        let (d1, d2) = diagonals(n);
        let mut x = vec![0f32; n];
        for ((x, v), s) in x.iter_mut().zip(v).zip(d1.iter()) {
            *x = v * s;
        }
        walsh_hadamard(&mut x);
        for (x, s) in x.iter_mut().zip(d2.iter()) {
            *x *= s;
        }
        walsh_hadamard(&mut x);
        let mut words = [0u64; SKETCH_BITS / 64];
        for (bit, y) in x[..SKETCH_BITS].iter().enumerate() {
            if *y >= 0.0 {
                words[bit / 64] |= 1 << (bit % 64);
            }
        }
        Sketch(words)
    }

    /// Table `t`'s signature: bits `t*14 .. t*14+14`.
    pub(crate) fn signature(&self, t: usize) -> u32 {
        let mut sig = 0u32;
        for i in 0..TABLE_BITS {
            let bit = t * TABLE_BITS + i;
            sig |= (((self.0[bit / 64] >> (bit % 64)) & 1) as u32) << i;
        }
        sig
    }

    /// The buckets a lookup reads, the same in process and in Redis: each table's own
    /// signature and its [`TABLE_BITS`] one-bit neighbours (16 × 15 = 240 buckets). At a
    /// cosine of 0.86 the exact buckets alone find about 74 % of the vectors, with the
    /// neighbours about 99.7 % (0.7: 80 %); each holds about 1/16,384 of the scope.
    pub(crate) fn probes(&self) -> [(usize, u32); PROBES] {
        let mut out = [(0, 0); PROBES];
        for (t, table) in out.chunks_exact_mut(TABLE_BITS + 1).enumerate() {
            let sig = self.signature(t);
            table[0] = (t, sig);
            for (i, p) in table[1..].iter_mut().enumerate() {
                *p = (t, sig ^ (1 << i));
            }
        }
        out
    }

    /// How many bits differ: an estimate of the angle (bits/256 of pi).
    pub(crate) fn distance(&self, other: &Sketch) -> u32 {
        self.0
            .iter()
            .zip(&other.0)
            .map(|(a, b)| (a ^ b).count_ones())
            .sum()
    }

    pub(crate) fn to_bytes(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, w) in self.0.iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        out
    }

    pub(crate) fn from_bytes(b: &[u8]) -> Option<Sketch> {
        if b.len() != 32 {
            return None;
        }
        let mut words = [0u64; 4];
        for (i, w) in words.iter_mut().enumerate() {
            *w = u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().ok()?);
        }
        Some(Sketch(words))
    }
}

/// The two ±1 diagonals for length `n`: a fixed pseudo-random sequence (splitmix64), so
/// every instance and every release buckets alike.
fn diagonals(n: usize) -> (Arc<[f32]>, Arc<[f32]>) {
    type Diagonals = HashMap<usize, (Arc<[f32]>, Arc<[f32]>)>;
    static SIGNS: LazyLock<Mutex<Diagonals>> = LazyLock::new(Default::default);
    let mut map = crate::tiered::sync::lock(&SIGNS);
    if let Some((a, b)) = map.get(&n) {
        return (Arc::clone(a), Arc::clone(b));
    }
    let mut state = 0x6c6c_6d2d_6361_6368_u64 ^ n as u64;
    let mut bits = 0u64;
    let mut signs = Vec::with_capacity(2 * n);
    for i in 0..2 * n {
        if i % 64 == 0 {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            bits = z ^ (z >> 31);
        }
        signs.push(if (bits >> (i % 64)) & 1 == 1 {
            1.0
        } else {
            -1.0
        });
    }
    let (a, b): (Arc<[f32]>, Arc<[f32]>) = (signs[..n].into(), signs[n..].into());
    // A handful of models in one process at most: a few KB each.
    if map.len() < 64 {
        map.insert(n, (Arc::clone(&a), Arc::clone(&b)));
    }
    (a, b)
}

/// The Walsh-Hadamard transform of `x` in place (unscaled; `x.len()` a power of two).
fn walsh_hadamard(x: &mut [f32]) {
    let mut h = 1;
    while h < x.len() {
        for pair in x.chunks_exact_mut(2 * h) {
            let (lo, hi) = pair.split_at_mut(h);
            for (a, b) in lo.iter_mut().zip(hi.iter_mut()) {
                let (p, q) = (*a, *b);
                *a = p + q;
                *b = p - q;
            }
        }
        h *= 2;
    }
}

/// The dot product, in eight lanes the compiler can keep in vector registers (a plain
/// iterator sum must add in order, one float at a time).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            lanes[k] += x[k] * y[k];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// The cosine of two vectors (0 when either is zero or their lengths differ).
pub(crate) fn cosine(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() || a.is_empty() {
        return 0.0;
    }
    let (ab, na, nb) = (dot(a, b), dot(a, a), dot(b, b));
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        // Rounding can put two equal vectors at 1.0000001: a cosine stays in [-1, 1].
        (ab / (na.sqrt() * nb.sqrt())).clamp(-1.0, 1.0)
    }
}

/// What a candidate carries: its vector, the prompt text the guard compares, and when the
/// answer it points at was stored.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Record {
    pub(crate) vector: Vec<f32>,
    pub(crate) text: String,
    pub(crate) created_ms: u64,
}

impl Record {
    /// `version | created_ms (8, LE) | dims (4, LE) | f32 LE × dims | text`.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(13 + self.vector.len() * 4 + self.text.len());
        out.push(RECORD_VERSION);
        out.extend_from_slice(&self.created_ms.to_le_bytes());
        out.extend_from_slice(&(self.vector.len() as u32).to_le_bytes());
        for x in &self.vector {
            out.extend_from_slice(&x.to_le_bytes());
        }
        out.extend_from_slice(self.text.as_bytes());
        out
    }

    /// The record in `bytes`, or `None` for anything malformed (a miss, never an error).
    pub(crate) fn decode(bytes: &[u8]) -> Option<Record> {
        let (&version, rest) = bytes.split_first()?;
        if version != RECORD_VERSION || rest.len() < 12 {
            return None;
        }
        let created_ms = u64::from_le_bytes(rest[..8].try_into().ok()?);
        let dims = u32::from_le_bytes(rest[8..12].try_into().ok()?) as usize;
        let rest = &rest[12..];
        let floats = rest.get(..dims.checked_mul(4)?)?;
        let vector = floats
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let text = std::str::from_utf8(&rest[dims * 4..]).ok()?.to_owned();
        Some(Record {
            vector,
            text,
            created_ms,
        })
    }

    /// The bytes it holds, for the in-process index's weight.
    pub(crate) fn weight(&self) -> usize {
        self.vector.len() * 4 + self.text.len() + 64
    }
}

/// One bucket member as both indexes hold it: what ranking needs (the entry, its sketch,
/// its deadline) without reading the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Member {
    pub(crate) entry: Digest,
    pub(crate) sketch: Sketch,
    pub(crate) deadline_ms: u64,
}

/// A member's bytes in a Redis bucket string: `digest (32) | deadline (13 decimal digits,
/// Unix ms, which the bucket script reads: see remote.rs) | sketch (32)`.
pub(crate) const MEMBER_BYTES: usize = 32 + 13 + 32;

impl Member {
    pub(crate) fn to_bytes(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MEMBER_BYTES);
        out.extend_from_slice(self.entry.as_bytes());
        out.extend_from_slice(deadline_digits(self.deadline_ms).as_bytes());
        out.extend_from_slice(&self.sketch.to_bytes());
        out
    }

    /// The member in `b` (exactly [`MEMBER_BYTES`]), or `None` for anything malformed.
    pub(crate) fn from_bytes(b: &[u8]) -> Option<Member> {
        if b.len() != MEMBER_BYTES {
            return None;
        }
        Some(Member {
            entry: Digest::from_bytes(b[..32].try_into().ok()?),
            deadline_ms: std::str::from_utf8(&b[32..45]).ok()?.parse().ok()?,
            sketch: Sketch::from_bytes(&b[45..])?,
        })
    }
}

/// A deadline as the bucket strings hold it: 13 decimal digits (they compare as numbers do).
pub(crate) fn deadline_digits(deadline_ms: u64) -> String {
    format!("{:013}", deadline_ms.min(9_999_999_999_999))
}

/// The most bits a candidate's sketch may differ from the query's and still be worth
/// reading: the bits two vectors at exactly the cosine `threshold` differ by on average
/// (`256 × angle / π`), plus 4.5 standard deviations and 2 bits. A candidate at the
/// threshold is left out with a chance of about 1 in 250,000, one that the guard serves
/// (a rewording: cosines of 0.85 and more) practically never; vectors at right angles to
/// the query (128 bits apart on average) are left out 9,999 times in 10,000, so a miss
/// seldom reads any record.
pub(crate) fn max_distance(threshold: f32) -> u32 {
    let bits = SKETCH_BITS as f64;
    let p = f64::from(threshold.clamp(-1.0, 1.0)).acos() / std::f64::consts::PI;
    let bound = bits * p + 4.5 * (bits * p * (1.0 - p)).sqrt() + 2.0;
    (bound.ceil() as u32).min(SKETCH_BITS as u32)
}

/// Rank candidates found in several buckets: by sketch distance, then digest, each entry
/// once, the best `max`. Both indexes rank with this, so they find the same candidates.
pub(crate) fn rank<T>(found: &mut Vec<(u32, Digest, T)>, max: usize) {
    found.sort_unstable_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| a.1.as_bytes().cmp(b.1.as_bytes()))
    });
    // One entry has one sketch: its copies from other tables sort next to each other.
    found.dedup_by(|a, b| a.1 == b.1);
    found.truncate(max);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_reject_garbage() {
        let r = Record {
            vector: vec![0.5, -1.25, 3.0],
            text: "what is 2+2?".into(),
            created_ms: 42,
        };
        assert_eq!(Record::decode(&r.encode()), Some(r.clone()));
        let bytes = r.encode();
        assert_eq!(Record::decode(&bytes[..10]), None);
        assert_eq!(Record::decode(&[9]), None);
        let m = Member {
            entry: Digest::of("x"),
            sketch: Sketch::of(&[1.0, 2.0, 3.0]),
            deadline_ms: 1_700_000_000_000,
        };
        let bytes = m.to_bytes();
        assert_eq!(bytes.len(), MEMBER_BYTES);
        assert_eq!(Member::from_bytes(&bytes), Some(m));
        assert_eq!(Member::from_bytes(&bytes[1..]), None);
        // The deadline is always 13 digits: the script compares them as text.
        assert_eq!(deadline_digits(42), "0000000000042");
        assert_eq!(deadline_digits(u64::MAX), "9999999999999");
    }

    #[test]
    fn close_vectors_share_buckets() {
        let a: Vec<f32> = (0..64).map(|i| (i as f32).sin()).collect();
        let mut b = a.clone();
        b[3] += 0.01;
        let (sa, sb) = (Sketch::of(&a), Sketch::of(&b));
        assert!(sa.distance(&sb) < 8);
        assert_eq!(Sketch::of(&a), sa, "deterministic");
        let c: Vec<f32> = (0..64).map(|i| (i as f32).cos()).collect();
        assert!(sa.distance(&Sketch::of(&c)) > 40);
    }

    #[test]
    fn the_distance_bound_keeps_neighbours_and_leaves_out_strangers() {
        // 0.7: 65 bits apart on average at the threshold, 128 at right angles.
        let bound = max_distance(0.7);
        assert!((95..=105).contains(&bound), "{bound}");
        assert!(max_distance(0.95) < bound);
        assert_eq!(max_distance(-1.0), SKETCH_BITS as u32);
        let v: Vec<f32> = (0..384).map(|i| (i as f32 * 0.37).sin()).collect();
        let near: Vec<f32> = v
            .iter()
            .enumerate()
            .map(|(i, x)| x + 0.3 * (i as f32 * 1.3).cos())
            .collect();
        assert!(cosine(&v, &near) > 0.7);
        assert!(Sketch::of(&v).distance(&Sketch::of(&near)) <= bound);
    }

    #[test]
    fn ranking_keeps_each_entry_once_nearest_first() {
        let (a, b, c) = (Digest::of("a"), Digest::of("b"), Digest::of("c"));
        let mut found = vec![(9, a, ()), (3, b, ()), (9, a, ()), (3, b, ()), (5, c, ())];
        rank(&mut found, 2);
        let order: Vec<Digest> = found.iter().map(|f| f.1).collect();
        assert_eq!(order, vec![b, c]);
    }

    #[test]
    fn cosine_stays_within_one() {
        // Vectors whose f32 cosine with themselves rounds above 1.
        for seed in 0..2000u32 {
            let v: Vec<f32> = (0..384)
                .map(|i| ((seed * 384 + i) as f32 * 0.7).sin() * 0.1)
                .collect();
            let c = cosine(&v, &v);
            assert!((-1.0..=1.0).contains(&c), "{c}");
        }
    }
}
