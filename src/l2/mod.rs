//! The remote tier (being written).
