//! Streaming chat completions, without I/O and without tiers: the `text/event-stream`
//! parser ([`SseParser`]), the typed `chat.completion.chunk` ([`ChatChunk`]), the
//! [`Assembler`] that turns a stream into the one [`ChatResponse`](crate::ChatResponse) the
//! cache stores, and [`replay`], which streams a cached response back; [`usage`] handles
//! the usage chunk of a legacy completions stream stored as its bytes. Nothing here may
//! buffer without bound or panic on what an upstream sends.
//!
//! What survives `Assembler` over [`replay`] is stated on [`replay`] and tested in
//! `tests/engine/stream_props.rs`.

mod assemble;
mod chunk;
mod replay;
mod sse;
pub mod usage;

pub use self::assemble::{Assembler, DEFAULT_MAX_TEXT_BYTES};
pub use self::chunk::{
    CHUNK_OBJECT, ChatChunk, ChunkChoice, Delta, FunctionDelta, RESPONSE_OBJECT, ToolCallDelta,
    parse_chunk,
};
pub use self::replay::{ReplayOptions, replay};
pub use self::sse::{DEFAULT_MAX_EVENT_BYTES, SseEvent, SseParser};
