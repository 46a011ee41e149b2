use burn::prelude::*;
use burn_lora::{LoraLayer, LoraModel};

#[derive(LoraModel)]
struct Net<B: Backend> {
    layers: Vec<Box<dyn LoraLayer<B>>>,
}

fn main() {}
