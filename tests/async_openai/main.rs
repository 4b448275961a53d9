//! async-openai: the layer in its tower stack with the real client (layer.rs), and the
//! conversions between its chat types and ours (convert.rs).

mod completions_usage;
mod convert;
mod layer;
mod status;
