//! What `#[derive(LoraModel)]` rejects, and the messages it gives (`tests/ui/fail/*.stderr`;
//! regenerate with `TRYBUILD=overwrite cargo test -p burn-lora-derive --test ui` and read them),
//! and a model using every supported field kind that compiles (`tests/ui/pass`).

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/fail/*.rs");
    cases.pass("tests/ui/pass/*.rs");
}
