use burn::nn::LayerNorm;
use burn::prelude::*;
use burn_lora::{LoraLinear, LoraModel};

// Burn accepts tuples as modules, so without the error these layers would be silently missed.
#[derive(Module, Debug, LoraModel)]
struct Attention<B: Backend> {
    query_value: (LoraLinear<B>, LoraLinear<B>),
    norm: LayerNorm<B>,
}

fn main() {}
