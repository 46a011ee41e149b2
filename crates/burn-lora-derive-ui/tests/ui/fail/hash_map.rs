use std::collections::HashMap;

use burn::prelude::*;
use burn_lora::{LoraLinear, LoraModel};

// `Module` is not derived here: Burn's derive rejects the `HashMap` field with an error of its own.
#[derive(LoraModel)]
struct Experts<B: Backend> {
    experts: HashMap<String, LoraLinear<B>>,
}

fn main() {}
