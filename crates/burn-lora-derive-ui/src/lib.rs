//! No code: this crate holds the compile-fail tests of `#[derive(LoraModel)]`
//! (`tests/ui.rs`, cases and expected messages in `tests/ui/fail/`).
