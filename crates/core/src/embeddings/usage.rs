//! How one upstream call's token count is shared among its inputs. The upstream reports
//! one `prompt_tokens` per call; each input's entry keeps its share, so that serving it
//! from cache later can be counted in tokens and dollars.
//!
//! The rule: shares are proportional to each input's weight (its number of token ids, or
//! the length of its text in UTF-8 bytes, at least 1), rounded down, and the tokens left
//! by the rounding go one each to the inputs with the largest remainders (the earliest
//! first on a tie). The shares add up to the call's count exactly.

/// The shares of `total` tokens among inputs of `weights` (see the module docs).
pub(crate) fn apportion(total: u64, weights: &[u64]) -> Vec<u32> {
    if weights.is_empty() {
        return Vec::new();
    }
    let sum: u128 = weights.iter().map(|&w| u128::from(w.max(1))).sum();
    let total = u128::from(total);
    let mut shares = Vec::with_capacity(weights.len());
    let mut remainders = Vec::with_capacity(weights.len());
    let mut given: u128 = 0;
    for (i, &w) in weights.iter().enumerate() {
        let exact = total * u128::from(w.max(1));
        let share = exact / sum;
        given += share;
        shares.push(share);
        remainders.push((exact % sum, i));
    }
    // Largest remainder first; the earliest input first among equals.
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, i) in remainders.iter().take((total - given) as usize) {
        shares[i] += 1;
    }
    shares
        .into_iter()
        .map(|s| u32::try_from(s).unwrap_or(u32::MAX))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn shares_follow_the_weights() {
        assert_eq!(apportion(10, &[1, 1]), vec![5, 5]);
        assert_eq!(apportion(10, &[1, 1, 1]), vec![4, 3, 3]);
        assert_eq!(apportion(7, &[100, 300]), vec![2, 5]);
        assert_eq!(apportion(0, &[5, 5]), vec![0, 0]);
        assert_eq!(apportion(3, &[0, 0, 0]), vec![1, 1, 1]);
        assert!(apportion(3, &[]).is_empty());
    }

    proptest! {
        #[test]
        fn shares_add_up_to_the_call(total in 0u64..1_000_000, weights in proptest::collection::vec(0u64..10_000, 1..64)) {
            let shares = apportion(total, &weights);
            prop_assert_eq!(shares.len(), weights.len());
            prop_assert_eq!(shares.iter().map(|&s| u64::from(s)).sum::<u64>(), total);
        }
    }
}
