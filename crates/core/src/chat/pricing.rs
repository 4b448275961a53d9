//! Model prices, so the cache can say what its hits saved in dollars. It only does
//! arithmetic on token counts it is given; it never calls anything or guesses a price for
//! a model it does not list.

use std::borrow::Cow;
use std::collections::HashMap;

use crate::request::Usage;

/// The price of one model, in dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
#[must_use]
pub struct ModelPrice {
    /// Dollars per million prompt (input) tokens.
    pub input_per_million: f64,
    /// Dollars per million completion (output) tokens.
    pub output_per_million: f64,
}

impl ModelPrice {
    /// Different prices for input and output tokens.
    pub fn new(input_per_million: f64, output_per_million: f64) -> Self {
        ModelPrice {
            input_per_million,
            output_per_million,
        }
    }

    /// One price for input and output tokens alike.
    pub fn flat(per_million: f64) -> Self {
        Self::new(per_million, per_million)
    }

    /// The dollars `usage` costs at this price.
    pub fn cost(&self, usage: &Usage) -> f64 {
        (usage.prompt_tokens as f64 * self.input_per_million
            + usage.completion_tokens as f64 * self.output_per_million)
            / 1_000_000.0
    }
}

/// Prices by model name, looked up exactly or by the longest listed prefix.
///
/// [`PriceTable::default`] holds the reference deployment's 2026 list; each figure applies
/// to input and output tokens alike until set separately with [`PriceTable::set`]:
///
/// | model | $ per million tokens |
/// |---|---|
/// | `gpt-4.1` | 8.00 |
/// | `claude-sonnet-4.5` | 15.00 |
/// | `gemini-2.5-flash` | 2.50 |
/// | `deepseek-v3.2` | 0.42 |
///
/// and for embeddings (input tokens only; served inputs are counted at their share of the
/// call that fetched them):
///
/// | model | $ per million input tokens |
/// |---|---|
/// | `text-embedding-3-small` | 0.02 |
/// | `text-embedding-3-large` | 0.13 |
/// | `text-embedding-ada-002` | 0.10 |
///
/// A listed name also prices the models that extend it after a separator (`-`, `_`, `:`,
/// `@`, `/`): `gpt-4.1` prices the snapshot `gpt-4.1-2025-04-14`, but not `gpt-4.10`. The
/// longest listed name wins, so list `gpt-4.1-mini` to stop it being priced as `gpt-4.1`.
/// Names compare without regard to ASCII case.
///
/// ```
/// use llm_cache_core::{ModelPrice, PriceTable, Usage};
///
/// let prices = PriceTable::default().with("gpt-4.1-mini", ModelPrice::new(0.40, 1.60));
/// let usage = Usage { prompt_tokens: 1_000, completion_tokens: 500, ..Default::default() };
/// let dollars = prices.cost("gpt-4.1-2025-04-14", &usage).unwrap();
/// assert!((dollars - 0.012).abs() < 1e-12);
/// assert!(prices.cost("unknown-model", &usage).is_none());
/// ```
#[derive(Debug, Clone)]
pub struct PriceTable {
    models: HashMap<String, ModelPrice>,
}

impl Default for PriceTable {
    fn default() -> Self {
        PriceTable::empty()
            .with("gpt-4.1", ModelPrice::flat(8.00))
            .with("claude-sonnet-4.5", ModelPrice::flat(15.00))
            .with("gemini-2.5-flash", ModelPrice::flat(2.50))
            .with("deepseek-v3.2", ModelPrice::flat(0.42))
            .with("text-embedding-3-small", ModelPrice::new(0.02, 0.0))
            .with("text-embedding-3-large", ModelPrice::new(0.13, 0.0))
            .with("text-embedding-ada-002", ModelPrice::new(0.10, 0.0))
    }
}

impl PriceTable {
    /// A table that prices nothing.
    pub fn empty() -> Self {
        PriceTable {
            models: HashMap::new(),
        }
    }

