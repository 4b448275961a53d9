//! The opt-in semantic cache: after an exact miss, a request whose last message is a plain
//! user text may be answered with the entry of an earlier request of the same exact scope
//! whose last user text means the same. It owns the lexical guard, the scope digest and
//! the candidate indexes (in process and in Redis). It must never serve a candidate on its
//! cosine alone: the guard decides.

mod guard;
mod words;

pub use self::guard::{
    Canonical, DEFAULT_MAX_TYPOS, DEFAULT_TYPO_MIN_LEN, GuardVerdict, LexicalGuard, Refusal,
};

/// The default cosine a candidate needs before the guard looks at it. Low on purpose: the
/// guard decides what is served, the threshold only spares it candidates that cannot be the
/// same question. The cache embeds the guard's canonical text, so variants the guard
/// serves score close to 1.
pub const DEFAULT_SEMANTIC_THRESHOLD: f32 = 0.7;
