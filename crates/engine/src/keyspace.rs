//! The names the cache uses in Redis, in one place: entries (which also hold the lease
//! while a flight fetches them: see lease.rs), the namespace generations and the
//! invalidation channel, and the `SCAN` pattern that counts entries.
//! It must never hand out a name that another cache's prefix could also produce.
//!
//! Layout, for a prefix `P` (`ai:cache` by default) and a digest's 64 hex digits `H`:
//!
//! ```text
//! P:{H}            an entry, or the lease marker of the flight fetching it
//! P:generations    the namespace generations (a hash), and its incarnation (a field
//!                  that no namespace can name: see INCARNATION_FIELD)
//! P:invalidate     the invalidation channel
//! P:k{S}...        a layer's key of kind `k` (a lowercase letter) in scope S: see
//!                  Keyspace::layer_key; the layer names the rest
//! ```
//!
//! A layer's keys of one scope share the hash tag `{S}` (one Cluster slot, so one call on
//! them is one pipeline on one node); their suffixes start with a letter then `{`, which no
//! other kind's does.
//!
//! Why no two prefixes can meet: every suffix after the prefix's `:` is free of `:`, so a
//! name splits at its last `:` into exactly one (prefix, suffix) pair, whatever colons the
//! prefix holds. Prefixes may not contain `{` or `}`: the entry's `{H}` must be the first
//! hash tag of the name (so that entries spread over the Cluster, and any name derived from
//! an entry's stays in its slot), and a brace-free prefix also keeps the `SCAN` patterns of one prefix
//! from matching another's names.

use crate::digest::Digest;

/// The field of the generations hash that holds its incarnation: a random value set when
/// the record is created, bound into every key. Not UTF-8, so no namespace can be named so.
pub(crate) const INCARNATION_FIELD: &[u8] = b"\xffincarnation";

/// The names of one cache's keys and channel in Redis, under its prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyspace {
    prefix: String,
}

impl Keyspace {
    /// The keyspace of `prefix` (one the builder accepted: no braces, no whitespace).
    pub fn new(prefix: &str) -> Self {
        Keyspace {
            prefix: prefix.to_owned(),
        }
    }

    /// `P:{H}`: where the entry of `digest` lives.
    pub fn entry(&self, digest: &Digest) -> String {
        let mut key = String::with_capacity(self.prefix.len() + 3 + 64);
        key.push_str(&self.prefix);
        key.push_str(":{");
        digest.write_hex(&mut key);
        key.push('}');
        key
    }

    /// `P:k{S}suffix`: a key of a layer kept beside the entries (an index, say), of kind
    /// `kind` in scope `scope` (every key of one scope in one Cluster slot, the hash tag
    /// `{S}`). Each layer takes a kind of its own; no name of another kind, of the cache's
    /// own keys or of another prefix's can be this one.
    ///
    /// # Panics
    ///
    /// When `kind` is not a lowercase ASCII letter, or `suffix` holds a `:` (which would
    /// let another prefix name the key): both are the layer's own constants.
    pub fn layer_key(&self, kind: char, scope: &Digest, suffix: impl std::fmt::Display) -> String {
        use std::fmt::Write;
        assert!(
            kind.is_ascii_lowercase(),
            "a layer's kind is a lowercase letter"
        );
        let mut key = String::with_capacity(self.prefix.len() + 4 + 64 + 16);
        key.push_str(&self.prefix);
        key.push(':');
        key.push(kind);
        key.push('{');
        scope.write_hex(&mut key);
        key.push('}');
        let head = key.len();
        let _ = write!(key, "{suffix}");
        assert!(
            !key[head..].contains(':'),
            "a layer's key suffix holds no `:`"
        );
        key
    }

    /// `P:generations`: the hash of namespace generations.
    pub fn generations(&self) -> String {
        format!("{}:generations", self.prefix)
    }

    /// `P:invalidate`: the invalidation channel.
    pub fn channel(&self) -> String {
        format!("{}:invalidate", self.prefix)
    }

    /// A `SCAN MATCH` pattern that matches this cache's entries and nothing else.
    pub fn entry_pattern(&self) -> String {
        let mut p = self.escaped_prefix();
        p.push_str(":{");
        p.extend(std::iter::repeat_n('?', 64));
        p.push('}');
        p
    }

    /// The prefix with the glob's special characters escaped.
    fn escaped_prefix(&self) -> String {
        let mut out = String::with_capacity(self.prefix.len() + 4);
        for ch in self.prefix.chars() {
            if matches!(ch, '*' | '?' | '[' | ']' | '\\') {
                out.push('\\');
            }
            out.push(ch);
        }
        out
    }
}

