//! Conversions between async-openai's chat types and the crate's.
