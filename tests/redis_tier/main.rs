//! The Redis tier against real servers, one binary: Cluster, Sentinel, TLS, several
//! instances and processes on one Redis, invalidation, namespaces and tenants kept apart,
//! and a Redis that refuses (full, ACLs, a wrong password: one global WARN subscriber).
//! The timed fault scenarios are `tests/faults.rs`, a process of their own.

mod cluster;
mod cross_instance;
mod invalidation;
mod isolation;
mod refusals;
mod sentinel;
#[cfg(feature = "tls")]
mod tls;
