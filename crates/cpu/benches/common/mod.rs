//! Inputs shared by the criterion benches: the crate tests' `noise` (one definition).

include!("../../src/noise.rs");
