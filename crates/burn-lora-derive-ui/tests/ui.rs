//! What `#[derive(LoraModel)]` rejects, and the messages it gives (`tests/ui/fail/*.stderr`;
//! regenerate with `TRYBUILD=overwrite cargo test --workspace --test ui` and read them).
//!
//! Only compile-fail cases live here: with them alone trybuild runs `cargo check`, so its own
//! copy of Burn (trybuild builds in `target/tests/trybuild` with its own flags) is type-checked,
//! not compiled to machine code. The models that must compile, every supported field kind among
//! them, are built and used in the workspace's `tests/model/derive_lora_model.rs`.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/fail/*.rs");
}
