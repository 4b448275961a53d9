//! The tiered engine and what an operator sees of it, one binary: `TieredCache` (L1, L2,
//! single-flight, hooks, the harness's own checks), the property tests of the envelope,
//! the stream and the tiers, the fuzzers' regressions, L1's memory bound (measured in child
//! processes of this binary), and the logs, health and Redis stats (one global tracing
//! subscriber, per-thread capture).

mod envelope_props;
mod fuzz_regressions;
mod harness;
#[cfg(target_os = "linux")]
mod l1_memory;
#[cfg(all(feature = "openai", feature = "prometheus"))]
mod observability;
mod stream_props;
mod tiered;
mod tiered_hooks;
mod tiered_props;