    /// Set (or replace) the price of `model` and of the models it is a prefix of.
    pub fn set(&mut self, model: impl Into<String>, price: ModelPrice) -> &mut Self {
        let mut model = model.into();
        model.make_ascii_lowercase();
        self.models.insert(model, price);
        self
    }

    /// [`PriceTable::set`] for building a table by value.
    #[must_use]
    pub fn with(mut self, model: impl Into<String>, price: ModelPrice) -> Self {
        self.set(model, price);
        self
    }

    /// The price of `model`: its own entry, else that of the longest listed name it extends.
    pub fn price(&self, model: &str) -> Option<ModelPrice> {
        let model: Cow<'_, str> = if model.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(model.to_ascii_lowercase())
        } else {
            Cow::Borrowed(model)
        };
        if let Some(price) = self.models.get(model.as_ref()) {
            return Some(*price);
        }
        // Try each prefix that ends just before a separator, longest first.
        model
            .char_indices()
            .rev()
            .filter(|&(_, c)| matches!(c, '-' | '_' | ':' | '@' | '/'))
            .find_map(|(i, _)| self.models.get(&model[..i]).copied())
    }

    /// The dollars `usage` cost on `model`, or `None` when the model has no price.
    pub fn cost(&self, model: &str, usage: &Usage) -> Option<f64> {
        self.price(model).map(|p| p.cost(usage))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(prompt: u64, completion: u64) -> Usage {
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            ..Default::default()
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn default_list_prices_input_and_output_alike() {
        let t = PriceTable::default();
        let million = usage(600_000, 400_000);
        assert!(close(t.cost("gpt-4.1", &million).unwrap(), 8.00));
        assert!(close(t.cost("claude-sonnet-4.5", &million).unwrap(), 15.00));
        assert!(close(t.cost("gemini-2.5-flash", &million).unwrap(), 2.50));
        assert!(close(t.cost("deepseek-v3.2", &million).unwrap(), 0.42));
        assert!(close(t.cost("gpt-4.1", &usage(1_000, 0)).unwrap(), 0.008));
    }

    #[test]
    fn unknown_models_have_no_price() {
        let t = PriceTable::default();
        assert_eq!(t.cost("llama-3-70b", &usage(10, 10)), None);
        assert_eq!(t.cost("", &usage(10, 10)), None);
        assert_eq!(PriceTable::empty().cost("gpt-4.1", &usage(10, 10)), None);
    }

    #[test]
    fn snapshots_take_the_longest_listed_prefix() {
        let t = PriceTable::default().with("gpt-4.1-mini", ModelPrice::new(0.40, 1.60));
        assert_eq!(t.price("gpt-4.1-2025-04-14"), Some(ModelPrice::flat(8.00)));
        assert_eq!(
            t.price("gpt-4.1-mini-2025-04-14"),
            Some(ModelPrice::new(0.40, 1.60))
        );
        assert_eq!(t.price("gpt-4.1-mini"), Some(ModelPrice::new(0.40, 1.60)));
        assert_eq!(t.price("deepseek-v3.2:exp"), Some(ModelPrice::flat(0.42)));
        assert_eq!(t.price("GPT-4.1"), Some(ModelPrice::flat(8.00)));
    }

    #[test]
    fn a_prefix_must_end_at_a_separator() {
        let t = PriceTable::default();
        assert_eq!(t.price("gpt-4.10"), None);
        assert_eq!(t.price("gpt-4"), None);
        assert_eq!(t.price("gpt-4.1x-2025"), None);
    }

    #[test]
    fn set_overrides_and_splits_input_from_output() {
        let mut t = PriceTable::default();
        t.set("gpt-4.1", ModelPrice::new(2.00, 8.00));
        let cost = t.cost("gpt-4.1", &usage(1_000_000, 500_000)).unwrap();
        assert!(close(cost, 2.00 + 4.00));
        t.set("My-Model", ModelPrice::flat(1.0));
        assert!(close(
            t.cost("my-model", &usage(1_000_000, 0)).unwrap(),
            1.0
        ));
    }
}
