use burn::nn::LayerNorm;
use burn::prelude::*;
use burn_lora::{LoraLinear, LoraModel};

// A nested struct that derives `Module` but not `LoraModel`: its layers would be silently
// missed by `lora_layers`, `Targets::all()` and everything built on them.
#[derive(Module, Debug)]
struct Block<B: Backend> {
    query: LoraLinear<B>,
    norm: LayerNorm<B>,
}

#[derive(Module, Debug, LoraModel)]
struct Net<B: Backend> {
    block: Block<B>,
    stack: Vec<Option<Block<B>>>,
    head: LoraLinear<B>,
}

#[derive(Module, Debug, LoraModel)]
struct Stack<B: Backend, const N: usize> {
    blocks: [Block<B>; N],
}

fn main() {}
