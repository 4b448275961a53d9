//! Real components for integration tests: redis-server processes on free loopback ports
//! and a mock OpenAI-compatible upstream over real HTTP. Each test file uses some of it.
#![allow(dead_code, unused_imports)]

pub mod redis;
pub mod upstream;
