//! Every supported field kind, in a model generic over the backend: the derived impls and
//! `count` are type-checked with `B` generic, where the derive must tell LoRA fields from the
//! others.

use std::marker::PhantomData;

use burn::nn::{Dropout, LayerNorm, Linear};
use burn::prelude::*;
use burn_lora::{LoraLinear, LoraModel};

#[derive(Module, Debug, LoraModel)]
struct Block<B: Backend> {
    query: LoraLinear<B>,
    gate: Option<LoraLinear<B>>,
    heads: [LoraLinear<B>; 2],
    norm: LayerNorm<B>,
    plain: Vec<Linear<B>>,
    dropout: Dropout,
    width: usize,
    #[lora(skip)]
    frozen: LoraLinear<B>,
}

#[derive(Module, Debug, LoraModel)]
struct Model<B: Backend, M: Module<B>, const N: usize> {
    blocks: Vec<Block<B>>,
    stack: [Option<Block<B>>; N],
    inner: M,
    _marker: PhantomData<B>,
}

#[allow(dead_code)]
fn count<B: Backend>(model: &mut Model<B, Block<B>, 3>) -> usize {
    assert_eq!(model.lora_layers().len(), model.lora_layers_mut().len());
    model.lora_layers().len()
}

fn main() {}
