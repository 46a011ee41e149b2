use burn::prelude::*;
use burn_lora::{LoraLinear, LoraModel};

#[derive(LoraModel)]
enum Head<B: Backend> {
    Small(LoraLinear<B>),
    Large(Vec<LoraLinear<B>>),
}

fn main() {}
