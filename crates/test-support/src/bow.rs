//! A hashed bag-of-words embedder for the semantic tests: each lower-cased alphanumeric
//! word adds ±1 to one of `dims` coordinates (FNV-1a of the word), and the sum is scaled to
//! unit length. Deliberately blind to negation and order ("turn on" and "turn off" share
//! all but one word; "dog bites man" is "man bites dog"), so that the lexical guard, not
//! the embedder, is what the tests check.

use crate::fnv1a;

/// The embedding of `text`: `dims` floats of unit length (all zero for a text with no word).
pub fn bag_of_words(text: &str, dims: usize) -> Vec<f32> {
    assert!(dims > 0, "dims must be positive");
    let mut v = vec![0f32; dims];
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let h = fnv1a(word.to_lowercase().as_bytes());
        let sign = if h >> 63 == 0 { 1.0 } else { -1.0 };
        v[(h % dims as u64) as usize] += sign;
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// Cosine of two unit vectors of one length.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
