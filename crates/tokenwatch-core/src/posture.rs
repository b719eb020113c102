//! Posture: placeholder replaced by the merge of h-posture.

pub mod stats;
