//! Key material for signature tests.

pub mod keys;