/// Check a key prefix: 1 to 128 bytes, no whitespace or control characters, no braces.
/// The error text says what is wrong; the caller names the knob.
pub(crate) fn validate_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() || prefix.len() > 128 {
        return Err("must be 1 to 128 bytes long".into());
    }
    if prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{prefix:?} contains whitespace or control characters"
        ));
    }
    if prefix.contains(['{', '}']) {
        return Err(format!(
            "{prefix:?} contains a brace: the cache puts each entry's digest in braces (a Cluster hash tag, so that entries spread over the nodes); a brace in the prefix would change the tag"
        ));
    }
    Ok(())
}

/// Whether `key` matches the Redis glob `pattern` (`*`, `?`, `[...]`, `\` escapes), as
/// `SCAN MATCH` decides it: for the key-space proofs below.
#[cfg(test)]
fn glob_matches(pattern: &[u8], key: &[u8]) -> bool {
    // Iterative with one backtrack point for the last `*`: the usual wildcard algorithm.
    let (mut p, mut k) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while k < key.len() {
        let step = if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p, k));
                    p += 1;
                    continue;
                }
                b'?' => Some(p + 1),
                b'[' => class_matches(pattern, p, key[k]),
                b'\\' if p + 1 < pattern.len() => (pattern[p + 1] == key[k]).then_some(p + 2),
                c => (c == key[k]).then_some(p + 1),
            }
        } else {
            None
        };
        match (step, star) {
            (Some(next), _) => {
                p = next;
                k += 1;
            }
            (None, Some((sp, sk))) => {
                p = sp + 1;
                k = sk + 1;
                star = Some((sp, sk + 1));
            }
            (None, None) => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
/// `[...]` at `pattern[at]` against `c`: the index after the class when it matches.
fn class_matches(pattern: &[u8], at: usize, c: u8) -> Option<usize> {
    let mut i = at + 1;
    let negate = pattern.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut hit = false;
    while i < pattern.len() && pattern[i] != b']' {
        if pattern[i] == b'\\' && i + 1 < pattern.len() {
            hit |= pattern[i + 1] == c;
            i += 2;
        } else if i + 2 < pattern.len() && pattern[i + 1] == b'-' && pattern[i + 2] != b']' {
            let (lo, hi) = (
                pattern[i].min(pattern[i + 2]),
                pattern[i].max(pattern[i + 2]),
            );
            hit |= (lo..=hi).contains(&c);
            i += 3;
        } else {
            hit |= pattern[i] == c;
            i += 1;
        }
    }
    (hit != negate).then_some(i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layer's keys, as an index beside the entries names them (a record, a bucket).
    fn record(ks: &Keyspace, scope: &Digest, entry: &Digest) -> String {
        ks.layer_key('v', scope, format_args!("r{entry}"))
    }

    fn bucket(ks: &Keyspace, scope: &Digest, table: usize, signature: u32) -> String {
        ks.layer_key('v', scope, format_args!("b{table}.{signature:x}"))
    }

    #[test]
    fn a_layer_key_refuses_what_could_meet_another_name() {
        let ks = Keyspace::new("p");
        let d = Digest::of("x");
        for bad in [
            std::panic::catch_unwind(|| ks.layer_key('V', &d, "r")),
            std::panic::catch_unwind(|| ks.layer_key('{', &d, "r")),
            std::panic::catch_unwind(|| ks.layer_key('v', &d, "r:x")),
        ] {
            assert!(bad.is_err());
        }
    }

    #[test]
    fn layout_is_pinned() {
        let ks = Keyspace::new("ai:cache");
        let d = Digest::of("abc");
        let hex = d.to_hex();
        assert_eq!(ks.entry(&d), format!("ai:cache:{{{hex}}}"));
        assert_eq!(ks.generations(), "ai:cache:generations");
        assert_eq!(ks.channel(), "ai:cache:invalidate");
        assert_eq!(record(&ks, &d, &d), format!("ai:cache:v{{{hex}}}r{hex}"));
        assert_eq!(
            bucket(&ks, &d, 3, 0xabc),
            format!("ai:cache:v{{{hex}}}b3.abc")
        );
        assert!(!glob_matches(
            ks.entry_pattern().as_bytes(),
            record(&ks, &d, &d).as_bytes()
        ));
        assert!(glob_matches(
            ks.entry_pattern().as_bytes(),
            ks.entry(&d).as_bytes()
        ));
        // An earlier release's lease keys are not entries.
        assert!(!glob_matches(
            ks.entry_pattern().as_bytes(),
            format!("{}.lease", ks.entry(&d)).as_bytes()
        ));
    }

    #[test]
    fn patterns_escape_globs() {
        let ks = Keyspace::new("a*b?[c]\\");
        let d = Digest::of("x");
        assert!(ks.entry_pattern().starts_with("a\\*b\\?\\[c\\]\\\\:{"));
        assert!(glob_matches(
            ks.entry_pattern().as_bytes(),
            ks.entry(&d).as_bytes()
        ));
        let other = Keyspace::new("aXb?[c]\\");
        assert!(!glob_matches(
            ks.entry_pattern().as_bytes(),
            other.entry(&d).as_bytes()
        ));
    }

    #[test]
    fn glob_matcher_follows_redis() {
        assert!(glob_matches(b"a*c", b"abbbc"));
        assert!(glob_matches(b"a*", b"a"));
        assert!(!glob_matches(b"a?c", b"ac"));
        assert!(glob_matches(b"[a-c]x", b"bx"));
        assert!(!glob_matches(b"[^a-c]x", b"bx"));
        assert!(glob_matches(b"\\*", b"*"));
        assert!(!glob_matches(b"\\*", b"x"));
    }

    #[test]
    fn prefixes_with_braces_are_refused() {
        assert!(validate_prefix("ai:cache").is_ok());
        assert!(validate_prefix("t{1}").unwrap_err().contains("brace"));
        assert!(validate_prefix("a}").is_err());
        assert!(validate_prefix("").is_err());
        assert!(validate_prefix("a b").is_err());
    }

    use proptest::prelude::*;

    /// Prefixes the builder accepts, biased towards the dangerous shapes: one a prefix of
    /// the other, colons, the words the layout uses, glob characters.
    fn prefix() -> impl Strategy<Value = String> {
        let part = prop_oneof![
            Just("p".to_owned()),
            Just("lease".to_owned()),
            Just(".lease".to_owned()),
            Just("generations".to_owned()),
            Just("invalidate".to_owned()),
            Just("*".to_owned()),
            Just("?".to_owned()),
            Just("[a]".to_owned()),
            "[a-f0-9]{1,3}",
            "[ -~]{1,4}",
        ];
        prop::collection::vec(part, 1..4)
            .prop_map(|parts| parts.join(":"))
            .prop_filter("valid prefix", |p| validate_prefix(p).is_ok())
    }

    fn digest() -> impl Strategy<Value = Digest> {
        prop_oneof![
            any::<[u8; 32]>().prop_map(Digest::from_bytes),
            // Digests whose hex spells the layout's words as far as hex can.
            Just(Digest::from_bytes([0xaa; 32])),
            Just(Digest::from_bytes([0x00; 32])),
        ]
    }

    fn names(ks: &Keyspace, digests: &[Digest]) -> Vec<String> {
        let mut out = vec![ks.generations(), ks.channel()];
        for d in digests {
            out.push(ks.entry(d));
            for e in digests {
                out.push(record(ks, d, e));
            }
            out.push(bucket(ks, d, 0, 0));
            out.push(bucket(ks, d, 7, 0xfff));
            out.push(ks.layer_key('g', d, ""));
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// No entry, generations key or channel of one prefix is a name of another,
        /// and no SCAN pattern of one matches a name of the other.
        #[test]
        fn distinct_prefixes_never_share_a_name(
            a in prefix(),
            b in prefix(),
            suffix in prop_oneof![Just(String::new()), Just(":lease".to_owned()), Just(":x".to_owned()), "[ -~&&[^{}]]{1,8}"],
            da in prop::collection::vec(digest(), 1..3),
            db in prop::collection::vec(digest(), 1..3),
            extend in any::<bool>(),
        ) {
            // Half the time the second prefix extends the first: the case that collided.
            let b = if extend { format!("{a}{suffix}") } else { b };
            prop_assume!(a != b && validate_prefix(&b).is_ok());
            let (ka, kb) = (Keyspace::new(&a), Keyspace::new(&b));
            let (na, nb) = (names(&ka, &da), names(&kb, &db));
            for x in &na {
                prop_assert!(!nb.contains(x), "{a:?} and {b:?} share {x:?}");
            }
            for (ks, theirs) in [(&ka, &nb), (&kb, &na)] {
                for pattern in [ks.entry_pattern()] {
                    for name in theirs {
                        prop_assert!(
                            !glob_matches(pattern.as_bytes(), name.as_bytes()),
                            "pattern {pattern:?} matches the other cache's {name:?}"
                        );
                    }
                }
            }
        }

        /// Within one prefix, each pattern matches its own kind of name only.
        #[test]
        fn patterns_count_each_kind_apart(p in prefix(), d in digest()) {
            let ks = Keyspace::new(&p);
            let e = ks.entry(&d);
            prop_assert!(glob_matches(ks.entry_pattern().as_bytes(), e.as_bytes()));
            for other in [ks.generations(), ks.channel(), format!("{e}.lease"), record(&ks, &d, &d), bucket(&ks, &d, 1, 2)] {
                prop_assert!(!glob_matches(ks.entry_pattern().as_bytes(), other.as_bytes()));
            }
        }
    }
}
