//! Training: only the adapters learn, the frozen base never changes and never reaches the
//! optimizer, and dropout draws its masks from the backend's seeded generator.
//!
//! Flex and NdArray keep one global random generator per process, so a test that seeds it and
//! checks what it draws next sees the draws of any test running beside it. Such tests live in
//! this binary only, and every test here holds `backend_rng_guard` while it draws; the other
//! binaries have no test that depends on the generator's sequence.

#[path = "../common/mod.rs"]
mod common;

mod adapters_only;
mod dropout;
