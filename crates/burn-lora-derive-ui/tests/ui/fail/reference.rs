use burn::prelude::*;
use burn_lora::{LoraLinear, LoraModel};

#[derive(LoraModel)]
struct Borrowed<'a, B: Backend> {
    shared: &'a LoraLinear<B>,
}

fn main() {}
